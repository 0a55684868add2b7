"""Latency look-up tables: the measured time of every choice block at every position, with the real
input shape it meets inside the backbone at one input size, and of the fixed parts (stem, FPN, the
detector's heads and post-processing), on the machine that measured them (``detnas.tools.latency``).

An architecture's predicted latency is the sum of its blocks' entries and the fixed parts; its
predicted backbone latency, the stem and its blocks. ``benchmarks/latency_prediction.py`` checks the
prediction against end-to-end measurements.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detnas.errors import UserError, read_json
from detnas.model.space import NUM_CHOICES, Arch, SearchSpace

TABLE_FORMAT = "detnas-latency-table"
TABLE_VERSION = 1


@dataclass(frozen=True)
class LatencyTable:
    """Milliseconds per (position, choice) in ``blocks`` and per fixed part in ``fixed`` (``stem``, and
    for a detector ``fpn`` and ``heads``), measured at ``input_size`` (height, width) x ``batch``."""

    space: str
    width_mult: float
    input_size: tuple[int, int]
    batch: int
    blocks: np.ndarray  # (num_blocks, NUM_CHOICES)
    fixed: dict[str, float]
    meta: dict  # device, threads, torch version, detector, warm-up and repetitions

    def backbone_ms(self, arch: Arch) -> float:
        return self.fixed["stem"] + float(self.blocks[np.arange(len(arch)), list(arch)].sum())

    def predict_ms(self, arch: Arch) -> float:
        """The predicted latency of ``arch``: its blocks and every fixed part."""
        return sum(self.fixed.values()) + float(self.blocks[np.arange(len(arch)), list(arch)].sum())

    @property
    def range_ms(self) -> tuple[float, float]:
        base = sum(self.fixed.values())
        return base + float(self.blocks.min(1).sum()), base + float(self.blocks.max(1).sum())

    def to_json(self) -> dict:
        return {"format": TABLE_FORMAT, "version": TABLE_VERSION, "space": self.space, "width_mult": self.width_mult,
                "input_size": list(self.input_size), "batch": self.batch, **self.meta, "fixed_ms": self.fixed,
                "blocks_ms": self.blocks.tolist()}


def load_table(path: str | Path, space: SearchSpace | None = None) -> LatencyTable:
    """The table in ``path``; with ``space``, it must have been measured for that space. Problems are
    one-line ``UserError``s naming the file."""
    path = Path(path)
    data = read_json(path, "latency table")
    try:
        if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
            raise ValueError("not a latency table written by `detnas latency`")
        if data.get("version") != TABLE_VERSION:
            raise ValueError(f"unsupported version {data.get('version')!r} (expected {TABLE_VERSION})")
        blocks = np.asarray(data["blocks_ms"], dtype=np.float64)
        fixed = {str(k): float(v) for k, v in data["fixed_ms"].items()}
        if blocks.ndim != 2 or blocks.shape[1] != NUM_CHOICES or "stem" not in fixed:
            raise ValueError(f"blocks_ms must be a list of {NUM_CHOICES} times per position, fixed_ms hold 'stem'")
        if not (np.isfinite(blocks).all() and (blocks >= 0).all() and all(v >= 0 for v in fixed.values())):
            raise ValueError("times must be finite and non-negative")
        meta = {k: v for k, v in data.items() if k not in
                ("format", "version", "space", "width_mult", "input_size", "batch", "fixed_ms", "blocks_ms")}
        table = LatencyTable(str(data["space"]), float(data["width_mult"]), tuple(int(v) for v in data["input_size"]),
                             int(data["batch"]), blocks, fixed, meta)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"bad latency table: {e}", path) from None
    if space is not None and (table.space, table.width_mult, len(blocks)) != (
            space.name, space.width_mult, space.num_blocks):
        raise UserError(f"latency table was measured for the {table.space} x{table.width_mult:g} space "
                        f"({len(blocks)} blocks), the search uses {space.describe()} ({space.num_blocks} blocks)", path)
    return table
