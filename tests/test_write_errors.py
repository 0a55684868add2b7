"""A disk that refuses a write of a run (full: ENOSPC, read-only: EROFS, no permission: EACCES), at each
place a run writes: one line naming the file, exit code 2, what was saved before intact, and the run
resumed afterwards ends as one that never failed."""

from __future__ import annotations

import builtins
import errno
import json
import os
import tempfile
from pathlib import Path

import pytest

from data_builders import TINY_DETECTOR, coco_source, make_coco, make_image_folder
from detnas.config.runs import (
    BEST_FILE,
    CHECKPOINT,
    HISTORY_FILE,
    LOG_FILE,
    METRICS_FILE,
    PARTIAL_FILE,
    PROGRESS_PNG,
    RESULT_FILE,
    RETRAIN_DETECTOR_DIR,
    SEARCH_STATE_FILE,
)
from detnas.config.schema import RetrainConfig, SearchConfig
from detnas.errors import WriteError
from detnas.search.engine import run_search
from detnas.search.state import load_state
from detnas.stages.retrain import run_retrain
from detnas.stages.run_guard import guarded_run
from test_search import SMALL, SPACE, Counter, key_fields
from test_search import search as plain_search
from test_train import assert_same_run, pretrain_cfg, read_ckpt, write_yaml

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
REASONS = {errno.ENOSPC: "no space left on the device", errno.EROFS: "the file system is read-only",
           errno.EACCES: "permission denied"}


class _RefusingFile:
    """An appended file whose writes fail with ENOSPC once ``allowed`` of them went through."""

    def __init__(self, file, refuse):
        self._file, self._refuse = file, refuse

    def write(self, text):
        self._refuse()
        return self._file.write(text)

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


def refuse_writes(monkeypatch, name: str, code: int, allowed: int = 0) -> None:
    """The disk refuses writes of the run file ``name`` with ``code`` once ``allowed`` of them went
    through, as it would: a full disk (ENOSPC) when the data is flushed to it (the fsync of an atomic
    write, an appended line), a read-only folder (EROFS) or a missing permission (EACCES) when the file
    is created. It stays so until the test gives the room back (``monkeypatch.undo()``)."""
    done = []

    def refuse() -> None:
        if len(done) >= allowed:
            raise OSError(code, os.strerror(code))
        done.append(1)

    ours = lambda path: Path(path).name == name or Path(path).name.startswith(f".{name}.")  # noqa: E731
    real_mkstemp, real_fsync, real_open = tempfile.mkstemp, os.fsync, builtins.open

    def mkstemp(*args, **kw):
        if code != errno.ENOSPC and kw.get("prefix") == f".{name}.":
            refuse()
        return real_mkstemp(*args, **kw)

    def fsync(fd):
        if code == errno.ENOSPC and ours(os.readlink(f"/proc/self/fd/{fd}")):
            refuse()
        return real_fsync(fd)

    def open_(file, mode="r", *args, **kw):
        if isinstance(file, (str, Path)) and Path(file).name == name and mode[0] in "aw":
            if code != errno.ENOSPC:
                refuse()
            elif mode[0] == "a":
                return _RefusingFile(real_open(file, mode, *args, **kw), refuse)
            else:  # e.g. a plot: the whole file fails, as it would on a full disk
                return real_open("/dev/full", mode, *args, **kw)
        return real_open(file, mode, *args, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(builtins, "open", open_)


def expect_line(text: str, path: Path, code: int) -> None:
    assert text.startswith(f"detnas: error: {path}: cannot write: {REASONS[code]}; what the run saved before is "
                           "kept"), text
    assert len(text.strip().splitlines()) == 1 and "Traceback" not in text


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("write_errors")
    make_image_folder(root / "cls" / "train", classes=("a", "b", "c"), per_class=4, size=24, mode="RGB")
    make_image_folder(root / "cls" / "val", classes=("a", "b", "c"), per_class=2, size=24, mode="RGB")
    make_coco(root / "coco", n_images=6)
    return root


@pytest.fixture(scope="module")
def whole(data, tmp_path_factory) -> tuple[Path, Path]:
    """(config, finished run): a pretraining that no disk refused."""
    tmp = tmp_path_factory.mktemp("whole")
    cfg = pretrain_cfg(data, iters=6)
    cfg["logging"]["checkpoint_every"] = 2
    config = write_yaml(tmp / "cfg.yaml", cfg)
    from cli_checks import run_here

    assert run_here("pretrain", "--config", config, "--out", tmp / "run").returncode == 0
    return config, tmp / "run"


# (file, error, writes that go through first, the step of the checkpoint left)
TRAINING = {
    "checkpoint, disk full": (CHECKPOINT, errno.ENOSPC, 1, 2),
    "checkpoint, read-only": (CHECKPOINT, errno.EROFS, 2, 4),
    "log, disk full": (LOG_FILE, errno.ENOSPC, 3, 2),
    "log, no permission": (LOG_FILE, errno.EACCES, 0, None),
    "metrics, no permission": (METRICS_FILE, errno.EACCES, 0, 6),
}


@pytest.mark.parametrize("case", list(TRAINING))
def test_training(case, whole, tmp_path, cli_here, monkeypatch):
    name, code, allowed, left = TRAINING[case]
    config, finished = whole
    out = tmp_path / "run"
    refuse_writes(monkeypatch, name, code, allowed)
    r = cli_here("pretrain", "--config", config, "--out", out, check=False)
    assert r.returncode == 2
    expect_line(r.stderr, out / name, code)
    assert "then run the same command with --resume" in r.stderr
    if left is None:
        assert not (out / CHECKPOINT).exists()
    else:
        assert read_ckpt(out)["step"] == left
    assert not list(out.glob(".*.tmp")) and not (out / "run.lock").exists() and not (out / METRICS_FILE).exists()
    monkeypatch.undo()  # room again
    cli_here("pretrain", "--config", config, "--out", out, "--resume")
    assert_same_run(finished, out)


# (file, error, writes that go through first, candidates evaluated again: those whose result the disk refused)
SEARCH = {
    "state, disk full": (SEARCH_STATE_FILE, errno.ENOSPC, 2, 0),
    "history, no permission": (HISTORY_FILE, errno.EACCES, 2, 0),
    "partial generation, disk full": (PARTIAL_FILE, errno.ENOSPC, 25, 1),
    "partial generation, read-only": (PARTIAL_FILE, errno.EROFS, 1, 0),
    "plot, disk full": (PROGRESS_PNG, errno.ENOSPC, 0, 0),
    "best, disk full": (BEST_FILE, errno.ENOSPC, 0, 0),
}


@pytest.mark.parametrize("case", list(SEARCH))
def test_search(case, tmp_path, monkeypatch):
    name, code, allowed, redone = SEARCH[case]
    full = plain_search(tmp_path, "full")
    run = tmp_path / "run"
    refuse_writes(monkeypatch, name, code, allowed)
    first = Counter()
    with pytest.raises(WriteError) as refused, guarded_run(run):
        run_search(SPACE, SearchConfig(**SMALL), first, run, progress=False)
    # a plot is written by matplotlib: a full disk there is named by its folder
    expect_line(f"detnas: error: {refused.value}", run if name == PROGRESS_PNG else run / name, code)
    if name in (SEARCH_STATE_FILE, HISTORY_FILE):  # the state of the generation before is whole
        assert load_state(run / SEARCH_STATE_FILE)["generation"] == allowed
    monkeypatch.undo()
    again = Counter()
    resumed = plain_search(tmp_path, "run", evaluate=again, resume=True)
    assert set(again.calls) & set(first.calls) == set(first.calls[len(first.calls) - redone:])
    assert key_fields(resumed.history) == key_fields(full.history) and resumed.summary == full.summary
    history = [json.loads(line) for line in (run / HISTORY_FILE).read_text().splitlines()]
    assert key_fields(history) == key_fields(full.history)
    assert json.loads((run / BEST_FILE).read_text())["arch"] == full.best_record["arch"]


def test_retraining_result(data, tmp_path, monkeypatch):
    coco = coco_source(data / "coco" / "annotations.json", data / "coco" / "images")
    cfg = RetrainConfig.model_validate({
        "seed": 1, "data": {"train": coco, "test": coco}, "detector": TINY_DETECTOR,
        "train": {"iters": 2, "batch_size": 2, "lr": 0.01}, "logging": {"progress": False},
    })
    out = tmp_path / "retrain"
    refuse_writes(monkeypatch, RESULT_FILE, errno.EROFS)
    with pytest.raises(WriteError) as refused:
        run_retrain((0,) * 20, cfg, out, resume=False, pretrain=False)
    expect_line(f"detnas: error: {refused.value}", out / RESULT_FILE, errno.EROFS)
    trained = (out / RETRAIN_DETECTOR_DIR / METRICS_FILE).stat().st_mtime_ns
    monkeypatch.undo()
    result = run_retrain((0,) * 20, cfg, out, resume=True, pretrain=False)
    assert json.loads((out / RESULT_FILE).read_text()) == json.loads(json.dumps(result))
    assert (out / RETRAIN_DETECTOR_DIR / METRICS_FILE).stat().st_mtime_ns == trained  # not trained again
