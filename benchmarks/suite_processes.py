"""Where the test suite's CPU time goes: every Python process it starts, with its CPU-seconds.

Runs ``python -m pytest`` (extra arguments are passed on) with a ``sitecustomize`` on ``PYTHONPATH`` that
records, when each interpreter exits, its CPU time (user + system) and command line; then prints the
count, the xdist workers' share against the processes the tests start (CLI runs, torchrun jobs and
their workers, stages side by side), and the largest of those. Processes ended by ``kill -9`` leave no
record; a test's ``env`` that drops ``PYTHONPATH`` hides its processes too (the tests' own ``ENV`` keeps it).

    .venv/bin/python benchmarks/suite_processes.py [-- pytest arguments, e.g. -q tests/test_train.py]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

RECORDER = '''
import atexit, os, sys, time

def _record():
    t = os.times()
    with open(os.environ["DETNAS_CENSUS"], "a") as f:
        f.write(f"{t.user + t.system:.2f}\\t{' '.join(sys.argv)[:300]}\\n")

atexit.register(_record)
'''


def kind(command: str) -> str:
    if command == "-c" or "pytest" in command.split(" ", 1)[0]:  # execnet starts the xdist workers with -c
        return "pytest (main process and xdist workers)"
    if "torch/distributed/run.py" in command:
        return "torchrun launchers"
    return "started by tests (CLI runs, torchrun workers, stages side by side, helpers)"


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--"]:
        args = args[1:]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "sitecustomize.py").write_text(RECORDER)
        log = Path(tmp) / "census.tsv"
        env = {**os.environ, "DETNAS_CENSUS": str(log),
               "PYTHONPATH": os.pathsep.join(filter(None, [tmp, os.environ.get("PYTHONPATH")]))}
        t0 = time.perf_counter()
        code = subprocess.call([sys.executable, "-m", "pytest", *args], env=env)
        wall = time.perf_counter() - t0
        rows = [line.split("\t", 1) for line in log.read_text().splitlines()] if log.exists() else []
    rows = [(float(cpu), command) for cpu, command in rows]
    by_kind = defaultdict(list)
    for cpu, command in rows:
        by_kind[kind(command)].append(cpu)
    print(f"\npytest exit code {code}, wall {wall:.0f} s; {len(rows)} Python processes recorded, "
          f"{sum(c for c, _ in rows):.0f} CPU-seconds in all")
    print("\n| processes | count | CPU-seconds | mean |\n|---|---:|---:|---:|")
    for name, cpus in sorted(by_kind.items(), key=lambda kv: -sum(kv[1])):
        print(f"| {name} | {len(cpus)} | {sum(cpus):.0f} | {sum(cpus) / len(cpus):.1f} |")
    print("\nThe largest started by tests:")
    for cpu, command in sorted((r for r in rows if kind(r[1]).startswith("started")), reverse=True)[:15]:
        print(f"  {cpu:6.1f} s  {command[:150]}")
    sys.exit(code)


if __name__ == "__main__":
    main()
