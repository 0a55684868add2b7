"""Every stage command reads its config one way: a file or a packaged name (a pipeline config gives the
stage's part, the same that ``detnas pipeline`` runs), ``--set`` on top, ``--data-root``; an error in
an override names the override; ``detnas config show|template`` print what a config holds; and the
command line's polish (``--version``, bare flags, help text that rich would have mangled)."""

from __future__ import annotations

import inspect
from importlib.metadata import version

import pytest
import yaml

from cli_checks import one_line_error
from detnas.config.loader import Override, load_config, packaged_configs
from detnas.config.schema import FinetuneConfig, PipelineConfig
from detnas.config.stages import STAGE_SCHEMAS
from detnas.config.template import REQUIRED, defaults

STAGES = ["pipeline", "pretrain", "finetune", "search", "retrain", "rank-check", "evaluate"]
SHARED = ["--config", "--set", "--data-root", "--imagenet", "--dry-run", "--estimate-steps"]


@pytest.fixture
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps help text at the terminal's width


def coco_small(**sets) -> PipelineConfig:
    overrides = [Override(k, v, k) for k, v in sets.items()]
    return load_config(packaged_configs()["coco-fpn-small"], PipelineConfig, overrides,
                       {"data_root": "D", "imagenet": "D/imagenet"})


def show(cli_here, *args) -> dict:
    return yaml.safe_load(cli_here("config", "show", *args).stdout)


def test_every_stage_command_has_the_shared_config_options(cli_here, wide):
    assert set(STAGES) == set(STAGE_SCHEMAS)
    for stage in STAGES:
        text = cli_here(stage, "--help").stdout
        for option in SHARED:
            assert option in text, f"detnas {stage} lacks {option}"


def test_a_pipeline_config_gives_each_stage_the_part_the_pipeline_runs(cli_here):
    common = ("--config", "coco-fpn-small", "--data-root", "D", "--set", "finetune.lr=0.01")
    cfg = coco_small(**{"finetune.lr": 0.01})
    assert show(cli_here, "finetune", *common) == cfg.finetune_config(None).model_dump(mode="json")
    assert show(cli_here, "finetune", *common)["train"]["lr"] == 0.01
    pre = show(cli_here, "pretrain", *common)
    assert pre == cfg.pretrain_config().model_dump(mode="json")
    assert (pre["train"]["batch_size"], pre["train"]["lr_batch"], pre["data"]["train"]) == (128, 1024,
                                                                                            "D/imagenet/train")
    search = show(cli_here, "search", *common, "--supernet", "S")
    assert search == cfg.search_config("S", "evolution").model_dump(mode="json")
    assert (search["supernet"], search["search"]["max_flops"], search["fitness"]["recalib_images"]) == ("S", 3e8, 4000)
    retrain = show(cli_here, "retrain", *common)
    assert retrain["pretrain"]["train"]["iters"] == 300000 and retrain["train"]["lr"] == 0.02
    assert retrain["data"]["holdout"]["size"] == 0  # a retrained network trains on the whole training set
    evaluate = show(cli_here, "evaluate", *common)
    assert evaluate["data"]["annotations"] == "D/annotations/instances_val2017.json" and evaluate["batch_size"] == 8
    rank = show(cli_here, "rank-check", *common, "--supernet", "S")
    assert rank["supernet"] == "S" and rank["retrain"] == retrain


def test_a_stage_config_file_takes_set_and_supernet(cli_here, tmp_path):
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({"supernet": "runs/a/finetune", "search": {"max_flops": 2.9e8}}))
    cfg = show(cli_here, "search", "--config", path, "--set", "search.population=60", "--set", "fitness.batch_size=4")
    assert (cfg["supernet"], cfg["search"]["population"], cfg["search"]["max_flops"]) == ("runs/a/finetune", 60, 2.9e8)
    assert cfg["fitness"]["batch_size"] == 4 and cfg["search"]["generations"] == 20  # the rest: defaults
    assert show(cli_here, "search", "--config", path, "--supernet", "other")["supernet"] == "other"


@pytest.mark.parametrize("setting, expect", [
    ("finetune.lr=abc", ["--set finetune.lr=abc: finetune.lr:", "valid number"]),
    ("finetune.lrr=1", ["--set finetune.lrr=1: unknown key 'finetune.lrr'"]),
    ("search.topk=60", ["--set search.topk=60: search: topk (60) must not exceed population (50)"]),
    ("seed.x=1", ["--set seed.x=1: seed is a value, not a section"]),
    ("detection.holdout.size=0", ["--set detection.holdout.size=0: detection.holdout.size must be at least 1"]),
    ("search.max_flops", ["--set takes KEY=VALUE"]),
])
def test_an_error_in_an_override_names_the_override_not_the_file(setting, expect, cli_here, tmp_path):
    for stage in ("finetune", "pipeline"):
        r = cli_here(stage, "--config", "coco-fpn-small", "--data-root", tmp_path, "--set", setting,
                     "--out", tmp_path / "run", "--dry-run", check=False)
        line = one_line_error(r, *expect)
        assert "coco-fpn-small.yaml" not in line
    assert not (tmp_path / "run").exists()


def test_an_error_in_the_file_still_names_the_file(cli_here, tmp_path):
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump({"data": {"train": {"annotations": "a.json", "images": "i"}},
                                    "train": {"iters": 0, "batch_size": 2, "lr": 0.1}}))
    one_line_error(cli_here("finetune", "--config", path, "--set", "train.lr=0.2", "--dry-run", check=False),
                   f"{path}: train.iters:")


def test_what_a_stage_needs_beside_a_pipeline_config_is_asked_for(cli_here, tmp_path):
    for stage in ("search", "rank-check"):
        args = ["--supernet", tmp_path] if stage == "rank-check" else []
        if stage == "search":
            one_line_error(cli_here(stage, "--config", "coco-fpn-small", "--data-root", tmp_path, "--dry-run",
                                    check=False), "give the finetuned one to search with --supernet DIR")
        else:
            one_line_error(cli_here(stage, "--config", "coco-fpn-small", "--data-root", tmp_path, *args,
                                    "--seeds", "0", "--dry-run", check=False),
                           "--seeds 0: rank_check.seeds 0 retrains nothing")
    one_line_error(cli_here("retrain", "--config", "coco-fpn-small", "--data-root", tmp_path, "--arch",
                            "shufflenetv2-20", "--supernet", tmp_path, "--dry-run", check=False),
                   "retrain.inherit is false")
    one_line_error(cli_here("finetune", "--config", "coco-fpn-tiny", check=False), "config file not found",
                   "coco-fpn-small")


def test_config_show_prints_the_defaults_and_template_every_key(cli_here):
    for stage, model in STAGE_SCHEMAS.items():
        shown = show(cli_here, stage)
        assert shown == defaults(model) and list(shown) == list(model.model_fields)
        text = cli_here("config", "template", stage).stdout
        assert yaml.safe_load(text) == shown  # the same values, with comments
    text = cli_here("config", "template", "pipeline").stdout
    # an optional section defaults to none: its keys are shown commented out, with their meaning
    assert "classification: null\n# classification:\n#   # REQUIRED\n#   train: REQUIRED" in text
    assert "DetNAS-scratch" in text and "# fpn | retinanet\n  kind: fpn" in text
    assert "# the whole batch (all workers) lr was set for" in text
    # the template, its REQUIRED keys filled in, is a valid config with the schema's defaults
    filled = yaml.safe_load(cli_here("config", "template", "finetune").stdout)
    filled["data"]["train"].update(annotations="a.json", images="imgs")
    filled["train"].update(iters=10, batch_size=2, lr=0.1)
    assert REQUIRED not in yaml.safe_dump(filled)
    assert FinetuneConfig.model_validate(filled) == FinetuneConfig.model_validate(
        {"data": {"train": {"annotations": "a.json", "images": "imgs"}}, "train": {"iters": 10, "batch_size": 2,
                                                                                   "lr": 0.1}})
    one_line_error(cli_here("config", "show", "pretraining", check=False), "unknown stage 'pretraining'")


def test_version_and_bare_flags(cli_here, wide, tmp_path):
    assert cli_here("--version").stdout.strip() == (
        f"detnas {version('detnas')} (torch {version('torch')}, torchvision {version('torchvision')})")
    for stage in ("pretrain", "retrain", "pipeline"):
        for line in cli_here(stage, "--help").stdout.splitlines():
            if any(f in line for f in ("--resume", "--dry-run", "--no-pretrain")):
                assert "<bool>" not in line, line  # a flag takes no value
    # --resume is a bare flag: given before or after other options, it parses (the dry run then checks the data)
    r = cli_here("finetune", "--resume", "--config", "coco-fpn-small", "--data-root", tmp_path, "--dry-run",
                 check=False)
    one_line_error(r, "instances_train2017.json")


def test_help_text_is_shown_as_written(cli_here, wide):
    assert "pip install 'detnas[export]'" in cli_here("export", "--help").stdout  # rich markup ate [export]
    listing = cli_here("--help").stdout.splitlines()
    from detnas.cli import app

    for command in app.registered_commands:
        name = command.name or command.callback.__name__
        first = " ".join(inspect.getdoc(command.callback).split("\n\n")[0].split())
        rows = [line for line in listing if line.strip("│ ").startswith(name + " ")]
        assert len(rows) == 1 and first in rows[0], (name, first, rows)  # one line, not broken mid-sentence


def test_counts_are_singular_for_one():
    from detnas.cli.artifacts import _count

    assert (_count(1, "detection"), _count(0, "detection"), _count(3, "image")) == (
        "1 detection", "0 detections", "3 images")
