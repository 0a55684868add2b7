import contextlib
import os

# Before torch is imported (see detnas/cli.py): spinning OpenMP threads crawl when the tests' own
# subprocesses (torchrun workers, CLI runs) share the two cores with this process.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# data.workers "auto" means no DataLoader worker processes in tests (subprocesses inherit it): tests
# that check workers set them explicitly
os.environ["DETNAS_DATA_WORKERS"] = "0"
# pytest-xdist runs the suite on two worker processes (pyproject.toml's addopts): the workers share
# the cores out, one torch thread each (and their subprocesses too)
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402


def pytest_collection_modifyitems(items):
    """Files with a slow test first: the workers (each given a whole file, ``--dist loadfile``) start on
    the long runs, and the short files fill in around them, instead of one long run ending the suite."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: each file's own order is kept


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to ``n`` inside, restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_thread():
    """In-process training single-threaded: several threads on 2 shared cores spin and crawl."""
    with torch_threads(1):
        yield


@pytest.fixture
def cli_here():
    """``cli_here(*args, check=True)``: ``detnas ARGS`` in this process (see ``cli_checks.run_here``)."""
    from cli_checks import run_here

    def run(*args, check: bool = True):
        r = run_here(*args)
        if check:
            assert r.returncode == 0, r.stderr[-3000:]
        return r

    return run
