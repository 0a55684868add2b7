"""Bad configs and data a user may hand us (issue 9): each goes through the CLI and must give exit code
2, one line naming the file or the config key and the problem, no traceback, and nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cli_checks import one_line_error
from data_builders import make_coco, make_image_folder

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
ALL0 = "0" * 20


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad_inputs")
    make_image_folder(root / "cls", classes=("a", "b"), per_class=3, size=32, mode="RGB")
    make_coco(root / "coco", n_images=6)
    make_coco(root / "empty", n_images=3, objects={})
    return root


def pretrain(data: Path) -> dict:
    return {"data": {"train": str(data / "cls"), "val": str(data / "cls"), "image_size": 32},
            "train": {"iters": 1, "batch_size": 2, "lr": 0.01}, "logging": {"progress": False}}


def finetune(data: Path, coco: str = "coco") -> dict:
    source = {"annotations": str(data / coco / "annotations.json"), "images": str(data / coco / "images")}
    return {"data": {"train": source}, "detector": {"min_size": 48, "max_size": 64},
            "train": {"iters": 1, "batch_size": 2, "lr": 0.01}, "logging": {"progress": False}}


def search(data: Path) -> dict:
    return {"supernet": str(data / "nowhere"), "search": {"max_flops": 300e6}}


def pipeline(data: Path) -> dict:
    ft = finetune(data)
    return {"detection": {**ft["data"], "holdout": {"size": 2}}, "finetune": ft["train"],
            "retrain": {"train": ft["train"]}}


def empty(data: Path) -> dict:
    return {}


def with_values(cfg: dict, values: dict) -> dict:
    """``cfg`` with each dotted key of ``values`` set."""
    for dotted, value in values.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return cfg


# (stage, config builder, bad values by dotted key, words the error line must hold)
CASES = {
    "batch of one": ("pretrain", pretrain, {"train.batch_size": 1}, ["train.batch_size", "at least 2", "BatchNorm"]),
    "min_size > max_size": ("finetune", finetune, {"detector.min_size": 100},
                            ["detector: min_size 100 is larger than max_size 64"]),
    "eval arch of the wrong length": ("pretrain", pretrain, {"eval.archs": [ALL0, "0123"]},
                                      ["eval.archs[1]", "4 blocks", "small space has 20"]),
    "eval arch of the other space": ("finetune", finetune, {"space": "large", "eval.archs": [ALL0]},
                                     ["eval.archs[0]", "large space"]),
    "eval arch in a pipeline": ("pipeline", pipeline, {"eval.archs": ["0129" * 5]}, ["eval.archs[0]", "9"]),
    "infinite lr": ("pretrain", pretrain, {"train.lr": float("inf")}, ["train.lr", "finite"]),
    "NaN lr": ("finetune", finetune, {"train.lr": float("nan")}, ["train.lr", "finite"]),
    "NaN in a list": ("finetune", finetune, {"train.decay": "step", "train.milestones": [float("nan")]},
                      ["train.milestones.0", "finite"]),
    "NaN budget": ("search", search, {"search.max_flops": float("nan")}, ["search.max_flops", "finite"]),
    "infinite detector threshold": ("finetune", finetune, {"detector.score_thresh": float("inf")},
                                    ["detector.score_thresh", "finite"]),
    "unknown key in an incomplete config": ("pretrain", empty, {"trian.iters": 3}, ["unknown key 'trian'"]),
    "wrong type in an incomplete config": ("finetune", empty, {"train.iters": "many"}, ["train.iters", "integer"]),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_config_is_refused_before_anything_is_written(case, data, tmp_path, cli_here):
    stage, build, values, words = CASES[case]
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(with_values(build(data), values)))  # .inf, .nan
    out = tmp_path / "out"
    line = one_line_error(cli_here(stage, "--config", config, "--out", out, check=False), str(config), *words)
    assert "Field required" not in line
    assert not out.exists()


def test_global_batch_larger_than_the_training_set(data, tmp_path, cli_here):
    cfg = with_values(finetune(data), {"train.batch_size": 7})
    config = tmp_path / "ft.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    one_line_error(cli_here("finetune", "--config", config, "--out", out, check=False),
                   "6 training images are fewer than one global batch", "train.batch_size 7 x 1 workers")
    assert not out.exists()


def test_a_training_set_without_boxes_is_refused(data, tmp_path, cli_here):
    config = tmp_path / "ft.yaml"
    config.write_text(yaml.safe_dump(finetune(data, coco="empty")))
    out = tmp_path / "out"
    one_line_error(cli_here("finetune", "--config", config, "--out", out, check=False),
                   str(data / "empty" / "annotations.json"), "3 images and 0 boxes")
    assert not out.exists()
