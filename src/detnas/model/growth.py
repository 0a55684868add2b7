"""Growing a supernet from one trained path, so that path-wise training starts from a network that learns.

Uniform path-wise training from random initialisation can stay at chance on small images: a freshly
initialised ShuffleNetV2 is chaotic there, so paths of different random choices compute unrelated
features and no shared layer can fit them all. Even two identical copies of one block, sampled
alternately, drift apart fast enough to stop learning. A *trained* network is not chaotic in that way:
copies of its blocks go on learning together.

So ``pretrain.grow_iters`` first trains the ShuffleNetV2 path (choice 0 everywhere) alone, then grows
the other choices out of it, each computing (nearly) the same function as choice 0 at its position:

- choices 1 and 2 (5x5, 7x7): the 3x3 depthwise kernels in the centre of zero kernels, every other
  weight copied: the same function exactly;
- choice 3 (Xception: dw-pw-dw-pw-dw-pw): its first pointwise conv and last pointwise conv are choice 0's,
  its second depthwise conv is choice 0's depthwise conv, and the three extra layers are identities
  whose BatchNorms are set from the statistics of their inputs (the one before a ReLU is shifted by
  8 standard deviations, so that the ReLU passes nearly everything; the next BN removes the shift).
  Exact at stride 1 (to float rounding). At stride 2 no exact copy exists: Xception subsamples
  before its first pointwise conv and ReLU, ShuffleNetV2 after them. Copied as above, such a branch
  is about as far from choice 0's as a constant, and the paths through it lose much of what the
  trained path had learned. So it is then fitted to choice 0's branch output on training images (a few
  hundred Adam steps, block by block, on the inputs the ShuffleNetV2 path gives it).
  The projection branch, half of that block's output, is copied exactly.

Path-wise training then starts with every path as good as the trained one and lets the choices differ.
How close the grown paths come to the trained one on the demo is measured in BENCHMARKS.md ("Growing
the stride-2 Xception blocks"; ``benchmarks/growth_fidelity.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from detnas.model.space import CHOICE_NAMES
from detnas.model.supernet import ShuffleNetBackbone

RELU_SHIFT = 8.0  # standard deviations: the ReLU after an identity layer clips (almost) nothing
XCEPTION = CHOICE_NAMES.index("xception")  # the choice grown by identities and fitting
# fitting the stride-2 Xception branches: Adam steps (by default), their learning rate and minibatch (of the
# growth images). A few hundred steps bring the Xception paths close to the trained path; twice as many
# gain little more for the time they take.
FIT_STEPS, FIT_LR, FIT_BATCH = 300, 3e-3, 64
# random training images to grow from: several minibatches, so that the fit does not follow the
# particular images of one batch
GROW_IMAGES = 256


def _identity_(conv: nn.Conv2d) -> None:
    conv.weight.zero_()
    k = conv.weight.shape[-1]
    if conv.groups > 1:  # depthwise
        conv.weight[:, 0, k // 2, k // 2] = 1
    else:  # pointwise, square
        conv.weight[:, :, 0, 0] = torch.eye(conv.weight.shape[0])


def _set_bn_(bn: nn.BatchNorm2d, weight: torch.Tensor, bias: torch.Tensor) -> None:
    bn.weight.copy_(weight)
    bn.bias.copy_(bias)


def _centre_copy_(src: dict[str, torch.Tensor], dst: nn.Module) -> None:
    """Copy ``src`` into ``dst``; a larger depthwise kernel gets the smaller one in its centre."""
    for key, target in dst.state_dict().items():
        value = src[key]
        if value.shape == target.shape:
            target.copy_(value)
        else:
            target.zero_()
            k, big = value.shape[-1], target.shape[-1]
            o = (big - k) // 2
            target[..., o:o + k, o:o + k] = value


@torch.no_grad()
def choice0_branches(supernet: ShuffleNetBackbone, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """What growing needs of choice 0's branch at every position, on the ShuffleNetV2 path in training
    mode (batch statistics, as path-wise training sees them): the per-channel mean and standard
    deviation of its input, and at stride 2 the input and output themselves (to fit Xception to).
    The BN statistics are left unchanged."""
    seen: list = [None] * len(supernet.blocks)

    def keep(i: int, x: torch.Tensor, out: torch.Tensor, strided: bool) -> None:
        seen[i] = {"mean": x.mean((0, 2, 3)), "std": x.std((0, 2, 3)), **({"x": x, "out": out} if strided else {})}

    hooks = [
        choices[0].branch.register_forward_hook(
            lambda _m, inputs, out, i=i, strided=choices[0].stride == 2: keep(i, inputs[0], out, strided))
        for i, choices in enumerate(supernet.blocks)
    ]
    was_training = supernet.training
    buffers = [(b, b.clone()) for b in supernet.buffers()]  # a forward in training mode updates BN statistics
    try:
        supernet.train()
        supernet(images, supernet.space.baseline)
    finally:
        for h in hooks:
            h.remove()
        for b, saved in buffers:
            b.copy_(saved)
        supernet.train(was_training)
    return seen


def fit_branch(branch: nn.Module, inputs: torch.Tensor, target: torch.Tensor, steps: int, seed: int) -> float:
    """Fit ``branch`` so that ``branch(inputs)`` in training mode approximates ``target``: ``steps`` of
    Adam on random minibatches of the relative squared error. Returns the error left on all of ``inputs``."""
    was_training = branch.training
    branch.train()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(branch.parameters(), lr=FIT_LR)
    scale = target.var()
    with torch.enable_grad():
        for _ in range(steps):
            idx = torch.randperm(len(inputs), generator=generator)[:FIT_BATCH].to(inputs.device)
            loss = (branch(inputs[idx]) - target[idx]).pow(2).mean() / scale
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    for p in branch.parameters():  # path-wise SGD would otherwise step them with these gradients
        p.grad = None
    error = float((branch(inputs) - target).pow(2).mean() / scale)
    branch.train(was_training)
    return error


@torch.no_grad()
def grow_choices(supernet: ShuffleNetBackbone, images: torch.Tensor, fit_steps: int = FIT_STEPS) -> dict[int, float]:
    """Overwrite choices 1-3 at every position with function-preserving copies of choice 0.

    ``images``: training images (as the backbone's input), for the statistics of the Xception block's
    extra identity layers and to fit its stride-2 branches (``fit_steps`` Adam steps; 0 leaves them
    copied). Returns, per stride-2 position, the relative squared error left between the Xception
    branch and choice 0's.
    """
    if not supernet.is_supernet:
        raise ValueError("grow_choices needs a supernet (all choices at every position)")
    fitted = {}
    for i, (seen, choices) in enumerate(zip(choice0_branches(supernet, images), supernet.blocks)):
        base = choices[0]
        state = base.state_dict()
        for c in (1, 2):
            _centre_copy_(state, choices[c])
        xception, shuffle = choices[XCEPTION].branch, base.branch
        # [dw + BN] identity on the branch input: BN restores its mean and spread
        _identity_(xception.dw1.conv)
        _set_bn_(xception.dw1.bn, seen["std"], seen["mean"])
        xception.pw1.load_state_dict(shuffle.pw_in.state_dict())  # pointwise in -> mid
        xception.dw2.load_state_dict(shuffle.dw.state_dict())  # depthwise 3x3 + BN
        gamma, beta = shuffle.dw.bn.weight.abs(), shuffle.dw.bn.bias  # spread and mean of that BN's output
        _identity_(xception.pw2.conv)  # pointwise mid -> mid, shifted above the ReLU
        _set_bn_(xception.pw2.bn, gamma, beta + RELU_SHIFT * gamma)
        _identity_(xception.dw3.conv)  # depthwise: BN removes the shift
        _set_bn_(xception.dw3.bn, gamma, beta)
        xception.pw3.load_state_dict(shuffle.pw_out.state_dict())  # pointwise mid -> out
        if choices[XCEPTION].proj is not None:  # stride 2: the projection branch is 3x3 in both
            choices[XCEPTION].proj.load_state_dict(base.proj.state_dict())
            fitted[i] = fit_branch(xception, seen["x"], seen["out"], fit_steps, seed=i)
    return fitted
