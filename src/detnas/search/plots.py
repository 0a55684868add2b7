"""What a search shows: plots of its progress per generation and of mAP vs FLOPs with the Pareto
front (PNG), a progress bar per generation and the top-k table on the console.

Figures are drawn on ``matplotlib.figure.Figure`` objects (the Agg canvas), so the global pyplot
backend of the caller is never changed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from detnas.config.runs import PARETO_PNG, PROGRESS_PNG
from detnas.search.pareto import pareto_front

AXIS = {"flops": ("body FLOPs (M MACs)", 1e-6, "FLOPs"), "latency_ms": ("predicted latency (ms)", 1.0, "latency")}


def progress_curve(history: Sequence[dict], topk: int = 10) -> list[dict]:
    """Per generation: best and mean top-k mAP of everything evaluated so far, and mean mAP."""
    gens = sorted({r["generation"] for r in history})
    out, seen = [], []
    for g in gens:
        cur = [r["map"] for r in history if r["generation"] == g]
        seen = sorted(seen + cur, reverse=True)[:topk]
        out.append({
            "generation": g,
            "best_map": seen[0],
            "mean_topk_map": sum(seen) / len(seen),
            "mean_map": sum(cur) / len(cur),
        })
    return out


def plot_search(history: Sequence[dict], out_dir: str | Path, topk: int = 10, cost: str = "flops") -> list[Path]:
    """Write ``search_progress.png`` and ``search_pareto.png`` (mAP against ``cost``: ``flops`` or
    ``latency_ms``) into ``out_dir``; returns the paths."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    curve = progress_curve(history, topk)

    fig = Figure(figsize=(6.4, 4.2), dpi=110)
    ax = fig.add_subplot()
    gens = [c["generation"] for c in curve]
    ax.plot(gens, [c["best_map"] for c in curve], "o-", label="best")
    ax.plot(gens, [c["mean_topk_map"] for c in curve], "s-", label=f"mean top-{topk}")
    ax.plot(gens, [c["mean_map"] for c in curve], ":", color="gray", label="mean of generation")
    ax.set_xlabel("generation")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("mAP (search split)")
    ax.set_title(f"Search progress ({len(history)} architectures)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    progress_path = out_dir / PROGRESS_PNG
    fig.savefig(progress_path)

    fig = Figure(figsize=(6.4, 4.6), dpi=110)
    ax = fig.add_subplot()
    label, scale, short = AXIS[cost]
    costs = [r[cost] * scale for r in history]
    maps = [r["map"] for r in history]
    sc = ax.scatter(costs, maps, c=[r["generation"] for r in history], cmap="viridis", s=12, alpha=0.7)
    cbar = fig.colorbar(sc, ax=ax, label="generation")
    cbar.locator = MaxNLocator(integer=True)
    cbar.update_ticks()
    front = pareto_front(list(zip(costs, maps)))
    ax.step([costs[i] for i in front], [maps[i] for i in front], "r-", where="post", lw=1, alpha=0.8)
    ax.scatter([costs[i] for i in front], [maps[i] for i in front], facecolors="none", edgecolors="red",
               s=40, label="Pareto front")
    if history:
        b = min(range(len(history)), key=lambda i: (-maps[i], history[i]["arch"]))
        ax.scatter([costs[b]], [maps[b]], marker="*", s=160, color="orange", edgecolors="k",
                   label=f"best {history[b]['arch']}", zorder=5)
    ax.set_xlabel(label)
    ax.set_ylabel("mAP (search split)")
    ax.set_title(f"mAP vs {short} of evaluated architectures")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    pareto_path = out_dir / PARETO_PNG
    fig.savefig(pareto_path)
    return [progress_path, pareto_path]


class ProgressBars:
    """Rich progress, one bar per generation (created only when ``enabled``: rank 0 with progress on)."""

    def __init__(self, enabled: bool, total_generations: int):
        self.progress = None
        self.total = total_generations
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("best mAP {task.fields[best]}%"), TimeElapsedColumn(),
            )
            self.progress.start()

    def generation(self, g: int, n: int, best: float) -> ProgressBars | None:
        """The bar of generation ``g`` with ``n`` candidates (None when disabled)."""
        if self.progress is None:
            return None
        self.task = self.progress.add_task(f"generation {g + 1}/{self.total}", total=n, best=_fmt_map(best))
        self.best = best
        return self

    def advance(self, n: int, best: float | None = None) -> None:
        if best is not None:
            self.best = max(self.best, best)
        self.progress.update(self.task, advance=n, best=_fmt_map(self.best))

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _fmt_map(v: float) -> str:
    """mAP for people: in %, as detection tables print it (files keep fractions)."""
    return "-" if not math.isfinite(v) else f"{100 * v:.2f}"


def print_topk(topk: list[dict], title: str = "top architectures") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("rank", "arch", "mAP (%)", "FLOPs(M)", "params(M)", "gen"):
        table.add_column(col, justify="left" if col == "arch" else "right")
    for i, r in enumerate(topk, 1):
        table.add_row(str(i), r["arch"], _fmt_map(r["map"]), f"{r['flops'] / 1e6:.2f}", f"{r['params'] / 1e6:.3f}",
                      str(r["generation"]))
    Console().print(table)
