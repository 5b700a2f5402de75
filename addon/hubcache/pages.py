"""Give back the store's mapped file pages after large reads.

LMDB reads through a shared, read-only mmap of data.mdb: every page a blob read touches stays
mapped into the proxy and counts in its RSS until memory runs short, so serving a 1 GiB layer
would show 1 GiB of RSS. MADV_DONTNEED on a shared file mapping only drops this process's page
table entries; the data stays in the page cache and the file, and a later access maps it again.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger("hubcache.store")

MADV_DONTNEED = 4

_libc = None
if sys.platform == "linux":
    try:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _libc.madvise.restype = ctypes.c_int
    except (OSError, AttributeError):
        _libc = None


def mappings_of(path: str) -> list[tuple[int, int]]:
    """Address ranges at which this process maps the file `path`."""
    ranges = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                if line.rstrip("\n").endswith(path):
                    start, _, end = line.split(None, 1)[0].partition("-")
                    ranges.append((int(start, 16), int(end, 16)))
    except OSError:
        pass
    return ranges


def release(ranges: list[tuple[int, int]]) -> None:
    if _libc is None:
        return
    for start, end in ranges:
        if _libc.madvise(start, end - start, MADV_DONTNEED) != 0:
            log.debug("madvise failed: %s", os.strerror(ctypes.get_errno()))


M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def tune_malloc() -> bool:
    """glibc's malloc, tuned for many threads moving large buffers (flights, blob server): at
    most 2 arenas (by default one per thread up to 8 per core, each keeping its own freed
    memory), and a fixed mmap threshold of 128 KiB, so that the 256 KiB chunks (Python's and
    LMDB's dirty overflow pages) go back to the system when freed. By default the threshold
    rises with each such free (up to 32 MiB) and freed chunks then stay in the heap: 16 cold
    1 GiB downloads peaked at 201 MiB that way, 129 MiB with this (scripts/bench memory).
    Returns whether it applied (glibc only)."""
    if _libc is None or not hasattr(_libc, "mallopt"):
        return False
    try:
        return bool(_libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)) and bool(_libc.mallopt(M_ARENA_MAX, 2))
    except (OSError, AttributeError):
        return False
