"""Tracking: TensorBoard gets the loss parts, lr, throughput, the final evaluation's metrics, the
search's fitness per generation and its Pareto front; ``logging.wandb`` mirrors them offline."""

from __future__ import annotations

import json
import time

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from data_builders import coco_source, finetune_cfg, make_coco
from detnas.config.runs import LOG_FILE
from detnas.stages.tracking import LossParts, Tracker, log_search, numeric_leaves

RPN_AND_BOX = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_loss_parts_are_means_between_log_lines():
    parts = LossParts()
    parts.add({"a": torch.tensor(1.0), "b": torch.tensor(4.0)})
    parts.add({"a": torch.tensor(3.0), "b": torch.tensor(0.0)})
    assert parts.take_means() == {"a": 2.0, "b": 2.0} and parts.take_means() == {}
    assert numeric_leaves({"split": "test", "map": {"00": {"AP": 0.5, "seconds_x": 2.0}}, "chance": 0.25}) == {
        "map/00/AP": 0.5, "chance": 0.25}


def test_finetuning_logs_its_loss_parts_and_final_metrics(tmp_path, cli_here):
    config = tmp_path / "ft.yaml"
    config.write_text(yaml.safe_dump(finetune_cfg(coco_source(*make_coco(tmp_path / "coco", n_images=6)))))
    cli_here("finetune", "--config", config, "--out", tmp_path / "run")
    logged = scalars(tmp_path / "run" / "tensorboard")
    for tag in [f"finetune/loss/{p}" for p in RPN_AND_BOX] + ["finetune/loss", "finetune/lr", "finetune/images_per_s"]:
        assert [s for s, _ in logged[tag]] == [1, 2, 3, 4, 5], tag
    # the parts add up to the loss, at every log line (JSONL and TensorBoard alike)
    lines = [json.loads(line) for line in (tmp_path / "run" / LOG_FILE).read_text().splitlines()]
    for record in (r for r in lines if "step" in r):
        assert sum(record[f"loss/{p}"] for p in RPN_AND_BOX) == pytest.approx(record["loss"], rel=1e-5)
    assert logged["finetune/loss"][-1][1] == pytest.approx(lines[-2]["loss"], rel=1e-5)
    final = lines[-1]["final"]["map"]["0" * 20]
    assert logged[f"finetune/eval/map/{'0' * 20}/AP"] == [(5, pytest.approx(final["AP"], abs=1e-6))]


def test_the_search_logs_fitness_per_generation_and_its_pareto_front(tmp_path):
    history = [
        {"arch": "a", "map": 0.10, "flops": 200e6, "generation": 0},
        {"arch": "b", "map": 0.30, "flops": 300e6, "generation": 0},
        {"arch": "c", "map": 0.20, "flops": 150e6, "generation": 1},
        {"arch": "d", "map": 0.05, "flops": 100e6, "generation": 1},
        {"arch": "e", "map": 0.40, "flops": 400e6, "generation": 2},
    ]
    log_search(tmp_path, history)
    logged = scalars(tmp_path / "tensorboard")
    approx = pytest.approx
    assert logged["search/best_map"] == [(0, approx(0.3)), (1, approx(0.3)), (2, approx(0.4))]
    assert logged["search/mean_map"] == [(0, approx(0.2)), (1, approx(0.125)), (2, approx(0.4))]
    assert logged["search/evaluated"] == [(0, 2), (1, 2), (2, 1)]
    # a (200M, 0.10) is beaten by c (150M, 0.20): the front is d, c, b, e by increasing FLOPs
    assert logged["search/pareto_map"] == [(100, approx(0.05)), (150, approx(0.2)), (300, approx(0.3)),
                                           (400, approx(0.4))]


def test_wandb_offline_mirrors_the_scalars_and_the_config(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")  # no network, whatever the settings say
    out = tmp_path / "run"
    out.mkdir()
    parts = LossParts()
    config = {"seed": 11, "logging": {"wandb": {"project": "p", "mode": "offline"}}}
    tracker = Tracker(out, "finetune", 10, parts, config)
    with SummaryWriter(str(out / "tensorboard")) as tb:
        tracker.open(tb)
        parts.add({"loss_classifier": torch.tensor(0.75)})
        tracker.mirror(1, tracker.with_parts({"loss": 1.5, "lr": 0.02}))
        tracker.final({"split": "test", "metrics": {"AP": 0.125}})
        tracker.close()
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    for _ in range(60):  # W&B's own process writes the file; under load it may still be flushing
        data = runs[0].read_bytes()
        if b"finetune/eval/metrics/AP" in data:
            break
        time.sleep(0.5)
    for text in (b"finetune/loss/loss_classifier", b"0.75", b"finetune/lr", b"finetune/eval/metrics/AP", b"0.125",
                 b"seed"):
        assert text in data, text
    assert scalars(out / "tensorboard")["finetune/eval/metrics/AP"] == [(10, 0.125)]
