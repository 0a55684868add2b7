"""The ``detnas`` command line. Thin: each command parses its arguments and calls one function."""

from __future__ import annotations

import os
import sys

import typer

from detnas.cli import artifacts, config, inspect, stages  # noqa: F401  (each registers its commands on ``app``)
from detnas.cli.app import app
from detnas.distributed import lost_worker
from detnas.errors import UserError
from detnas.model.space import ArchError

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    # Before torch is imported (the commands import it): OpenMP threads that spin while waiting make
    # training 10x slower as soon as another process (a second torchrun worker, a data loader) shares
    # the cores. Users may override it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        app(args=argv, standalone_mode=False)
    except (UserError, ArchError) as e:
        print(f"detnas: error: {e}", file=sys.stderr)
        # Free the failed call's frames now. A DataLoader iterator among them (a worker's bad image) then
        # stops its workers at once; left to the cycle collector, its shutdown waits 5 s per worker.
        e.__traceback__ = None
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.TyperException as e:  # bad command-line arguments
        if e.format_message():  # empty when help was shown for a bare command
            print(f"detnas: error: {e.format_message()}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        print("detnas: aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("detnas: interrupted", file=sys.stderr)
        sys.exit(130)
    except RuntimeError as e:  # under torchrun: another worker died or hangs
        lost = lost_worker(e)
        if lost is None:
            raise
        print(f"detnas: error: {lost}", file=sys.stderr, flush=True)
        sys.exit(1)
