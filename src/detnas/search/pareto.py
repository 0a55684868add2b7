"""Multi-objective search (``search.strategy: pareto``): NSGA-II's non-dominated sorting and crowding
distance over (mAP up, cost down), the front's file ``pareto.json``, and picking one point of it
(``detnas retrain --arch pareto.json --pick "latency<=12ms"``).

The cost is the predicted latency when the search has a latency table, else body FLOPs. The engine
(``search.py``) keeps as parents the ``topk`` candidates that NSGA-II selects: whole fronts in order
of non-domination, the last one cut by crowding distance (boundary points first), ties broken by
mAP and then the architecture string, so that a resumed search selects exactly the same parents.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

from detnas.atomic import write_text_atomic
from detnas.config.runs import PARETO_FILE
from detnas.errors import UserError, read_json

FRONT_FORMAT = "detnas-pareto-front"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (cost, map) not dominated by another, by increasing cost.

    A point is dominated when another has cost <= and mAP >= with at least one strict; exact
    duplicates of a front point are all on the front.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front: list[int] = []
    best = None
    for i in order:
        f, m = points[i]
        if best is None or m > best[1]:
            front.append(i)
            best = (f, m)
        elif (f, m) == best:
            front.append(i)
    return front


def nondominated_fronts(points: Sequence[tuple[float, float]]) -> list[list[int]]:
    """NSGA-II's non-dominated sorting: the front of all points, then the front of the rest, ..."""
    remaining = list(range(len(points)))
    fronts = []
    while remaining:
        front = [remaining[j] for j in pareto_front([points[i] for i in remaining])]
        fronts.append(front)
        taken = set(front)
        remaining = [i for i in remaining if i not in taken]
    return fronts


def crowding_distance(points: Sequence[tuple[float, float]], front: Sequence[int]) -> dict[int, float]:
    """NSGA-II's crowding distance of each point of ``front``: per objective, the normalised gap
    between its two neighbours; the extreme points get infinity."""
    dist = {i: 0.0 for i in front}
    for m in range(2):
        ordered = sorted(front, key=lambda i: (points[i][m], i))
        lo, hi = points[ordered[0]][m], points[ordered[-1]][m]
        dist[ordered[0]] = dist[ordered[-1]] = math.inf
        if hi == lo:
            continue
        for prev, cur, nxt in zip(ordered, ordered[1:], ordered[2:]):
            dist[cur] += (points[nxt][m] - points[prev][m]) / (hi - lo)
    return dist


def nsga_select(records: Sequence[dict], k: int, cost: str) -> list[dict]:
    """The ``k`` records NSGA-II keeps (records hold ``map`` and the ``cost`` key), in order of
    selection."""
    points = [(r[cost], r["map"]) for r in records]
    chosen: list[dict] = []
    for front in nondominated_fronts(points):
        dist = crowding_distance(points, front)
        ordered = sorted(front, key=lambda i: (-dist[i], -records[i]["map"], records[i]["arch"]))
        chosen += [records[i] for i in ordered[: k - len(chosen)]]
        if len(chosen) == k:
            break
    return chosen


def front_records(records: Sequence[dict], cost: str) -> list[dict]:
    """The non-dominated records over (mAP up, ``cost`` down), by increasing cost."""
    return [records[i] for i in pareto_front([(r[cost], r["map"]) for r in records])]


def write_front(run_dir: Path, records: Sequence[dict], cost: str, space, input_size) -> Path:
    """``pareto.json``: the front of ``records`` with each point's mAP, FLOPs, params and latency."""
    keys = ("arch", "map", "flops", "params", "latency_ms", "generation")
    front = [{k: r[k] for k in keys if k in r} for r in front_records(records, cost)]
    data = {"format": FRONT_FORMAT, "space": space.name, "width_mult": space.width_mult, "input_size": input_size,
            "objectives": {"map": "max", cost: "min"}, "evaluated": len(records), "front": front}
    path = Path(run_dir) / PARETO_FILE
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
    return path


def is_front_file(path: str | Path) -> bool:
    """Whether ``path`` is a ``pareto.json`` (by content, for files of any name)."""
    path = Path(path)
    if path.suffix != ".json" or not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("format") == FRONT_FORMAT
    except (ValueError, AttributeError, OSError):
        return False


_PICK = re.compile(r"^\s*(latency|flops|params|map)\s*(<=|>=|<|>)\s*([0-9.eE+-]+)\s*(ms|m|g|k|%)?\s*$", re.I)
_KEYS = {"latency": "latency_ms", "flops": "flops", "params": "params", "map": "map"}
_UNITS = {"latency": {None: 1, "ms": 1}, "map": {None: 1, "%": 0.01},
          "flops": {None: 1, "k": 1e3, "m": 1e6, "g": 1e9}, "params": {None: 1, "k": 1e3, "m": 1e6, "g": 1e9}}


def pick(path: str | Path, condition: str) -> dict:
    """The point of the front in ``path`` that meets ``condition`` (``latency<=12ms``, ``flops<300M``,
    ``params<=3.5M``, ``map>=30%``) best: the highest mAP under a cost bound, the lowest cost
    (latency if the front has it, else FLOPs) over an mAP bound. One-line errors otherwise."""
    path = Path(path)
    data = read_json(path, "Pareto front")
    if not isinstance(data, dict) or data.get("format") != FRONT_FORMAT or not isinstance(data.get("front"), list):
        raise UserError("not a Pareto front written by a search with strategy 'pareto'", path)
    match = _PICK.match(condition)
    unit = (match.group(4) or "").lower() or None if match else None
    if match is None or unit not in _UNITS[match.group(1).lower()]:
        raise UserError(f"--pick {condition!r}: expected e.g. latency<=12ms, flops<300M, params<=3.5M or map>=30%")
    name, op = match.group(1).lower(), match.group(2)
    key, bound = _KEYS[name], float(match.group(3)) * _UNITS[name][unit]
    front = data["front"]
    if any(key not in p for p in front):
        raise UserError(f"the front has no '{key}' (a search without a latency table has none)", path)
    meets = {"<=": bound.__ge__, "<": bound.__gt__, ">=": bound.__le__, ">": bound.__lt__}[op]
    found = [p for p in front if meets(p[key])]
    if not found:
        values = sorted(p[key] for p in front)
        raise UserError(f"no point of the front has {condition} (its {key} spans {values[0]:g}-{values[-1]:g})", path)
    if name == "map":
        cost = "latency_ms" if "latency_ms" in front[0] else "flops"
        return min(found, key=lambda p: (p[cost], -p["map"], p["arch"]))
    return max(found, key=lambda p: (p["map"], -p[key], p["arch"]))


def arch_from_front(path: str | Path, condition: str, space) -> str:
    """The architecture (digit string) that ``pick`` chooses in the front ``path``, which must come from
    a search of ``space`` (a ``SearchSpace``)."""
    data = read_json(Path(path), "Pareto front")
    point = pick(path, condition)
    if isinstance(data, dict) and (data.get("space"), data.get("width_mult")) != (space.name, space.width_mult):
        raise UserError(f"the front is of the {data.get('space')} x{data.get('width_mult')} space, "
                        f"the config uses {space.describe()}", path)
    return point["arch"]
