"""glibc's malloc for the server process: large blocks mapped on their own, so that freeing
one gives its memory back to the system.

glibc serves a block of at least M_MMAP_THRESHOLD bytes with its own mmap, unmapped when
freed; smaller ones come from its heaps, which keep freed memory resident unless it happens
to lie at a heap's top. By default the threshold moves: freeing a mapped block of up to
32 MiB raises it to that block's size. A server frees such blocks all the time (a saved
prefix state of a 800-token prompt is 18 MB on the bundled model; llama.cpp's buffers while
kernels are tuned at load), after which blocks of that size are carved from the heaps and,
once freed, stay resident: measured with benchmarks/latency.py, 22 MB more resident memory
after its workload than with the threshold fixed at 1 MiB (docs/benchmarks.md, "The RSS
bound"), the same 22 MB that malloc_trim(0) then gave back. Fixing the threshold also fixes
the trim threshold (freed memory kept at a heap's top), set here to 8 MiB so that a step's
transient buffers (a logits row is 196 KB) do not trim and grow the heap every step.

Nothing is changed where the C library is not glibc, or where the environment already sets
glibc's malloc options (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, GLIBC_TUNABLES).
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers (glibc's malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20
TRIM_THRESHOLD = 8 << 20
_ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def configure_malloc() -> bool:
    """Fix glibc's mmap and trim thresholds for this process (call it before the server's
    threads start). False where nothing was set: not glibc, or set in the environment."""
    if any(name in os.environ for name in _ENVIRONMENT):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (glibc only)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    if not ok:
        log.warning("could not set glibc's malloc thresholds")
    return ok
