import contextlib
import os

# Before torch is imported (see detnas/cli.py): spinning OpenMP threads crawl when the tests' own
# subprocesses (torchrun workers, CLI runs) share the two cores with this process.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# data.workers "auto" means no DataLoader worker processes in tests (subprocesses inherit it): tests
# that check workers set them explicitly
os.environ["DETNAS_DATA_WORKERS"] = "0"

import pytest  # noqa: E402


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


@pytest.fixture(scope="module")
def two_threads():
    """In-process training on both cores, for a long end-to-end test that runs alone."""
    with torch_threads(2):
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
