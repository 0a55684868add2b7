"""Atomic file writes: a temp file beside the target, flushed to disk, then renamed into place, so a
crash or ``kill -9`` at any moment leaves either the old file or the new one, never half of one; a
full disk, a read-only folder or a missing permission leaves the old one too, and is a one-line
``WriteError`` naming the file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from detnas.errors import writing


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` to fill a temp file, then rename it to ``path``."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            write(Path(tmp))
            # mkstemp makes it private, and some writers (safetensors) replace the file: set the mode after
            os.chmod(tmp, 0o644)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_text_atomic(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(data, path: str | Path, **dump_kwargs) -> None:
    write_text_atomic(path, json.dumps(data, **dump_kwargs))


@contextmanager
def staged_files(out_dir: str | Path, last: str, stale: tuple[str, ...] = ()) -> Iterator[Path]:
    """A temp folder inside ``out_dir`` to write a set of files into; when the block completes they are
    moved into ``out_dir``, ``last`` (the file that says the set is complete) removed first and moved
    last, and the ``stale`` names left by an earlier set removed. If the block fails, ``out_dir`` is
    left as it was: nothing half-written, nothing lost."""
    out_dir = Path(out_dir)
    for old in out_dir.glob(".staged-*.tmp"):  # left by a process killed while writing
        shutil.rmtree(old, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=".staged-", suffix=".tmp"))
    try:
        yield staging
        (out_dir / last).unlink(missing_ok=True)
        for f in sorted(staging.iterdir()):
            if f.name != last:
                os.replace(f, out_dir / f.name)
        for name in stale:
            (out_dir / name).unlink(missing_ok=True)
        os.replace(staging / last, out_dir / last)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
