"""Supernet training stages (pretrain on classification, finetune in a detector), single process.

Proves: the stages run on tiny ImageFolder / COCO / VOC / demo data and write what they promise;
path-wise updates touch only the sampled path (no weight decay or momentum step off the path);
a run killed with SIGKILL (or interrupted between two steps) and resumed ends bit-identical to an uninterrupted
run; bad input is a one-line CLI error.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from cli_checks import DETNAS, ENV, one_line_error  # noqa: E402
from cli_checks import run_detnas as cli  # noqa: E402
from data_builders import coco_source, finetune_cfg, make_coco, make_image_folder, make_voc  # noqa: E402
from detnas.checkpoint import save_checkpoint  # noqa: E402
from detnas.config.runs import CHECKPOINT  # noqa: E402
from detnas.config.schema import FinetuneConfig, PretrainConfig  # noqa: E402
from detnas.stages.jobs import finetune_job, pretrain_job  # noqa: E402
from detnas.stages.train import param_groups, run_training  # noqa: E402
from interruption import Interrupted, interrupt_at  # noqa: E402

ALL0 = "0" * 20
# subprocesses run single-threaded: the same numbers in every run, and no oversubscription of the cores


# ----------------------------------------------------------------------------- data and configs


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def voc_objects(n: int) -> dict[str, list[tuple]]:
    out = {}
    for i in range(n):
        objs = [("dog" if i % 2 else "cat", (4 + 3 * i, 5, 24 + 3 * i, 30))]
        if i % 3 == 0:
            objs.append(("person", (30, 10, 60, 44), 1 if i == 3 else 0))  # image 3's person is difficult
        out[f"{i + 1:06d}"] = objs
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_data")
    make_image_folder(root / "cls" / "train", classes=("a", "b", "c"), per_class=4, size=24, mode="RGB")
    make_image_folder(root / "cls" / "val", classes=("a", "b", "c"), per_class=2, size=24, mode="RGB")
    make_coco(root / "coco", n_images=8, size=(64, 48))
    objects = voc_objects(7)
    make_voc(root / "voc", objects=objects, splits={"trainval": sorted(objects)[:6]})
    return root


def write_yaml(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def pretrain_cfg(data: Path, **train) -> dict:
    return {
        "seed": 3,
        "data": {"train": str(data / "cls" / "train"), "val": str(data / "cls" / "val"), "image_size": 32},
        "train": {"iters": 6, "batch_size": 4, "lr": 0.02, "weight_decay": 4e-5, "grad_clip": 10.0, **train},
        "logging": {"log_every": 1, "checkpoint_every": 100, "progress": False},
        "eval": {"archs": [ALL0], "recalib_images": 8, "batch_size": 4},
    }


def coco(data: Path) -> dict:
    """The module's COCO dataset as a config's detection source."""
    return coco_source(data / "coco" / "annotations.json", data / "coco" / "images")


def make_job(stage: str, cfg: dict, out: Path):
    if stage == "pretrain":
        c = PretrainConfig.model_validate(cfg)
        return c, pretrain_job(c)
    c = FinetuneConfig.model_validate(cfg)
    return c, finetune_job(c, out)


def train(stage: str, cfg: dict, out: Path, resume: bool = False, interrupt: int | None = None, record=None):
    """Build the stage's job from ``cfg`` and run it in this process, as the CLI does; ``interrupt``:
    stop it before that step as a kill would (result None)."""
    c, job = make_job(stage, cfg, out)
    if record is not None:  # see every batch that is trained on
        inner = job.loss

        def loss(model, batch, arch, device):
            record.append(batch)
            return inner(model, batch, arch, device)

        job.loss = loss
    if interrupt is not None:
        interrupt_at(job, interrupt)
    try:
        result = run_training(job, c.train, c.seed, out, resume, log_every=c.logging.log_every,
                              checkpoint_every=c.logging.checkpoint_every, progress=False, amp=c.amp,
                              workers=c.data.workers)
    except Interrupted:
        assert interrupt is not None
        result = None
    return job, result


def read_ckpt(out: Path) -> dict:
    return torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def tensorboard_steps(out: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def assert_same_tensors(a, b, where: str = "") -> None:
    """Nested dicts/lists of tensors and numbers: equal bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_run(out_a: Path, out_b: Path) -> None:
    """Two finished runs: bit-identical checkpoints (weights, BN statistics, momentum, schedule, RNG),
    the same final metrics and the same logged losses at every step."""
    a, b = read_ckpt(out_a), read_ckpt(out_b)
    assert a["step"] == b["step"]
    for key in ("model", "optimizer", "scheduler", "rng", "step"):
        assert_same_tensors(a[key], b[key], key)
    drop = re.compile(r'"seconds_[a-z]+": [0-9.e+-]+')  # evaluation timings differ
    assert drop.sub("", (out_a / "metrics.json").read_text()) == drop.sub("", (out_b / "metrics.json").read_text())
    losses = [[(r["step"], r["loss"], r["arch"]) for r in read_log(out) if "step" in r] for out in (out_a, out_b)]
    assert losses[0] == losses[1] and [s for s, _, _ in losses[0]] == list(range(1, a["step"] + 1))


# ----------------------------------------------------------------------------- 1. the stages run


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory) -> Path:
    """A finished tiny pretraining run (used as finetuning init)."""
    out = tmp_path_factory.mktemp("pretrained") / "run"
    _, result = train("pretrain", pretrain_cfg(data), out)
    assert result["step"] == 6
    return out


def test_pretrain_writes_checkpoint_log_tensorboard_metrics(pretrained):
    ckpt = read_ckpt(pretrained)  # weights_only: no code in our checkpoints
    assert ckpt["format"] == "detnas-checkpoint" and ckpt["stage"] == "pretrain" and ckpt["step"] == 6
    assert ckpt["space"] == {"space": "small", "width_mult": 1.0} and ckpt["classes"] == ["a", "b", "c"]
    assert ckpt["model"]["head.4.weight"].shape == (3, 1024)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    log = read_log(pretrained)
    assert [r["step"] for r in log[:-1]] == [1, 2, 3, 4, 5, 6] and "final" in log[-1]
    assert all(r["loss"] > 0 and r["images_per_s"] > 0 and len(r["arch"]) == 20 for r in log[:-1])
    assert log[0]["lr"] == pytest.approx(0.02 * 5 / 6) and log[-2]["lr"] == 0.0  # linear decay to 0
    assert tensorboard_steps(pretrained, "pretrain/loss") == [1, 2, 3, 4, 5, 6]
    metrics = json.loads((pretrained / "metrics.json").read_text())
    top1 = metrics["top1"][ALL0]
    assert metrics == log[-1]["final"] and 0 <= top1 <= 1 and (top1 * 6) == round(top1 * 6)  # 6 val images


def test_finetune_coco_from_pretrain_holds_out_the_search_split(data, pretrained, tmp_path):
    seen: list = []
    out = tmp_path / "ft"
    job, result = train("finetune", finetune_cfg(coco(data), pretrained / CHECKPOINT), out, record=seen)
    assert result["step"] == 5
    # the backbone started from the pretrained weights: an unchanged (off-path) choice still holds them
    pre, ft = read_ckpt(pretrained)["model"], read_ckpt(out)["model"]
    same = [k for k in pre if not k.startswith("head.") and torch.equal(pre[k], ft["backbone.body." + k])]
    assert len(same) > 100
    split = json.loads((out / "search_split.json").read_text())
    held = {im["file_name"] for im in split["images"]}
    trained = {r.file_name for r in job.dataset.records}
    seen_ids = {t["image_id"] for _, targets in seen for t in targets}
    assert len(held) == 2 and len(trained) == 6 and not held & trained
    assert held | trained == {f"img{i}.png" for i in range(1, 9)}
    assert seen_ids <= {r.image_id for r in job.dataset.records} and len(seen_ids) == 6  # all, and only, those
    assert all(a["image_id"] in {im["id"] for im in split["images"]} for a in split["annotations"])
    ckpt = read_ckpt(out)
    assert ckpt["stage"] == "finetune" and ckpt["step"] == 5 and ckpt["classes"] == ["cat", "dog"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "search" and set(metrics["map"]) == {ALL0}
    assert -1 <= metrics["map"][ALL0]["AP"] <= 1
    assert [r["step"] for r in read_log(out)[:-1]] == [1, 2, 3, 4, 5]
    assert tensorboard_steps(out, "finetune/loss") == [1, 2, 3, 4, 5]


def test_standalone_network_evaluated_on_its_held_out_split_says_so(data, tmp_path):
    """A standalone detector trained with a holdout is scored on that held-out split, not on data.test."""
    cfg = FinetuneConfig.model_validate(finetune_cfg(coco(data), train={"iters": 1}))
    assert cfg.data.holdout.size > 0
    job = finetune_job(cfg, tmp_path / "run", arch=(0,) * 20)
    metrics = run_training(job, cfg.train, cfg.seed, tmp_path / "run", resume=False)
    assert metrics["split"] == "search" and set(metrics["metrics"]) >= {"AP", "AP50"}


def test_finetune_voc_retinanet(data, tmp_path):
    cfg = finetune_cfg(coco(data))
    cfg["data"] = {"train": {"format": "voc", "root": str(data / "voc"), "split": "trainval"},
                   "holdout": {"size": 2, "seed": 0}}
    cfg["detector"]["kind"] = "retinanet"
    cfg["train"]["iters"] = 3
    out = tmp_path / "voc"
    job, result = train("finetune", cfg, out)
    assert result["step"] == 3
    assert read_ckpt(out)["classes"] == ["cat", "dog", "person"]
    held = {im["file_name"] for im in json.loads((out / "search_split.json").read_text())["images"]}
    assert len(held) == 2 and not held & {r.file_name for r in job.dataset.records}
    assert len(job.dataset) == 4  # 6 in the trainval split (the 7th image is not in it), 2 held out
    assert "map" in json.loads((out / "metrics.json").read_text())


def test_demo_data_pretrain_then_finetune_through_the_cli(tmp_path, cli_here):
    from detnas.data import build_demo_data

    paths = build_demo_data(tmp_path / "demo", seed=0, cls_train=40, cls_val=10, det_train=8, det_val=4,
                            det_test=4, image_size=64, digit_height=(10, 30))
    pre = pretrain_cfg(tmp_path, iters=4)
    pre["data"].update(train=str(paths.cls_train), val=str(paths.cls_val))
    cli_here("pretrain", "--config", write_yaml(tmp_path / "pre.yaml", pre), "--out", tmp_path / "pre")
    ft = finetune_cfg(coco(tmp_path), tmp_path / "pre" / CHECKPOINT, train={"iters": 3})
    images = str(paths.det_images)
    ft["data"] = {"train": {"format": "coco", "annotations": str(paths.det_train_json), "images": images},
                  "test": {"format": "coco", "annotations": str(paths.det_val_json), "images": images}}
    cli_here("finetune", "--config", write_yaml(tmp_path / "ft.yaml", ft), "--out", tmp_path / "ft")
    top1 = json.loads((tmp_path / "pre" / "metrics.json").read_text())["top1"][ALL0]
    assert 0 <= top1 <= 1 and top1 * 10 == round(top1 * 10)  # 10 validation digits
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert metrics["split"] == "test" and ALL0 in metrics["map"]  # no holdout: evaluated on data.test
    assert not (tmp_path / "ft" / "search_split.json").exists()
    assert read_ckpt(tmp_path / "ft")["classes"] == ["digit"]  # the demo's detection task: one class


def test_model_initialisation_follows_the_seed(data, tmp_path):
    a = make_job("pretrain", pretrain_cfg(data), tmp_path)[1].model.state_dict()
    b = make_job("pretrain", pretrain_cfg(data), tmp_path)[1].model.state_dict()
    c = make_job("pretrain", {**pretrain_cfg(data), "seed": 4}, tmp_path)[1].model.state_dict()
    assert_same_tensors(a, b)
    assert not torch.equal(a["stem.0.weight"], c["stem.0.weight"])


# ----------------------------------------------------------------------------- 2. path-wise updates


def choice_of(name: str) -> tuple[int, int] | None:
    m = re.match(r"(?:backbone\.body\.)?blocks\.(\d+)\.(\d+)\.", name)
    return None if m is None else (int(m[1]), int(m[2]))


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_only_the_sampled_path_is_updated(stage, data, tmp_path):
    """Two steps on paths A then B, with momentum 0.9 and weight decay: choices off a step's path
    keep every parameter and BN statistic bit for bit (even those A gave a momentum buffer), and
    only choices on a path ever get optimizer state."""
    out = tmp_path / "run"
    cfg = pretrain_cfg(data, iters=4) if stage == "pretrain" else finetune_cfg(coco(data), train={"iters": 4})
    cfg["logging"]["checkpoint_every"] = 1
    _, job = make_job(stage, cfg, out)
    s0 = {k: v.clone() for k, v in job.model.state_dict().items()}
    path_a, path_b = job.arch_for_step(0), job.arch_for_step(1)
    assert sum(a != b for a, b in zip(path_a, path_b)) >= 8
    train(stage, cfg, out, interrupt=1)
    s1, opt1 = read_ckpt(out)["model"], read_ckpt(out)["optimizer"]
    train(stage, cfg, out, resume=True, interrupt=2)
    s2, opt2 = read_ckpt(out)["model"], read_ckpt(out)["optimizer"]
    assert read_ckpt(out)["step"] == 2

    # optimizer state is indexed in the order of the parameter groups
    name_of = {id(p): n for n, p in job.model.named_parameters()}
    order = [name_of[id(p)] for g in param_groups(job.model, 0.0) for p in g["params"]]
    with_momentum = [{order[i] for i, st in opt["state"].items() if "momentum_buffer" in st} for opt in (opt1, opt2)]
    params = set(order)
    assert opt1["param_groups"][0]["weight_decay"] > 0 and opt1["param_groups"][0]["momentum"] == 0.9

    for before, after, path, momentum, earlier in ((s0, s1, path_a, with_momentum[0], ()),
                                                   (s1, s2, path_b, with_momentum[1], (path_a,))):
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        for key in before:
            choice = choice_of(key)
            on_path = choice is None or path[choice[0]] == choice[1]
            if not on_path:
                assert key not in changed, f"{key} is off the path {path} but changed"
            elif key.endswith("running_mean") and choice is not None:
                assert key in changed, f"BN statistics {key} on the path did not change"
            if key in params:
                ever_on = on_path or any(p[choice[0]] == choice[1] for p in earlier)
                assert (key in momentum) == ever_on, f"{key}: momentum buffer {key in momentum}, on a path {ever_on}"
        # every parameter on the path got a gradient and moved, except a few whose step is below float32
        # resolution (gradient norms of BN networks at 32px span orders of magnitude; clipping scales all)
        on = [k for k in params if (c := choice_of(k)) is None or path[c[0]] == c[1]]
        assert len(on) > 100 and len(changed & set(on)) >= 0.9 * len(on)
    # the choices trained at step 1 and not at step 2 carried momentum into step 2, yet did not move
    a_only = [k for k in with_momentum[0] if (c := choice_of(k)) and path_a[c[0]] == c[1] != path_b[c[0]]]
    assert len(a_only) > 50 and all(torch.equal(s1[k], s2[k]) for k in a_only)


# ----------------------------------------------------------------------------- 3. exact resume


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_resume_after_stop_equals_an_uninterrupted_run(stage, data, tmp_path):
    cfg = pretrain_cfg(data, iters=7) if stage == "pretrain" else finetune_cfg(coco(data), train={"iters": 5})
    cfg["logging"]["checkpoint_every"] = 2
    train(stage, cfg, tmp_path / "whole")
    # killed one step after a checkpoint taken mid-epoch (3 steps per epoch in both stages): the
    # resumed run trains and logs that step again
    killed_at = 5 if stage == "pretrain" else 3
    _, result = train(stage, cfg, tmp_path / "parts", interrupt=killed_at)
    assert result is None and not (tmp_path / "parts" / "metrics.json").exists()
    assert read_ckpt(tmp_path / "parts")["step"] == killed_at - 1
    assert [r["step"] for r in read_log(tmp_path / "parts")] == list(range(1, killed_at + 1))
    train(stage, cfg, tmp_path / "parts", resume=True)
    assert_same_run(tmp_path / "whole", tmp_path / "parts")


def _kill_when_checkpointed(args: list, out: Path, timeout: float = 240) -> int:
    """Start the CLI, SIGKILL it as soon as its first checkpoint is there; the step it was killed at."""
    proc = subprocess.Popen([*DETNAS, *map(str, args)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / CHECKPOINT).exists():  # renamed into place whole: no need to read it
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()
    return read_ckpt(out)["step"]


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_resume_after_kill_9_equals_an_uninterrupted_run(stage, data, pretrained, tmp_path, cli_here):
    if stage == "pretrain":
        cfg = pretrain_cfg(data, iters=16)
    else:
        cfg = finetune_cfg(coco(data), pretrained / CHECKPOINT, train={"iters": 8})
    cfg["logging"]["checkpoint_every"] = 2
    config = write_yaml(tmp_path / "cfg.yaml", cfg)
    cli_here(stage, "--config", config, "--out", tmp_path / "whole")  # the reference: no process of its own
    killed_at = _kill_when_checkpointed([stage, "--config", config, "--out", tmp_path / "killed"],
                                        tmp_path / "killed")
    assert 2 <= killed_at < cfg["train"]["iters"]
    assert not (tmp_path / "killed" / "metrics.json").exists()
    cli_here(stage, "--config", config, "--out", tmp_path / "killed", "--resume")
    assert_same_run(tmp_path / "whole", tmp_path / "killed")
    assert tensorboard_steps(tmp_path / "killed", f"{stage}/loss") == list(range(1, cfg["train"]["iters"] + 1))


def test_kill_9_while_saving_a_checkpoint_keeps_the_previous_one(data, tmp_path, cli_here):
    cfg = pretrain_cfg(data, iters=6)
    cfg["logging"]["checkpoint_every"] = 2
    config = write_yaml(tmp_path / "cfg.yaml", cfg)
    cli_here("pretrain", "--config", config, "--out", tmp_path / "whole")
    # dies between writing the temp file of the step-4 checkpoint and renaming it into place
    r = subprocess.run([sys.executable, __file__, "kill-in-save", str(config), str(tmp_path / "killed"), "1"],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert read_ckpt(tmp_path / "killed")["step"] == 2
    assert len(list((tmp_path / "killed").glob(".checkpoint.pt.*.tmp"))) == 1  # the half-done save
    cli_here("pretrain", "--config", config, "--out", tmp_path / "killed", "--resume")
    assert_same_run(tmp_path / "whole", tmp_path / "killed")
    assert not list((tmp_path / "killed").glob(".checkpoint.pt.*.tmp"))  # cleaned up by the next save


def _kill_in_save(config: str, out: str, saves_before: int) -> None:
    """Run ``detnas pretrain`` in this process and SIGKILL it inside its (saves_before + 1)-th
    checkpoint save, after the temp file is written and before it is renamed into place."""
    import detnas.stages.train
    from detnas.cli import main

    real_save, calls = detnas.stages.train.save_checkpoint, []

    def save(path, payload):
        if len(calls) == saves_before:
            os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)  # the rename into place
        calls.append(path)
        real_save(path, payload)

    detnas.stages.train.save_checkpoint = save
    main(["pretrain", "--config", config, "--out", out])


# ----------------------------------------------------------------------------- 5. bad input


def _bad_config(data: Path, tmp: Path, case: str) -> tuple[str, Path, list[str]]:
    """(stage, config file, expected fragments of the error line) for one kind of bad input."""
    pre, ft = pretrain_cfg(data), finetune_cfg(coco(data))
    path = tmp / "cfg.yaml"
    if case == "malformed yaml":
        path.write_text("seed: 1\ntrain: [iters: 3\n")
        return "pretrain", path, [str(path), "malformed YAML"]
    if case == "unknown key":
        pre["train"]["lr_warmup"] = 5
        return "pretrain", write_yaml(path, pre), [str(path), "unknown key 'train.lr_warmup'"]
    if case == "wrong type":
        pre["train"]["iters"] = "many"
        return "pretrain", write_yaml(path, pre), [str(path), "train.iters"]
    if case == "missing image folder":
        pre["data"]["train"] = str(tmp / "nowhere")
        return "pretrain", write_yaml(path, pre), [str(tmp / "nowhere"), "not found"]
    if case == "missing coco annotations":
        ft["data"]["train"]["annotations"] = str(tmp / "none.json")
        return "finetune", write_yaml(path, ft), [str(tmp / "none.json")]
    if case == "missing voc folder":
        ft["data"]["train"] = {"format": "voc", "root": str(tmp / "novoc")}
        return "finetune", write_yaml(path, ft), [str(tmp / "novoc")]
    raise ValueError(case)


# a few cases go through a real process (what a user sees, warnings included); the rest run here
IN_A_PROCESS = {"malformed yaml", "truncated", "pickled code"}


@pytest.mark.parametrize("case", ["malformed yaml", "unknown key", "wrong type", "missing image folder",
                                  "missing coco annotations", "missing voc folder"])
def test_bad_config_or_data_is_a_one_line_error(case, data, tmp_path, cli_here):
    stage, config, expect = _bad_config(data, tmp_path, case)
    run = cli if case in IN_A_PROCESS else cli_here
    one_line_error(run(stage, "--config", config, "--out", tmp_path / "out", check=False), *expect)
    assert not (tmp_path / "out" / CHECKPOINT).exists()


def _foreign_init(kind: str, tmp: Path, pretrained: Path) -> tuple[Path, list[str]]:
    path = tmp / f"{kind}.pt"
    if kind == "not ours":
        torch.save({"model": {"w": torch.ones(2)}, "step": 3}, path)
        return path, ["not a detnas checkpoint"]
    if kind == "truncated":
        path.write_bytes((pretrained / CHECKPOINT).read_bytes()[:100_000])
        return path, ["not a readable checkpoint"]
    if kind == "pickled code":
        import pickle

        path.write_bytes(pickle.dumps({"format": "detnas-checkpoint", "cls": subprocess.Popen}))
        return path, ["not a detnas checkpoint", "weights-only"]
    if kind == "other space":  # a pretraining checkpoint of the same stage, for a width-multiplied space
        state = read_ckpt(pretrained)
        save_checkpoint(path, {**{k: v for k, v in state.items() if k not in ("format", "version")},
                               "space": {"space": "small", "width_mult": 1.5}})
        return path, ["is for space small x1.5, this run uses small"]
    if kind == "standalone network":  # a supernet's init must be a supernet
        state = read_ckpt(pretrained)
        save_checkpoint(path, {**{k: v for k, v in state.items() if k not in ("format", "version")},
                               "stage": "retrain-pretrain", "arch": "0" * 20})
        return path, ["holds one standalone network", "a supernet needs every choice"]
    if kind == "missing":
        return tmp / "absent.pt", ["checkpoint not found"]
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["not ours", "truncated", "pickled code", "other space", "standalone network",
                                  "missing"])
def test_bad_init_checkpoint_is_a_one_line_error(kind, data, pretrained, tmp_path, cli_here):
    init, expect = _foreign_init(kind, tmp_path, pretrained)
    config = write_yaml(tmp_path / "ft.yaml", finetune_cfg(coco(data), init))
    run = cli if kind in IN_A_PROCESS else cli_here
    one_line_error(run("finetune", "--config", config, "--out", tmp_path / "out", check=False), str(init), *expect)
    assert not (tmp_path / "out").exists()  # nothing written, not even the search split


def test_a_large_space_pretrain_checkpoint_is_refused_by_a_small_finetune(data, pretrained, tmp_path, cli_here):
    cfg = finetune_cfg(coco(data), pretrained / CHECKPOINT)
    cfg["space"] = "large"
    cfg["eval"]["archs"] = ["0" * 40]
    r = cli_here("finetune", "--config", write_yaml(tmp_path / "ft.yaml", cfg), "--out", tmp_path / "out", check=False)
    one_line_error(r, str(pretrained / CHECKPOINT), "checkpoint is for space small, this run uses large")


@pytest.mark.parametrize("kind", ["not ours", "truncated"])
def test_resume_from_a_damaged_checkpoint_is_a_one_line_error(kind, data, pretrained, tmp_path, cli_here):
    out = tmp_path / "run"
    out.mkdir()
    src, expect = _foreign_init(kind, tmp_path, pretrained)
    os.replace(src, out / CHECKPOINT)
    config = write_yaml(tmp_path / "pre.yaml", pretrain_cfg(data))
    one_line_error(cli_here("pretrain", "--config", config, "--out", out, "--resume", check=False),
                   str(out / CHECKPOINT), *expect)


def test_existing_run_needs_resume_and_a_resume_needs_the_same_config(data, pretrained, tmp_path, cli_here):
    cfg = finetune_cfg(coco(data), pretrained / CHECKPOINT, train={"iters": 2})
    config = write_yaml(tmp_path / "ft.yaml", cfg)
    out = tmp_path / "run"
    cli_here("finetune", "--config", config, "--out", out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    # the same folder again without --resume: refused, and nothing in it rewritten (search split included)
    cfg["data"]["holdout"]["seed"] = 7
    config2 = write_yaml(tmp_path / "ft2.yaml", cfg)
    one_line_error(cli_here("finetune", "--config", config2, "--out", out, check=False),
                   str(out / CHECKPOINT), "--resume")
    # --resume with another config: refused too
    one_line_error(cli_here("finetune", "--config", config2, "--out", out, "--resume", check=False),
                   str(out / CHECKPOINT), "another config", "data.holdout.seed")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # --resume of a finished run with the same config only evaluates again
    cli_here("finetune", "--config", config, "--out", out, "--resume")
    assert read_ckpt(out)["step"] == 2 and [r["step"] for r in read_log(out) if "step" in r] == [1, 2]


def test_divergence_is_a_one_line_error(data, tmp_path, cli_here):
    cfg = pretrain_cfg(data, lr=1e12, grad_clip=None, iters=20)
    config = write_yaml(tmp_path / "pre.yaml", cfg)
    line = one_line_error(cli_here("pretrain", "--config", config, "--out", tmp_path / "out", check=False),
                          "training diverged at step", "train.lr")
    assert re.search(r"loss is (nan|inf)", line)


if __name__ == "__main__":
    if sys.argv[1] == "kill-in-save":
        _kill_in_save(sys.argv[2], sys.argv[3], int(sys.argv[4]))
