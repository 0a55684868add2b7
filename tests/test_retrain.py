"""`detnas retrain`: a fixed architecture as a standalone network, pretrained then trained as a
detector and tested; the same recipe for searched nets and baselines."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from cli_checks import run_here
from data_builders import TINY_TRAINED_DETECTOR
from detnas.checkpoint import load_checkpoint
from detnas.data.demo import build_demo_data

ARCH = "21202112331300313132"


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("retrain")
    paths = build_demo_data(tmp / "data", seed=1, cls_train=100, cls_val=20, det_train=12, det_val=2, det_test=6,
                            image_size=64, digit_height=(10, 30))
    images = str(paths.det_images)
    cfg = {
        "space": "small",
        "data": {"train": {"annotations": str(paths.det_train_json), "images": images},
                 "test": {"annotations": str(paths.det_test_json), "images": images}},
        "detector": TINY_TRAINED_DETECTOR,
        "train": {"iters": 2, "batch_size": 2, "lr": 0.01},
        "pretrain": {"data": {"train": str(paths.cls_train), "val": str(paths.cls_val)},
                     "train": {"iters": 2, "batch_size": 8, "lr": 0.03}},
        "eval": {"batch_size": 4},
        "logging": {"progress": False},
    }
    path = tmp / "retrain.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def retrain(*args) -> subprocess.CompletedProcess:
    """``detnas retrain ARGS`` in this process: the CLI's own exit codes and messages, without the 3
    CPU-seconds of a new interpreter's imports."""
    return run_here("retrain", *args)


def test_retrain_with_pretraining_from_a_search_result(config, tmp_path):
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"arch": ARCH, "space": "small", "width_mult": 1.0, "map": 0.1}))
    out = tmp_path / "run"
    r = retrain("--arch", str(best), "--config", str(config), "--out", str(out))
    assert r.returncode == 0, r.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["arch"] == ARCH and result["pretrained"] is True
    assert result["body_flops"] == 288082368
    assert set(result["test"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert "AP50" in r.stdout  # the metrics table
    # the detector started from the standalone network's own pretraining: its first-step weights
    # differ from a fresh init, and the checkpoint is a standalone (not supernet) network of ARCH
    ckpt = load_checkpoint(out / "detector" / "checkpoint.pt", "retrain")
    assert ckpt["arch"] == ARCH
    assert not any(".blocks.0.1." in k for k in ckpt["model"])  # one choice per position
    pre = load_checkpoint(out / "pretrain" / "checkpoint.pt", "retrain-pretrain")
    assert pre["arch"] == ARCH

    # rerun with --resume: both steps are finished, nothing trains again, same result
    again = retrain("--arch", ARCH, "--config", str(config), "--out", str(out), "--resume")
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "result.json").read_text())["test"] == result["test"]
    assert "done" not in again.stdout


def test_baseline_from_scratch(config, tmp_path):
    out = tmp_path / "run"
    r = retrain("--arch", "shufflenetv2-20", "--config", str(config), "--out", str(out), "--no-pretrain")
    assert r.returncode == 0, r.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["arch"] == "0" * 20 and result["pretrained"] is False
    assert not (out / "pretrain").exists()
    state = torch.load(out / "detector" / "checkpoint.pt", weights_only=True)
    assert state["stage"] == "retrain" and state["step"] == 2


@pytest.mark.parametrize(
    "arch, message",
    [
        ("detnasnet-1.3g", "belongs to the large space"),
        ("missing.json", "architecture file not found"),
        ("0123", "has 4 blocks"),
    ],
)
def test_bad_architectures_are_one_line_errors(config, tmp_path, arch, message):
    r = retrain("--arch", arch, "--config", str(config), "--out", str(tmp_path / "run"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr


def test_search_result_of_another_space_is_refused(config, tmp_path):
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"arch": "0" * 40, "space": "large", "width_mult": 1.0}))
    r = retrain("--arch", str(best), "--config", str(config), "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and "is for space large" in r.stderr and str(best) in r.stderr


def test_inherit_starts_from_the_supernet_path_and_skips_pretraining(config, tmp_path):
    """With ``supernet:`` the standalone detector starts as the supernet's extracted path (backbone,
    FPN, heads) and is finetuned alone; no classification pretraining."""
    from detnas.config.schema import RetrainConfig
    from detnas.model.detector import build_detector, extract_detector
    from detnas.model.space import get_space, parse_arch
    from detnas.model.supernet import ShuffleNetBackbone
    from detnas.stages.jobs import finetune_job
    from detnas.strict import validate

    raw = yaml.safe_load(config.read_text())
    raw.pop("pretrain")
    finetune_cfg = tmp_path / "finetune.yaml"
    finetune_cfg.write_text(yaml.safe_dump({**raw, "data": {**raw["data"], "holdout": {"size": 2}},
                                            "eval": {"archs": ["0" * 20], "recalib_images": 4, "batch_size": 4}}))
    supernet_dir = tmp_path / "finetune"
    r = run_here("finetune", "--config", str(finetune_cfg), "--out", str(supernet_dir))
    assert r.returncode == 0, r.stderr

    cfg = validate(RetrainConfig, {**raw, "supernet": str(supernet_dir)}, "test")
    space = get_space("small")
    arch = parse_arch(ARCH, space)
    job = finetune_job(cfg, tmp_path / "unused", arch, supernet_dir / "checkpoint.pt")
    ckpt = load_checkpoint(supernet_dir / "checkpoint.pt", "finetune")
    supernet = build_detector(ShuffleNetBackbone(space), 1, cfg.detector)
    supernet.load_state_dict(ckpt["model"])
    expected = extract_detector(supernet, arch, 1, cfg.detector).state_dict()
    got = job.model.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)

    # a supernet started from the finetuned one (a few-shot sub-supernet) takes every weight of it
    from detnas.config.schema import FinetuneConfig
    from detnas.stages.train import path_for_step

    sub = validate(FinetuneConfig, {**yaml.safe_load(finetune_cfg.read_text()), "init": str(supernet_dir / "checkpoint.pt"),
                                    "sampling": {"prefix": [2], "max_flops": 300e6}}, "test")
    got = finetune_job(sub, tmp_path / "sub").model.state_dict()
    assert got.keys() == ckpt["model"].keys() and all(torch.equal(got[k], ckpt["model"][k]) for k in got)
    paths = [path_for_step(space, sub.seed, step, sub.sampling) for step in range(50)]
    assert {p[0] for p in paths} == {2} and len({p[1:] for p in paths}) == 50

    inherit_cfg = tmp_path / "inherit.yaml"
    inherit_cfg.write_text(yaml.safe_dump({**raw, "supernet": str(supernet_dir)}))
    out = tmp_path / "run"
    r = retrain("--arch", ARCH, "--config", str(inherit_cfg), "--out", str(out))
    assert r.returncode == 0, r.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["inherited"] is True and result["pretrained"] is False
    assert not (out / "pretrain").exists()

    # a supernet start and a pretraining are two different recipes: one line, not both
    both = tmp_path / "both.yaml"
    both.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "supernet": str(supernet_dir)}))
    r = retrain("--arch", ARCH, "--config", str(both), "--out", str(tmp_path / "both"))
    assert r.returncode == 2 and "leave pretrain and init unset" in r.stderr and "Traceback" not in r.stderr


def test_an_inherited_retraining_is_not_pretrained_again():
    from detnas.config.schema import RetrainRecipe
    from detnas.errors import UserError
    from detnas.strict import validate

    schedule = {"iters": 10, "batch_size": 2, "lr": 0.01}
    assert validate(RetrainRecipe, {"inherit": True, "train": schedule}, "cfg").inherit
    with pytest.raises(UserError, match="an inherited network is not pretrained again"):
        validate(RetrainRecipe, {"inherit": True, "pretrain": schedule, "train": schedule}, "cfg")
