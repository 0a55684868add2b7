"""Stages side by side (stages/lanes.py): each in its own process, an error raised as the stage raised
it, the others stopped; output lines named by their stage. The pipeline run this way ends with the same
report as one stage at a time: test_preemption_pipeline.py."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest

from detnas.errors import UserError
from detnas.stages.lanes import Stage, _Prefixed, lanes_for, run_side_by_side


def write(path: Path, text: str) -> None:
    path.write_text(text)


def fail(message: str) -> None:
    raise UserError(message)


def crash() -> None:
    raise ZeroDivisionError("a bug")


def run_until_stopped(marker: Path) -> None:
    """Stands for a long stage: runs until the stop signal that a failure beside it sends."""
    from detnas.stages import preemption
    from detnas.stages.run_guard import guarded_run

    with guarded_run(marker.parent):
        marker.write_text("started")
        while True:
            preemption.stop_if_requested("nothing")
            time.sleep(0.05)


def test_stages_run_side_by_side_and_errors_come_back_as_raised(tmp_path):
    done = []
    stages = [Stage(f"s{i}", tmp_path, partial(write, tmp_path / f"{i}.txt", str(i))) for i in range(2)]
    run_side_by_side(stages, 2, lambda s: None, lambda s: done.append(s.name))
    assert sorted(done) == ["s0", "s1"] and (tmp_path / "1.txt").read_text() == "1"

    # one stage's user error stops the long stage beside it at its next safe point, then is raised as it was
    (tmp_path / "long").mkdir()
    stages = [Stage("long", tmp_path / "long", partial(run_until_stopped, tmp_path / "long" / "marker")),
              Stage("bad", tmp_path, partial(fail, "data.yaml: no such file")),
              Stage("never", tmp_path, partial(write, tmp_path / "never.txt", "x"))]
    with pytest.raises(UserError, match="^data.yaml: no such file$"):
        run_side_by_side(stages, 2, lambda s: None, lambda s: None)
    assert not (tmp_path / "never.txt").exists()

    with pytest.raises(RuntimeError, match=r"^buggy failed: ZeroDivisionError: a bug \(its traceback is above\)$"):
        run_side_by_side([Stage("buggy", tmp_path, crash)], 2, lambda s: None, lambda s: None)


def write_pid_and_wait(path: Path) -> None:
    path.write_text(str(os.getpid()))
    time.sleep(600)


def test_a_killed_pipeline_takes_its_stages_with_it(tmp_path):
    """kill -9 of the process that runs stages side by side (an out-of-memory kill) ends them too: an
    orphan would keep its stage's folder locked."""
    from detnas.distributed import process_running

    pid_files = [tmp_path / "a.pid", tmp_path / "b.pid"]
    script = ("import sys; from functools import partial; from pathlib import Path; import test_lanes as t\n"
              "if __name__ == '__main__':\n"
              f"    stages = [t.Stage(p.stem, Path({str(tmp_path)!r}), partial(t.write_pid_and_wait, p))\n"
              f"              for p in map(Path, {[str(p) for p in pid_files]!r})]\n"
              "    t.run_side_by_side(stages, 2, lambda s: None, lambda s: None)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parent)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(p.exists() for p in pid_files):
            time.sleep(0.1)
        assert all(p.exists() for p in pid_files), "the stages never started"
        time.sleep(0.2)  # the pids are written whole
        stages = [int(p.read_text()) for p in pid_files]
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(map(process_running, stages)):
            time.sleep(0.1)
        assert not any(map(process_running, stages)), "a stage's process outlived the killed pipeline"
    finally:
        parent.kill()


def test_a_stage_that_starts_after_the_pipeline_was_killed_ends_at_once():
    """The race of the test above: kill -9 of the pipeline while a stage is still starting (importing
    torch); when the stage gets to run, its parent is already another process."""
    script = ("import multiprocessing as mp, time; from detnas.stages.lanes import _lane_main\n"
              "_, send = mp.Pipe(duplex=False)\n"  # started by a pipeline that is gone: its parent is this test
              f"_lane_main(send, 'stage', lambda: time.sleep(60), 1, 2, pipeline={os.getppid()})\n")
    child = subprocess.Popen([sys.executable, "-c", script])
    try:
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        child.kill()


def test_output_lines_carry_the_stage_name():
    out = io.StringIO()
    stream = _Prefixed(out, "search (random)")
    stream.write("generation 1\ngener")
    stream.write("ation 2\n\n")
    assert out.getvalue() == "[search (random)] generation 1\n[search (random)] generation 2\n\n"
    assert not stream.isatty()


def test_lanes_auto_uses_both_cores_of_a_cpu_only_alone(monkeypatch):
    monkeypatch.setattr("torch.get_num_threads", lambda: 2)
    assert lanes_for("auto", 1, "cpu") == 2
    assert lanes_for("auto", 1, "cuda") == 1 and lanes_for("auto", 2, "cpu") == 1 and lanes_for(3, 2, "cpu") == 1
    assert lanes_for(3, 1, "cuda") == 3
    monkeypatch.setattr("torch.get_num_threads", lambda: 1)
    assert lanes_for("auto", 1, "cpu") == 1
