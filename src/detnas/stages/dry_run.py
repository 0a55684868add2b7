"""``--dry-run`` of every stage command and of ``pipeline``: what the run checks before its first step,
and its plan; it writes nothing.

The data are read with the stages' own readers (so a dry run refuses what the run would refuse), the
search budget and the path-sampling range are checked against the space, and the plan says, stage by
stage, how many iterations and images it takes and what the run folder already holds (finished, or
where it resumes), what the detector costs at its input size, about how much memory a worker needs,
whether each learning rate was set for this many workers (``dry_run_timing.lr_scaling``), and, from a
few steps timed on this machine, about how long each stage will take.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from detnas.artifacts.init_weights import finetuned_supernet
from detnas.checkpoint import load_checkpoint
from detnas.config.runs import CHECKPOINT, FINETUNE, PRETRAIN, RANK_CHECK, SPLIT_FILE, is_finished, supernet_stage
from detnas.config.schema import (
    EvaluateConfig,
    FinetuneConfig,
    PipelineConfig,
    PretrainConfig,
    RankCheckStageConfig,
    RetrainConfig,
    ScheduleConfig,
    SearchStageConfig,
)
from detnas.data.sources import load_detection, source_path
from detnas.errors import UserError, read_json
from detnas.model.flops import arch_cost, fmt_millions
from detnas.model.space import Arch, SearchSpace, arch_to_str, get_space
from detnas.stages import dry_run_checks as check
from detnas.stages.dry_run_timing import StepTimer, duration, lr_scaling
from detnas.stages.pipeline import planned_stages

Seconds = Callable[[StepTimer], float]  # a stage's estimated wall time, from the timed steps


@dataclass
class _Plan:
    space: SearchSpace | None
    amp: str = "auto"
    lines: list[str] = field(default_factory=list)  # checks, then the plan's rows
    details: list[str] = field(default_factory=list)  # detector cost, memory
    schedules: list[tuple[str, ScheduleConfig]] = field(default_factory=list)  # by --set key, for lr_scaling
    rows: list[tuple[str, Seconds]] = field(default_factory=list)  # stages still to run, timed


def dry_run(stage: str, cfg, out: Path, workers: int = 1, estimate_steps: int = 0, set_keys: bool = True,
            **details) -> list[str]:
    """Check ``cfg`` (the config of ``stage``) and its data as the run would, and describe the run in
    ``out`` with ``workers`` workers, as lines of text; ``estimate_steps`` > 0 times that many steps
    of each training for a time estimate; ``set_keys``: ``cfg``'s keys are those ``--set`` changes (not
    so for a stage's part of a pipeline config). Raises the run's own one-line errors."""
    plan = _PLANS[stage](cfg, None if out is None else Path(out), workers, **details)
    lines = [*plan.lines]
    lines += [""] + plan.details if plan.details else []
    warnings = lr_scaling(plan.schedules, workers, as_set=set_keys)
    lines += [""] + warnings if warnings else []
    if estimate_steps and plan.rows:
        lines += ["", *_estimate(plan, estimate_steps)]
    lines.append("dry run: nothing was written")
    return lines


def _estimate(plan: _Plan, steps: int) -> list[str]:
    timer = StepTimer(plan.space, plan.amp, steps)
    lines = [f"time estimate from {steps} timed step{'s' if steps > 1 else ''} of each kind on {timer.describe()} "
             "(an estimate: data loading, evaluation and communication between workers not included; "
             "--estimate-steps 0 skips it):"]
    total = 0.0
    for name, seconds in plan.rows:
        s = seconds(timer)
        total += s
        lines.append(f"  {name:<28} {duration(s)}")
    if len(plan.rows) > 1:
        lines.append(f"  {'total':<28} {duration(total)}")
    return lines


def _training(schedule: ScheduleConfig, per_image: Callable[[StepTimer], float]) -> Seconds:
    return lambda timer: per_image(timer) * schedule.batch_size * schedule.iters


def _pretraining(cfg: PretrainConfig, workers: int, n_classes: int, arch: Arch | None = None) -> tuple[str, Seconds]:
    return (check.training(cfg.train, workers),
            _training(cfg.train, lambda t: t.classification(arch, cfg.data.image_size, cfg.train.batch_size,
                                                            n_classes)))


def _detection(cfg: FinetuneConfig, workers: int, n_classes: int, arch: Arch | None = None) -> tuple[str, Seconds]:
    return (check.training(cfg.train, workers),
            _training(cfg.train, lambda t: t.detection(arch, cfg.detector, cfg.train.batch_size, n_classes)))


def _pretrain(cfg: PretrainConfig, out: Path, workers: int) -> _Plan:
    space = get_space(cfg.space, cfg.width_mult)
    plan = _Plan(space, cfg.amp, [f"config: {space.describe()} space supernet, seed {cfg.seed}, {workers} worker(s); "
                                  f"{_start(cfg)}"])
    data, n_classes = check.classification_data(cfg.data)
    plan.lines += [*data, *check.sampling(space, cfg.sampling, cfg.seed), *check.eval_archs(cfg.eval.archs)]
    work, seconds = _pretraining(cfg, workers, n_classes)
    plan.lines += ["", f"plan (run folder {out}):", f"  {PRETRAIN:<28} {check.state(out):<20} {work}"]
    plan.details = [check.memory_header(space),
                    check.pretrain_memory(space, cfg.data.image_size, cfg.train.batch_size, n_classes)]
    plan.schedules = [("train", cfg.train)]
    plan.rows = [(PRETRAIN, seconds)] if not is_finished(out) else []
    return plan


def _start(cfg: PretrainConfig | FinetuneConfig) -> str:
    if cfg.init is None:
        return "starts from random weights (init: none)"
    if not Path(cfg.init).exists():
        raise UserError("init: not found", cfg.init)
    if type(cfg) is FinetuneConfig and finetuned_supernet(cfg.init):  # a retraining's network takes its path only
        return f"starts from the whole finetuned supernet detector in {cfg.init}"
    return f"starts from the backbone in {cfg.init}"


def _finetune(cfg: FinetuneConfig, out: Path, workers: int) -> _Plan:
    space = get_space(cfg.space, cfg.width_mult)
    plan = _Plan(space, cfg.amp, [f"config: {space.describe()} space supernet, {cfg.detector.kind} detector, "
                                  f"seed {cfg.seed}, {workers} worker(s); {_start(cfg)}"])
    data, n_classes = check.detection_data(cfg.data)
    plan.lines += [*data, *check.sampling(space, cfg.sampling, cfg.seed), *check.eval_archs(cfg.eval.archs)]
    work, seconds = _detection(cfg, workers, n_classes)
    plan.lines += ["", f"plan (run folder {out}):", f"  {FINETUNE:<28} {check.state(out):<20} {work}"]
    plan.details = [*check.detector_cost(space, cfg.detector, n_classes), check.memory_header(space),
                    check.finetune_memory(space, cfg.detector, cfg.train.batch_size, n_classes)]
    plan.schedules = [("train", cfg.train)]
    plan.rows = [(FINETUNE, seconds)] if not is_finished(out) else []
    return plan


def _supernet(folder: Path) -> tuple[FinetuneConfig, int, int]:
    """A finetuned supernet's config, number of classes and search-split size, as the search reads them."""
    state = load_checkpoint(Path(folder) / CHECKPOINT, FINETUNE)
    if state["step"] < state["config"]["train"]["iters"]:
        raise UserError("the supernet's finetuning has not finished (resume it first)", Path(folder) / CHECKPOINT)
    split = read_json(Path(folder) / SPLIT_FILE, "search split (finetune with data.holdout.size > 0)")
    return FinetuneConfig.model_validate(state["config"]), len(state["classes"]), len(split.get("images", []))


def _search(cfg: SearchStageConfig, out: Path, workers: int) -> _Plan:
    ft, n_classes, split = _supernet(cfg.supernet)
    space = get_space(ft.space, ft.width_mult)
    plan = _Plan(space, cfg.amp, [f"supernet: {cfg.supernet} ({space.describe()} space, {ft.detector.kind} "
                                  f"detector, {n_classes} classes; search split of {split:,} images)"])
    for other in cfg.other_supernets:  # the ensemble's: each scores every candidate
        _supernet(other)
        plan.lines.append(f"supernet: {other} (its fitness is averaged with the first one's)")
    plan.lines += check.budget(space, cfg.search)
    k = 1 + len(cfg.other_supernets)
    images = (cfg.fitness.recalib_images + split) * k
    plan.lines += ["", f"plan (run folder {out}):", f"  {'search (' + cfg.search.strategy + ')':<28} "
                   f"{check.state(out):<20} {cfg.search.budget:,} candidates x ({cfg.fitness.recalib_images:,} "
                   f"recalibration + {split:,} search-split images){_times_supernets(k)}"]
    plan.rows = [] if is_finished(out) else [(
        "search", lambda t: t.inference(ft.detector, cfg.fitness.batch_size, n_classes) * images
        * cfg.search.budget / workers)]
    return plan


def _times_supernets(k: int) -> str:
    return f" x {k} supernets" if k > 1 else ""


def _retrain_rows(cfg: RetrainConfig, workers: int, n_classes: int, arch: Arch | None, pretrain: bool,
                  n_pretrain_classes: int) -> list[tuple[str, str, Seconds]]:
    """(name, work, seconds) of a retraining's classification pretraining (if any) and detector training."""
    rows = []
    if pretrain and cfg.pretrain is not None:
        rows.append(("pretrain", *_pretraining(cfg.pretrain_config(), workers, n_pretrain_classes, arch)))
    start = "from the supernet's weights" if cfg.supernet is not None else "detector"
    rows.append((start, *_detection(cfg, workers, n_classes, arch)))
    return rows


def _total(rows: list[tuple[str, str, Seconds]]) -> Seconds:
    return lambda timer: sum(seconds(timer) for _, _, seconds in rows)


def _retrain(cfg: RetrainConfig, out: Path, workers: int, arch: Arch, pretrain: bool = True) -> _Plan:
    space = get_space(cfg.space, cfg.width_mult)
    cost = arch_cost(space, arch)
    plan = _Plan(space, cfg.amp, [f"architecture {arch_to_str(arch)} ({space.describe()} space, body FLOPs "
                                  f"{fmt_millions(cost.body_flops)}), {cfg.detector.kind} detector, seed {cfg.seed}, "
                                  f"{workers} worker(s)"])
    n_pretrain_classes = 0
    if pretrain and cfg.pretrain is not None:
        data, n_pretrain_classes = check.classification_data(cfg.pretrain.data)
        plan.lines += data
        plan.schedules.append(("pretrain.train", cfg.pretrain.train))
    if cfg.supernet is not None:
        _supernet(cfg.supernet)
        plan.lines.append(f"starts from its path's weights in the supernet {cfg.supernet}")
    if cfg.data.test is None:
        raise UserError("retraining reports on the test split: set data.test in the config")
    data, n_classes = check.detection_data(cfg.data)
    plan.lines += [*data, "", f"plan (run folder {out}):"]
    for name, work, seconds in _retrain_rows(cfg, workers, n_classes, arch, pretrain, n_pretrain_classes):
        plan.lines.append(f"  {name:<28} {work}")
        plan.rows.append((name, seconds))
    plan.lines.append(f"  {'':<28} {check.state(out)}")
    plan.details = check.detector_cost(space, cfg.detector, n_classes, arch)
    plan.schedules.append(("train", cfg.train))
    if is_finished(out):
        plan.rows = []
    return plan


def _rank_check(cfg: RankCheckStageConfig, out: Path, workers: int) -> _Plan:
    ft, n_classes, split = _supernet(cfg.supernet)
    space = get_space(ft.space, ft.width_mult)
    rc, rt = cfg.rank_check, cfg.retrain
    plan = _Plan(space, rt.amp, [f"supernet: {cfg.supernet} ({space.describe()} space, search split of "
                                 f"{split:,} images)", *check.budget(space, cfg.search)])
    data, _ = check.detection_data(rt.data, test_needed="the retrainings' test")
    plan.lines += [*data, "", f"plan (run folder {out}):",
                   f"  {RANK_CHECK:<28} {check.state(out):<20} {rc.archs} architectures scored on the supernet "
                   f"and retrained alone x {rc.seeds} seeds"]
    n_pretrain_classes = check.classification_data(rt.pretrain.data)[1] if rt.pretrain is not None else 0
    retrain = _total(_retrain_rows(rt, workers, n_classes, None, True, n_pretrain_classes))
    images = (cfg.fitness.recalib_images + split) * (1 + len(cfg.other_supernets))  # scored on every supernet
    plan.rows = [] if is_finished(out) else [(RANK_CHECK, lambda t: rc.archs * (
        rc.seeds * retrain(t) + t.inference(ft.detector, cfg.fitness.batch_size, n_classes) * images / workers))]
    plan.schedules = [("retrain.train", rt.train)]
    return plan


def _evaluate(cfg: EvaluateConfig, out: Path | None, workers: int, checkpoint: Path) -> _Plan:
    from detnas.artifacts.weights import load_trained_detector

    _, info = load_trained_detector(checkpoint, "evaluate")
    data = load_detection(cfg.data)
    return _Plan(None, lines=[
        f"checkpoint: {checkpoint} ({info['kind']} detector, arch {info['arch']}, {len(info['classes'])} classes)",
        f"data: {len(data):,} images ({source_path(cfg.data)}), batches of {cfg.batch_size}, metric {cfg.metric}"])


def _pipeline(cfg: PipelineConfig, out: Path, workers: int) -> _Plan:
    space = get_space(cfg.space, cfg.width_mult)
    plan = _Plan(space, cfg.amp, [f"config: {space.describe()} space, {cfg.detector.kind} detector, seed {cfg.seed}, "
                                  f"{workers} worker(s)"])
    pre_cfg = cfg.pretrain_config()
    n_cls = 1000
    if cfg.classification is not None and (pre_cfg is not None or cfg.retrain.pretrain is not None):
        data, n_cls = check.classification_data(cfg.classification)
        plan.lines += data
    data, n_det = check.detection_data(cfg.detection, test_needed="retraining")
    plan.lines += [*data, *check.budget(space, cfg.search), *check.sampling(space, cfg.sampling, cfg.seed),
                   *check.eval_archs(cfg.eval.archs), *check.lanes(cfg.parallel_stages, workers), "",
                   f"plan (run folder {out}):"]
    ft_cfg = cfg.finetune_config(None)
    rt_cfg = cfg.retrain_config(out)
    retrain = _retrain_rows(rt_cfg, workers, n_det, None, True, n_cls)
    images = (cfg.fitness.recalib_images + cfg.detection.holdout.size) * cfg.supernets  # each candidate on each

    def search(t: StepTimer) -> float:
        return t.inference(cfg.detector, cfg.fitness.batch_size, n_det) * images * cfg.search.budget / workers

    supernets = range(cfg.supernets)  # trained alike: the same work and time each
    for name, folder in planned_stages(cfg, out):
        if name in {supernet_stage(PRETRAIN, k) for k in supernets}:
            work, seconds = _pretraining(pre_cfg, workers, n_cls)
            work = "pretrain " + work
        elif name in {supernet_stage(FINETUNE, k) for k in supernets}:
            work, seconds = _detection(ft_cfg, workers, n_det)
            work = "finetune " + work
        elif name.startswith("search"):
            work = (f"{cfg.search.budget:,} candidates x ({cfg.fitness.recalib_images:,} recalibration + "
                    f"{cfg.detection.holdout.size:,} search-split images){_times_supernets(cfg.supernets)}")
            seconds = search
        elif name == RANK_CHECK:
            rc = cfg.rank_check
            work = f"{rc.archs} architectures scored and retrained alone x {rc.seeds} seeds"
            seconds = (lambda t: rc.archs * (rc.seeds * _total(retrain)(t) + search(t) / cfg.search.budget))
        else:
            work, seconds = ", ".join(f"{n} {w}" for n, w, _ in retrain), _total(retrain)
        plan.lines.append(f"  {name:<28} {check.state(folder):<20} {work}")
        if not is_finished(folder):
            plan.rows.append((name, seconds))
    plan.details = [*check.detector_cost(space, cfg.detector, n_det), check.memory_header(space)]
    if pre_cfg is not None:
        plan.details.append(check.pretrain_memory(space, cfg.classification.image_size, pre_cfg.train.batch_size,
                                                  n_cls))
    plan.details.append(check.finetune_memory(space, cfg.detector, cfg.finetune.batch_size, n_det))
    if pre_cfg is not None:
        plan.schedules.append(("pretrain.train", pre_cfg.train))
    plan.schedules.append(("finetune", cfg.finetune))
    if rt_cfg.pretrain is not None:
        plan.schedules.append(("retrain.pretrain", rt_cfg.pretrain.train))
    plan.schedules.append(("retrain.train", cfg.retrain.train))
    return plan


_PLANS = {"pipeline": _pipeline, "pretrain": _pretrain, "finetune": _finetune, "search": _search,
          "retrain": _retrain, "rank-check": _rank_check, "evaluate": _evaluate}
