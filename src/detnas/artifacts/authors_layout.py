"""The DetNAS authors' checkpoints on our backbone: their key names, shapes and channel order mapped.

Facts read from their model definitions (no code of theirs is used):

- ``detnas``: megvii-model/DetNAS (``Supernet-ImageNet/``, ``maskrcnn_benchmark/modeling/backbone/``) and
  megvii-model/ShuffleNet-Series (``DetNAS/``), the layout of the released ImageNet models. Stem
  ``first_conv.conv`` (a conv *with* bias) and ``first_conv.bn``; block ``i`` at ``features.{i}``
  (standalone) or ``features.{i}.{choice}`` (supernet), named after its stage and repeat (``1a``,
  ``1b`` ... ``3p``) and choice (``shufflenet_3x3`` ... ``xception_3x3``): ``conv.{0,1,2}`` hold convs
  ``interstellar{name}_branch2{a,b,c}`` (pointwise), ``..._s`` (depthwise) and BNs ``bn{name}_branch2..``,
  ``..._s_bn``; stride-2 blocks add ``proj_conv`` (``{stage}a_proj``); head ``last_conv`` (conv with
  bias + BN) and ``fc.fc``.
- ``spos``: megvii-model/SinglePathOneShot (``src/Supernet/``), ShuffleNet-Series' naming:
  ``first_conv.{0,1}``, ``features.{i}[.{choice}].branch_main.{n}`` and ``branch_proj.{n}``,
  ``conv_last.{0,1}``, ``classifier.0``; its BNs have no affine parameters (weight 1, bias 0 here).

Their stem and last conv have a bias before BN: it is folded into BN's running mean (exact: in
training BN removes any constant, in evaluation ``BN(Wx + b)`` with mean ``m`` equals ``BN(Wx)`` with
mean ``m - b``). Their stride-1 blocks split channels in one of two ways: even/odd like ours (the
standalone models, SPOS) or, in the DetNAS ImageNet supernet (their ``channel_shuffle1``), as halves
of a view-transpose. For the latter the channels are renumbered (``stage_orders``) so that every
channel takes the same route through the blocks as in their network; where our block structure has
no such numbering (a stride-2 block whose proj part is less than half of its output), the rest are
routed differently and counted, so that the caller can say so.
"""

from __future__ import annotations

import re

import torch

from detnas.model.space import NUM_CHOICES, SearchSpace

OPS = ("shufflenet_3x3", "shufflenet_5x5", "shufflenet_7x7", "xception_3x3")
BN_PARTS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
LAYOUTS = ("detnas", "spos")
# (conv, bn) indices inside SPOS' branch_main / branch_proj Sequentials (ReLUs take the others)
_SPOS_SHUFFLE = ((0, 1), (3, 4), (5, 6))
_SPOS_XCEPTION = ((0, 1), (2, 3), (5, 6), (7, 8), (10, 11), (12, 13))
_SPOS_PROJ = ((0, 1), (2, 3))


def detect_layout(state: dict) -> str | None:
    """``detnas``, ``spos`` or None (neither) from the stem's key names."""
    if "first_conv.conv.weight" in state:
        return "detnas"
    if "first_conv.0.weight" in state:
        return "spos"
    return None


def is_supernet(state: dict) -> bool:
    """Whether block 0 holds a choice list (``features.0.{choice}.``) rather than one block."""
    return any(re.match(r"features\.0\.\d+\.", k) for k in state)


def stored_choices(state: dict, layout: str, num_blocks: int) -> tuple[int, ...] | None:
    """The architecture of a standalone network, read from its key names (detnas: the op names) or
    shapes (spos: an Xception branch has 15 layers, a ShuffleNet branch's depthwise kernel size); None
    when a block is missing."""
    arch = []
    for i in range(num_blocks):
        if layout == "detnas":
            found = {op for op in OPS for k in state if k.startswith(f"features.{i}.conv.0.") and f"_{op}_" in k}
            if len(found) != 1:
                return None
            arch.append(OPS.index(found.pop()))
        else:
            dw = state.get(f"features.{i}.branch_main.3.weight")
            if f"features.{i}.branch_main.12.weight" in state:
                arch.append(3)
            elif dw is not None and dw.dim() == 4 and dw.shape[-1] in (3, 5, 7):
                arch.append((3, 5, 7).index(dw.shape[-1]))
            else:
                return None
    return tuple(arch)


def _block_layers(layout: str, theirs: str, name: str, choice: int, stride: int) -> list[tuple[str, str, str]]:
    """(our ConvBN under the block, their conv, their BN) for every conv of one block."""
    pairs = []
    if layout == "detnas":
        op = f"{name}_{OPS[choice]}"
        if choice == 3:
            for j, part in enumerate("abc"):
                base = f"{theirs}conv.{j}.interstellar{op}_branch2{part}"
                pairs += [(f"branch.{2 * j}", f"{base}_s", f"{base}_s_bn"),
                          (f"branch.{2 * j + 1}", base, f"{theirs}conv.{j}.bn{op}_branch2{part}")]
        else:
            a, b = f"{theirs}conv.0.interstellar{op}_branch2a", f"{theirs}conv.1.interstellar{op}_branch2b"
            pairs += [("branch.0", a, f"{theirs}conv.0.bn{op}_branch2a"), ("branch.1", f"{b}_s", f"{b}_s_bn"),
                      ("branch.2", b, f"{theirs}conv.1.bn{op}_branch2b")]
        if stride == 2:
            proj = f"{theirs}proj_conv.interstellar{name[0]}a_proj"
            pairs += [("proj.0", f"{proj}_s", f"{proj}_s_bn"), ("proj.1", proj, f"{theirs}proj_conv.bn{name[0]}a_proj")]
        return pairs
    indices = _SPOS_XCEPTION if choice == 3 else _SPOS_SHUFFLE
    pairs += [(f"branch.{j}", f"{theirs}branch_main.{c}", f"{theirs}branch_main.{b}") for j, (c, b) in enumerate(indices)]
    if stride == 2:
        pairs += [(f"proj.{j}", f"{theirs}branch_proj.{c}", f"{theirs}branch_proj.{b}") for j, (c, b) in enumerate(_SPOS_PROJ)]
    return pairs


def layer_pairs(layout: str, space: SearchSpace, arch: tuple[int, ...] | None, source_supernet: bool,
                head: bool) -> list[tuple[str, str, str]]:
    """(our ConvBN prefix, their conv, their BN) for every conv of our backbone of ``arch`` (None: the
    supernet, every choice) in ``space``, in module order; with ``head`` the last conv of the
    classification head too (``head.0``). Their linear layer is handled by the caller."""
    stem = ("first_conv.conv", "first_conv.bn") if layout == "detnas" else ("first_conv.0", "first_conv.1")
    pairs = [("stem", *stem)]
    repeat = 0
    for spec in space.blocks():
        repeat = 0 if spec.stride == 2 else repeat + 1
        name = f"{spec.stage + 1}{chr(ord('a') + repeat)}"
        for choice in (range(NUM_CHOICES) if arch is None else [arch[spec.index]]):
            ours = f"blocks.{spec.index}.{choice if arch is None else 0}."
            theirs = f"features.{spec.index}.{choice}." if source_supernet else f"features.{spec.index}."
            pairs += [(ours + o, t_conv, t_bn) for o, t_conv, t_bn in
                      _block_layers(layout, theirs, name, choice, spec.stride)]
    if head:
        pairs.append(("head.0", *(("last_conv.conv", "last_conv.bn") if layout == "detnas" else
                                 ("conv_last.0", "conv_last.1"))))
    return pairs


# ----- the channel renumbering of a supernet whose stride-1 blocks split by view-transpose -----

def _even_odd(channels: int) -> tuple[list[int], list[int]]:
    return list(range(0, channels, 2)), list(range(1, channels, 2))


def _view_transpose(channels: int) -> tuple[list[int], list[int]]:
    """Their ``channel_shuffle1``: the tensor viewed as (2, C/2), transposed, cut into halves."""
    order = [(n % 2) * (channels // 2) + n // 2 for n in range(channels)]
    return order[:channels // 2], order[channels // 2:]


def _fates(channels: int, births: int, split, blocks: int) -> list[int]:
    """For each of ``births`` channels born at an output position ``p`` (p, or C/2 + p for a stride-1
    block's branch), the number of stride-1 blocks it passes unchanged before a branch consumes it
    (``blocks`` if none does)."""
    first, _second = split(channels)
    passes = {c: n for n, c in enumerate(first)}  # input channel -> its output position
    offset = 0 if births == channels else channels // 2
    fates = []
    for p in range(births):
        position, count = offset + p, 0
        while count < blocks and position in passes:
            position, count = passes[position], count + 1
        fates.append(count)
    return fates


def _match(ours: list, theirs: list, groups: list[tuple[int, int]]) -> tuple[list[int], int]:
    """Our birth index -> theirs, pairing equal fates inside each (start, end) group (a proj part and a
    branch part), in order; the rest paired in order and counted."""
    mapping, unmatched = [0] * len(ours), 0
    for start, end in groups:
        free = list(range(start, end))
        for p in range(start, end):
            t = next((t for t in free if theirs[t] == ours[p]), None)
            if t is not None:
                free.remove(t)
                mapping[p] = t
            else:
                mapping[p] = -1
        for p in range(start, end):
            if mapping[p] == -1:
                mapping[p], unmatched = free.pop(0), unmatched + 1
    return mapping, unmatched


def _pair(ours: list, theirs: list) -> list[int]:
    """For each of our labels its index in ``theirs``; labels theirs lacks take the remaining indices in order."""
    index = {label: i for i, label in enumerate(theirs)}
    found = [index.get(label) for label in ours]
    rest = iter(sorted(set(range(len(theirs))) - {i for i in found if i is not None}))
    return [i if i is not None else next(rest) for i in found]


def stage_orders(space: SearchSpace, view_transpose: bool) -> tuple[dict[int, dict], list[int], int, int]:
    """How their channels sit in ours: for each block index ``{"in": cols, "out": rows}`` (our input
    column j reads their column cols[j]; our output row m is their row rows[m]: the block's whole
    output for a stride-2 block, its branch's for a stride-1 block), the order of the last stage's
    output (for the head), the number of channels routed differently from theirs and of all channels
    the blocks produce."""
    split = _view_transpose if view_transpose else _even_odd
    orders, unmatched, total = {}, 0, 0
    specs = space.blocks()
    prev_end = list(range(space.stem_channels))  # their channel at each of our input positions
    for stage in range(len(space.stage_blocks)):
        stage_specs = [s for s in specs if s.stage == stage]
        channels, in_c, n = stage_specs[0].out_channels, stage_specs[0].in_channels, len(stage_specs)
        ours_l, theirs_l = None, None
        for b, spec in enumerate(stage_specs):
            births = channels if b == 0 else channels // 2
            groups = [(0, in_c), (in_c, channels)] if b == 0 else [(0, births)]
            sigma, lost = _match(_fates(channels, births, _even_odd, n - 1 - b),
                                 _fates(channels, births, split, n - 1 - b), groups)
            unmatched, total = unmatched + lost, total + births
            if b == 0:
                orders[spec.index] = {"in": prev_end, "out": sigma}
                ours_l, theirs_l = [(0, t) for t in sigma], [(0, t) for t in range(channels)]
                continue
            first, second = split(channels)
            evens, odds = _even_odd(channels)
            orders[spec.index] = {"in": _pair([ours_l[q] for q in odds], [theirs_l[c] for c in second]),
                                  "out": sigma}
            ours_l = [ours_l[q] for q in evens] + [(b, t) for t in sigma]
            theirs_l = [theirs_l[c] for c in first] + [(b, m) for m in range(births)]
        prev_end = _pair(ours_l, theirs_l)
    return orders, prev_end, unmatched, total


def _take(state: dict, prefix: str, index: list[int], dim: int) -> None:
    """Reorder a ConvBN's conv weight along ``dim`` (and, for its output dim 0, its BN) by ``index``."""
    idx = torch.as_tensor(index)
    state[f"{prefix}.0.weight"] = state[f"{prefix}.0.weight"].index_select(dim, idx)
    if dim == 0:
        for part in BN_PARTS[:4]:
            state[f"{prefix}.1.{part}"] = state[f"{prefix}.1.{part}"].index_select(0, idx)


def renumber(state: dict, space: SearchSpace, arch: tuple[int, ...] | None, orders: dict, end: list[int],
             head: bool) -> None:
    """Apply ``stage_orders`` to our mapped ``state`` (in place): every block's first layers read
    their input columns, its last layers' rows (conv and BN) are put in our order."""
    for spec in space.blocks():
        order = orders[spec.index]
        for choice in (range(NUM_CHOICES) if arch is None else [arch[spec.index]]):
            block = f"blocks.{spec.index}.{choice if arch is None else 0}."
            first = ["branch.0", "branch.1"] if choice == 3 else ["branch.0"]
            last = "branch.5" if choice == 3 else "branch.2"
            for part in first + (["proj.0", "proj.1"] if spec.stride == 2 else []):
                depthwise = part in ("proj.0",) or (choice == 3 and part == "branch.0")
                _take(state, block + part, order["in"], 0 if depthwise else 1)
            if spec.stride == 2:  # our outputs 0..in_c-1 are the proj's, the rest the branch's
                in_c = spec.in_channels
                _take(state, block + "proj.1", order["out"][:in_c], 0)
                _take(state, block + last, [t - in_c for t in order["out"][in_c:]], 0)
            else:
                _take(state, block + last, order["out"], 0)
    if head:
        _take(state, "head.0", end, 1)
