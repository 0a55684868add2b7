"""User-facing errors: the CLI prints them as one line and exits non-zero, without a traceback."""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """Bad input from the user (config, arch, dataset, checkpoint): say what and where, in one line."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        super().__init__(f"{path}: {message}" if path is not None else message)
