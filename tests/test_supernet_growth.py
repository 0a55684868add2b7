"""Growing a supernet's choices out of its trained ShuffleNetV2 path (pretrain.grow_iters).

Grown choices must compute what choice 0 computes (exactly for 5x5/7x7 and for Xception at stride 1;
at stride 2 the projection half exactly, the branch half fitted to it), growth must not touch
choice 0, and a run resumed across the growth step must equal an uninterrupted one.
"""

import functools

import pytest
import torch

from data_builders import make_image_folder
from detnas.config.schema import PretrainConfig, RetrainConfig
from detnas.model import growth as supernet_growth
from detnas.model.growth import grow_choices
from detnas.model.space import get_space
from detnas.model.supernet import ShuffleNetBackbone
from detnas.stages import jobs
from detnas.stages.jobs import pretrain_job
from detnas.stages.train import run_training
from interruption import Interrupted, interrupt_at


def smooth_images(n: int) -> torch.Tensor:
    """Random images with the spatial correlation of photographs (white noise has none to fit)."""
    return torch.nn.functional.interpolate(torch.randn(n, 3, 16, 16), size=64, mode="bilinear")


def grown_supernet(fit_steps: int = supernet_growth.FIT_STEPS):
    torch.manual_seed(0)
    net = ShuffleNetBackbone(get_space("small"), num_classes=3)
    before = {k: v.clone() for k, v in net.state_dict().items()
              if not k.startswith("blocks.") or k.split(".")[2] == "0"}
    images = smooth_images(32)
    fitted = grow_choices(net, images, fit_steps)
    unchanged = all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    return net, (len(before), unchanged), images, fitted


@pytest.fixture(scope="module")
def grown():
    return grown_supernet()


def block_inputs(net, images):
    """The input of every position on the ShuffleNetV2 path, in training mode."""
    seen = {}
    hooks = [c[0].register_forward_pre_hook(lambda m, x, i=i: seen.__setitem__(i, x[0]))
             for i, c in enumerate(net.blocks)]
    with torch.no_grad():
        net.train()(images, (0,) * len(net.blocks))
    for h in hooks:
        h.remove()
    return seen


def test_grown_choices_compute_what_choice_0_computes(grown):
    net, _, images, _ = grown
    inputs = block_inputs(net, images)
    with torch.no_grad():
        for i, choices in enumerate(net.blocks):
            x = inputs[i]
            ref = choices[0](x)
            for c in (1, 2):  # 3x3 kernels in the centre of 5x5 and 7x7 zeros: the same function
                assert torch.allclose(choices[c](x), ref, atol=1e-5), (i, c)
            xception = choices[3](x)
            if choices[0].stride == 1:
                assert (xception - ref).norm() / ref.norm() < 1e-3, i
            else:  # the projection half is choice 0's; the branch half is fitted to choice 0's
                half = choices[0].proj[1][0].out_channels
                assert torch.allclose(xception[:, :half], ref[:, :half], atol=1e-5), i


def test_stride_2_xception_branches_are_fitted_to_choice_0(grown):
    net, _, images, fitted = grown
    strided = [i for i, choices in enumerate(net.blocks) if choices[0].stride == 2]
    assert sorted(fitted) == strided
    copied, _, _, copy_errors = grown_supernet(fit_steps=0)
    held_out = smooth_images(32)  # the fit generalises beyond the images it was fitted on

    def errors(net):
        inputs = block_inputs(net, held_out)
        found = []
        with torch.no_grad():
            for i in strided:
                ref = net.blocks[i][0].branch(inputs[i])
                found.append(float((net.blocks[i][3].branch.train()(inputs[i]) - ref).pow(2).mean() / ref.var()))
        return found

    for i in strided:  # on the images it was fitted on (relative squared errors; 1 = a constant)
        assert fitted[i] < 0.5 * copy_errors[i], (i, fitted[i], copy_errors[i])
    # on other images; a random network on random images is a harder case than a trained one on
    # photographs, where the fit leaves 0.01-0.10 and the copy 0.6-1.1
    before, after = errors(copied), errors(net)
    assert sum(after) < 0.85 * sum(before), (before, after)
    assert all(p.grad is None for p in net.parameters())  # nothing left for path-wise SGD to step


def test_growth_leaves_choice_0_stem_and_head_alone(grown):
    _, (n_kept, unchanged), _, _ = grown
    assert n_kept > 100 and unchanged  # weights and BN statistics alike


def config(tmp_path, grow_iters=3, iters=6):
    root = tmp_path / "cls"
    if not root.exists():
        make_image_folder(root / "train", classes=("a", "b", "c"), per_class=4, size=24, mode="RGB")
        make_image_folder(root / "val", classes=("a", "b", "c"), per_class=2, size=24, mode="RGB")
    return PretrainConfig.model_validate({
        "seed": 1, "grow_iters": grow_iters,
        "data": {"train": str(root / "train"), "val": str(root / "val"), "image_size": 32},
        "train": {"iters": iters, "batch_size": 4, "lr": 0.02, "grad_clip": 10.0},
        "logging": {"log_every": 1, "checkpoint_every": 100, "progress": False},
        "eval": {"archs": ["0" * 20], "recalib_images": 8, "batch_size": 4},
    })


def run(cfg, out, resume=False, interrupt=None):
    """Pretrain with ``cfg`` in ``out``; ``interrupt``: killed before that step, with a checkpoint there."""
    job = pretrain_job(cfg)
    trained = []
    inner = job.loss
    job.loss = lambda model, batch, arch, device: (trained.append(arch), inner(model, batch, arch, device))[1]
    if interrupt is not None:
        interrupt_at(job, interrupt)
    try:
        run_training(job, cfg.train, cfg.seed, out, resume, log_every=1, checkpoint_every=1, progress=False)
    except Interrupted:
        assert interrupt is not None
    return job, trained


@pytest.fixture
def quick_fit(monkeypatch):
    """Growth inside a training run fits the stride-2 Xception branches for 10 steps, not 300: the tests
    below check when growth happens and that a resume replays it exactly, not how well it fits (the
    tests above do)."""
    monkeypatch.setattr(jobs, "grow_choices", functools.partial(grow_choices, fit_steps=10))


def test_choice_0_alone_until_grow_iters_then_uniform_paths(tmp_path, quick_fit):
    _, trained = run(config(tmp_path), tmp_path / "run")
    assert trained[:3] == [(0,) * 20] * 3
    assert all(any(c != 0 for c in arch) for arch in trained[3:])


@pytest.mark.parametrize("stop", [3, 4])  # on the growth step, and after it
def test_a_run_resumed_across_the_growth_equals_an_uninterrupted_one(tmp_path, stop, quick_fit):
    cfg = config(tmp_path)
    whole, _ = run(cfg, tmp_path / "whole")
    parts, _ = run(cfg, tmp_path / "parts", interrupt=stop)
    resumed, _ = run(cfg, tmp_path / "parts", resume=True)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_grow_iters_must_leave_steps_to_train_and_a_standalone_network_has_nothing_to_grow(tmp_path):
    with pytest.raises(ValueError, match="grow_iters .6. must be smaller than train.iters .6."):
        config(tmp_path, grow_iters=6)
    recipe = config(tmp_path).model_dump(include={"data", "train", "grow_iters"})
    with pytest.raises(ValueError, match="a retrained network has none"):
        RetrainConfig.model_validate({"data": {"train": {"format": "coco", "annotations": "a.json", "images": "i"}},
                                      "train": recipe["train"], "pretrain": recipe})
