"""Evolutionary and random architecture search (SPEC section 4), distributed, resumable.

The engine knows nothing about models: the fitness of a candidate comes from an ``evaluate(arch)``
function given by the caller (BN recalibration + mAP on the search split), which returns at least
``{"map": float}``. Constraints (body FLOPs range, params budget) use the analytic cost table only.

Evolution (authors' defaults): generation 0 = ``population`` uniform random candidates; then each
generation = ``mutations`` children of a top-k parent (each gene resampled with ``mutation_prob``)
+ ``crossovers`` children of two top-k parents (each gene from either) + random candidates for the
rest. Top-k = best k of (previous top-k U this generation), so it is elitist. A candidate that
violates the constraints or was evaluated before (in any generation, before or after a resume, or
earlier in the same generation) is redrawn up to ``max_tries`` times; a slot that still has no
candidate is filled randomly. No architecture is ever evaluated twice. Ties in mAP are broken by the
architecture string. Random search draws the same number of candidates (``population`` per
generation x ``generations``) uniformly under the same constraints.

Distributed: every worker runs the same code with the same RNG; a generation's candidates are
sharded (pending candidate j goes to rank j % world), evaluated in rounds of one candidate per
worker, and each round's results are gathered with ``all_gather_object``, so every worker holds the
same state. Only rank 0 writes files. ``evaluate`` must therefore be local to its worker (no
collective operations inside it).

Files written by rank 0 in ``run_dir``:
- ``search_state.json``: everything needed to resume, rewritten atomically after every generation;
- ``history.jsonl``: one line per evaluated candidate of the finished generations (rewritten
  atomically from the state, so a resumed run never duplicates lines);
- ``partial_generation.jsonl``: results of the running generation, appended and flushed per
  candidate, so a run killed mid-generation re-evaluates nothing when resumed;
- ``search_progress.png``, ``search_pareto.png`` and then ``best.json`` at the end.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from pydantic import Field, model_validator

from detnas.atomic import write_text_atomic
from detnas.config import StrictModel
from detnas.distributed import all_gather_object, get_rank, get_world_size
from detnas.errors import UserError, read_json
from detnas.flops import CostTable, cost_table, sample_arch
from detnas.space import NUM_CHOICES, Arch, ArchError, SearchSpace, arch_to_str

STATE_FILE = "search_state.json"
HISTORY_FILE = "history.jsonl"
PARTIAL_FILE = "partial_generation.jsonl"
BEST_FILE = "best.json"
STATE_FORMAT = "detnas-search-state"
STATE_VERSION = 1

# config fields that may change between an interrupted run and its resume
_RESUMABLE_CHANGES = {"generations"}

Evaluate = Callable[[Arch], dict]


class SearchConfig(StrictModel):
    """Search hyper-parameters; defaults are the authors' (SPEC section 4)."""

    strategy: Literal["evolution", "random"] = "evolution"
    population: int = Field(50, ge=1)
    generations: int = Field(20, ge=1)
    topk: int = Field(10, ge=1)
    mutations: int = Field(20, ge=0)
    mutation_prob: float = Field(0.1, ge=0.0, le=1.0)
    crossovers: int = Field(20, ge=0)
    max_flops: float | None = Field(None, gt=0, allow_inf_nan=False, description="body MACs, e.g. 300e6")
    min_flops: float | None = Field(None, ge=0, allow_inf_nan=False, description="body MACs")
    max_params: int | None = Field(None, gt=0, description="body parameters")
    seed: int = 0
    max_tries: int = Field(100, ge=1, description="redraws per candidate slot")

    @model_validator(mode="after")
    def _check_relations(self) -> SearchConfig:
        if self.topk > self.population:
            raise ValueError(f"topk ({self.topk}) must not exceed population ({self.population})")
        if self.mutations + self.crossovers > self.population:
            raise ValueError(
                f"mutations + crossovers ({self.mutations} + {self.crossovers}) must not exceed "
                f"population ({self.population})"
            )
        if self.min_flops is not None and self.max_flops is not None and self.min_flops > self.max_flops:
            raise ValueError(
                f"min_flops ({self.min_flops:g}) must not exceed max_flops ({self.max_flops:g})"
            )
        return self

    @property
    def budget(self) -> int:
        """Number of evaluations of a full run (fewer only if the constrained space runs out)."""
        return self.population * self.generations


@dataclass
class SearchResult:
    best: Arch
    best_record: dict
    topk: list[dict]  # records, best first
    history: list[dict]  # every evaluated candidate, in (generation, index) order
    summary: list[dict]  # one entry per generation: best / mean top-k / mean mAP
    run_dir: Path
    exhausted: bool = False  # True when no new feasible candidate could be drawn

    @property
    def best_str(self) -> str:
        return arch_to_str(self.best)


# ----------------------------------------------------------------------------- constraints


def _fmt_m(v: float) -> str:
    return f"{v / 1e6:.2f}M"


@dataclass(frozen=True)
class Constraints:
    """Body FLOPs in [min_flops, max_flops] and body params <= max_params, by table look-up."""

    table: CostTable
    min_flops: float | None
    max_flops: float | None
    max_params: int | None

    def flops(self, arch: Arch) -> int:
        return self.table.body_macs(arch)

    def params(self, arch: Arch) -> int:
        return self.table.body_params(arch)

    def ok(self, arch: Arch) -> bool:
        if self.min_flops is not None or self.max_flops is not None:
            f = self.flops(arch)
            if self.min_flops is not None and f < self.min_flops:
                return False
            if self.max_flops is not None and f > self.max_flops:
                return False
        return self.max_params is None or self.params(arch) <= self.max_params

    @property
    def params_range(self) -> tuple[int, int]:
        t = self.table
        return t.stem_params + int(t.params.min(1).sum()), t.stem_params + int(t.params.max(1).sum())


def check_constraints(space: SearchSpace, cfg: SearchConfig, input_size: int | tuple[int, int] = 224) -> Constraints:
    """The constraints of ``cfg``; a UserError at once if no architecture of ``space`` meets them."""
    size = _size_key(input_size)
    table = cost_table(space, size)
    cons = Constraints(table, cfg.min_flops, cfg.max_flops, cfg.max_params)
    f_lo, f_hi = table.body_range
    p_lo, p_hi = cons.params_range
    lo = -math.inf if cfg.min_flops is None else cfg.min_flops
    hi = math.inf if cfg.max_flops is None else cfg.max_flops
    spans = f"the {space.describe()} space spans body FLOPs {_fmt_m(f_lo)}-{_fmt_m(f_hi)}"
    if cfg.max_params is not None:
        spans += f" and body params {_fmt_m(p_lo)}-{_fmt_m(p_hi)}"
    spans += f" at input {input_size}"
    want = []
    if cfg.min_flops is not None or cfg.max_flops is not None:
        want.append(
            f"body FLOPs in [{'-inf' if lo == -math.inf else _fmt_m(lo)}, {'inf' if hi == math.inf else _fmt_m(hi)}]"
        )
    if cfg.max_params is not None:
        want.append(f"body params <= {_fmt_m(cfg.max_params)}")
    if not want:
        return cons
    fail = f"no architecture meets the search constraints ({' and '.join(want)}): {spans}"
    if hi < f_lo or lo > f_hi or (cfg.max_params is not None and cfg.max_params < p_lo):
        raise UserError(fail)
    # Each constraint alone is satisfiable; look for one architecture meeting all of them.
    rng = np.random.default_rng(cfg.seed)  # a private stream: the search RNG is not touched
    if cfg.max_params is None:
        try:
            sample_arch(space, rng, cfg.min_flops, cfg.max_flops, size)
        except ArchError:
            raise UserError(f"{fail} (the FLOPs range is too narrow to sample)") from None
        return cons
    if _find_feasible(cons, rng, lo, hi) is None:
        raise UserError(f"{fail} (none found meeting all constraints together)")
    return cons


def _find_feasible(cons: Constraints, rng: np.random.Generator, lo: float, hi: float) -> Arch | None:
    t = cons.table
    n = t.macs.shape[0]
    # Archs on the FLOPs/params trade-off (per-position argmin of params + lam * MACs), then random.
    cands = [np.argmin(t.params + lam * t.macs, 1) for lam in (0.0, *np.geomspace(1e-6, 1e3, 40))]
    cands += [np.argmin(t.macs, 1), np.argmax(t.macs, 1)]
    batches = [np.stack(cands)] + [rng.integers(0, NUM_CHOICES, (8192, n)) for _ in range(24)]
    for archs in batches:
        flops = t.body_macs_batch(archs)
        params = t.stem_params + t.params[np.arange(n), archs].sum(1)
        ok = np.flatnonzero((flops >= lo) & (flops <= hi) & (params <= cons.max_params))
        if ok.size:
            return tuple(int(c) for c in archs[ok[0]])
    return None


# ----------------------------------------------------------------------------- helpers


def _size_key(input_size: int | tuple[int, int] | list[int]) -> int | tuple[int, int]:
    if isinstance(input_size, int):
        return input_size
    h, w = (int(v) for v in input_size)
    return h if h == w else (h, w)


def _rank_key(record: dict) -> tuple[float, str]:
    return (-record["map"], record["arch"])


def _space_dict(space: SearchSpace) -> dict:
    d = asdict(space)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _identity(space: SearchSpace, cfg: SearchConfig, input_size, evaluator: dict | None = None) -> dict:
    """What must match between a state and the run resuming it (``evaluator``: what the fitness depends
    on, e.g. the supernet and the recalibration settings; absent when the caller gives none)."""
    conf = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _RESUMABLE_CHANGES}
    size = _size_key(input_size)
    identity = {"config": conf, "space": _space_dict(space),
                "input_size": size if isinstance(size, int) else list(size)}
    if evaluator is not None:
        identity["evaluator"] = evaluator
    return identity


def _fingerprint(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _jsonable(v: Any, where: str) -> Any:
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _jsonable(x, f"{where}.{k}") for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x, f"{where}[{i}]") for i, x in enumerate(v)]
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:  # numpy / torch scalars
        return _jsonable(v.item(), where)
    raise TypeError(f"evaluate() returned {where} of type {type(v).__name__}, which cannot be saved as JSON")


def _on_main(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only and give its result (or its error) to every worker."""
    if get_world_size() == 1:
        return fn()
    payload = None
    if get_rank() == 0:
        try:
            payload = ("ok", fn())
        except UserError as e:
            payload = ("user", str(e), e.path)
        except Exception as e:  # noqa: BLE001 - re-raised on every rank below
            payload = ("error", f"{type(e).__name__}: {e}")
    got = all_gather_object(payload)[0]
    if got[0] == "ok":
        return got[1]
    if got[0] == "user":
        err = UserError(got[1])
        err.path = got[2]
        raise err
    raise RuntimeError(f"rank 0 failed: {got[1]}")


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


def _read_partial(path: Path, key: str, generation: int) -> dict[str, dict]:
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


# ----------------------------------------------------------------------------- the engine


class _Search:
    def __init__(self, space: SearchSpace, cfg: SearchConfig, cons: Constraints, input_size, run_dir: Path,
                 evaluator_identity: dict | None = None):
        self.space, self.cfg, self.cons, self.run_dir = space, cfg, cons, run_dir
        self.input_size = _size_key(input_size)
        self.identity = _identity(space, cfg, input_size, evaluator_identity)
        self.key = _fingerprint(self.identity)
        self.rng = np.random.default_rng(cfg.seed)
        self.records: list[dict] = []
        self.visited: set[str] = set()
        self.topk: list[dict] = []
        self.population: list[str] = []
        self.summary: list[dict] = []
        self.generation = 0  # number of finished generations
        self.exhausted = False
        self.main = get_rank() == 0

    # --- state

    def state(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "key": self.key,
            "config": self.cfg.model_dump(mode="json"),
            "space": self.identity["space"],
            "input_size": self.identity["input_size"],
            **({"evaluator": self.identity["evaluator"]} if "evaluator" in self.identity else {}),
            "generation": self.generation,
            "exhausted": self.exhausted,
            "population": self.population,
            "topk": [r["arch"] for r in self.topk],
            "summary": self.summary,
            "rng": self.rng.bit_generator.state,
            "visited": sorted(self.visited),
            "records": self.records,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }

    def restore(self, state: dict, path: Path) -> None:
        conf = {k: v for k, v in state["config"].items() if k not in _RESUMABLE_CHANGES}
        found = {"config": conf, "space": state["space"], "input_size": state.get("input_size")}
        if "evaluator" in state:
            found["evaluator"] = state["evaluator"]
        if found != self.identity:
            diff = [k for k in self.identity["config"] if conf.get(k) != self.identity["config"][k]]
            diff += [k for k in ("space", "input_size") if found[k] != self.identity[k]]
            diff += [k for k in conf if k not in self.identity["config"]]
            mine, theirs = self.identity.get("evaluator") or {}, found.get("evaluator") or {}
            diff += [f"evaluator.{k}" for k in sorted(mine.keys() | theirs.keys()) if mine.get(k) != theirs.get(k)]
            raise UserError(
                f"search state belongs to a different search (differs in: {', '.join(diff)}); "
                "resume with the same config and space, or use a new run directory",
                path,
            )
        self.records = state["records"]
        self.visited = set(state["visited"])
        by_arch = {r["arch"]: r for r in self.records}
        self.topk = [by_arch[a] for a in state["topk"]]
        self.population = state["population"]
        self.summary = state["summary"]
        self.generation = state["generation"]
        self.exhausted = state["exhausted"]
        self.rng.bit_generator.state = state["rng"]

    def save(self) -> None:
        if not self.main:
            return
        write_text_atomic(self.run_dir / STATE_FILE, json.dumps(self.state(), allow_nan=False))
        write_text_atomic(self.run_dir / HISTORY_FILE, "".join(json.dumps(r) + "\n" for r in self.records))
        (self.run_dir / PARTIAL_FILE).unlink(missing_ok=True)

    # --- candidates

    def _fresh(self, arch: Arch, seen: set[str]) -> bool:
        s = arch_to_str(arch)
        if s in seen or not self.cons.ok(arch):
            return False
        seen.add(s)
        return True

    def _random(self) -> Arch:
        return sample_arch(self.space, self.rng, self.cfg.min_flops, self.cfg.max_flops, self.input_size)

    def _mutate(self, parent: np.ndarray) -> Arch:
        n = parent.size
        mask = self.rng.random(n) < self.cfg.mutation_prob
        new = self.rng.integers(0, NUM_CHOICES, n)
        return tuple(int(c) for c in np.where(mask, new, parent))

    def _crossover(self, a: np.ndarray, b: np.ndarray) -> Arch:
        mask = self.rng.random(a.size) < 0.5
        return tuple(int(c) for c in np.where(mask, a, b))

    def propose(self) -> list[Arch]:
        cfg, seen, cands = self.cfg, set(self.visited), []
        if cfg.strategy == "evolution" and self.topk:
            parents = [np.array([int(c) for c in r["arch"]]) for r in self.topk]
            k = len(parents)
            for _ in range(cfg.mutations):
                for _ in range(cfg.max_tries):
                    child = self._mutate(parents[self.rng.integers(k)])
                    if self._fresh(child, seen):
                        cands.append(child)
                        break
            for _ in range(cfg.crossovers):
                for _ in range(cfg.max_tries):
                    a, b = parents[self.rng.integers(k)], parents[self.rng.integers(k)]
                    child = self._crossover(a, b)
                    if self._fresh(child, seen):
                        cands.append(child)
                        break
        while len(cands) < cfg.population:
            for _ in range(cfg.max_tries):
                arch = self._random()
                if self._fresh(arch, seen):
                    cands.append(arch)
                    break
            else:
                break  # the constrained space has (almost) no unvisited architecture left
        return cands

    # --- evaluation

    def _evaluate_one(self, evaluate: Evaluate, g: int, i: int, arch: Arch) -> tuple[dict, BaseException | None]:
        s = arch_to_str(arch)
        t0 = time.perf_counter()
        try:
            out = evaluate(arch)
            if not isinstance(out, dict) or "map" not in out:
                raise TypeError(f"evaluate() must return a dict with a 'map' key, got {type(out).__name__}")
            try:
                fitness = float(out["map"])
            except (TypeError, ValueError):
                fitness = math.nan
            if not math.isfinite(fitness):
                raise ValueError(f"evaluate() returned map={out['map']!r}; expected a finite number")
            metrics = _jsonable(out, "result")
        except Exception as e:  # noqa: BLE001 - reported on every rank by the caller
            return {"error": f"{type(e).__name__}: {e}", "arch": s, "rank": get_rank()}, e
        record = {
            "generation": g,
            "index": i,
            "arch": s,
            "map": fitness,
            "flops": self.cons.flops(arch),
            "params": self.cons.params(arch),
            "seconds": round(time.perf_counter() - t0, 4),
            "rank": get_rank(),
            "metrics": metrics,
        }
        return record, None

    def run_generation(self, evaluate: Evaluate, cands: list[Arch], cache: dict[str, dict], bar) -> list[dict]:
        g = self.generation
        results: dict[str, dict] = {}
        for i, arch in enumerate(cands):
            s = arch_to_str(arch)
            if s in cache:
                results[s] = {**cache[s], "generation": g, "index": i}
        pending = [(i, a) for i, a in enumerate(cands) if arch_to_str(a) not in results]
        best = self.topk[0]["map"] if self.topk else -math.inf
        best = max([best, *(r["map"] for r in results.values())])
        if bar is not None:
            bar.advance(len(results), best)
        partial = None
        if self.main:
            path = self.run_dir / PARTIAL_FILE
            write_text_atomic(path, "".join(json.dumps({"key": self.key, **r}) + "\n" for r in results.values()))
            partial = open(path, "a")  # noqa: SIM115 - closed in finally
        world, rank = get_world_size(), get_rank()
        try:
            for start in range(0, len(pending), world):
                chunk = pending[start : start + world]
                mine, err = (None, None)
                if rank < len(chunk):
                    mine, err = self._evaluate_one(evaluate, g, *chunk[rank])
                gathered = all_gather_object(mine)
                done = [r for r in gathered if r is not None and "error" not in r]
                for r in done:
                    results[r["arch"]] = r
                    best = max(best, r["map"])
                    if partial is not None:
                        partial.write(json.dumps({"key": self.key, **r}) + "\n")
                if partial is not None:
                    partial.flush()
                    os.fsync(partial.fileno())
                if bar is not None:
                    bar.advance(len(done), best)
                if err is not None:
                    raise err
                failed = [r for r in gathered if r is not None and "error" in r]
                if failed:
                    f = failed[0]
                    raise RuntimeError(f"evaluating {f['arch']} failed on rank {f['rank']}: {f['error']}")
        finally:
            if partial is not None:
                partial.close()
        return [results[arch_to_str(a)] for a in cands]

    def finish_generation(self, new: list[dict]) -> None:
        g = self.generation
        self.records.extend(new)
        self.visited.update(r["arch"] for r in new)
        self.population = [r["arch"] for r in new]
        self.topk = sorted(self.topk + new, key=_rank_key)[: self.cfg.topk]
        maps = [r["map"] for r in new]
        self.summary.append({
            "generation": g,
            "evaluated": len(new),
            "best_map": self.topk[0]["map"],
            "best_arch": self.topk[0]["arch"],
            "mean_topk_map": float(np.mean([r["map"] for r in self.topk])),
            "mean_map": float(np.mean(maps)),
        })
        self.generation = g + 1


class _Bar:
    """Rich progress, one bar per generation, on rank 0 only."""

    def __init__(self, enabled: bool, total_generations: int):
        self.progress = None
        self.total = total_generations
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("best mAP {task.fields[best]}%"), TimeElapsedColumn(),
            )
            self.progress.start()

    def generation(self, g: int, n: int, best: float) -> _Bar | None:
        if self.progress is None:
            return None
        self.task = self.progress.add_task(f"generation {g + 1}/{self.total}", total=n, best=_fmt_map(best))
        self.best = best
        return self

    def advance(self, n: int, best: float | None = None) -> None:
        if best is not None:
            self.best = max(self.best, best)
        self.progress.update(self.task, advance=n, best=_fmt_map(self.best))

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _fmt_map(v: float) -> str:
    """mAP for people: in %, as detection tables print it (files keep fractions)."""
    return "-" if not math.isfinite(v) else f"{100 * v:.2f}"


def print_topk(topk: list[dict], title: str = "top architectures") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("rank", "arch", "mAP (%)", "FLOPs(M)", "params(M)", "gen"):
        table.add_column(col, justify="left" if col == "arch" else "right")
    for i, r in enumerate(topk, 1):
        table.add_row(str(i), r["arch"], _fmt_map(r["map"]), f"{r['flops'] / 1e6:.2f}", f"{r['params'] / 1e6:.3f}",
                      str(r["generation"]))
    Console().print(table)


def run_search(
    space: SearchSpace,
    cfg: SearchConfig,
    evaluate: Evaluate,
    run_dir: str | Path,
    resume: bool = False,
    input_size: int | tuple[int, int] = 224,
    progress: bool = True,
    evaluator_identity: dict | None = None,
    before_finish: Callable[[list[dict]], None] | None = None,
) -> SearchResult:
    """Run (or resume) an evolutionary or random search; every worker gets the same result.

    ``evaluate(arch)`` -> ``{"map": float, ...}`` is called once per candidate on one worker.
    ``resume=True`` continues from ``run_dir/search_state.json`` (a fresh start if there is none);
    ``resume=False`` with an existing state is an error, so finished work is never overwritten.
    ``evaluator_identity``: what the fitness depends on besides ``cfg`` (JSON-able); a resume with a
    different one is refused, so fitnesses of two different evaluators are never mixed.
    ``before_finish(history)`` runs on rank 0 after the last generation and before ``best.json``
    (e.g. the fitness check), so that ``best.json`` stays the last file written.
    """
    run_dir = Path(run_dir)
    cons = check_constraints(space, cfg, input_size)  # fails fast, identically on every rank
    search = _Search(space, cfg, cons, input_size, run_dir, evaluator_identity)
    state_path = run_dir / STATE_FILE

    def load() -> tuple[dict | None, dict[str, dict]]:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not state_path.exists():
            return None, _read_partial(run_dir / PARTIAL_FILE, search.key, 0) if resume else {}
        if not resume:
            raise UserError(
                "a search state already exists here: resume it, or use a new run directory "
                "(or delete the file) to start over",
                state_path,
            )
        state = load_state(state_path)
        search.restore(state, state_path)  # checks the identity before anything is reused
        return state, _read_partial(run_dir / PARTIAL_FILE, search.key, state["generation"])

    state, cache = _on_main(load)
    if state is not None and not search.main:
        search.restore(state, state_path)

    main_progress = progress and search.main
    bar = _Bar(main_progress and search.generation < cfg.generations and not search.exhausted, cfg.generations)
    try:
        while search.generation < cfg.generations and not search.exhausted:
            cands = search.propose()
            digest = hashlib.sha256(",".join(map(arch_to_str, cands)).encode()).hexdigest()
            if len(set(all_gather_object(digest))) != 1:
                raise RuntimeError("workers proposed different candidates: they must run the same config and seed")
            if not cands:
                search.exhausted = True
                search.save()
                break
            best = search.topk[0]["map"] if search.topk else -math.inf
            new = search.run_generation(evaluate, cands, cache, bar.generation(search.generation, len(cands), best))
            cache = {}
            search.finish_generation(new)
            search.save()
    finally:
        bar.close()

    if not search.records:
        raise RuntimeError("the search evaluated no architecture")
    best = search.topk[0]
    if search.main:
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
            "input_size": search.identity["input_size"],
            "strategy": cfg.strategy,
        }
        from detnas.search_plots import plot_search

        plot_search(search.records, run_dir, topk=cfg.topk)
        if before_finish is not None:
            before_finish(list(search.records))
        # last: the pipeline takes best.json as the sign that the search finished with all its outputs
        write_text_atomic(run_dir / BEST_FILE, json.dumps(best_json, indent=2) + "\n")
        if progress:
            print_topk(search.topk, f"top-{len(search.topk)} of {len(search.records)} evaluated ({cfg.strategy})")
    return SearchResult(
        best=tuple(int(c) for c in best["arch"]),
        best_record=best,
        topk=list(search.topk),
        history=list(search.records),
        summary=list(search.summary),
        run_dir=run_dir,
        exhausted=search.exhausted,
    )
