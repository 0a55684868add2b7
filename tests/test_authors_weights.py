"""``init:`` from the DetNAS authors' checkpoints: state dicts with their key names and shapes (from
their model definitions) load onto our backbone, which then computes what their network computes.

Their networks are written here as plain functional forwards over their own keys (their channel
splits included), independent of the key mapping in ``artifacts/authors_layout.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from detnas.artifacts import authors_layout as A
from detnas.artifacts.init_weights import load_init
from detnas.errors import UserError
from detnas.model.space import SearchSpace, get_space, parse_arch
from detnas.model.supernet import ShuffleNetBackbone

COCO_FPN_300M = "21202112331300313132"  # their COCO-FPN-300M, as in their network.py
# every stride-2 block doubles the channels: their view-transpose split has an exact renumbering
TINY = SearchSpace("tiny", 16, (3, 3, 3, 3), (32, 64, 128, 256), last_channels=256)


def their_state(layout: str, space: SearchSpace, arch, supernet: bool, seed: int = 0) -> dict:
    """Random tensors under the authors' key names and shapes: the shapes of our modules through the
    mapping (a wrong shape or name breaks the reference forwards below), biases on their stem and
    last conv, their classifier."""
    gen = torch.Generator().manual_seed(seed)
    ours = ShuffleNetBackbone(space, None if supernet else arch, num_classes=10).state_dict()
    state = {}
    for mine, conv, bn in A.layer_pairs(layout, space, None if supernet else arch, supernet, head=True):
        weight = ours[f"{mine}.0.weight"]
        state[f"{conv}.weight"] = torch.randn(weight.shape, generator=gen) / weight[0].numel() ** 0.5
        n = len(weight)
        state[f"{bn}.running_mean"] = torch.randn(n, generator=gen) * 0.1
        state[f"{bn}.running_var"] = torch.rand(n, generator=gen) + 0.5
        state[f"{bn}.num_batches_tracked"] = torch.tensor(7)
        if layout == "detnas":  # SPOS's BNs have no affine parameters
            state[f"{bn}.weight"] = torch.rand(n, generator=gen) + 0.5
            state[f"{bn}.bias"] = torch.randn(n, generator=gen) * 0.1
    if layout == "detnas":
        for conv in ("first_conv.conv", "last_conv.conv"):
            state[f"{conv}.bias"] = torch.randn(len(state[f"{conv}.weight"]), generator=gen) * 0.1
        state["fc.fc.weight"], state["fc.fc.bias"] = torch.randn(1000, space.last_channels), torch.zeros(1000)
    else:
        state["classifier.0.weight"] = torch.randn(1000, space.last_channels)
    return state


def _bn(x, sd, name):
    return F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd.get(f"{name}.weight"),
                        sd.get(f"{name}.bias"), False, 0.0, 1e-5)


def _conv(x, sd, name, stride=1):
    w = sd[f"{name}.weight"]
    groups = x.shape[1] if w.shape[1] == 1 and x.shape[1] > 1 else 1  # depthwise
    return F.conv2d(x, w, sd.get(f"{name}.bias"), stride, w.shape[-1] // 2, groups=groups)


def _split(x, view_transpose: bool):
    if view_transpose:  # their channel_shuffle1
        b, c, h, w = x.shape
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        return x[:, : c // 2], x[:, c // 2:]
    return x[:, 0::2], x[:, 1::2]  # channel_shuffle2 and SPOS's


def detnas_forward(sd, space, arch, supernet, view_transpose):
    """Their ShuffleNetV2DetNAS (stage outputs, then last_conv's output)."""
    ops = ("shufflenet_3x3", "shufflenet_5x5", "shufflenet_7x7", "xception_3x3")

    def run(x):
        x = F.relu(_bn(_conv(x, sd, "first_conv.conv", 2), sd, "first_conv.bn"))
        outs, repeat = [], 0
        for spec in space.blocks():
            repeat = 0 if spec.stride == 2 else repeat + 1
            c, name = arch[spec.index], f"{spec.stage + 1}{chr(97 + repeat)}"
            t, op = f"features.{spec.index}.{c}." if supernet else f"features.{spec.index}.", f"{name}_{ops[c]}"
            if spec.stride == 1:
                keep, y = _split(x, view_transpose)
            else:
                p = f"{t}proj_conv.interstellar{name}_proj"
                keep = _bn(_conv(x, sd, f"{p}_s", 2), sd, f"{p}_s_bn")
                keep, y = F.relu(_bn(_conv(keep, sd, p), sd, f"{t}proj_conv.bn{name}_proj")), x
            parts = "abc" if c == 3 else "ab"
            for j, part in enumerate(parts):
                base = f"{t}conv.{j}.interstellar{op}_branch2{part}"
                if c == 3 or part == "b":
                    y = _bn(_conv(y, sd, f"{base}_s", spec.stride if (j == 0 or c != 3) else 1), sd, f"{base}_s_bn")
                y = _bn(_conv(y, sd, base), sd, f"{t}conv.{j}.bn{op}_branch2{part}")
                y = F.relu(y) if j < len(parts) - 1 else y
            x = torch.cat((keep, F.relu(y)), 1)
            if spec.index in space.stage_last_block():
                outs.append(x)
        return outs, F.relu(_bn(_conv(x, sd, "last_conv.conv"), sd, "last_conv.bn"))

    return run


def _sequential(x, sd, prefix, stride):
    """One of SPOS' Sequentials: convs and BNs by index, ReLU where an index holds no tensors, and
    after the last; the first depthwise conv has the stride."""
    last = max(int(k[len(prefix) + 1:].split(".")[0]) for k in sd if k.startswith(prefix + "."))
    for n in range(last + 1):
        name = f"{prefix}.{n}"
        if f"{name}.running_mean" in sd:
            x = _bn(x, sd, name)
        elif f"{name}.weight" in sd:
            depthwise = sd[f"{name}.weight"].shape[1] == 1
            x, stride = _conv(x, sd, name, stride if depthwise else 1), (1 if depthwise else stride)
        else:
            x = F.relu(x)
    return F.relu(x)


def spos_forward(sd, space, arch):
    def run(x):
        x = F.relu(_bn(_conv(x, sd, "first_conv.0", 2), sd, "first_conv.1"))
        outs = []
        for spec in space.blocks():
            t = f"features.{spec.index}.{arch[spec.index]}."
            if spec.stride == 1:
                keep, y = _split(x, False)
            else:
                keep, y = _sequential(x, sd, t + "branch_proj", 2), x
            x = torch.cat((keep, _sequential(y, sd, t + "branch_main", spec.stride)), 1)
            if spec.index in space.stage_last_block():
                outs.append(x)
        return outs, F.relu(_bn(_conv(x, sd, "conv_last.0"), sd, "conv_last.1"))

    return run


def ours_forward(model, arch):
    model.eval()

    def run(x):
        feats = model(x, arch)
        return list(feats.values()), model.head[0](feats["c5"])

    return run


def save(path, state, wrap=None, prefix=""):
    state = {prefix + k: v for k, v in state.items()}
    torch.save(state if wrap is None else {wrap: state, "epoch": 3}, path)
    return path


def test_their_key_names_and_shapes_of_the_released_300m_model():
    """Literal keys of their COCO-FPN-300M (stage 1 block a: 16 -> 64 channels, mid 32; stage 2 block a:
    64 -> 160, mid 80, choice 2 is 7x7)."""
    space, arch = get_space("small"), parse_arch(COCO_FPN_300M)
    pairs = {conv: mine for mine, conv, _bn in A.layer_pairs("detnas", space, arch, False, head=True)}
    model = ShuffleNetBackbone(space, arch, num_classes=10).state_dict()
    expect = {
        "features.0.conv.0.interstellar1a_shufflenet_7x7_branch2a": (32, 16, 1, 1),
        "features.0.conv.1.interstellar1a_shufflenet_7x7_branch2b_s": (32, 1, 7, 7),
        "features.0.conv.1.interstellar1a_shufflenet_7x7_branch2b": (48, 32, 1, 1),
        "features.0.proj_conv.interstellar1a_proj_s": (16, 1, 7, 7),
        "features.8.conv.2.interstellar3a_xception_3x3_branch2c": (160, 160, 1, 1),
        "features.19.conv.0.interstellar4d_shufflenet_7x7_branch2a": (320, 320, 1, 1),
        "last_conv.conv": (1024, 640, 1, 1),
    }
    for conv, shape in expect.items():
        assert tuple(model[f"{pairs[conv]}.0.weight"].shape) == shape, conv


@pytest.mark.parametrize("wrap,prefix", [(None, ""), ("state_dict", "module."), ("model", "module.backbone.body.")])
def test_their_standalone_model_computes_their_function(tmp_path, wrap, prefix):
    """A released ImageNet model (even/odd split): our network gives their stage outputs and last conv,
    from a plain file, a DataParallel training checkpoint or a maskrcnn-benchmark detector."""
    space, arch = get_space("small"), parse_arch(COCO_FPN_300M)
    sd = their_state("detnas", space, arch, supernet=False)
    model = ShuffleNetBackbone(space, arch, num_classes=10)
    assert load_init(model, save(tmp_path / "COCO_FPN_300M.pkl", sd, wrap, prefix)) is None
    x = torch.randn(2, 3, 64, 64)
    (theirs, their_last), (ours, our_last) = detnas_forward(sd, space, arch, False, False)(x), ours_forward(model, arch)(x)
    for a, b in zip(theirs + [their_last], ours + [our_last]):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_a_spos_supernet_computes_their_function_on_every_path(tmp_path):
    space = get_space("small")
    sd = their_state("spos", space, None, supernet=True)
    model = ShuffleNetBackbone(space, None, num_classes=10)
    load_init(model, save(tmp_path / "checkpoint-150000.pth.tar", sd, "state_dict", "module."))
    x = torch.randn(2, 3, 64, 64)
    for arch in ((0,) * 20, (3,) * 20, parse_arch("12301230123012301230")):
        (theirs, a), (ours, b) = spos_forward(sd, space, arch)(x), ours_forward(model, arch)(x)
        for t, o in zip(theirs + [a], ours + [b]):
            torch.testing.assert_close(o, t, atol=1e-4, rtol=1e-4)


def test_their_view_transpose_supernet_is_renumbered_exactly_where_it_can_be(tmp_path):
    """Their ImageNet supernet splits by view-transpose: with channels renumbered, our supernet and a
    path taken out of it give their last conv's output (stage outputs are in our order)."""
    sd = their_state("detnas", TINY, None, supernet=True, seed=1)
    path = save(tmp_path / "supernet.pkl", sd)
    supernet, arch = ShuffleNetBackbone(TINY, None, num_classes=10), (0, 3, 1, 2, 3, 0, 1, 3, 2, 2, 3, 0)
    standalone = ShuffleNetBackbone(TINY, arch, num_classes=10)
    assert load_init(supernet, path) is None and load_init(standalone, path) is None
    x = torch.randn(2, 3, 64, 64)
    _, theirs = detnas_forward(sd, TINY, arch, True, True)(x)
    torch.testing.assert_close(ours_forward(supernet, arch)(x)[1], theirs, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours_forward(standalone, arch)(x)[1], theirs, atol=1e-4, rtol=1e-4)
    _, plain = detnas_forward(sd, TINY, arch, True, False)(x)
    assert (plain - theirs).abs().max() > 0.1  # the split matters: without renumbering it would differ


def test_renumbering_is_the_identity_for_an_even_odd_split():
    orders, end, unmatched, _ = A.stage_orders(get_space("large"), view_transpose=False)
    assert unmatched == 0 and end == list(range(960))
    assert all(o["in"] == sorted(o["in"]) and o["out"] == sorted(o["out"]) for o in orders.values())


def test_their_small_supernet_loads_with_a_note_on_the_channels_routed_otherwise(tmp_path):
    space = get_space("small")
    sd = their_state("detnas", space, None, supernet=True)
    note = load_init(ShuffleNetBackbone(space), save(tmp_path / "COCO_FPN_300M_supernet.pkl", sd))
    _, _, unmatched, total = A.stage_orders(space, view_transpose=True)
    assert 0 < unmatched < total / 10  # the proj parts of stages 1 and 2's first blocks
    assert f"{unmatched} of {total} channels" in note and "\n" not in note


def one_line(exc_info, *parts):
    text = str(exc_info.value)
    assert "\n" not in text and all(p in text for p in parts), text


def test_a_wrong_shape_names_the_first_mismatching_key(tmp_path):
    space, arch = get_space("small"), parse_arch(COCO_FPN_300M)
    sd = their_state("detnas", space, arch, supernet=False)
    bad = "features.5.conv.0.interstellar2b_shufflenet_5x5_branch2a.weight"
    sd[bad] = torch.zeros(80, 81, 1, 1)
    sd["features.9.conv.0.interstellar3b_xception_3x3_branch2a.weight"] = torch.zeros(1, 1, 1, 1)  # later: not named
    path = save(tmp_path / "bad.pkl", sd)
    with pytest.raises(UserError) as e:
        load_init(ShuffleNetBackbone(space, arch), path)
    one_line(e, str(path), bad, "blocks.5.0.branch.0.0.weight", "(80, 81, 1, 1)", "(80, 80, 1, 1)")


def test_other_networks_are_refused_in_one_line(tmp_path):
    small, arch = get_space("small"), parse_arch(COCO_FPN_300M)
    standalone = save(tmp_path / "net.pkl", their_state("detnas", small, arch, supernet=False))
    with pytest.raises(UserError) as e:  # another architecture: read from their op names
        load_init(ShuffleNetBackbone(small, (0,) * 20), standalone)
    one_line(e, f"architecture {COCO_FPN_300M}, not {'0' * 20}")
    with pytest.raises(UserError) as e:  # a supernet needs every choice
        load_init(ShuffleNetBackbone(small), standalone)
    one_line(e, "cannot start a supernet")
    with pytest.raises(UserError) as e:  # another space
        load_init(ShuffleNetBackbone(get_space("large"), (0,) * 40), standalone)
    one_line(e, "20 blocks", "large space 40")
    with pytest.raises(UserError) as e:  # missing tensors
        sd = their_state("detnas", small, arch, supernet=False)
        del sd["features.3.conv.0.bn1d_shufflenet_3x3_branch2a.running_var"]
        load_init(ShuffleNetBackbone(small, arch), save(tmp_path / "cut.pkl", sd))
    one_line(e, "features.3.conv.0.bn1d_shufflenet_3x3_branch2a.running_var", "missing")
    with pytest.raises(UserError) as e:
        load_init(ShuffleNetBackbone(small, arch), save(tmp_path / "resnet.pth", {"conv1.weight": torch.zeros(1)}))
    one_line(e, "DetNAS authors' layout")
