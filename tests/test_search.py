"""Search engine: constraints, de-duplication, evolution operators, elitism, resume, 2-process gloo.

Fitness is synthetic (a fixed weight per block choice, summed): it has structure that evolution can
exploit and costs nothing, so whole searches run in well under a second. The file also runs as a
script: ``python test_search.py worker ...`` (one gloo worker) and ``python test_search.py kill ...``
(a search that SIGKILLs itself mid-generation).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cli_checks import ENV
from detnas.config.runs import HISTORY_FILE, PARTIAL_FILE
from detnas.config.runs import SEARCH_STATE_FILE as STATE_FILE
from detnas.config.schema import SearchConfig
from detnas.errors import UserError
from detnas.model.flops import arch_cost
from detnas.model.space import SearchSpace, arch_to_str, get_space, to_arch
from detnas.search.constraints import check_constraints
from detnas.search.engine import run_search
from detnas.search.pareto import pareto_front
from detnas.search.plots import plot_search, progress_curve
from detnas.search.state import load_state
from detnas.strict import validate

SPACE = get_space("small")
WEIGHTS = np.random.default_rng(123).random((SPACE.num_blocks, 4))
KEYS = ("generation", "index", "arch", "map", "flops", "params")
# 20 per generation: 8 mutations, 8 crossovers, 4 random; 300M body FLOPs as in the paper
SMALL = dict(population=20, generations=6, topk=5, mutations=8, crossovers=8, max_flops=300e6, seed=3)


def fitness(arch) -> dict:
    s = float(WEIGHTS[np.arange(len(arch)), list(arch)].mean())
    return {"map": s, "ap50": min(1.0, 1.5 * s), "seconds": 0.0}


class Counter:
    """``fitness`` that records its calls and raises after ``fail_after`` of them."""

    def __init__(self, fail_after: int | None = None):
        self.calls: list[str] = []
        self.fail_after = fail_after

    def __call__(self, arch):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("simulated crash")
        self.calls.append(arch_to_str(arch))
        return fitness(arch)


def key_fields(history: list[dict]) -> list[tuple]:
    return [tuple(r[k] for k in KEYS) for r in history]


def search(tmp_path: Path, name: str, evaluate=fitness, resume=False, **kw):
    cfg = SearchConfig(**{**SMALL, **kw})
    return run_search(SPACE, cfg, evaluate, tmp_path / name, resume=resume, progress=False)


# ----------------------------------------------------------------------------- config, constraints


@pytest.mark.parametrize("bad, msg", [
    ({"topk": 30, "population": 20}, "topk (30) must not exceed population (20)"),
    ({"mutations": 15, "crossovers": 10, "population": 20}, "must not exceed population"),
    ({"mutation_prob": 1.5}, "mutation_prob"),
    ({"population": 0}, "population"),
    ({"min_flops": 3e8, "max_flops": 2e8}, "min_flops"),
    ({"max_flops": float("inf")}, "max_flops"),
    ({"strategy": "grid"}, "strategy"),
    ({"populaton": 5}, "unknown key 'populaton'"),
])
def test_config_is_validated(bad, msg):
    with pytest.raises(UserError, match="search.yaml") as e:
        validate(SearchConfig, bad, "search.yaml")
    assert msg in str(e.value)


def never(arch):
    raise AssertionError("evaluate() must not be called when the constraints are infeasible")


@pytest.mark.parametrize("kw, expect", [
    ({"max_flops": 100e6}, ["body FLOPs in [-inf, 100.00M]", "237.22M-365.47M"]),
    ({"min_flops": 400e6, "max_flops": None}, ["[400.00M, inf]", "237.22M-365.47M"]),
    ({"max_params": 1_000_000, "max_flops": None}, ["body params <= 1.00M", "params 1.47M-2.19M"]),
    ({"min_flops": 360e6, "max_flops": None, "max_params": 1_600_000}, ["none found", "params 1.47M-2.19M"]),
])
def test_infeasible_constraints_fail_before_any_evaluation(tmp_path, kw, expect):
    with pytest.raises(UserError) as e:
        search(tmp_path, "x", evaluate=never, **kw)
    for text in expect:
        assert text in str(e.value)
    assert not (tmp_path / "x").exists()


def test_constraints_use_the_analytic_table():
    cfg = SearchConfig(**{**SMALL, "min_flops": 280e6, "max_params": 1_700_000})
    cons = check_constraints(SPACE, cfg)
    a = to_arch("21202112331300313132")  # COCO-FPN-300M: 288.08M body FLOPs
    assert cons.flops(a) == arch_cost(SPACE, a).body_flops and 288.0e6 < cons.flops(a) < 288.1e6
    assert cons.ok(a) == (cons.params(a) <= 1_700_000)
    assert not cons.ok((0,) * 20)  # 262.71M < 280M


# ----------------------------------------------------------------------------- the evolution itself


def test_evolution_invariants(tmp_path):
    kw = dict(min_flops=270e6, max_params=1_750_000)
    res = search(tmp_path, "evo", **kw)
    h = res.history
    cfg = SearchConfig(**{**SMALL, **kw})
    assert len(h) == cfg.population * cfg.generations == 120
    # never evaluated twice, every candidate within the constraints (checked independently)
    assert len({r["arch"] for r in h}) == len(h)
    for r in h:
        cost = arch_cost(SPACE, to_arch(r["arch"]))
        assert r["flops"] == cost.body_flops and r["params"] == cost.body_params
        assert 270e6 <= cost.body_flops <= 300e6 and cost.body_params <= 1_750_000
        assert r["map"] == fitness(to_arch(r["arch"]))["map"]
    assert [(r["generation"], r["index"]) for r in h] == [(g, i) for g in range(6) for i in range(20)]

    # elitism: top-k after generation g == best k of everything evaluated up to g
    by = lambda r: (-r["map"], r["arch"])  # noqa: E731
    for s in res.summary:
        upto = sorted((r for r in h if r["generation"] <= s["generation"]), key=by)[: cfg.topk]
        assert s["best_arch"] == upto[0]["arch"]
        assert s["mean_topk_map"] == pytest.approx(np.mean([r["map"] for r in upto]))
    bests = [s["best_map"] for s in res.summary]
    assert bests == sorted(bests) and bests[-1] > bests[0]
    assert res.topk == sorted(h, key=by)[: cfg.topk] and res.best_record["arch"] == res.topk[0]["arch"]
    for c, s in zip(progress_curve(h, cfg.topk), res.summary, strict=True):
        assert c["best_map"] == s["best_map"] and c["generation"] == s["generation"]
        assert c["mean_topk_map"] == pytest.approx(s["mean_topk_map"]) and c["mean_map"] == pytest.approx(s["mean_map"])

    # operators: slots 0..7 are mutations of a previous top-k member (few genes changed),
    # slots 8..15 crossovers (each gene from one of two previous top-k members), the rest random
    dist_mut, dist_rand = [], []
    for g in range(1, 6):
        parents = [np.array(list(map(int, r["arch"])))
                   for r in sorted((r for r in h if r["generation"] < g), key=by)[: cfg.topk]]
        gen = [np.array(list(map(int, r["arch"]))) for r in h if r["generation"] == g]
        nearest = [min(int((c != p).sum()) for p in parents) for c in gen]
        assert min(nearest) >= 1  # nothing already evaluated
        dist_mut += nearest[:8]
        dist_rand += nearest[16:]
        for c in gen[8:16]:
            assert any(np.all((c == a) | (c == b)) for a in parents for b in parents)
    assert np.mean(dist_mut) < 4 < np.mean(dist_rand)

    # what a person reads
    lines = (tmp_path / "evo" / HISTORY_FILE).read_text().splitlines()
    assert [json.loads(x) for x in lines] == h
    best = json.loads((tmp_path / "evo" / "best.json").read_text())
    assert best["arch"] == res.best_record["arch"] and best["space"] == "small" and best["width_mult"] == 1.0
    assert best["map"] == res.best_record["map"] and best["ap50"] == res.best_record["metrics"]["ap50"]
    assert best["flops"] == res.best_record["flops"] and best["params"] == res.best_record["params"]
    for png in ("search_progress.png", "search_pareto.png"):
        assert (tmp_path / "evo" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "evo" / PARTIAL_FILE).exists()


def test_evolution_beats_random_search_with_the_same_budget(tmp_path):
    wins = []
    for seed in (0, 1):
        evo = search(tmp_path, f"evo{seed}", seed=seed, generations=8)
        rnd = search(tmp_path, f"rnd{seed}", seed=seed, generations=8, strategy="random")
        assert len(evo.history) == len(rnd.history) == 160
        assert len({r["arch"] for r in rnd.history}) == 160
        assert all(r["flops"] <= 300e6 for r in rnd.history)
        wins.append((evo.best_record["map"], rnd.best_record["map"]))
        # random search: no generation after the first is closer to the top-k than chance
        assert np.mean([r["map"] for r in rnd.history if r["generation"] == 7]) < evo.summary[-1]["mean_map"]
    for e, r in wins:
        assert e > r + 0.03, wins


def test_small_space_runs_out_without_duplicates(tmp_path):
    tiny = SearchSpace("tiny", 8, (1, 1, 1, 1), (16, 32, 64, 128))  # 4^4 = 256 architectures
    cfg = SearchConfig(population=50, generations=10, topk=5, mutations=20, crossovers=20, max_tries=50)
    res = run_search(tiny, cfg, lambda a: {"map": float(sum(a))}, tmp_path / "tiny", progress=False)
    archs = [r["arch"] for r in res.history]
    assert len(set(archs)) == len(archs) and 200 < len(archs) <= 256
    assert res.best_record["arch"] == "3333"


def test_bad_evaluate_results_are_errors_naming_the_arch(tmp_path):
    with pytest.raises(ValueError, match=r"map=nan"):
        search(tmp_path, "nan", evaluate=lambda a: {"map": float("nan")})
    with pytest.raises(TypeError, match="'map' key"):
        search(tmp_path, "nomap", evaluate=lambda a: {"ap": 1.0})


# ----------------------------------------------------------------------------- state and resume


def test_resume_after_a_crash_mid_generation_equals_an_uninterrupted_run(tmp_path):
    full = search(tmp_path, "full")
    crash = Counter(fail_after=47)  # in generation 2, after its 7th candidate
    with pytest.raises(KeyboardInterrupt):
        search(tmp_path, "run", evaluate=crash)
    state = load_state(tmp_path / "run" / STATE_FILE)
    assert state["generation"] == 2 and len(state["records"]) == 40
    assert len((tmp_path / "run" / PARTIAL_FILE).read_text().splitlines()) == 7

    again = Counter()
    res = search(tmp_path, "run", evaluate=again, resume=True)
    assert not set(again.calls) & set(crash.calls)  # nothing evaluated twice
    assert len(again.calls) == 120 - 47
    assert key_fields(res.history) == key_fields(full.history)
    assert res.best == full.best and key_fields(res.topk) == key_fields(full.topk) and res.summary == full.summary
    assert (tmp_path / "run" / HISTORY_FILE).read_text().count("\n") == 120

    # resuming a finished search evaluates nothing; more generations continue it exactly
    assert search(tmp_path, "run", evaluate=never, resume=True).best == full.best
    longer = search(tmp_path, "run", evaluate=Counter(), resume=True, generations=8)
    assert key_fields(longer.history) == key_fields(search(tmp_path, "full8", generations=8).history)


def test_resume_after_kill_9(tmp_path):
    full = search(tmp_path, "full")
    run_dir = tmp_path / "killed"
    # generation 0 only partly done: no state file yet, only the per-candidate cache
    for kill_after, state_gen in ((13, None), (7 + 20 + 13, 2)):
        proc = subprocess.run([sys.executable, __file__, "kill", str(run_dir), str(kill_after)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        if state_gen is None:
            assert not (run_dir / STATE_FILE).exists()
        else:
            assert load_state(run_dir / STATE_FILE)["generation"] == state_gen
        assert len((run_dir / PARTIAL_FILE).read_text().splitlines()) == 13
    # each killed run resumed the one before, so 13 + 40 evaluations were done before this
    again = Counter()
    res = search(tmp_path, "killed", evaluate=again, resume=True)
    assert len(again.calls) == 120 - 53
    assert key_fields(res.history) == key_fields(full.history) and res.best == full.best


def test_resume_refuses_wrong_or_corrupt_state(tmp_path):
    search(tmp_path, "a", generations=1)
    state = tmp_path / "a" / STATE_FILE
    with pytest.raises(UserError, match="already exists"):
        search(tmp_path, "a", generations=1)  # resume=False never overwrites a search
    with pytest.raises(UserError, match=r"search_state.json: .*differs in: max_flops, seed\)"):
        search(tmp_path, "a", evaluate=never, resume=True, seed=9, max_flops=290e6)
    with pytest.raises(UserError, match=r"differs in: max_flops, space\)"):
        run_search(get_space("small", 1.5), SearchConfig(**{**SMALL, "max_flops": None}), never, tmp_path / "a",
                   resume=True, progress=False)
    text = state.read_text()
    state.write_text(text[: len(text) // 2])
    with pytest.raises(UserError, match=r"search_state.json: malformed JSON at line"):
        search(tmp_path, "a", evaluate=never, resume=True)
    bad = json.loads(text)
    bad["records"].append(bad["records"][0])
    state.write_text(json.dumps(bad))
    with pytest.raises(UserError, match=r"search_state.json: corrupt search state: duplicate"):
        search(tmp_path, "a", evaluate=never, resume=True)
    # resume with no state starts afresh
    assert len(search(tmp_path, "fresh", generations=1, resume=True).history) == 20


# ----------------------------------------------------------------------------- two gloo workers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_workers_match_a_single_process(tmp_path):
    single = search(tmp_path, "single", generations=3)
    port, procs = _free_port(), []
    for rank in range(2):
        env = {**ENV, "RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, __file__, "worker", str(tmp_path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        errs = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], errs
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert seen[0] == seen[1]  # both workers hold the same state
    assert key_fields(seen[0]["history"]) == key_fields(single.history)
    assert seen[0]["best"] == single.best_record["arch"]
    ranks = [r["rank"] for r in seen[0]["history"]]
    assert ranks == [i % 2 for i in range(60)]  # candidate i evaluated by rank i % 2
    assert sorted(p.name for p in (tmp_path / "dist").iterdir()) == sorted(
        ["best.json", "history.jsonl", "search_state.json", "search_pareto.png", "search_progress.png"])


def _worker(out: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=__import__("datetime").timedelta(seconds=60))
    res = search(out, "dist", generations=3, evaluate=Counter())
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps({"history": res.history, "best": res.best_record["arch"]}))
    dist.destroy_process_group()


def _kill_after(run_dir: Path, n: int, strategy: str = "evolution") -> None:
    calls = []

    def evaluate(arch):
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGKILL)
        calls.append(arch)
        return fitness(arch)

    search(run_dir.parent, run_dir.name, evaluate=evaluate, resume=True, strategy=strategy)


# ----------------------------------------------------------------------------- plots


def test_pareto_front():
    pts = [(300, 0.30), (250, 0.31), (260, 0.29), (250, 0.31), (240, 0.20), (320, 0.35), (320, 0.34), (330, 0.35)]
    assert pareto_front(pts) == [4, 1, 3, 5]
    assert pareto_front([]) == []
    rng = np.random.default_rng(0)
    pts = [tuple(p) for p in rng.integers(0, 12, (200, 2)).tolist()]
    brute = [i for i, (f, m) in enumerate(pts)
             if not any(f2 <= f and m2 >= m and (f2, m2) != (f, m) for f2, m2 in pts)]
    front = pareto_front(pts)
    assert sorted(front) == brute
    assert [pts[i][0] for i in front] == sorted(pts[i][0] for i in front)


def test_plot_search_writes_pngs(tmp_path):
    hist = [{"generation": g, "arch": f"{g}{i}", "map": 0.1 * g + 0.01 * i, "flops": 2.5e8 + 1e6 * i}
            for g in range(3) for i in range(4)]
    paths = plot_search(hist, tmp_path / "plots", topk=2)
    assert [p.name for p in paths] == ["search_progress.png", "search_pareto.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
    assert progress_curve(hist, 2)[1] == {"generation": 1, "best_map": pytest.approx(0.13),
                                          "mean_topk_map": pytest.approx(0.125), "mean_map": pytest.approx(0.115)}


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        _worker(Path(sys.argv[2]))
    elif sys.argv[1] == "kill":
        _kill_after(Path(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:])
