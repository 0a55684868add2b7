"""``init:``: the starting weights of a backbone (supernet or standalone network) from a file made
elsewhere: one of our checkpoints, a ``detnas export`` (``backbone.safetensors``/``detector.safetensors``),
or a checkpoint in the DetNAS authors' layouts (``authors_layout.py``: their released ImageNet models
and supernets, SPOS supernets; plain, ``{"state_dict": ...}`` or ``{"model": ...}``, with or without
DataParallel's ``module.`` and a detector's ``backbone.body.`` prefix).

A supernet starts from a supernet (every choice); a standalone network from a standalone network of
its architecture or from a supernet's weights on its path. The classification head's last linear
layer always starts fresh (its classes are the run's); its conv (``head.0``) is taken when the file
has one. Shapes are checked key by key: the first that differs is a one-line ``UserError``.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from detnas.artifacts import authors_layout as A
from detnas.artifacts.weights import load_safetensors
from detnas.checkpoint import FORMAT, load_checkpoint
from detnas.config.runs import CLASSIFICATION_STAGES, FINETUNE, PRETRAIN, RETRAIN, RETRAIN_PRETRAIN
from detnas.errors import UserError
from detnas.model.space import SearchSpace, arch_to_str

BODY = "backbone.body."  # where a detector holds its backbone's body


def _read_torch(path: Path) -> dict:
    if path.is_dir():
        raise UserError("is a folder, not a weights file (a run's checkpoint is <run>/checkpoint.pt)", path)
    if not path.is_file():
        raise UserError("checkpoint not found", path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError("not a detnas checkpoint nor a state dict: it holds Python objects that a weights-only "
                        "load refuses to unpickle (save the model's state_dict instead)", path) from None
    except Exception as e:  # RuntimeError, OSError, EOFError... on damaged or foreign files
        raise UserError(f"not a readable checkpoint (truncated, damaged or not a torch file): "
                        f"{' '.join(str(e).split())[:160]}", path) from None
    if not isinstance(data, dict):
        raise UserError(f"expected a dict of tensors, found {type(data).__name__}", path)
    return data


def finetuned_supernet(path: str | Path) -> bool:
    """Whether ``path`` is one of our finetuned supernet detectors (whose every weight a supernet
    detector can start from, e.g. a few-shot sub-supernet), rather than backbone weights."""
    path = Path(path)
    if path.suffix == ".safetensors" or not zipfile.is_zipfile(path):  # ours are torch's zip format
        return False
    try:  # memory-mapped: only the small fields are read here, the weights once, by whoever loads them
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not one of ours: the loader that reads it says why
        return False
    return (isinstance(data, dict) and data.get("format") == FORMAT and data.get("stage") == FINETUNE
            and data.get("arch") is None)


def _unwrap(data: dict, path: Path) -> dict:
    """The authors' backbone tensors of ``data`` under their own key names (no wrapper, no prefix)."""
    for key in ("state_dict", "model"):
        if isinstance(data.get(key), dict):
            data = data[key]
    tensors = {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    stem = next((k for k in tensors if k.endswith(("first_conv.conv.weight", "first_conv.0.weight"))), None)
    if stem is None:
        raise UserError("not a detnas checkpoint or export, nor the DetNAS authors' layout (no first_conv "
                        "weights: their ImageNet models, supernets and SPOS supernets have one)", path)
    prefix = stem[: stem.index("first_conv.")]
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _authors_state(raw: dict, space: SearchSpace, arch, head: bool, path: Path) -> tuple[dict, dict, str | None]:
    """Our state (and our key -> their key) of the authors' checkpoint ``raw``, and a note when their
    channel routing could not be reproduced exactly."""
    layout = A.detect_layout(raw)
    blocks = len({k.split(".")[1] for k in raw if k.startswith("features.")})
    if blocks != space.num_blocks:
        raise UserError(f"the checkpoint's network has {blocks} blocks, the {space.describe()} space "
                        f"{space.num_blocks}: set space (small: 20, large: 40) and width_mult to its", path)
    supernet = A.is_supernet(raw)
    if not supernet:
        stored = A.stored_choices(raw, layout, blocks)
        if arch is None:
            raise UserError(f"a standalone network ({layout} layout, architecture "
                            f"{arch_to_str(stored) if stored else '?'}) cannot start a supernet, which needs "
                            "every choice: give a supernet checkpoint", path)
        if stored is not None and stored != tuple(arch):
            raise UserError(f"the checkpoint's network is architecture {arch_to_str(stored)}, not "
                            f"{arch_to_str(arch)}", path)
    state, names = {}, {}
    for ours, conv, bn in A.layer_pairs(layout, space, arch, supernet, head and f"{_last_conv(layout)}.weight" in raw):
        names[f"{ours}.0.weight"] = f"{conv}.weight"
        state[f"{ours}.0.weight"] = _need(raw, f"{conv}.weight", path)
        width = len(state[f"{ours}.0.weight"])
        defaults = {"num_batches_tracked": torch.tensor(0)}  # older torch did not save it
        if layout == "spos":  # its BNs have no affine parameters
            defaults.update(weight=torch.ones(width), bias=torch.zeros(width))
        for part in A.BN_PARTS:
            key = f"{bn}.{part}"
            names[f"{ours}.1.{part}"] = key
            state[f"{ours}.1.{part}"] = _need({key: raw.get(key, defaults.get(part))}, key, path)
        if f"{conv}.bias" in raw:  # folded into BN's mean (exact, see authors_layout)
            state[f"{ours}.1.running_mean"] = state[f"{ours}.1.running_mean"] - raw[f"{conv}.bias"]
    note = None
    if layout == "detnas" and supernet:  # their supernet splits channels by view-transpose
        orders, end, unmatched, total = A.stage_orders(space, view_transpose=True)
        A.renumber(state, space, arch, orders, end, "head.0.0.weight" in state)
        if unmatched:
            note = (f"the authors' supernet splits channels by view-transpose, ours even/odd: {unmatched} of "
                    f"{total} channels take another route through the blocks than in their network "
                    "(the rest are renumbered to theirs); training adapts them")
    return state, names, note


def _last_conv(layout: str) -> str:
    return "last_conv.conv" if layout == "detnas" else "conv_last.0"


def _need(raw: dict, key: str, path: Path) -> torch.Tensor:
    value = raw.get(key)
    if not isinstance(value, torch.Tensor):
        raise UserError(f"'{key}' is missing: not the weights of this network (or another version of the "
                        "authors' layout)", path)
    return value


def _export_state(path: Path, space: SearchSpace, arch) -> dict:
    """A ``detnas export``'s backbone body, after checking its space and architecture."""
    from safetensors import safe_open

    state = load_safetensors(path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if arch is None:
        raise UserError(f"an export holds one standalone network (architecture {meta.get('arch', '?')}); a "
                        "supernet needs every choice: give a supernet checkpoint", path)
    if meta.get("space") not in (None, space.name) or float(meta.get("width_mult", space.width_mult)) != space.width_mult:
        raise UserError(f"the export is of space {meta.get('space')} x{meta.get('width_mult')}, this run uses "
                        f"{space.describe()}", path)
    if meta.get("arch") not in (None, arch_to_str(arch)):
        raise UserError(f"the export is architecture {meta['arch']}, not {arch_to_str(arch)}", path)
    for prefix in ("backbone.body.", "body."):  # detector.safetensors, backbone.safetensors
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    raise UserError("holds no backbone body (body.* keys): not a detnas export", path)


def _our_state(path: Path, space: SearchSpace, arch) -> dict:
    """The backbone (body and classification head) of one of our checkpoints, on ``arch``'s path."""
    from detnas.model.supernet import path_state

    data = load_checkpoint(path, (PRETRAIN, FINETUNE, RETRAIN_PRETRAIN, RETRAIN),
                           {"space": space.name, "width_mult": space.width_mult})
    model = data.get("model")
    if not isinstance(model, dict):
        raise UserError("checkpoint has no model weights", path)
    if data["stage"] not in CLASSIFICATION_STAGES:
        model = {k[len(BODY):]: v for k, v in model.items() if k.startswith(BODY)}
    if data["stage"] in (PRETRAIN, FINETUNE):
        return model if arch is None else path_state(model, arch)
    if arch is None:
        raise UserError(f"a {data['stage']} checkpoint holds one standalone network (architecture "
                        f"{data.get('arch')}); a supernet needs every choice: give a supernet checkpoint", path)
    if data.get("arch") not in (None, arch_to_str(arch)):
        raise UserError(f"checkpoint is for architecture {data.get('arch')}, not {arch_to_str(arch)}", path)
    return model


def load_init(model: nn.Module, path: str | Path) -> str | None:
    """Initialise the ``ShuffleNetBackbone`` ``model`` (its space, its ``fixed_arch`` or supernet, its
    head if any) from the file ``path`` (see the module docstring); returns a note to show the user,
    or None."""
    path, space, arch = Path(path), model.space, model.fixed_arch
    head = model.head is not None
    note, names = None, {}
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise UserError("weights file not found", path)
        state = _export_state(path, space, arch)
    else:
        data = _read_torch(path)
        if data.get("format") == FORMAT:
            state = _our_state(path, space, arch)
        else:
            state, names, note = _authors_state(_unwrap(data, path), space, arch, head, path)
    _check_and_load(model, state, names, path)
    return note


def _check_and_load(model: nn.Module, state: dict, names: dict, path: Path) -> None:
    """Load ``state`` into ``model`` after checking it key by key, in the model's order: a missing body
    key or the first shape that differs is a one-line error naming it (and the file's own key)."""
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key.startswith("head."):
            if key.startswith("head.0.") and key in state and state[key].shape != tensor.shape:
                state.pop(key)  # another width of the head's conv: it starts fresh, as the linear layer does
            continue
        theirs = f"'{names[key]}' for " if key in names else ""
        if key not in state:
            raise UserError(f"no weights for {theirs}'{key}' of this backbone ({model.space.describe()})", path)
        if state[key].shape != tensor.shape:
            raise UserError(f"shape mismatch at {theirs}'{key}': the file has {tuple(state[key].shape)}, this "
                            f"backbone ({model.space.describe()}) needs {tuple(tensor.shape)}", path)
    extra = [k for k in state if k not in expected and not k.startswith("head.")]
    if extra:
        raise UserError(f"'{extra[0]}' has no place in this backbone ({model.space.describe()}): weights of "
                        "another network?", path)
    model.load_state_dict({k: v for k, v in state.items() if k in expected and not k.startswith("head.4.")},
                          strict=False)
