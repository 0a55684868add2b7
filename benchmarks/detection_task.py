"""How fast does a small detector learn the demo's detection task, and what makes it learnable?

A standalone detector (the demo's FPN Faster R-CNN around one architecture, default ShuffleNetV2 =
all choice 0) is trained on demo data built with the given task settings, from a backbone pretrained
on the demo's digit classification (cached between runs), and its test AP / AP50 is printed every
``--eval-every`` steps. Compare task settings (classes, digit sizes, background blur) and learning
rates at the demo's finetuning budget: the supernet's paths cannot learn faster than this.

    .venv/bin/python benchmarks/detection_task.py --ten-classes --blur 0 --digit-height 14 56 --lr 0.02
    .venv/bin/python benchmarks/detection_task.py            # the demo's task: one class, blur 2, 20-56 px
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from _common import demo_settings
from detnas.config.runs import CHECKPOINT, is_finished
from detnas.config.schema import FinetuneConfig, PretrainConfig
from detnas.data.demo import build_demo_data
from detnas.data.sources import load_detection
from detnas.data.transforms import DetectionTransform
from detnas.model.evaluate import detection_metrics
from detnas.model.space import get_space, parse_arch
from detnas.stages.jobs import finetune_job, pretrain_job, run_stage
from detnas.stages.train import batches_from, lr_factor, param_groups, train_step
from detnas.strict import validate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ten-classes", action="store_true", help="label digits 0-9 (default: one class, 'digit')")
    ap.add_argument("--blur", type=float, default=2.0, help="background blur, std in pixels")
    ap.add_argument("--digit-height", type=int, nargs=2, default=(20, 56))
    ap.add_argument("--arch", default="0" * 20)
    ap.add_argument("--pretrain-iters", type=int, default=300, help="classification pretraining of the backbone")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--lr", type=float, default=None, help="default: the demo's finetuning lr")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "detnas-bench" / "detection-task")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    demo = demo_settings()
    lo, hi = args.digit_height
    tag = f"{'10c' if args.ten_classes else '1c'}-blur{args.blur:g}-{lo}-{hi}"
    paths = build_demo_data(args.work / f"data-{tag}", det_test=200, one_class=not args.ten_classes,
                            background_blur=args.blur, digit_height=(lo, hi))
    space = get_space(demo.space, demo.width_mult)
    arch = parse_arch(args.arch, space)

    # the backbone: pretrained on the digits once per (architecture, steps); the classification data
    # does not depend on the detection task settings
    pre_dir = args.work / f"pretrain-{args.arch}-{args.pretrain_iters}"
    recipe = demo.pretrain.model_dump(exclude={"grow_iters"})
    recipe["train"] = {**recipe["train"], "iters": args.pretrain_iters}
    pre_cfg = validate(PretrainConfig, {**recipe, "data": {**demo.classification.model_dump(), "train": paths.cls_train,
                                                           "val": paths.cls_val},
                                        "logging": {"progress": False, "checkpoint_every": 10**6}}, "pretrain")
    if not is_finished(pre_dir):
        run_stage(pretrain_job(pre_cfg, arch), pre_cfg, pre_dir, resume=(pre_dir / CHECKPOINT).exists())

    schedule = demo.finetune.model_copy(update={"iters": args.iters, "lr": args.lr or demo.finetune.lr})
    source = lambda ann: {"format": "coco", "annotations": str(ann), "images": str(paths.det_images)}  # noqa: E731
    cfg = validate(FinetuneConfig, {
        "init": str(pre_dir / CHECKPOINT), "seed": demo.seed, "detector": demo.detector.model_dump(),
        "data": {"train": source(paths.det_train_json), "test": source(paths.det_test_json),
                 "flip": demo.detection.flip},
        "train": schedule.model_dump(),
    }, "finetune")
    job = finetune_job(cfg, args.work / "unused", arch)
    groups = param_groups(job.model, schedule.weight_decay)
    optimizer = torch.optim.SGD(groups, lr=schedule.lr, momentum=schedule.momentum)
    params = [p for g in groups for p in g["params"]]
    factor = lr_factor(schedule)
    det = demo.detector
    test = load_detection(cfg.data.test).with_transform(DetectionTransform(det.min_size, det.max_size, flip=False))
    gt = test.to_coco()
    batches = batches_from(job, schedule, demo.seed, 0, 0, 1, 0)
    print(f"task {tag}, arch {args.arch}, lr {schedule.lr:g}, {args.threads} thread(s)")
    print("| step | AP (%) | AP50 (%) | train seconds |")
    print("|---:|---:|---:|---:|")
    trained = 0.0
    for step in range(schedule.iters):
        for g in optimizer.param_groups:
            g["lr"] = schedule.lr * factor(step)
        t0 = time.perf_counter()
        train_step(job.model, job, next(batches), arch, torch.device("cpu"), params, optimizer, schedule.grad_clip)
        trained += time.perf_counter() - t0
        if (step + 1) % args.eval_every == 0 or step + 1 == schedule.iters:
            m = detection_metrics(job.model, test, 32, gt=gt)
            print(f"| {step + 1} | {100 * m['AP']:.2f} | {100 * m['AP50']:.2f} | {trained:.0f} |", flush=True)


if __name__ == "__main__":
    main()
