"""The whole DetNAS pipeline in one command: pretrain, finetune, search (evolution and random), retrain
the searched architecture, the random-search best and the ShuffleNetV2 baseline, then a report. With
``supernets: K`` it pretrains and finetunes K supernets (seeds seed, seed + 1, ...; supernet k >= 1 in
``pretrain-k/`` and ``finetune-k/``) and the searches score each candidate by their mean fitness.

Each stage writes into its own folder of the run. Rerunning the same command skips the stages that
finished and resumes the one that was interrupted (or stopped by a signal: ``preemption.py``).
"""

from __future__ import annotations

import json
import time
from functools import partial
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
    supernet_dir,
    supernet_stage,
)
from detnas.config.schema import FinetuneConfig, PipelineConfig, PretrainConfig, RetrainConfig
from detnas.distributed import broadcast_object, init_distributed, is_main, on_main
from detnas.model.space import arch_to_str, get_space, resolve_arch
from detnas.stages import preemption
from detnas.stages.jobs import finetune_job, pretrain_job, run_stage
from detnas.stages.lanes import Stage, lanes_for, run_side_by_side
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
    took, the time of an interrupted attempt included (up to its last written file). Stages given
    together are independent: with ``lanes`` > 1 they run side by side (``lanes.py``)."""

    def __init__(self, out: Path, lanes: int = 1):
        self.out, self.lanes = out, lanes
        self.path = out / PIPELINE_FILE
        self.state = json.loads(self.path.read_text()) if self.path.exists() else {"seconds": {}}
        running = self.state.pop("running", {})  # the stages that were interrupted
        if "stage" in running:  # written by a version that ran one stage at a time
            running = {running["stage"]: running}
        for name, entry in running.items():
            self._add(name, _last_write(Path(entry["dir"]), entry["started"]) - entry["started"])
        self.state["wall"] = self.state.get("wall", sum(self.state["seconds"].values()))

    def _add(self, name: str, seconds: float) -> None:
        self.state["seconds"][name] = self.state["seconds"].get(name, 0.0) + seconds
        self._save()

    def _save(self) -> None:
        on_main(lambda: write_json_atomic(self.state, self.path, indent=2))

    def run(self, *stages: Stage) -> None:
        todo = [s for s in stages if not self._skipped(s)]
        if not todo:
            return
        preemption.stop_if_requested(f"the stages before {todo[0].name} are done")
        start = time.perf_counter()
        try:
            if self.lanes > 1 and len(todo) > 1:
                run_side_by_side(todo, self.lanes, self._started, self._finished)
            else:
                for stage in todo:
                    self._started(stage)
                    stage.fn()
                    self._finished(stage)
        finally:
            self.state["wall"] += time.perf_counter() - start
            self._save()

    def _skipped(self, stage: Stage) -> bool:
        if broadcast_object(is_finished(stage.run_dir)):  # rank 0 decides, so that every worker runs the same
            if is_main():
                print(f"pipeline: {stage.name} finished earlier, skipped", flush=True)
            return True
        return False

    def _started(self, stage: Stage) -> None:
        point = resume_point(stage.run_dir) if is_main() else None
        if point is not None:
            print(f"pipeline: {stage.name} resumes {point}", flush=True)
        self.state.setdefault("running", {})[stage.name] = {"dir": str(stage.run_dir), "started": time.time()}
        self._save()

    def _finished(self, stage: Stage) -> None:
        entry = self.state["running"].pop(stage.name)
        if not self.state["running"]:
            del self.state["running"]
        self._add(stage.name, time.time() - entry["started"])


class _Plan:
    """In place of ``_Stages`` for a dry run: lists each stage and its folder, runs and writes nothing."""

    def __init__(self):
        self.stages: list[tuple[str, Path]] = []

    def run(self, *stages: Stage) -> None:
        self.stages += [(s.name, s.run_dir) for s in stages]


def run_pipeline(cfg: PipelineConfig, out: Path) -> Path:
    """Run (or continue) the pipeline in ``out``; returns the path of ``report.md``."""
    out = Path(out)
    with guarded_run(out, CONTINUE):
        dist = init_distributed()
        stages = _Stages(out, lanes_for(cfg.parallel_stages, dist.world_size, dist.device.type))
        _run_stages(cfg, out, stages)
        preemption.stop_if_requested("every stage is done")  # before the report's predictions
        if is_main():
            return write_report(out, stages.state["seconds"], cfg, stages.state["wall"])
        return out / REPORT_FILE


def planned_stages(cfg: PipelineConfig, out: Path) -> list[tuple[str, Path]]:
    """The stages ``run_pipeline`` runs for ``cfg``, in order: (name, folder in ``out``)."""
    plan = _Plan()
    _run_stages(cfg, Path(out), plan)
    return plan.stages


def _run_stages(cfg: PipelineConfig, out: Path, stages: _Stages | _Plan) -> None:
    space = get_space(cfg.space, cfg.width_mult)

    # the supernets (``supernets``): each trained alike with its own seed, side by side where lanes allow
    supernets = range(cfg.supernets)
    inits = [None] * cfg.supernets
    if cfg.pretrain_config() is not None:
        pre_dirs = [supernet_dir(out, PRETRAIN_DIR, k) for k in supernets]
        stages.run(*[Stage(supernet_stage(PRETRAIN, k), pre_dirs[k],
                           partial(_pretrain, cfg.pretrain_config(k), pre_dirs[k])) for k in supernets])
        inits = [d / CHECKPOINT for d in pre_dirs]
    ft_dir, *other_ft = ft_dirs = [supernet_dir(out, FINETUNE_DIR, k) for k in supernets]
    stages.run(*[Stage(supernet_stage(FINETUNE, k), ft_dirs[k],
                       partial(_finetune, cfg.finetune_config(inits[k], k), ft_dirs[k])) for k in supernets])

    strategies = ["evolution"] + (["random"] if cfg.random_search else [])
    searches = [Stage(f"search ({s})", out / SEARCH_DIRS[s], partial(
        run_search_stage, cfg.search_config(ft_dir, s, other_ft), out / SEARCH_DIRS[s], resume=True))
                for s in strategies]

    # with retrain.inherit every network starts from supernet 0's weights of its path: the ensemble chooses the
    # architecture, but a network has one set of weights to start from
    rt_cfg = cfg.retrain_config(ft_dir)
    # the searches' best architectures, read when their retraining starts (the searches wrote them by then)
    candidates = {"searched": str(out / SEARCH_DIRS["evolution"] / BEST_FILE)}
    if cfg.random_search:
        candidates["random"] = str(out / SEARCH_DIRS["random"] / BEST_FILE)
    if cfg.baseline:
        candidates["baseline"] = arch_to_str(space.baseline)
    retrainings = {}
    for repeat in range(cfg.retrain.seeds):
        seed_cfg = rt_cfg.model_copy(update={"seed": cfg.seed + repeat})
        for name, arch in candidates.items():
            r_dir = retrain_dir(out, name, repeat)
            label = name if repeat == 0 else f"{name}, seed {seed_cfg.seed}"
            retrainings.setdefault(name, []).append(
                Stage(f"retrain ({label})", r_dir, partial(_retrain, arch, seed_cfg, r_dir)))
    # the baseline needs no search: it runs beside the searches, the searches' finds after them
    stages.run(*searches, *retrainings.pop("baseline", []))
    stages.run(*[stage for group in retrainings.values() for stage in group])

    if cfg.rank_check is not None:  # the searches' best and the baseline first, then draws
        rc_dir = out / RANK_CHECK_DIR
        include = [str(out / d / BEST_FILE) for d in SEARCH_DIRS.values() if (out / d).is_dir()]
        if cfg.baseline:
            include.append(candidates["baseline"])
        rc_cfg = cfg.rank_check_config(ft_dir, include, other_ft)

        def rank_check() -> None:
            # the retrainings above used the same recipe and seeds: reused, not repeated
            known = {arch_to_str(resolve_arch(arch, space)[0]): [retrain_dir(out, name, k)
                                                                 for k in range(cfg.retrain.seeds)]
                     for name, arch in candidates.items()}
            # with several supernets the search's fitness is their mean: that is what the check checks
            run_rank_check(rc_cfg, rc_dir, resume=True, known=known, mean_checked=cfg.supernets > 1)

        stages.run(Stage(RANK_CHECK, rc_dir, rank_check))


def _pretrain(cfg: PretrainConfig, run_dir: Path) -> None:
    run_stage(pretrain_job(cfg), cfg, run_dir, resume=True)


def _finetune(cfg: FinetuneConfig, run_dir: Path) -> None:
    run_stage(finetune_job(cfg, run_dir), cfg, run_dir, resume=True)


def _retrain(arch: str, cfg: RetrainConfig, run_dir: Path) -> None:
    """``arch``: a digit string, or a search's ``best.json``, read now."""
    run_retrain(resolve_arch(arch, get_space(cfg.space, cfg.width_mult))[0], cfg, run_dir, resume=True,
                pretrain=cfg.pretrain is not None)
