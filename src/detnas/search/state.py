"""The files of a search run and what makes it resumable (written by rank 0 only):

- ``search_state.json``: everything needed to resume, rewritten atomically after every generation;
- ``history.jsonl``: one line per evaluated candidate of the finished generations (rewritten
  atomically from the state, just before it, so a resumed run never duplicates lines, and a state
  that was saved always has its history);
- ``partial_generation.jsonl``: results of the running generation, appended and flushed per
  candidate, so a run killed mid-generation re-evaluates nothing when resumed;
- ``best.json``: the best architecture, written last (the sign that the search finished).

A state is resumed only by the same search: the same config (``generations`` may grow), space,
input size and evaluator (``identity``); its fingerprint keys the partial results. The search itself
produces and consumes the state (``state_dict``/``load_state_dict`` in ``engine.py``); this module
only reads, checks and writes the files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from detnas.atomic import write_text_atomic
from detnas.config.runs import (
    BEST_FILE,
    HISTORY_FILE,
    PARTIAL_FILE,
    SEARCH_RESUMABLE,
    SEARCH_STATE_FILE,
    config_changes,
)
from detnas.errors import UserError, read_json, writing
from detnas.model.space import SearchSpace
from detnas.search.constraints import size_key

STATE_FORMAT = "detnas-search-state"
STATE_VERSION = 1


def _identity_config(conf: dict) -> dict:
    """The config keys that must match on resume: not the resumable ones, not the latency table's path
    (its content's digest is part of the identity), and no unset latency bound (so that states
    written before latency constraints existed still resume)."""
    return {k: v for k, v in conf.items() if k not in SEARCH_RESUMABLE and k != "latency_table"
            and not (k == "max_latency_ms" and v is None)}


def identity(space: SearchSpace, cfg, input_size, evaluator: dict | None = None) -> dict:
    """What must match between a state and the run resuming it (``evaluator``: what the fitness depends
    on, e.g. the supernet and the recalibration settings, and the latency table's digest; absent when
    there is none)."""
    conf = _identity_config(cfg.model_dump(mode="json"))
    space_dict = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(space).items()}
    size = size_key(input_size)
    found = {"config": conf, "space": space_dict, "input_size": size if isinstance(size, int) else list(size)}
    if evaluator is not None:
        found["evaluator"] = evaluator
    return found


def fingerprint(ident: dict) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def jsonable(v: Any, where: str) -> Any:
    """``v`` as plain JSON values (numpy and torch scalars unwrapped, non-finite floats as None)."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): jsonable(x, f"{where}.{k}") for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x, f"{where}[{i}]") for i, x in enumerate(v)]
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:  # numpy / torch scalars
        return jsonable(v.item(), where)
    raise TypeError(f"evaluate() returned {where} of type {type(v).__name__}, which cannot be saved as JSON")


def load_state(path: str | Path) -> dict:
    """Read and check a ``search_state.json``; a UserError naming the file if it is corrupt."""
    path = Path(path)
    state = read_json(path, "search state")
    try:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a search state (format {state.get('format')!r})")
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported version {state.get('version')!r} (expected {STATE_VERSION})")
        for key, kind in (("config", dict), ("space", dict), ("generation", int), ("records", list),
                          ("topk", list), ("visited", list), ("population", list), ("summary", list),
                          ("rng", dict), ("exhausted", bool)):
            if not isinstance(state.get(key), kind):
                raise ValueError(f"'{key}' missing or not a {kind.__name__}")
        archs = set()
        for r in state["records"]:
            if not (isinstance(r, dict) and isinstance(r.get("arch"), str) and isinstance(r.get("map"), (int, float))
                    and isinstance(r.get("generation"), int) and isinstance(r.get("index"), int)):
                raise ValueError(f"bad record {str(r)[:80]}")
            archs.add(r["arch"])
        if len(archs) != len(state["records"]):
            raise ValueError("duplicate architectures in records")
        if not archs <= set(state["visited"]) or not set(state["topk"]) <= archs:
            raise ValueError("'visited'/'topk' inconsistent with 'records'")
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = state["rng"]
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise UserError(f"corrupt search state: {e}", path) from None
    return state


def check_resumable(state: dict, mine: dict, path: Path) -> None:
    """Refuse ``state`` unless it was written by the search whose identity is ``mine``."""
    conf = _identity_config(state["config"])
    found = {"config": conf, "space": state["space"], "input_size": state.get("input_size")}
    if "evaluator" in state:
        found["evaluator"] = state["evaluator"]
    if found != mine:
        diff = config_changes(conf, mine["config"])
        diff += [k for k in ("space", "input_size") if found[k] != mine[k]]
        diff += config_changes(found.get("evaluator") or {}, mine.get("evaluator") or {}, prefix="evaluator.")
        raise UserError(
            f"search state belongs to a different search (differs in: {', '.join(diff)}); "
            "resume with the same config and space, or use a new run directory",
            path,
        )


def save(run_dir: Path, state: dict) -> None:
    """Write ``state`` (a search's ``state_dict()``) and the history of its finished generations; the
    partial file is then stale."""
    # the time of writing goes last, where it has always been, so the file's layout is unchanged
    stamped = {**state, "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}
    # the history first: if the state cannot be written, the older state resumed writes it again
    write_text_atomic(run_dir / HISTORY_FILE, "".join(json.dumps(r) + "\n" for r in state["records"]))
    write_text_atomic(run_dir / SEARCH_STATE_FILE, json.dumps(stamped, allow_nan=False))
    (run_dir / PARTIAL_FILE).unlink(missing_ok=True)


def read_partial(path: Path, key: str, generation: int) -> dict[str, dict]:
    """Results of ``generation`` cached by an interrupted run (a torn last line is ignored)."""
    out: dict[str, dict] = {}
    try:
        lines = path.read_text().splitlines()
    except (FileNotFoundError, UnicodeDecodeError):
        return out
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict) or rec.pop("key", None) != key or rec.get("generation") != generation:
            continue
        if isinstance(rec.get("arch"), str) and isinstance(rec.get("map"), (int, float)):
            out[rec["arch"]] = rec
    return out


class PartialLog:
    """``partial_generation.jsonl`` of the running generation: starts with the cached results, then one
    line per evaluated candidate, flushed to disk (the main worker calls ``start`` and ``write``)."""

    def __init__(self, run_dir: Path, key: str):
        self.path, self.key, self.file = run_dir / PARTIAL_FILE, key, None

    def _line(self, record: dict) -> str:
        return json.dumps({"key": self.key, **record}) + "\n"

    def start(self, cached: list[dict]) -> None:
        write_text_atomic(self.path, "".join(self._line(r) for r in cached))
        with writing(self.path):
            self.file = open(self.path, "a")  # noqa: SIM115 - closed by close()

    def write(self, records: list[dict]) -> None:
        with writing(self.path):
            for r in records:
                self.file.write(self._line(r))
            self.file.flush()
            os.fsync(self.file.fileno())

    def close(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            except OSError:  # lines a full disk refused, already reported by ``write``: a torn last
                pass  # line is ignored on resume


def write_best(run_dir: Path, best: dict, space: SearchSpace, input_size, strategy: str) -> None:
    """``best.json``: the best architecture and its scores; the caller writes it last."""
    metrics = best.get("metrics", {})
    best_json = {
        "arch": best["arch"],
        "space": space.name,
        "width_mult": space.width_mult,
        "map": best["map"],
        **({"ap50": metrics["ap50"]} if "ap50" in metrics else {}),
        "flops": best["flops"],
        "params": best["params"],
        "generation": best["generation"],
        "input_size": input_size,
        "strategy": strategy,
    }
    write_text_atomic(run_dir / BEST_FILE, json.dumps(best_json, indent=2) + "\n")
