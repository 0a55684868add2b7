"""Commands that use a retrained detector: ``evaluate``, ``export``, ``predict``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from detnas.cli.app import CheckpointOpt, app
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

