"""``supernets: K``: the pipeline trains K supernets alike (seeds seed, seed + 1, ...) and the search scores
each candidate by their mean fitness.

One tiny pipeline with ``supernets: 2`` runs per module, in this process. Proves: both supernets'
folders hold different weights and the same search split; the ensemble's fitness in the history is the
mean of each supernet's fitness evaluated alone (exact numbers), its fitness check's re-evaluation too;
the supernets' agreement is written and reported; a rerun skips every stage; the pipeline's rank check
scores both supernets; one supernet searches exactly as before ensembles; a search resumed with another
set of supernets is refused; a supernet of another search split is a one-line error naming its folder.
"""

from __future__ import annotations

import json
import shutil
import statistics

import pytest
import torch

from data_builders import TINY_TRAINED_DETECTOR
from detnas.checkpoint import load_checkpoint
from detnas.config.schema import PipelineConfig, SearchStageConfig
from detnas.data.demo import build_demo_data
from detnas.errors import UserError
from detnas.model.space import parse_arch
from detnas.search.engine import run_search
from detnas.stages.pipeline import planned_stages, run_pipeline
from detnas.stages.rank_stats import kendall_tau
from detnas.stages.search import SupernetEnsemble, SupernetEvaluator, run_search_stage
from detnas.strict import validate

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SEARCH = {"population": 4, "generations": 2, "topk": 2, "mutations": 1, "crossovers": 1, "max_flops": 300e6}
FITNESS = {"recalib_images": 4, "batch_size": 4}


def tiny_config(tmp) -> PipelineConfig:
    paths = build_demo_data(tmp / "data", seed=0, cls_train=40, cls_val=10, det_train=32, det_val=2, det_test=6,
                            image_size=64, digit_height=(10, 30))
    images = str(paths.det_images)
    return validate(PipelineConfig, {
        "supernets": 2,
        "classification": {"train": str(paths.cls_train), "val": str(paths.cls_val), "image_size": 32},
        "detection": {"train": {"annotations": str(paths.det_train_json), "images": images},
                      "test": {"annotations": str(paths.det_test_json), "images": images}, "holdout": {"size": 8}},
        "detector": {**TINY_TRAINED_DETECTOR, "score_thresh": 0.0},  # barely trained: still scores, distinct mAPs
        "pretrain": {"train": {"iters": 2, "batch_size": 8, "lr": 0.03}},
        "finetune": {"iters": 3, "batch_size": 2, "lr": 0.01},
        "search": SEARCH, "fitness": FITNESS, "random_search": False, "baseline": False,
        "retrain": {"inherit": True, "train": {"iters": 1, "batch_size": 2, "lr": 0.01}},
        "rank_check": {"archs": 3, "seeds": 0, "bootstrap": 100},  # two supernets: their agreement, no retraining
        "eval": {"recalib_images": 4, "archs": ["0" * 20], "batch_size": 4},
        "logging": {"progress": False, "checkpoint_every": 1000},
        "parallel_stages": 1,
    }, "test")


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread):
    tmp = tmp_path_factory.mktemp("ensemble")
    cfg = tiny_config(tmp)
    out = tmp / "run"
    run_pipeline(cfg, out)
    return cfg, out


def history(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]


def test_the_pipeline_trains_two_supernets_searches_their_mean_and_skips_all_when_rerun(run, capsys):
    cfg, out = run
    names = [name for name, _ in planned_stages(cfg, out)]
    assert names[:4] == ["pretrain", "pretrain (supernet 1)", "finetune", "finetune (supernet 1)"]
    for stage in ("pretrain", "finetune"):
        first, second = (load_checkpoint(out / d / "checkpoint.pt") for d in (stage, f"{stage}-1"))
        assert (first["config"]["seed"], second["config"]["seed"]) == (0, 1)
        assert second["config"]["init"] == (None if stage == "pretrain" else str(out / "pretrain-1" / "checkpoint.pt"))
        assert not all(torch.equal(first["model"][k], second["model"][k]) for k in first["model"])
    assert (out / "finetune" / "search_split.json").read_bytes() == (out / "finetune-1" / "search_split.json").read_bytes()

    records = history(out / "search")
    assert len(records) == 8 and all(r["map"] == statistics.fmean(r["metrics"]["maps"]) for r in records)
    agreement = json.loads((out / "search" / "fitness_check.json").read_text())["supernets"]
    tau = kendall_tau(*zip(*(r["metrics"]["maps"] for r in records)))
    assert agreement["candidates"] == 8 and agreement["pairwise_tau"][0][1] == tau
    report = (out / "report.md").read_text()
    assert (f"The search mAP is the mean of 2 supernets' fitness (the Supernet section shows the first one); the 2 "
            f"supernets agree on the 8 candidates' order at Kendall tau {tau:.2f}") in report
    # the rank check scores the architectures on both supernets
    checked = json.loads((out / "rank_check" / "rank_check.json").read_text())
    assert checked["supernets"]["folders"] == [str(out / "finetune"), str(out / "finetune-1")]
    assert "## Rank check: do the supernets agree?" in report
    seconds = json.loads((out / "pipeline.json").read_text())["seconds"]
    assert {"pretrain (supernet 1)", "finetune (supernet 1)"} <= set(seconds)

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name not in ("report.md", "pipeline.json")}
    capsys.readouterr()
    run_pipeline(cfg, out)
    skipped = [line for line in capsys.readouterr().out.splitlines() if line.endswith("finished earlier, skipped")]
    assert len(skipped) == len(names)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name not in ("report.md", "pipeline.json")} == stamps


def test_the_ensemble_fitness_is_the_mean_of_each_supernet_alone(run):
    cfg, out = run
    alone = [SupernetEvaluator(out / d, cfg.fitness) for d in ("finetune", "finetune-1")]
    space = alone[0].space
    records = history(out / "search")
    for r in records[:2]:
        maps = [e(parse_arch(r["arch"], space))["map"] for e in alone]
        assert r["metrics"]["maps"] == maps and r["map"] == statistics.fmean(maps)
    # the fitness check's re-evaluation: each supernet recalibrated on its own seed + 1, as it would be alone
    again = json.loads((out / "search" / "fitness_check.json").read_text())["reevaluated"][0]
    maps = [e.with_recalib_seed(seed + 1)(parse_arch(again["arch"], space))["map"] for seed, e in enumerate(alone)]
    assert again["map_again"] == statistics.fmean(maps)


def search_cfg(cfg: PipelineConfig, out, others, **search) -> SearchStageConfig:
    stage = cfg.search_config(out / "finetune", "evolution", others)
    return stage.model_copy(update={"search": stage.search.model_copy(update=search)})


def test_one_supernet_searches_exactly_as_before_ensembles(run, tmp_path):
    cfg, out = run
    stage = search_cfg(cfg, out, [], generations=1)
    result = run_search_stage(stage, tmp_path / "now", resume=False)
    # what the search stage ran before ensembles: the one supernet's evaluator and identity
    evaluator = SupernetEvaluator(stage.supernet, stage.fitness, stage.workers, stage.amp)
    before = run_search(evaluator.space, stage.search, evaluator, tmp_path / "before", progress=False,
                        evaluator_identity=evaluator.identity())

    def same(r: dict) -> dict:  # all but the timings
        metrics = {k: v for k, v in r["metrics"].items() if not k.startswith("seconds_")}
        return {**{k: v for k, v in r.items() if k not in ("seconds", "metrics")}, "metrics": metrics}

    assert [same(r) for r in result.history] == [same(r) for r in before.history]
    assert "maps" not in result.history[0]["metrics"]
    states = [json.loads((tmp_path / d / "search_state.json").read_text()) for d in ("now", "before")]
    assert states[0]["key"] == states[1]["key"] and states[0]["evaluator"] == evaluator.identity()


def test_a_search_resumed_with_another_set_of_supernets_is_refused(run, tmp_path):
    cfg, out = run
    shutil.copytree(out / "search", tmp_path / "search")
    for others, supernet in (([], "finetune"), ([out / "finetune"], "finetune-1")):
        stage = search_cfg(cfg, out, others).model_copy(update={"supernet": out / supernet})
        with pytest.raises(UserError, match="different search .differs in: evaluator") as e:
            run_search_stage(stage, tmp_path / "search", resume=True)
        assert len(str(e.value).splitlines()) == 1
    # the same set resumes: finished, nothing evaluated again
    assert len(run_search_stage(search_cfg(cfg, out, [out / "finetune-1"]), tmp_path / "search", True).history) == 8


def test_a_supernet_of_another_search_split_is_one_line_naming_its_folder(run, tmp_path):
    cfg, out = run
    other = tmp_path / "other"
    shutil.copytree(out / "finetune-1", other)
    split = json.loads((other / "search_split.json").read_text())
    dropped = split["images"].pop()["id"]
    split["annotations"] = [a for a in split["annotations"] if a["image_id"] != dropped]
    (other / "search_split.json").write_text(json.dumps(split))
    with pytest.raises(UserError, match="its search split differs from the first supernet's") as e:
        SupernetEnsemble([out / "finetune", other], cfg.fitness)
    assert e.value.path == str(other) and len(str(e.value).splitlines()) == 1
