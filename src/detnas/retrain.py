"""Stage 4: retrain a found (or hand-crafted) architecture as a normal network and test it.

The standalone network is built from scratch (no supernet weights), optionally pretrained on the
classification data as the paper does, then trained inside the detector with the same recipe for
every architecture, so that searched nets and baselines compare fairly.
"""

from __future__ import annotations

import json
from pathlib import Path

from detnas.atomic import write_json_atomic
from detnas.distributed import is_main
from detnas.errors import UserError, read_json
from detnas.flops import arch_cost
from detnas.space import Arch, SearchSpace, arch_to_str, get_space, parse_arch
from detnas.stages import finetune_job, pretrain_job, run_stage
from detnas.train import CHECKPOINT
from detnas.train_config import RetrainConfig

RESULT_FILE = "result.json"


def resolve_arch(text: str, space: SearchSpace) -> Arch:
    """A digit string, JSON list, preset name, or a search's ``best.json`` (checked against ``space``)."""
    path = Path(text)
    if text.endswith(".json") or path.is_file():
        data = read_json(path, "architecture file")
        if not isinstance(data, dict) or not isinstance(data.get("arch"), str):
            raise UserError("expected a JSON object with an 'arch' digit string (a search's best.json)", path)
        if data.get("space", space.name) != space.name or data.get("width_mult", 1.0) != space.width_mult:
            raise UserError(
                f"architecture is for space {data.get('space')} x{data.get('width_mult', 1.0)}, "
                f"the config uses {space.describe()}", path,
            )
        text = data["arch"]
    return parse_arch(text, space)


def is_finished(run_dir: Path) -> bool:
    """A training run that reached its end writes metrics.json last."""
    return (Path(run_dir) / "metrics.json").exists()


def run_retrain(arch_text: str, cfg: RetrainConfig, out_dir: Path, resume: bool, pretrain: bool = True) -> dict:
    """Pretrain (optional) and train the detector of one architecture; returns its test result.

    Each step writes its own sub-folder; with ``resume`` a finished step is skipped and an
    interrupted one continues from its checkpoint.
    """
    out_dir = Path(out_dir)
    space = get_space(cfg.space, cfg.width_mult)
    arch = resolve_arch(arch_text, space)
    if cfg.data.test is None:
        raise UserError("retraining reports on the test split: set data.test in the config")
    init = cfg.init
    if pretrain and cfg.pretrain is not None:
        pre_cfg = cfg.pretrain_config()
        pre_dir = out_dir / "pretrain"
        if not (resume and is_finished(pre_dir)):
            run_stage(pretrain_job(pre_cfg, arch), pre_cfg, pre_dir, resume)
        init = pre_dir / CHECKPOINT
    det_cfg = cfg.model_copy(update={"init": init})
    det_dir = out_dir / "detector"
    if resume and is_finished(det_dir):
        metrics = json.loads((det_dir / "metrics.json").read_text())
    else:
        metrics = run_stage(finetune_job(det_cfg, det_dir, arch), det_cfg, det_dir, resume)
    cost = arch_cost(space, arch)
    result = {
        "arch": arch_to_str(arch), "space": space.name, "width_mult": space.width_mult,
        "body_flops": cost.body_flops, "body_params": cost.body_params, "pretrained": init is not None,
        "test": metrics["metrics"], "checkpoint": str(det_dir / CHECKPOINT),
    }
    if is_main():
        write_json_atomic(result, out_dir / RESULT_FILE, indent=2)
    return result

