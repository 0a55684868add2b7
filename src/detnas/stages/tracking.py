"""What a run shows besides its loss and speed (``train_log.py`` writes those): the parts of the loss,
the final evaluation's metrics, the search's fitness per generation and its Pareto front, in
TensorBoard; and, with ``logging.wandb``, the same scalars and the run's config in Weights & Biases.

Tags: ``<stage>/loss/<part>`` (torchvision's names: ``loss_objectness`` and ``loss_rpn_box_reg`` for
the RPN, ``loss_classifier`` and ``loss_box_reg`` for the box head; RetinaNet's ``classification`` and
``bbox_regression``), ``<stage>/eval/<path>`` (e.g. ``finetune/eval/map/<arch>/AP``), and for a
search ``search/best_map``, ``search/mean_map``, ``search/evaluated`` per generation and
``search/pareto_map`` over body MFLOPs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch


class LossParts:
    """The named parts of each step's loss, summed on the device until the next log line asks for
    their means (no synchronisation per step)."""

    def __init__(self):
        self._sums: dict[str, torch.Tensor] = {}
        self._steps = 0

    def add(self, parts: dict[str, torch.Tensor]) -> None:
        for name, value in parts.items():
            value = value.detach().float()
            self._sums[name] = self._sums[name] + value if name in self._sums else value
        self._steps += 1

    def take_means(self) -> dict[str, float]:
        """The mean of each part since the last call."""
        means = {name: float(total) / self._steps for name, total in self._sums.items()} if self._steps else {}
        self._sums, self._steps = {}, 0
        return means


def numeric_leaves(tree, prefix: str = "") -> dict[str, float]:
    """``{"a/b/c": value}`` of every number in nested dicts (timings ``seconds_*`` and booleans left out)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(numeric_leaves(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and not str(key).startswith("seconds_"):
            out[name] = float(value)
    return out


class Tracker:
    """The TensorBoard writer of a run (given by ``open``) and its W&B mirror, when configured."""

    def __init__(self, out_dir: Path, stage: str, total: int, parts: LossParts | None = None,
                 config: dict | None = None):
        self.out_dir, self.stage, self.total, self.parts, self.config = Path(out_dir), stage, total, parts, config
        self._tb, self._wandb = None, None

    def open(self, tb) -> None:
        self._tb = tb
        settings = ((self.config or {}).get("logging") or {}).get("wandb")
        if settings:
            self._wandb = open_wandb(settings, self.out_dir, self.stage, self.config)

    def with_parts(self, values: dict[str, float]) -> dict[str, float]:
        return {**values, **{f"loss/{k}": v for k, v in (self.parts.take_means() if self.parts else {}).items()}}

    def mirror(self, step: int, values: dict[str, float]) -> None:
        """The scalars TensorBoard got, to W&B."""
        if self._wandb is not None:
            self._wandb.log({f"{self.stage}/{k}": v for k, v in values.items()}, step=step)

    def final(self, metrics: dict) -> None:
        values = {f"eval/{k}": v for k, v in numeric_leaves(metrics).items()}
        for name, value in values.items():
            self._tb.add_scalar(f"{self.stage}/{name}", value, self.total)
        self.mirror(self.total, values)

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def open_wandb(settings: dict, out_dir: Path, stage: str, config: dict | None):
    """A W&B run for one stage of one run folder; a resumed stage continues the same W&B run (its id
    is derived from the folder and the stage)."""
    from detnas.errors import UserError

    try:
        import wandb
    except ImportError:
        raise UserError("logging.wandb needs the wandb package: pip install 'detnas[wandb]' (or remove "
                        "logging.wandb)") from None
    run_id = hashlib.sha256(f"{out_dir.resolve()}:{stage}".encode()).hexdigest()[:16]
    return wandb.init(project=settings.get("project", "detnas"), entity=settings.get("entity"),
                      mode=settings.get("mode", "offline"), dir=str(out_dir), id=run_id, resume="allow",
                      name=settings.get("name") or f"{out_dir.name}-{stage}", config=config or {},
                      settings=wandb.Settings(silent=True))


def log_search(out_dir: Path, history: list[dict]) -> None:
    """TensorBoard scalars of a search's records (rank 0, when it finishes): per generation the best
    fitness so far, the mean of that generation's candidates and their number; the Pareto front of
    fitness against body FLOPs (one point per front member, its step the MFLOPs)."""
    from torch.utils.tensorboard import SummaryWriter

    from detnas.search.pareto import front_records

    generations = sorted({r.get("generation", 0) for r in history})
    best = float("-inf")
    with SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=0) as tb:
        for g in generations:
            maps = [r["map"] for r in history if r.get("generation", 0) == g]
            best = max(best, *maps)
            tb.add_scalar("search/best_map", best, g)
            tb.add_scalar("search/mean_map", sum(maps) / len(maps), g)
            tb.add_scalar("search/evaluated", len(maps), g)
        for r in front_records(history, "flops"):
            tb.add_scalar("search/pareto_map", r["map"], round(r["flops"] / 1e6))
