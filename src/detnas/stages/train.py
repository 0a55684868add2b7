"""One path-wise training loop for supernet pretraining (classification) and finetuning (detection).

Every iteration trains one architecture. For a supernet it is drawn uniformly (optionally within a
FLOPs range) from a generator seeded by (seed, step): every worker draws the same path with no
broadcast, and a resumed run draws the same paths as an uninterrupted one. Parameters off the path
get no gradient, and since we average gradients ourselves instead of using DDP, they keep
``grad is None``: SGD then gives them neither weight decay nor a momentum step.
"""

from __future__ import annotations

import json
import math
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from detnas.atomic import write_text_atomic
from detnas.checkpoint import load_checkpoint, save_checkpoint
from detnas.config.runs import (
    CHECKPOINT,
    METRICS_FILE,
    TRAINING_RESUMABLE,
    config_changes,
    raise_exists,
    with_added_keys,
)
from detnas.config.schema import SamplingConfig, ScheduleConfig
from detnas.data.loading import Workers, data_workers, loader_options
from detnas.distributed import (
    all_gather_object,
    allreduce_gradients,
    broadcast_object,
    broadcast_state,
    convert_sync_batchnorm,
    init_distributed,
    is_main,
    mean_over_workers,
    on_main,
)
from detnas.errors import UserError
from detnas.model.amp import AmpSetting, autocast, grad_scaler, resolve_amp
from detnas.model.flops import sample_arch
from detnas.model.layout import apply_layout
from detnas.model.space import NUM_CHOICES, Arch, SearchSpace, arch_to_str, to_arch
from detnas.stages import preemption
from detnas.stages.run_guard import guarded_run
from detnas.stages.tracking import LossParts
from detnas.stages.train_log import TrainLog


class TrainingDiverged(UserError, FloatingPointError):
    """The loss became NaN or infinite: a one-line error (a config problem, not a crash)."""


SCHEDULER_ORDER_WARNING = "Detected call of `lr_scheduler.step()` before"


def path_for_step(space: SearchSpace, seed: int, step: int, sampling: SamplingConfig) -> Arch:
    """The architecture trained at ``step``: a pure function of (seed, step). Fair sampling: within each
    group of four steps, every position runs a random permutation of the four choices."""
    if sampling.fair:
        group, slot = divmod(step, NUM_CHOICES)
        orders = np.argsort(np.random.default_rng([seed, group]).random((space.num_blocks, NUM_CHOICES)), axis=1)
        return to_arch(orders[:, slot])
    rng = np.random.default_rng([seed, step])
    return sample_arch(space, rng, sampling.min_flops, sampling.max_flops, prefix=tuple(sampling.prefix))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv and linear weights only, none on BN parameters and biases (SPEC section 5)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(schedule: ScheduleConfig) -> Callable[[int], float]:
    """Linear warmup from 0.001x, then linear decay to 0 or x0.1 at each milestone."""

    def factor(step: int) -> float:
        if step < schedule.warmup_iters:
            alpha = step / schedule.warmup_iters
            return 0.001 * (1 - alpha) + alpha
        if schedule.decay == "linear":
            return max(0.0, 1 - step / schedule.iters)
        return 0.1 ** sum(step >= m for m in schedule.milestones)

    return factor


def epoch_batches(n: int, batch_size: int, world: int, rank: int, seed: int, epoch: int) -> list[list[int]]:
    """This worker's batches of one epoch: a seeded permutation cut into global batches, each split
    over the workers; the incomplete last global batch is dropped so that every worker steps alike."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    global_batch = batch_size * world
    return [
        order[start + rank * batch_size : start + (rank + 1) * batch_size]
        for start in range(0, n - global_batch + 1, global_batch)
    ]


@dataclass
class Job:
    """What differs between the stages: the model, its loss on a batch, and its final evaluation."""

    stage: str
    model: nn.Module
    dataset: torch.utils.data.Dataset
    collate: Callable | None
    loss: Callable[[nn.Module, object, Arch, torch.device], tuple[torch.Tensor, int]]
    arch_for_step: Callable[[int], Arch]
    final_eval: Callable[[nn.Module], dict]
    meta: dict = field(default_factory=dict)  # saved in the checkpoint: space, classes, configs
    # files the run writes into its folder before training (main worker only, after the check that
    # the folder holds no other run): e.g. the held-out search split of finetuning
    write_files: Callable[[Path], None] | None = None
    # (step, grow(model, batch)): called once, before the step of that number, e.g. to grow the
    # supernet's choices out of the path trained until then (model/growth.py)
    grow: tuple[int, Callable[[nn.Module, object], None]] | None = None
    loss_parts: LossParts | None = None  # filled by ``loss`` (e.g. the detector's RPN and box losses), logged
    config_model: type | None = None  # the class of meta's config: keys added to it since a run began are no change


def train_step(model: nn.Module, job: Job, batch, arch: Arch, device: torch.device, params: list[nn.Parameter],
               optimizer: torch.optim.Optimizer, grad_clip: float | None, amp: str = "off",
               scaler: torch.amp.GradScaler | None = None) -> tuple[float, int]:
    """One path-wise step: forward (under autocast with ``amp``) and backward on ``arch`` only,
    averaged gradients, SGD update of the parameters that got a gradient (skipped by an fp16
    ``scaler`` when they overflowed). Returns (loss averaged over workers, images on this worker)."""
    if not model.training:  # model.train() walks every module: a supernet has 4x those of its path
        model.train()
    with autocast(amp, device):
        loss, n_images = job.loss(model, batch, arch, device)
    loss = loss.float()
    value = mean_over_workers(loss.item())  # all workers see a NaN of one, and stop together
    if not math.isfinite(value):
        raise TrainingDiverged(f"loss is {value} (path {arch_to_str(arch)})")
    scaler = scaler or grad_scaler("off", device)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    # every worker gets the same (scaled) gradients, so every worker's scaler skips or steps alike
    allreduce_gradients(params)
    if grad_clip is not None:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return value, n_images


class EpochIndexed(torch.utils.data.Dataset):
    """``dataset[(epoch, i)]``: item ``i`` with the augmentation of ``epoch``. The epoch travels with
    the index, so one DataLoader, and its workers, serve the whole run: workers hold copies of the
    dataset, on which a ``set_epoch`` called in the main process would never arrive."""

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)  # seeds this sample's augmentation
        return self.dataset[index]


def epoch_plan(n: int, batch_size: int, seed: int, rank: int, world: int, start_step: int) -> Iterator[list]:
    """The (epoch, index) batches of steps ``start_step, start_step + 1, ...``, without end: the same
    ones a run from step 0 would see."""
    steps_per_epoch = len(epoch_batches(n, batch_size, world, rank, seed, 0))
    epoch, offset = divmod(start_step, steps_per_epoch)
    while True:
        for batch in epoch_batches(n, batch_size, world, rank, seed, epoch)[offset:]:
            yield [(epoch, i) for i in batch]
        epoch, offset = epoch + 1, 0


def batches_from(job: Job, schedule: ScheduleConfig, seed: int, workers: int, rank: int, world: int,
                 start_step: int, device: torch.device | None = None) -> Iterator:
    """Batches for steps ``start_step, start_step + 1, ...`` from one DataLoader whose ``workers``
    keep decoding across epoch boundaries (pinned for a CUDA ``device``)."""
    plan = epoch_plan(len(job.dataset), schedule.batch_size, seed, rank, world, start_step)
    return iter(torch.utils.data.DataLoader(EpochIndexed(job.dataset), batch_sampler=plan, collate_fn=job.collate,
                                            **loader_options(workers, device)))


def _due(step: int, every: int, total: int) -> bool:
    """Whether a periodic action (a log line, a checkpoint) happens after ``step``: the last step always."""
    return step % every == 0 or step == total


def _check_can_start(job: Job, schedule: ScheduleConfig, ckpt_path: Path, resume: bool, world_size: int) -> None:
    """Stop, before anything is written, on a folder that holds another run or on too few images."""
    # rank 0 decides, so that all workers stop together when the folder holds another run
    if broadcast_object(not resume and ckpt_path.exists() if is_main() else None):
        raise_exists(ckpt_path)
    if len(job.dataset) < schedule.batch_size * world_size:
        raise UserError(f"{len(job.dataset)} training images are fewer than one global batch (train.batch_size "
                        f"{schedule.batch_size} x {world_size} workers): lower train.batch_size or add images")


def _check_resumable(state: dict, job: Job, amp: str, ckpt_path: Path) -> None:
    """Refuse to resume a run with settings that would make it differ from an uninterrupted one."""
    old = state.get("config", {})
    if job.config_model is not None:
        old = with_added_keys(old, job.config_model)
    changed = config_changes(old, job.meta.get("config", {}), TRAINING_RESUMABLE)
    if changed:
        raise UserError(f"this run was started with another config (differs in {', '.join(changed)}): "
                        "resume with the same config, or choose another --out", ckpt_path)
    if state.get("amp", "off") != amp:  # "auto" can resolve differently on another machine
        raise UserError(f"this run trained with amp {state.get('amp', 'off')}, this machine would resume it with "
                        f"amp {amp}: set amp: {state.get('amp', 'off')} in the config", ckpt_path)


class _Checkpointer:
    """Everything a resumed run needs to continue exactly as an uninterrupted one: the model, optimizer,
    schedule and fp16 scaler, and every worker's RNG state."""

    def __init__(self, path: Path, job: Job, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler, amp: str):
        self.path, self.job, self.amp = path, job, amp
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.saved_step: int | None = None  # the step of the checkpoint on disk, if this run knows it

    def restore(self, rank: int, world_size: int) -> int:
        """Load the checkpoint, if the run saved one, into the training state; returns its step (else 0)."""
        if not self.path.exists():
            return 0
        state = load_checkpoint(self.path, self.job.stage, self.job.meta.get("space"))
        _check_resumable(state, self.job, self.amp, self.path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        # each worker draws its own numbers (RoI sampling depends on its images): restore its own state
        rngs = state.get("rng_per_worker") or []
        torch.set_rng_state(rngs[rank] if len(rngs) == world_size else state["rng"])
        self.saved_step = state["step"]
        return state["step"]

    def save(self, step: int) -> None:
        """Called by every worker at the same steps (all take part in gathering the RNG states);
        rank 0 writes, and a failed write stops every worker."""
        rngs = all_gather_object(torch.get_rng_state())
        on_main(lambda: save_checkpoint(self.path, {
            "stage": self.job.stage, **self.job.meta, "step": step, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "amp": self.amp, "scaler": self.scaler.state_dict(), "rng": rngs[0], "rng_per_worker": rngs,
        }))
        self.saved_step = step

    def stop(self, step: int, total: int) -> preemption.Preempted:
        """Save the checkpoint of ``step`` for a stop asked before it (unless it is there already)."""
        if self.saved_step != step:
            self.save(step)
        return preemption.Preempted(f"{self.job.stage}: checkpoint of step {step} of {total} in {self.path}")


def _grow_if_due(job: Job, model: nn.Module, step: int, batch) -> None:
    """Run the job's growth hook before its step, on the batch of that step."""
    if job.grow is not None and job.grow[0] == step:
        job.grow[1](model, batch)
        broadcast_state(model)  # every worker continues from rank 0's grown weights


def _step_scheduler(scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    with warnings.catch_warnings():  # torch takes an fp16 step skipped on overflow for a misordered call
        warnings.filterwarnings("ignore", re.escape(SCHEDULER_ORDER_WARNING), UserWarning)
        scheduler.step()


class _LogWindow:
    """Loss and images/s averaged over the steps since the previous log line, logged every ``every``
    steps and after the last one; the steps between only move the progress bar."""

    def __init__(self, log: TrainLog, optimizer: torch.optim.Optimizer, world_size: int, every: int, total: int):
        self.log, self.optimizer, self.world_size, self.every, self.total = log, optimizer, world_size, every, total
        self._reset()

    def _reset(self) -> None:
        self.loss, self.steps, self.images, self.start = 0.0, 0, 0, time.perf_counter()

    def add(self, step: int, loss: float, n_images: int, arch: Arch) -> None:
        """Count the step just trained (``step`` is the number of steps done); ``n_images`` per worker."""
        self.loss += loss
        self.steps += 1
        self.images += n_images * self.world_size
        if not _due(step, self.every, self.total):
            self.log.advance(step)
            return
        elapsed = time.perf_counter() - self.start
        self.log.scalars(step, {
            "loss": self.loss / self.steps,
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_s": self.images / max(elapsed, 1e-9),
        }, arch=arch_to_str(arch))
        self._reset()


def _final_eval(job: Job, model: nn.Module, amp: str, device: torch.device, out_dir: Path, log: TrainLog) -> dict:
    """Evaluate the trained model; rank 0 logs the metrics and writes them to the run folder."""
    if hasattr(job.dataset, "set_epoch"):  # loading in this process moved it; workers moved only their copies
        job.dataset.set_epoch(0)  # so the final evaluation's recalibration images depend on neither
    with autocast(amp, device):
        metrics = job.final_eval(model)

    def write() -> None:
        log.final(metrics)
        write_text_atomic(out_dir / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")

    on_main(write)
    return metrics


def run_training(job: Job, schedule: ScheduleConfig, seed: int, out_dir: Path, resume: bool,
                 workers: Workers = "auto", log_every: int = 10, checkpoint_every: int = 100,
                 progress: bool = True, amp: AmpSetting = "auto") -> dict:
    """Train ``job`` for ``schedule.iters`` steps (resuming from ``out_dir`` if asked) and evaluate it,
    with ``workers`` DataLoader workers and mixed precision ``amp`` (see amp.py). A stop signal
    (``preemption.py``) stops it before its next step, with a checkpoint of the steps done."""
    with guarded_run(out_dir):
        return _train(job, schedule, seed, Path(out_dir), resume, workers, log_every, checkpoint_every, progress, amp)


def _train(job: Job, schedule: ScheduleConfig, seed: int, out_dir: Path, resume: bool, workers: Workers,
           log_every: int, checkpoint_every: int, progress: bool, amp: AmpSetting) -> dict:
    dist = init_distributed()
    device, amp, out_dir = dist.device, resolve_amp(amp, dist.device), Path(out_dir)
    _check_can_start(job, schedule, out_dir / CHECKPOINT, resume, dist.world_size)
    torch.manual_seed(seed)
    # channels-last where it is faster (model/layout.py); the backbone converts its input batches itself
    model = convert_sync_batchnorm(apply_layout(job.model.to(device), device), device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(param_groups(model, schedule.weight_decay), lr=schedule.lr, momentum=schedule.momentum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(schedule))
    scaler = grad_scaler(amp, device)
    checkpoints = _Checkpointer(out_dir / CHECKPOINT, job, model, optimizer, scheduler, scaler, amp)
    step = checkpoints.restore(dist.rank, dist.world_size) if resume else 0
    broadcast_state(model)
    if job.write_files is not None:
        on_main(lambda: job.write_files(out_dir))
    log = TrainLog(out_dir, job.stage, schedule.iters, start=step, enabled=is_main(), progress=progress,
                   parts=job.loss_parts, config=job.meta.get("config"))
    batches = batches_from(job, schedule, seed, data_workers(workers), dist.rank, dist.world_size, step, device)
    window = _LogWindow(log, optimizer, dist.world_size, log_every, schedule.iters)
    with log:
        while step < schedule.iters:
            if preemption.stop_requested():
                raise checkpoints.stop(step, schedule.iters)
            arch = job.arch_for_step(step)
            batch = next(batches)
            _grow_if_due(job, model, step, batch)
            try:
                loss, n_images = train_step(model, job, batch, arch, device, params, optimizer, schedule.grad_clip,
                                            amp, scaler)
            except TrainingDiverged as e:
                raise TrainingDiverged(f"training diverged at step {step + 1}: {e}; lower train.lr, raise "
                                       "train.warmup_iters or set train.grad_clip") from None
            _step_scheduler(scheduler)
            step += 1
            window.add(step, loss, n_images, arch)
            if _due(step, checkpoint_every, schedule.iters):
                checkpoints.save(step)
    del batches  # stops the data workers before the final evaluation starts its own
    return {"step": step, **_final_eval(job, model, amp, device, out_dir, log)}
