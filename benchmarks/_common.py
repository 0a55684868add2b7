"""What the benchmarks share: the demo's settings, read from the packaged demo config and validated as
a ``PipelineConfig`` (never copied here), and a demo supernet finetuned with them, kept between runs."""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from detnas.config.runs import CHECKPOINT, FINETUNE
from detnas.config.schema import FinetuneConfig, PipelineConfig
from detnas.data.demo import DemoPaths
from detnas.data.sources import load_detection
from detnas.data.transforms import DetectionTransform
from detnas.model.space import get_space
from detnas.stages.demo import demo_config
from detnas.stages.jobs import pretrain_job
from detnas.stages.train import path_for_step
from detnas.strict import validate

# the reference COCO evaluator (pycocotools) that the tests hold our numbers to, kept with the tests
sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
from reference_coco import pycocotools_stats  # noqa: E402, F401 - re-exported for the benchmarks

SOURCE = "src/detnas/config/packaged/demo.yaml"


def demo_settings(paths: DemoPaths | None = None) -> PipelineConfig:
    """The demo's pipeline config on ``paths`` (default: the demo's own data, built or cached)."""
    return validate(PipelineConfig, demo_config(paths=paths), "demo config")


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(25%, median, 75%) of ``values``."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def training_paths(space, seed: int, first_step: int, sampling, n: int) -> list:
    """The paths the supernet trains at steps ``first_step`` .. ``first_step + n - 1``."""
    return [path_for_step(space, seed, first_step + k, sampling) for k in range(n)]


def demo_pretrain_batch(demo: PipelineConfig, image_size: int, batch_size: int):
    """(config, job, batch): the demo's pretraining at ``image_size`` px and its first ``batch_size``
    training images as one (images, labels) batch."""
    cfg = demo.pretrain_config()
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"image_size": image_size})})
    job = pretrain_job(cfg)
    items = [job.dataset[i] for i in range(batch_size)]
    return cfg, job, (torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items]))


def max_flops(demo: PipelineConfig) -> float:
    """The demo search's body-FLOPs budget."""
    return demo.search.max_flops if demo.search.max_flops is not None else float("inf")


def demo_finetune(demo: PipelineConfig, iters: int | None = None, **update) -> FinetuneConfig:
    """The demo's finetuning stage from scratch, its schedule scaled to ``iters`` steps, with ``update``
    (top-level fields) on top; only the fixed path all-0 is evaluated at the end."""
    schedule = demo.finetune
    if iters is not None and iters != schedule.iters:
        scale = iters / schedule.iters
        schedule = schedule.model_copy(update={
            "iters": iters, "warmup_iters": round(schedule.warmup_iters * scale),
            "milestones": [max(1, min(iters - 1, round(m * scale))) for m in schedule.milestones],
        })
    baseline = "0" * get_space(demo.space, demo.width_mult).num_blocks
    evaluation = demo.eval.model_copy(update={"archs": [baseline], "recalib_images": demo.fitness.recalib_images,
                                              "batch_size": demo.fitness.batch_size})
    cfg = demo.model_copy(update={"finetune": schedule, "eval": evaluation}).finetune_config(init=None)
    return FinetuneConfig.model_validate({**cfg.model_dump(), **update})


def default_supernet(iters: int | None = None) -> Path:
    """Where the supernet of the current demo settings is kept between runs (named by those settings)."""
    demo = demo_settings()
    keys = demo.model_dump(mode="json", include={"space", "seed", "detection", "detector", "finetune"})
    keys["detection"] = {k: v for k, v in keys["detection"].items() if k not in ("train", "test")}
    tag = hashlib.sha256(json.dumps([keys, iters], sort_keys=True).encode()).hexdigest()[:8]
    return Path(tempfile.gettempdir()) / "detnas-bench" / f"demo-supernet-{tag}"


def prepare_supernet(run_dir: Path, iters: int | None = None, threads: int = 1) -> Path:
    """A finished demo finetuning run in ``run_dir`` (reused if there): the demo's detector, schedule
    (scaled to ``iters``) and search split, on the demo data, from scratch (no pretraining)."""
    from detnas.checkpoint import load_checkpoint
    from detnas.stages.jobs import finetune_job, run_stage

    if (run_dir / CHECKPOINT).is_file():
        state = load_checkpoint(run_dir / CHECKPOINT, FINETUNE)
        if state["step"] >= state["config"]["train"]["iters"]:
            return run_dir
    demo = demo_settings()
    cfg = demo_finetune(demo, iters, logging={"log_every": 25, "checkpoint_every": 100, "progress": False})
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        run_stage(finetune_job(cfg, run_dir), cfg, run_dir, resume=(run_dir / CHECKPOINT).is_file())
        print(f"finetuned the demo supernet ({cfg.train.iters} iterations) in {time.perf_counter() - t0:.0f} s "
              f"into {run_dir}", file=sys.stderr)
    finally:
        torch.set_num_threads(previous)
    return run_dir


def recalibration_set(evaluator):
    """The training images the evaluator recalibrates on (train minus the search split), undecoded."""
    cfg, det = evaluator.cfg, evaluator.detector_cfg
    train = load_detection(cfg.data.train, DetectionTransform(det.min_size, det.max_size, flip=cfg.data.flip),
                           cfg.seed)
    held = set(evaluator.search_set.image_ids)
    return train.subset([i for i, image_id in enumerate(train.image_ids) if image_id not in held])


def add_supernet_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--supernet", type=Path, default=None,
                    help="a finished demo finetuning run (default: one finetuned with the demo's settings, kept in "
                         "$TMPDIR/detnas-bench)")
    ap.add_argument("--finetune-iters", type=int, default=None, help="when finetuning one (default: the demo's)")


# the paper's COCO detector (SPEC section 5): FPN Faster R-CNN, 800x1333
PAPER_DETECTOR = {"kind": "fpn", "fpn_channels": 256, "box_head_channels": 1024, "anchor_size": 32,
                  "min_size": 800, "max_size": 1333, "rpn_pre_nms_top_n_train": 2000,
                  "rpn_post_nms_top_n_train": 2000, "rpn_pre_nms_top_n_test": 1000, "rpn_post_nms_top_n_test": 1000,
                  "box_batch_size_per_image": 512}


def synthetic_coco(root: Path, n_images: int, n_files: int = 32, size: tuple[int, int] = (640, 480),
                   classes: int = 80, seed: int = 0) -> tuple[Path, Path]:
    """A COCO-shaped training set: ``n_images`` annotated images (three boxes each, ``classes``
    categories) at COCO's typical 640x480, as JPEGs of smooth random content. Image ``i`` reads file
    ``i % n_files``: decoding costs what it would, without writing thousands of files.
    Returns (annotation file, image folder)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    width, height = size
    for f in range(n_files):
        coarse = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize(size, Image.BICUBIC).save(image_dir / f"{f}.jpg", quality=90)
    images, annotations = [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "file_name": f"{i % n_files}.jpg", "width": width, "height": height})
        for _ in range(3):
            w, h = rng.uniform(20, width / 2), rng.uniform(20, height / 2)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            annotations.append({"id": len(annotations) + 1, "image_id": i, "bbox": [x, y, w, h], "area": w * h,
                                "category_id": int(rng.integers(1, classes + 1)), "iscrowd": 0})
    ann = root / "train.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations,
                               "categories": [{"id": k, "name": f"class{k}"} for k in range(1, classes + 1)]}))
    return ann, image_dir


def print_choice_count_taus(rankings: dict[str, dict[str, float]], archs: list[str]) -> None:
    """A markdown table of Kendall tau between each ranking and how many blocks of one choice an
    architecture has (a zero-cost proxy: on the demo the short retraining follows the 3x3 count)."""
    from detnas.model.space import CHOICE_NAMES
    from detnas.stages.rank_stats import kendall_tau

    print("\nKendall tau with the number of blocks of one choice\n")
    print("| blocks of | " + " | ".join(rankings) + " |")
    print("|---|" + "---:|" * len(rankings))
    for c, choice in enumerate(CHOICE_NAMES):
        count = [a.count(str(c)) for a in archs]
        print(f"| {choice} | " + " | ".join(
            f"{kendall_tau(count, [r[a] for a in archs]):.2f}" for r in rankings.values()) + " |")
