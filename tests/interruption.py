"""Interrupting a training run from a test the way a kill does: between two steps, with nothing
written after the last checkpoint."""

from __future__ import annotations


class Interrupted(Exception):
    """Where a test stopped a run."""


def interrupt_at(job, step: int):
    """Make ``job`` raise ``Interrupted`` when the loop is about to train step ``step`` (counted from
    0, before that step's batch is drawn). Run it with a ``checkpoint_every`` that divides ``step``,
    so that the checkpoint a resumption starts from is the one of that step. Returns ``job``."""
    inner = job.arch_for_step

    def arch_for_step(s: int):
        if s == step:
            raise Interrupted(f"interrupted before step {step}")
        return inner(s)

    job.arch_for_step = arch_for_step
    return job
