"""Damaged files (issue 9): bytes flipped in the middle of every kind of checkpoint we write (pretrain,
finetune, retrain) and of an exported safetensors file are a one-line error naming the file, from
resume, evaluate, search, export and ``detnas.backbone``; torch itself would load them silently."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

import detnas
from cli_checks import one_line_error
from data_builders import TINY_DETECTOR, make_coco, make_image_folder
from detnas.artifacts.export import export_model
from detnas.checkpoint import FORMAT, VERSION, load_checkpoint, save_checkpoint
from detnas.errors import UserError
from detnas.model.detector import DetectorConfig, build_detector
from detnas.model.space import get_space
from detnas.model.supernet import ShuffleNetBackbone

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
ALL0 = "0" * 20
SMALL = {"space": "small", "width_mult": 1.0}
DETECTOR = DetectorConfig(**{**TINY_DETECTOR, "min_size": 48})
DAMAGED = "checkpoint is damaged"


def flip_middle(path: Path) -> Path:
    """Invert 16 bytes in the middle of ``path`` (inside the tensor data of a weights file)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 16] = bytes(b ^ 0xFF for b in data[mid:mid + 16])
    path.write_bytes(bytes(data))
    return path


def write_yaml(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """A real pretraining run, and finetune (supernet) and retrain checkpoints as those stages write them."""
    from detnas.cli import main

    root = tmp_path_factory.mktemp("integrity")
    make_image_folder(root / "cls", classes=("a", "b"), per_class=2, size=32, mode="RGB")
    ann, images = make_coco(root / "coco", n_images=4)
    pre_cfg = {"data": {"train": str(root / "cls"), "val": str(root / "cls"), "image_size": 32},
               "train": {"iters": 2, "batch_size": 2, "lr": 0.01}, "logging": {"progress": False},
               "eval": {"archs": [ALL0], "recalib_images": 2, "batch_size": 2}}
    main(["pretrain", "--config", str(write_yaml(root / "pre.yaml", pre_cfg)), "--out", str(root / "pretrain")])
    ft_cfg = {"data": {"train": {"annotations": str(ann), "images": str(images)}, "holdout": {"size": 1}},
              "detector": DETECTOR.model_dump(), "train": {"iters": 2, "batch_size": 2, "lr": 0.01},
              "logging": {"progress": False}}
    torch.manual_seed(0)
    supernet = build_detector(ShuffleNetBackbone(get_space("small")), 2, DETECTOR)
    save_checkpoint(root / "finetune" / "checkpoint.pt", {
        "stage": "finetune", "space": SMALL, "classes": ["cat", "dog"], "config": ft_cfg, "step": 1,
        "model": supernet.state_dict()})
    retrained = build_detector(ShuffleNetBackbone(get_space("small"), (0,) * 20), 2, DETECTOR)
    save_checkpoint(root / "retrain" / "checkpoint.pt", {
        "stage": "retrain", "space": SMALL, "arch": ALL0, "classes": ["cat", "dog"],
        "config": {"detector": DETECTOR.model_dump()}, "model": retrained.state_dict(), "step": 2})
    return {"root": root, "ann": ann, "images": images, "pre_cfg": pre_cfg, "ft_cfg": ft_cfg}


def damaged_copy(files: dict, run: str, tmp_path: Path) -> Path:
    """A copy of the run folder ``run`` whose checkpoint has bytes flipped; returns the checkpoint."""
    shutil.copytree(files["root"] / run, tmp_path / run)
    ckpt = flip_middle(tmp_path / run / "checkpoint.pt")
    torch.load(ckpt, map_location="cpu", weights_only=True)  # torch does not notice
    return ckpt


def test_intact_checkpoints_load_and_old_ones_without_a_checksum_too(files, tmp_path):
    for run in ("pretrain", "finetune", "retrain"):
        assert load_checkpoint(files["root"] / run / "checkpoint.pt")["stage"] == run
    old = tmp_path / "old.pt"
    torch.save({"format": FORMAT, "version": VERSION, "stage": "retrain", "model": {"w": torch.ones(3)}}, old)
    assert load_checkpoint(old)["stage"] == "retrain"


def test_resume_from_a_damaged_pretrain_checkpoint(files, tmp_path, cli_here):
    ckpt = damaged_copy(files, "pretrain", tmp_path)
    before = ckpt.read_bytes()
    config = write_yaml(tmp_path / "pre.yaml", files["pre_cfg"])
    one_line_error(cli_here("pretrain", "--config", config, "--out", ckpt.parent, "--resume", check=False),
                   str(ckpt), DAMAGED)
    assert ckpt.read_bytes() == before  # nothing lost


def test_finetune_from_a_damaged_pretrain_checkpoint(files, tmp_path, cli_here):
    ckpt = damaged_copy(files, "pretrain", tmp_path)
    config = write_yaml(tmp_path / "ft.yaml", {**files["ft_cfg"], "init": str(ckpt)})
    one_line_error(cli_here("finetune", "--config", config, "--out", tmp_path / "out", check=False), str(ckpt), DAMAGED)
    assert not (tmp_path / "out").exists()


def test_resume_and_search_from_a_damaged_finetune_checkpoint(files, tmp_path, cli_here):
    ckpt = damaged_copy(files, "finetune", tmp_path)
    config = write_yaml(tmp_path / "ft.yaml", files["ft_cfg"])
    one_line_error(cli_here("finetune", "--config", config, "--out", ckpt.parent, "--resume", check=False),
                   str(ckpt), DAMAGED)
    search = write_yaml(tmp_path / "search.yaml", {"supernet": str(ckpt.parent), "search": {"max_flops": 300e6}})
    one_line_error(cli_here("search", "--config", search, "--out", tmp_path / "s", check=False), str(ckpt), DAMAGED)
    assert not (tmp_path / "s").exists()


def test_evaluate_and_export_a_damaged_retrained_checkpoint(files, tmp_path, cli_here):
    ckpt = damaged_copy(files, "retrain", tmp_path)
    one_line_error(cli_here("evaluate", "--checkpoint", ckpt, "--coco-annotations", files["ann"],
                            "--images", files["images"], check=False), str(ckpt), DAMAGED)
    one_line_error(cli_here("export", "--checkpoint", ckpt, "--out", tmp_path / "e", check=False), str(ckpt), DAMAGED)
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("name", ["backbone.safetensors", "detector.safetensors"])
def test_a_damaged_exported_weights_file(files, tmp_path, name):
    out = tmp_path / "export"
    export_model(files["root"] / "retrain" / "checkpoint.pt", out)
    detnas.backbone(out / "arch.json", weights=out / name)  # intact: loads
    flip_middle(out / name)
    with pytest.raises(UserError) as e:
        detnas.backbone(out / "arch.json", weights=out / name)
    assert str(out / name) in str(e.value) and "damaged" in str(e.value) and "\n" not in str(e.value)
