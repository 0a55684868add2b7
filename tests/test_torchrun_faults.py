"""What a torchrun group of 2 workers meets, each checked against one run never interrupted:
- a scheduler's SIGTERM to torchrun: both workers stop at the same step with one checkpoint, exit 75, and
  the resumed run ends with the same weights;
- a worker that dies (kill -9, as an out-of-memory kill or a lost node would) or hangs: the others stop
  within a bounded time (``DETNAS_DIST_TIMEOUT``) with one line naming their rank, and the run continues
  from its last checkpoint; under ``torchrun --max-restarts`` the restarted group resumes by itself."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cli_checks import ENV, TORCHRUN
from detnas import distributed as D
from detnas.errors import UserError
from test_preemption import _wait_for, _wait_for_log_lines, config, data  # noqa: F401 - data is a fixture
from test_train import assert_same_run, read_ckpt, write_yaml

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
ITERS = 16


def _workers(torchrun: int) -> dict[int, int]:
    """torchrun's workers as {rank: pid} (from /proc: Linux)."""
    workers = {}
    for proc in Path("/proc").glob("[0-9]*"):
        stat = D.process_stat(int(proc.name))
        if stat is None or int(stat[1]) != torchrun:
            continue
        try:
            env = dict(v.split("=", 1) for v in (proc / "environ").read_text().split("\0") if "=" in v)
        except OSError:  # the process ended while we looked
            continue
        workers[int(env["RANK"])] = int(proc.name)
    return workers


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):  # noqa: F811
    """``run(out, *options, torchrun_options=[], env={})``: a 2-worker torchrun pretraining of ITERS steps
    (checkpoints every 4) started in the background; ``run.whole``: the same run, never interrupted."""
    tmp = tmp_path_factory.mktemp("dead_worker")
    cfg = config("pretrain", data, iters=ITERS)
    cfg["train"]["batch_size"] = 2  # per worker
    cfg["logging"]["checkpoint_every"] = 4
    cfg_file = write_yaml(tmp / "cfg.yaml", cfg)

    def start(out: Path, *options, torchrun_options=(), env=None) -> subprocess.Popen:
        command = [*TORCHRUN[:3], *torchrun_options, *TORCHRUN[3:], "-m", "detnas", "pretrain", "--config",
                   str(cfg_file), "--out", str(out), *options]
        return subprocess.Popen(command, env={**ENV, **(env or {})}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)

    start.whole = tmp / "whole"
    _, err = start(start.whole).communicate(timeout=300)
    assert read_ckpt(start.whole)["step"] == ITERS, err[-3000:]
    return start


def _stop(proc: subprocess.Popen) -> None:
    """End torchrun and its workers, if still running (they run in sessions of their own)."""
    if proc.poll() is None:
        for pid in _workers(proc.pid).values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait()


def _resume_to_the_same_run(run, out: Path) -> None:
    """``--resume`` the stopped run in ``out``: it must end as the run never interrupted."""
    resumed = run(out, "--resume")
    try:
        _, err = resumed.communicate(timeout=300)
    finally:
        _stop(resumed)
    assert resumed.returncode == 0, err[-3000:]
    assert_same_run(run.whole, out)


def _interrupt(proc: subprocess.Popen, out: Path, rank: int, signum: int) -> int:
    """Send ``signum`` to worker ``rank`` once the run saved a checkpoint; returns its pid."""
    _wait_for(lambda: (out / "checkpoint.pt").exists() and len(_workers(proc.pid)) == 2, proc)
    pid = _workers(proc.pid)[rank]
    os.kill(pid, signum)
    return pid


@pytest.mark.slow  # two torchrun jobs of 2 workers
def test_sigterm_to_torchrun_stops_both_workers_at_the_same_step(run, tmp_path):
    out = tmp_path / "stopped"
    proc = run(out)
    try:
        _wait_for_log_lines(out, 2, proc)
        proc.send_signal(signal.SIGTERM)  # to torchrun, which forwards it to its workers
        _, err = proc.communicate(timeout=120)
    finally:
        _stop(proc)
    step = read_ckpt(out)["step"]
    assert 2 <= step < ITERS and len(read_ckpt(out)["rng_per_worker"]) == 2
    # rank 0 says it once, naming the step it saved; the workers exited 75, not killed by torchrun after
    # its grace period
    assert err.count("detnas: stopped by SIGTERM: pretrain: checkpoint of ") == 1, err[-3000:]
    assert f"detnas: stopped by SIGTERM: pretrain: checkpoint of step {step} of {ITERS}" in err, err[-3000:]
    assert "exitcode  : 75" in err or "exit code 75" in err, err[-3000:]
    _resume_to_the_same_run(run, out)


@pytest.mark.slow  # two torchrun jobs of 2 workers, one of them restarted
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds torchrun's workers in /proc")
def test_a_killed_worker_restarts_the_group_which_resumes_by_itself(run, tmp_path):
    out = tmp_path / "killed"
    proc = run(out, torchrun_options=["--max-restarts", "1"])
    try:
        pid = _interrupt(proc, out, 0, signal.SIGKILL)  # rank 0: the lock's holder too
        _, err = proc.communicate(timeout=300)
    finally:
        _stop(proc)
    assert proc.returncode == 0, err[-3000:]
    # the survivor said in one line which worker is gone, and how to continue
    assert f"detnas: error: worker rank 1 of 2 stopped: rank 0 (pid {pid}) is gone (" in err, err[-3000:]
    assert "Traceback" not in err.split("detnas: torchrun restarted")[0], err[-3000:]
    assert "detnas: torchrun restarted the workers (restart 1 of 1): resuming the run" in err
    assert "taking over the lock of" in err and "earlier attempt of this torchrun group" in err
    assert_same_run(run.whole, out)  # the same weights, log and metrics as a run never killed


@pytest.mark.slow  # two torchrun jobs of 2 workers
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds torchrun's workers in /proc")
def test_a_hung_worker_stops_the_other_within_the_timeout_and_the_run_resumes(run, tmp_path):
    out = tmp_path / "hung"
    proc = run(out, env={"DETNAS_DIST_TIMEOUT": "8"})
    guard = threading.Timer(120, _stop, [proc])  # a survivor that never gives up ends the test
    try:
        pid = _interrupt(proc, out, 1, signal.SIGSTOP)  # alive but silent: a hung GPU, a lost node
        stopped = time.monotonic()
        guard.start()
        line = proc.stderr.readline()
        while line and "detnas: error:" not in line:
            line = proc.stderr.readline()
        waited = time.monotonic() - stopped
        os.kill(pid, signal.SIGKILL)  # else torchrun waits 30 s for it to take its SIGTERM
        proc.communicate(timeout=120)
    finally:
        guard.cancel()
        _stop(proc)
    assert line.startswith("detnas: error: worker rank 0 of 2 stopped: another worker did not answer within "
                           "DETNAS_DIST_TIMEOUT=8 s ("), line
    # rank 0 may already have been waiting for rank 1 in the collective when rank 1 was stopped: its
    # timeout then ran out a little under 8 s after the stop (7.9998 s was seen)
    assert "(with --resume for a single stage)" in line and 7 <= waited < 30, (waited, line)
    assert proc.returncode != 0
    _resume_to_the_same_run(run, out)


@pytest.mark.parametrize("raw, seconds", [("", None), ("90", 90.0), (" 2.5 ", 2.5)])
def test_the_collective_timeout_is_read_from_the_environment(monkeypatch, raw, seconds):
    monkeypatch.setenv("DETNAS_DIST_TIMEOUT", raw)
    got = D.collective_timeout()
    assert (got if got is None else got.total_seconds()) == seconds


@pytest.mark.parametrize("raw", ["0", "-5", "ten", "inf", "nan"])
def test_a_bad_collective_timeout_is_one_line(monkeypatch, raw):
    monkeypatch.setenv("DETNAS_DIST_TIMEOUT", raw)
    with pytest.raises(UserError, match=f"DETNAS_DIST_TIMEOUT={raw}: expected a number of seconds above 0"):
        D.collective_timeout()


def test_a_worker_whose_process_ends_just_after_its_connection_closed_is_named(monkeypatch):
    """A worker killed with -9 closes its sockets before its process ends: the survivor's collective can fail
    while the dead worker still looks alive (seen in CI: "lost the connection" instead of its rank and pid)."""
    store = D.dist.HashStore()
    ending = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    try:
        store.set("worker/1", json.dumps({"host": socket.gethostname(), "pid": ending.pid}))
        monkeypatch.setattr(D._Group, "store", store)
        monkeypatch.setattr(D, "get_rank", lambda: 0)
        monkeypatch.setattr(D, "get_world_size", lambda: 2)
        assert D._gone_workers(wait=10) == [f"rank 1 (pid {ending.pid})"]  # ample for a loaded machine
    finally:
        ending.kill()
        ending.wait()


def test_outside_a_process_group_no_error_is_a_lost_worker():
    assert D.lost_worker(RuntimeError("Connection closed by peer")) is None
