"""``detnas rank-check``: the verdict, the zero-cost baselines and the summary on simulated rankings
(the statistics themselves: tests/test_rank_stats.py), and the stage on a real (tiny) finetuned supernet:
its scores are the search's fitness, its standalone numbers are the retrainings' test results, a rerun
reuses every retraining, another supernet is scored again on the same retrained networks, several
supernets are compared with each other (with or without retrainings), a retraining made with another
recipe is refused, and the CLI refuses to overwrite a run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from cli_checks import one_line_error
from cli_checks import run_here as run_cli
from data_builders import TINY_TRAINED_DETECTOR
from detnas.config.schema import FinetuneConfig, RankCheckStageConfig
from detnas.data.demo import build_demo_data
from detnas.errors import UserError
from detnas.model.space import get_space, parse_arch
from detnas.model.supernet import ShuffleNetBackbone
from detnas.model.zero_cost import naswot_score
from detnas.stages.jobs import finetune_job, run_stage
from detnas.stages.rank_check import run_rank_check
from detnas.stages.rank_stats import kendall_tau
from detnas.stages.rank_summary import MIN_TAU, rank_verdict, summarize
from detnas.stages.search import SupernetEvaluator
from detnas.strict import validate

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# ----------------------------------------------------------------------------- the verdict


def _agree(tau: float, lo: float, hi: float) -> dict:
    return {"kendall_tau": tau, "kendall_tau_ci95": [lo, hi]}


def test_the_verdict_needs_an_effect_and_an_interval_clear_of_0():
    assert MIN_TAU == 0.3
    assert "ranks like standalone" in rank_verdict(_agree(0.5, 0.1, 0.8))
    assert "ranks like standalone" in rank_verdict(_agree(0.3, 0.01, 0.6))
    assert "*against*" in rank_verdict(_agree(-0.5, -0.8, -0.1))
    # an interval clear of 0 is not enough: the effect is too weak to steer a search
    weak = rank_verdict(_agree(0.05, 0.01, 0.3))
    assert weak.startswith("cannot tell") and "weaker than the 0.3" in weak
    assert rank_verdict(_agree(-0.1, -0.3, -0.01)).startswith("cannot tell")
    # a large tau whose interval reaches 0 cannot tell either
    spans = rank_verdict(_agree(0.35, -0.05, 0.7), ceiling={"kendall_tau": 0.6})
    assert spans.startswith("cannot tell") and "spans 0" in spans and "more architectures" in spans
    # ... and says when the ground truth is too noisy for any fitness, or its noise unknown
    noisy = rank_verdict(_agree(0.1, -0.3, 0.5), ceiling={"kendall_tau": 0.2})
    assert "too noisy" in noisy and "only tau 0.20" in noisy and "retrain longer" in noisy
    assert "more architectures" in rank_verdict(_agree(0.1, -0.3, 0.5), ceiling={"kendall_tau": 0.6})
    assert "one seed per architecture" in rank_verdict(_agree(0.1, -0.3, 0.5), ceiling=None)
    assert "nothing to rank" in rank_verdict(_agree(float("nan"), float("nan"), float("nan")))
    # a fitness that does not beat the best zero-cost proxy is flagged, whatever else it says
    proxy = {"label": "blocks of shuffle3x3", "kendall_tau": -0.6, "strength": 0.6}
    flagged = rank_verdict(_agree(0.5, 0.1, 0.8), proxy=proxy)
    assert "ranks like standalone" in flagged and "does not beat a zero-cost proxy: blocks of shuffle3x3" in flagged
    assert "zero-cost" not in rank_verdict(_agree(0.7, 0.4, 0.9), proxy=proxy)


def _summary(fitness: list[float], *seeds: list[float], names: list[str] | None = None, **kw) -> dict:
    names = names or [f"{i:020d}" for i in range(len(fitness))]
    scores = {n: {"map": f, "ap50": f} for n, f in zip(names, fitness)}
    standalone = {n: [{"map": s[i], "ap50": s[i]} for s in seeds] for i, n in enumerate(names)}
    return summarize(scores, standalone, topk=3, draws=500, **kw)


def test_the_summary_on_simulated_rankings_of_known_noise():
    rng = np.random.default_rng(0)
    truth = np.linspace(0.2, 0.4, 12)
    quiet = [truth + rng.normal(0, 0.005, 12) for _ in range(3)]  # three seeds, noise well below the spread
    good = _summary(truth.tolist(), *quiet)
    assert "ranks like standalone" in good["verdict"]
    assert good["fitness_vs_standalone"]["kendall_tau"] > 0.8 and good["ceiling"]["seeds"] == [3]
    assert good["ceiling"]["kendall_tau"] > 0.8 and good["ceiling"]["seed_sd"] == pytest.approx(0.005, rel=0.4)
    assert "*against*" in _summary(truth[::-1].tolist(), *quiet)["verdict"]
    shuffled = rng.permutation(truth).tolist()
    assert _summary(shuffled, *quiet)["verdict"].startswith("cannot tell")
    # the seeds disagree as much as the architectures differ: judge nothing, retrain longer first
    loud = [truth + rng.normal(0, 0.2, 12) for _ in range(2)]
    noisy = _summary(truth.tolist(), *loud)
    assert noisy["ceiling"]["kendall_tau"] < MIN_TAU
    assert noisy["verdict"].startswith("cannot tell") and "retrain longer" in noisy["verdict"]
    # an all-tied fitness: nothing to rank, and its top-k hit rate is chance, not the included-first 1.0
    tied = _summary([0.1] * 12, truth[::-1].tolist(), truth[::-1].tolist())
    assert "nothing to rank" in tied["verdict"]
    assert tied["fitness_vs_standalone"]["topk_hit_rate"] == pytest.approx(3 / 12)
    assert "noise_ceiling" not in good and "ceiling" in good


def test_zero_cost_baselines_sit_next_to_the_fitness():
    # the number of 3x3 blocks orders the truth exactly; NASWOT orders it backwards
    names = ["0" * i + "3" * (20 - i) for i in range(12)]
    truth = [0.01 * i for i in range(12)]
    naswot = {n: -float(i) for i, n in enumerate(names)}
    s = _summary(truth, truth, truth, names=names, naswot=naswot)
    proxies = s["proxies"]
    assert set(proxies) == {"blocks_shuffle3x3", "blocks_shuffle5x5", "blocks_shuffle7x7", "blocks_xception", "naswot"}
    assert proxies["blocks_shuffle3x3"]["kendall_tau"] == pytest.approx(1.0)
    assert proxies["blocks_xception"]["kendall_tau"] == pytest.approx(-1.0)
    assert proxies["blocks_xception"]["strength"] == pytest.approx(1.0)  # either direction predicts
    assert proxies["naswot"]["kendall_tau"] == pytest.approx(-1.0) and proxies["naswot"]["strength"] == -1.0
    assert np.isnan(proxies["blocks_shuffle5x5"]["kendall_tau"]) and proxies["blocks_shuffle5x5"]["strength"] is None
    assert proxies["blocks_shuffle3x3"]["kendall_tau_ci95"] == [1.0, 1.0]
    assert [r["naswot"] for r in s["archs"]] == [naswot[n] for n in names]
    # even a perfect fitness does not beat a proxy that is perfect too: flagged
    assert s["fitness_vs_standalone"]["kendall_tau"] == pytest.approx(1.0) and s["fitness_beats_proxies"] is False
    assert s["best_proxy"]["strength"] == pytest.approx(1.0)
    assert "does not beat a zero-cost proxy" in s["verdict"]
    # against an unrelated truth the block counts predict nothing, and a good fitness beats them
    rng = np.random.default_rng(1)
    other = rng.permutation(truth).tolist()
    fit = _summary(other, other, other, names=names)
    assert fit["fitness_beats_proxies"] is True and "zero-cost" not in fit["verdict"]
    assert fit["best_proxy"]["strength"] == pytest.approx(abs(kendall_tau([n.count("0") for n in names], other)))


def test_naswot_is_the_log_determinant_of_the_hamming_kernel():
    space, arch = get_space("small"), parse_arch("01230123012301230123")
    state = torch.get_rng_state()
    score = naswot_score(space, arch, images=8, size=32, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the global stream is left alone
    assert naswot_score(space, arch, images=8, size=32, seed=3) == score  # deterministic
    assert naswot_score(space, arch, images=8, size=32, seed=4) != score
    # by the definition: binary codes of every ReLU, K = agreements = c c^T + (1 - c)(1 - c)^T
    torch.manual_seed(3)
    net = ShuffleNetBackbone(space, arch).train()
    codes = []
    for m in net.modules():
        if isinstance(m, nn.ReLU):
            m.register_forward_hook(lambda m, i, o: codes.append((o > 0).flatten(1).double()))
    with torch.no_grad():
        net(torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3)))
    c = torch.cat(codes, 1)
    kernel = c @ c.T + (1 - c) @ (1 - c).T
    assert kernel[0, 0] == c.shape[1]
    assert score == pytest.approx(float(torch.linalg.slogdet(kernel)[1]), rel=1e-9)


def test_several_supernets_their_agreement_and_their_mean_against_the_truth():
    rng = np.random.default_rng(2)
    truth = np.linspace(0.2, 0.4, 12)
    names = [f"{i:020d}" for i in range(12)]
    supernets = [truth + rng.normal(0, 0.05, 12) for _ in range(4)]
    others = [{n: {"map": f[i], "ap50": f[i]} for i, n in enumerate(names)} for f in supernets[1:]]
    s = _summary(supernets[0].tolist(), truth.tolist(), truth.tolist(), names=names, others=others)
    agreement = s["supernets"]
    assert agreement["pairwise_tau"][0][1] == pytest.approx(kendall_tau(supernets[0], supernets[1]))
    assert len(agreement["split_half_tau"]) == 3
    assert agreement["each_vs_standalone"] == pytest.approx([kendall_tau(f, truth) for f in supernets])
    mean = np.mean(supernets, axis=0)
    assert agreement["ensemble_vs_standalone"]["kendall_tau"] == pytest.approx(kendall_tau(mean, truth))
    assert [r["supernet_maps"] for r in s["archs"]] == [[f[i] for f in supernets] for i in range(12)]
    assert s["fitness_vs_standalone"]["kendall_tau"] == pytest.approx(kendall_tau(supernets[0], truth))
    assert s["checked"] == "first supernet"
    # the pipeline with supernets: K checks what its search used, their mean
    both = _summary(supernets[0].tolist(), truth.tolist(), truth.tolist(), names=names, others=others,
                    mean_checked=True)
    assert both["checked"] == "mean of 4 supernets"
    assert both["fitness_vs_standalone"] == agreement["ensemble_vs_standalone"]
    assert [r["supernet_map"] for r in both["archs"]] == pytest.approx(mean.tolist())
    # without retrainings: the agreement alone, and its verdict is the summary's
    alone = _summary(supernets[0].tolist(), names=names, others=others)
    assert "fitness_vs_standalone" not in alone and "ensemble_vs_standalone" not in alone["supernets"]
    assert alone["supernets"]["pairwise_tau"] == agreement["pairwise_tau"]
    assert alone["verdict"] == alone["supernets"]["verdict"] and "supernets agree at mean tau" in alone["verdict"]


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


@pytest.fixture(scope="module")
def ranked(setup):
    """The rank check of the first supernet, run once (3 architectures x 2 seeds)."""
    tmp, _, stage = setup
    cfg = validate(RankCheckStageConfig, stage, "test")
    out = tmp / "rc"
    return cfg, out, run_rank_check(cfg, out, resume=False)


def test_rank_check_scores_retrains_summarises_and_reuses_retrainings(setup, ranked, capsys):
    _, supernets, stage = setup
    cfg, out, summary = ranked
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
        assert r["naswot"] == naswot_score(space, parse_arch(r["arch"], space), seed=cfg.retrain.seed)
    agree = summary["fitness_vs_standalone"]
    tau = kendall_tau([r["supernet_map"] for r in rows], [r["standalone_map"] for r in rows])
    assert agree["kendall_tau"] == tau or (np.isnan(tau) and np.isnan(agree["kendall_tau"]))
    assert summary["ceiling"]["seeds"] == [2] and summary["ceiling"]["seed_dof"] == 3
    assert 0 <= summary["ceiling"]["kendall_tau"] <= 1
    naswot_tau = kendall_tau([r["naswot"] for r in rows], [r["standalone_map"] for r in rows])
    assert summary["proxies"]["naswot"]["kendall_tau"] == naswot_tau or np.isnan(naswot_tau)
    assert json.loads((out / "rank_check.json").read_text())["archs"] == rows
    assert (out / "rank_check.png").stat().st_size > 0
    # each retraining's recipe is recorded: its seed's retrain config
    records = json.loads((out / "rank_plan.json").read_text())["retrainings"]
    assert set(records) == {f"nets/{r['arch']}/seed{k}" for r in rows for k in (0, 1)}
    seed1 = cfg.retrain.model_copy(update={"seed": 1}).model_dump(mode="json")
    assert records[f"nets/{rows[0]['arch']}/seed1"] == seed1

    # rerun: nothing is retrained or scored again, the same summary comes out
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("result.json")}
    scores_stamp = (out / "rank_scores.json").stat().st_mtime_ns
    capsys.readouterr()
    again = run_rank_check(cfg, out, resume=True)
    assert again["archs"] == rows
    assert {p: p.stat().st_mtime_ns for p in out.rglob("result.json")} == stamps
    assert (out / "rank_scores.json").stat().st_mtime_ns == scores_stamp
    printed = capsys.readouterr().out
    assert f"a perfect predictor would reach tau {again['ceiling']['kendall_tau']:.2f}" in printed
    assert "zero-cost baselines" in printed and "NASWOT at initialisation" in printed
    assert f"rank-check: {again['verdict']}" in printed

    # another supernet: scored again, on the same retrained networks
    other = run_rank_check(validate(RankCheckStageConfig, {**stage, "supernet": str(supernets[1])}, "test"), out,
                           resume=True)
    assert [r["standalone_maps"] for r in other["archs"]] == [r["standalone_maps"] for r in rows]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("result.json")} == stamps
    fresh = SupernetEvaluator(supernets[1], cfg.fitness)
    assert [r["supernet_map"] for r in other["archs"]] == [fresh(parse_arch(r["arch"], space))["map"] for r in rows]


def test_resume_refuses_retrainings_made_with_another_recipe(setup, ranked):
    tmp, _, stage = setup
    cfg, out, summary = ranked
    changed = validate(RankCheckStageConfig, {**stage, "retrain": {**stage["retrain"], "train": {
        **stage["retrain"]["train"], "lr": 0.02}}}, "test")
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.json")}
    first = out / "nets" / ("0" * 20) / "seed0"
    with pytest.raises(UserError, match="another retrain recipe \\(differs in train.lr\\)") as e:
        run_rank_check(changed, out, resume=True)
    assert e.value.path == str(first) and len(str(e.value).splitlines()) == 1
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.json")} == stamps  # refused before writing anything
    # retrainings without a record (rank checks made before records) are checked against their checkpoint
    plan = json.loads((out / "rank_plan.json").read_text())
    records = plan.pop("retrainings")
    (out / "rank_plan.json").write_text(json.dumps(plan))
    with pytest.raises(UserError, match="differs in train.lr"):
        run_rank_check(changed, out, resume=True)
    # ... and recorded once they pass
    run_rank_check(cfg, out, resume=True)
    assert json.loads((out / "rank_plan.json").read_text())["retrainings"] == records
    assert {p: p.stat().st_mtime_ns for p in out.rglob("result.json")} == {
        p: t for p, t in stamps.items() if p.name == "result.json"}
    # retrainings made elsewhere (the pipeline's): checked against their checkpoints too, then used as they are
    archs = json.loads((out / "rank_plan.json").read_text())["archs"]
    known = {a: [out / "nets" / a / f"seed{k}" for k in (0, 1)] for a in archs}
    with pytest.raises(UserError, match="differs in train.lr") as e:
        run_rank_check(changed, tmp / "rc-known", resume=True, known=known)
    assert e.value.path == str(first)
    reused = run_rank_check(cfg, tmp / "rc-known", resume=True, known=known)
    assert not (tmp / "rc-known" / "nets").exists()
    assert [r["standalone_maps"] for r in reused["archs"]] == [r["standalone_maps"] for r in summary["archs"]]
    recorded = json.loads((tmp / "rc-known" / "rank_plan.json").read_text())["retrainings"]
    assert set(recorded) == {str(d) for dirs in known.values() for d in dirs}


def _cli_config(path, stage: dict, **retrain) -> None:
    path.write_text(yaml.safe_dump({
        "detection": {**stage["retrain"]["data"], "holdout": {"size": 8}}, "detector": stage["retrain"]["detector"],
        "finetune": {"iters": 1, "batch_size": 2, "lr": 0.01},
        "retrain": {"train": {**stage["retrain"]["train"], **retrain}},
        "search": stage["search"], "fitness": stage["fitness"],
    }))


def test_cli_rank_check_refuses_to_overwrite_a_run_or_mix_recipes(setup, ranked, tmp_path):
    _, supernets, stage = setup
    out = tmp_path / "rc"
    out.mkdir()
    (out / "something").write_text("x")
    config = tmp_path / "pipeline.yaml"
    _cli_config(config, stage)
    r = run_cli("rank-check", "--config", config, "--supernet", supernets[0], "--out", out, "--archs", 3)
    assert one_line_error(r, "already here")
    assert (out / "something").read_text() == "x"
    # resuming the finished rank check with a longer retraining: refused, exit 2, one line naming the folder
    _cli_config(config, stage, iters=3)
    r = run_cli("rank-check", "--config", config, "--supernet", supernets[0], "--out", ranked[1], "--archs", 3,
                "--include", "0" * 20, "--resume")
    line = one_line_error(r, "another retrain recipe (differs in train.iters)")
    assert str(ranked[1] / "nets" / ("0" * 20) / "seed0") in line


def test_rank_check_compares_supernets_without_retraining(setup, ranked, tmp_path, capsys):
    _, supernets, stage = setup
    with pytest.raises(UserError, match="compares two or more supernets"):
        validate(RankCheckStageConfig, {**stage, "rank_check": {**stage["rank_check"], "seeds": 0}}, "test")
    cfg = validate(RankCheckStageConfig, {**stage, "other_supernets": [str(supernets[1])],
                                          "rank_check": {**stage["rank_check"], "seeds": 0}}, "test")
    out = tmp_path / "agree"
    summary = run_rank_check(cfg, out, resume=False)
    assert not (out / "nets").exists()  # nothing retrained
    space = get_space("small")
    second = SupernetEvaluator(supernets[1], cfg.fitness)
    rows = summary["archs"]
    assert [r["arch"] for r in rows] == [r["arch"] for r in ranked[2]["archs"]]  # the same plan
    assert [r["supernet_maps"][1] for r in rows] == [second(parse_arch(r["arch"], space))["map"] for r in rows]
    tau = kendall_tau(*zip(*(r["supernet_maps"] for r in rows)))
    assert summary["supernets"]["pairwise_tau"][0][1] == tau or np.isnan(tau)
    assert summary["supernets"]["folders"] == [str(supernets[0]), str(supernets[1])]
    assert (out / "rank_scores.1.json").exists() and "supernets" in capsys.readouterr().out
    # with the first rank check's retrainings: each supernet and their mean against the standalone mAP
    both = run_rank_check(cfg.model_copy(update={"rank_check": ranked[0].rank_check}), ranked[1], resume=True)
    assert len(both["supernets"]["each_vs_standalone"]) == 2 and "ensemble_vs_standalone" in both["supernets"]


def test_cli_rank_check_takes_several_supernets(setup, ranked, tmp_path):
    _, supernets, stage = setup
    config = tmp_path / "pipeline.yaml"
    _cli_config(config, stage)
    out = tmp_path / "rc"
    r = run_cli("rank-check", "--config", config, "--supernet", supernets[0], "--out", out, "--archs", 3, "--seeds", 0)
    assert one_line_error(r, "compares two or more supernets")
    r = run_cli("rank-check", "--config", config, "--supernet", supernets[0], "--supernet", supernets[1],
                "--out", out, "--archs", 3, "--seeds", 0)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "rank_check.json").read_text())
    assert len(summary["supernets"]["pairwise_tau"]) == 2 and "supernets agree" in r.stdout
