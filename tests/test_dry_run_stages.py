"""``--dry-run`` of each stage command, the warning when the number of workers x batch differs from the
batch the lr was set for (with the linear-scaling lr), and the time estimate from timed steps.

Proves: the warning's numbers and its silence on the recipe's 8 workers; the estimate is the timed
seconds per image times the images each stage computes (the timing replaced by known values), and
real timed steps run on this device; search, retrain, rank-check and evaluate refuse what their run
would refuse and write nothing.
"""

from __future__ import annotations

import json

import pytest

from cli_checks import one_line_error
from data_builders import finetune_cfg, make_retrained, make_standard_layouts
from detnas.checkpoint import save_checkpoint
from detnas.config.runs import CHECKPOINT, SPLIT_FILE
from detnas.config.schema import FinetuneConfig, ScheduleConfig
from detnas.stages.dry_run_timing import StepTimer, duration, lr_scaling

SMALL = ("--set", "detection.holdout.size=2", "--estimate-steps", "0")  # the tiny datasets hold 6 training images


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_standard_layouts(tmp_path_factory.mktemp("datasets"))


@pytest.fixture(scope="module")
def supernet(data_root, tmp_path_factory):
    """A finished finetuning run folder as the search reads it (its weights are not read by a dry run)."""
    folder = tmp_path_factory.mktemp("finetune")
    train = {"format": "coco", "annotations": str(data_root / "annotations/instances_train2017.json"),
             "images": str(data_root / "train2017")}
    cfg = FinetuneConfig.model_validate(finetune_cfg(train))
    save_checkpoint(folder / CHECKPOINT, {"stage": "finetune", "step": cfg.train.iters, "classes": ["a", "b"],
                                          "config": cfg.model_dump(mode="json"), "model": {}})
    (folder / SPLIT_FILE).write_text(json.dumps({"images": [{"id": 1}, {"id": 2}, {"id": 3}]}))
    return folder


def files_under(root) -> dict:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")}


def test_lr_scaling_gives_the_linear_rule():
    s = ScheduleConfig(iters=10, batch_size=32, lr=0.1, lr_batch=256)
    [line] = lr_scaling([("train", s)], workers=4)
    assert "lr 0.1 was set for a batch of 256 images, this run's is 4 worker(s) x 32 = 128" in line
    assert "linear scaling gives lr 0.05 (set train.lr=0.05), or keep the batch of 256 with 8 workers" in line
    assert lr_scaling([("train", s)], workers=8) == []
    assert lr_scaling([("train", s.model_copy(update={"lr_batch": None}))], workers=3) == []  # nothing to compare
    assert "--set finetune.lr=0.4" in lr_scaling([("finetune", s)], workers=32, as_set=True)[0]


def test_a_one_worker_dry_run_of_an_8_gpu_recipe_warns(data_root, tmp_path, cli_here, monkeypatch):
    args = ("pipeline", "--config", "coco-fpn-small", "--data-root", data_root, *SMALL, "--out", tmp_path, "--dry-run")
    warnings = [line for line in cli_here(*args).stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 4
    assert "pretrain.train: lr 0.5 was set for a batch of 1024 images, this run's is 1 worker(s) x 128 = 128: " \
           "linear scaling gives lr 0.0625 (--set pretrain.train.lr=0.0625)" in warnings[0]
    assert "finetune: lr 0.02 was set for a batch of 16 images" in warnings[1] and "lr 0.0025 (--set finetune.lr=0.0025)" \
        in warnings[1]
    monkeypatch.setenv("WORLD_SIZE", "8")  # as torchrun --nproc_per_node 8 sets it
    assert "warning:" not in cli_here(*args).stdout
    # a stage's part of a pipeline config: named by the stage's key, which --set does not address
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # a restarted group's dry run resumes nothing: no word of it
    r = cli_here("finetune", "--config", "coco-fpn-small", "--data-root", data_root, *SMALL, "--out", tmp_path,
                 "--dry-run")
    text = r.stdout
    assert "restarted" not in r.stderr
    assert "warning: train: lr 0.02 was set for a batch of 16 images, this run's is 2 worker(s) x 2 = 4: linear " \
           "scaling gives lr 0.005 (set train.lr=0.005), or keep the batch of 16 with 8 workers" in text


def test_the_estimate_is_seconds_per_image_times_the_images_computed(data_root, tmp_path, cli_here, monkeypatch):
    monkeypatch.setattr(StepTimer, "classification", lambda self, arch, size, batch, n: 0.001)
    monkeypatch.setattr(StepTimer, "detection", lambda self, arch, det, batch, n: 0.5)
    monkeypatch.setattr(StepTimer, "inference", lambda self, det, batch, n: 0.01)
    text = cli_here("pipeline", "--config", "coco-fpn-small", "--data-root", data_root, "--set",
                    "detection.holdout.size=2", "--out", tmp_path / "run", "--dry-run").stdout
    estimate = text.split("time estimate")[1].splitlines()[1:-1]
    rows = {line[:30].strip(): line[30:].strip() for line in estimate}  # "  name (padded to 28) duration"
    assert "3 timed steps of each kind on cpu" in text and "an estimate" in text
    assert rows["pretrain"] == duration(300000 * 128 * 0.001) == "10.7 h"  # iterations x batch x s/image
    assert rows["finetune"] == duration(90000 * 2 * 0.5) == "25.0 h"
    assert rows["search (evolution)"] == duration(1000 * (4000 + 2) * 0.01) == "11.1 h"  # candidates x images
    assert rows["retrain (baseline)"] == duration(300000 * 128 * 0.001 + 90000 * 2 * 0.5) == "35.7 h"
    total = 38400 + 90000 + 2 * 40020 + 3 * (38400 + 90000)
    assert rows["total"] == duration(total) == "6.9 days" and len(rows) == 8
    assert not (tmp_path / "run").exists()


def test_the_estimate_counts_every_supernet(data_root, supernet, tmp_path, cli_here, monkeypatch):
    monkeypatch.setattr(StepTimer, "classification", lambda self, arch, size, batch, n: 0.001)
    monkeypatch.setattr(StepTimer, "detection", lambda self, arch, det, batch, n: 0.5)
    monkeypatch.setattr(StepTimer, "inference", lambda self, det, batch, n: 0.01)
    text = cli_here("pipeline", "--config", "coco-fpn-small", "--data-root", data_root, "--set",
                    "detection.holdout.size=2", "--set", "supernets=2", "--out", tmp_path / "run", "--dry-run").stdout
    estimate = text.split("time estimate")[1].splitlines()[1:-1]
    rows = {line[:30].strip(): line[30:].strip() for line in estimate}
    assert rows["pretrain"] == rows["pretrain (supernet 1)"] == "10.7 h"  # each supernet trained alike
    assert rows["finetune"] == rows["finetune (supernet 1)"] == "25.0 h"
    assert rows["search (evolution)"] == duration(2 * 1000 * (4000 + 2) * 0.01)  # each candidate on each supernet
    assert "search-split images) x 2 supernets" in text and len(rows) == 10
    # the search stage with two --supernet scores each candidate on both
    text = cli_here("search", "--config", "coco-fpn-small", "--data-root", data_root, *SMALL, "--supernet", supernet,
                    "--supernet", supernet, "--out", tmp_path / "s", "--dry-run").stdout
    assert f"supernet: {supernet} (its fitness is averaged with the first one's)" in text
    assert "(4,000 recalibration + 3 search-split images) x 2 supernets" in text


def test_real_timed_steps_on_this_device(data_root, tmp_path):
    from detnas.model.detector_config import DetectorConfig
    from detnas.model.space import get_space

    timer = StepTimer(get_space("small"), "auto", steps=1)
    det = DetectorConfig(fpn_channels=16, box_head_channels=32, min_size=64, max_size=64)
    per_image = [timer.classification(None, 32, 8, 10), timer.detection(None, det, 2, 3), timer.inference(det, 2, 3)]
    assert all(0 < s < 60 for s in per_image) and timer.describe().startswith("cpu")
    assert timer.detection(None, det, 2, 3) == per_image[1]  # measured once per shape


def test_finetune_dry_run_with_a_real_estimate(data_root, tmp_path, cli_here):
    train = {"format": "coco", "annotations": str(data_root / "annotations/instances_train2017.json"),
             "images": str(data_root / "train2017")}
    path = tmp_path / "ft.yaml"
    path.write_text(json.dumps(finetune_cfg(train, detector={"fpn_channels": 16, "box_head_channels": 32,
                                                             "min_size": 64, "max_size": 64})))
    text = cli_here("finetune", "--config", path, "--out", tmp_path / "ft", "--dry-run", "--estimate-steps", "1").stdout
    assert "detection train: 6 images, 2 classes" in text and "starts from random weights" in text
    assert "  finetune                     to run               5 its x 2 = 10 images" in text
    assert "time estimate from 1 timed step of each kind on cpu" in text
    assert not (tmp_path / "ft").exists()


def test_init_from_the_command_line(data_root, tmp_path, cli_here):
    weights = tmp_path / "backbone.safetensors"
    weights.write_bytes(b"")
    for stage in ("pretrain", "finetune"):
        args = (stage, "--config", "coco-fpn-small", "--data-root", data_root, *SMALL, "--out", tmp_path / "o",
                "--dry-run")
        assert f"starts from the backbone in {weights}" in cli_here(*args, "--init", weights).stdout
        assert "starts from random weights (init: none)" in cli_here(*args).stdout
        one_line_error(cli_here(*args, "--init", tmp_path / "nope.pt", check=False), "nope.pt: init: not found")


def test_search_rank_check_and_retrain_dry_runs(data_root, supernet, tmp_path, cli_here):
    before = files_under(supernet)
    common = ("--config", "coco-fpn-small", "--data-root", data_root, *SMALL)
    text = cli_here("search", *common, "--supernet", supernet, "--out", tmp_path / "s", "--dry-run").stdout
    assert f"supernet: {supernet} (small space, fpn detector, 2 classes; search split of 3 images)" in text
    assert "1,000 candidates x (4,000 recalibration + 3 search-split images)" in text
    text = cli_here("rank-check", *common, "--supernet", supernet, "--archs", "5", "--out", tmp_path / "r",
                    "--dry-run").stdout
    assert "5 architectures scored on the supernet and retrained alone x 2 seeds" in text
    text = cli_here("retrain", *common, "--arch", "shufflenetv2-20", "--out", tmp_path / "t", "--dry-run").stdout
    assert "architecture 00000000000000000000 (small space, body FLOPs 262.71M)" in text
    assert "  pretrain                     300,000 its x 128 = 38,400,000 images" in text
    assert "  detector                     90,000 its x 2 = 180,000 images" in text
    text = cli_here("retrain", *common, "--set", "retrain.inherit=true", "--set", "retrain.pretrain=null", "--arch",
                    "shufflenetv2-20", "--supernet", supernet, "--out", tmp_path / "t", "--dry-run").stdout
    assert f"starts from its path's weights in the supernet {supernet}" in text
    assert "  from the supernet's weights  90,000 its x 2 = 180,000 images" in text and "  pretrain " not in text
    assert files_under(supernet) == before and not any((tmp_path / d).exists() for d in "srt")
    # an unfinished supernet is refused, as the search would
    save_checkpoint(tmp_path / "half" / CHECKPOINT, {"stage": "finetune", "step": 1,
                                                    "config": json.loads(json.dumps({"train": {"iters": 5}}))})
    one_line_error(cli_here("search", *common, "--supernet", tmp_path / "half", "--dry-run", check=False),
                   "the supernet's finetuning has not finished")


def test_evaluate_dry_run(data_root, tmp_path, cli_here):
    make_retrained(tmp_path / "det.pt")
    text = cli_here("evaluate", "--checkpoint", tmp_path / "det.pt", "--config", "coco-fpn-small", "--data-root",
                    data_root, "--metric", "voc07", "--dry-run").stdout
    assert "fpn detector, arch 21202112331300313132, 2 classes" in text
    assert "data: 2 images" in text and "batches of 8, metric voc07" in text
    one_line_error(cli_here("evaluate", "--checkpoint", tmp_path / "det.pt", "--images", tmp_path, "--dry-run",
                            check=False), "--coco-annotations")
