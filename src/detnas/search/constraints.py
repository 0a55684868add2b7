"""The search's budget: body FLOPs in [min_flops, max_flops], body params <= max_params and predicted
latency <= max_latency_ms, checked by look-up in the analytic cost table and the measured latency
table (``model/latency_table.py``), and refused at once when no architecture of the space meets it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from detnas.errors import UserError
from detnas.model.flops import CostTable, cost_table, fmt_millions, sample_arch
from detnas.model.latency_table import LatencyTable, load_table
from detnas.model.space import NUM_CHOICES, Arch, ArchError, SearchSpace, to_arch


def size_key(input_size: int | tuple[int, int] | list[int]) -> int | tuple[int, int]:
    """An input size as the cost table keys it: one int for a square."""
    if isinstance(input_size, int):
        return input_size
    h, w = (int(v) for v in input_size)
    return h if h == w else (h, w)


@dataclass(frozen=True)
class Constraints:
    """Body FLOPs in [min_flops, max_flops], body params <= max_params and predicted latency <=
    max_latency_ms, by table look-up."""

    table: CostTable
    min_flops: float | None
    max_flops: float | None
    max_params: int | None
    latency: LatencyTable | None = None
    max_latency_ms: float | None = None

    def flops(self, arch: Arch) -> int:
        return self.table.body_macs(arch)

    def params(self, arch: Arch) -> int:
        return self.table.body_params(arch)

    def latency_ms(self, arch: Arch) -> float | None:
        return None if self.latency is None else self.latency.predict_ms(arch)

    def ok(self, arch: Arch) -> bool:
        if self.max_latency_ms is not None and self.latency_ms(arch) > self.max_latency_ms:
            return False
        if self.min_flops is not None or self.max_flops is not None:
            f = self.flops(arch)
            if self.min_flops is not None and f < self.min_flops:
                return False
            if self.max_flops is not None and f > self.max_flops:
                return False
        return self.max_params is None or self.params(arch) <= self.max_params

    def within(self, archs: np.ndarray) -> np.ndarray:
        """Which rows of ``archs`` (n, num_blocks) meet every constraint, vectorised."""
        t, rows = self.table, np.arange(archs.shape[1])
        ok = np.ones(len(archs), dtype=bool)
        if self.min_flops is not None or self.max_flops is not None:
            flops = t.body_macs_batch(archs)
            ok &= (flops >= (-np.inf if self.min_flops is None else self.min_flops))
            ok &= (flops <= (np.inf if self.max_flops is None else self.max_flops))
        if self.max_params is not None:
            ok &= t.stem_params + t.params[rows, archs].sum(1) <= self.max_params
        if self.max_latency_ms is not None:
            ok &= sum(self.latency.fixed.values()) + self.latency.blocks[rows, archs].sum(1) <= self.max_latency_ms
        return ok

    def sample(self, rng: np.random.Generator, max_draws: int = 1_000_000) -> Arch:
        """A uniformly random architecture meeting every constraint (vectorised rejection sampling,
        for bounds that single uniform draws rarely meet, such as latency)."""
        n, batch = self.table.macs.shape[0], 8192
        for _ in range(max(1, max_draws // batch)):
            archs = rng.integers(0, NUM_CHOICES, (batch, n))
            hits = np.flatnonzero(self.within(archs))
            if hits.size:
                return to_arch(archs[hits[0]])
        raise ArchError(f"no architecture meeting the search constraints in {max_draws} uniform draws")

    @property
    def params_range(self) -> tuple[int, int]:
        t = self.table
        return t.stem_params + int(t.params.min(1).sum()), t.stem_params + int(t.params.max(1).sum())


def check_constraints(space: SearchSpace, cfg, input_size: int | tuple[int, int] = 224) -> Constraints:
    """The constraints of ``cfg`` (a ``SearchConfig``); a UserError at once if no architecture of
    ``space`` meets them."""
    size = size_key(input_size)
    table = cost_table(space, size)
    latency = None if cfg.latency_table is None else load_table(cfg.latency_table, space)
    cons = Constraints(table, cfg.min_flops, cfg.max_flops, cfg.max_params, latency, cfg.max_latency_ms)
    f_lo, f_hi = table.body_range
    p_lo, p_hi = cons.params_range
    lo = -math.inf if cfg.min_flops is None else cfg.min_flops
    hi = math.inf if cfg.max_flops is None else cfg.max_flops
    spans = f"the {space.describe()} space spans body FLOPs {fmt_millions(f_lo)}-{fmt_millions(f_hi)}"
    if cfg.max_params is not None:
        spans += f" and body params {fmt_millions(p_lo)}-{fmt_millions(p_hi)}"
    spans += f" at input {input_size}"
    if latency is not None:
        l_lo, l_hi = latency.range_ms
        spans += f", predicted latency {l_lo:.2f}-{l_hi:.2f} ms ({cfg.latency_table})"
    want = []
    if cfg.min_flops is not None or cfg.max_flops is not None:
        shown_lo = "-inf" if lo == -math.inf else fmt_millions(lo)
        want.append(f"body FLOPs in [{shown_lo}, {'inf' if hi == math.inf else fmt_millions(hi)}]")
    if cfg.max_params is not None:
        want.append(f"body params <= {fmt_millions(cfg.max_params)}")
    if cfg.max_latency_ms is not None:
        want.append(f"latency <= {cfg.max_latency_ms:g} ms")
    if not want:
        return cons
    fail = f"no architecture meets the search constraints ({' and '.join(want)}): {spans}"
    if (hi < f_lo or lo > f_hi or (cfg.max_params is not None and cfg.max_params < p_lo)
            or (cfg.max_latency_ms is not None and cfg.max_latency_ms < latency.range_ms[0])):
        raise UserError(fail)
    # Each constraint alone is satisfiable; look for one architecture meeting all of them.
    rng = np.random.default_rng(cfg.seed)  # a private stream: the search RNG is not touched
    if cfg.max_params is None and cfg.max_latency_ms is None:
        try:
            sample_arch(space, rng, cfg.min_flops, cfg.max_flops, size)
        except ArchError:
            raise UserError(f"{fail} (the FLOPs range is too narrow to sample)") from None
        return cons
    if _find_feasible(cons, rng) is None:
        raise UserError(f"{fail} (none found meeting all constraints together)")
    return cons


def _find_feasible(cons: Constraints, rng: np.random.Generator) -> Arch | None:
    t = cons.table
    n = t.macs.shape[0]
    # Archs on the FLOPs/params trade-off (per-position argmin of params + lam * MACs), on the
    # latency/MACs one likewise when latency is bounded, then random.
    cands = [np.argmin(t.params + lam * t.macs, 1) for lam in (0.0, *np.geomspace(1e-6, 1e3, 40))]
    if cons.latency is not None:
        ms, macs = cons.latency.blocks / cons.latency.blocks.max(), t.macs / t.macs.max()
        cands += [np.argmin(ms + lam * macs, 1) for lam in (0.0, *np.geomspace(1e-4, 1e4, 40))]
    cands += [np.argmin(t.macs, 1), np.argmax(t.macs, 1)]
    batches = [np.stack(cands)] + [rng.integers(0, NUM_CHOICES, (8192, n)) for _ in range(24)]
    for archs in batches:
        hits = np.flatnonzero(cons.within(archs))
        if hits.size:
            return to_arch(archs[hits[0]])
    return None
