"""Does the search's fitness separate architectures? Checked on every finished search.

A supernet that did not learn gives every candidate (nearly) the same mAP, and the evolution then
"finds" whichever architecture the tie-break prefers. Two numbers tell a user whether the winner
means anything: how many distinct fitness values the search saw, and whether the winner's lead over
the runner-up is larger than the fitness's own noise. The noise is measured by evaluating the top
candidates again with BN statistics recalibrated on another random sample of training images.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from detnas.atomic import write_text_atomic
from detnas.config.runs import FITNESS_CHECK_FILE as CHECK_FILE

MIN_DISTINCT = 0.8  # fraction of distinct mAP values below which the fitness does not rank
NEAR_ZERO_MAP = 0.01  # mAP (fraction) below which a supernet path is taken as "detects nothing"


def check_fitness(history: list[dict], evaluate_again: Callable[[str], float], top: int = 3) -> dict:
    """Summarise ``history`` (records with "arch" and "map") and re-evaluate its ``top`` best
    architectures with ``evaluate_again(arch) -> mAP`` (another recalibration sample).

    Returns fractions in [0, 1] and a list of warnings in words (empty when the fitness ranks)."""
    ranked = sorted(history, key=lambda r: (-r["map"], r["arch"]))
    maps = [r["map"] for r in history]
    distinct = len({round(m, 6) for m in maps}) / len(maps)
    again = [{"arch": r["arch"], "map": r["map"], "map_again": evaluate_again(r["arch"])} for r in ranked[:top]]
    noise = max(abs(r["map"] - r["map_again"]) for r in again)
    margin = ranked[0]["map"] - ranked[1]["map"] if len(ranked) > 1 else None
    warnings = []
    if max(maps) < NEAR_ZERO_MAP:
        warnings.append(f"every candidate scored below {100 * NEAR_ZERO_MAP:.0f} AP on the search split "
                        f"(best {100 * max(maps):.2f}): the supernet does not detect, the winner is arbitrary")
    if distinct < MIN_DISTINCT:
        warnings.append(f"only {100 * distinct:.0f}% of the {len(maps)} fitness values are distinct: "
                        "the fitness does not separate the candidates (ties are broken by the arch string)")
    if margin is not None and margin <= noise:
        warnings.append(f"the winner leads the runner-up by {100 * margin:.2f} AP, within the fitness's "
                        f"re-evaluation noise of {100 * noise:.2f} AP: the two are not told apart")
    return {"evaluated": len(maps), "distinct_fraction": distinct, "best_map": ranked[0]["map"],
            "margin": margin, "noise": noise, "reevaluated": again, "warnings": warnings}


def write_check(run_dir: Path, check: dict) -> None:
    write_text_atomic(Path(run_dir) / CHECK_FILE, json.dumps(check, indent=2) + "\n")


def checked_count(run_dir: Path) -> int | None:
    """How many evaluated candidates the check in ``run_dir`` covered (None: no check there)."""
    path = Path(run_dir) / CHECK_FILE
    return json.loads(path.read_text())["evaluated"] if path.exists() else None


def read_warnings(run_dir: Path) -> list[str]:
    path = Path(run_dir) / CHECK_FILE
    return json.loads(path.read_text())["warnings"] if path.exists() else []
