"""Search spaces of DetNAS (the paper's Small and Large), architecture encoding and named presets.

An architecture is a tuple of choice indices, one per searchable block:
0/1/2 = ShuffleNetV2 block with a 3x3/5x5/7x7 depthwise kernel, 3 = Xception-style block.
Its canonical text form is the digit string, e.g. ``21202112331300313132``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace

NUM_CHOICES = 4
CHOICE_NAMES = ("shuffle3x3", "shuffle5x5", "shuffle7x7", "xception")
CHOICE_KERNELS = (3, 5, 7, 3)

Arch = tuple[int, ...]


class ArchError(ValueError):
    """An architecture (string, list or preset name) that does not fit a search space."""


@dataclass(frozen=True)
class BlockSpec:
    """One searchable position: its input/output channels and stride."""

    index: int
    stage: int
    in_channels: int
    out_channels: int
    stride: int


@dataclass(frozen=True)
class SearchSpace:
    name: str
    stem_channels: int
    stage_blocks: tuple[int, ...]
    stage_channels: tuple[int, ...]
    last_channels: int = 1024
    width_mult: float = 1.0

    @property
    def num_blocks(self) -> int:
        return sum(self.stage_blocks)

    @property
    def size(self) -> int:
        """Number of architectures in the space."""
        return NUM_CHOICES**self.num_blocks

    @property
    def baseline(self) -> tuple[int, ...]:
        """The hand-crafted ShuffleNetV2 path: choice 0 (3x3) at every position."""
        return (0,) * self.num_blocks

    def blocks(self) -> list[BlockSpec]:
        specs, in_c = [], self.stem_channels
        for stage, (n, out_c) in enumerate(zip(self.stage_blocks, self.stage_channels)):
            for i in range(n):
                specs.append(BlockSpec(len(specs), stage, in_c, out_c, 2 if i == 0 else 1))
                in_c = out_c
        return specs

    def stage_last_block(self) -> list[int]:
        """Index of the last block of each stage (where C2..C5 are taken)."""
        ends, total = [], 0
        for n in self.stage_blocks:
            total += n
            ends.append(total - 1)
        return ends

    def widen(self, mult: float) -> SearchSpace:
        """The same space with wider layers.

        Stage channels are rounded down to a multiple of 4 (the block split needs even halves),
        the stem down to a multiple of 24 and the last conv is at least as wide as the last stage.
        The rule reproduces the paper's DetNASNet(3.8) from the Large space at 1.8x
        (stem 72, channels 172/432/864/1728, last conv 1728).
        """
        if not (mult > 0 and math.isfinite(mult)):
            raise ArchError(f"width multiplier must be a positive number, got {mult}")
        if mult == 1.0:
            return self
        channels = tuple(max(4, int(c * mult) // 4 * 4) for c in self.stage_channels)
        stem = max(8, int(self.stem_channels * mult) // 24 * 24)
        return replace(
            self,
            stem_channels=stem,
            stage_channels=channels,
            last_channels=max(self.last_channels, channels[-1]),
            width_mult=self.width_mult * mult,
        )

    def describe(self) -> str:
        w = "" if self.width_mult == 1.0 else f" x{self.width_mult:g}"
        return f"{self.name}{w}"


SPACES: dict[str, SearchSpace] = {
    "small": SearchSpace("small", 16, (4, 4, 8, 4), (64, 160, 320, 640)),
    "large": SearchSpace("large", 48, (8, 8, 16, 8), (96, 240, 480, 960)),
}


def get_space(name: str, width_mult: float = 1.0) -> SearchSpace:
    if name not in SPACES:
        raise ArchError(f"unknown search space '{name}' (choose from {', '.join(SPACES)})")
    return SPACES[name].widen(width_mult)


@dataclass(frozen=True)
class Preset:
    name: str
    space: str
    arch: str
    width_mult: float = 1.0
    note: str = ""

    def search_space(self) -> SearchSpace:
        return get_space(self.space, self.width_mult)


_DETNAS_1_3G = "0031210203123320211320222131033313333333"
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset("shufflenetv2-20", "small", "0" * 20, note="hand-crafted baseline, Small space"),
        Preset("shufflenetv2-40", "large", "0" * 40, note="hand-crafted baseline, Large space"),
        Preset("detnas-coco-fpn-300m", "small", "21202112331300313132", note="DetNAS, COCO, FPN"),
        Preset("detnas-coco-retinanet-300m", "small", "23113213311133203333", note="DetNAS, COCO, RetinaNet"),
        Preset("detnas-voc-fpn-300m", "small", "21031303201133333331", note="DetNAS, VOC, FPN"),
        Preset("detnas-voc-retinanet-300m", "small", "13002333233332202311", note="DetNAS, VOC, RetinaNet"),
        Preset("detnasnet-1.3g", "large", _DETNAS_1_3G, note="DetNASNet, COCO, FPN"),
        Preset("detnasnet-3.8g", "large", _DETNAS_1_3G, width_mult=1.8, note="DetNASNet(3.8), widened"),
    ]
}


def arch_to_str(arch: Arch) -> str:
    return "".join(str(c) for c in arch)


def to_arch(values) -> Arch:
    """A tuple of ints from a digit string or any sequence of integers (numpy rows included); not
    validated: for values that come from a space already (a state file, a sampler)."""
    return tuple(int(c) for c in values)


def validate_arch(arch: Arch | list[int], space: SearchSpace) -> Arch:
    arch = tuple(arch)
    if len(arch) != space.num_blocks:
        raise ArchError(
            f"architecture has {len(arch)} blocks but the {space.name} space has {space.num_blocks}"
        )
    for i, c in enumerate(arch):
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < NUM_CHOICES:
            raise ArchError(f"block {i} has choice {c!r}; choices are 0-{NUM_CHOICES - 1}")
    return arch


def parse_arch(text: str | list[int] | tuple[int, ...], space: SearchSpace | None = None) -> Arch:
    """Parse a digit string, a JSON list or a preset name into a validated architecture.

    With ``space`` None, a preset name or any digit string of a known space's length is accepted.
    """
    if isinstance(text, (list, tuple)):
        values = list(text)
    else:
        s = str(text).strip()
        if s in PRESETS:
            preset = PRESETS[s]
            if space is not None and space.num_blocks != preset.search_space().num_blocks:
                raise ArchError(
                    f"preset '{s}' belongs to the {preset.space} space, not the {space.name} space"
                )
            values = list(to_arch(preset.arch))
        elif s.startswith("["):
            try:
                values = json.loads(s)
            except json.JSONDecodeError as e:
                raise ArchError(f"architecture '{s}' is not a valid JSON list: {e.msg}") from None
            if not isinstance(values, list):
                raise ArchError(f"architecture '{s}' must be a JSON list of integers")
        elif s.isdigit():
            bad = sorted({c for c in s if c not in "0123"})
            if bad:
                raise ArchError(f"architecture '{s}' has digit(s) {', '.join(bad)}; choices are 0-3")
            values = list(to_arch(s))
        else:
            raise ArchError(
                f"'{s}' is not an architecture: give a digit string, a JSON list or a preset "
                f"({', '.join(PRESETS)})"
            )
    if space is None:
        matching = [sp for sp in SPACES.values() if sp.num_blocks == len(values)]
        if not matching:
            sizes = ", ".join(f"{sp.num_blocks} ({sp.name})" for sp in SPACES.values())
            raise ArchError(f"architecture has {len(values)} blocks; spaces have {sizes}")
        space = matching[0]
    return validate_arch(values, space)


def resolve_arch(
    text: str | list[int] | tuple[int, ...], space: str | SearchSpace | None = None, width_mult: float | None = None
) -> tuple[Arch, SearchSpace]:
    """The one place that decides which architecture of which space ``text`` is: (arch, space).

    ``text``: a digit string, a JSON list, a preset name, or the path of a search's ``best.json``.
    ``space``: a ``SearchSpace`` the architecture must belong to, or a space name; unset, it is the
    preset's or the file's, or the space with that many blocks. ``width_mult`` likewise (default 1.0).
    """
    from pathlib import Path

    given = space if isinstance(space, SearchSpace) else None
    name = space.name if given is not None else space
    mult = given.width_mult if given is not None else width_mult
    if isinstance(text, str) and (text.endswith(".json") or Path(text).is_file()):
        return _arch_from_file(Path(text), name, mult)
    preset = PRESETS.get(text.strip()) if isinstance(text, str) else None
    if name is None and preset is None:  # parse_arch without a space accepts only the lengths of known spaces
        arch = parse_arch(text)
        name = next(n for n, sp in SPACES.items() if sp.num_blocks == len(arch))
        return arch, get_space(name, 1.0 if mult is None else mult)
    if name is None:
        name = preset.space
    if mult is None:
        mult = preset.width_mult if preset else 1.0
    found = given or get_space(name, mult)
    return parse_arch(text, found), found


def _arch_from_file(path, name: str | None, mult: float | None) -> tuple[Arch, SearchSpace]:
    """The architecture of a search's ``best.json``, which must belong to the space asked for (if any)."""
    from detnas.errors import UserError, read_json

    data = read_json(path, "architecture file")
    if not isinstance(data, dict) or not isinstance(data.get("arch"), str):
        raise UserError("expected a JSON object with an 'arch' digit string (a search's best.json)", path)
    stored, stored_mult = data.get("space", name), data.get("width_mult", 1.0)
    if name is not None and (stored != name or (mult is not None and stored_mult != mult)):
        raise UserError(
            f"architecture is for space {data.get('space')} x{stored_mult}, "
            f"the config uses {get_space(name, mult or 1.0).describe()}", path,
        )
    try:
        found = get_space(stored or "small", stored_mult)
        return parse_arch(data["arch"], found), found
    except ValueError as e:  # ArchError included
        raise UserError(str(e), path) from None
