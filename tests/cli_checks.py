"""What a user sees from the CLI: ``detnas ARGS`` run in this process or in a subprocess (with
``ENV``), and the check that a refused input gave one line naming the problem, exit code 2 and no
traceback."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys

# subprocesses: one thread each (the tests share two cores), never a GPU
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
DETNAS = [sys.executable, "-m", "detnas"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def run_detnas(*args, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """``detnas ARGS`` in a subprocess (a fresh interpreter: imports, environment and exit code as a
    user meets them); ``check``: it must succeed."""
    r = subprocess.run([*DETNAS, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=timeout)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def run_here(*args) -> subprocess.CompletedProcess:
    """``detnas ARGS`` in this process (saves the seconds of a start), with the CLI's own error handling."""
    from detnas.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def one_line_error(r: subprocess.CompletedProcess, *expect: str) -> str:
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("detnas: error:"), r.stderr[-3000:]
    for e in expect:
        assert e in lines[0], lines[0]
    return lines[0]
