"""YAML configs validated with pydantic models: unknown keys and bad values are one-line errors."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import yaml

from detnas.errors import UserError
from detnas.strict import M, validate


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
