"""Commands that use a retrained detector: ``evaluate``, ``export``, ``predict``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from detnas.cli.app import CheckpointOpt, StageInput, app, stage_command
from detnas.errors import UserError


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


@stage_command("evaluate", config_required=False)
def evaluate_cmd(
    stage: StageInput,
    checkpoint: CheckpointOpt,
    coco_annotations: Annotated[Optional[Path], typer.Option(help="COCO annotation JSON")] = None,
    images: Annotated[Optional[Path], typer.Option(help="folder of the COCO images")] = None,
    voc_root: Annotated[Optional[Path], typer.Option(help="Pascal VOC folder (Annotations/, JPEGImages/)")] = None,
    voc_split: Annotated[
        Optional[str], typer.Option(help="VOC split: ImageSets/Main/<split>.txt (default: all)")
    ] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="images per forward pass (default 8)")] = None,
    metric: Annotated[Optional[str], typer.Option(
        help="coco (default), or also Pascal VOC's AP50: voc07 (11-point, the VOC2007 test's) or voc (area)")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="also write the metrics to this JSON file")] = None,
) -> None:
    """COCO box mAP (AP, AP50, AP75, APs, APm, APl; with --metric voc07 or voc also VOC AP50) of a retrained detector.

    The set is given by its options, or by --config: an evaluate config (`detnas config template evaluate`)
    or a pipeline config, whose detection.test is used."""
    from detnas.config.loader import Override

    options = []
    if stage.config is None or any(v is not None for v in (coco_annotations, images, voc_root, voc_split)):
        source = _source(coco_annotations, images, voc_root, voc_split)
        origin = "--voc-root" if voc_root is not None else "--coco-annotations/--images"
        options.append(Override("data", source.model_dump(mode="json", exclude_none=True), origin))
    if batch_size is not None:
        options.append(Override("batch_size", batch_size, f"--batch-size {batch_size}"))
    if metric is not None:
        options.append(Override("metric", metric, f"--metric {metric}"))
    cfg = stage.load(options=options)
    if out is not None and out.is_dir():
        raise UserError("--out is a folder; give a file name such as metrics.json", out)
    if stage.plan(cfg, out, checkpoint=checkpoint):
        return
    from detnas.artifacts.inference import evaluate_detector
    from detnas.artifacts.weights import load_trained_detector
    from detnas.atomic import write_json_atomic
    from detnas.model.cocoeval import format_metrics_table

    detector, info = load_trained_detector(checkpoint, "evaluate")
    metrics = evaluate_detector(detector, info, cfg.data, cfg.batch_size, metric=cfg.metric)
    print(f"{checkpoint}: {info['kind']} detector, arch {info['arch']} ({info['space']} x{info['width_mult']:g})")
    print(format_metrics_table(metrics))
    if out is not None:
        write_json_atomic({
            "checkpoint": str(checkpoint),
            "arch": info["arch"],
            "space": info["space"],
            "width_mult": info["width_mult"],
            "data": cfg.data.model_dump(mode="json", exclude_none=True),
            "metrics": metrics,
        }, out)
        print(f"metrics written to {out}")


@app.command("export")
def export_cmd(
    checkpoint: CheckpointOpt,
    out: Annotated[Path, typer.Option("--out", help="folder to write the exported files to")],
    onnx: Annotated[bool, typer.Option(
        "--onnx/--no-onnx", metavar="", help="also export the whole detector to ONNX (needs: pip install "
                                             "'detnas[export]')",
    )] = False,
) -> None:
    """Export a retrained detector: backbone and detector weights (safetensors), arch.json, optionally ONNX."""
    from detnas.artifacts.export import export_model

    result = export_model(checkpoint, out, onnx=onnx)
    for name, path in result["files"].items():
        print(f"{name:<9} {path}")
    if result["onnx_exporter"]:
        print(f"ONNX: whole detector, one image [3, H, W] in [0, 1]; exporter: {result['onnx_exporter']}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


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
    print(f"{_count(result['detections'], 'detection')} (score >= {score_thresh:g}) on "
          f"{_count(result['images'], 'image')}: "
          f"{out / DETECTIONS_FILE}, drawn images in {out}")

