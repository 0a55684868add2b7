"""The ``detnas`` command line. Thin: each command parses its arguments and calls one function."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from detnas.errors import UserError
from detnas.model.space import PRESETS, SPACES, ArchError, arch_to_str, get_space, parse_arch, resolve_arch

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="DetNAS: backbone search for object detection.",
)


def _mflops(v: int) -> str:
    from detnas.model.flops import fmt_millions

    return fmt_millions(v)


@app.command()
def space() -> None:
    """List the search spaces and the named architectures (presets) with their FLOPs at 224x224."""
    from detnas.model.flops import arch_cost, cost_table

    print(f"{'space':<8} {'blocks':>6} {'stem':>5} {'channels':<22} {'body FLOPs range':>22}")
    for name, sp in SPACES.items():
        lo, hi = cost_table(sp).body_range
        ch = "/".join(map(str, sp.stage_channels))
        print(f"{name:<8} {sp.num_blocks:>6} {sp.stem_channels:>5} {ch:<22} {_mflops(lo):>10} - {_mflops(hi):>9}")
    print()
    print(f"{'preset':<28} {'space':<11} {'body':>10} {'full':>10} {'params':>8}  arch")
    for p in PRESETS.values():
        sp = p.search_space()
        c = arch_cost(sp, parse_arch(p.arch, sp))
        print(
            f"{p.name:<28} {sp.describe():<11} {_mflops(c.body_flops):>10} {_mflops(c.full_flops):>10} "
            f"{c.full_params / 1e6:>7.2f}M  {p.arch}"
        )


@app.command()
def flops(
    arch: Annotated[str, typer.Option(help="digit string, JSON list or preset name")],
    space_name: Annotated[
        Optional[str], typer.Option("--space", help="small or large (default: the preset's, or by length)")
    ] = None,
    width_mult: Annotated[Optional[float], typer.Option(help="width multiplier (default: the preset's or 1.0)")] = None,
    input_size: Annotated[int, typer.Option(help="square input size in pixels")] = 224,
    num_classes: Annotated[int, typer.Option(help="classifier width for the 'full' count")] = 1000,
    detector: Annotated[
        Optional[str], typer.Option(help="also count a whole detector around it: fpn or retinanet")
    ] = None,
    det_classes: Annotated[int, typer.Option(help="object classes of the detector")] = 80,
    fpn_channels: Annotated[int, typer.Option(help="FPN width (paper: 256)")] = 256,
    box_head_channels: Annotated[int, typer.Option(help="FPN Faster R-CNN box head width (paper: 1024)")] = 1024,
    proposals: Annotated[int, typer.Option(help="test-time proposals of FPN Faster R-CNN (paper: 1000)")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """FLOPs (multiply-accumulates) and parameters of one architecture, optionally of a whole detector.

    The detector count is at the size the network sees (--input-size, square) with the paper's head
    sizes unless given; the box head is counted for all test-time proposals.
    """
    from detnas.model.flops import arch_cost

    if input_size < 32:
        raise UserError(f"--input-size must be at least 32, got {input_size}")
    a, sp = resolve_arch(arch, space_name, width_mult)
    c = arch_cost(sp, a, input_size, num_classes)
    result = {
        "arch": arch_to_str(a),
        "space": sp.name,
        "width_mult": sp.width_mult,
        "input_size": input_size,
        "body_flops": c.body_flops,
        "full_flops": c.full_flops,
        "params": c.full_params,
        "body_params": c.body_params,
    }
    if detector is not None:
        from detnas.model.detector_flops import detector_costs

        result["detector"] = detector_costs(sp, a, detector, det_classes, input_size, fpn_channels,
                                            box_head_channels, proposals)
    if as_json:
        print(json.dumps(result))
        return
    for k, v in result.items():
        if k == "detector":
            for part, macs in v.items():
                print(f"{'detector ' + part:<12} {macs if part == 'kind' else _mflops(macs)}")
        else:
            print(f"{k:<12} {_mflops(v) if k.endswith('flops') else v}")


@app.command()
def latency(
    out: Annotated[Path, typer.Option("--out", help="the table's JSON file")],
    space_name: Annotated[str, typer.Option("--space", help="small or large")] = "small",
    width_mult: Annotated[float, typer.Option(help="width multiplier")] = 1.0,
    input_size: Annotated[str, typer.Option(help="the network's input, H or HxW (after the detector's resize)")] = "224",
    batch: Annotated[int, typer.Option(help="images per forward pass")] = 1,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N")] = "cpu",
    threads: Annotated[Optional[int], typer.Option(help="CPU threads (default: torch's)")] = None,
    detector: Annotated[str, typer.Option(help="fpn, retinanet, or none (the backbone only)")] = "fpn",
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="take the detector's shape from this stage config's 'detector' section")] = None,
    classes: Annotated[int, typer.Option(help="object classes of the detector")] = 80,
    reps: Annotated[int, typer.Option(help="timed repetitions (each runs every choice at every position)")] = 20,
    warmup: Annotated[int, typer.Option(help="untimed repetitions first")] = 5,
    clock: Annotated[str, typer.Option(
        help="wall, or cpu: this thread's CPU time (with --threads 1 on a machine other processes load)")] = "wall",
) -> None:
    """Measure a latency table on this machine: every choice block at every position (on its real input
    shape) and the fixed parts (stem, FPN, heads). Predicted latency = the sum of an architecture's parts."""
    import torch

    from detnas.atomic import write_json_atomic
    from detnas.tools.latency import check_clock, detector_of_config, measure_table, parse_size

    size = parse_size(input_size)
    check_clock(clock, device, threads)
    if detector not in ("fpn", "retinanet", "none"):
        raise UserError(f"--detector must be fpn, retinanet or none, got {detector!r}")
    if min(batch, reps, classes) < 1 or warmup < 0 or (threads is not None and threads < 1):
        raise UserError("--batch, --reps, --classes and --threads must be at least 1, --warmup at least 0")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available here")
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    if out.is_dir():
        raise UserError("--out is a folder; give a file name such as latency.json", out)
    det_cfg = None if detector == "none" else detector_of_config(config, detector)
    table = measure_table(get_space(space_name, width_mult), size, batch, device, threads, det_cfg, classes,
                          warmup, reps, clock=clock)
    write_json_atomic(table.to_json(), out, indent=1)
    lo, hi = table.range_ms
    parts = ", ".join(f"{k} {v:.2f}" for k, v in table.fixed.items())
    print(f"{out}: {table.meta['device']}, {table.meta['threads']} threads, {clock} clock, input {size[0]}x{size[1]} x{batch}; "
          f"fixed parts (ms): {parts}; predicted latency {lo:.2f}-{hi:.2f} ms")


ConfigOpt = Annotated[Path, typer.Option("--config", help="YAML config file")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="run folder (default: runs/<stage>)")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="continue the run in --out where it stopped")]


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
    print(f"{result['arch']}  body FLOPs {_mflops(result['body_flops'])}  test split:")
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
    """Does the supernet rank architectures as standalone training does? Kendall tau with its interval,
    next to the seed-noise ceiling. Rerun with another --supernet and --resume to reuse the retrainings."""
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
    """The whole pipeline on the built-in demo data (digits on photos), in about 15 minutes on 2 CPU cores."""
    from detnas.stages.demo import run_demo

    report = run_demo(out)
    print(report.read_text() if report.exists() else "")
    print(f"report: {report}")


CheckpointOpt = Annotated[Path, typer.Option("--checkpoint", help="retrained detector checkpoint (detnas retrain)")]


def _source(coco_annotations: Path | None, images: Path | None, voc_root: Path | None, voc_split: str | None):
    from detnas.config.schema import DetectionSource

    if voc_root is not None and (coco_annotations is not None or images is not None):
        raise UserError("give either --coco-annotations and --images, or --voc-root, not both")
    if voc_root is not None:
        return DetectionSource(format="voc", root=voc_root, split=voc_split)
    if voc_split is not None:
        raise UserError("--voc-split needs --voc-root")
    if coco_annotations is None or images is None:
        raise UserError("give the data to evaluate on: --coco-annotations FILE and --images DIR, or --voc-root DIR")
    return DetectionSource(format="coco", annotations=coco_annotations, images=images)


@app.command("evaluate")
def evaluate_cmd(
    checkpoint: CheckpointOpt,
    coco_annotations: Annotated[Optional[Path], typer.Option(help="COCO annotation JSON")] = None,
    images: Annotated[Optional[Path], typer.Option(help="folder of the COCO images")] = None,
    voc_root: Annotated[Optional[Path], typer.Option(help="Pascal VOC folder (Annotations/, JPEGImages/)")] = None,
    voc_split: Annotated[
        Optional[str], typer.Option(help="VOC split: ImageSets/Main/<split>.txt (default: all)")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="images per forward pass")] = 8,
    out: Annotated[Optional[Path], typer.Option("--out", help="also write the metrics to this JSON file")] = None,
) -> None:
    """COCO box mAP (AP, AP50, AP75, APs, APm, APl) of a retrained detector on a COCO or VOC set."""
    from detnas.artifacts.inference import evaluate_detector
    from detnas.artifacts.weights import load_trained_detector
    from detnas.atomic import write_json_atomic
    from detnas.model.cocoeval import format_metrics_table

    source = _source(coco_annotations, images, voc_root, voc_split)
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if out is not None and out.is_dir():
        raise UserError("--out is a folder; give a file name such as metrics.json", out)
    detector, info = load_trained_detector(checkpoint, "evaluate")
    metrics = evaluate_detector(detector, info, source, batch_size)
    print(f"{checkpoint}: {info['kind']} detector, arch {info['arch']} ({info['space']} x{info['width_mult']:g})")
    print(format_metrics_table(metrics))
    if out is not None:
        write_json_atomic({
            "checkpoint": str(checkpoint),
            "arch": info["arch"],
            "space": info["space"],
            "width_mult": info["width_mult"],
            "data": source.model_dump(mode="json", exclude_none=True),
            "metrics": metrics,
        }, out)
        print(f"metrics written to {out}")


@app.command("export")
def export_cmd(
    checkpoint: CheckpointOpt,
    out: Annotated[Path, typer.Option("--out", help="folder to write the exported files to")],
    onnx: Annotated[bool, typer.Option(
        "--onnx/--no-onnx", help="also export the whole detector to ONNX (needs: pip install 'detnas[export]')",
    )] = False,
) -> None:
    """Export a retrained detector: backbone and detector weights (safetensors), arch.json, optionally ONNX."""
    from detnas.artifacts.export import export_model

    result = export_model(checkpoint, out, onnx=onnx)
    for name, path in result["files"].items():
        print(f"{name:<9} {path}")
    if result["onnx_exporter"]:
        print(f"ONNX: whole detector, one image [3, H, W] in [0, 1]; exporter: {result['onnx_exporter']}")


@app.command("predict")
def predict_cmd(
    checkpoint: CheckpointOpt,
    source: Annotated[Path, typer.Argument(help="an image file, or a folder of images", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="folder for detections.json and the drawn images")],
    score_thresh: Annotated[float, typer.Option(help="keep detections scoring at least this")] = 0.5,
) -> None:
    """Detect objects in images with a retrained detector: COCO-format detections.json and the images
    with boxes, class names and scores drawn."""
    from detnas.artifacts.predict import DETECTIONS_FILE, run_predict

    result = run_predict(checkpoint, source, out, score_thresh)
    print(f"{result['detections']} detections (score >= {score_thresh:g}) on {result['images']} images: "
          f"{out / DETECTIONS_FILE}, drawn images in {out}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    # Before torch is imported (the commands import it): OpenMP threads that spin while waiting make
    # training 10x slower as soon as another process (a second torchrun worker, a data loader) shares
    # the cores. Users may override it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        app(args=argv, standalone_mode=False)
    except (UserError, ArchError) as e:
        print(f"detnas: error: {e}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.TyperException as e:  # bad command-line arguments
        if e.format_message():  # empty when help was shown for a bare command
            print(f"detnas: error: {e.format_message()}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        print("detnas: aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("detnas: interrupted", file=sys.stderr)
        sys.exit(130)
