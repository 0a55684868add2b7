"""Stage 3 on a real (tiny) finetuned supernet: ``detnas search`` end to end.

One supernet is finetuned per module (demo digits-on-photos data at 64 px, 16 images held out as the
search split) and reused. Proves: the CLI search writes its results; every evaluated architecture
meets the FLOPs budget and none is evaluated twice; a recorded fitness equals a fresh evaluation; the
search split is disjoint from what finetuning trained on and from the test split, and the search
never opens a test image; two torchrun workers give the same history as one process; a search
killed with SIGKILL mid-generation and resumed ends as an uninterrupted one; bad input is a one-line
error; the evaluator's mAP equals pycocotools' on the same recalibrated detector's detections.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import detnas.data.detection as detection_module
from cli_checks import ENV, TORCHRUN, one_line_error
from cli_checks import run_here as run_cli
from data_builders import coco_source, finetune_cfg, merged
from detnas.config.runs import SPLIT_FILE
from detnas.config.schema import FinetuneConfig, FitnessConfig
from detnas.data import build_demo_data
from detnas.model.amp import autocast
from detnas.model.detector import extract_detector
from detnas.model.evaluate import detector_backbone_forward, predict, recalibrate_bn, recalibrated_path
from detnas.model.flops import arch_cost
from detnas.model.space import get_space, parse_arch
from detnas.stages.jobs import finetune_job, run_stage
from detnas.stages.search import SupernetEvaluator
from detnas.stages.train import run_training
from interruption import Interrupted, interrupt_at

# subprocesses run single-threaded: the same numbers in every run, and no oversubscription of the cores
HELD_OUT = 16
FITNESS = {"recalib_images": 12, "batch_size": 8}
BUDGET = {"min_flops": 270e6, "max_flops": 295e6}  # body MACs at 224x224; the Small space spans 237M-365M
SEARCH = {"population": 4, "generations": 2, "topk": 2, "mutations": 1, "crossovers": 1, "seed": 3, **BUDGET}
HISTORY_KEYS = ("generation", "index", "arch", "map", "flops", "params")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ----------------------------------------------------------------------------- the supernet


# the shared supernet's finetuning, on top of data_builders.finetune_cfg
SUPERNET_FINETUNE = {
    "seed": 1,
    "data": {"holdout": {"size": HELD_OUT, "seed": 0}},
    # score_thresh 0: a barely trained detector still scores, so archs get distinct, non-zero mAPs
    "detector": {"min_size": 64, "max_size": 64, "score_thresh": 0.0, "rpn_post_nms_top_n_test": 50},
    "train": {"iters": 20, "batch_size": 4, "lr": 0.02, "warmup_iters": 5, "weight_decay": 4e-5},
    "logging": {"log_every": 10, "checkpoint_every": 1000},
    "eval": {"batch_size": 8},
}


def supernet_finetune_cfg(paths, **overrides) -> dict:
    """The shared supernet's finetuning config on the demo data ``paths``, ``overrides`` merged on top."""
    test = coco_source(paths.det_test_json, paths.det_images)
    sections = merged(merged(SUPERNET_FINETUNE, {"data": {"test": test}}), overrides)
    return finetune_cfg(coco_source(paths.det_train_json, paths.det_images), **sections)


class Supernet:
    def __init__(self, root: Path):
        self.root = root
        self.paths = build_demo_data(root / "demo", seed=0, cls_train=40, cls_val=10, det_train=48, det_val=4,
                                     det_test=8, image_size=64, digit_height=(12, 40))
        self.run = root / "finetune"
        self.trained_ids: set[int] = set()  # every image id finetuning computed a loss on
        cfg = FinetuneConfig.model_validate(supernet_finetune_cfg(self.paths))
        job = finetune_job(cfg, self.run)
        inner = job.loss

        def loss(model, batch, arch, device):
            self.trained_ids.update(int(t["image_id"]) for t in batch[1])
            return inner(model, batch, arch, device)

        job.loss = loss
        assert run_stage(job, cfg, self.run, resume=False)["step"] == cfg.train.iters
        self.train_records = job.dataset.records  # the training set finetuning drew from

    def search_yaml(self, path: Path, search: dict | None = None, fitness: dict | None = None, **top) -> Path:
        cfg = {"supernet": str(self.run), "search": {**SEARCH, **(search or {})},
               "fitness": {**FITNESS, **(fitness or {})}, "progress": False, **top}
        path.write_text(yaml.safe_dump(cfg))
        return path


@pytest.fixture(scope="module")
def supernet(tmp_path_factory) -> Supernet:
    return Supernet(tmp_path_factory.mktemp("search_stage"))


class Opened:
    """Records every detection image decoded while active (the one place detection images are read)."""

    def __init__(self):
        self.names: list[str] = []

    def __enter__(self):
        self.real = detection_module.load_rgb

        def load_rgb(path):
            self.names.append(Path(path).name)
            return self.real(path)

        detection_module.load_rgb = load_rgb
        return self

    def __exit__(self, *exc):
        detection_module.load_rgb = self.real


def torchrun_cmd(*args) -> list[str]:
    return [*TORCHRUN, "-m", "detnas", *map(str, args)]


@pytest.fixture(scope="module")
def searched(supernet, tmp_path_factory) -> dict:
    """One single-process ``detnas search`` through the CLI, recording the images it decodes."""
    tmp = tmp_path_factory.mktemp("searched")
    config = supernet.search_yaml(tmp / "search.yaml")
    with Opened() as opened:
        r = run_cli("search", "--config", config, "--out", tmp / "run")
    assert r.returncode == 0, r.stderr[-3000:]
    return {"config": config, "out": tmp / "run", "opened": opened.names, "history": history(tmp / "run")}


def history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def key_fields(records: list[dict]) -> list[tuple]:
    """What must not depend on how a search was run (workers, interruptions): not timings or ranks."""
    return [(*(r[k] for k in HISTORY_KEYS), r["metrics"]["ap50"]) for r in records]


# ----------------------------------------------------------------------------- 1. the search runs


def test_search_writes_its_results_within_the_budget_without_repeats(supernet, searched):
    out, hist = searched["out"], searched["history"]
    for name in ("best.json", "history.jsonl", "search_state.json", "search_progress.png", "search_pareto.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for png in ("search_progress.png", "search_pareto.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "partial_generation.jsonl").exists()

    n = SEARCH["population"] * SEARCH["generations"]
    assert len(hist) == n and [r["generation"] for r in hist] == [0] * 4 + [1] * 4
    archs = [r["arch"] for r in hist]
    assert len(set(archs)) == n  # no architecture evaluated twice
    space = get_space("small")
    for r in hist:
        cost = arch_cost(space, parse_arch(r["arch"], space))
        assert BUDGET["min_flops"] <= cost.body_flops <= BUDGET["max_flops"], r["arch"]
        assert r["flops"] == cost.body_flops and r["params"] == cost.body_params
        assert 0 <= r["map"] <= 1 and r["map"] == r["metrics"]["map"]
        assert {"seconds_recalib", "seconds_inference", "seconds_cocoeval"} <= set(r["metrics"])
    assert len({r["map"] for r in hist}) >= n - 1  # distinct fitnesses: the comparisons below mean something

    best = json.loads((out / "best.json").read_text())
    top = min(hist, key=lambda r: (-r["map"], r["arch"]))
    assert (best["arch"], best["map"], best["flops"]) == (top["arch"], top["map"], top["flops"])
    assert best["space"] == "small" and best["input_size"] == 224 and best["strategy"] == "evolution"
    state = json.loads((out / "search_state.json").read_text())
    assert state["generation"] == 2 and state["records"] == hist
    # generation 1 bred from generation 0's top-2: its mutation and crossover share genes with them
    parents = sorted(hist[:4], key=lambda r: (-r["map"], r["arch"]))[:2]
    child = hist[4]["arch"]
    assert any(sum(a == b for a, b in zip(child, p["arch"])) >= 10 for p in parents)


def test_recorded_fitness_equals_a_fresh_evaluation(supernet, searched):
    evaluator = SupernetEvaluator(supernet.run, FitnessConfig(**FITNESS))
    before = {k: v.clone() for k, v in evaluator.detector.state_dict().items()}
    hist = searched["history"]
    # in another order than the search's, so that no state can carry over from one candidate to the next
    for r in (hist[-1], hist[0], max(hist, key=lambda r: r["map"])):
        got = evaluator(parse_arch(r["arch"]))
        assert (got["map"], got["ap50"]) == (r["map"], r["metrics"]["ap50"]), r["arch"]
    after = evaluator.detector.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the supernet is never modified


# ----------------------------------------------------------------------------- 2. the search split


def test_search_split_is_held_out_and_the_search_never_opens_a_test_image(supernet, searched):
    def images(path: Path) -> dict[int, str]:
        return {im["id"]: im["file_name"] for im in json.loads(Path(path).read_text())["images"]}

    split = images(supernet.run / SPLIT_FILE)
    train_json, test_json = images(supernet.paths.det_train_json), images(supernet.paths.det_test_json)
    trained = {r.image_id: r.file_name for r in supernet.train_records}
    assert len(split) == HELD_OUT and len(trained) == len(train_json) - HELD_OUT
    assert supernet.trained_ids == set(trained)  # finetuning computed losses on all, and only, those
    assert not split.keys() & trained.keys() and not set(split.values()) & set(trained.values())
    assert split | trained == train_json  # the split is carved out of the training set
    assert not split.keys() & test_json.keys() and not set(split.values()) & set(test_json.values())
    assert (supernet.paths.det_images / test_json[min(test_json)]).is_file()  # test images are right there

    opened = set(searched["opened"])
    assert opened <= set(train_json.values()) and not opened & set(test_json.values())
    assert set(split.values()) <= opened  # every candidate is scored on the whole split

    # recalibration decodes training images (never the split); evaluation decodes the split only.
    # Within the cache budget both are decoded once, at the start; without one, for every candidate.
    arch = parse_arch(searched["history"][0]["arch"])
    for cache_gb, decoded_at_start in ((2.0, True), (0.0, False)):
        with Opened() as at_start:
            evaluator = SupernetEvaluator(supernet.run, FitnessConfig(**FITNESS, cache_gb=cache_gb))
        with Opened() as per_candidate:
            evaluator(arch)
        decoding, idle = (at_start, per_candidate) if decoded_at_start else (per_candidate, at_start)
        n = FITNESS["recalib_images"]  # recalibration first, then the split
        assert len(decoding.names) == n + HELD_OUT and idle.names == []
        assert set(decoding.names[:n]) <= set(trained.values())
        assert sorted(decoding.names[n:]) == sorted(split.values())


def test_fitness_is_the_same_whether_images_are_cached_streamed_or_decoded_by_workers(supernet, searched):
    """The cache budget and the DataLoader workers change where images are decoded, never a fitness;
    what is kept stays within the budget."""
    archs = [parse_arch(r["arch"]) for r in searched["history"][:2]]
    image_bytes = 3 * 64 * 64 * 4  # a 64x64 float image
    one_batch = 8 * image_bytes / 1e9  # room for the first recalibration batch only
    results, cached = {}, {}
    for name, cache_gb, workers in (("all cached", 2.0, 0), ("partly", one_batch * 1.2, 0), ("none", 0.0, 0),
                                    ("none, 2 workers", 0.0, 2), ("partly, 2 workers", one_batch * 1.2, 2)):
        evaluator = SupernetEvaluator(supernet.run, FitnessConfig(**FITNESS, cache_gb=cache_gb), workers)
        assert evaluator.recalib.cached_bytes + evaluator.search_batches.cached_bytes <= cache_gb * 1e9
        cached[name] = (len(evaluator.recalib.cached), len(evaluator.search_batches.cached))
        results[name] = [{k: v for k, v in evaluator(a).items() if not k.startswith("seconds")} for a in archs]
        assert len(list(evaluator.recalib)) == 2 and len(list(evaluator.search_batches)) == 2  # 12 and 16 images
    assert cached == {"all cached": (2, 2), "partly": (1, 0), "none": (0, 0), "none, 2 workers": (0, 0),
                      "partly, 2 workers": (1, 0)}
    assert results["all cached"][0]["map"] > 0
    for name in results:
        assert results[name] == results["all cached"], name


def test_bf16_fitness_runs_recalibrates_in_float32_and_is_part_of_the_search_identity(supernet, searched):
    """This barely trained supernet scores near 0 mAP, so its fitness cannot show how close bf16 is
    (tests/test_amp.py does, on the detector's outputs); here: it runs, is finite, recalibrated BN
    statistics stay float32 and close to float32's, and a search cannot resume in another precision."""
    arch = parse_arch(searched["history"][0]["arch"])
    fp32 = SupernetEvaluator(supernet.run, FitnessConfig(**FITNESS))
    bf16 = SupernetEvaluator(supernet.run, FitnessConfig(**FITNESS), amp="bf16")
    assert 0 <= bf16(arch)["map"] <= 1
    stems = []
    for mode in ("off", "bf16"):
        sub = extract_detector(fp32.detector, arch, len(fp32.classes), fp32.detector_cfg)
        with autocast(mode, "cpu"):
            recalibrate_bn(sub, detector_backbone_forward(sub), fp32.recalib, "cumulative")
        stems.append(sub.backbone.body.stem[1])
    assert stems[1].running_mean.dtype == stems[1].running_var.dtype == torch.float32
    torch.testing.assert_close(stems[1].running_mean, stems[0].running_mean, rtol=0.02, atol=1e-3)
    torch.testing.assert_close(stems[1].running_var, stems[0].running_var, rtol=0.02, atol=1e-3)
    assert "amp" not in fp32.identity() and bf16.identity()["amp"] == "bf16"


# ----------------------------------------------------------------------------- 3. workers and resume


def test_two_torchrun_workers_give_the_same_history(supernet, searched, tmp_path):
    out = tmp_path / "run"
    r = subprocess.run(torchrun_cmd("search", "--config", searched["config"], "--out", out), env=ENV, check=False,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    hist = history(out)
    assert key_fields(hist) == key_fields(searched["history"])
    assert {h["rank"] for h in hist} == {0, 1}  # both workers evaluated candidates
    assert json.loads((out / "best.json").read_text()) == json.loads((searched["out"] / "best.json").read_text())


def _kill_mid_generation(cmd: list[str], out: Path, generation: int, timeout: float = 240) -> list[dict]:
    """Start ``cmd``; SIGKILL its whole process group once ``generation`` has some, not all, of its
    results in partial_generation.jsonl. Returns the results cached at that moment."""
    log = out.parent / "killed.stderr"  # a file, not a pipe: a full pipe would stall the run
    with open(log, "w") as stderr:
        proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    partial, deadline = out / "partial_generation.jsonl", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                lines = partial.read_text().splitlines() if (out / "search_state.json").exists() else []
            except FileNotFoundError:
                lines = []
            if any(c["generation"] == generation for c in _complete_lines(lines)):
                break
            time.sleep(0.005)
        assert proc.poll() is None, f"the search ended before it could be killed: {log.read_text()[-2000:]}"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not (out / "best.json").exists()
    return _complete_lines(partial.read_text().splitlines())


def _complete_lines(lines: list[str]) -> list[dict]:
    """The records of a JSON-lines file being appended to (a line caught half-written is skipped)."""
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def test_resume_after_kill_9_mid_generation_equals_an_uninterrupted_search(supernet, searched, tmp_path, cli_here):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "detnas", "search", "--config", searched["config"], "--out", out]
    cached = _kill_mid_generation(cmd, out, generation=1)
    assert 1 <= len(cached) < SEARCH["population"]
    assert json.loads((out / "search_state.json").read_text())["generation"] == 1
    cli_here("search", "--config", searched["config"], "--out", out, "--resume")
    hist = history(out)
    assert key_fields(hist) == key_fields(searched["history"])
    assert json.loads((out / "best.json").read_text()) == json.loads((searched["out"] / "best.json").read_text())
    # the candidates finished before the kill were taken from the cache, not evaluated again
    by_arch = {h["arch"]: h for h in hist}
    for c in cached:
        assert by_arch[c["arch"]]["seconds"] == c["seconds"] and by_arch[c["arch"]]["metrics"] == c["metrics"]


@pytest.mark.slow
def test_resume_after_kill_9_under_torchrun(supernet, searched, tmp_path):
    out = tmp_path / "run"
    cached = _kill_mid_generation(torchrun_cmd("search", "--config", searched["config"], "--out", out), out,
                                  generation=1)
    assert 1 <= len(cached) < SEARCH["population"]
    r = subprocess.run(torchrun_cmd("search", "--config", searched["config"], "--out", out, "--resume"), env=ENV,
                       check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert key_fields(history(out)) == key_fields(searched["history"])
    assert json.loads((out / "best.json").read_text()) == json.loads((searched["out"] / "best.json").read_text())


# ----------------------------------------------------------------------------- 4. bad input


def _finetune_elsewhere(supernet: Supernet, out: Path, interrupt: int | None = None, **overrides) -> Path:
    """A finetuning run in ``out``; ``interrupt``: killed before that step, with a checkpoint there."""
    cfg = FinetuneConfig.model_validate(supernet_finetune_cfg(supernet.paths, **overrides))
    job = finetune_job(cfg, out) if interrupt is None else interrupt_at(finetune_job(cfg, out), interrupt)
    try:
        run_training(job, cfg.train, cfg.seed, out, False, log_every=100, checkpoint_every=1, progress=False)
    except Interrupted:
        assert interrupt is not None
    return out


@pytest.mark.parametrize("case", ["budget", "missing folder", "missing checkpoint", "no search split",
                                  "unfinished finetune", "unknown key"])
def test_bad_search_input_is_a_one_line_error(case, supernet, tmp_path):
    search, fitness, top, expect = {}, {}, {}, []
    if case == "budget":
        search = {"min_flops": None, "max_flops": 200e6}
        expect = ["no architecture meets the search constraints", "237.22M-365.47M", "200.00M"]
    elif case == "missing folder":
        top = {"supernet": str(tmp_path / "nowhere")}
        expect = [str(tmp_path / "nowhere" / "checkpoint.pt"), "not found"]
    elif case == "missing checkpoint":
        (tmp_path / "empty").mkdir()
        top = {"supernet": str(tmp_path / "empty")}
        expect = [str(tmp_path / "empty" / "checkpoint.pt"), "not found"]
    elif case == "no search split":
        run = _finetune_elsewhere(supernet, tmp_path / "ft", train={"iters": 1},
                                  data={"holdout": {"size": 0}, "test": None})
        top = {"supernet": str(run)}
        expect = [str(run / SPLIT_FILE), "no search split", "holdout"]
    elif case == "unfinished finetune":
        run = _finetune_elsewhere(supernet, tmp_path / "ft", interrupt=1, train={"iters": 3})
        top = {"supernet": str(run)}
        expect = [str(run / "checkpoint.pt"), "not finished"]
    else:
        fitness = {"recalib_imgs": 8}
        expect = ["unknown key 'fitness.recalib_imgs'"]
    config = supernet.search_yaml(tmp_path / "search.yaml", search, fitness, **top)
    if case == "unknown key":
        expect.append(str(config))
    one_line_error(run_cli("search", "--config", config, "--out", tmp_path / "out"), *expect)
    assert not (tmp_path / "out" / "search_state.json").exists()


def test_a_search_split_as_large_as_the_training_set_is_refused_by_finetuning(supernet, tmp_path):
    n = len(json.loads(supernet.paths.det_train_json.read_text())["images"])
    cfg = supernet_finetune_cfg(supernet.paths, data={"holdout": {"size": n, "seed": 0}})
    config = tmp_path / "ft.yaml"
    config.write_text(yaml.safe_dump(cfg))
    r = run_cli("finetune", "--config", config, "--out", tmp_path / "out")
    one_line_error(r, f"search split of {n} images is not smaller than the training set ({n} images)")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- 5. the fitness itself


def test_evaluator_map_equals_pycocotools_on_the_recalibrated_path(supernet, searched):
    from reference_coco import pycocotools_stats

    evaluator = SupernetEvaluator(supernet.run, FitnessConfig(**FITNESS))
    arch = parse_arch(max(searched["history"], key=lambda r: r["map"])["arch"])
    got = evaluator(arch)

    sub = recalibrated_path(evaluator.detector, arch, len(evaluator.classes), evaluator.detector_cfg,
                            evaluator.recalib)
    detections = predict(sub, evaluator.search_set, FITNESS["batch_size"])
    assert len(detections) > 100
    # the split file as written by finetuning, scored by pycocotools
    stats = pycocotools_stats(json.loads((supernet.run / SPLIT_FILE).read_text()), detections)
    assert got["map"] > 0
    assert got["map"] == pytest.approx(stats[0], abs=1e-12)
    assert got["ap50"] == pytest.approx(stats[1], abs=1e-12)


@pytest.mark.parametrize("mode", ["cumulative", "ema"])
def test_recalibration_recomputes_each_bn_from_the_training_batches(supernet, mode):
    """Cumulative: every BN's statistics are the plain average of its per-batch statistics; EMA: the
    exponential average from the reset state (mean 0, variance 1) with momentum 0.1."""
    evaluator = SupernetEvaluator(supernet.run, FitnessConfig(**FITNESS))
    sub = extract_detector(evaluator.detector, (1,) * 20, len(evaluator.classes), evaluator.detector_cfg)
    bns = [m for m in sub.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    seen: dict[torch.nn.Module, list] = {m: [] for m in bns}

    def hook(m, inputs, _out):
        x = inputs[0].transpose(0, 1).flatten(1).double()
        seen[m].append((x.mean(1), x.var(1, unbiased=True)))

    handles = [m.register_forward_hook(hook) for m in bns]
    recalibrate_bn(sub, detector_backbone_forward(sub), evaluator.recalib, mode)
    for h in handles:
        h.remove()
    assert len(evaluator.recalib) == 2 and all(len(s) == 2 for s in seen.values())
    for m in bns:
        means, variances = zip(*seen[m])
        if mode == "cumulative":
            mean, var = sum(means) / len(means), sum(variances) / len(variances)
        else:
            mean, var = torch.zeros_like(means[0]), torch.ones_like(variances[0])
            for bm, bv in zip(means, variances):
                mean, var = 0.9 * mean + 0.1 * bm, 0.9 * var + 0.1 * bv
        torch.testing.assert_close(m.running_mean.double(), mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(m.running_var.double(), var, rtol=1e-4, atol=1e-5)
        assert m.momentum == 0.1  # restored after recalibration
    assert not sub.training


def test_resume_refuses_other_fitness_settings_and_a_finished_search_evaluates_nothing(supernet, searched, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(searched["out"], out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".json", ".jsonl")}
    # the same search config with another recalibration: fitnesses would not be comparable
    changed = supernet.search_yaml(tmp_path / "changed.yaml", fitness={"recalib_images": 8})
    one_line_error(run_cli("search", "--config", changed, "--out", out, "--resume"),
                   str(out / "search_state.json"), "different search", "evaluator.fitness")
    with Opened() as opened:
        r = run_cli("search", "--config", searched["config"], "--out", out, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    # only the evaluator's set-up decoded images (all of them fit its cache)
    assert len(opened.names) == FITNESS["recalib_images"] + HELD_OUT
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".json", ".jsonl")} == before


# ----------------------------------------------------------------------------- 5. the fitness check


def test_the_fitness_check_reevaluates_the_top_candidates_on_other_recalibration_images(supernet, searched):
    check = json.loads((searched["out"] / "fitness_check.json").read_text())
    hist = searched["history"]
    top = sorted(hist, key=lambda r: (-r["map"], r["arch"]))[:3]
    assert [(r["arch"], r["map"]) for r in check["reevaluated"]] == [(r["arch"], r["map"]) for r in top]
    again = SupernetEvaluator(supernet.run, FitnessConfig(**FITNESS))
    again = again.with_recalib_seed(again.cfg.seed + 1)
    for r in check["reevaluated"]:
        assert r["map_again"] == again(parse_arch(r["arch"]))["map"]
    assert check["noise"] == max(abs(r["map"] - r["map_again"]) for r in check["reevaluated"])
    assert check["margin"] == top[0]["map"] - top[1]["map"]
    assert check["distinct_fraction"] == len({round(r["map"], 6) for r in hist}) / len(hist)
    # the ShuffleNetV2 path scored beside the winner, with the search's own fitness
    baseline = "0" * len(hist[0]["arch"])
    alone = SupernetEvaluator(supernet.run, FitnessConfig(**FITNESS))(parse_arch(baseline))["map"]
    assert check["baseline"] == {"arch": baseline, "map": alone}
    # written before best.json, which marks the search as finished
    written = {name: (searched["out"] / name).stat().st_mtime_ns for name in ("fitness_check.json", "best.json")}
    assert written["fitness_check.json"] <= written["best.json"]
