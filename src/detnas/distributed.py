"""torchrun helpers and a synchronized BatchNorm. Every function also works in a plain single process
(no process group): collectives become no-ops or identities."""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.distributed.constants import default_pg_nccl_timeout, default_pg_timeout


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return get_rank() == 0


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


TIMEOUT_ENV = "DETNAS_DIST_TIMEOUT"


def collective_timeout() -> timedelta | None:
    """``DETNAS_DIST_TIMEOUT`` (seconds): how long a worker waits for the others in one collective (and
    to join the group) before it gives up; None (unset) for torch's default, 30 min (10 on NCCL)."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (0 < seconds < math.inf):
        from detnas.errors import UserError

        raise UserError(f"{TIMEOUT_ENV}={raw}: expected a number of seconds above 0, e.g. 600")
    return timedelta(seconds=seconds)


def restart_count() -> int:
    """How many times torchrun restarted this worker's group (``--max-restarts``); 0 outside torchrun."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0)


class _Group:
    store: dist.Store | None = None  # the process group's store, where each worker wrote its host and pid


def init_distributed(timeout: timedelta | None = None) -> DistInfo:
    """Join the torchrun job described by RANK/WORLD_SIZE/LOCAL_RANK (nccl on CUDA, gloo on CPU), or
    run as a single process when those are absent. Calling it again returns the same answer.
    ``timeout``: of every collective (default: ``collective_timeout()``)."""
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo(0, 1, 0, torch.device("cuda", 0) if cuda else torch.device("cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if not is_distributed():
        if cuda:
            torch.cuda.set_device(device)
        timeout = timeout or collective_timeout() or (default_pg_nccl_timeout if cuda else None) or default_pg_timeout
        store, rank, world = next(dist.rendezvous("env://", timeout=timeout))
        # torchrun keeps one store for all its restarts of the group: without a prefix per attempt, a
        # restarted worker can read the dead group's addresses (gloo: "connectFullMesh failed", or a hang)
        store = dist.PrefixStore(f"detnas/attempt_{restart_count()}", store)
        store.set_timeout(timeout)
        dist.init_process_group("nccl" if cuda else "gloo", store=store, rank=rank, world_size=world,
                                timeout=timeout, device_id=device if cuda else None)
        store.set(f"worker/{rank}", json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        _Group.store = store
        # left to the interpreter's teardown, the group's threads could be destroyed still running: a worker
        # then died of "terminate called without an active exception" (SIGABRT) after its run had finished
        atexit.register(cleanup_distributed)
    return DistInfo(get_rank(), get_world_size(), local_rank, device)


def cleanup_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()
        _Group.store = None


# what gloo, NCCL and the store say when a peer is gone or did not answer in time
_LOST_PEER = ("closed by peer", "reset by peer", "connection refused", "timed out", "broken pipe", "socket closed",
              "communicator was aborted")


def lost_worker(e: BaseException) -> str | None:
    """One line for a collective that failed because another worker died or stopped answering (None for
    any other error): this worker's rank, the workers found gone, and how to continue."""
    if not (is_distributed() and isinstance(e, RuntimeError)):
        return None
    text = str(e).strip()
    if not (isinstance(e, (dist.DistNetworkError, dist.DistStoreError)) or any(m in text.lower() for m in _LOST_PEER)):
        return None
    # "[.../gloo/transport/tcp/pair.cc:561] Connection closed by peer [::1]:3240. This is typically ..."
    reason = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0] if text else "").split(". ")[0].rstrip(".")
    gone = _gone_workers()
    if gone:
        what = f"{', '.join(gone)} {'is' if len(gone) == 1 else 'are'} gone"
    elif "timed out" in text.lower():
        raw = os.environ.get(TIMEOUT_ENV)
        what = (f"another worker did not answer within {TIMEOUT_ENV}={raw} s" if raw else
                f"another worker did not answer within torch's default timeout (set {TIMEOUT_ENV}, in seconds)")
    else:
        what = "lost the connection to another worker"
    return (f"worker rank {get_rank()} of {get_world_size()} stopped: {what} ({reason}); rerun the same command "
            "(with --resume for a single stage) to continue from the last checkpoint, or use torchrun --max-restarts "
            "N: the restarted workers resume by themselves")


def _gone_workers(wait: float = 2.0) -> list[str]:
    """The other workers on this host whose process ended, as "rank R (pid P)", from the pids they wrote
    in the store (none known if the store went with its host). A killed process closes its connections
    before it ends, so a peer that is still running is looked at again for up to ``wait`` seconds."""
    pids = {}
    try:
        _Group.store.set_timeout(timedelta(seconds=5))
        for rank in range(get_world_size()):
            key = f"worker/{rank}"
            if rank == get_rank() or not _Group.store.check([key]):
                continue
            worker = json.loads(_Group.store.get(key))
            if worker["host"] == socket.gethostname():
                pids[rank] = worker["pid"]
    except Exception:  # noqa: BLE001 - the store is gone or unreadable: nothing known
        return []
    deadline = time.monotonic() + wait
    while True:
        gone = [f"rank {rank} (pid {pid})" for rank, pid in pids.items() if not process_running(pid)]
        if gone or not pids or time.monotonic() >= deadline:
            return gone
        time.sleep(0.05)


def process_running(pid: int) -> bool:
    """Whether process ``pid`` runs on this host. A zombie (ended, not yet reaped: torchrun's dead workers
    for a moment, a container's init perhaps for ever) does not; another user's process does."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = process_stat(pid)
    return stat is None or stat[0] not in ("Z", "X")


def process_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (which may hold spaces and parentheses):
    the state first, the parent's pid second, the start time 20th; None where unreadable."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every worker's ``obj``, in rank order, on every worker."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Worker ``src``'s ``obj`` on every worker (``obj`` is ignored elsewhere)."""
    if not is_distributed():
        return obj
    box = [obj if get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def on_main(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only and give its result (or its error) to every worker."""
    from detnas.errors import UserError

    if get_world_size() == 1:
        return fn()
    payload = None
    if get_rank() == 0:
        try:
            payload = ("ok", fn())
        except UserError as e:
            payload = ("user", str(e), e.path)
        except Exception as e:  # noqa: BLE001 - re-raised on every rank below
            payload = ("error", f"{type(e).__name__}: {e}")
    got = all_gather_object(payload)[0]
    if got[0] == "ok":
        return got[1]
    if got[0] == "user":
        err = UserError(got[1])
        err.path = got[2]
        raise err
    raise RuntimeError(f"rank 0 failed: {got[1]}")


def map_in_rounds(items: list, fn: Callable[[Any], Any]) -> Iterator[list]:
    """Share ``items`` out over the workers, one per worker per round (item j on rank j % world), and
    yield each round's results of ``fn``, gathered on every worker in item order. Every worker calls
    this with the same ``items``; ``fn`` must be local to its worker (no collective inside it)."""
    world, rank = get_world_size(), get_rank()
    for start in range(0, len(items), world):
        chunk = items[start : start + world]
        yield all_gather_object(fn(chunk[rank]) if rank < len(chunk) else None)[: len(chunk)]


def broadcast_state(model: nn.Module) -> None:
    """Give every worker rank 0's parameters and buffers (one broadcast per dtype), so that workers
    start equal even if their models were built differently; DDP does the same at construction."""
    if not is_distributed():
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in model.state_dict(keep_vars=True).values():
        by_dtype.setdefault(t.dtype, []).append(t.data)
    for tensors in by_dtype.values():
        flat = _flatten_dense_tensors(tensors)
        dist.broadcast(flat, src=0)
        for t, synced in zip(tensors, _unflatten_dense_tensors(flat, tensors)):
            t.copy_(synced)


def mean_over_workers(value: float) -> float:
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def allreduce_gradients(params: Iterable[nn.Parameter]) -> None:
    """Average ``.grad`` over workers in one coalesced all-reduce.

    Used instead of DDP for path-wise training: parameters off the sampled path must keep
    ``grad is None`` (so SGD applies neither weight decay nor momentum to them), and DDP would
    fill them with zeros. Every worker trains the same path, so every worker has the same set
    of gradients, in the same order, which the flat buffer relies on.
    """
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)  # SUM then divide: gloo has no ReduceOp.AVG
    flat /= get_world_size()
    for grad, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        grad.copy_(synced)


class _GlobalBatchNorm(torch.autograd.Function):
    """Batch normalization over the workers' concatenated batches, in one collective each way.

    Forward: every worker gathers the others' (count, mean, sum of squared deviations from that mean)
    and combines them with Chan's parallel-variance formula, which keeps the two-pass accuracy (no
    E[x^2] - E[x]^2 cancellation when |mean| >> std). Backward: one all-reduce of the per-channel sums
    that the input gradient needs (torch's SyncBatchNorm does the same on CUDA). A collective costs a few
    hundred microseconds over gloo on a 2-core machine, so their number sets a distributed CPU step's
    time; the differentiable all-reduces this replaces took four per BN (BENCHMARKS.md, "SyncBN in one
    collective each way")."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float):
        dims = (0, 2, 3)
        local_mean = x.mean(dims)
        local_m2 = (x - local_mean[None, :, None, None]).square().sum(dims)
        stats = torch.cat([x.new_tensor([x.numel() // x.size(1)]), local_mean, local_m2])
        gathered = [torch.empty_like(stats) for _ in range(get_world_size())]
        dist.all_gather(gathered, stats)
        counts, means, m2s = torch.stack(gathered).split([1, x.size(1), x.size(1)], dim=1)
        count = counts.sum()
        mean = (counts * means).sum(0) / count
        var = (m2s.sum(0) + (counts * (means - mean).square()).sum(0)) / count
        invstd = torch.rsqrt(var + eps)
        normalized = (x - mean[None, :, None, None]) * invstd[None, :, None, None]
        y = normalized if weight is None else normalized * weight[None, :, None, None] + bias[None, :, None, None]
        ctx.save_for_backward(normalized, invstd, weight)
        ctx.count = count
        ctx.mark_non_differentiable(mean, var, count)
        return y, mean, var, count

    @staticmethod
    def backward(ctx, dy, _mean, _var, _count):
        normalized, invstd, weight = ctx.saved_tensors
        dims = (0, 2, 3)
        sum_dy = dy.sum(dims)
        sum_dy_normalized = (dy * normalized).sum(dims)
        dx = None
        if ctx.needs_input_grad[0]:  # the same on every worker: they all train the same path
            sums = torch.cat([sum_dy, sum_dy_normalized])
            dist.all_reduce(sums)
            global_dy, global_dy_normalized = (sums / ctx.count).chunk(2)
            scale = invstd if weight is None else invstd * weight
            dx = (dy - global_dy[None, :, None, None] - normalized * global_dy_normalized[None, :, None, None]) \
                * scale[None, :, None, None]
        if weight is None:
            return dx, None, None, None
        return dx, sum_dy_normalized, sum_dy, None


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics cover the whole global batch, on any device.

    ``nn.SyncBatchNorm`` refuses CPU tensors; this one works with gloo (``_GlobalBatchNorm``). Each
    worker's input gradient accounts for the other workers' outputs; the affine parameters' gradients
    stay local, for ``allreduce_gradients`` to average. Single process, or eval mode: exactly
    ``nn.BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        self._check_input_dim(x)
        # At least float32 even if autocast hands us half precision; float64 stays float64.
        dtype = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            y, mean, var, count = _GlobalBatchNorm.apply(x.to(dtype), self.weight, self.bias, self.eps)
        n = int(count.item())
        if n < 2:  # every worker sees the same global count, so all raise together
            raise ValueError(f"Expected more than 1 value per channel when training, got {n}")
        if self.track_running_stats:
            self._update_running_stats(mean, var, n)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        self.num_batches_tracked += 1
        # Same rule as nn.BatchNorm2d: momentum=None means a cumulative average over batches.
        factor = 1.0 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        unbiased = var * (count / (count - 1))
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)


def convert_sync_batchnorm(module: nn.Module, device: torch.device | str) -> nn.Module:
    """Synchronize every BatchNorm2d of ``module`` across workers: torch's SyncBatchNorm on CUDA,
    ``SyncBatchNorm2d`` elsewhere. Unchanged when not distributed."""
    if not is_distributed():
        return module
    if torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_sync_bn2d(module)


def _to_sync_bn2d(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, SyncBatchNorm2d):
        sync = SyncBatchNorm2d(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        # Share (not copy) parameters and buffers, so optimizers and requires_grad flags still apply.
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            setattr(sync, name, tensor)
        sync.train(module.training)
        return sync
    for name, child in module.named_children():
        module.add_module(name, _to_sync_bn2d(child))
    return module
