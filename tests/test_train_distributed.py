"""Supernet training under ``torchrun`` on CPU: 2 gloo workers, synchronized BatchNorm.

Each job runs ``detnas pretrain|finetune`` under ``python -m torch.distributed.run --nproc_per_node 2``.
This file is also the worker script: it wraps ``run_training`` to dump every worker's final model,
so that the test can compare the workers bit for bit and check their BN modules.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from cli_checks import ENV, TORCHRUN  # noqa: E402
from data_builders import make_coco, make_image_folder  # noqa: E402
from detnas.stages.train import epoch_batches  # noqa: E402
from interruption import Interrupted, interrupt_at  # noqa: E402

ALL0 = "0" * 20


def torchrun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    r = subprocess.run([*TORCHRUN, *args], env=ENV, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return r


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dist_train")
    make_image_folder(root / "cls" / "train", classes=("a", "b", "c"), per_class=4, size=24, mode="RGB")
    make_image_folder(root / "cls" / "val", classes=("a", "b", "c"), per_class=2, size=24, mode="RGB")
    ann, images = make_coco(root / "coco", n_images=8, size=(64, 48))
    logging = {"log_every": 1, "checkpoint_every": 100, "progress": False}
    pretrain = {
        "seed": 2,
        "data": {"train": str(root / "cls" / "train"), "val": str(root / "cls" / "val"), "image_size": 32},
        "train": {"iters": 4, "batch_size": 2, "lr": 0.02, "grad_clip": 10.0},  # 2 per worker, 4 in all
        "logging": logging, "eval": {"archs": [ALL0], "recalib_images": 4, "batch_size": 2},
    }
    finetune = {
        "seed": 4,
        "data": {"train": {"format": "coco", "annotations": str(ann), "images": str(images)},
                 "holdout": {"size": 2, "seed": 0}},
        "detector": {"min_size": 64, "max_size": 96},
        "train": {"iters": 4, "batch_size": 2, "lr": 0.01, "weight_decay": 1e-4, "grad_clip": 10.0},
        "logging": logging, "eval": {"archs": [ALL0], "recalib_images": 4, "batch_size": 2},
    }
    out = {}
    for name, cfg in (("pretrain", pretrain), ("finetune", finetune)):
        out[name] = root / f"{name}.yaml"
        out[name].write_text(yaml.safe_dump(cfg))
    return out


def run_workers(stage: str, config: Path, tmp: Path, *cli_args: str, interrupt: int = 0,
                out: Path | None = None) -> tuple[Path, list[dict]]:
    """``detnas STAGE`` under torchrun with 2 workers; (run folder, each worker's dump).
    ``interrupt``: kill each worker before that step, with a checkpoint there."""
    out, dumps = out or tmp / "run", tmp / "dumps"
    torchrun(__file__, "worker", stage, str(config), str(out), str(dumps), str(interrupt), *cli_args)
    return out, [torch.load(dumps / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.fixture(scope="module")
def trained(configs, tmp_path_factory):
    """One 2-worker run per stage, shared by the tests that only read it."""
    cache = {}

    def get(stage: str) -> tuple[Path, list[dict]]:
        if stage not in cache:
            cache[stage] = run_workers(stage, configs[stage], tmp_path_factory.mktemp(stage))
        return cache[stage]

    return get


def assert_equal_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_two_workers_end_with_identical_weights_and_synchronized_bn(stage, trained):
    out, dumps = trained(stage)
    assert [d["rank"] for d in dumps] == [0, 1] and {d["world"] for d in dumps} == {2}
    assert {d["backend"] for d in dumps} == {"gloo"}
    for d in dumps:  # every BatchNorm of the model is the synchronized one, none left plain
        assert d["sync_bn"] > 100 and d["plain_bn"] == 0, d
    assert_equal_states(dumps[0]["state"], dumps[1]["state"])  # weights and BN statistics
    # what rank 0 saved is that same model, and it trained: the stem moved from its seeded start
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == dumps[0]["result"]["step"] and dumps[0]["result"]["finished"]
    assert_equal_states(ckpt["model"], dumps[0]["state"])
    key = "stem.0.weight" if stage == "pretrain" else "backbone.body.stem.0.weight"
    assert not torch.equal(ckpt["model"][key], dumps[0]["initial_stem"])
    assert torch.equal(dumps[0]["initial_stem"], dumps[1]["initial_stem"])
    # one log, written by rank 0, counting the images of both workers
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "step" in r] == list(range(1, ckpt["step"] + 1))
    assert json.loads((out / "metrics.json").read_text()) == log[-1]["final"]
    if stage == "finetune":
        assert len(json.loads((out / "search_split.json").read_text())["images"]) == 2


def test_torchrun_of_the_cli_module_saves_the_same_model(configs, trained, tmp_path):
    """``torchrun -m detnas pretrain`` (the command users type) gives what the wrapped workers got."""
    torchrun("-m", "detnas", "pretrain", "--config", str(configs["pretrain"]), "--out", str(tmp_path / "cli"))
    _, dumps = trained("pretrain")
    ckpt = torch.load(tmp_path / "cli" / "checkpoint.pt", weights_only=True)
    assert_equal_states(ckpt["model"], dumps[0]["state"])


@pytest.mark.slow
def test_interrupted_torchrun_finetune_resumes_exactly(configs, trained, tmp_path):
    """Stopped after 2 of 4 steps and resumed with --resume under torchrun: the same weights, momentum
    and RNG states as an uninterrupted 2-worker run. Each worker's RPN/RoI sampling draws from its
    own RNG, which must be restored per worker."""
    whole, whole_dumps = trained("finetune")
    parts, dumps = run_workers("finetune", configs["finetune"], tmp_path, interrupt=2)
    assert not dumps[0]["result"]["finished"] and dumps[0]["result"]["step"] == 2
    # rank 1 drew differently from rank 0 (its own images): one RNG state would not do for both
    assert not torch.equal(dumps[0]["rng"], dumps[1]["rng"])
    parts, dumps = run_workers("finetune", configs["finetune"], tmp_path, "--resume", out=parts)
    a, b = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (whole, parts))
    assert a["step"] == b["step"] == 4
    assert a["scheduler"] == b["scheduler"] and torch.equal(a["rng"], b["rng"])
    assert_equal_states(a["model"], b["model"])
    assert_equal_states(dict(enumerate(a["rng_per_worker"])), dict(enumerate(b["rng_per_worker"])))
    assert_equal_states({k: v["momentum_buffer"] for k, v in a["optimizer"]["state"].items()},
                        {k: v["momentum_buffer"] for k, v in b["optimizer"]["state"].items()})
    for r in range(2):
        assert_equal_states(whole_dumps[r]["state"], dumps[r]["state"])
        assert torch.equal(whole_dumps[r]["rng"], dumps[r]["rng"])


def test_workers_split_each_global_batch_without_overlap():
    for n, batch, world in ((12, 2, 2), (13, 3, 2), (10, 1, 4)):
        per_rank = [epoch_batches(n, batch, world, rank, seed=7, epoch=1) for rank in range(world)]
        single = epoch_batches(n, batch * world, 1, 0, seed=7, epoch=1)
        assert len({len(p) for p in per_rank}) == 1 and len(per_rank[0]) == n // (batch * world)
        for step, global_batch in enumerate(single):  # rank r takes the r-th slice of the same global batch
            assert sum((p[step] for p in per_rank), []) == global_batch


# ----------------------------------------------------------------------------- the worker


def _worker(stage: str, config: str, out: str, dumps: str, interrupt: str, *cli_args: str) -> None:
    import torch.distributed as dist
    from torch import nn

    import detnas.stages.train
    from detnas.cli import main
    from detnas.distributed import SyncBatchNorm2d

    original = detnas.stages.train.run_training
    initial = {}

    def run_training(job, *args, **kwargs):
        initial["stem"] = next(iter(job.model.parameters())).detach().clone()
        step = int(interrupt)
        if step:
            interrupt_at(job, step)
            kwargs["checkpoint_every"] = step
        try:
            result = {"step": original(job, *args, **kwargs)["step"], "finished": True}
        except Interrupted:
            result = {"step": step, "finished": False}
        bns = [m for m in job.model.modules() if isinstance(m, nn.BatchNorm2d)]
        Path(dumps).mkdir(parents=True, exist_ok=True)
        torch.save({
            "rank": dist.get_rank(), "world": dist.get_world_size(), "backend": dist.get_backend(),
            "sync_bn": sum(isinstance(m, SyncBatchNorm2d) for m in bns),
            "plain_bn": sum(not isinstance(m, SyncBatchNorm2d) for m in bns),
            "state": job.model.state_dict(), "initial_stem": initial["stem"], "rng": torch.get_rng_state(),
            "result": result,
        }, Path(dumps) / f"rank{dist.get_rank()}.pt")
        return result

    # wherever the CLI or a stage helper looks run_training up
    for module in list(sys.modules.values()):
        if getattr(module, "run_training", None) is original:
            module.run_training = run_training
    main([stage, "--config", config, "--out", out, *cli_args])


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        _worker(*sys.argv[2:])
