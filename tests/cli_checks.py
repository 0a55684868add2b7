"""What a user sees from the CLI: ``detnas ARGS`` run in this process, and the check that a refused
input gave one line naming the problem, exit code 2 and no traceback."""

from __future__ import annotations

import subprocess


def run_here(capsys, *args) -> subprocess.CompletedProcess:
    """``detnas ARGS`` in this process (saves the seconds of a start), with the CLI's own error handling."""
    from detnas.cli import main

    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def one_line_error(r: subprocess.CompletedProcess, *expect: str) -> str:
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("detnas: error:"), r.stderr[-3000:]
    for e in expect:
        assert e in lines[0], lines[0]
    return lines[0]
