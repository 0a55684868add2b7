"""The packaged experiment configs and ``detnas pipeline --dry-run``.

Proves: every shipped config holds the authors' settings (the DetNAS paper) and dry-runs against
tiny datasets in the standard COCO / Pascal VOC / ImageNet folder layouts under ``--data-root``; the
plan names every stage with its work and says what the run folder already holds; a dry run writes
nothing; what the run would refuse (missing data, an infeasible budget, a search split as large as the
training set) is the run's own one-line error.
"""

from __future__ import annotations

import pytest

from cli_checks import one_line_error
from data_builders import make_standard_layouts
from detnas.checkpoint import save_checkpoint
from detnas.config.loader import load_config, packaged_configs
from detnas.config.runs import CHECKPOINT, METRICS_FILE
from detnas.config.schema import PipelineConfig

SHIPPED = ("coco-fpn-small", "coco-retinanet-small", "voc-fpn-small", "coco-fpn-large")
SMALL_SPLIT = ("--set", "detection.holdout.size=2")  # the tiny datasets hold 6 training images
NO_ESTIMATE = ("--estimate-steps", "0")  # the time estimate is tested in test_dry_run_stages.py


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_standard_layouts(tmp_path_factory.mktemp("datasets"))


def files_under(root) -> dict:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")}


def test_the_shipped_configs_hold_the_authors_settings():
    assert set(SHIPPED) == set(packaged_configs())  # demo.yaml is `detnas demo`'s own
    for name in SHIPPED:
        cfg = load_config(packaged_configs()[name], PipelineConfig, variables={"data_root": "D", "imagenet": "I"})
        search, fitness = cfg.search, cfg.fitness
        assert (search.population, search.generations, search.topk) == (50, 20, 10)
        assert (search.mutations, search.crossovers, search.mutation_prob) == (20, 20, 0.1)
        assert fitness.recalib_images == 500 * 8 and fitness.batch_size == 8
        assert search.max_flops == (1.3e9 if name.endswith("large") else 300e6) and search.min_flops is None
        assert cfg.space == ("large" if name.endswith("large") else "small")
        for schedule in (cfg.pretrain.train, cfg.retrain.pretrain):  # ImageNet: 8 workers x 128 images
            assert (schedule.iters, schedule.batch_size * 8, schedule.lr, schedule.momentum) == (300000, 1024, 0.5, 0.9)
            assert schedule.weight_decay == 4e-5 and schedule.decay == "linear"
        assert cfg.pretrain.label_smoothing == 0.1 and cfg.pretrain.grow_iters == 0
        assert str(cfg.classification.train) == "I/train" and cfg.classification.image_size == 224
        finetune = cfg.finetune
        assert finetune.batch_size * 8 == 16 and finetune.warmup_iters == 500 and finetune.momentum == 0.9
        assert finetune == cfg.retrain.train and finetune.weight_decay == 1e-4 and finetune.decay == "step"
        assert finetune.lr == (0.01 if "retinanet" in name else 0.02)
        if name.startswith("coco"):
            assert (finetune.iters, finetune.milestones) == (90000, [60000, 80000])
            assert cfg.detection.holdout.size == 5000
            assert str(cfg.detection.train.annotations) == "D/annotations/instances_train2017.json"
            assert (cfg.detector.min_size, cfg.detector.max_size) == (800, 1333)
        assert cfg.detector.kind == ("retinanet" if "retinanet" in name else "fpn")


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_dry_runs_on_the_standard_layouts(name, data_root, tmp_path, cli_here):
    before = files_under(data_root)
    out = tmp_path / "run"
    r = cli_here("pipeline", "--config", name, "--data-root", data_root, *SMALL_SPLIT, "--out", out, "--dry-run",
                 *NO_ESTIMATE)
    text = r.stdout
    assert "search budget: body FLOPs <= " in text and ": feasible" in text
    assert "classification: 4 training images in 2 classes" in text
    assert "detection train: 6 images, 2 classes" in text and "search split: 2 of them held out" in text
    assert "detection test: 2 images" in text
    stages = ["pretrain", "finetune", "search (evolution)", "search (random)", "retrain (baseline)",
              "retrain (searched)", "retrain (random)"]
    plan = [line.split("  ")[1] for line in text.splitlines() if line.startswith("  ") and "to run" in line]
    assert plan == stages
    assert "1,000 candidates x (4,000 recalibration + 2 search-split images)" in text
    size = "600x1000" if name.startswith("voc") else "800x1333"
    assert f"detector FLOPs of the ShuffleNetV2 baseline at {size}" in text
    assert "  finetune: " in text and " GB (2 images of " in text
    assert not out.exists() and files_under(data_root) == before  # nothing written


def test_the_plan_says_what_is_finished_and_where_a_stage_resumes(data_root, tmp_path, cli_here):
    out = tmp_path / "run"
    (out / "pretrain").mkdir(parents=True)
    (out / "pretrain" / METRICS_FILE).write_text("{}")
    save_checkpoint(out / "finetune" / CHECKPOINT, {"stage": "finetune", "step": 1234})
    before = files_under(out)
    text = cli_here("pipeline", "--config", "coco-fpn-small", "--data-root", data_root, *SMALL_SPLIT,
                    "--out", out, "--dry-run", *NO_ESTIMATE).stdout
    rows = {line.split("  ")[1]: line for line in text.splitlines() if line.startswith("  ")}
    assert "finished: skipped" in rows["pretrain"]
    assert f"resumes at step 1234 ({out / 'finetune' / CHECKPOINT})" in rows["finetune"]
    assert "to run" in rows["search (evolution)"]
    assert files_under(out) == before


@pytest.mark.parametrize("case", ["no data root", "missing folder", "split too large", "budget", "unknown config",
                                  "bad --set"])
def test_what_the_run_would_refuse_is_a_one_line_error(case, data_root, tmp_path, cli_here):
    args = ["--data-root", data_root, *SMALL_SPLIT]
    config = "coco-fpn-small"
    if case == "no data root":
        args, expect = list(SMALL_SPLIT), ["${imagenet}", "--imagenet DIR", "coco-fpn-small.yaml"]
    elif case == "missing folder":
        args = ["--data-root", tmp_path, "--imagenet", data_root / "imagenet", *SMALL_SPLIT]
        expect = [str(tmp_path / "annotations" / "instances_train2017.json")]
    elif case == "split too large":
        args = ["--data-root", data_root]
        expect = ["search split of 5000 images is not smaller than the training set (6 images)"]
    elif case == "budget":
        args += ["--set", "search.max_flops=200e6"]
        expect = ["no architecture meets the search constraints", "237.22M-365.47M"]
    elif case == "unknown config":
        config, expect = "coco-fpn-tiny", ["config file not found", "coco-fpn-large, coco-fpn-small"]
    else:
        args += ["--set", "search.max_flops"]
        expect = ["--set takes KEY=VALUE"]
    r = cli_here("pipeline", "--config", config, *args, "--out", tmp_path / "run", "--dry-run", *NO_ESTIMATE,
                 check=False)
    one_line_error(r, *expect)
    assert not (tmp_path / "run").exists()
