"""``detnas pipeline`` under torchrun with 2 gloo workers, against the same pipeline in one process:
each stage's final evaluation is shared out (a supernet's paths) or run on rank 0 alone (a standalone
network's test), never repeated on every worker, and the report names the same architectures.

Both runs see the same global batches (2 x 2 images against 4) and a learning rate so small that
the two trainings differ only by float rounding: the fitness, and so the searched architectures,
must come out the same.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from cli_checks import ENV, TORCHRUN  # noqa: E402
from data_builders import TINY_TRAINED_DETECTOR  # noqa: E402

# the final evaluations of the stages (detnas.stages.jobs), counted per worker
EVALUATIONS = ("evaluate_detection_path", "detection_metrics")


def tiny_config(tmp: Path, batch_size: int) -> Path:
    from detnas.data.demo import build_demo_data

    paths = build_demo_data(tmp / "data", seed=0, cls_train=20, cls_val=10, det_train=24, det_val=2, det_test=6,
                            image_size=64, digit_height=(10, 30))
    images = str(paths.det_images)
    schedule = {"iters": 2, "batch_size": batch_size, "lr": 1e-6, "weight_decay": 0.0}
    cfg = {
        "detection": {"train": {"annotations": str(paths.det_train_json), "images": images},
                      "test": {"annotations": str(paths.det_test_json), "images": images},
                      "holdout": {"size": 6}},
        # score_thresh 0: every path detects something, so the mAPs compared below are not all zero
        "detector": {**TINY_TRAINED_DETECTOR, "score_thresh": 0.0},
        "finetune": schedule,
        "search": {"population": 4, "generations": 2, "topk": 2, "mutations": 1, "crossovers": 1,
                   "max_flops": 300e6},
        "fitness": {"recalib_images": 4, "batch_size": 4},
        "retrain": {"train": schedule},
        "eval": {"recalib_images": 4, "batch_size": 4},  # three paths: all-0, all-3 and a random one
        "logging": {"progress": False, "log_every": 1, "checkpoint_every": 100},
    }
    path = tmp / f"pipeline-{batch_size}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def counting(module, counts: Counter, patch=setattr) -> None:
    """Count the calls of ``module``'s final-evaluation functions in ``counts`` (``patch``: how to
    replace them, e.g. ``monkeypatch.setattr``)."""
    for name in EVALUATIONS:
        inner = getattr(module, name)

        def wrapper(*args, _inner=inner, _name=name, **kwargs):
            counts[_name] += 1
            return _inner(*args, **kwargs)

        patch(module, name, wrapper)


def architectures(out: Path) -> dict:
    """The architectures the run's report names, and the files they come from."""
    report = (out / "report.md").read_text()
    retrained = {name: json.loads((out / "retrain" / name / "result.json").read_text())["arch"]
                 for name in ("searched", "random", "baseline")}
    assert all(f"`{arch}`" in report for arch in retrained.values())
    best = {d: json.loads((out / d / "best.json").read_text())["arch"] for d in ("search", "random_search")}
    return {"retrained": retrained, "best": best, "in report": sorted(set(re.findall(r"`([0-3]{20})`", report)))}


@pytest.mark.slow
def test_two_workers_share_the_final_evaluations_and_find_the_same_architectures(tmp_path, monkeypatch,
                                                                                 one_thread, cli_here):
    import subprocess

    import detnas.stages.jobs

    single = Counter()
    counting(detnas.stages.jobs, single, monkeypatch.setattr)
    cli_here("pipeline", "--config", tiny_config(tmp_path, 4), "--out", tmp_path / "single")
    assert single == {"evaluate_detection_path": 3, "detection_metrics": 3}  # 3 paths; 3 retrained tests

    dumps = tmp_path / "dumps"
    r = subprocess.run([*TORCHRUN, __file__, "worker", str(tiny_config(tmp_path, 2)), str(tmp_path / "two"),
                        str(dumps)], env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    per_rank = [Counter(json.loads((dumps / f"rank{rank}.json").read_text())) for rank in range(2)]
    # the supernet's three paths: two on rank 0, one on rank 1; the retrained networks' tests on rank 0
    assert per_rank == [{"evaluate_detection_path": 2, "detection_metrics": 3}, {"evaluate_detection_path": 1}]
    assert per_rank[0] + per_rank[1] == single

    assert architectures(tmp_path / "two") == architectures(tmp_path / "single")
    maps = [json.loads((tmp_path / run / "finetune" / "metrics.json").read_text())["map"] for run in ("single", "two")]
    assert maps[0].keys() == maps[1].keys() and len(maps[0]) == 3
    assert any(m["AP"] > 0 for m in maps[0].values())
    for arch in maps[0]:  # the same numbers, whichever worker evaluated the path
        assert maps[1][arch]["AP"] == pytest.approx(maps[0][arch]["AP"], abs=1e-3)


def _worker(config: str, out: str, dumps: str) -> None:
    import torch.distributed as dist

    import detnas.stages.jobs
    from detnas.cli import main

    counts = Counter()
    counting(detnas.stages.jobs, counts)
    main(["pipeline", "--config", config, "--out", out])
    Path(dumps).mkdir(parents=True, exist_ok=True)
    (Path(dumps) / f"rank{dist.get_rank()}.json").write_text(json.dumps(counts))


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        _worker(*sys.argv[2:])
