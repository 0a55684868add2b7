"""Graceful preemption: SIGTERM or SIGUSR1 (what SLURM and most schedulers send before they kill a job,
e.g. ``sbatch --signal=USR1@300``) ask the running stage to stop at its next safe point: training
after its current step, with a checkpoint of that step; a search after its current round of
candidates, whose results are already in ``partial_generation.jsonl``; the pipeline before its next
stage. The process then exits with ``EXIT_PREEMPTED``, and running it again (with ``--resume`` for a
single stage) ends exactly as a run that never stopped.

Under torchrun every worker checks at the same points and all stop together, whichever received the
signal. More signals change nothing (schedulers often signal the workers and torchrun forwards the
same signal again); SIGKILL or Ctrl-C still stop at once.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from detnas.distributed import is_distributed, mean_over_workers

EXIT_PREEMPTED = 75  # EX_TEMPFAIL of sysexits.h: "a temporary failure; try again later"
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(SystemExit):
    """A run stopped at a safe point on request; ``saved`` says what it kept. A ``SystemExit``, so that
    no error handler takes it for a failure and the process exits with ``EXIT_PREEMPTED``."""

    def __init__(self, saved: str):
        super().__init__(EXIT_PREEMPTED)
        self.saved = saved


class _Signals:
    received: str | None = None  # the name of the first stop signal, since the outermost run began
    depth = 0  # nested ``preemptible`` blocks (the pipeline's stages run inside the pipeline's)
    pid: int | None = None  # the process that installed the handler
    previous: dict = {}


def _on_signal(signum: int, _frame) -> None:
    if os.getpid() != _Signals.pid:  # a forked DataLoader worker inherits the handler: its parent decides
        return
    if _Signals.received is None:
        _Signals.received = signal.Signals(signum).name
        # os.write, not print: a handler may run in the middle of another write to stderr
        os.write(2, f"detnas: {_Signals.received} received: stopping at the next checkpoint\n".encode())


@contextmanager
def preemptible() -> Iterator[None]:
    """Inside, SIGTERM and SIGUSR1 only ask for a stop (see ``stop_requested``); outside, they act as
    before. Off the main thread, where Python cannot handle signals, this changes nothing."""
    install = _Signals.depth == 0 and threading.current_thread() is threading.main_thread()
    if install:
        _Signals.received, _Signals.pid = None, os.getpid()
        _Signals.previous = {s: signal.signal(s, _on_signal) for s in SIGNALS}
    _Signals.depth += 1
    try:
        yield
    finally:
        _Signals.depth -= 1
        if install:
            for s, handler in _Signals.previous.items():
                signal.signal(s, handler)


def received() -> str | None:
    """The stop signal this process received, if any."""
    return _Signals.received


def stop_requested() -> bool:
    """Whether a stop was asked of any worker. A collective under torchrun: every worker asks at the
    same points of the run (one all-reduce of a number), so that all stop at the same one."""
    asked = _Signals.received is not None
    return mean_over_workers(float(asked)) > 0 if is_distributed() else asked


def stop_if_requested(saved: str) -> None:
    """Stop here (every worker alike) if a stop was asked; ``saved`` says what the run kept."""
    if stop_requested():
        raise Preempted(saved)
