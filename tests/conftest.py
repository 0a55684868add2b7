import os

# Before torch is imported (see detnas/cli.py): spinning OpenMP threads crawl when the tests' own
# subprocesses (torchrun workers, CLI runs) share the two cores with this process.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
