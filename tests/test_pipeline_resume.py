"""Rerunning an interrupted pipeline (issue 9): it says which stages it skips as finished and where the
interrupted one resumes, and the stage times count the attempt before the interruption."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from detnas.checkpoint import save_checkpoint
from detnas.config.runs import PIPELINE_FILE as STATE_FILE
from detnas.stages.pipeline import _Stages


def test_skipped_and_resumed_stages_are_named(tmp_path, capsys):
    save_checkpoint(tmp_path / "finetune" / "checkpoint.pt", {"stage": "finetune", "step": 120, "w": torch.ones(2)})
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "search_state.json").write_text(json.dumps({"generation": 2}))
    stages, ran = _Stages(tmp_path), []
    stages.run("pretrain", True, tmp_path / "pretrain", lambda: ran.append("pretrain"))
    stages.run("finetune", False, tmp_path / "finetune", lambda: ran.append("finetune"))
    stages.run("search (evolution)", False, tmp_path / "search", lambda: ran.append("search"))
    stages.run("retrain (searched)", False, tmp_path / "retrain", lambda: ran.append("retrain"))
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
        started = stages.state["running"]["started"]
        os.utime(log, (started + 100, started + 100))  # as if it had trained for 100 s
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stages.run("finetune", False, tmp_path / "finetune", killed)
    assert json.loads((tmp_path / STATE_FILE).read_text())["running"]["stage"] == "finetune"
    rerun = _Stages(tmp_path)
    rerun.run("finetune", False, tmp_path / "finetune", lambda: time.sleep(0.01))
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert "running" not in state and 100 < state["seconds"]["finetune"] < 110
