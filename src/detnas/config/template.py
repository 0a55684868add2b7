"""A config schema as YAML a user starts from: ``detnas config show STAGE`` (the defaults) and
``detnas config template STAGE`` (every key, with what it means).

Both are read off the pydantic models, so they never drift from what is validated. A key's meaning
is its ``Field(description=...)`` or, where the schema explains it in a source comment (on the key's
line, or the comment lines just above it), that comment; a section without one gets its class's
docstring.
"""

from __future__ import annotations

import inspect
import io
import textwrap
import tokenize
import types
from functools import cache
from pathlib import Path
from typing import Annotated, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

REQUIRED = "REQUIRED"  # the value shown for a key without a default: a string no schema accepts there


def _section(annotation) -> type[BaseModel] | None:
    """The model of a section-valued key (``X`` or ``X | None``), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType):
        models = [a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        return models[0] if len(models) == 1 else None
    return None


def _type_name(annotation) -> str:
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return getattr(annotation, "__name__", str(annotation))


def _choices(annotation) -> list[str]:
    """The allowed values of a key with named choices (``Literal``), and of what else it may be
    (``int | Literal["auto"]``: int, auto); none for other keys."""
    if get_origin(annotation) is Literal:
        return [str(a) for a in get_args(annotation)]
    if get_origin(annotation) in (Union, types.UnionType):
        parts = get_args(annotation)
        if any(get_origin(a) is Literal for a in parts):
            return [c for a in parts for c in (_choices(a) or [_type_name(a)])]
    return []


@cache
def _source_comments(cls: type) -> dict[str, str]:
    """Each field of ``cls``'s own body with the comment that explains it in the source."""
    try:
        lines, _ = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return {}
    source = textwrap.dedent("".join(lines))
    comments: dict[int, str] = {}  # line number -> comment text
    code_lines: set[int] = set()
    fields: dict[str, int] = {}
    line_start = True
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type in (tokenize.NEWLINE, tokenize.NL):
            line_start = True
            continue
        elif tok.type not in (tokenize.INDENT, tokenize.DEDENT):
            code_lines.add(tok.start[0])
            if line_start and tok.type == tokenize.NAME and tok.start[1] == 4:
                fields.setdefault(tok.string, tok.start[0])
        line_start = False if tok.type not in (tokenize.INDENT, tokenize.DEDENT) else line_start
    out = {}
    for name, row in fields.items():
        if row in comments:  # a comment on the key's own line
            out[name] = comments[row]
            continue
        above = []
        row -= 1
        while row in comments and row not in code_lines:
            above.insert(0, comments[row])
            row -= 1
        if above:
            out[name] = " ".join(above)
    return out


def _comment(model: type[BaseModel], name: str) -> str:
    field = model.model_fields[name]
    if field.description:
        return field.description
    for cls in model.__mro__:
        if name in getattr(cls, "__annotations__", {}):
            return _source_comments(cls).get(name, "")
    return ""


def _doc(model: type[BaseModel]) -> str:
    doc = inspect.getdoc(model) or ""
    own = model.__dict__.get("__doc__")
    return " ".join(doc.split("\n\n")[0].split()) if own else ""


def _plain(value):
    """A default as YAML writes it (paths as strings, sections as mappings)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _scalar(value) -> str:
    return yaml.safe_dump(_plain(value), default_flow_style=True, width=10**6).strip().removesuffix("\n...")


def defaults(model: type[BaseModel], values: BaseModel | None = None) -> dict:
    """The config of ``model`` with every default filled in: a key without one is ``REQUIRED``, a
    section whose default is none is ``None``."""
    out = {}
    for name, field in model.model_fields.items():
        section = _section(field.annotation)
        value = getattr(values, name) if values is not None else (REQUIRED if field.is_required() else field.default)
        if section is not None and (value is REQUIRED or isinstance(value, BaseModel)):
            out[name] = defaults(section, value if isinstance(value, BaseModel) else None)
        else:
            out[name] = _plain(value)
    return out


def show_defaults(model: type[BaseModel]) -> str:
    return yaml.safe_dump(defaults(model), sort_keys=False, width=120)


def _render(model: type[BaseModel], values: BaseModel | None, indent: str, out: list[str]) -> None:
    for name, field in model.model_fields.items():
        section = _section(field.annotation)
        value = getattr(values, name) if values is not None else (REQUIRED if field.is_required() else field.default)
        note = _comment(model, name)
        choices = _choices(field.annotation)
        if choices:
            note = f"{note} ({' | '.join(choices)})" if note else " | ".join(choices)
        if section is not None and not note:
            note = _doc(section)
        if value is REQUIRED:
            note = f"{REQUIRED}: {note}" if note else REQUIRED
        for line in textwrap.wrap(note, 100 - len(indent)):
            out.append(f"{indent}# {line}")
        if section is None or not (value is REQUIRED or isinstance(value, BaseModel) or value is None):
            out.append(f"{indent}{name}: {_scalar(value)}")
        elif value is None:  # an optional section: its keys, to uncomment
            out.append(f"{indent}{name}: null")
            block: list[str] = []
            _render(section, None, indent + "  ", block)
            out.append(f"{indent}# {name}:")
            out += [f"{indent}# {line[len(indent):]}" for line in block]
        else:
            out.append(f"{indent}{name}:")
            _render(section, value if isinstance(value, BaseModel) else None, indent + "  ", out)


def template(model: type[BaseModel], title: str) -> str:
    """Every key of ``model`` as commented YAML: its default (or ``REQUIRED``), its allowed values and
    what it means; optional sections that default to none are shown commented out, with their keys."""
    out = [f"# {title}", f"# Keys marked {REQUIRED} have no default; every other key may be left out.", ""]
    _render(model, None, "", out)
    return "\n".join(out) + "\n"
