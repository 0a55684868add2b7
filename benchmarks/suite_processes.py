"""Where the test suite's CPU time goes: every Python process it starts, with its CPU-seconds, and every
test file's wall time against the CPU time it used.

Runs ``python -m pytest`` (extra arguments are passed on) with a ``sitecustomize`` on ``PYTHONPATH`` that
records, when each interpreter exits, its CPU time (user + system) and command line; then prints the
count, the xdist workers' share against the processes the tests start (CLI runs, torchrun jobs and
their workers, stages side by side), and the largest of those. Processes ended by ``kill -9`` leave no
record; a test's ``env`` that drops ``PYTHONPATH`` hides its processes too (the tests' own ``ENV`` keeps it).
A pytest plugin beside it records each test's wall time and the CPU time of its worker and of the
processes the test waited for (``RUSAGE_CHILDREN``: torchrun's workers count through torchrun); per file,
wall time minus both is time spent waiting.

    .venv/bin/python benchmarks/suite_processes.py [-- pytest arguments, e.g. -q tests/test_train.py]
"""

from __future__ import annotations

import json
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

TIMER = '''
import json, os, resource, time
import pytest

def _cpu():
    own, children = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    t0, (own0, children0) = time.perf_counter(), _cpu()
    yield
    own1, children1 = _cpu()
    with open(os.environ["DETNAS_TEST_TIMES"], "a") as f:
        f.write(json.dumps([item.nodeid.split("::")[0], time.perf_counter() - t0, own1 - own0,
                            children1 - children0]) + "\\n")
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
        (Path(tmp) / "detnas_test_times.py").write_text(TIMER)
        log, times = Path(tmp) / "census.tsv", Path(tmp) / "tests.jsonl"
        env = {**os.environ, "DETNAS_CENSUS": str(log), "DETNAS_TEST_TIMES": str(times),
               "PYTHONPATH": os.pathsep.join(filter(None, [tmp, os.environ.get("PYTHONPATH")]))}
        t0 = time.perf_counter()
        code = subprocess.call([sys.executable, "-m", "pytest", "-p", "detnas_test_times", *args], env=env)
        wall = time.perf_counter() - t0
        rows = [line.split("\t", 1) for line in log.read_text().splitlines()] if log.exists() else []
        tests = [json.loads(line) for line in times.read_text().splitlines()] if times.exists() else []
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
    per_file = defaultdict(lambda: [0.0, 0.0, 0.0])
    for name, *measured in tests:
        per_file[name] = [a + b for a, b in zip(per_file[name], measured)]
    totals = [sum(v[i] for v in per_file.values()) for i in range(3)]
    print(f"\nTest files (all {len(per_file)}: wall {totals[0]:.0f} s; CPU {totals[1]:.0f} s in the pytest workers, "
          f"{totals[2]:.0f} s in processes they waited for), the 20 longest:")
    print("\n| file | wall (s) | CPU, worker (s) | CPU, its processes (s) | waiting (s) |\n|---|---:|---:|---:|---:|")
    for name, (w, own, children) in sorted(per_file.items(), key=lambda kv: -kv[1][0])[:20]:
        print(f"| {name} | {w:.1f} | {own:.1f} | {children:.1f} | {max(0.0, w - own - children):.1f} |")
    sys.exit(code)


if __name__ == "__main__":
    main()
