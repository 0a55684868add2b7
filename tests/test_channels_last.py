"""Channels-last (model/layout.py): every block keeps the layout, and the numbers are those of NCHW
to float rounding: supernet outputs and gradients, the detector's features, losses and gradients, and
a path against its extracted network in either layout."""

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign

from detnas.model.blocks import ChoiceBlock
from detnas.model.detector import DetectorConfig, build_detector, extract_detector, roi_pooler, set_path
from detnas.model.evaluate import recalibrated_path
from detnas.model.layout import FORMATS, LAYOUT_ENV, apply_layout, is_channels_last, layout_of, resolve_layout
from detnas.model.roi_align import GatherMultiScaleRoIAlign
from detnas.model.space import NUM_CHOICES, arch_to_str, get_space
from detnas.model.supernet import STAGE_NAMES, ShuffleNetBackbone
from test_supernet import random_archs, randomize_bn

CL = torch.channels_last
# Every anchor reaches NMS and every proposal the box head: an untrained RPN's scores nearly tie, and
# float rounding (of either layout) reorders them, which would change a top-k cut or a random sample.
TINY = DetectorConfig(kind="fpn", fpn_channels=16, box_head_channels=32, anchor_size=8, min_size=64, max_size=64,
                      rpn_pre_nms_top_n_train=2000, rpn_post_nms_top_n_train=2000, rpn_pre_nms_top_n_test=100,
                      rpn_post_nms_top_n_test=20, box_batch_size_per_image=8000)


def assert_as_accurate(make, run, what: str, floors: dict[str, float] | None = None) -> None:
    """``run(net, dtype)`` (a dict of tensors: outputs, gradients) on a network of ``make()`` is as close
    to a float64 reference in channels-last as in NCHW: NCHW's own float32 rounding is the tolerance,
    within a factor 4 plus a floor (relative L2 error; ``floors`` by key, else 1e-5)."""
    reference = run(make().double(), torch.float64)
    a = run(apply_layout(make(), setting="nchw"), torch.float32)
    b = run(apply_layout(make(), setting="channels_last"), torch.float32)
    assert list(a) == list(b) == list(reference) and len(a) > 0
    for key, ref in reference.items():
        err_nchw, err_cl = (float((x[key].double() - ref).norm() / (ref.norm() or 1.0)) for x in (a, b))
        floor = (floors or {}).get(key, 1e-5)
        assert err_cl <= 4 * err_nchw + floor, f"{what}, {key}: channels-last {err_cl:.2e}, NCHW {err_nchw:.2e}"


def gradients(net, together: bool = False) -> dict:
    """Every parameter's gradient; ``together``: all as one vector (``"gradients"``)."""
    grads = {f"grad {name}": p.grad.detach() for name, p in net.named_parameters() if p.grad is not None}
    assert len(grads) > 10
    return {"gradients": torch.cat([g.flatten() for g in grads.values()])} if together else grads


# In train mode, a BN network's gradients explode at initialisation (every BN layer amplifies them):
# float32 rounding alone moves them 1-4% (L2) from float64 in NCHW, ~20 % for a batch of 4; every
# gradient is checked tensor by tensor in eval mode instead, and together in train mode.
TRAIN_GRADIENTS = 0.05


@pytest.mark.parametrize("stride", [1, 2])
def test_every_block_keeps_channels_last_forward_and_backward(stride):
    torch.manual_seed(0)
    in_c, out_c = 32, 32 if stride == 1 else 64
    x = torch.randn(2, in_c, 8, 8).contiguous(memory_format=CL).requires_grad_()
    for choice in range(NUM_CHOICES):
        block = ChoiceBlock(choice, in_c, out_c, stride).to(memory_format=CL)
        inner = []
        hooks = [m.register_forward_hook(lambda _m, _i, out, inner=inner: inner.append(out))
                 for m in block.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d))]
        arriving = []  # the gradient that reaches the block's input (a leaf's .grad takes the leaf's layout anyway)
        x_in = x * 1
        x_in.register_hook(arriving.append)
        y = block(x_in)
        for h in hooks:
            h.remove()
        assert y.shape == (2, out_c, 8 // stride, 8 // stride)
        assert y.is_contiguous(memory_format=CL) and not y.is_contiguous(), f"choice {choice}: {y.stride()}"
        assert all(t.is_contiguous(memory_format=CL) for t in inner), f"choice {choice}: a layer went NCHW"
        x.grad = None
        y.square().sum().backward()
        assert x.grad.is_contiguous(memory_format=CL), f"choice {choice}: input gradient {x.grad.stride()}"
        assert arriving[0].is_contiguous(memory_format=CL), f"choice {choice}: gradient {arriving[0].stride()}"
        for name, p in block.named_parameters():
            if p.dim() == 4:  # conv weights stay channels-last, and so do their gradients (and SGD's momentum)
                assert p.grad.is_contiguous(memory_format=CL), f"choice {choice}: {name}"


def test_the_backbone_converts_its_input_and_every_block_output_is_channels_last():
    torch.manual_seed(0)
    space = get_space("small")
    net = apply_layout(ShuffleNetBackbone(space, num_classes=10), setting="channels_last")
    assert layout_of(net) == "channels_last" and is_channels_last(net.stem.conv.weight)
    outputs = []
    for choices in net.blocks:
        for block in choices:
            block.register_forward_hook(lambda _m, _i, out: outputs.append(out))
    feats = net(torch.randn(2, 3, 64, 64), random_archs(space, 1, 0)[0])  # an NCHW batch, as loaders give it
    assert len(outputs) == space.num_blocks
    for i, y in enumerate(outputs):
        assert y.is_contiguous(memory_format=CL), f"block {i} output {tuple(y.shape)} strides {y.stride()}"
    assert all(f.is_contiguous(memory_format=CL) and not f.is_contiguous() for f in list(feats.values())[:3])


@pytest.mark.parametrize("train", [True, False])
def test_supernet_classification_outputs_and_gradients_match_nchw(train):
    space = get_space("small")

    def make():
        torch.manual_seed(0)
        model = ShuffleNetBackbone(space, num_classes=10, dropout=0.0)
        randomize_bn(model, 1)
        return model

    batch = 16 if train else 4  # train mode: enough images that BN's batch statistics are not chaotic
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    for arch in random_archs(space, 1, seed=5):
        def run(net, dtype, arch=arch):
            net.train(train)
            logits = net.classify(x.to(dtype), arch)
            torch.nn.functional.cross_entropy(logits, y).backward()
            bn = {f"buffer {k}": v for k, v in net.state_dict().items() if "running" in k}  # updated in train mode
            return {"logits": logits.detach(), **gradients(net, together=train), **bn}

        assert_as_accurate(make, run, f"arch {arch_to_str(arch)}",
                           {"gradients": TRAIN_GRADIENTS} if train else None)


def detection_batch(n=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, size, size, generator=g) for _ in range(n)]
    targets = []
    for _ in range(n):
        xy = torch.rand(2, 2, generator=g) * size * 0.5
        wh = torch.rand(2, 2, generator=g) * size * 0.3 + 8
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.tensor([1, 2])})
    return images, targets


def test_detector_features_losses_and_gradients_match_nchw():
    space = get_space("small")
    arch = random_archs(space, 1, seed=7)[0]
    images, targets = detection_batch()

    def make():
        torch.manual_seed(0)
        detector = build_detector(ShuffleNetBackbone(space), 2, TINY)
        randomize_bn(detector, 2)
        return detector

    def run(net, dtype):
        set_path(net, arch)
        out = {}
        with torch.no_grad():  # features and RPN head outputs in eval mode (running BN statistics)
            feats = net.eval().backbone(torch.stack(images).to(dtype))
            out.update((f"FPN {k}", v) for k, v in feats.items())
            if layout_of(net) == "channels_last":
                assert all(f.is_contiguous(memory_format=CL) for f in feats.values())
            objectness, deltas = net.rpn.head(list(feats.values()))
            out.update((f"RPN {i}", torch.cat([o.flatten(), d.flatten()])) for i, (o, d) in
                       enumerate(zip(objectness, deltas)))
        torch.manual_seed(3)  # the same anchor and RoI sampling
        losses = net.train()([im.to(dtype) for im in images],
                             [{**t, "boxes": t["boxes"].to(dtype)} for t in targets])
        sum(losses.values()).backward()
        assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
        return {**out, **{k: v.detach() for k, v in losses.items()}, **gradients(net, together=True)}

    assert_as_accurate(make, run, "detector", {"gradients": TRAIN_GRADIENTS})


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_path_equals_its_extracted_network_in_either_layout(layout):
    torch.manual_seed(0)
    space = get_space("small")
    supernet = apply_layout(ShuffleNetBackbone(space, num_classes=10), setting=layout)
    randomize_bn(supernet, 1)
    supernet.eval()
    x = torch.randn(2, 3, 32, 64)
    for arch in random_archs(space, 1, seed=11):
        subnet = supernet.subnet(arch)
        assert layout_of(subnet) == layout  # the extracted network takes the supernet's layout
        with torch.no_grad():
            feats_super, feats_sub = supernet(x, arch), subnet(x)
            for name in STAGE_NAMES:
                assert torch.equal(feats_super[name], feats_sub[name]), name
            assert torch.equal(supernet.classify(x, arch), subnet.classify(x))
    detector = apply_layout(build_detector(ShuffleNetBackbone(space), 2, TINY), setting=layout)
    randomize_bn(detector, 3)
    arch = random_archs(space, 1, seed=12)[0]
    sub = extract_detector(detector, arch, 2, TINY)
    assert layout_of(sub) == layout
    set_path(detector.eval(), arch)
    batch = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        for (name, a), b in zip(detector.backbone(batch).items(), sub.eval().backbone(batch).values()):
            assert torch.equal(a, b), name


def test_recalibrated_path_scores_alike_in_both_layouts(monkeypatch):
    torch.manual_seed(0)
    space = get_space("small")
    detector = build_detector(ShuffleNetBackbone(space), 2, TINY)
    arch = random_archs(space, 1, seed=4)[0]
    recalib = [detection_batch(2, seed=s)[0] for s in range(2)]
    images = detection_batch(2, seed=9)[0]
    subs = {}
    for layout in ("nchw", "channels_last"):
        monkeypatch.setenv(LAYOUT_ENV, layout)
        subs[layout] = recalibrated_path(detector, arch, 2, TINY, recalib)
        assert layout_of(subs[layout]) == layout
    def rel(a, b):
        return float((a.double() - b.double()).norm() / (a.double().norm() or 1.0))

    def flat(tensors):
        return torch.cat([t.double().flatten() for t in tensors])

    # batches of two 64 px images in train mode amplify float rounding to ~1e-4 (either layout)
    assert rel(flat(subs["nchw"].buffers()), flat(subs["channels_last"].buffers())) < 1e-3  # BN statistics
    with torch.no_grad():
        batch = torch.stack(images)
        for a, b in zip(subs["nchw"].backbone(batch).values(), subs["channels_last"].backbone(batch).values()):
            assert rel(a, b) < 1e-3, f"features after recalibration: {rel(a, b):.2e}"


def test_layout_setting(monkeypatch):
    monkeypatch.delenv(LAYOUT_ENV, raising=False)
    expected = "channels_last" if torch.backends.mkldnn.is_available() else "nchw"
    assert resolve_layout() == resolve_layout("auto", "cpu") == expected
    assert resolve_layout("auto", "meta") == "nchw"
    monkeypatch.setenv(LAYOUT_ENV, "nchw")  # the way to turn it off
    assert resolve_layout() == "nchw" and resolve_layout(None, "cuda") == "nchw"
    net = apply_layout(ShuffleNetBackbone(get_space("small")))
    assert layout_of(net) == "nchw" and net.stem.conv.weight.is_contiguous()
    assert resolve_layout("channels_last") == "channels_last"  # an explicit setting wins
    monkeypatch.setenv(LAYOUT_ENV, "NHWC")
    with pytest.raises(ValueError, match="expected auto, channels_last or nchw"):
        resolve_layout()


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_gather_roi_align_is_torchvisions(layout):
    """The detector's RoI pooler (model/roi_align.py) against torchvision's MultiScaleRoIAlign: boxes
    on every level, across the borders, under a pixel, and an image without boxes."""
    g = torch.Generator().manual_seed(0)
    names, size = ["p2", "p3", "p4", "p5"], 96
    features = {n: torch.randn(3, 8, size // 2 ** (i + 2), size // 2 ** (i + 2), generator=g)
                for i, n in enumerate(names)}
    features = {n: f.contiguous(memory_format=FORMATS[layout]) for n, f in features.items()}
    boxes = []
    for n in (40, 0, 25):
        xy = torch.rand(n, 2, generator=g) * size * 1.2 - 10
        boxes.append(torch.cat([xy, xy + torch.rand(n, 2, generator=g) ** 2 * size * 0.8 + 0.1], 1))
    shapes = [(size, size)] * 3
    pools = [MultiScaleRoIAlign(names, 7, 2, canonical_scale=16), roi_pooler(TINY)]
    assert isinstance(pools[1], GatherMultiScaleRoIAlign) and (pools[1].canonical_scale, pools[1].output_size) == (
        max(1, round(224 * TINY.min_size / 800)), (7, 7))
    pools[1].canonical_scale = 16
    outs, grads = [], []
    for pool in pools:
        inputs = {n: f.clone().requires_grad_() for n, f in features.items()}
        out = pool(inputs, boxes, shapes)
        out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
        outs.append(out.detach())
        grads.append([inputs[n].grad for n in names])
    assert outs[0].shape == outs[1].shape == (65, 8, 7, 7)
    assert outs[0].abs().sum() > 0 and len(set(pools[0].map_levels(boxes).tolist())) == 4  # every level used
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(grads[0], grads[1]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
