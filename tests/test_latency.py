"""Latency tables: every (position, choice) and the fixed parts measured, the prediction is the sum of the
parts, and ``max_latency_ms`` is a search constraint that is respected and fails fast when infeasible."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli_checks import one_line_error
from detnas.config.schema import SearchConfig
from detnas.errors import UserError
from detnas.model.detector import DetectorConfig
from detnas.model.latency_table import LatencyTable, load_table
from detnas.model.space import NUM_CHOICES, get_space
from detnas.search.constraints import check_constraints
from detnas.search.engine import run_search
from detnas.tools import latency

SPACE = get_space("small")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """A table measured by the CLI with a tiny FPN detector at 64x96 (few repetitions: the numbers are
    noisy, the test checks their structure)."""
    from cli_checks import run_here

    root = tmp_path_factory.mktemp("latency")
    config = root / "finetune.yaml"
    config.write_text("detector: {fpn_channels: 16, box_head_channels: 32, rpn_post_nms_top_n_test: 20}\n"
                      "train: {iters: 1}\n")  # other sections of a stage config are ignored
    r = run_here("latency", "--space", "small", "--input-size", "64x96", "--config", config, "--classes", "3",
                 "--threads", "1", "--clock", "cpu", "--reps", "2", "--warmup", "1", "--out", root / "table.json")
    assert r.returncode == 0, r.stderr
    return root / "table.json"


def test_the_table_has_every_entry(measured):
    data = json.loads(measured.read_text())
    assert (data["space"], data["width_mult"], data["input_size"], data["batch"]) == ("small", 1.0, [64, 96], 1)
    assert (data["device"], data["threads"], data["clock"], data["reps"], data["warmup"]) == ("cpu", 1, "cpu", 2, 1)
    assert (data["statistic"], data["num_classes"]) == ("min", 3)
    assert data["torch"] == __import__("torch").__version__
    assert data["detector"]["fpn_channels"] == 16 and (data["detector"]["min_size"], data["detector"]["max_size"]) \
        == (64, 96)  # the resize keeps the measured input as it is
    blocks = np.array(data["blocks_ms"])
    assert blocks.shape == (SPACE.num_blocks, NUM_CHOICES) and (blocks > 0).all()
    assert set(data["fixed_ms"]) == {"stem", "fpn", "heads"} and all(v > 0 for v in data["fixed_ms"].values())


def test_prediction_is_the_sum_of_the_parts(measured):
    table = load_table(measured, SPACE)
    data = json.loads(measured.read_text())
    arch = tuple(int(c) for c in "21202112331300313132")
    blocks = sum(data["blocks_ms"][i][c] for i, c in enumerate(arch))
    fixed = data["fixed_ms"]
    assert table.predict_ms(arch) == pytest.approx(blocks + fixed["stem"] + fixed["fpn"] + fixed["heads"], rel=1e-12)
    assert table.backbone_ms(arch) == pytest.approx(blocks + fixed["stem"], rel=1e-12)
    lo, hi = table.range_ms
    assert lo == pytest.approx(sum(fixed.values()) + sum(min(row) for row in data["blocks_ms"]))
    assert lo <= table.predict_ms(arch) <= hi


def test_each_entry_comes_from_its_position_and_choice(monkeypatch):
    """With the timing of a pass replaced by a known per-(position, choice) cost, the table recovers
    exactly that cost: the shifted architectures are mapped back to the right entries."""
    truth = np.arange(SPACE.num_blocks * NUM_CHOICES, dtype=float).reshape(SPACE.num_blocks, NUM_CHOICES) + 1

    def fake_pass(supernet, backbone, detector, x, arch, device, clock):
        return [0.5] + [truth[i, c] for i, c in enumerate(arch)] + ([2.0, 3.0] if detector is not None else [])

    monkeypatch.setattr(latency, "_timed_pass", fake_pass)
    table = latency.measure_table(SPACE, (64, 64), reps=3, warmup=0, detector_cfg=DetectorConfig(fpn_channels=8))
    np.testing.assert_array_equal(table.blocks, truth)
    assert table.fixed == {"stem": 0.5, "fpn": 2.0, "heads": 3.0}
    backbone_only = latency.measure_table(SPACE, (64, 64), reps=1, warmup=0)
    assert backbone_only.fixed == {"stem": 0.5}


def synthetic(tmp_path, space=SPACE, **changes):
    """A table with known entries: choice c costs 1 + c ms everywhere, fixed parts 10 ms in all."""
    blocks = np.tile(np.arange(1.0, NUM_CHOICES + 1), (space.num_blocks, 1))
    table = LatencyTable(space.name, space.width_mult, (128, 128), 1, blocks, {"stem": 4.0, "fpn": 2.0, "heads": 4.0},
                         {"device": "cpu", "threads": 1})
    path = tmp_path / "table.json"
    path.write_text(json.dumps({**table.to_json(), **changes}))
    return path


def fitness(arch) -> dict:
    return {"map": sum(arch) / 60}  # more expensive blocks score better: the bound is what stops the search


def test_latency_constraint_is_respected(tmp_path):
    table = synthetic(tmp_path)  # latency = 30 + sum(arch) ms: 30 to 90
    cfg = SearchConfig(population=10, generations=3, topk=3, mutations=4, crossovers=4, seed=1,
                       latency_table=table, max_latency_ms=45)
    res = run_search(SPACE, cfg, fitness, tmp_path / "run", progress=False)
    assert len(res.history) == 30
    for r in res.history:
        assert r["latency_ms"] == pytest.approx(30 + sum(int(c) for c in r["arch"]))
        assert r["latency_ms"] <= 45
    assert res.best_record["latency_ms"] > 40  # pushed against the bound


def test_infeasible_latency_fails_fast(tmp_path):
    def never(arch):
        raise AssertionError("no evaluation when the constraints are infeasible")

    table = synthetic(tmp_path)
    with pytest.raises(UserError) as e:
        run_search(SPACE, SearchConfig(latency_table=table, max_latency_ms=29), never, tmp_path / "a", progress=False)
    assert "latency <= 29 ms" in str(e.value) and "predicted latency 30.00-90.00 ms" in str(e.value)
    # each alone feasible, together not: the fastest architectures have the fewest FLOPs
    with pytest.raises(UserError, match="none found meeting all constraints together"):
        run_search(SPACE, SearchConfig(latency_table=table, max_latency_ms=31, min_flops=300e6), never,
                   tmp_path / "b", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    cons = check_constraints(SPACE, SearchConfig(latency_table=table, max_latency_ms=31))
    assert cons.ok((0,) * 20) and cons.ok((1,) + (0,) * 19) and not cons.ok((1, 1) + (0,) * 18)


def test_bad_tables_are_one_line_errors(tmp_path, cli_here):
    with pytest.raises(UserError, match=r"table.json: latency table was measured for the small x1 space"):
        load_table(synthetic(tmp_path), get_space("large"))
    with pytest.raises(UserError, match=r"table.json: bad latency table: unsupported version 7"):
        load_table(synthetic(tmp_path, version=7))
    with pytest.raises(UserError, match=r"bad latency table: .*finite"):
        load_table(synthetic(tmp_path, fixed_ms={"stem": -1.0}))
    with pytest.raises(UserError, match="max_latency_ms needs latency_table"):
        from detnas.strict import validate
        validate(SearchConfig, {"max_latency_ms": 10}, "search.yaml")
    for args, expect in ((["--input-size", "16"], "at least 32"), (["--input-size", "axb"], "'axb'"),
                         (["--detector", "ssd"], "--detector"), (["--device", "tpu"], "--device"),
                         (["--clock", "cpu"], "needs --device cpu and --threads 1"), (["--clock", "sun"], "--clock")):
        one_line_error(cli_here("latency", *args, "--out", tmp_path / "t.json", check=False), expect)
    one_line_error(cli_here("latency", "--out", tmp_path, check=False), "is a folder")
