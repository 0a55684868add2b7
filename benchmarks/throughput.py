"""Throughput of the project's workloads against what the machine can do: images/s and achieved
GFLOP/s next to the machine's own float32 (and bf16, where the CPU has it) GEMM peak, measured in the
same run; with ``--layout nchw,channels_last`` the memory layouts side by side, and their ratio
(model/layout.py; ``+tvroi``: with torchvision's RoIAlign instead of model/roi_align.py; ``+torchconv``: with
torch's ``nn.Conv2d`` and channel slicing instead of model/conv.py's ``LeanConv2d`` and the blocks' split;
``+compile``: in the training workloads, the detector's backbone + FPN (the classifier's ``classify``)
through ``torch.compile``, which recompiles for every path, so compare it with ``--paths 1``, as a fixed
network trains; ``+foldbn``: in ``evaluate``, each conv + BN of the recalibrated candidate folded into
one conv (torch's ``fuse_conv_bn_eval``) before it detects; ``@N``: N threads).

Workloads (the demo's settings, from the packaged demo config through ``_common.demo_settings``; batches
of the demo's own images; the real jobs' losses and ``train.train_step``):

- ``pretrain32``: a supernet pretraining step at the demo's 32 px, batch 64 (its ``pretrain_job``)
- ``pretrain224``: the same at 224 px, batch 16 (the images upsampled)
- ``finetune128``: a supernet detection finetuning step, the demo's FPN Faster R-CNN at 128 px, batch 8
- ``evaluate``: the search's fitness minus COCOeval: extract one path, recalibrate its BN on the demo's
  ``fitness.recalib_images`` (batches of ``fitness.batch_size``), detect on ``--eval-images`` of the
  search split (``evaluate.recalibrated_path``'s steps + ``predict_batches``), on the freshly initialised supernet

Each repetition draws the next of ``--paths`` training paths (``train.path_for_step`` after growth) and
runs every variant on it, in alternating order (A B, B A, ...), after a warm-up; times are medians.
``OMP_WAIT_POLICY`` is PASSIVE unless set, as under ``detnas``.
GFLOP/s = 2 x MACs (``flops.arch_cost`` / ``detector_flops.detector_macs``, exact conv + linear counts)
per second; a training step counts its forward 3 times (forward + backward). The detector's box head
is counted for ``box_batch_size_per_image`` RoIs per training image and for ``rpn_post_nms_top_n_test``
proposals per evaluated image (an upper bound). RoIAlign, NMS, BN and ReLU are not counted.
The ratio column: the median over repetitions of (time of the first variant / time of this one), with
the 25-75% range of those paired ratios. Data loading is not timed (batches are decoded once).

    .venv/bin/python benchmarks/throughput.py [--layout nchw,channels_last] [--reps 1.0] [--threads N]
        [--workloads pretrain32,pretrain224,finetune128,evaluate]
    .venv/bin/python benchmarks/throughput.py --layout nchw+tvroi,nchw,channels_last   # before / layout / after
    .venv/bin/python benchmarks/throughput.py --layout nchw+tvroi+torchconv,channels_last+torchconv,channels_last
    .venv/bin/python benchmarks/throughput.py --layout channels_last@1,channels_last@2 --workloads pretrain32
    .venv/bin/python benchmarks/throughput.py --layout channels_last@1 --workloads finetune128 --profile 4 [--shapes]
    .venv/bin/python benchmarks/throughput.py --layout channels_last@1,channels_last+compile@1 --paths 1
    .venv/bin/python benchmarks/throughput.py --layout channels_last@1,channels_last+foldbn@1 --workloads evaluate
"""

from __future__ import annotations

import os

# as `detnas` itself sets it (cli/__init__.py), before torch starts OpenMP: on a busy machine, spinning
# threads made a 32 px training step 10-25x slower (BENCHMARKS.md)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import contextlib
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import ConvNormActivation

from _common import SOURCE, demo_finetune, demo_pretrain_batch, demo_settings, quartiles, training_paths
from detnas.data.detection import collate
from detnas.data.holdout import carve_holdout
from detnas.data.sources import load_training_set
from detnas.data.transforms import DetectionTransform
from detnas.model.blocks import ChoiceBlock
from detnas.model.conv import LeanConv2d
from detnas.model.detector import extract_detector, set_path
from detnas.model.detector_flops import detector_macs
from detnas.model.evaluate import detector_backbone_forward, predict_batches, recalibrate_bn
from detnas.model.flops import arch_cost
from detnas.model.layout import LAYOUT_ENV, apply_layout, resolve_layout
from detnas.stages.jobs import finetune_job
from detnas.stages.train import param_groups, train_step

# repetitions at --reps 1 (and warm-up rounds): 3 variants in about 4-5 minutes on 2 busy cores
REPS = {"pretrain32": (30, 3), "pretrain224": (6, 1), "finetune128": (20, 2), "evaluate": (8, 1)}


def gemm_peak(dtype: torch.dtype, n: int, reps: int) -> tuple[float, float]:
    """(median, best) GFLOP/s of an n x n matrix product in ``dtype``."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        rates.append(2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates), max(rates)


def bf16_supported() -> bool:
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


class TorchSplitBlock(ChoiceBlock):
    """A choice block that splits its channels with torch's slicing (whose gradient is NCHW): the code before
    ``blocks._ChannelSplit``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj is None:
            return torch.cat((x[:, 0::2], self.branch(x[:, 1::2])), 1)
        return torch.cat((self.proj(x), self.branch(x)), 1)


class Variant:
    """What is compared: a layout (``nchw``, ``channels_last``, ``auto``), with ``+tvroi`` torchvision's own
    ``MultiScaleRoIAlign`` in the detector instead of ours, with ``+torchconv`` torch's ``nn.Conv2d`` and
    channel slicing in the blocks (``nchw+tvroi+torchconv``: the code before all three), with ``+compile``
    ``torch.compile`` (compiled during the warm-up, whose time is not in the table), with ``+foldbn`` a
    candidate's BN folded, with ``@N`` N
    intra-op threads (else torch's default)."""

    def __init__(self, text: str, again: bool = False):
        text, _, threads = text.partition("@")
        layout, *options = text.split("+")
        if not set(options) <= {"tvroi", "torchconv", "compile", "foldbn"} or not (threads == "" or threads.isdigit()):
            raise SystemExit(f"--layout {text}: expected LAYOUT[+tvroi][+torchconv][+compile][+foldbn][@THREADS]")
        self.layout, self.threads = resolve_layout(layout), int(threads or 0)
        self.tv_roi, self.torch_conv, self.compile = "tvroi" in options, "torchconv" in options, "compile" in options
        self.fold_bn = "foldbn" in options
        self.label = (self.layout + (", torchvision RoIAlign" if self.tv_roi else "")
                      + (", torch's conv and slicing" if self.torch_conv else "")
                      + (", torch.compile" if self.compile else "") + (", BN folded" if self.fold_bn else "")
                      + (f", {self.threads} thread(s)" if self.threads else "") + (" (again)" if again else ""))

    def timed(self, run):
        """``run`` with this variant's thread count (torch's default restored after)."""
        if not self.threads:
            return run

        def with_threads(arch):
            default = torch.get_num_threads()
            torch.set_num_threads(self.threads)
            try:
                run(arch)
            finally:
                torch.set_num_threads(default)
        return with_threads

    def model(self, model: torch.nn.Module) -> torch.nn.Module:
        """A copy of ``model`` in this variant."""
        model = self.convert(apply_layout(copy.deepcopy(model), setting=self.layout))
        if not self.compile:
            return model
        if hasattr(model, "backbone"):  # torchvision's detection losses, sampling and NMS stay eager
            model.backbone = torch.compile(model.backbone, dynamic=False)
        else:  # what the classification job calls
            model.classify = torch.compile(model.classify, dynamic=False)
        return model

    def convert(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` (changed in place) with this variant's RoIAlign, convolutions and channel split."""
        model = self.pooler(model)
        if self.torch_conv:  # the same parameters and state; only the computation changes
            for m in model.modules():
                if isinstance(m, LeanConv2d):
                    m.__class__ = torch.nn.Conv2d
                elif isinstance(m, ChoiceBlock):
                    m.__class__ = TorchSplitBlock
        return model

    def pooler(self, detector: torch.nn.Module) -> torch.nn.Module:
        heads = getattr(detector, "roi_heads", None)
        if self.tv_roi and heads is not None:
            p = heads.box_roi_pool
            heads.box_roi_pool = MultiScaleRoIAlign(p.featmap_names, p.output_size, p.sampling_ratio,
                                                    canonical_scale=p.canonical_scale,
                                                    canonical_level=p.canonical_level)
        return detector


def training_case(job, batch, archs, flops_per_image, n_images):
    """A step function per variant that trains ``job``'s model on ``batch`` along a given path."""
    def make(variant: Variant):
        model = variant.model(job.model)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(param_groups(model, 1e-4), lr=1e-4, momentum=0.9)

        def step(arch):
            torch.manual_seed(0)  # the same RoI and anchor sampling in every variant
            train_step(model, job, batch, arch, torch.device("cpu"), params, optimizer, None)
        return step
    return make, {a: 3 * flops_per_image(a) * n_images for a in archs}, n_images


def pretrain_case(demo, archs_from, image_size: int, batch_size: int, n_paths: int):
    cfg, job, batch = demo_pretrain_batch(demo, image_size, batch_size)
    space, classes = job.model.space, len(job.meta["classes"])
    archs = archs_from(space, cfg.seed, cfg.grow_iters, cfg.sampling, n_paths)
    return training_case(job, batch, archs, lambda a: 2 * arch_cost(space, a, image_size, classes).full_flops,
                         batch_size)


def detector_flops(model, archs, size: int, rois: int) -> dict:
    """{arch: (backbone, detector per training image, detector per evaluated image)} FLOPs."""
    out = {}
    for a in archs:
        set_path(model, a)
        m = detector_macs(model, size)
        per_roi = m["box_head"] / model.rpn._post_nms_top_n["testing"]
        out[a] = (2 * m["backbone"], 2 * (m["total"] - m["box_head"] + rois * per_roi), 2 * m["total"])
    return out


def finetune_setup(demo, tmp: Path):
    cfg = demo_finetune(demo)
    job = finetune_job(cfg, tmp)
    return cfg, job


def finetune_case(demo, archs_from, n_paths: int, tmp: Path):
    cfg, job = finetune_setup(demo, tmp)
    batch = collate([job.dataset[i] for i in range(cfg.train.batch_size)])
    archs = archs_from(job.model.backbone.body.space, cfg.seed, 0, cfg.sampling, n_paths)
    flops = detector_flops(job.model, archs, cfg.detector.min_size, cfg.detector.box_batch_size_per_image)
    return training_case(job, batch, archs, lambda a: flops[a][1], cfg.train.batch_size)


def evaluate_case(demo, archs_from, n_paths: int, eval_images: int, tmp: Path):
    cfg, job = finetune_setup(demo, tmp)
    det, bs = cfg.detector, demo.fitness.batch_size
    n_classes = len(job.meta["classes"])
    train = job.dataset.with_transform(DetectionTransform(det.min_size, det.max_size, flip=False))
    recalib = [collate([train[i] for i in range(s, min(s + bs, demo.fitness.recalib_images))])[0]
               for s in range(0, demo.fitness.recalib_images, bs)]
    # the search split: the detection training images that finetuning holds out (carved as finetune_job does)
    full = load_training_set(cfg.data.train, train.transform, cfg.seed)
    _, held = carve_holdout(len(full), cfg.data.holdout.size, cfg.data.holdout.seed,
                            cfg.data.train.annotations or cfg.data.train.root)
    search = full.subset(held)
    evals = [collate([search[i] for i in range(s, min(s + bs, eval_images))]) for s in range(0, eval_images, bs)]
    archs = archs_from(job.model.backbone.body.space, cfg.seed, 0, cfg.sampling, n_paths)
    flops = detector_flops(job.model, archs, det.min_size, det.box_batch_size_per_image)
    n_recalib = sum(len(b) for b in recalib)

    def make(variant: Variant):
        model = variant.model(job.model)

        def candidate(arch):  # evaluate.recalibrated_path, with the variant applied before the recalibration
            with _layout(variant.layout):  # the extracted path's layout (model/layout.py)
                sub = variant.convert(apply_layout(extract_detector(model, arch, n_classes, det)))
            recalibrate_bn(sub, detector_backbone_forward(sub), recalib)
            predict_batches(fold_batchnorm(sub) if variant.fold_bn else sub, evals)
        return candidate
    return make, {a: n_recalib * flops[a][0] + eval_images * flops[a][2] for a in archs}, n_recalib + eval_images


@torch.no_grad()
def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in eval mode with each conv + BN block's BN folded into the conv (changed in place)."""
    model.eval()
    for block in model.modules():
        if isinstance(block, ConvNormActivation) and len(block) > 1 and isinstance(block[1], torch.nn.BatchNorm2d):
            block[0], block[1] = fuse_conv_bn_eval(block[0], block[1]), torch.nn.Identity()
    return model


@contextlib.contextmanager
def _layout(layout: str):
    saved = os.environ.get(LAYOUT_ENV)
    os.environ[LAYOUT_ENV] = layout
    try:
        yield
    finally:
        if saved is None:
            del os.environ[LAYOUT_ENV]
        else:
            os.environ[LAYOUT_ENV] = saved


def interleaved(makers: dict, archs: list, reps: int, warmup: int) -> dict[str, list[float]]:
    names = list(makers)
    for i in range(warmup):
        for name in names:
            makers[name](archs[i % len(archs)])
    times = {name: [] for name in names}
    for i in range(reps):
        for name in names if i % 2 == 0 else names[::-1]:  # alternate the order: no position bias
            t0 = time.perf_counter()
            makers[name](archs[i % len(archs)])
            times[name].append(time.perf_counter() - t0)
    return times


def profile_table(run, archs: list, reps: int, shapes: bool = False, rows: int = 15) -> str:
    """torch.profiler's table of the ops that took the most time over ``reps`` calls of ``run``; with
    ``shapes``, one row per op and input shapes (which layer it is)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=shapes) as prof:
        for i in range(reps):
            run(archs[i % len(archs)])
    averages = prof.key_averages(group_by_input_shape=shapes)
    if shapes:
        return averages.table(sort_by="self_cpu_time_total", row_limit=2 * rows, max_name_column_width=32,
                              max_shapes_column_width=120)
    return averages.table(sort_by="self_cpu_time_total", row_limit=rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layout", default="auto",
                    help="comma-separated variants to compare: nchw, channels_last, auto (what a run resolves), "
                         "each optionally +tvroi (torchvision's RoIAlign in the detector) and @N (N threads); "
                         "default: auto")
    ap.add_argument("--workloads", default=",".join(REPS), help=f"comma-separated, of {', '.join(REPS)}")
    ap.add_argument("--reps", type=float, default=1.0, help="scale the repetitions of every workload (e.g. 3)")
    ap.add_argument("--paths", type=int, default=4, help="training paths cycled through")
    ap.add_argument("--eval-images", type=int, default=50, help="search-split images per evaluated candidate")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--gemm", type=int, default=2048, help="matrix size of the GEMM peak")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="after the timing, print torch.profiler's top ops over N more calls of each variant")
    ap.add_argument("--shapes", action="store_true", help="with --profile: a row per op and input shapes")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    variants, texts = [], args.layout.split(",")
    for i, text in enumerate(texts):  # a variant given twice is timed twice: an A/A control, the noise floor
        variants.append(Variant(text, again=text in texts[:i]))
    workloads = args.workloads.split(",")
    demo = demo_settings()
    t_start = time.perf_counter()
    peaks = {"fp32": gemm_peak(torch.float32, args.gemm, 10)}
    if bf16_supported():
        peaks["bf16"] = gemm_peak(torch.bfloat16, args.gemm, 10)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = {
            "pretrain32": lambda: pretrain_case(demo, training_paths, demo.classification.image_size,
                                                demo.pretrain.train.batch_size, args.paths),
            "pretrain224": lambda: pretrain_case(demo, training_paths, 224, 16, args.paths),
            "finetune128": lambda: finetune_case(demo, training_paths, args.paths, Path(tmp)),
            "evaluate": lambda: evaluate_case(demo, training_paths, args.paths, args.eval_images, Path(tmp)),
        }
        for name in workloads:
            make, flops, n_images = cases[name]()
            archs = list(flops)
            reps, warmup = max(2, round(REPS[name][0] * args.reps)), REPS[name][1]
            runs = {v.label: v.timed(make(v)) for v in variants}
            times = interleaved(runs, archs, reps, warmup)
            if args.profile:
                for label, run in runs.items():
                    print(f"{name}, {label}: the ops over {args.profile} calls\n"
                          f"{profile_table(run, archs, args.profile, args.shapes)}", flush=True)
            mean_flops = statistics.mean(flops[archs[i % len(archs)]] for i in range(reps))
            for v in variants:
                q1, med, q3 = quartiles(times[v.label])
                ratios = [a / b for a, b in zip(times[variants[0].label], times[v.label])]
                rows.append((name, v.label, n_images, reps, med, q1, q3, mean_flops, quartiles(ratios)))
            print(f"{name}: done ({time.perf_counter() - t_start:.0f} s)", flush=True)
    peaks_end = {"fp32": gemm_peak(torch.float32, args.gemm, 10)}
    if "bf16" in peaks:
        peaks_end["bf16"] = gemm_peak(torch.bfloat16, args.gemm, 10)

    print(f"\nsettings: {SOURCE}; torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, oneDNN {torch.backends.mkldnn.is_available()}, "
          f"bf16 GEMM {bf16_supported()}; wall {time.perf_counter() - t_start:.0f} s\n")
    print(f"GEMM peak ({args.gemm}x{args.gemm}, 10 reps, at the start / at the end): " + "; ".join(
        f"{k} median {peaks[k][0]:.0f} / {peaks_end[k][0]:.0f} GFLOP/s, best {peaks[k][1]:.0f} / {peaks_end[k][1]:.0f}"
        for k in peaks) + "\n")
    fp32 = statistics.median([peaks["fp32"][0], peaks_end["fp32"][0]])
    print(f"| workload | variant | images per rep | reps | s per rep: median (25-75%) | images/s | GFLOP/s "
          f"| % of fp32 GEMM ({fp32:.0f}) | speed-up vs {variants[0].label}: median (25-75%) |")
    print("|---|---|---:|---:|---|---:|---:|---:|---|")
    for name, layout, n, reps, med, q1, q3, flops, (r1, r2, r3) in rows:
        print(f"| {name} | {layout} | {n} | {reps} | {med:.3f} ({q1:.3f}-{q3:.3f}) | {n / med:.1f} "
              f"| {flops / med / 1e9:.1f} | {flops / med / 1e9 / fp32 * 100:.1f}% "
              f"| {r2:.2f}x ({r1:.2f}-{r3:.2f}) |")


if __name__ == "__main__":
    main()
