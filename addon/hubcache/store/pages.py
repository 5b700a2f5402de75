"""Keep the store's file pages out of the proxy's RSS.

LMDB reads through a shared, read-only mmap of data.mdb, and every page touched through it stays
mapped into the proxy and counts in its RSS. On this kernel (6.18, large page-cache folios) one
touch maps a whole folio: reading a 256 KiB chunk through the map mapped up to 1 MiB, and 8
concurrent readers held ~20 MiB however often the pages were given back. So blob bytes are not
read through the map at all: LMDB hands out a pointer into the map without touching the pages,
and the store reads those bytes with pread at the matching file offset (`address_of`,
`file_offset`). What LMDB itself touches (B-tree pages, overflow headers when freeing) is given
back with MADV_DONTNEED (`release`), which on a shared file mapping only drops this process's
page table entries; the data stays in the page cache and the file. LMDB does touch one page of
each value it hands out (the overflow page's header), which maps that page's whole folio: the
reader gives that block back at once (`around`)."""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

MADV_DONTNEED = 4

_libc = None
if sys.platform == "linux":
    try:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _libc.madvise.restype = ctypes.c_int
    except (OSError, AttributeError):
        _libc = None


def mappings_of(path: str) -> list[tuple[int, int, int]]:
    """(start, end, file offset) of each address range at which this process maps `path`."""
    ranges = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                if line.rstrip("\n").endswith(path):
                    addresses, _, offset = line.split(None, 3)[:3]
                    start, _, end = addresses.partition("-")
                    ranges.append((int(start, 16), int(end, 16), int(offset, 16)))
    except OSError:
        pass
    return ranges


def _holding(ranges: list[tuple[int, int, int]], address: int) -> tuple[int, int, int] | None:
    return next((r for r in ranges if r[0] <= address < r[1]), None)


def file_offset(ranges: list[tuple[int, int, int]], address: int) -> int | None:
    """Where in the file the mapped byte at `address` is (None: not in these ranges)."""
    r = _holding(ranges, address)
    return None if r is None else address - r[0] + r[2]


class _PyBuffer(ctypes.Structure):  # CPython's Py_buffer (stable ABI since 3.11)
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None


def address_of(buffer: object) -> int:
    """The address of the first byte of a (read-only) buffer, e.g. an LMDB value's memoryview."""
    b = _PyBuffer()
    if _get_buffer(buffer, ctypes.byref(b), 0) != 0:  # PyBUF_SIMPLE
        raise ValueError("not a buffer")
    try:
        return int(b.buf or 0)
    finally:
        _release_buffer(ctypes.byref(b))


FOLIO_MAX = 2 * 1024 * 1024  # the largest page-cache folio (a PMD): naturally aligned to its size


def around(ranges: list[tuple[int, int, int]], address: int) -> list[tuple[int, int, int]]:
    """The folio-sized block holding `address`, cut to the file's mapping that holds it: wherever
    one touch of that byte mapped its folio, that is within this. Never beyond the mapping: on
    the process's own memory next to it, MADV_DONTNEED would zero live data."""
    r = _holding(ranges, address)
    if r is None:
        return []
    start, end, offset = r
    block = address & ~(FOLIO_MAX - 1)
    lo, hi = max(block, start), min(block + FOLIO_MAX, end)
    return [(lo, hi, offset + lo - start)]


def release(ranges: list[tuple[int, int, int]]) -> None:
    if _libc is None:
        return
    for start, end, _ in ranges:
        if _libc.madvise(start, end - start, MADV_DONTNEED) != 0:
            log.debug("madvise failed: %s", os.strerror(ctypes.get_errno()))


M_ARENA_MAX = -8


def tune_malloc() -> bool:
    """glibc's malloc, tuned for many threads (flights, blob server connections): at most 2
    arenas, instead of one per thread up to 8 per core. The mmap threshold is left to glibc.
    A fixed 128 KiB threshold once cut the cold 16 x 256 MiB peak (174 against 213-222 MiB),
    but made asyncio's 256 KiB receive buffers an mmap each (warm 1 GiB: ~290 MB/s instead
    of ~470). Once blob reads stopped mapping data.mdb and the batch areas stopped being
    zero-filled, it no longer saved anything: `scripts/bench --only memory --big-mib 256` gave
    cold 172 MiB with it and 169 without, and `--only table --rounds 1` warm 298 MB/s with it,
    361 without (mitmdump 256-260). Returns whether it applied (glibc only)."""
    if _libc is None or not hasattr(_libc, "mallopt"):
        return False
    try:
        return bool(_libc.mallopt(M_ARENA_MAX, 2))
    except (OSError, AttributeError):
        return False
