"""DataLoader workers: ``auto`` follows the CPUs, and training with workers (one loader for the whole
run, the epoch sent with every index) equals training without them, also across a resume and an
epoch boundary, so the per-epoch augmentation seeds reach the workers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from detnas.data import loading  # noqa: E402
from detnas.data.loading import WORKERS_ENV, data_workers  # noqa: E402
from test_train import assert_same_run, coco, data, finetune_cfg, pretrain_cfg, train  # noqa: E402, F401

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.parametrize("cpus, per_node, expected", [(16, 1, 8), (16, 4, 3), (2, 1, 1), (1, 1, 0), (8, 8, 0)])
def test_auto_workers_share_the_cpus_among_the_processes_of_a_node(monkeypatch, cpus, per_node, expected):
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(per_node))
    monkeypatch.setattr(loading.os, "sched_getaffinity", lambda _pid: set(range(cpus)))
    assert data_workers("auto") == expected
    assert data_workers(5) == 5  # a number is taken as it is
    monkeypatch.setenv(WORKERS_ENV, "2")
    assert data_workers("auto") == 2 and data_workers(0) == 0


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_training_with_two_workers_equals_training_without_also_across_a_resume(data, tmp_path, stage):  # noqa: F811 (the fixture imported from test_train)
    # 3 steps per epoch: the runs cross an epoch boundary
    base = pretrain_cfg(data) if stage == "pretrain" else finetune_cfg(coco(data))
    base["logging"] = {**base["logging"], "checkpoint_every": 2}

    def cfg(workers: int) -> dict:
        return {**base, "data": {**base["data"], "workers": workers}}

    train(stage, cfg(0), tmp_path / "main_process")
    train(stage, cfg(2), tmp_path / "workers")
    assert_same_run(tmp_path / "main_process", tmp_path / "workers")
    train(stage, cfg(2), tmp_path / "resumed", interrupt=3)  # killed a step after the checkpoint of step 2
    train(stage, cfg(0), tmp_path / "resumed", resume=True)  # data.workers may change on resume
    assert_same_run(tmp_path / "main_process", tmp_path / "resumed")
