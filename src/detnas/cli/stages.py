"""The stage commands: ``pretrain`` to ``retrain``, ``rank-check``, ``pipeline`` and ``demo``.

Each reads its config through ``stage_command`` (a file or a packaged name, ``--set``, ``--data-root``,
``--dry-run``); its own options are given to the config as ``Override``s, so that an error in one names it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from detnas.cli.app import OutOpt, ResumeOpt, StageInput, app, flag, stage_command
from detnas.errors import UserError
from detnas.model.space import get_space, resolve_arch


def _option(key: str, value, origin: str) -> list:
    """The command-line option ``origin`` as an override of the stage config's ``key`` (none if unset)."""
    from detnas.config.loader import Override

    return [] if value is None else [Override(key, value, origin)]


InitOpt = Annotated[Optional[Path], typer.Option(
    "--init", help="starting weights (the config's init): one of our checkpoints, an export's .safetensors, or the "
                   "DetNAS authors' released model")]


@stage_command("pretrain")
def pretrain(stage: StageInput, init: InitOpt = None, out: OutOpt = None, resume: ResumeOpt = False) -> None:
    """Stage 1: train the supernet on classification data, one uniformly sampled path per step."""
    cfg = stage.load(options=_option("init", init and str(init), f"--init {init}"))
    out = out or Path("runs/pretrain")
    if stage.plan(cfg, out):
        return
    from detnas.stages.jobs import pretrain_job, run_stage

    run_stage(pretrain_job(cfg), cfg, out, resume)


@stage_command("finetune")
def finetune(stage: StageInput, init: InitOpt = None, out: OutOpt = None, resume: ResumeOpt = False) -> None:
    """Stage 2: finetune the supernet inside a detector (FPN or RetinaNet), path-wise."""
    cfg = stage.load(options=_option("init", init and str(init), f"--init {init}"))
    out = out or Path("runs/finetune")
    if stage.plan(cfg, out):
        return
    from detnas.stages.jobs import finetune_job, run_stage

    run_stage(finetune_job(cfg, out), cfg, out, resume)


@stage_command("search")
def search(
    stage: StageInput,
    supernet: Annotated[Optional[list[Path]], typer.Option("--supernet", help=(
        "the finetuned supernet's run folder (a pipeline's finetune/); overrides the config's; repeatable: the "
        "fitness is the mean over the supernets (an ensemble, e.g. a pipeline's finetune/ and finetune-1/)"))] = None,
    out: OutOpt = None,
    resume: ResumeOpt = False,
) -> None:
    """Stage 3: evolutionary, Pareto (NSGA-II) or random search of the finetuned supernet under a budget.

    The budget bounds FLOPs, parameters or predicted latency."""
    others = [str(p) for p in (supernet or [])[1:]] or None
    cfg = stage.load(supernet[0] if supernet else None, _option("other_supernets", others, "--supernet"))
    out = out or Path("runs/search")
    if stage.plan(cfg, out):
        return
    from detnas.stages.search import run_search_stage

    run_search_stage(cfg, out, resume)


@stage_command("retrain")
def retrain(
    stage: StageInput,
    arch: Annotated[str, typer.Option(
        help="digit string, preset name, a search's best.json, or a pareto.json with --pick")],
    supernet: Annotated[Optional[Path], typer.Option(
        "--supernet", help="start from this finetuned supernet's weights of the path (its run folder)")] = None,
    out: OutOpt = None,
    resume: ResumeOpt = False,
    no_pretrain: Annotated[bool, flag("--no-pretrain", "train the detector without classification pretraining")] = False,
    pick: Annotated[Optional[str], typer.Option(
        help="with --arch pareto.json: the front's point to retrain, e.g. 'latency<=12ms', 'flops<300M', "
             "'map>=30%' (best mAP under a cost bound, least cost over an mAP bound)")] = None,
) -> None:
    """Stage 4: retrain one architecture as a standalone network (optionally pretrained) and test it."""
    from detnas.search.pareto import arch_from_front, is_front_file

    cfg = stage.load(supernet)
    space = get_space(cfg.space, cfg.width_mult)
    if pick is not None:
        arch = arch_from_front(Path(arch), pick, space)
        print(f"picked {arch} ({pick}) from the Pareto front")
    elif is_front_file(arch):
        raise UserError("this is a Pareto front: choose one of its points with --pick, e.g. --pick 'latency<=12ms'",
                        arch)
    chosen, _ = resolve_arch(arch, space)
    out = out or Path("runs/retrain")
    if stage.plan(cfg, out, arch=chosen, pretrain=not no_pretrain):
        return
    from detnas.model.cocoeval import format_metrics_table
    from detnas.model.flops import fmt_millions
    from detnas.stages.retrain import run_retrain

    result = run_retrain(chosen, cfg, out, resume, pretrain=not no_pretrain)
    print(f"{result['arch']}  body FLOPs {fmt_millions(result['body_flops'])}  test split:")
    print(format_metrics_table(result["test"]))


@stage_command("rank-check")
def rank_check(
    stage: StageInput,
    supernet: Annotated[list[Path], typer.Option("--supernet", help=(
        "finetuned supernet run folder (a pipeline's finetune/); repeatable: the first one's fitness is checked, "
        "and how all of them agree is measured"))],
    out: OutOpt = None,
    resume: ResumeOpt = False,
    include: Annotated[Optional[list[str]], typer.Option(
        "--include", help="an architecture to check first (digits, preset, best.json); repeatable")] = None,
    archs: Annotated[Optional[int], typer.Option(help="architectures in all (default: rank_check.archs or 12)")] = None,
    seeds: Annotated[Optional[int], typer.Option(help=(
        "standalone trainings per architecture (default 2); 0: none, only the agreement of several --supernet"))] = None,
) -> None:
    """Does the supernet rank architectures as standalone training does?

    Kendall tau with its interval, next to what a perfect predictor would reach through the seed noise and
    to zero-cost proxies; with several --supernet, the tau between every two of them too (with --seeds 0
    that alone: no retraining). Rerun with another --supernet and --resume to reuse the retrainings (refused
    if they were made with another retrain recipe)."""
    others = [str(p) for p in supernet[1:]] or None
    cfg = stage.load(supernet[0], [
        *_option("other_supernets", others, "--supernet"), *_option("include", include, "--include"),
        *_option("rank_check.archs", archs, f"--archs {archs}"), *_option("rank_check.seeds", seeds, f"--seeds {seeds}")])
    out = out or Path("runs/rank-check")
    if stage.plan(cfg, out):
        return
    from detnas.stages.rank_check import run_rank_check

    run_rank_check(cfg, out, resume)


@stage_command("pipeline")
def pipeline(
    stage: StageInput,
    out: Annotated[Path, typer.Option("--out", help="run folder; rerun to continue an interrupted run")] = Path(
        "runs/pipeline"),
) -> None:
    """All stages: pretrain, finetune, search (+ random search), retrain searched/random/baseline, report."""
    cfg = stage.load()
    if stage.plan(cfg, out):
        return
    from detnas.stages.pipeline import run_pipeline

    print(f"report: {run_pipeline(cfg, out)}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="run folder; rerun to continue")] = Path("runs/demo"),
) -> None:
    """The whole pipeline on the built-in demo data (digits on photos), in 7-10 minutes on 2 CPU cores."""
    from detnas.stages.demo import run_demo

    report = run_demo(out)
    print(report.read_text() if report.exists() else "")
    print(f"report: {report}")
