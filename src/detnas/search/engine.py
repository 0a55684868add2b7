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
generation x ``generations``) uniformly under the same constraints. The Pareto strategy proposes as
the evolution does but keeps as parents the ``topk`` that NSGA-II selects over (mAP up, cost down),
cost = predicted latency with a latency table, else FLOPs (``pareto.py``), and writes the front of
everything evaluated to ``pareto.json``.

Distributed: every worker runs the same code with the same RNG; a generation's candidates are
sharded (pending candidate j goes to rank j % world), evaluated in rounds of one candidate per
worker, and each round's results are gathered with ``all_gather_object``, so every worker holds the
same state. Only rank 0 writes files. ``evaluate`` must therefore be local to its worker (no
collective operations inside it).

Rank 0 writes the files of ``search/state.py`` into ``run_dir``: a state to resume from after every
generation, the results of the running generation as they come, then the plots and ``best.json``; a
failed write stops every worker, and so may the caller's ``at_safe_point`` after each write.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from detnas.config.runs import PARTIAL_FILE, SEARCH_STATE_FILE
from detnas.config.schema import SearchConfig
from detnas.digest import file_sha256
from detnas.distributed import all_gather_object, get_rank, map_in_rounds, on_main
from detnas.errors import UserError
from detnas.model.flops import sample_arch
from detnas.model.space import NUM_CHOICES, Arch, SearchSpace, arch_to_str, to_arch
from detnas.search import pareto
from detnas.search import plots as search_plots
from detnas.search import state as search_state
from detnas.search.constraints import Constraints, check_constraints, size_key

Evaluate = Callable[[Arch], dict]
SafePoint = Callable[[str], None]  # called with what is saved; may raise to stop the search there


@dataclass
class SearchResult:
    best: Arch
    best_record: dict
    topk: list[dict]  # records, best first
    history: list[dict]  # every evaluated candidate, in (generation, index) order
    summary: list[dict]  # one entry per generation: best / mean top-k / mean mAP
    run_dir: Path
    exhausted: bool = False  # True when no new feasible candidate could be drawn


def _rank_key(record: dict) -> tuple[float, str]:
    return (-record["map"], record["arch"])


# ----------------------------------------------------------------------------- the engine


class _Search:
    def __init__(self, space: SearchSpace, cfg: SearchConfig, cons: Constraints, input_size, run_dir: Path,
                 evaluator_identity: dict | None = None, at_safe_point: SafePoint | None = None):
        self.space, self.cfg, self.cons, self.run_dir = space, cfg, cons, run_dir
        self.at_safe_point = at_safe_point or (lambda saved: None)
        self.input_size = size_key(input_size)
        if cons.latency is not None:  # the table's content, not its path, decides the latencies
            evaluator_identity = {**(evaluator_identity or {}),
                                  "latency_table_sha256": file_sha256(cfg.latency_table)}
        self.identity = search_state.identity(space, cfg, input_size, evaluator_identity)
        self.cost = "latency_ms" if cons.latency is not None else "flops"  # the Pareto strategy's
        self.key = search_state.fingerprint(self.identity)
        self.rng = np.random.default_rng(cfg.seed)
        self.records: list[dict] = []
        self.visited: set[str] = set()
        self.topk: list[dict] = []
        self.population: list[str] = []
        self.summary: list[dict] = []
        self.generation = 0  # number of finished generations
        self.exhausted = False
        self.main = get_rank() == 0

    def save(self) -> None:
        on_main(lambda: search_state.save(self.run_dir, self.state_dict()))

    # --- the resumable state (``search_state.json``; its layout must not change, old runs resume)

    def state_dict(self) -> dict:
        """Everything needed to resume, as ``search_state.json`` holds it (less the time of writing)."""
        ident = self.identity
        return {
            "format": search_state.STATE_FORMAT,
            "version": search_state.STATE_VERSION,
            "key": self.key,
            "config": self.cfg.model_dump(mode="json"),
            "space": ident["space"],
            "input_size": ident["input_size"],
            **({"evaluator": ident["evaluator"]} if "evaluator" in ident else {}),
            "generation": self.generation,
            "exhausted": self.exhausted,
            "population": self.population,
            "topk": [r["arch"] for r in self.topk],
            "summary": self.summary,
            "rng": self.rng.bit_generator.state,
            "visited": sorted(self.visited),
            "records": self.records,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``; whether it belongs to this search is the caller's check."""
        self.records = state["records"]
        self.visited = set(state["visited"])
        by_arch = {r["arch"]: r for r in self.records}
        self.topk = [by_arch[a] for a in state["topk"]]
        self.population = state["population"]
        self.summary = state["summary"]
        self.generation = state["generation"]
        self.exhausted = state["exhausted"]
        self.rng.bit_generator.state = state["rng"]

    def resume_from(self, state: dict, path: Path) -> None:
        search_state.check_resumable(state, self.identity, path)  # before anything is reused
        self.load_state_dict(state)

    # --- candidates

    def _fresh(self, arch: Arch, seen: set[str]) -> bool:
        s = arch_to_str(arch)
        if s in seen or not self.cons.ok(arch):
            return False
        seen.add(s)
        return True

    def _random(self) -> Arch:
        if self.cons.max_latency_ms is not None:  # uniform draws rarely meet a latency bound alone
            return self.cons.sample(self.rng)
        return sample_arch(self.space, self.rng, self.cfg.min_flops, self.cfg.max_flops, self.input_size)

    def _mutate(self, parents: list[np.ndarray]) -> Arch:
        parent = parents[self.rng.integers(len(parents))]
        n = parent.size
        mask = self.rng.random(n) < self.cfg.mutation_prob
        new = self.rng.integers(0, NUM_CHOICES, n)
        return to_arch(np.where(mask, new, parent))

    def _crossover(self, parents: list[np.ndarray]) -> Arch:
        k = len(parents)
        a, b = parents[self.rng.integers(k)], parents[self.rng.integers(k)]
        mask = self.rng.random(a.size) < 0.5
        return to_arch(np.where(mask, a, b))

    def _draw(self, make: Callable[[], Arch], seen: set[str]) -> Arch | None:
        """A feasible, never-seen candidate from ``make``, or None when ``max_tries`` draws all fail."""
        for _ in range(self.cfg.max_tries):
            arch = make()
            if self._fresh(arch, seen):
                return arch
        return None

    def propose(self) -> list[Arch]:
        cfg, seen = self.cfg, set(self.visited)
        made: list[Arch | None] = []
        if cfg.strategy in ("evolution", "pareto") and self.topk:
            parents = [np.array(to_arch(r["arch"])) for r in self.topk]
            made += [self._draw(lambda: self._mutate(parents), seen) for _ in range(cfg.mutations)]
            made += [self._draw(lambda: self._crossover(parents), seen) for _ in range(cfg.crossovers)]
        cands = [a for a in made if a is not None]  # a slot without a child is filled randomly below
        while len(cands) < cfg.population:
            arch = self._draw(self._random, seen)
            if arch is None:
                break  # the constrained space has (almost) no unvisited architecture left
            cands.append(arch)
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
            metrics = search_state.jsonable(out, "result")
        except Exception as e:  # noqa: BLE001 - reported on every rank by the caller
            return {"error": f"{type(e).__name__}: {e}", "arch": s, "rank": get_rank()}, e
        record = {
            "generation": g,
            "index": i,
            "arch": s,
            "map": fitness,
            "flops": self.cons.flops(arch),
            "params": self.cons.params(arch),
            **({} if self.cons.latency is None else {"latency_ms": self.cons.latency_ms(arch)}),
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
        best = self.best()["map"] if self.records else -math.inf
        best = max([best, *(r["map"] for r in results.values())])
        if bar is not None:
            bar.advance(len(results), best)
        errors: list[BaseException] = []  # this worker's, raised once the round is recorded

        def evaluate_mine(item: tuple[int, Arch]) -> dict:
            record, err = self._evaluate_one(evaluate, g, *item)
            if err is not None:
                errors.append(err)
            return record

        partial = search_state.PartialLog(self.run_dir, self.key)
        try:
            on_main(lambda: partial.start(list(results.values())))
            for gathered in map_in_rounds(pending, evaluate_mine):
                done = [r for r in gathered if "error" not in r]
                for r in done:
                    results[r["arch"]] = r
                    best = max(best, r["map"])
                on_main(lambda: partial.write(done))
                if bar is not None:
                    bar.advance(len(done), best)
                if errors:
                    raise errors[0]
                failed = [r for r in gathered if "error" in r]
                if failed:
                    f = failed[0]
                    raise RuntimeError(f"evaluating {f['arch']} failed on rank {f['rank']}: {f['error']}")
                if len(results) < len(cands):  # after the last one, the generation's state is the safe point
                    self.at_safe_point(f"{len(results)} of {len(cands)} candidates of generation {g} in {PARTIAL_FILE}")
        finally:
            partial.close()
        return [results[arch_to_str(a)] for a in cands]

    def finish_generation(self, new: list[dict]) -> None:
        g = self.generation
        self.records.extend(new)
        self.visited.update(r["arch"] for r in new)
        self.population = [r["arch"] for r in new]
        if self.cfg.strategy == "pareto":
            self.topk = pareto.nsga_select(self.topk + new, self.cfg.topk, self.cost)
        else:
            self.topk = sorted(self.topk + new, key=_rank_key)[: self.cfg.topk]
        maps = [r["map"] for r in new]
        best = self.best()
        self.summary.append({
            "generation": g,
            "evaluated": len(new),
            "best_map": best["map"],
            "best_arch": best["arch"],
            "mean_topk_map": float(np.mean([r["map"] for r in self.topk])),
            "mean_map": float(np.mean(maps)),
        })
        self.generation = g + 1

    def best(self) -> dict:
        """The best mAP evaluated (the first of the evolution's elitist top-k; the Pareto strategy's
        parents are chosen by more than mAP)."""
        return min(self.records, key=_rank_key)


def pareto_what(search: _Search) -> str:
    return f"mAP vs {'predicted latency' if search.cost == 'latency_ms' else 'FLOPs'}"


def _start(search: _Search, resume: bool) -> dict[str, dict]:
    """Resume ``search`` from its state on every worker, if asked and there is one; gives the cached
    results of the interrupted generation."""
    run_dir = search.run_dir
    state_path = run_dir / SEARCH_STATE_FILE

    def load() -> tuple[dict | None, dict[str, dict]]:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not state_path.exists():
            return None, search_state.read_partial(run_dir / PARTIAL_FILE, search.key, 0) if resume else {}
        if not resume:
            raise UserError(
                "a search state already exists here: resume it, or use a new run directory "
                "(or delete the file) to start over",
                state_path,
            )
        state = search_state.load_state(state_path)
        search.resume_from(state, state_path)
        return state, search_state.read_partial(run_dir / PARTIAL_FILE, search.key, state["generation"])

    state, cache = on_main(load)
    if state is not None and not search.main:
        search.resume_from(state, state_path)
    return cache


def _evolve(search: _Search, evaluate: Evaluate, cache: dict[str, dict], progress: bool) -> None:
    """Run the remaining generations, saving the state after each."""
    cfg = search.cfg
    running = search.generation < cfg.generations and not search.exhausted
    bar = search_plots.ProgressBars(progress and search.main and running, cfg.generations)
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
            best = search.best()["map"] if search.records else -math.inf
            new = search.run_generation(evaluate, cands, cache, bar.generation(search.generation, len(cands), best))
            cache = {}
            search.finish_generation(new)
            search.save()
            search.at_safe_point(f"the search state after generation {search.generation - 1}, in {SEARCH_STATE_FILE}")
    finally:
        bar.close()


def _write_outputs(search: _Search, before_finish: Callable[[list[dict]], None] | None, progress: bool) -> None:
    """Rank 0's plots, Pareto front and ``best.json`` of a finished search."""
    cfg, run_dir, input_size = search.cfg, search.run_dir, search.identity["input_size"]
    search_plots.plot_search(search.records, run_dir, topk=cfg.topk, cost=search.cost)
    if cfg.strategy == "pareto":
        pareto.write_front(run_dir, search.records, search.cost, search.space, input_size)
    if before_finish is not None:
        before_finish(list(search.records))
    # last: the pipeline takes best.json as the sign that the search finished with all its outputs
    search_state.write_best(run_dir, search.best(), search.space, input_size, cfg.strategy)
    if progress and cfg.strategy == "pareto":
        front = pareto.front_records(search.records, search.cost)
        search_plots.print_topk(front, f"Pareto front of {len(search.records)} evaluated ({pareto_what(search)})")
    elif progress:
        title = f"top-{len(search.topk)} of {len(search.records)} evaluated ({cfg.strategy})"
        search_plots.print_topk(search.topk, title)


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
    at_safe_point: SafePoint | None = None,
) -> SearchResult:
    """Run (or resume) an evolutionary or random search; every worker gets the same result.

    ``evaluate(arch)`` -> ``{"map": float, ...}`` is called once per candidate on one worker.
    ``resume=True`` continues from ``run_dir/search_state.json`` (a fresh start if there is none);
    ``resume=False`` with an existing state is an error, so finished work is never overwritten.
    ``evaluator_identity``: what the fitness depends on besides ``cfg`` (JSON-able); a resume with a
    different one is refused, so fitnesses of two different evaluators are never mixed.
    ``before_finish(history)`` runs on rank 0 after the last generation and before ``best.json``
    (e.g. the fitness check), so that ``best.json`` stays the last file written.
    ``at_safe_point(saved)`` runs on every worker once the results of each round of candidates are on
    disk (``saved`` says where); an exception it raises stops the search there.
    """
    run_dir = Path(run_dir)
    cons = check_constraints(space, cfg, input_size)  # fails fast, identically on every rank
    search = _Search(space, cfg, cons, input_size, run_dir, evaluator_identity, at_safe_point)
    _evolve(search, evaluate, _start(search, resume), progress)
    if not search.records:
        raise RuntimeError("the search evaluated no architecture")
    if search.main:
        _write_outputs(search, before_finish, progress)
    best = search.best()
    return SearchResult(best=to_arch(best["arch"]), best_record=best, topk=list(search.topk),
                        history=list(search.records), summary=list(search.summary), run_dir=run_dir,
                        exhausted=search.exhausted)
