"""One run per folder: a stage holds ``run.lock`` in its run folder while it runs, so that a second run
on the same folder (a requeued job while the old one still runs, a stage started twice) is refused
with one line naming the holder, instead of both writing the same checkpoints and logs.

The lock file is created whole or not at all (written beside, then hard-linked into place, which fails
if it exists) and holds the holder's pid, host, start time and command. A lock whose process is
gone is taken over, with a message: on the same host when that pid no longer runs (or now runs
another program: its start time differs), and on any host when an earlier attempt of this same job
wrote it: a SLURM job requeued (same job id, another restart count: SLURM starts it again only after
the old one ended) or a torchrun group restarted by ``--max-restarts`` (same run id, another restart
count). A holder on another host is otherwise never presumed dead: the message says which lock file
to delete once it is. Under torchrun, rank 0 holds the lock for all workers.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from detnas.config.runs import LOCK_FILE
from detnas.distributed import init_distributed, is_main, on_main, process_running, process_stat
from detnas.errors import UserError, writing

_held: dict[Path, int] = {}  # folders this process holds, with how many nested holds


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), None where unknown: with
    the pid it names a process, where a pid alone may be reused."""
    stat = process_stat(pid)
    return None if stat is None else stat[19]


# (job id, restart count) of the schedulers that start a job again after it ended: an earlier
# attempt of our own job is over
ATTEMPTS = {"SLURM job": ("SLURM_JOB_ID", "SLURM_RESTART_COUNT"),
            "torchrun group": ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT")}


def _me() -> dict:
    attempts = {name: [os.environ[job], os.environ.get(restart, "0")]
                for name, (job, restart) in ATTEMPTS.items() if os.environ.get(job)}
    return {"pid": os.getpid(), "host": socket.gethostname(), "process_start": _process_start(os.getpid()),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": _command()[:300],
            "attempts": attempts}


def _command() -> str:
    """The command line, ``python -m detnas`` and the installed script both as ``detnas``."""
    program = Path(sys.argv[0])
    is_detnas = program.name == "detnas" or (program.name == "__main__.py" and program.parent.name == "detnas")
    return " ".join(["detnas" if is_detnas else sys.argv[0], *sys.argv[1:]])


def describe(holder: dict) -> str:
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')} "
            f"({holder.get('command') or 'unknown command'})")


def stale_because(holder: dict) -> str | None:
    """Why the process that wrote ``holder`` is certainly gone, or None if it may still run."""
    me = _me()
    theirs = holder.get("attempts") if isinstance(holder.get("attempts"), dict) else {}
    for name, (job, restart) in me["attempts"].items():
        if isinstance(theirs.get(name), list) and theirs[name][0] == job and theirs[name][1] != restart:
            return f"it was an earlier attempt of this {name} ({job}, restart {theirs[name][1]})"
    if holder.get("host") != me["host"] or not isinstance(holder.get("pid"), int):
        return None
    if not process_running(holder["pid"]):
        return "its process is gone"
    started = holder.get("process_start")
    if started is not None and _process_start(holder["pid"]) not in (None, started):
        return "its process is gone (the pid now belongs to another process)"
    return None


def _read(lock: Path) -> dict:
    try:
        holder = json.loads(lock.read_text())
    except (OSError, ValueError):  # e.g. removed meanwhile
        return {}
    return holder if isinstance(holder, dict) else {}


def _create(lock: Path, content: str) -> bool:
    """Create ``lock`` holding ``content``, whole; False if it exists."""
    tmp = lock.with_name(f".{lock.name}.{os.getpid()}.tmp")
    with writing(lock):
        tmp.write_text(content)
        try:
            os.link(tmp, lock)  # atomic, and refuses an existing file: never two holders, never half a file
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
    return True


def acquire(folder: Path) -> dict:
    """Take ``folder``'s lock (creating the folder); a one-line ``UserError`` naming the holder if a
    live run holds it. Returns what the lock file holds, and whether the folder was created."""
    lock = folder / LOCK_FILE
    created = not folder.exists()
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    me = _me()
    for _ in range(3):  # a holder that ends between our two looks: look again
        if _create(lock, json.dumps(me, indent=1) + "\n"):
            return {"holder": me, "created": created}
        holder = _read(lock)
        if not holder:
            continue
        reason = stale_because(holder)
        if reason is None:
            raise UserError(f"another run is using this folder: {describe(holder)}; wait for it to end, or "
                            "delete this lock file if that process is gone", lock)
        print(f"detnas: {lock}: taking over the lock of {describe(holder)}: {reason}", file=sys.stderr, flush=True)
        lock.unlink(missing_ok=True)
    raise UserError("could not take this folder's lock: other runs keep taking it", lock)


def release(folder: Path, taken: dict) -> None:
    """Remove ``folder``'s lock if it is still ours (a run that took it over keeps it), and the folder
    if we created it and nothing was written into it (e.g. the run was refused)."""
    lock = folder / LOCK_FILE
    if _read(lock) == taken["holder"]:
        lock.unlink(missing_ok=True)
    if taken["created"] and not any(folder.iterdir()):
        folder.rmdir()


@contextmanager
def run_lock(folder: str | Path) -> Iterator[None]:
    """Hold ``folder``'s lock inside (rank 0 for every worker; nested holds of one folder by one
    process are one hold)."""
    init_distributed()  # so that only rank 0 takes it, and every worker learns the outcome
    folder = Path(folder).absolute()
    if folder in _held:
        _held[folder] += 1
        try:
            yield
        finally:
            _held[folder] -= 1
        return
    taken = on_main(lambda: acquire(folder))
    _held[folder] = 1
    try:
        yield
    finally:
        del _held[folder]
        if is_main():
            release(folder, taken)
