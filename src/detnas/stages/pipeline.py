"""The whole DetNAS pipeline in one command: pretrain, finetune, search (evolution and random), retrain
the searched architecture, the random-search best and the ShuffleNetV2 baseline, then a report.

Each stage writes into its own folder of the run. Rerunning the same command skips the stages that
finished and resumes the one that was interrupted (or stopped by a signal: ``preemption.py``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from detnas.atomic import write_json_atomic
from detnas.config.runs import (
    BEST_FILE,
    CHECKPOINT,
    FINETUNE,
    FINETUNE_DIR,
    PIPELINE_FILE,
    PRETRAIN,
    PRETRAIN_DIR,
    RANK_CHECK,
    RANK_CHECK_DIR,
    REPORT_FILE,
    SEARCH_DIRS,
    is_finished,
    resume_point,
    retrain_dir,
)
from detnas.config.schema import PipelineConfig
from detnas.distributed import broadcast_object, is_main, on_main
from detnas.model.space import arch_to_str, get_space, resolve_arch
from detnas.stages import preemption
from detnas.stages.jobs import finetune_job, pretrain_job, run_stage
from detnas.stages.rank_check import run_rank_check
from detnas.stages.report import write_report
from detnas.stages.retrain import run_retrain
from detnas.stages.run_guard import guarded_run
from detnas.stages.search import run_search_stage

CONTINUE = "run the same command again"  # how a stopped pipeline continues


def _last_write(folder: Path, since: float) -> float:
    """The time of the newest file in ``folder`` (``since`` when there is none)."""
    times = [p.stat().st_mtime for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    return max([since, *times])


class _Stages:
    """Runs the stages in order, skipping finished ones (and saying so), and records how long each
    took, the time of an interrupted attempt included (up to its last written file)."""

    def __init__(self, out: Path):
        self.out = out
        self.path = out / PIPELINE_FILE
        self.state = json.loads(self.path.read_text()) if self.path.exists() else {"seconds": {}}
        running = self.state.pop("running", None)  # a stage that was interrupted
        if running is not None:
            self._add(running["stage"], _last_write(Path(running["dir"]), running["started"]) - running["started"])

    def _add(self, name: str, seconds: float) -> None:
        self.state["seconds"][name] = self.state["seconds"].get(name, 0.0) + seconds
        self._save()

    def _save(self) -> None:
        on_main(lambda: write_json_atomic(self.state, self.path, indent=2))

    def run(self, name: str, done: bool, run_dir: Path, fn) -> None:
        if broadcast_object(done):  # rank 0 decides, so that every worker runs the same stages
            if is_main():
                print(f"pipeline: {name} finished earlier, skipped", flush=True)
            return
        preemption.stop_if_requested(f"the stages before {name} are done")
        point = resume_point(run_dir) if is_main() else None
        if point is not None:
            print(f"pipeline: {name} resumes {point}", flush=True)
        self.state["running"] = {"stage": name, "dir": str(run_dir), "started": time.time()}
        self._save()
        start = time.perf_counter()
        fn()
        del self.state["running"]
        self._add(name, time.perf_counter() - start)


class _Plan:
    """In place of ``_Stages`` for a dry run: lists each stage and its folder, runs and writes nothing."""

    def __init__(self):
        self.stages: list[tuple[str, Path]] = []

    def run(self, name: str, done: bool, run_dir: Path, fn) -> None:
        self.stages.append((name, run_dir))


def run_pipeline(cfg: PipelineConfig, out: Path) -> Path:
    """Run (or continue) the pipeline in ``out``; returns the path of ``report.md``."""
    out = Path(out)
    with guarded_run(out, CONTINUE):
        stages = _Stages(out)
        _run_stages(cfg, out, stages)
        preemption.stop_if_requested("every stage is done")  # before the report's predictions
        if is_main():
            return write_report(out, stages.state["seconds"], cfg)
        return out / REPORT_FILE


def planned_stages(cfg: PipelineConfig, out: Path) -> list[tuple[str, Path]]:
    """The stages ``run_pipeline`` runs for ``cfg``, in order: (name, folder in ``out``)."""
    plan = _Plan()
    _run_stages(cfg, Path(out), plan)
    return plan.stages


def _run_stages(cfg: PipelineConfig, out: Path, stages: _Stages | _Plan) -> None:
    space = get_space(cfg.space, cfg.width_mult)

    pre_cfg = cfg.pretrain_config()
    init = None
    if pre_cfg is not None:
        pre_dir = out / PRETRAIN_DIR
        stages.run(PRETRAIN, is_finished(pre_dir), pre_dir,
                   lambda: run_stage(pretrain_job(pre_cfg), pre_cfg, pre_dir, resume=True))
        init = pre_dir / CHECKPOINT

    ft_cfg = cfg.finetune_config(init)
    ft_dir = out / FINETUNE_DIR
    stages.run(FINETUNE, is_finished(ft_dir), ft_dir,
               lambda: run_stage(finetune_job(ft_cfg, ft_dir), ft_cfg, ft_dir, resume=True))

    strategies = ["evolution"] + (["random"] if cfg.random_search else [])
    for strategy in strategies:
        s_dir = out / SEARCH_DIRS[strategy]
        s_cfg = cfg.search_config(ft_dir, strategy)
        stages.run(f"search ({strategy})", is_finished(s_dir), s_dir,
                   lambda: run_search_stage(s_cfg, s_dir, resume=True))

    rt_cfg = cfg.retrain_config(ft_dir)
    # the searches' best architectures, read when their retraining starts (rank 0 wrote them by then)
    candidates = {"searched": lambda: resolve_arch(str(out / SEARCH_DIRS["evolution"] / BEST_FILE), space)[0]}
    if cfg.random_search:
        candidates["random"] = lambda: resolve_arch(str(out / SEARCH_DIRS["random"] / BEST_FILE), space)[0]
    if cfg.baseline:
        candidates["baseline"] = lambda: (0,) * space.num_blocks
    for repeat in range(cfg.retrain.seeds):
        seed_cfg = rt_cfg.model_copy(update={"seed": cfg.seed + repeat})
        for name, arch in candidates.items():
            r_dir = retrain_dir(out, name, repeat)
            label = name if repeat == 0 else f"{name}, seed {seed_cfg.seed}"
            stages.run(f"retrain ({label})", is_finished(r_dir), r_dir,
                       lambda: run_retrain(arch(), seed_cfg, r_dir, resume=True,
                                           pretrain=seed_cfg.pretrain is not None))
    if cfg.rank_check is not None:  # the searches' best and the baseline first, then draws
        rc_dir = out / RANK_CHECK_DIR
        include = [str(out / d / BEST_FILE) for d in SEARCH_DIRS.values() if (out / d).is_dir()]
        rc_cfg = cfg.rank_check_config(ft_dir, include + (["0" * space.num_blocks] if cfg.baseline else []))

        def rank_check() -> None:
            # the retrainings above used the same recipe and seeds: reused, not repeated
            known = {arch_to_str(arch()): [retrain_dir(out, name, k) for k in range(cfg.retrain.seeds)]
                     for name, arch in candidates.items()}
            run_rank_check(rc_cfg, rc_dir, resume=True, known=known)

        stages.run(RANK_CHECK, is_finished(rc_dir), rc_dir, rank_check)
