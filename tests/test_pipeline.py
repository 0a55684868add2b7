"""The one-command pipeline end to end on tiny demo data: killed during the search, rerun, it resumes
(finished stages are skipped, the search continues) and ends with a report whose numbers come from
the run's own files."""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from cli_checks import DETNAS, ENV
from data_builders import TINY_TRAINED_DETECTOR
from detnas.data.demo import build_demo_data


def tiny_pipeline_config(tmp: Path) -> Path:
    paths = build_demo_data(tmp / "data", seed=0, cls_train=200, cls_val=50, det_train=48, det_val=4, det_test=12,
                            image_size=64, digit_height=(10, 30))
    images = str(paths.det_images)
    cfg = {
        "space": "small",
        "classification": {"train": str(paths.cls_train), "val": str(paths.cls_val), "image_size": 32},
        "detection": {
            "train": {"annotations": str(paths.det_train_json), "images": images},
            "test": {"annotations": str(paths.det_test_json), "images": images},
            "holdout": {"size": 8},
        },
        "detector": TINY_TRAINED_DETECTOR,
        "pretrain": {"train": {"iters": 3, "batch_size": 16, "lr": 0.03}},
        "finetune": {"iters": 3, "batch_size": 2, "lr": 0.01},
        "search": {"population": 4, "generations": 3, "topk": 2, "mutations": 1, "crossovers": 1,
                   "max_flops": 300e6},
        "fitness": {"recalib_images": 4, "batch_size": 4},
        "retrain": {"pretrain": {"iters": 2, "batch_size": 16, "lr": 0.03},
                    "train": {"iters": 2, "batch_size": 2, "lr": 0.01}, "seeds": 2},
        "rank_check": {"archs": 4, "seeds": 2, "bootstrap": 100},
        "eval": {"recalib_images": 4, "archs": ["0" * 20], "batch_size": 4},
        "logging": {"progress": False, "log_every": 1, "checkpoint_every": 1},
    }
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def pipeline(config: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([*DETNAS, "pipeline", "--config", str(config), "--out", str(out)],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def history_lines(run: Path) -> list[dict]:
    path = run / "search" / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_pipeline_killed_during_search_resumes_and_reports(tmp_path):
    config = tiny_pipeline_config(tmp_path)
    run = tmp_path / "run"
    proc = pipeline(config, run)
    # kill -9 once the search has finished a generation and is inside the next one
    deadline = time.monotonic() + 600
    partial = run / "search" / "partial_generation.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        if history_lines(run) and partial.exists() and partial.read_text().strip():
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the pipeline ended before it could be killed during the search:\n" + proc.stdout.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished_before = {stage: (run / stage / "metrics.json").stat().st_mtime_ns for stage in ("pretrain", "finetune")}
    evaluated_before = len(history_lines(run))
    assert not (run / "report.md").exists()

    proc = pipeline(config, run)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    # finished stages were skipped, not rerun
    for stage, mtime in finished_before.items():
        assert (run / stage / "metrics.json").stat().st_mtime_ns == mtime
    lines = out.splitlines()
    assert not any(line.startswith(("pretrain done", "finetune done")) for line in lines)  # skipped
    retrained = sum("retrain-pretrain done" in line for line in lines)  # "[retrain (random)] retrain-..."
    history = history_lines(run)
    assert len(history) == 12 and len({r["arch"] for r in history}) == 12
    assert len(history) > evaluated_before
    state = json.loads((run / "pipeline.json").read_text())
    assert {"pretrain", "finetune", "search (evolution)", "search (random)", "retrain (searched)",
            "retrain (random)", "retrain (baseline)", "retrain (searched, seed 1)", "retrain (random, seed 1)",
            "retrain (baseline, seed 1)", "rank check"} <= set(state["seconds"])

    report = (run / "report.md").read_text()
    best = json.loads((run / "search" / "best.json").read_text())
    for name in ("searched", "random", "baseline"):
        folders = (name, f"{name}-seed1")
        results = [json.loads((run / "retrain" / folder / "result.json").read_text()) for folder in folders]
        assert results[0]["arch"] == results[1]["arch"] and f"`{results[0]['arch']}`" in report
        aps = [r["test"]["AP"] for r in results]
        assert f"| {100 * statistics.fmean(aps):.1f} ± {100 * statistics.stdev(aps):.1f} |" in report
    assert report.count("**The searched network") == 2  # against the baseline and the random search best
    assert json.loads((run / "retrain" / "searched" / "result.json").read_text())["arch"] == best["arch"]
    assert json.loads((run / "retrain" / "baseline" / "result.json").read_text())["arch"] == "0" * 20
    assert "search_pareto.png" in report and (run / "search" / "search_pareto.png").exists()
    # the rank check starts from the searches' best and the baseline, and its result is in the report
    checked = json.loads((run / "rank_check" / "rank_check.json").read_text())
    random_best = json.loads((run / "random_search" / "best.json").read_text())["arch"]
    included = list(dict.fromkeys([best["arch"], random_best, "0" * 20]))
    assert [r["arch"] for r in checked["archs"]][: len(included)] == included and len(checked["archs"]) == 4
    # searched, random, baseline x 2 seeds; the rank check reuses them and trains only its draws (x 2 seeds)
    assert retrained == 6 + 2 * (4 - len(included))
    by_arch = {r["arch"]: r["standalone_maps"] for r in checked["archs"]}
    for name in ("searched", "random", "baseline"):
        folders = (name, f"{name}-seed1")
        results = [json.loads((run / "retrain" / folder / "result.json").read_text()) for folder in folders]
        assert by_arch[results[0]["arch"]] == [r["test"]["AP"] for r in results]
    assert "## Rank check" in report and f"Kendall tau {checked['fitness_vs_standalone']['kendall_tau']:.2f}" in report
    assert f"In words: {checked['verdict']}." in report


def test_packaged_demo_config_is_valid_and_uses_the_demo_data(tmp_path):
    from detnas.config.schema import PipelineConfig
    from detnas.stages.demo import demo_config
    from detnas.strict import validate

    cfg = validate(PipelineConfig, demo_config(tmp_path / "data"), "demo.yaml")
    assert cfg.detection.train.annotations.is_file() and cfg.detection.test.annotations.is_file()
    assert cfg.classification.train.is_dir()
    assert cfg.detection.holdout.size > 0 and cfg.search.max_flops is not None
