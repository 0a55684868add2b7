"""The package's layering: imports only go downward, and no module grows past 400 lines.

The units, bottom to top: the base modules (errors, atomic writes, digests, strict configs, the
process group, checkpoints), ``data``, ``model``, ``config``, then ``search``, ``artifacts`` and
``tools``, then ``stages``, then the CLI. A unit may import from itself and the units it lists.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "detnas"
BASE = {"errors", "atomic", "digest", "strict", "distributed", "checkpoint"}
ALLOWED = {
    "base": set(),
    "data": {"base"},
    "model": {"base", "data"},
    "config": {"base", "model"},
    "search": {"base", "model", "config"},
    "artifacts": {"base", "data", "model", "config"},
    "tools": {"base", "model", "config"},
    "stages": {"base", "data", "model", "config", "search", "artifacts"},
}
TOP = {"cli", "__init__", "__main__"}  # the entry points may use everything
MAX_LINES = 400


def unit_of(parts: list[str]) -> str:
    """The unit of a module given as its dotted path below ``detnas`` (``["model", "space"]``)."""
    head = parts[0] if parts else "__init__"
    return "base" if head in BASE else head


def detnas_imports(path: Path) -> list[tuple[int, list[str]]]:
    """(line, dotted path below ``detnas``) of every ``detnas`` import in ``path``, local ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "detnas":
            parts = node.module.split(".")[1:]
            # ``from detnas.search import pareto`` imports the module detnas.search.pareto
            found += [(node.lineno, parts + [a.name] if len(parts) == 1 and parts[0] in ALLOWED else parts)
                      for a in node.names] if parts else [(node.lineno, [a.name]) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[1:]) for a in node.names if a.name.split(".")[0] == "detnas"]
    return found


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, list(path.relative_to(PACKAGE).with_suffix("").parts)


def test_every_module_belongs_to_a_unit():
    units = {unit_of(parts) for _, parts in modules()}
    assert units <= set(ALLOWED) | TOP, units - set(ALLOWED) - TOP


def test_imports_only_go_downward():
    upward = []
    for path, parts in modules():
        unit = unit_of(parts)
        if unit in TOP:
            continue
        for line, target in detnas_imports(path):
            other = unit_of(target)
            if other != unit and other not in ALLOWED[unit]:
                where = f"{path.relative_to(PACKAGE)}:{line} ({unit})"
                upward.append(f"{where} imports detnas.{'.'.join(target)} ({other})")
    assert not upward, "\n".join(upward)


def test_no_module_over_max_lines():
    long = {str(p.relative_to(PACKAGE)): n for p, _ in modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_config_schemas_load_without_torchvision():
    # reading and checking a config must stay cheap: the CLI validates before it builds anything
    code = "import sys, detnas.config.schema; print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from detnas.stages.train import run_training\n")
    assert detnas_imports(bad) == [(2, ["stages", "train"])]
