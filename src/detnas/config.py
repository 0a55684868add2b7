"""YAML configs validated with pydantic models: unknown keys and bad values are one-line errors."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import TypeVar

import yaml
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


def describe_error(err: ValidationError) -> str:
    """The first problem of a validation error in one line (unknown keys first, see ``_rank``)."""
    first = min(err.errors(), key=_rank)
    where = ".".join(str(p) for p in first["loc"])
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


def packaged_configs() -> dict[str, Path]:
    """The experiment configs shipped in ``detnas/configs`` by name (the demo's is ``detnas demo``'s own)."""
    folder = Path(str(resources.files("detnas").joinpath("configs")))
    return {p.stem: p for p in sorted(folder.glob("*.yaml")) if p.stem != "demo"}


def find_config(text: str | Path) -> Path:
    """A config file: the path ``text`` if there is such a file, else the packaged config of that name."""
    path = Path(text)
    if path.is_file():
        return path
    packaged = packaged_configs()
    if str(text) in packaged:
        return packaged[str(text)]
    raise UserError(f"config file not found (or give a packaged config: {', '.join(packaged)})", path)


_VARIABLE = re.compile(r"\$\{([^}]*)\}")


def substitute(data, variables: dict[str, str | Path | None], source: Path):
    """``data`` with every ``${name}`` in its strings replaced by ``variables[name]``: the packaged
    configs write their data paths as ``${data_root}/...``, filled in from the command line."""
    if isinstance(data, dict):
        return {k: substitute(v, variables, source) for k, v in data.items()}
    if isinstance(data, list):
        return [substitute(v, variables, source) for v in data]
    if not isinstance(data, str):
        return data

    def value(match: re.Match) -> str:
        name = match[1]
        if name not in variables:
            known = f"known: {', '.join(variables)}" if variables else "this command fills in none"
            raise UserError(f"unknown variable ${{{name}}} ({known})", source)
        if variables[name] is None:
            raise UserError(f"the config's paths use ${{{name}}}: pass --{name.replace('_', '-')} DIR", source)
        return str(variables[name]).rstrip("/")

    return _VARIABLE.sub(value, data)


def load_config(path: str | Path, model: type[M], overrides: dict | None = None,
                variables: dict[str, str | Path | None] | None = None) -> M:
    """Read ``path`` as YAML into ``model``; ``overrides`` (dotted keys) are applied on top, and the
    ``${name}`` of ``variables`` filled in (see ``substitute``)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise UserError("config file not found", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read config: {e}", path) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"malformed YAML{line}: {getattr(e, 'problem', e)}", path) from None
    if not isinstance(data, dict):
        raise UserError("config must be a mapping of keys to values", path)
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return validate(model, substitute(data, variables or {}, path), path)
