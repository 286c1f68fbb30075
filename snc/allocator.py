"""Process-wide allocator tuning for snc's command-line processes.

The emulator's calls allocate and free tens of MB of temporaries each; by
default glibc hands blocks above its mmap threshold back to the OS when they
are freed and the next call faults every page in again (about 15 % of an
emulator call at batch 64). ``keep_freed_memory`` raises the mmap and trim
thresholds so freed blocks stay in the heap for reuse. It changes how much
memory the process keeps, never a result, and is called by the ``snc``
entry point and the benchmark, not by library code: a program importing
snc keeps its own allocator settings.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc malloc.h
THRESHOLD = 1 << 30


def keep_freed_memory() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD)
    libc.mallopt(M_TRIM_THRESHOLD, THRESHOLD)
