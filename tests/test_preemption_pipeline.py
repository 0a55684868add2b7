"""The pipeline through the CLI, stopped by SIGTERM during its search as a scheduler would stop it, then
run again: it exits with code 75 at a safe point, continues, and ends with the report of a pipeline that
was never stopped. The stopped one runs its independent stages side by side (stages/lanes.py), the
other one at a time: the same report, to the digit."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from cli_checks import DETNAS, ENV
from test_pipeline import history_lines, tiny_pipeline_config


def small_pipeline_config(tmp: Path, parallel_stages: int = 1) -> Path:
    """The tiny pipeline of test_pipeline, less what this test does not need (rank check, random search,
    a second seed), and a search long enough to be stopped inside."""
    path = tiny_pipeline_config(tmp)
    cfg = yaml.safe_load(path.read_text())
    del cfg["rank_check"]
    cfg["random_search"] = False
    cfg["retrain"]["seeds"] = 1
    cfg["search"]["generations"] = 4
    cfg["parallel_stages"] = parallel_stages  # 2: the baseline's retraining beside the search
    path = path.with_name(f"pipeline-{parallel_stages}.yaml")
    path.write_text(yaml.safe_dump(cfg))
    return path


def pipeline(config: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([*DETNAS, "pipeline", "--config", str(config), "--out", str(out)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read(run: Path, name: str) -> str:
    """A file of ``run``, less what differs between two identical runs: the run folder, and times (the
evaluation time of each candidate, the report's time per stage)."""
    text = (run / name).read_text().replace(str(run), "RUN")
    if name.endswith("history.jsonl"):  # each candidate's evaluation time
        return "\n".join(re.sub(r'"seconds[a-z_]*": [0-9.e+-]+', "", line) for line in text.splitlines())
    return text.split("## Time per stage")[0] if name.endswith(".md") else text


@pytest.mark.slow
def test_pipeline_stopped_by_sigterm_continues_to_the_same_report(tmp_path, one_thread, cli_here):
    cli_here("pipeline", "--config", small_pipeline_config(tmp_path), "--out", tmp_path / "whole")  # the reference

    run, config = tmp_path / "run", small_pipeline_config(tmp_path, parallel_stages=2)
    proc = pipeline(config, run)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None and not history_lines(run):
            time.sleep(0.05)  # a generation of the search is done: stop it inside the next one
        assert proc.poll() is None, "the pipeline ended before it could be stopped"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 75, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("detnas: stopped by SIGTERM: ") and last.endswith(
        "; run the same command again to continue (exit code 75)"), last
    assert "search" in last and not (run / "report.md").exists() and not (run / "run.lock").exists()
    stopped_after = len(history_lines(run))
    assert 4 <= stopped_after < 4 * 4  # finished generations of 4; the rest is in the partial file

    proc = pipeline(config, run)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    assert "pipeline: finetune finished earlier, skipped" in out and "search (evolution) resumes" in out
    for name in ("search/history.jsonl", "search/best.json", "retrain/searched/result.json",
                 "retrain/baseline/result.json", "report.md"):
        assert read(run, name) == read(tmp_path / "whole", name), name
