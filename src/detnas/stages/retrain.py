"""Stage 4: retrain a found (or hand-crafted) architecture as a normal network and test it.

The standalone network is built from scratch (no supernet weights), optionally pretrained on the
classification data as the paper does, then trained inside the detector with the same recipe for
every architecture, so that searched nets and baselines compare fairly. Or (``supernet`` in the
config) it starts from the finetuned supernet's weights of its path and is finetuned alone: at a
small budget that is the better detector, and it costs no pretraining.
"""

from __future__ import annotations

import json
from pathlib import Path

from detnas.atomic import write_json_atomic
from detnas.config.runs import (
    CHECKPOINT,
    METRICS_FILE,
    RESULT_FILE,
    RETRAIN_DETECTOR_DIR,
    RETRAIN_PRETRAIN_DIR,
    is_finished,
)
from detnas.config.schema import RetrainConfig
from detnas.distributed import on_main
from detnas.errors import UserError
from detnas.model.flops import arch_cost
from detnas.model.space import Arch, arch_to_str, get_space
from detnas.stages.jobs import finetune_job, pretrain_job, run_stage
from detnas.stages.run_guard import guarded_run


def run_retrain(arch: Arch, cfg: RetrainConfig, out_dir: Path, resume: bool, pretrain: bool = True) -> dict:
    """Pretrain (optional) and train the detector of ``arch`` (of the config's space: see
    ``space.resolve_arch``); returns its test result.

    Each step writes its own sub-folder; with ``resume`` a finished step is skipped and an
    interrupted one continues from its checkpoint.
    """
    with guarded_run(out_dir):
        return _retrain(arch, cfg, Path(out_dir), resume, pretrain)


def _retrain(arch: Arch, cfg: RetrainConfig, out_dir: Path, resume: bool, pretrain: bool) -> dict:
    space = get_space(cfg.space, cfg.width_mult)
    if cfg.data.test is None:
        raise UserError("retraining reports on the test split: set data.test in the config")
    init, inherit = cfg.init, None
    if cfg.supernet is not None:
        inherit = cfg.supernet / CHECKPOINT if cfg.supernet.is_dir() else cfg.supernet
    elif pretrain and cfg.pretrain is not None:
        pre_cfg = cfg.pretrain_config()
        pre_dir = out_dir / RETRAIN_PRETRAIN_DIR
        if not (resume and is_finished(pre_dir)):
            run_stage(pretrain_job(pre_cfg, arch), pre_cfg, pre_dir, resume)
        init = pre_dir / CHECKPOINT
    det_cfg = cfg.model_copy(update={"init": init})
    det_dir = out_dir / RETRAIN_DETECTOR_DIR
    if resume and is_finished(det_dir):
        metrics = json.loads((det_dir / METRICS_FILE).read_text())
    else:
        metrics = run_stage(finetune_job(det_cfg, det_dir, arch, inherit), det_cfg, det_dir, resume)
    cost = arch_cost(space, arch)
    result = {
        "arch": arch_to_str(arch), "space": space.name, "width_mult": space.width_mult,
        "body_flops": cost.body_flops, "body_params": cost.body_params, "pretrained": init is not None,
        "inherited": inherit is not None,
        "test": metrics["metrics"], "checkpoint": str(det_dir / CHECKPOINT),
    }
    on_main(lambda: write_json_atomic(result, out_dir / RESULT_FILE, indent=2))
    return result

