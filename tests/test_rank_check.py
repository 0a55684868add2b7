"""``detnas rank-check``: the statistics against hand-computed values, and the stage on a real (tiny)
finetuned supernet: its scores are the search's fitness, its standalone numbers are the retrainings'
test results, a rerun reuses every retraining, another supernet is scored again on the same retrained
networks, and the CLI refuses to overwrite a run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from cli_checks import one_line_error
from cli_checks import run_here as run_cli
from data_builders import TINY_TRAINED_DETECTOR
from detnas.config.schema import FinetuneConfig, RankCheckStageConfig
from detnas.data.demo import build_demo_data
from detnas.model.space import get_space, parse_arch
from detnas.stages.jobs import finetune_job, run_stage
from detnas.stages.rank_check import run_rank_check, summarize
from detnas.stages.rank_stats import bootstrap_ci, kendall_tau, spearman_rho, topk_hit_rate
from detnas.stages.search import SupernetEvaluator
from detnas.strict import validate

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# ----------------------------------------------------------------------------- statistics


def test_kendall_and_spearman_match_hand_computed_values():
    # two swapped neighbour pairs: 8 concordant, 2 discordant pairs; rank differences -1, 1, -1, 1, 0
    assert kendall_tau([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.6)
    assert spearman_rho([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(1 - 6 * 4 / (5 * 24))
    # tau-b with one tie in each list: 4 concordant, 0 discordant, 5 untied pairs in each -> 4 / 5
    assert kendall_tau([1, 1, 2, 3], [1, 2, 2, 3]) == pytest.approx(0.8)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    # ties share their average rank: ranks (1.5, 1.5, 3) against (1, 2, 3)
    assert spearman_rho([5, 5, 7], [1, 2, 3]) == pytest.approx(np.corrcoef([1.5, 1.5, 3], [1, 2, 3])[0, 1])


def test_bootstrap_interval_and_topk_hit_rate():
    x = list(range(10))
    assert bootstrap_ci(kendall_tau, x, x, draws=200) == (1.0, 1.0)
    noisy = [0, 2, 1, 3, 5, 4, 6, 8, 7, 9]
    lo, hi = bootstrap_ci(kendall_tau, x, noisy, draws=500, seed=1)
    assert lo < kendall_tau(x, noisy) < hi <= 1.0
    assert (lo, hi) == bootstrap_ci(kendall_tau, x, noisy, draws=500, seed=1)  # seeded
    assert topk_hit_rate([0.9, 0.1, 0.8, 0.2], [1, 2, 3, 4], 2) == 0.5
    assert topk_hit_rate([4, 3, 2, 1], [4, 3, 2, 1], 3) == 1.0


def _summary(fitness: list[float], seed0: list[float], seed1: list[float]) -> dict:
    names = [f"{i:020d}" for i in range(len(fitness))]
    scores = {n: {"map": f, "ap50": f} for n, f in zip(names, fitness)}
    standalone = {n: [{"map": a, "ap50": a}, {"map": b, "ap50": b}] for n, a, b in zip(names, seed0, seed1)}
    return summarize(scores, standalone, topk=3, draws=500)


def test_the_verdict_follows_where_taus_interval_lies():
    truth = list(range(12))
    repeat = [0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10]  # a second seed that agrees closely
    assert "ranks like standalone" in _summary(truth, truth, repeat)["verdict"]
    assert "*against*" in _summary(truth[::-1], truth, repeat)["verdict"]
    shuffled = [5, 0, 9, 3, 11, 1, 7, 2, 10, 6, 4, 8]
    assert "cannot tell" in _summary(shuffled, truth, repeat)["verdict"]
    noisy = _summary(shuffled, truth, shuffled[::-1])  # the two seeds disagree: retrain longer first
    assert noisy["noise_ceiling"]["kendall_tau_ci95"][0] <= 0 and "retrain longer" in noisy["verdict"]
    assert "nothing to rank" in _summary([0.1] * 12, truth, repeat)["verdict"]


# ----------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    tmp = tmp_path_factory.mktemp("rank")
    paths = build_demo_data(tmp / "data", seed=0, cls_train=200, cls_val=50, det_train=40, det_val=4, det_test=8,
                            image_size=64, digit_height=(10, 30))
    images = str(paths.det_images)
    data = {"train": {"annotations": str(paths.det_train_json), "images": images},
            "test": {"annotations": str(paths.det_test_json), "images": images}}
    detector = {**TINY_TRAINED_DETECTOR, "score_thresh": 0.0}  # barely trained: still scores something
    ft = validate(FinetuneConfig, {
        "data": {**data, "holdout": {"size": 8}}, "detector": detector,
        "train": {"iters": 6, "batch_size": 4, "lr": 0.02}, "eval": {"archs": ["0" * 20], "recalib_images": 4},
        "logging": {"progress": False, "checkpoint_every": 1000},
    }, "test")
    supernets = []
    for seed in (0, 1):  # two supernets: the second is checked on the first one's retrained networks
        ft_dir = tmp / f"finetune{seed}"
        cfg = ft.model_copy(update={"seed": seed})
        run_stage(finetune_job(cfg, ft_dir), cfg, ft_dir, resume=False)
        supernets.append(ft_dir)
    stage = {
        "supernet": str(supernets[0]), "fitness": {"recalib_images": 4, "batch_size": 4},
        "search": {"max_flops": 300e6, "seed": 2},
        "retrain": {"data": data, "detector": detector, "train": {"iters": 2, "batch_size": 2, "lr": 0.01},
                    "logging": {"progress": False}},
        "rank_check": {"archs": 3, "seeds": 2, "bootstrap": 100},
        "include": ["0" * 20],
    }
    return tmp, supernets, stage


def test_rank_check_scores_retrains_summarises_and_reuses_retrainings(setup):
    tmp, supernets, stage = setup
    cfg = validate(RankCheckStageConfig, stage, "test")
    out = tmp / "rc"
    summary = run_rank_check(cfg, out, resume=False)
    space = get_space("small")

    rows = summary["archs"]
    assert len(rows) == 3 and rows[0]["arch"] == "0" * 20  # the included one first, then draws
    assert len({r["arch"] for r in rows}) == 3
    evaluator = SupernetEvaluator(supernets[0], cfg.fitness)
    for r in rows:
        assert r["supernet_map"] == evaluator(parse_arch(r["arch"], space))["map"]  # the search's fitness
        results = [json.loads((out / "nets" / r["arch"] / f"seed{k}" / "result.json").read_text()) for k in (0, 1)]
        assert r["standalone_maps"] == [res["test"]["AP"] for res in results]
        assert r["standalone_map"] == pytest.approx(np.mean(r["standalone_maps"]))
    agree = summary["fitness_vs_standalone"]
    tau = kendall_tau([r["supernet_map"] for r in rows], [r["standalone_map"] for r in rows])
    assert agree["kendall_tau"] == tau or (np.isnan(tau) and np.isnan(agree["kendall_tau"]))
    assert summary["noise_ceiling"] is not None
    assert json.loads((out / "rank_check.json").read_text())["archs"] == rows
    assert (out / "rank_check.png").stat().st_size > 0

    # rerun: nothing is retrained or scored again, the same summary comes out
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("result.json")}
    scores_stamp = (out / "rank_scores.json").stat().st_mtime_ns
    again = run_rank_check(cfg, out, resume=True)
    assert again["archs"] == rows
    assert {p: p.stat().st_mtime_ns for p in out.rglob("result.json")} == stamps
    assert (out / "rank_scores.json").stat().st_mtime_ns == scores_stamp

    # another supernet: scored again, on the same retrained networks
    other = run_rank_check(validate(RankCheckStageConfig, {**stage, "supernet": str(supernets[1])}, "test"), out,
                           resume=True)
    assert [r["standalone_maps"] for r in other["archs"]] == [r["standalone_maps"] for r in rows]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("result.json")} == stamps
    fresh = SupernetEvaluator(supernets[1], cfg.fitness)
    assert [r["supernet_map"] for r in other["archs"]] == [fresh(parse_arch(r["arch"], space))["map"] for r in rows]


def test_cli_rank_check_refuses_to_overwrite_a_run(setup, tmp_path):
    tmp, supernets, stage = setup
    out = tmp_path / "rc"
    out.mkdir()
    (out / "something").write_text("x")
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "detection": {**stage["retrain"]["data"], "holdout": {"size": 8}}, "detector": stage["retrain"]["detector"],
        "finetune": {"iters": 1, "batch_size": 2, "lr": 0.01}, "retrain": {"train": stage["retrain"]["train"]},
        "search": stage["search"], "fitness": stage["fitness"],
    }))
    r = run_cli("rank-check", "--config", config, "--supernet", supernets[0], "--out", out, "--archs", 3)
    assert one_line_error(r, "already here")
    assert (out / "something").read_text() == "x"
