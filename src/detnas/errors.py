"""User-facing errors: the CLI prints them as one line and exits non-zero, without a traceback."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# what a failed write of a run's file says; anything else is a bug, not the user's disk
WRITE_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


class UserError(Exception):
    """Bad input from the user (config, arch, dataset, checkpoint): say what and where, in one line."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        if path is None:
            message = _raised_in_data_worker(message, type(self))
        super().__init__(f"{path}: {message}" if path is not None else message)


def _raised_in_data_worker(message: str, cls: type) -> str:
    """The original one line of an error that a DataLoader worker raised (e.g. a truncated image).

    torch passes a worker's exception to the main process as its type and formatted traceback only,
    and re-raises it as ``cls("Caught <name> in DataLoader worker process <n>.\nOriginal Traceback
    ...\n<module>.<name>: <message>")``: we keep ``<message>``, what the main process would have said.
    Any other message is returned as it is."""
    if not message.startswith(f"Caught {cls.__name__} ") or "\nOriginal Traceback" not in message:
        return message
    marker = f"\n{cls.__module__}.{cls.__qualname__}: "
    at = message.rfind(marker)
    return message if at < 0 else message[at + len(marker):].strip()


class WriteError(UserError):
    """A file of a run could not be written (disk full, read-only, no permission): one line naming it."""


def write_error(e: OSError, path: str | Path | None) -> WriteError | None:
    """``e`` as one line naming ``path`` (its own file name if None), when it is a disk's refusal."""
    if e.errno not in WRITE_ERRORS:
        return None
    return WriteError(f"cannot write: {WRITE_ERRORS[e.errno]}", path if path is not None else e.filename)


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Writes to ``path`` inside: a disk's refusal becomes a ``WriteError`` naming ``path``."""
    try:
        yield
    except OSError as e:
        err = write_error(e, path)
        if err is None:
            raise
        raise err from None


def read_json(path: str | Path, what: str):
    """The JSON content of ``path``; a missing, unreadable or malformed file is a one-line
    ``UserError`` naming it (``what`` says what the file is, e.g. "annotation file")."""
    import json

    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{what} not found", path) from None
    except json.JSONDecodeError as e:
        raise UserError(f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {what}: {e}", path) from None
