"""Experiment tracking besides TensorBoard: ``logging.wandb`` (Weights & Biases)."""

from __future__ import annotations

from typing import Literal

from detnas.strict import StrictModel


class WandbConfig(StrictModel):
    """Mirror a run's TensorBoard scalars and its config to W&B (``pip install 'detnas[wandb]'``)."""

    project: str = "detnas"
    entity: str | None = None
    # offline: written under the run folder (<run>/wandb), no network; upload later with `wandb sync`
    mode: Literal["online", "offline"] = "offline"
    name: str | None = None  # default: the run folder's name and the stage
