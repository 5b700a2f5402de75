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
    most 2 arenas (by default one per thread, up to 8 per core), and a fixed mmap threshold of
    128 KiB, so that freed large buffers go back to the system at once. Measured with
    `scripts/bench --only memory --big-mib 256` (16 cold downloads at once): peak RSS 174 MiB
    with this, 213-222 MiB with the default threshold or a fixed 264/512 KiB one. The price:
    asyncio's 256 KiB receive buffers become an mmap each, and a warm 1 GiB blob goes at
    ~290 MB/s instead of ~470 (`--only table`; plain mitmdump ~270). Returns whether it
    applied (glibc only)."""
    if _libc is None or not hasattr(_libc, "mallopt"):
        return False
    try:
        return bool(_libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)) and bool(_libc.mallopt(M_ARENA_MAX, 2))
    except (OSError, AttributeError):
        return False

