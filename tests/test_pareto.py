"""The Pareto strategy: NSGA-II sorting and crowding, a front that is non-dominated and free of duplicates
under the constraints, exact resume after a crash and after kill -9, ``pareto.json`` and picking from it."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cli_checks import one_line_error
from detnas.config.runs import BEST_FILE, PARETO_FILE, PARTIAL_FILE, SEARCH_STATE_FILE
from detnas.errors import UserError
from detnas.search.pareto import crowding_distance, nondominated_fronts, nsga_select, pick
from detnas.search.state import load_state
from test_latency import synthetic
from test_search import Counter, key_fields, never, search

PARETO = dict(strategy="pareto")  # with test_search's SMALL settings: body FLOPs <= 300M


def test_nondominated_sorting_and_crowding():
    # (cost, map): lower cost and higher mAP are better
    pts = [(1, 0.1), (2, 0.3), (3, 0.2), (4, 0.5), (2, 0.1), (5, 0.5), (1, 0.1)]
    assert nondominated_fronts(pts) == [[0, 6, 1, 3], [4, 2, 5]]
    d = crowding_distance(pts, [0, 6, 1, 3])
    # the extremes of either objective are infinite; point 6 ties point 0 and sorts after it
    assert d[0] == d[3] == math.inf
    assert d[6] == pytest.approx((2 - 1) / 3 + (0.3 - 0.1) / 0.4)
    assert d[1] == pytest.approx((4 - 1) / 3 + (0.5 - 0.1) / 0.4)
    records = [{"arch": str(i), "flops": c, "map": m} for i, (c, m) in enumerate(pts)]
    assert [r["arch"] for r in nsga_select(records, 3, "flops")] == ["3", "0", "1"]  # boundary points first
    # the first front whole, then the second one's boundary point with the better mAP
    assert [r["arch"] for r in nsga_select(records, 5, "flops")] == ["3", "0", "1", "6", "5"]


def dominated(r: dict, others: list[dict], cost: str) -> bool:
    return any(o[cost] <= r[cost] and o["map"] >= r["map"] and (o[cost], o["map"]) != (r[cost], r["map"])
               for o in others)


def test_pareto_search_writes_a_nondominated_front(tmp_path):
    res = search(tmp_path, "p", **PARETO)
    assert len(res.history) == 120 and len({r["arch"] for r in res.history}) == 120  # no duplicates
    assert all(r["flops"] <= 300e6 for r in res.history)
    front = json.loads((tmp_path / "p" / PARETO_FILE).read_text())
    assert front["objectives"] == {"map": "max", "flops": "min"} and front["evaluated"] == 120
    points = front["front"]
    assert len(points) >= 3 and len({p["arch"] for p in points}) == len(points)
    assert [p["flops"] for p in points] == sorted(p["flops"] for p in points)
    assert not any(dominated(p, res.history, "flops") for p in points)
    on_front = {p["arch"] for p in points}
    assert all(dominated(r, points, "flops") for r in res.history if r["arch"] not in on_front)
    by_arch = {r["arch"]: r for r in res.history}
    assert all(p == {k: by_arch[p["arch"]][k] for k in ("arch", "map", "flops", "params", "generation")}
               for p in points)
    assert json.loads((tmp_path / "p" / BEST_FILE).read_text())["arch"] == max(points, key=lambda p: p["map"])["arch"]
    assert (tmp_path / "p" / BEST_FILE).stat().st_mtime_ns >= (tmp_path / "p" / PARETO_FILE).stat().st_mtime_ns
    # the parents are NSGA-II's choice, not the mAP top-k of the evolution
    evolution = search(tmp_path, "e", strategy="evolution", max_flops=300e6)
    assert key_fields(evolution.history[:20]) == key_fields(res.history[:20])  # the same generation 0
    assert key_fields(evolution.history) != key_fields(res.history)


def test_pareto_resume_after_a_crash_is_exact(tmp_path):
    full = search(tmp_path, "full", **PARETO)
    crash = Counter(fail_after=47)
    with pytest.raises(KeyboardInterrupt):
        search(tmp_path, "run", evaluate=crash, **PARETO)
    assert load_state(tmp_path / "run" / SEARCH_STATE_FILE)["generation"] == 2
    again = Counter()
    res = search(tmp_path, "run", evaluate=again, resume=True, **PARETO)
    assert not set(again.calls) & set(crash.calls) and len(again.calls) == 120 - 47
    assert key_fields(res.history) == key_fields(full.history) and key_fields(res.topk) == key_fields(full.topk)
    assert (tmp_path / "run" / PARETO_FILE).read_text() == (tmp_path / "full" / PARETO_FILE).read_text()


def test_pareto_resume_after_kill_9(tmp_path):
    full = search(tmp_path, "full", **PARETO)
    run_dir = tmp_path / "killed"
    script = Path(__file__).with_name("test_search.py")
    for kill_after in (13, 7 + 20 + 13):
        proc = subprocess.run([sys.executable, str(script), "kill", str(run_dir), str(kill_after), "pareto"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        assert len((run_dir / PARTIAL_FILE).read_text().splitlines()) == 13
    again = Counter()
    res = search(tmp_path, "killed", evaluate=again, resume=True, **PARETO)
    assert len(again.calls) == 120 - 53
    assert key_fields(res.history) == key_fields(full.history)
    assert (run_dir / PARETO_FILE).read_text() == (tmp_path / "full" / PARETO_FILE).read_text()


def test_pareto_over_latency_and_picking(tmp_path, cli_here):
    table = synthetic(tmp_path)  # latency = 30 + sum(arch) ms
    res = search(tmp_path, "lat", latency_table=table, max_latency_ms=70, **{**PARETO, "max_flops": None})
    front_file = tmp_path / "lat" / PARETO_FILE
    data = json.loads(front_file.read_text())
    points = data["front"]
    assert data["objectives"] == {"map": "max", "latency_ms": "min"}
    assert all(r["latency_ms"] <= 70 for r in res.history)
    assert not any(dominated(p, res.history, "latency_ms") for p in points)

    chosen = pick(front_file, "latency<=55ms")
    under = [p for p in points if p["latency_ms"] <= 55]
    assert chosen == max(under, key=lambda p: p["map"])
    assert pick(front_file, "latency < 1e3")["map"] == max(p["map"] for p in points)
    target = sorted(p["map"] for p in points)[len(points) // 2]
    assert pick(front_file, f"map>={100 * target}%") == min(
        (p for p in points if p["map"] >= target - 1e-12), key=lambda p: p["latency_ms"])
    assert pick(front_file, "flops<=400M")["flops"] <= 400e6
    with pytest.raises(UserError, match="no point of the front has latency<=1ms"):
        pick(front_file, "latency<=1ms")
    with pytest.raises(UserError, match="expected e.g. latency<=12ms"):
        pick(front_file, "speed<=3")
    with pytest.raises(UserError, match="expected e.g."):
        pick(front_file, "latency<=3M")  # a unit that latency has not
    search(tmp_path, "flops", **PARETO)
    with pytest.raises(UserError, match="has no 'latency_ms'"):
        pick(tmp_path / "flops" / PARETO_FILE, "latency<=50ms")
    with pytest.raises(UserError, match="not a Pareto front"):
        pick(tmp_path / "lat" / BEST_FILE, "latency<=50ms")


def test_retrain_picks_from_the_front(tmp_path, cli_here, monkeypatch):
    import detnas.stages.retrain

    search(tmp_path, "lat", latency_table=synthetic(tmp_path), **{**PARETO, "max_flops": None})
    front = tmp_path / "lat" / PARETO_FILE
    config = tmp_path / "retrain.yaml"
    config.write_text("data: {train: {annotations: a.json, images: img}}\ntrain: {iters: 1, batch_size: 2, lr: 0.1}\n")
    seen = []

    def fake_retrain(arch, cfg, out, resume, pretrain=True):
        seen.append("".join(map(str, arch)))
        return {"arch": seen[-1], "body_flops": 1e8, "test": {"AP": 0.0}}

    monkeypatch.setattr(detnas.stages.retrain, "run_retrain", fake_retrain)
    r = cli_here("retrain", "--arch", front, "--pick", "latency<=50ms", "--config", config, "--out", tmp_path / "r")
    assert seen == [pick(front, "latency<=50ms")["arch"]] and f"picked {seen[0]}" in r.stdout
    one_line_error(cli_here("retrain", "--arch", front, "--config", config, check=False), "--pick")
    one_line_error(cli_here("retrain", "--arch", front, "--pick", "latency<=1ms", "--config", config, check=False),
                   "pareto.json", "no point of the front")
    large = tmp_path / "large.yaml"
    large.write_text(config.read_text() + "space: small\nwidth_mult: 1.5\n")
    one_line_error(cli_here("retrain", "--arch", front, "--pick", "latency<=50ms", "--config", large, check=False),
                   "the front is of the small x1.0 space")
    assert len(seen) == 1


def test_infeasible_pareto_search_fails_fast(tmp_path):
    with pytest.raises(UserError, match="latency <= 20 ms"):
        search(tmp_path, "x", evaluate=never, latency_table=synthetic(tmp_path), max_latency_ms=20, **PARETO)


def test_the_pipeline_refuses_a_strategy_it_would_not_run():
    from detnas.config.schema import PipelineConfig
    from detnas.strict import validate

    schedule = {"iters": 1, "batch_size": 2, "lr": 0.1}
    cfg = {"detection": {"train": {"annotations": "a.json", "images": "img"}, "holdout": {"size": 1}},
           "finetune": schedule, "retrain": {"train": schedule}}
    assert validate(PipelineConfig, cfg, "p.yaml").search.strategy == "evolution"
    with pytest.raises(UserError, match="p.yaml: search.strategy: the pipeline runs the evolution .* not 'pareto'"):
        validate(PipelineConfig, {**cfg, "search": {"strategy": "pareto"}}, "p.yaml")
