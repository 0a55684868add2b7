"""Independent stages side by side: the pipeline's two searches, its retrainings, and with ``supernets`` > 1
its supernets' pretrainings and finetunings, each in their own process, ``lanes`` at a time, every process
with its share of the cores.

Why: on a CPU the demo's small tensors keep two intra-op threads waiting on each other (a 32 px training
step ran 1.4x faster on 1 thread than on 2, a candidate's evaluation 0.93x as fast; BENCHMARKS.md),
while two single-thread processes each use a whole core. A stage's result does not depend on which
process runs it or what runs beside it: only on its config and its thread count, which is fixed by the
setting (``PipelineConfig.parallel_stages``), not by the schedule. A stage that runs alone (the
pretraining, the finetuning) keeps all of torch's threads: with one thread the demo's pretraining ran
1.18x as fast, but its finetuning 0.82x (its data loading shares the cores), 22 s lost in all.

A stop signal that reaches the pipeline is passed on to the stages running: each stops at its next safe
point as it would alone (``preemption.py``), and rerunning the pipeline resumes them. An error in one
stage stops the others the same way and is then raised as the stage raised it (one line for a user's
error).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path

import torch

from detnas.data.loading import WORKERS_ENV, usable_cpus
from detnas.errors import UserError, WriteError
from detnas.model.space import ArchError
from detnas.stages import preemption


@dataclass
class Stage:
    name: str
    run_dir: Path
    fn: Callable[[], None]  # picklable (a functools.partial of a module-level function): it may run elsewhere


def lanes_for(setting: int | str, world_size: int, device: str) -> int:
    """How many stages run at once: ``setting``, or for ``auto`` 2 on a CPU whose torch uses 2 or more
    threads, 1 on a GPU (one device per process); 1 under torchrun (the workers share each stage)."""
    if world_size > 1:
        return 1
    if setting != "auto":
        return int(setting)
    return 2 if device == "cpu" and torch.get_num_threads() >= 2 else 1


def threads_per_lane(lanes: int) -> int:
    """The threads torch would use, shared out among the lanes."""
    return max(1, torch.get_num_threads() // lanes)


def run_side_by_side(stages: list[Stage], lanes: int, on_start: Callable[[Stage], None],
                     on_done: Callable[[Stage], None]) -> None:
    """Run ``stages`` (independent of each other) in child processes, ``lanes`` at a time, in order,
    each with its share of the threads (``threads_per_lane``)."""
    ctx = mp.get_context("spawn")  # not fork: torch's thread pools do not survive a fork
    threads = threads_per_lane(lanes)
    pending, running = list(stages), {}
    failure: BaseException | None = None
    stopped: list[str] = []  # what the stages that stopped on a signal saved
    forwarded = False
    try:
        while running or (pending and failure is None and not stopped and not forwarded):
            while pending and len(running) < lanes and failure is None and not stopped and not forwarded:
                stage = pending.pop(0)
                receive, send = ctx.Pipe(duplex=False)
                process = ctx.Process(target=_lane_main, args=(send, stage.name, stage.fn, threads, lanes, os.getpid()),
                                      name=f"detnas {stage.name}")
                on_start(stage)
                process.start()
                send.close()
                running[process.sentinel] = (stage, process, receive)
            if preemption.received() is not None and not forwarded:
                forwarded = True
                _stop_all(running)
            # the processes' ends, not their pipes': a pipe's other end may outlive a process killed early
            for ended in wait(list(running), timeout=0.5):
                stage, process, receive = running.pop(ended)
                outcome = _outcome(receive, stage, process)
                if outcome is None:
                    on_done(stage)
                elif isinstance(outcome, preemption.Preempted):
                    stopped.append(f"{stage.name}: {outcome.saved}")
                elif failure is None:
                    failure = outcome
                    _stop_all(running)
    finally:
        for _, process, _ in running.values():  # only left on an exception here (Ctrl-C): they stop at once too
            process.terminate()
            process.join()
    if failure is not None:
        raise failure
    if stopped or forwarded:
        raise preemption.Preempted("; ".join(stopped) or "the stages that ran finished")


def _stop_all(running: dict) -> None:
    for _, process, _ in running.values():
        if process.is_alive():
            os.kill(process.pid, signal.SIGTERM)


def _outcome(conn: Connection, stage: Stage, process) -> BaseException | None:
    """What the stage's ended process sent: None (done), ``Preempted``, or the error to raise."""
    process.join()
    kind, message = conn.recv() if conn.poll() else ("died", None)  # no word: killed (out of memory, SIGKILL)
    conn.close()
    if kind == "done":
        return None
    if kind == "preempted":
        return preemption.Preempted(message)
    if kind in _USER_ERRORS:
        return _USER_ERRORS[kind](message)
    if kind == "died":
        return RuntimeError(f"{stage.name}: its process ended with exit code {process.exitcode}")
    return RuntimeError(f"{stage.name} failed: {message} (its traceback is above)")


_USER_ERRORS = {"WriteError": WriteError, "ArchError": ArchError, "UserError": UserError}


def _lane_main(conn: Connection, name: str, fn: Callable[[], None], threads: int, lanes: int,
               pipeline: int) -> None:
    """A stage in its own process: its output lines prefixed with its name, its outcome sent back;
    ``pipeline``: the pid of the process that started it."""
    from detnas.stages import run_guard

    _die_with(pipeline)
    torch.set_num_threads(threads)
    # data loader workers: the lane's share of the CPUs, started the platform's usual way (a spawned
    # process would spawn them too, each importing torch again: 20 s per stage in the demo)
    mp.set_start_method(None, force=True)
    os.environ.setdefault(WORKERS_ENV, str(max(0, usable_cpus() // lanes - 1)))
    sys.stdout, sys.stderr = _Prefixed(sys.stdout, name), _Prefixed(sys.stderr, name)
    run_guard.nested()  # the pipeline, not this stage, tells the user how to continue
    try:
        fn()
        outcome = ("done", None)
    except preemption.Preempted as e:
        outcome = ("preempted", e.saved)
    except (UserError, ArchError) as e:
        outcome = (next(k for k, cls in _USER_ERRORS.items() if isinstance(e, cls)), str(e))
    except BaseException as e:  # a bug: its traceback here, where it happened
        traceback.print_exc()
        outcome = ("failed", f"{type(e).__name__}: {e}")
    sys.stdout.flush()
    sys.stderr.flush()
    conn.send(outcome)
    conn.close()


def _die_with(parent: int) -> None:
    """End this process at once when the pipeline's process ``parent`` is gone (killed with -9, out of
    memory), as it would have ended had the stage run inside it: an orphan would hold the stage's folder.
    ``parent`` comes from the pipeline, not ``os.getppid()``: a stage still importing torch when the
    pipeline was killed already has another parent when it gets here, and ends at once."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True).start()


class _Prefixed:
    """A text stream that starts every line with ``[name] ``, so that stages side by side can be told apart."""

    def __init__(self, stream, name: str):
        self._stream, self._prefix, self._at_line_start = stream, f"[{name}] ", True

    def write(self, text: str) -> int:
        out = []
        for piece in text.splitlines(keepends=True):
            if self._at_line_start and piece.strip("\r\n"):
                out.append(self._prefix)
            out.append(piece)
            self._at_line_start = piece.endswith("\n")
        self._stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:  # progress bars of two processes would overwrite each other's lines
        return False

    def __getattr__(self, attr):
        return getattr(self._stream, attr)
