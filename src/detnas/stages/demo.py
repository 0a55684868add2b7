"""``detnas demo``: the whole pipeline on the built-in data (nothing is downloaded)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from detnas.config.schema import PipelineConfig
from detnas.data.demo import DemoPaths, build_demo_data
from detnas.distributed import barrier, is_main
from detnas.stages.pipeline import run_pipeline
from detnas.strict import validate

CONFIG_FILE = "config.yaml"


def demo_config(data_root: Path | None = None, paths: DemoPaths | None = None) -> dict:
    """The packaged demo config with the paths of the demo data filled in: ``paths``, or the data built
    (or cached) in ``data_root``."""
    paths = paths or build_demo_data(data_root)
    cfg = yaml.safe_load(resources.files("detnas").joinpath("config", "packaged", "demo.yaml").read_text())
    cfg["classification"].update(train=str(paths.cls_train), val=str(paths.cls_val))
    images = str(paths.det_images)
    cfg["detection"]["train"] = {"format": "coco", "annotations": str(paths.det_train_json), "images": images}
    cfg["detection"]["test"] = {"format": "coco", "annotations": str(paths.det_test_json), "images": images}
    return cfg


def run_demo(out: Path, data_root: Path | None = None) -> Path:
    """Build the demo data (rank 0 first, the others then read the cache), write the config used into
    the run folder, and run the pipeline there; returns the report's path."""
    out = Path(out)
    if is_main():
        demo_config(data_root)
    barrier()
    raw = demo_config(data_root)
    cfg = validate(PipelineConfig, raw, "demo config")
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_FILE).write_text(yaml.safe_dump(raw, sort_keys=False))
    return run_pipeline(cfg, out)
