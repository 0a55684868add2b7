"""YAML configs validated with pydantic models: unknown keys and bad values are one-line errors."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml
from pydantic import ValidationError

from detnas.errors import UserError
from detnas.strict import M, describe_error, error_location


def packaged_configs() -> dict[str, Path]:
    """The experiment configs shipped in ``detnas/config/packaged`` by name (the demo's is ``detnas demo``'s own)."""
    folder = Path(str(resources.files("detnas").joinpath("config", "packaged")))
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


@dataclass(frozen=True)
class Override:
    """One setting given on the command line: a dotted key, its value, and how the user wrote it (what
    an error in it names instead of the config file)."""

    key: str
    value: object
    origin: str


def parse_settings(items: list[str]) -> list[Override]:
    """``--set KEY=VALUE`` options as overrides, each value read as YAML."""
    out = []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set takes KEY=VALUE (a dotted key such as search.max_flops=280e6), got {item!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UserError(f"the value is not YAML: {getattr(e, 'problem', e)}", f"--set {item}") from None
        out.append(Override(key, value, f"--set {item}"))
    return out


def read_config(path: str | Path) -> dict:
    """The YAML mapping in ``path``; a missing, unreadable or malformed file is a one-line error."""
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
    return data


def apply_overrides(data: dict, overrides: list[Override]) -> dict:
    """A copy of ``data`` with each override's dotted key set (missing sections are created)."""
    data = copy.deepcopy(data)
    for o in overrides:
        node = data
        *parents, leaf = o.key.split(".")
        for i, p in enumerate(parents):
            if node.get(p) is None:  # a missing or null section is created
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                raise UserError(f"{'.'.join(parents[:i + 1])} is a value, not a section", o.origin)
        node[leaf] = o.value
    return data


def _blamed(where: str, message: str, overrides: list[Override]) -> Override | None:
    """The override a validation error at ``where`` (a dotted key; "" for the whole config) is about."""
    for o in overrides:
        if where and (o.key == where or where.startswith(o.key + ".")):
            return o
        # a check of a whole section (or config) names the key it is about in its message
        if o.key.startswith(f"{where}." if where else "") and o.key.rsplit(".", 1)[-1] in message:
            return o
    return None


def validate_config(model: type[M], data: dict, path: str | Path, overrides: list[Override] = ()) -> M:
    """``data`` as ``model``; an error is blamed on the override it is about, else on ``path``."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        message = describe_error(e)
        culprit = _blamed(error_location(e), message, list(overrides))
        raise UserError(message, culprit.origin if culprit else path) from None


def load_config(path: str | Path, model: type[M], overrides: list[Override] = (),
                variables: dict[str, str | Path | None] | None = None) -> M:
    """Read ``path`` as YAML into ``model``; ``overrides`` are applied on top, and the ``${name}`` of
    ``variables`` filled in (see ``substitute``)."""
    data = apply_overrides(read_config(path), list(overrides))
    return validate_config(model, substitute(data, variables or {}, path), path, overrides)
