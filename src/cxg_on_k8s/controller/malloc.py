"""The operator's C heap: at most two glibc malloc arenas.

glibc gives each thread that allocates its own arena, up to eight per core, and memory freed in
one arena serves only that arena: the operator's threads (kopf's executor, the loop's, the
culler's API calls) each keep a share of what a burst of a thousand new viewers needed. Two
arenas cut the operator's peak RSS at 1000 instances from 323 to 304 MiB and left the time to all
Ready as it was (bench/spawn.py; bench/RESULTS.md, 2026-12-02 evening), as ``MALLOC_ARENA_MAX=2``. Set
here, not in the environment, so that the operator gets it however it is started (its
Deployment, ``cxg-k8s operator`` on a laptop, the tests and benches). Python's own small
objects come from its own allocator and are not affected.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_ARENA_MAX = -8  # glibc's malloc.h
ARENAS = 2


def limit_arenas() -> bool:
    """Cap glibc's arenas at :data:`ARENAS` for the threads started from now on; False where the
    C library is not glibc (musl has one heap already) or refuses."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_ARENA_MAX, ARENAS))
