"""The search's budget: body FLOPs in [min_flops, max_flops] and body params <= max_params, checked by
look-up in the analytic cost table, and refused at once when no architecture of the space meets it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from detnas.errors import UserError
from detnas.flops import CostTable, cost_table, first_within, fmt_millions, sample_arch
from detnas.space import NUM_CHOICES, Arch, ArchError, SearchSpace


def size_key(input_size: int | tuple[int, int] | list[int]) -> int | tuple[int, int]:
    """An input size as the cost table keys it: one int for a square."""
    if isinstance(input_size, int):
        return input_size
    h, w = (int(v) for v in input_size)
    return h if h == w else (h, w)


@dataclass(frozen=True)
class Constraints:
    """Body FLOPs in [min_flops, max_flops] and body params <= max_params, by table look-up."""

    table: CostTable
    min_flops: float | None
    max_flops: float | None
    max_params: int | None

    def flops(self, arch: Arch) -> int:
        return self.table.body_macs(arch)

    def params(self, arch: Arch) -> int:
        return self.table.body_params(arch)

    def ok(self, arch: Arch) -> bool:
        if self.min_flops is not None or self.max_flops is not None:
            f = self.flops(arch)
            if self.min_flops is not None and f < self.min_flops:
                return False
            if self.max_flops is not None and f > self.max_flops:
                return False
        return self.max_params is None or self.params(arch) <= self.max_params

    @property
    def params_range(self) -> tuple[int, int]:
        t = self.table
        return t.stem_params + int(t.params.min(1).sum()), t.stem_params + int(t.params.max(1).sum())


def check_constraints(space: SearchSpace, cfg, input_size: int | tuple[int, int] = 224) -> Constraints:
    """The constraints of ``cfg`` (a ``SearchConfig``); a UserError at once if no architecture of
    ``space`` meets them."""
    size = size_key(input_size)
    table = cost_table(space, size)
    cons = Constraints(table, cfg.min_flops, cfg.max_flops, cfg.max_params)
    f_lo, f_hi = table.body_range
    p_lo, p_hi = cons.params_range
    lo = -math.inf if cfg.min_flops is None else cfg.min_flops
    hi = math.inf if cfg.max_flops is None else cfg.max_flops
    spans = f"the {space.describe()} space spans body FLOPs {fmt_millions(f_lo)}-{fmt_millions(f_hi)}"
    if cfg.max_params is not None:
        spans += f" and body params {fmt_millions(p_lo)}-{fmt_millions(p_hi)}"
    spans += f" at input {input_size}"
    want = []
    if cfg.min_flops is not None or cfg.max_flops is not None:
        shown_lo = "-inf" if lo == -math.inf else fmt_millions(lo)
        want.append(f"body FLOPs in [{shown_lo}, {'inf' if hi == math.inf else fmt_millions(hi)}]")
    if cfg.max_params is not None:
        want.append(f"body params <= {fmt_millions(cfg.max_params)}")
    if not want:
        return cons
    fail = f"no architecture meets the search constraints ({' and '.join(want)}): {spans}"
    if hi < f_lo or lo > f_hi or (cfg.max_params is not None and cfg.max_params < p_lo):
        raise UserError(fail)
    # Each constraint alone is satisfiable; look for one architecture meeting all of them.
    rng = np.random.default_rng(cfg.seed)  # a private stream: the search RNG is not touched
    if cfg.max_params is None:
        try:
            sample_arch(space, rng, cfg.min_flops, cfg.max_flops, size)
        except ArchError:
            raise UserError(f"{fail} (the FLOPs range is too narrow to sample)") from None
        return cons
    if _find_feasible(cons, rng, lo, hi) is None:
        raise UserError(f"{fail} (none found meeting all constraints together)")
    return cons


def _find_feasible(cons: Constraints, rng: np.random.Generator, lo: float, hi: float) -> Arch | None:
    t = cons.table
    n = t.macs.shape[0]
    # Archs on the FLOPs/params trade-off (per-position argmin of params + lam * MACs), then random.
    cands = [np.argmin(t.params + lam * t.macs, 1) for lam in (0.0, *np.geomspace(1e-6, 1e3, 40))]
    cands += [np.argmin(t.macs, 1), np.argmax(t.macs, 1)]
    batches = [np.stack(cands)] + [rng.integers(0, NUM_CHOICES, (8192, n)) for _ in range(24)]
    for archs in batches:
        found = first_within(t, archs, lo, hi, cons.max_params)
        if found is not None:
            return found
    return None
