"""The stage commands: ``pretrain`` to ``retrain``, ``rank-check``, ``pipeline`` and ``demo``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from detnas.cli.app import ConfigOpt, OutOpt, ResumeOpt, app
from detnas.errors import UserError
from detnas.model.space import get_space, resolve_arch


def _train_stage(stage: str, config: Path, out: Path | None, resume: bool) -> None:
    from detnas.config.loader import load_config
    from detnas.config.schema import FinetuneConfig, PretrainConfig
    from detnas.stages.jobs import finetune_job, pretrain_job, run_stage

    out = out or Path("runs") / stage
    if stage == "pretrain":
        cfg = load_config(config, PretrainConfig)
        run_stage(pretrain_job(cfg), cfg, out, resume)
    else:
        cfg = load_config(config, FinetuneConfig)
        run_stage(finetune_job(cfg, out), cfg, out, resume)


@app.command()
def pretrain(config: ConfigOpt, out: OutOpt = None, resume: ResumeOpt = False) -> None:
    """Stage 1: train the supernet on classification data, one uniformly sampled path per step."""
    _train_stage("pretrain", config, out, resume)


@app.command()
def finetune(config: ConfigOpt, out: OutOpt = None, resume: ResumeOpt = False) -> None:
    """Stage 2: finetune the supernet inside a detector (FPN or RetinaNet), path-wise."""
    _train_stage("finetune", config, out, resume)


@app.command()
def search(config: ConfigOpt, out: OutOpt = None, resume: ResumeOpt = False) -> None:
    """Stage 3: evolutionary, Pareto (NSGA-II) or random search of the finetuned supernet under a FLOPs, params
    or latency budget."""
    from detnas.config.loader import load_config
    from detnas.config.schema import SearchStageConfig
    from detnas.stages.search import run_search_stage

    cfg = load_config(config, SearchStageConfig)
    run_search_stage(cfg, out or Path("runs") / "search", resume)


@app.command()
def retrain(
    arch: Annotated[str, typer.Option(
        help="digit string, preset name, a search's best.json, or a pareto.json with --pick")],
    config: ConfigOpt,
    out: OutOpt = None,
    resume: ResumeOpt = False,
    no_pretrain: Annotated[bool, typer.Option("--no-pretrain", help="train the detector from scratch")] = False,
    pick: Annotated[Optional[str], typer.Option(
        help="with --arch pareto.json: the front's point to retrain, e.g. 'latency<=12ms', 'flops<300M', "
             "'map>=30%' (best mAP under a cost bound, least cost over an mAP bound)")] = None,
) -> None:
    """Stage 4: retrain one architecture as a standalone network (optionally pretrained) and test it."""
    from detnas.config.loader import load_config
    from detnas.config.schema import RetrainConfig
    from detnas.model.cocoeval import format_metrics_table
    from detnas.model.flops import fmt_millions
    from detnas.search.pareto import arch_from_front, is_front_file
    from detnas.stages.retrain import run_retrain

    cfg = load_config(config, RetrainConfig)
    space = get_space(cfg.space, cfg.width_mult)
    if pick is not None:
        arch = arch_from_front(Path(arch), pick, space)
        print(f"picked {arch} ({pick}) from the Pareto front")
    elif is_front_file(arch):
        raise UserError("this is a Pareto front: choose one of its points with --pick, e.g. --pick 'latency<=12ms'",
                        arch)
    chosen, _ = resolve_arch(arch, space)
    result = run_retrain(chosen, cfg, out or Path("runs") / "retrain", resume, pretrain=not no_pretrain)
    print(f"{result['arch']}  body FLOPs {fmt_millions(result['body_flops'])}  test split:")
    print(format_metrics_table(result["test"]))


@app.command("rank-check")
def rank_check(
    config: Annotated[Path, typer.Option("--config", help="the pipeline's YAML config (its fitness, budget, retraining)")],
    supernet: Annotated[Path, typer.Option("--supernet", help="finetuned supernet run folder (a pipeline's finetune/)")],
    out: OutOpt = None,
    resume: ResumeOpt = False,
    include: Annotated[Optional[list[str]], typer.Option(
        "--include", help="an architecture to check first (digits, preset, best.json); repeatable")] = None,
    archs: Annotated[Optional[int], typer.Option(help="architectures in all (default: rank_check.archs or 12)")] = None,
    seeds: Annotated[Optional[int], typer.Option(help="standalone trainings per architecture (default 2)")] = None,
) -> None:
    """Does the supernet rank architectures as standalone training does? Kendall tau with its interval, next
    to what a perfect predictor would reach through the seed noise and to zero-cost proxies. Rerun with another
    --supernet and --resume to reuse the retrainings (refused if they were made with another retrain recipe)."""
    from detnas.config.loader import load_config
    from detnas.config.schema import PipelineConfig
    from detnas.stages.rank_check import run_rank_check

    overrides = {f"rank_check.{k}": v for k, v in {"archs": archs, "seeds": seeds}.items() if v is not None}
    stage_cfg = load_config(config, PipelineConfig, overrides).rank_check_config(supernet, include or [])
    run_rank_check(stage_cfg, out or Path("runs") / "rank-check", resume)


def _overrides(settings: list[str]) -> dict:
    """``--set KEY=VALUE`` options as dotted-key overrides, each value read as YAML."""
    import yaml

    out = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set takes KEY=VALUE (a dotted key such as search.max_flops=280e6), got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


@app.command()
def pipeline(
    config: Annotated[str, typer.Option("--config", help="YAML config file, or a packaged config: coco-fpn-small, "
                                        "coco-retinanet-small, voc-fpn-small, coco-fpn-large")],
    out: Annotated[Path, typer.Option("--out", help="run folder; rerun to continue an interrupted run")] = Path(
        "runs/pipeline"
    ),
    data_root: Annotated[Optional[Path], typer.Option(
        "--data-root", help="fills ${data_root} in the config's paths (packaged configs: the dataset folder)",
    )] = None,
    imagenet: Annotated[Optional[Path], typer.Option(
        "--imagenet", help="fills ${imagenet}: train/ and val/ class folders (default: DATA_ROOT/imagenet)")] = None,
    settings: Annotated[Optional[list[str]], typer.Option("--set", help="KEY=VALUE on top of the config, e.g. "
                                                          "--set search.max_flops=280e6 (repeatable)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="check the config and data, print the plan, "
                                          "write nothing")] = False,
) -> None:
    """All stages: pretrain, finetune, search (+ random search), retrain searched/random/baseline, report."""
    from detnas.config.loader import find_config, load_config
    from detnas.config.schema import PipelineConfig

    if imagenet is None and data_root is not None:
        imagenet = data_root / "imagenet"
    cfg = load_config(find_config(config), PipelineConfig, _overrides(settings or []),
                      {"data_root": data_root, "imagenet": imagenet})
    if dry_run:  # under torchrun: every worker checks, the first one prints
        from detnas.stages.dry_run import dry_run as plan

        lines = plan(cfg, out, int(os.environ.get("WORLD_SIZE", 1)))
        if os.environ.get("RANK", "0") == "0":
            print("\n".join(lines))
        return
    from detnas.stages.pipeline import run_pipeline

    report = run_pipeline(cfg, out)
    print(f"report: {report}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="run folder; rerun to continue")] = Path("runs/demo"),
) -> None:
    """The whole pipeline on the built-in demo data (digits on photos), in about 10 minutes on 2 CPU cores."""
    from detnas.stages.demo import run_demo

    report = run_demo(out)
    print(report.read_text() if report.exists() else "")
    print(f"report: {report}")

