"""The README's commands: the two fresh-machine commands come first and CI runs the second; the cheap
commands run here for real; every other `detnas` command line names a real command and real options
(their behaviour is tested in the stage tests); the example config is a valid pipeline config."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, re.S)
SETUP = "python3 -m venv .venv && .venv/bin/pip install -e '.[demo]' -c constraints.txt && .venv/bin/detnas demo"
TESTS = "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' -c constraints.txt && .venv/bin/python -m pytest -q"


def detnas_commands() -> list[list[str]]:
    """Each `detnas ...` invocation in the bash blocks, as the argument list after `detnas`."""
    out = []
    for lang, body in BLOCKS:
        if lang != "bash":
            continue
        for line in body.splitlines():
            line = line.split("#")[0].strip()
            words = shlex.split(line)
            for i, w in enumerate(words):
                if w.endswith("bin/detnas") or (w == "detnas" and i > 0 and words[i - 1] == "-m"):
                    out.append(words[i + 1:])
                    break
    return out


def test_fresh_machine_commands_come_first_and_ci_runs_the_tests():
    assert [body.strip() for _, body in BLOCKS[:2]] == [SETUP, TESTS]
    assert TESTS in (ROOT / ".ci" / "run").read_text()


def test_readme_commands_name_real_commands_and_options():
    from typer.testing import CliRunner

    from detnas.cli import app

    commands = detnas_commands()
    assert len(commands) >= 8
    helps: dict[str, str] = {}
    for args in commands:
        sub = " ".join(args[:2] if args[0] == "config" else args[:1])  # `config show|template` are subcommands
        if sub not in helps:  # in-process: a subprocess per command cost 3 s of imports each
            r = CliRunner().invoke(app, [*sub.split(), "--help"], env={"COLUMNS": "300"})
            assert r.exit_code == 0, f"README uses unknown command 'detnas {sub}': {r.output}"
            helps[sub] = r.output
        for option in (a for a in args[1:] if a.startswith("--")):
            assert option in helps[sub], f"README: 'detnas {sub}' has no option {option}"


@pytest.mark.parametrize("args", [a for a in detnas_commands() if a[0] in ("space", "flops")], ids=" ".join)
def test_cheap_readme_commands_run(args):
    from cli_checks import run_here  # in this process (test_cli.py runs `python -m detnas` itself)

    r = run_here(*args)
    assert r.returncode == 0, r.stderr


def test_readme_config_example_is_a_valid_pipeline_config():
    from detnas.config.schema import PipelineConfig
    from detnas.strict import validate

    examples = [body for lang, body in BLOCKS if lang == "yaml"]
    assert examples
    for body in examples:
        cfg = validate(PipelineConfig, yaml.safe_load(body), "README.md")
        assert cfg.detection.holdout.size > 0


def test_readme_python_example_runs(tmp_path, monkeypatch):
    """The 'use the found backbone elsewhere' snippet, against a real export of a tiny detector."""
    import torch

    from data_builders import TINY_DETECTOR
    from detnas.artifacts.export import export_model
    from detnas.checkpoint import save_checkpoint
    from detnas.model.detector import DetectorConfig, build_detector
    from detnas.model.space import get_space
    from detnas.model.supernet import ShuffleNetBackbone

    det_cfg = DetectorConfig(**TINY_DETECTOR)
    arch = (1,) * 20
    model = build_detector(ShuffleNetBackbone(get_space("small"), arch), 3, det_cfg)
    ckpt = tmp_path / "checkpoint.pt"
    save_checkpoint(ckpt, {"stage": "retrain", "space": {"space": "small", "width_mult": 1.0}, "arch": "1" * 20,
                           "classes": ["a", "b", "c"], "config": {"detector": det_cfg.model_dump()},
                           "model": model.state_dict(), "step": 1})
    export_model(ckpt, tmp_path / "exported", onnx=False)
    snippet = next(body for lang, body in BLOCKS if lang == "python" and "detnas.backbone" in body)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(snippet, scope)
    scope["model"].eval()
    with torch.no_grad():
        assert isinstance(scope["model"]([torch.rand(3, 64, 64)]), list)
