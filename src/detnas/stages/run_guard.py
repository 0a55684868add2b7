"""What surrounds every stage's run (training, search, retraining, rank check, pipeline): its folder's
lock (``run_lock.py``), stop signals turned into a stop at the next safe point (``preemption.py``),
and a disk that refuses a write turned into one line naming the file, with what to do next.

Stages nest (the pipeline runs the others, a retraining runs its trainings): the outermost run says
how to continue, in the words of the command the user ran.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from detnas.distributed import is_main
from detnas.errors import WriteError, write_error
from detnas.stages import preemption
from detnas.stages.run_lock import run_lock

RESUME_STAGE = "run the same command with --resume"
# errors that only a write can meet; a refused permission is only known to be a write's where it happens
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


class _Depth:
    value = 0


@contextmanager
def guarded_run(folder: str | Path, how_to_continue: str = RESUME_STAGE) -> Iterator[None]:
    """Run the block as the run in ``folder``: locked, preemptible, its write errors one line."""
    outermost = _Depth.value == 0
    _Depth.value += 1
    try:
        with run_lock(folder), preemption.preemptible():
            yield
    except preemption.Preempted as e:
        if outermost and is_main():
            print(f"detnas: stopped by {preemption.received() or 'a stop signal (on another worker)'}: {e.saved}; "
                  f"{how_to_continue} to continue (exit code {preemption.EXIT_PREEMPTED})", file=sys.stderr,
                  flush=True)
        raise
    except WriteError as e:
        raise _continued(e, how_to_continue) if outermost else e from None
    except OSError as e:  # a write outside our own writers (a plot, TensorBoard's events)
        err = write_error(e, e.filename or folder) if e.errno in _DISK_ERRNOS else None
        if err is None:
            raise
        raise _continued(err, how_to_continue) if outermost else err from None
    finally:
        _Depth.value -= 1


def nested() -> None:
    """Mark this process's runs as nested in an outer one run elsewhere (a pipeline's stage in its own
    process, ``lanes.py``): the outer run tells the user how to continue."""
    _Depth.value += 1


def _continued(e: WriteError, how_to_continue: str) -> WriteError:
    return WriteError(f"{e}; what the run saved before is kept: make room or fix the permission, then "
                      f"{how_to_continue}")
