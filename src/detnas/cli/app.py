"""The ``detnas`` Typer application, the options several commands share, and ``stage_command``: the
one way a command reads its config (a file or a packaged name, ``--set``, ``--data-root``,
``--imagenet``) and plans instead of running (``--dry-run``)."""

from __future__ import annotations

import inspect
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="DetNAS: backbone search for object detection.",
    rich_markup_mode="markdown",  # help paragraphs are re-flowed, and brackets are text, not markup
)


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import version

        print(f"detnas {version('detnas')} (torch {version('torch')}, torchvision {version('torchvision')})")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", metavar="", is_eager=True, callback=_version,
                                          help="print the versions of detnas, torch and torchvision")] = False,
) -> None:
    """DetNAS: backbone search for object detection."""


def flag(name: str, help: str):  # noqa: A002 (typer's own name)
    """A boolean option given as the bare flag (its help shows no value to type after it)."""
    return typer.Option(name, metavar="", help=help)


OutOpt = Annotated[Optional[Path], typer.Option("--out", help="run folder (default: runs/STAGE)")]
ResumeOpt = Annotated[bool, flag("--resume", "continue the run in --out where it stopped")]
CheckpointOpt = Annotated[Path, typer.Option("--checkpoint", help="retrained detector checkpoint (detnas retrain)")]
SupernetOpt = Annotated[Optional[Path], typer.Option(
    "--supernet", help="the finetuned supernet's run folder (a pipeline's finetune/); overrides the config's")]

_PACKAGED = "coco-fpn-small, coco-retinanet-small, voc-fpn-small, coco-fpn-large"


@dataclass(frozen=True)
class StageInput:
    """What every stage command is given to find its config, and whether to only plan the run."""

    stage: str
    config: str | None
    settings: list[str]
    data_root: Path | None
    imagenet: Path | None
    dry_run: bool
    estimate_steps: int

    def load(self, supernet: Path | None = None, options: list | None = None):
        """The stage's validated config (see ``config.stages.load_stage_config``); ``options`` are
        ``Override``s of the command's own options."""
        from detnas.config.loader import parse_settings
        from detnas.config.stages import load_stage_config

        imagenet = self.imagenet if self.imagenet is not None or self.data_root is None else self.data_root / "imagenet"
        return load_stage_config(self.stage, self.config, parse_settings(self.settings),
                                 {"data_root": self.data_root, "imagenet": imagenet}, supernet, options or [])

    def plan(self, cfg, out: Path, **details) -> bool:
        """With ``--dry-run``: check ``cfg`` and its data as the run would, print the plan (under torchrun
        every worker checks, the first one times the steps and prints) and return True; else False."""
        if not self.dry_run:
            return False
        from detnas.config.loader import find_config, read_config
        from detnas.config.stages import is_pipeline_config
        from detnas.stages.dry_run import dry_run

        derived = self.stage != "pipeline" and self.config is not None and is_pipeline_config(
            read_config(find_config(self.config)))
        main = os.environ.get("RANK", "0") == "0"
        lines = dry_run(self.stage, cfg, out, int(os.environ.get("WORLD_SIZE", 1)), self.estimate_steps if main else 0,
                        set_keys=not derived, **details)
        if main:
            print("\n".join(lines))
        return True


_SHARED = {
    "config": (Optional[str], None, typer.Option(
        "--config", help=f"YAML config file, or a packaged one: {_PACKAGED}. A pipeline config gives this stage's "
                         "part of it (`detnas config template STAGE` prints every key)")),
    "settings": (Optional[list[str]], None, typer.Option(
        "--set", metavar="KEY=VALUE", help="change one setting of the config, e.g. --set search.max_flops=280e6 "
                                           "(repeatable)")),
    "data_root": (Optional[Path], None, typer.Option(
        "--data-root", help="fills ${data_root} in the config's paths (packaged configs: the dataset folder)")),
    "imagenet": (Optional[Path], None, typer.Option(
        "--imagenet", help="fills ${imagenet}: train/ and val/ class folders (default: DATA_ROOT/imagenet)")),
    "dry_run": (bool, False, flag("--dry-run", "check the config and the data, print the plan, write nothing")),
    "estimate_steps": (int, 3, typer.Option(
        "--estimate-steps", help="with --dry-run: time this many steps of each training on this device to "
                                 "estimate how long the run takes (0: no estimate)")),
}


def restarted_group() -> bool:
    """Whether torchrun restarted this worker's group (``--max-restarts``) after a worker failed: the
    run in ``--out`` then continues as with ``--resume`` (rank 0 says so)."""
    from detnas.distributed import restart_count

    restart = restart_count()
    if restart > 0 and os.environ.get("RANK", "0") == "0":
        print(f"detnas: torchrun restarted the workers (restart {restart} of "
              f"{os.environ.get('TORCHELASTIC_MAX_RESTARTS', '?')}): resuming the run", file=sys.stderr, flush=True)
    return restart > 0


def stage_command(stage: str, config_required: bool = True):
    """Register ``body(stage_input, **own_options)`` as the command ``stage`` with the shared config
    options (``_SHARED``) first: ``body`` loads its config with ``stage_input.load()`` and returns after
    ``stage_input.plan(cfg, out)`` when that printed a dry run's plan."""

    def register(body):
        own = list(inspect.signature(body, eval_str=True).parameters.values())[1:]
        shared = []
        for name, (kind, default, option) in _SHARED.items():
            if name == "config" and config_required:
                kind, default = str, inspect.Parameter.empty
            shared.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=Annotated[kind, option]))

        def command(**kw):
            given = {name: kw.pop(name) for name in _SHARED}
            given["settings"] = given["settings"] or []
            if given["estimate_steps"] < 0:
                raise typer.BadParameter("must be 0 or more", param_hint="--estimate-steps")
            if "resume" in kw and not kw["resume"] and not given["dry_run"] and restarted_group():
                kw["resume"] = True
            return body(StageInput(stage, **given), **kw)

        keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        command.__signature__ = inspect.Signature([shared[0], *keyword, *shared[1:]])
        command.__doc__, command.__name__ = body.__doc__, body.__name__
        app.command(stage)(command)
        return body

    return register
