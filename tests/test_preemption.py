"""Graceful preemption (stages/preemption.py): SIGTERM or SIGUSR1 stop a training run after its current
step with a checkpoint of that step, a search after its current candidate, the pipeline before its next
stage; the process exits with code 75, and the resumed run ends bit-identical to one never stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cli_checks import DETNAS, ENV
from data_builders import coco_source, finetune_cfg, make_coco, make_image_folder
from detnas.config.runs import CHECKPOINT, LOCK_FILE, METRICS_FILE, PARTIAL_FILE, SEARCH_STATE_FILE
from detnas.config.schema import SearchConfig
from detnas.search.engine import run_search
from detnas.search.state import load_state
from detnas.stages import preemption
from detnas.stages.train import run_training
from test_search import SMALL, SPACE, Counter, key_fields
from test_search import search as plain_search
from test_train import assert_same_run, make_job, pretrain_cfg, read_ckpt, read_log, write_yaml

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("preemption_data")
    make_image_folder(root / "cls" / "train", classes=("a", "b", "c"), per_class=4, size=24, mode="RGB")
    make_image_folder(root / "cls" / "val", classes=("a", "b", "c"), per_class=2, size=24, mode="RGB")
    make_coco(root / "coco", n_images=8, size=(64, 48))
    return root


def config(stage: str, data: Path, iters: int) -> dict:
    if stage == "pretrain":
        return pretrain_cfg(data, iters=iters)
    return finetune_cfg(coco_source(data / "coco" / "annotations.json", data / "coco" / "images"),
                        train={"iters": iters})


def train(stage: str, cfg: dict, out: Path, resume: bool = False, signal_in_step: int | None = None,
          signum: int = signal.SIGTERM):
    """Run the stage in this process; ``signal_in_step``: this process receives ``signum`` while it
    computes the loss of that step (counted from 0), as a scheduler's signal arrives mid-step."""
    c, job = make_job(stage, cfg, out)
    if signal_in_step is not None:
        inner, steps = job.loss, []

        def loss(*args):
            if len(steps) == signal_in_step:
                os.kill(os.getpid(), signum)
            steps.append(1)
            return inner(*args)

        job.loss = loss
    return run_training(job, c.train, c.seed, out, resume, log_every=1, checkpoint_every=c.logging.checkpoint_every,
                        progress=False, amp=c.amp, workers=c.data.workers)


@pytest.mark.parametrize("stage, signum", [("pretrain", signal.SIGTERM), ("finetune", signal.SIGUSR1)])
def test_a_signal_stops_training_after_its_step_and_the_resumed_run_is_identical(stage, signum, data, tmp_path,
                                                                                  capfd):
    cfg = config(stage, data, iters=5)
    cfg["logging"]["checkpoint_every"] = 100  # the only checkpoint before the end is the stop's
    train(stage, cfg, tmp_path / "whole")
    with pytest.raises(SystemExit) as stopped:
        train(stage, cfg, tmp_path / "parts", signal_in_step=2, signum=signum)
    assert stopped.value.code == preemption.EXIT_PREEMPTED == 75
    # step 2 (the third) was finished and saved; nothing after it ran or was written
    assert read_ckpt(tmp_path / "parts")["step"] == 3
    assert [r["step"] for r in read_log(tmp_path / "parts")] == [1, 2, 3]
    assert not (tmp_path / "parts" / METRICS_FILE).exists() and not (tmp_path / "parts" / LOCK_FILE).exists()
    err = capfd.readouterr().err
    name = signal.Signals(signum).name
    assert f"detnas: {name} received: stopping at the next checkpoint" in err
    assert (f"detnas: stopped by {name}: {stage}: checkpoint of step 3 of 5 in {tmp_path / 'parts' / CHECKPOINT}; "
            "run the same command with --resume to continue (exit code 75)") in err
    # the handlers are the old ones again
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    train(stage, cfg, tmp_path / "parts", resume=True)
    assert_same_run(tmp_path / "whole", tmp_path / "parts")


def test_a_signal_before_the_first_step_saves_step_0(data, tmp_path):
    cfg = config("pretrain", data, iters=3)
    train("pretrain", cfg, tmp_path / "whole")
    c, job = make_job("pretrain", cfg, tmp_path / "parts")
    with preemption.preemptible():  # the signal comes while the run is starting
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(SystemExit):
            run_training(job, c.train, c.seed, tmp_path / "parts", False, log_every=1, progress=False)
    assert read_ckpt(tmp_path / "parts")["step"] == 0
    train("pretrain", cfg, tmp_path / "parts", resume=True)
    assert_same_run(tmp_path / "whole", tmp_path / "parts")


class Signalled(Counter):
    """The search's fitness, during whose ``at``-th evaluation (counted from 0) a SIGTERM arrives."""

    def __init__(self, at: int):
        super().__init__()
        self.at = at

    def __call__(self, arch):
        if len(self.calls) == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().__call__(arch)


@pytest.mark.parametrize("n, generation, cached", [(46, 2, 7), (59, 2, 20)])
def test_a_signal_stops_the_search_after_its_candidate_and_the_resumed_search_is_identical(n, generation, cached,
                                                                                           tmp_path):
    full = plain_search(tmp_path, "full")
    stopped = Signalled(n)
    with preemption.preemptible(), pytest.raises(SystemExit) as exit_info:
        run_search(SPACE, SearchConfig(**SMALL), stopped, tmp_path / "run", progress=False,
                   at_safe_point=preemption.stop_if_requested)
    assert exit_info.value.code == 75 and len(stopped.calls) == n + 1
    run = tmp_path / "run"
    if cached == 20:  # the signal came in the generation's last candidate: stopped once its state was saved
        assert load_state(run / SEARCH_STATE_FILE)["generation"] == generation + 1 and not (run / PARTIAL_FILE).exists()
        assert "the search state after generation 2" in exit_info.value.saved
    else:
        assert load_state(run / SEARCH_STATE_FILE)["generation"] == generation
        assert len((run / PARTIAL_FILE).read_text().splitlines()) == cached
        assert exit_info.value.saved == f"7 of 20 candidates of generation 2 in {PARTIAL_FILE}"
    again = Counter()
    resumed = plain_search(tmp_path, "run", evaluate=again, resume=True)
    assert not set(again.calls) & set(stopped.calls) and len(again.calls) + len(stopped.calls) == 120
    assert key_fields(resumed.history) == key_fields(full.history) and resumed.summary == full.summary


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not condition():
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before the signal: {proc.stderr.read()[-2000:]}"


def _wait_for_log_lines(out: Path, lines: int, proc: subprocess.Popen) -> None:
    """Until the run in ``out`` has logged ``lines`` lines (or ended)."""
    _wait_for(lambda: (out / "log.jsonl").exists() and (out / "log.jsonl").read_text().count("\n") >= lines, proc)


def test_sigterm_to_the_cli_exits_75_and_resume_ends_as_an_uninterrupted_run(data, tmp_path, cli_here):
    cfg = config("pretrain", data, iters=16)
    cfg["logging"]["checkpoint_every"] = 100
    cfg_file = write_yaml(tmp_path / "cfg.yaml", cfg)
    cli_here("pretrain", "--config", cfg_file, "--out", tmp_path / "whole")  # no process of its own
    out = tmp_path / "stopped"
    proc = subprocess.Popen([*DETNAS, "pretrain", "--config", str(cfg_file), "--out", str(out)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_log_lines(out, 2, proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 75, err
    step = read_ckpt(out)["step"]
    assert 2 <= step < 16 and err.splitlines()[-1].startswith("detnas: stopped by SIGTERM: pretrain: checkpoint of "
                                                              f"step {step} of 16"), err
    assert not (out / METRICS_FILE).exists() and not (out / LOCK_FILE).exists()
    cli_here("pretrain", "--config", cfg_file, "--out", out, "--resume")
    assert_same_run(tmp_path / "whole", out)
