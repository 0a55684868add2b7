"""One run per folder (stages/run_lock.py): every stage command and the pipeline refuse a folder that a
live run holds, with one line naming it; a lock left by a process that is gone is taken over with a
message; a finished or refused run leaves no lock behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cli_checks import DETNAS, ENV, one_line_error
from data_builders import TINY_DETECTOR, coco_source, finetune_cfg, make_coco, make_image_folder
from detnas.config.runs import LOCK_FILE, METRICS_FILE
from detnas.errors import UserError
from detnas.stages.run_lock import _process_start, run_lock

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lock_data")
    make_image_folder(root / "cls", classes=("a", "b"), per_class=3, size=24, mode="RGB")
    make_coco(root / "coco", n_images=6)
    return root


@pytest.fixture
def live_pid():
    """A process that runs for the whole test."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def hold(folder: Path, pid: int, host: str | None = None, **more) -> Path:
    """A lock in ``folder`` as the process ``pid`` on ``host`` (this one by default) wrote it."""
    folder.mkdir(parents=True, exist_ok=True)
    holder = {"pid": pid, "host": host or socket.gethostname(), "process_start": _process_start(pid),
              "started": "2030-01-02T03:04:05", "command": "detnas finetune --out x", "attempts": {}, **more}
    (folder / LOCK_FILE).write_text(json.dumps(holder))
    return folder / LOCK_FILE


def write_yaml(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def commands(data: Path, tmp: Path, out: Path) -> dict[str, list]:
    """Every stage command and the pipeline, with ``--out out`` and a config that would run."""
    coco = coco_source(data / "coco" / "annotations.json", data / "coco" / "images")
    train = {"iters": 1, "batch_size": 2, "lr": 0.01}
    pre = write_yaml(tmp / "pre.yaml", {"data": {"train": str(data / "cls"), "val": str(data / "cls"),
                                                 "image_size": 32}, "train": train, "logging": {"progress": False}})
    ft = write_yaml(tmp / "ft.yaml", finetune_cfg(coco))
    search = write_yaml(tmp / "search.yaml", {"supernet": str(tmp / "supernet"), "search": {"max_flops": 300e6}})
    retrain = write_yaml(tmp / "retrain.yaml", {"data": {"train": coco, "test": coco}, "detector": TINY_DETECTOR,
                                                "train": train})
    pipeline = write_yaml(tmp / "pipeline.yaml", {"detection": {"train": coco, "holdout": {"size": 2}},
                                                  "detector": TINY_DETECTOR, "finetune": train,
                                                  "retrain": {"train": train}})
    return {
        "pretrain": ["pretrain", "--config", pre, "--out", out, "--resume"],
        "finetune": ["finetune", "--config", ft, "--out", out, "--resume"],
        "search": ["search", "--config", search, "--out", out, "--resume"],
        "retrain": ["retrain", "--arch", "0" * 20, "--config", retrain, "--out", out, "--resume"],
        "rank-check": ["rank-check", "--config", pipeline, "--supernet", tmp / "supernet", "--out", out, "--resume"],
        "pipeline": ["pipeline", "--config", pipeline, "--out", out],
    }


@pytest.mark.parametrize("command", ["pretrain", "finetune", "search", "retrain", "rank-check", "pipeline"])
def test_every_stage_refuses_a_folder_that_a_live_run_holds(command, data, tmp_path, live_pid, cli_here):
    out = tmp_path / "run"
    lock = hold(out, live_pid)
    before = lock.read_bytes()
    r = cli_here(*commands(data, tmp_path, out)[command], check=False)
    one_line_error(r, str(lock), f"another run is using this folder: pid {live_pid} on {socket.gethostname()}",
                   "started 2030-01-02T03:04:05 (detnas finetune --out x)", "delete this lock file")
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE] and lock.read_bytes() == before


def test_a_second_run_is_refused_while_the_first_goes_on(data, tmp_path, cli_here):
    out = tmp_path / "run"
    args = commands(data, tmp_path, out)["pretrain"]
    cfg = yaml.safe_load(Path(args[2]).read_text())
    cfg["train"]["iters"] = 500
    write_yaml(Path(args[2]), cfg)
    first = subprocess.Popen([*DETNAS, *map(str, args[:-1])], env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "log.jsonl").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read()
        one_line_error(cli_here(*args, check=False), f"pid {first.pid} on {socket.gethostname()}",
                       f"({' '.join(['detnas', *map(str, args[:-1])])})")
        first.send_signal(signal.SIGTERM)  # the first run goes on until then, and stops as it would
        assert first.wait(120) == 75, first.stderr.read()
    finally:
        first.kill()
        first.wait()
    assert not (out / LOCK_FILE).exists()


def test_a_stale_lock_is_taken_over_and_a_finished_run_leaves_none(data, tmp_path, cli_here):
    out = tmp_path / "run"
    pid = dead_pid()
    hold(out, pid)
    cfg = commands(data, tmp_path, out)["pretrain"]
    r = cli_here(*cfg)
    assert f"{out / LOCK_FILE}: taking over the lock of pid {pid} on {socket.gethostname()}" in r.stderr
    assert "its process is gone" in r.stderr
    assert (out / METRICS_FILE).exists() and not (out / LOCK_FILE).exists()


def test_a_refused_run_leaves_no_folder_and_no_lock(tmp_path):
    out = tmp_path / "new" / "run"
    with pytest.raises(UserError, match="bad config"), run_lock(out):
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
        raise UserError("bad config")
    assert not out.exists()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "old.txt").write_text("x")
    with pytest.raises(UserError), run_lock(tmp_path / "kept"):
        raise UserError("bad config")
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["old.txt"]


def test_a_reused_pid_is_not_a_holder(tmp_path, live_pid):
    hold(tmp_path, live_pid, process_start="1")  # the pid runs, but it is not the process that wrote the lock
    with run_lock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_FILE).exists()


def test_nested_holds_of_one_folder_by_one_process_are_one(tmp_path):
    with run_lock(tmp_path), run_lock(tmp_path):
        assert (tmp_path / LOCK_FILE).exists()
    assert not (tmp_path / LOCK_FILE).exists()


@pytest.mark.parametrize("env, holder_attempts, taken", [
    # a requeued SLURM job: same job id, another restart count: the old attempt is over, wherever it ran
    ({"SLURM_JOB_ID": "77", "SLURM_RESTART_COUNT": "1"}, {"SLURM job": ["77", "0"]}, True),
    # torchrun --max-restarts: the same group restarted
    ({"TORCHELASTIC_RUN_ID": "g1", "TORCHELASTIC_RESTART_COUNT": "2"}, {"torchrun group": ["g1", "1"]}, True),
    # the same attempt (e.g. another step of the same job), another job, no job: alive as far as we know
    ({"SLURM_JOB_ID": "77", "SLURM_RESTART_COUNT": "1"}, {"SLURM job": ["77", "1"]}, False),
    ({"SLURM_JOB_ID": "78"}, {"SLURM job": ["77", "0"]}, False),
    ({}, {}, False),
])
def test_a_holder_on_another_host_is_only_taken_over_when_it_was_an_earlier_attempt_of_our_job(
        env, holder_attempts, taken, tmp_path, monkeypatch, capfd):
    for key in ("SLURM_JOB_ID", "SLURM_RESTART_COUNT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    hold(tmp_path, 4242, host="node-17", attempts=holder_attempts)
    if taken:
        with run_lock(tmp_path):
            pass
        assert "an earlier attempt of this" in capfd.readouterr().err
        assert not (tmp_path / LOCK_FILE).exists()
    else:
        with pytest.raises(UserError, match="pid 4242 on node-17"), run_lock(tmp_path):
            pass
        assert (tmp_path / LOCK_FILE).exists()
