"""Checkpoints: written atomically, read with ``weights_only=True`` so that a file can never run code,
and checked against the SHA-256 of their content stored in them (``sha256``; older checkpoints without
one still load)."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch

from detnas.atomic import atomic_write
from detnas.digest import content_sha256
from detnas.errors import UserError

FORMAT = "detnas-checkpoint"
VERSION = 1
CHECKSUM = "sha256"  # of everything else in the file, see detnas.digest


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Write ``payload`` (plus our format tag) to a temp file beside ``path``, then rename into place.

    A crash or ``kill -9`` at any moment leaves either the old checkpoint or the new one, never half.
    """
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a run killed while saving
        stale.unlink(missing_ok=True)
    data = {"format": FORMAT, "version": VERSION, **payload}
    data.pop(CHECKSUM, None)  # e.g. a payload read from another checkpoint: its checksum is not ours
    data[CHECKSUM] = content_sha256(data)
    atomic_write(path, lambda tmp: _save(data, tmp))


def _save(data: dict, path: Path) -> None:
    # through a Python file: a full disk is then an OSError (ENOSPC), not an opaque RuntimeError of
    # torch's own writer ("PytorchStreamWriter failed writing file")
    with open(path, "wb") as f:
        torch.save(data, f)


def _first_sentence(e: Exception) -> str:
    text = " ".join(str(e).split())
    if not text or text.isdigit():  # e.g. KeyError(101)
        return type(e).__name__ + (f" {text}" if text else "")
    return text.split(". ")[0][:160]


def load_checkpoint(path: str | Path, stage: str | tuple[str, ...] | None = None, space: dict | None = None) -> dict:
    """Read one of our checkpoints on the CPU; anything else is a one-line ``UserError``.

    ``stage`` and ``space`` (``{"space": name, "width_mult": w}``) are checked when given.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError("is a folder, not a checkpoint file (a run's checkpoint is <run>/checkpoint.pt)", path)
    if not path.is_file():
        raise UserError("checkpoint not found", path)
    try:
        with warnings.catch_warnings():  # e.g. about the pickle protocol of a foreign file: one line only
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError("not a detnas checkpoint: it holds Python objects that a weights-only load refuses "
                        "to unpickle", path) from None
    except Exception as e:  # torch raises RuntimeError, OSError, EOFError, KeyError... on damaged files
        raise UserError(f"not a readable checkpoint (truncated, damaged or not a torch file): {_first_sentence(e)}",
                        path) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError("not a detnas checkpoint", path)
    stored = data.pop(CHECKSUM, None)
    if stored is not None and stored != content_sha256(data):
        raise UserError("checkpoint is damaged: its content does not match the checksum stored in it "
                        "(a partial copy or a disk error?)", path)
    if data.get("version") != VERSION:
        raise UserError(f"checkpoint version {data.get('version')} is not supported (expected {VERSION})", path)
    stages = (stage,) if isinstance(stage, str) else stage
    if stages is not None and data.get("stage") not in stages:
        raise UserError(f"checkpoint is from stage '{data.get('stage')}', expected {' or '.join(stages)}", path)
    if space is not None and data.get("space") != space:
        raise UserError(f"checkpoint is for space {describe_space(data.get('space'))}, this run uses "
                        f"{describe_space(space)}", path)
    return data


def describe_space(meta) -> str:
    """``{"space": "small", "width_mult": 1.5}`` as ``small x1.5`` (``small`` at width 1)."""
    if not isinstance(meta, dict):
        return repr(meta)
    width = meta.get("width_mult", 1.0)
    if not isinstance(width, (int, float)):
        return f"{meta.get('space')} x{width!r}"
    return f"{meta.get('space')}" + ("" if width == 1.0 else f" x{width:g}")
