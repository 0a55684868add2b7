"""A real 2-process gloo job on CPU, launched the way torchrun does (RANK/WORLD_SIZE/... env vars).

Each worker runs this file as a script and saves what it observed; the test compares that with a
single-process nn.BatchNorm2d on the concatenated batch."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from torch import nn

from cli_checks import ENV
from detnas import distributed as D

WORLD = 2
SLICES = [slice(0, 2), slice(2, 5)]  # unequal per-worker batches: 2 and 3 images
MOMENTA = {"m0.1": 0.1, "cumulative": None}
STEPS = 2
C = 3


def _bn_case(momentum: float | None) -> tuple[nn.BatchNorm2d, list[torch.Tensor], list[torch.Tensor]]:
    """A float64 BN with random affine params, STEPS global batches, and the loss weights for each."""
    g = torch.Generator().manual_seed(0)
    bn = nn.BatchNorm2d(C, momentum=momentum).double()
    with torch.no_grad():
        bn.weight.copy_(torch.rand(C, generator=g, dtype=torch.float64) + 0.5)
        bn.bias.copy_(torch.randn(C, generator=g, dtype=torch.float64))
    xs = [torch.randn(5, C, 4, 3, generator=g, dtype=torch.float64) * 3 + 2 for _ in range(STEPS)]
    ws = [torch.randn(5, C, 4, 3, generator=g, dtype=torch.float64) for _ in range(STEPS)]
    return bn, xs, ws


def _offset_batch() -> torch.Tensor:
    """float32 data whose mean is 1000x its std: sum-of-squares variance would lose most digits."""
    return torch.randn(5, C, 8, 8, generator=torch.Generator().manual_seed(1)) + 1000.0


@contextlib.contextmanager
def _counted(*names: str):
    """{name: calls} of ``torch.distributed.<name>`` made inside (through ``detnas.distributed``)."""
    calls = dict.fromkeys(names, 0)
    real = {name: getattr(D.dist, name) for name in names}

    def counting(name):
        def call(*args, **kwargs):
            calls[name] += 1
            return real[name](*args, **kwargs)
        return call

    for name in names:
        setattr(D.dist, name, counting(name))
    try:
        yield calls
    finally:
        for name in names:
            setattr(D.dist, name, real[name])


def _worker(out_dir: Path) -> None:
    info = D.init_distributed(timeout=timedelta(seconds=30))
    assert D.init_distributed(timeout=timedelta(seconds=30)) == info  # idempotent
    rank = info.rank
    part = SLICES[rank]
    seen: dict = {"info": (info.rank, info.world_size, info.local_rank, str(info.device))}

    for key, momentum in MOMENTA.items():
        bn, xs, ws = _bn_case(momentum)
        model = D.convert_sync_batchnorm(nn.Sequential(bn), info.device)
        steps = []
        for x, w in zip(xs, ws):
            x = x[part].clone().requires_grad_()
            y = model(x)
            (y * w[part]).sum().backward()
            D.allreduce_gradients(model.parameters())
            steps.append({"y": y.detach(), "x.grad": x.grad, "weight.grad": model[0].weight.grad.clone(),
                          "bias.grad": model[0].bias.grad.clone()})
            model.zero_grad()
        model.eval()
        seen[key] = {"type": type(model[0]).__name__, "steps": steps, "eval_y": model(xs[0][part]).detach(),
                     "running": {k: v.clone() for k, v in model[0].named_buffers()}}

    sync32 = D.convert_sync_batchnorm(nn.BatchNorm2d(C), info.device)
    seen["offset_y"] = sync32(_offset_batch()[part]).detach()

    # the collectives of one SyncBN forward and backward: over gloo each costs a few hundred microseconds
    with _counted("all_gather", "all_reduce") as calls:
        sync32(_offset_batch()[part].requires_grad_()).sum().backward()
    seen["sync_bn_collectives"] = calls

    # allreduce_gradients: one all-reduce for all grads; a None grad stays None.
    a, b, c = (nn.Parameter(torch.zeros(n)) for n in (2, 3, 4))
    a.grad = torch.tensor([1.0, 2.0]) * (rank + 1)
    c.grad = torch.full((4,), 10.0 * rank)
    with _counted("all_reduce") as calls:
        D.allreduce_gradients([a, b, c])
    seen["allreduce"] = {"a": a.grad, "b": b.grad, "c": c.grad, "calls": calls["all_reduce"]}

    seen["gathered"] = D.all_gather_object({"rank": rank})
    seen["broadcast"] = D.broadcast_object(f"from rank {rank}", src=1)
    D.barrier()
    torch.save(seen, out_dir / f"rank{rank}.pt")
    D.cleanup_distributed()


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> list[dict]:
    """Run the 2-worker job once; every test reads its results."""
    out_dir = tmp_path_factory.mktemp("dist")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**ENV, "WORLD_SIZE": str(WORLD), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    procs = [
        subprocess.Popen([sys.executable, __file__, str(out_dir)], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in range(WORLD)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=90)[0])
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0] * WORLD, "\n".join(logs)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_init_distributed_reads_torchrun_env(job):
    assert [seen["info"] for seen in job] == [(0, 2, 0, "cpu"), (1, 2, 1, "cpu")]


def test_single_process_init_has_no_process_group():
    info = D.init_distributed()
    assert (info.rank, info.world_size, info.local_rank) == (0, 1, 0) and not D.is_distributed()


@pytest.mark.parametrize("key", MOMENTA)
def test_sync_bn_equals_batchnorm_on_concatenated_batch(job, key):
    ref, xs, ws = _bn_case(MOMENTA[key])
    for step, (x, w) in enumerate(zip(xs, ws)):
        x = x.clone().requires_grad_()
        y = ref(x)
        # The global loss is the sum of the workers' losses; allreduce_gradients averages, hence / WORLD.
        (y * w).sum().backward()
        for rank, seen in enumerate(job):
            got = seen[key]["steps"][step]
            assert seen[key]["type"] == "SyncBatchNorm2d"
            torch.testing.assert_close(got["y"], y.detach()[SLICES[rank]], rtol=0, atol=1e-12)
            torch.testing.assert_close(got["x.grad"], x.grad[SLICES[rank]], rtol=0, atol=1e-12)
            torch.testing.assert_close(got["weight.grad"], ref.weight.grad / WORLD, rtol=0, atol=1e-12)
            torch.testing.assert_close(got["bias.grad"], ref.bias.grad / WORLD, rtol=0, atol=1e-12)
        ref.zero_grad()
    ref.eval()
    for rank, seen in enumerate(job):
        for name, buf in ref.named_buffers():
            torch.testing.assert_close(seen[key]["running"][name], buf, rtol=0, atol=1e-12)
        torch.testing.assert_close(seen[key]["eval_y"], ref(xs[0][SLICES[rank]]).detach(), rtol=0, atol=1e-12)


def test_sync_bn_makes_one_collective_each_way(job):
    for seen in job:
        assert seen["sync_bn_collectives"] == {"all_gather": 1, "all_reduce": 1}


def test_sync_bn_is_stable_in_float32_when_mean_dwarfs_std(job):
    exact = nn.BatchNorm2d(C).double()(_offset_batch().double()).float()
    for rank, seen in enumerate(job):
        assert seen["offset_y"].dtype == torch.float32
        torch.testing.assert_close(seen["offset_y"], exact[SLICES[rank]], rtol=0, atol=2e-4)


def test_allreduce_gradients_averages_in_one_call_and_keeps_none(job):
    for seen in job:
        got = seen["allreduce"]
        assert got["calls"] == 1 and got["b"] is None
        assert got["a"].tolist() == [1.5, 3.0] and got["c"].tolist() == [5.0] * 4


def test_object_collectives(job):
    for seen in job:
        assert seen["gathered"] == [{"rank": 0}, {"rank": 1}]
        assert seen["broadcast"] == "from rank 1"


def test_single_process_is_plain_batchnorm():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(C)
    assert D.convert_sync_batchnorm(bn, "cpu") is bn  # no process group: unchanged
    sync = D.SyncBatchNorm2d(C)
    x = torch.randn(4, C, 5, 5)
    torch.testing.assert_close(sync(x), bn(x), rtol=0, atol=0)
    torch.testing.assert_close(sync.running_var, bn.running_var, rtol=0, atol=0)
    D.allreduce_gradients([nn.Parameter(torch.zeros(1))])  # no-op, no error


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
