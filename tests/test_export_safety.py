"""``detnas export`` as a new user meets it (issue 9): it works after the README's plain install (no
ONNX packages), asks for them in one line when ``--onnx`` needs them, writes readable files, and an
export that fails leaves the folder as it was."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import detnas.artifacts.export
from cli_checks import ENV, one_line_error
from data_builders import TINY_DETECTOR
from detnas.artifacts.export import export_model
from detnas.checkpoint import save_checkpoint
from detnas.model.detector import DetectorConfig, build_detector
from detnas.model.space import get_space
from detnas.model.supernet import ShuffleNetBackbone

ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
# ``detnas`` in a process where the ONNX packages cannot be imported, as after `pip install -e .`
WITHOUT_ONNX = ("import sys\nfor m in {!r}: sys.modules[m] = None\nfrom detnas.cli import main\nmain(sys.argv[1:])"
                .format(ONNX_PACKAGES))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A retrained detector checkpoint and a supernet (finetune) one."""
    root = tmp_path_factory.mktemp("export_safety")
    cfg = DetectorConfig(**{**TINY_DETECTOR, "min_size": 48})
    space = {"space": "small", "width_mult": 1.0}
    det = build_detector(ShuffleNetBackbone(get_space("small"), (1,) * 20), 1, cfg)
    save_checkpoint(root / "retrain.pt", {"stage": "retrain", "space": space, "arch": "1" * 20, "classes": ["x"],
                                          "config": {"detector": cfg.model_dump()}, "model": det.state_dict(),
                                          "step": 1})
    save_checkpoint(root / "finetune.pt", {"stage": "finetune", "space": space, "model": {}})
    return {"retrain": root / "retrain.pt", "finetune": root / "finetune.pt"}


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_export_after_the_plain_install(checkpoints, tmp_path):
    out = tmp_path / "exported"

    def run(*extra):
        return subprocess.run([sys.executable, "-c", WITHOUT_ONNX, "export", "--checkpoint",
                               str(checkpoints["retrain"]), "--out", str(out), *extra],
                              capture_output=True, text=True, timeout=300,
                              env=ENV)

    r = run()
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert sorted(contents(out)) == ["arch.json", "backbone.safetensors", "detector.safetensors"]
    assert {oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == {"0o644"}  # shareable, like every output
    before = contents(out)
    one_line_error(run("--onnx"), "needs the onnx package", "pip install 'detnas[export]'")
    assert contents(out) == before


def test_a_failed_export_leaves_the_folder_as_it_was(checkpoints, tmp_path, monkeypatch):
    out = tmp_path / "exported"
    export_model(checkpoints["retrain"], out)
    before = contents(out)

    def fail(*args, **kwargs):
        raise RuntimeError("the exporter broke half-way")

    monkeypatch.setattr(detnas.artifacts.export, "require_onnx", lambda: None)
    monkeypatch.setattr(detnas.artifacts.export, "_export_onnx", fail)
    with pytest.raises(RuntimeError):
        export_model(checkpoints["retrain"], out, onnx=True)
    assert contents(out) == before  # no new weights beside an old arch.json, no temp folder left


def test_messages_about_the_checkpoint_given(checkpoints, tmp_path, cli_here):
    line = one_line_error(cli_here("export", "--checkpoint", checkpoints["finetune"], "--out", tmp_path / "e",
                                   check=False), str(checkpoints["finetune"]), "not a standalone detector to export")
    assert "exportd" not in line
    one_line_error(cli_here("evaluate", "--checkpoint", tmp_path, "--coco-annotations", "a.json", "--images", "i",
                            check=False), str(tmp_path), "is a folder, not a checkpoint file")
    assert not (tmp_path / "e").exists()

