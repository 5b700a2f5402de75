"""pages.py: finding blob bytes in data.mdb by address, and what may be given back."""

import mmap
import os

from hubcache.store import pages

MiB = 1 << 20


def test_the_block_given_back_never_reaches_past_the_mapping_that_holds_the_address():
    # A mapping that starts and ends off the 2 MiB grid, as data.mdb's may: a block reaching
    # past either end would be the proxy's own memory next to it, which MADV_DONTNEED zeroes.
    start, end = 0x7F0000100000, 0x7F0000500000 + 0x3000
    ranges = [(0x10000, 0x20000, 0), (start, end, 0)]
    assert pages.around(ranges, start + 0x10) == [(start, 0x7F0000200000, 0)]
    assert pages.around(ranges, 0x7F0000300000 + 5) == [(0x7F0000200000, 0x7F0000400000, 0x100000)]
    assert pages.around(ranges, end - 1) == [(0x7F0000400000, end, 0x300000)]
    assert pages.around(ranges, end) == []  # not in the file's mapping: nothing is given back


def test_a_buffer_address_maps_to_its_file_offset(tmp_path):
    path = tmp_path / "f"
    data = os.urandom(3 * MiB)
    path.write_bytes(data)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        view = memoryview(m)[MiB + 123 :]
        ranges = pages.mappings_of(str(path.resolve()))
        offset = pages.file_offset(ranges, pages.address_of(view))
        assert offset == MiB + 123
        assert os.pread(f.fileno(), 100, offset) == data[MiB + 123 : MiB + 223]
        view.release()
