"""The one rule for "finished" and "may resume" (``runs.py``) and the one place that decides which
architecture of which space a user's text is (``space.resolve_arch``)."""

from __future__ import annotations

import json

import pytest

import detnas.model.space
from detnas.config.runs import (
    BEST_FILE,
    METRICS_FILE,
    RESULT_FILE,
    SEARCH_RESUMABLE,
    TRAINING_RESUMABLE,
    config_changes,
    is_finished,
    with_added_keys,
)
from detnas.errors import UserError
from detnas.model.flops import arch_cost
from detnas.model.space import PRESETS, ArchError, get_space, resolve_arch, to_arch
from detnas.model.supernet import ShuffleNetBackbone


@pytest.mark.parametrize("marker", [METRICS_FILE, BEST_FILE, RESULT_FILE])
def test_a_stage_is_finished_once_its_last_file_is_there(tmp_path, marker):
    assert not is_finished(tmp_path) and not is_finished(tmp_path / "missing")
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    assert not is_finished(tmp_path)  # an interrupted run
    (tmp_path / marker).write_text("{}")
    assert is_finished(tmp_path)


def test_config_changes_ignore_only_the_resumable_keys():
    old = {"train": {"lr": 0.1, "iters": 5}, "logging": {"log_every": 1}, "data": {"workers": 0, "flip": True}}
    new = {"train": {"lr": 0.2, "iters": 5}, "logging": {"log_every": 9}, "data": {"workers": 4, "flip": False}}
    assert config_changes(old, new, TRAINING_RESUMABLE) == ["data.flip", "train.lr"]
    assert config_changes({"generations": 2, "seed": 0}, {"generations": 5, "seed": 1}, SEARCH_RESUMABLE) == ["seed"]
    assert config_changes({"a": 1}, {"b": 1}) == ["a", "b"]


def test_keys_added_since_a_run_began_are_no_change_at_their_defaults():
    """A run recorded by an older detnas (no ``sampling.prefix``, no ``amp``) resumes after an upgrade;
    a value other than the new key's default is still a change."""
    from detnas.config.schema import FinetuneConfig

    source = {"annotations": "a.json", "images": "img"}
    new = FinetuneConfig.model_validate({"data": {"train": source}, "train": {"iters": 5, "batch_size": 2, "lr": 0.1}})
    old = new.model_dump(mode="json")
    del old["sampling"]["prefix"], old["amp"]
    assert config_changes(old, new.model_dump(mode="json")) == ["amp", "sampling.prefix"]
    assert config_changes(with_added_keys(old, FinetuneConfig), new.model_dump(mode="json")) == []
    changed = new.model_copy(update={"sampling": new.sampling.model_copy(update={"prefix": [1]})})
    assert config_changes(with_added_keys(old, FinetuneConfig), changed.model_dump(mode="json")) == ["sampling.prefix"]


def test_resolve_arch_finds_the_space_of_digits_presets_and_lists():
    small, large = get_space("small"), get_space("large")
    assert resolve_arch("0123" * 5) == (to_arch("0123" * 5), small)
    assert resolve_arch([3] * 40) == ((3,) * 40, large)
    assert resolve_arch(json.dumps([1] * 20))[0] == (1,) * 20
    preset = PRESETS["detnasnet-3.8g"]
    arch, space = resolve_arch(preset.name)
    assert arch == to_arch(preset.arch) and space == get_space("large", 1.8)
    assert resolve_arch("0" * 20, "small", 1.5)[1] == get_space("small", 1.5)
    with pytest.raises(ArchError, match="belongs to the large space"):
        resolve_arch(preset.name, small)
    with pytest.raises(ArchError, match="blocks"):
        resolve_arch("0" * 7)


@pytest.mark.parametrize("text", ["21202112331300313132", "detnas-coco-fpn-300m", json.dumps([0] * 40)])
def test_an_architecture_is_validated_once_on_its_way_to_the_network(text, monkeypatch):
    """At the door (``resolve_arch``), not again by the networks and the FLOPs count it is given to."""
    calls = []
    check = detnas.model.space.validate_arch
    monkeypatch.setattr(detnas.model.space, "validate_arch", lambda *args: calls.append(args) or check(*args))
    arch, space = resolve_arch(text)
    ShuffleNetBackbone(space, arch, num_classes=10)
    ShuffleNetBackbone(space).subnet(arch)
    arch_cost(space, arch)
    assert len(calls) == 1


def test_resolve_arch_reads_a_best_json_of_the_same_space_only(tmp_path):
    best = tmp_path / BEST_FILE
    best.write_text(json.dumps({"arch": "2" * 20, "space": "small", "width_mult": 1.0}))
    assert resolve_arch(str(best)) == ((2,) * 20, get_space("small"))
    assert resolve_arch(str(best), get_space("small")) == ((2,) * 20, get_space("small"))
    with pytest.raises(UserError, match=r"space small x1.0, the config uses"):
        resolve_arch(str(best), get_space("small", 1.5))
    best.write_text(json.dumps({"map": 1.0}))
    with pytest.raises(UserError, match="'arch' digit string"):
        resolve_arch(str(best))
