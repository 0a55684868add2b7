import json

import pytest

from cli_checks import run_detnas
from cli_checks import run_here as run_cli  # in this process: a fresh interpreter per call cost 3-4 s each


def test_flops_json_has_reference_numbers():
    # a user's `python -m detnas` (a fresh interpreter); the other tests call the same CLI in this process
    r = run_detnas("flops", "--space", "small", "--arch", "21202112331300313132", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["arch"] == "21202112331300313132" and out["space"] == "small"
    assert out["body_flops"] == 288082368 and out["full_flops"] == 321219008
    assert isinstance(out["params"], int) and out["params"] == 3532072


def test_flops_preset_uses_its_space_and_width():
    out = json.loads(run_cli("flops", "--arch", "detnasnet-3.8g", "--json").stdout)
    assert out["space"] == "large" and out["width_mult"] == 1.8 and out["body_flops"] > 3.5e9


def test_space_lists_every_preset():
    from detnas.model.space import PRESETS

    r = run_cli("space")
    assert r.returncode == 0
    for name in PRESETS:
        assert name in r.stdout
    assert "262.71M" in r.stdout and "288.08M" in r.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["flops", "--arch", "0000"], "spaces have 20 (small), 40 (large)"),
        (["flops", "--space", "small", "--arch", "0" * 40], "has 40 blocks but the small space has 20"),
        (["flops", "--space", "huge", "--arch", "0" * 20], "unknown search space 'huge'"),
        (["flops", "--arch", "0" * 19 + "7"], "digit(s) 7"),
        (["flops", "--arch", "0" * 20, "--input-size", "abc"], "--input-size"),
        (["flops"], "Missing option '--arch'"),
        (["nonsense"], "No such command"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(args, message):
    r = run_cli(*args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("detnas: error:") and message in lines[0], r.stderr


def test_flops_of_a_whole_detector():
    r = run_cli("flops", "--arch", "shufflenetv2-20", "--detector", "retinanet", "--input-size", "128",
                "--fpn-channels", "64", "--det-classes", "10", "--json")
    assert r.returncode == 0, r.stderr
    det = json.loads(r.stdout)["detector"]
    assert det["kind"] == "retinanet"
    # backbone part equals the analytic body count at the same input size
    assert det["backbone"] == json.loads(run_cli("flops", "--arch", "shufflenetv2-20", "--input-size", "128",
                                                 "--json").stdout)["body_flops"]
    assert det["total"] == det["backbone"] + det["fpn"] + det["head"]
