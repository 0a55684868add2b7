"""The ``detnas`` Typer application and the options several commands share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="DetNAS: backbone search for object detection.",
)

ConfigOpt = Annotated[Path, typer.Option("--config", help="YAML config file")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="run folder (default: runs/<stage>)")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="continue the run in --out where it stopped")]

CheckpointOpt = Annotated[Path, typer.Option("--checkpoint", help="retrained detector checkpoint (detnas retrain)")]

