"""Strict pydantic models and their one-line errors: the base of every config section, wherever it lives."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from detnas.errors import UserError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, not silently ignored, and so are
    infinite and NaN numbers (``.inf``, ``.nan`` in YAML)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _rank(error: dict) -> int:
    """Unknown keys first, then wrong values, then missing keys: in a config that is both incomplete
    and misspelt, the misspelling is usually why a key looks missing."""
    return {"extra_forbidden": 0, "missing": 2}.get(error["type"], 1)


def error_location(err: ValidationError) -> str:
    """The dotted key of the problem ``describe_error`` reports ("" for the config as a whole)."""
    return ".".join(str(p) for p in min(err.errors(), key=_rank)["loc"])


def describe_error(err: ValidationError) -> str:
    """The first problem of a validation error in one line (unknown keys first, see ``_rank``)."""
    first = min(err.errors(), key=_rank)
    where = error_location(err)
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    if first["type"] == "extra_forbidden":
        return f"unknown key '{where}'{more}"
    message = first["msg"].removeprefix("Value error, ")  # pydantic's prefix for our own checks
    return f"{where}: {message}{more}" if where else f"{message}{more}"


def validate(model: type[M], data: dict, source: str | Path) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise UserError(describe_error(e), source) from None
