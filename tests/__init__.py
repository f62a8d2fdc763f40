"""The test suite. Imported before tests/conftest.py and so before anything loads llama.cpp
(whose OpenMP runtime reads its settings once, as it loads): each pytest-xdist worker, and
every process it starts (they inherit the environment), computes on its share of the cores.
llama.cpp and torch use one OpenMP thread per core by default; two workers' threads on every
core spin at OpenMP's barriers, each waiting for a thread the other worker holds off its core,
and a step then costs many times the CPU it needs."""

import os


def _share_the_cores() -> None:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        share = max(1, (os.cpu_count() or 1) // workers)
        os.environ.setdefault("OMP_THREAD_LIMIT", str(share))


_share_the_cores()
