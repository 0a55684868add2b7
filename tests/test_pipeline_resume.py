"""Rerunning an interrupted pipeline (issue 9): it says which stages it skips as finished and where the
interrupted one resumes, and the stage times count the attempt before the interruption."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from detnas.checkpoint import save_checkpoint
from detnas.config.runs import FINISHED_MARKERS
from detnas.config.runs import PIPELINE_FILE as STATE_FILE
from detnas.stages.lanes import Stage
from detnas.stages.pipeline import _Stages


def test_skipped_and_resumed_stages_are_named(tmp_path, capsys):
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / FINISHED_MARKERS[0]).write_text("{}")
    save_checkpoint(tmp_path / "finetune" / "checkpoint.pt", {"stage": "finetune", "step": 120, "w": torch.ones(2)})
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "search_state.json").write_text(json.dumps({"generation": 2}))
    stages, ran = _Stages(tmp_path), []
    for name, folder in (("pretrain", "pretrain"), ("finetune", "finetune"), ("search (evolution)", "search"),
                         ("retrain (searched)", "retrain")):
        stages.run(Stage(name, tmp_path / folder, lambda folder=folder: ran.append(folder)))
    assert ran == ["finetune", "search", "retrain"]
    assert capsys.readouterr().out.splitlines() == [
        "pipeline: pretrain finished earlier, skipped",
        f"pipeline: finetune resumes at step 120 ({tmp_path / 'finetune' / 'checkpoint.pt'})",
        f"pipeline: search (evolution) resumes after generation 2 ({tmp_path / 'search' / 'search_state.json'})",
    ]


def test_an_interrupted_attempt_counts_up_to_its_last_written_file(tmp_path):
    stages = _Stages(tmp_path)

    def killed():
        (tmp_path / "finetune").mkdir()
        log = tmp_path / "finetune" / "log.jsonl"
        log.write_text("{}\n")
        started = stages.state["running"]["finetune"]["started"]
        os.utime(log, (started + 100, started + 100))  # as if it had trained for 100 s
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stages.run(Stage("finetune", tmp_path / "finetune", killed))
    assert list(json.loads((tmp_path / STATE_FILE).read_text())["running"]) == ["finetune"]
    rerun = _Stages(tmp_path)
    rerun.run(Stage("finetune", tmp_path / "finetune", lambda: time.sleep(0.01)))
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert "running" not in state and 100 < state["seconds"]["finetune"] < 110


def test_an_interrupted_stage_recorded_by_the_previous_version_counts_too(tmp_path):
    (tmp_path / "search").mkdir()
    started = time.time() - 1000
    (tmp_path / "search" / "history.jsonl").write_text("{}\n")
    os.utime(tmp_path / "search" / "history.jsonl", (started + 50, started + 50))
    running = {"stage": "search (evolution)", "dir": str(tmp_path / "search"), "started": started}
    (tmp_path / STATE_FILE).write_text(json.dumps({"seconds": {"finetune": 7.0}, "running": running}))
    state = _Stages(tmp_path).state
    assert "running" not in state and 49 < state["seconds"]["search (evolution)"] < 51
    assert state["wall"] == sum(state["seconds"].values())  # that version ran one stage at a time
