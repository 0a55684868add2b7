"""``detnas config show|template STAGE``: what a stage's config holds, before writing one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from detnas.cli.app import SupernetOpt, app
from detnas.errors import UserError

config_app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown",
                         help="Print a stage's config: its defaults, a commented template, or what a config file "
                              "and overrides make of it.")
app.add_typer(config_app, name="config")

StageArg = Annotated[str, typer.Argument(
    help="pipeline, pretrain, finetune, search, retrain, rank-check or evaluate", show_default=False)]


def _schema(stage: str):
    from detnas.config.stages import STAGE_SCHEMAS

    if stage not in STAGE_SCHEMAS:
        raise UserError(f"unknown stage {stage!r} (one of: {', '.join(STAGE_SCHEMAS)})")
    return STAGE_SCHEMAS[stage]


@config_app.command()
def show(
    stage: StageArg,
    config: Annotated[Optional[str], typer.Option(
        "--config", help="a config file or packaged name: print the stage's config it gives, every default filled in "
                         "(a pipeline config: the stage's part of it)")] = None,
    settings: Annotated[Optional[list[str]], typer.Option(
        "--set", metavar="KEY=VALUE", help="change one setting of the config (repeatable)")] = None,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help="fills ${data_root}")] = None,
    imagenet: Annotated[Optional[Path], typer.Option(
        "--imagenet", help="fills ${imagenet} (default: DATA_ROOT/imagenet)")] = None,
    supernet: SupernetOpt = None,
) -> None:
    """The defaults of STAGE's config as YAML (REQUIRED marks a key without one); with --config, the
    config that STAGE would run with."""
    import yaml

    from detnas.config.template import show_defaults

    model = _schema(stage)
    if config is None:
        if settings or data_root or imagenet or supernet:
            raise UserError("--set, --data-root, --imagenet and --supernet apply to a --config")
        print(show_defaults(model), end="")
        return
    from detnas.cli.app import StageInput

    cfg = StageInput(stage, config, settings or [], data_root, imagenet, False, 0).load(supernet)
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, width=120), end="")


@config_app.command()
def template(stage: StageArg) -> None:
    """A commented YAML template of STAGE's config: every key with its default (or REQUIRED), its allowed
    values and what it means. Save it, fill in the REQUIRED keys and delete the ones you keep at their default."""
    from detnas.config.template import template as render

    command = "detnas pipeline" if stage == "pipeline" else f"detnas {stage}"
    print(render(_schema(stage), f"{command} --config FILE: every key of its config"), end="")
