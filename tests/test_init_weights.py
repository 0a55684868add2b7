"""``init:`` of the pretraining and finetuning configs: a detnas export, one of our checkpoints or the
DetNAS authors' layout become the starting weights of the stage's backbone; bad files are one line."""

from __future__ import annotations

import pytest
import torch
import yaml

from cli_checks import one_line_error
from data_builders import coco_source, finetune_cfg, make_coco, make_image_folder
from detnas.artifacts import authors_layout as A
from detnas.artifacts.export import _save_safetensors
from detnas.artifacts.init_weights import load_init
from detnas.checkpoint import save_checkpoint
from detnas.config.schema import FinetuneConfig, PretrainConfig
from detnas.errors import UserError
from detnas.model.space import get_space, parse_arch
from detnas.model.supernet import ShuffleNetBackbone, path_state
from detnas.stages.jobs import finetune_job, pretrain_job
from test_authors_weights import COCO_FPN_300M, save, their_state

SMALL = get_space("small")
ARCH = parse_arch(COCO_FPN_300M)


def test_finetuning_starts_from_the_authors_supernet(tmp_path):
    """The supernet detector's body holds their weights: the stem as is, a block's inner depthwise conv
    too, its first pointwise conv with the input columns renumbered."""
    sd = their_state("detnas", SMALL, None, supernet=True)
    path = save(tmp_path / "COCO_FPN_300M_supernet.pkl", sd, "state_dict", "module.")
    cfg = FinetuneConfig(**finetune_cfg(coco_source(*make_coco(tmp_path / "coco", n_images=4)), init=path))
    body = finetune_job(cfg, tmp_path / "run").model.backbone.body
    torch.testing.assert_close(body.stem[0].weight, sd["first_conv.conv.weight"])
    torch.testing.assert_close(body.stem[1].running_mean, sd["first_conv.bn.running_mean"] - sd["first_conv.conv.bias"])
    orders, _end, _, _ = A.stage_orders(SMALL, view_transpose=True)
    torch.testing.assert_close(  # stage 3, block 10, choice 1: a 5x5 depthwise conv of the branch's mid channels
        body.blocks[10][1].branch[1][0].weight, sd["features.10.1.conv.1.interstellar3c_shufflenet_5x5_branch2b_s.weight"])
    torch.testing.assert_close(  # its first pointwise conv reads their columns in our channel order
        body.blocks[10][1].branch[0][0].weight,
        sd["features.10.1.conv.0.interstellar3c_shufflenet_5x5_branch2a.weight"][:, orders[10]["in"]])


def test_pretraining_starts_from_a_released_model_with_a_fresh_classifier(tmp_path):
    sd = their_state("detnas", SMALL, ARCH, supernet=False)
    path = save(tmp_path / "COCO_FPN_300M.pkl", sd)
    data = {"train": str(make_image_folder(tmp_path / "train")), "val": str(make_image_folder(tmp_path / "val"))}
    cfg = PretrainConfig(init=path, data=data, train={"iters": 2, "batch_size": 2, "lr": 0.1})
    model = pretrain_job(cfg, ARCH).model
    torch.testing.assert_close(model.blocks[0][0].proj[0][0].weight, sd["features.0.proj_conv.interstellar1a_proj_s.weight"])
    torch.testing.assert_close(model.head[0][0].weight, sd["last_conv.conv.weight"])
    assert model.head[4].weight.shape == (2, 1024)  # two classes here: its own, fresh


def test_an_export_starts_its_architecture_only(tmp_path):
    source = ShuffleNetBackbone(SMALL, ARCH)
    path = tmp_path / "backbone.safetensors"
    _save_safetensors(path, {f"body.{k}": v for k, v in source.state_dict().items()},
                      {"arch": COCO_FPN_300M, "space": "small", "width_mult": "1.0"})
    model = ShuffleNetBackbone(SMALL, ARCH)
    load_init(model, path)
    for (key, a), b in zip(model.state_dict().items(), source.state_dict().values()):
        assert torch.equal(a, b), key
    with pytest.raises(UserError, match=f"export is architecture {COCO_FPN_300M}, not 0000"):
        load_init(ShuffleNetBackbone(SMALL, (0,) * 20), path)
    with pytest.raises(UserError, match="supernet needs every choice"):
        load_init(ShuffleNetBackbone(SMALL), path)


def test_a_path_of_our_supernet_checkpoint(tmp_path):
    supernet = ShuffleNetBackbone(SMALL, num_classes=3)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"stage": "pretrain", "space": {"space": "small", "width_mult": 1.0},
                           "model": supernet.state_dict()})
    model = ShuffleNetBackbone(SMALL, ARCH)
    load_init(model, path)
    expected = {k: v for k, v in path_state(supernet.state_dict(), ARCH).items() if not k.startswith("head.")}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
    with pytest.raises(UserError, match="for space large.*this run uses .*small"):
        load_init(ShuffleNetBackbone(SMALL), save_large(tmp_path))


def save_large(tmp_path):
    path = tmp_path / "large.pt"
    save_checkpoint(path, {"stage": "pretrain", "space": {"space": "large", "width_mult": 1.0}, "model": {}})
    return path


def test_a_bad_init_file_is_one_line_and_writes_nothing(tmp_path, cli_here):
    sd = their_state("detnas", SMALL, ARCH, supernet=False)
    sd["features.2.conv.1.bn1c_shufflenet_7x7_branch2b.running_var"] = torch.ones(7)
    path = save(tmp_path / "bad.pkl", sd)
    config = tmp_path / "ft.yaml"
    config.write_text(yaml.safe_dump(finetune_cfg(coco_source(*make_coco(tmp_path / "coco")), init=path)))
    # a supernet from a standalone model: refused before the shapes
    one_line_error(cli_here("finetune", "--config", config, "--out", tmp_path / "out", check=False),
                   str(path), "cannot start a supernet")
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError) as e:
        load_init(ShuffleNetBackbone(SMALL, ARCH), path)
    assert "features.2.conv.1.bn1c_shufflenet_7x7_branch2b.running_var" in str(e.value) and "(7,)" in str(e.value)
