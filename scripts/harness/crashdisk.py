"""A disk that can lose power: an ext4 file system on a loop device of the test's own, and a copy
of its backing file taken without syncing the mounted file system (a crash image).

The loop device is the disk: what the mounted ext4 has sent to it (what was fsync'ed, and whatever
writeback happened) is in the backing file; dirty page-cache pages of the mounted file system are
not. So a copy of the backing file, taken while nothing writes to the device, is the disk as a power
cut at that moment would leave it. Mounting the copy replays ext4's journal, as a reboot would.

Every mount and loop device made here is undone on exit, also when the test fails."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

PAGE = 4096


def missing() -> str | None:
    """Why this machine cannot make crash disks, or None."""
    if os.geteuid() != 0:
        return "needs root (loop devices, mount)"
    if not Path("/dev/loop-control").exists():
        return "no loop devices (/dev/loop-control)"
    for tool in ("losetup", "mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (util-linux, e2fsprogs)"
    return None


def _run(*cmd: str) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {out.returncode}: {out.stderr.strip()}")
    return out.stdout


@contextlib.contextmanager
def mounted(image: Path, mountpoint: Path, options: str = "") -> Iterator[Path]:
    """`image` on a loop device of its own, mounted (ext4) at `mountpoint`; yields the device.
    Mounting a crash image replays its journal, as the first mount after a power cut does."""
    device = Path(_run("losetup", "--find", "--show", str(image)).strip())
    try:
        mountpoint.mkdir(parents=True, exist_ok=True)
        _run("mount", "-t", "ext4", *(["-o", options] if options else []), str(device), str(mountpoint))
        try:
            yield device
        finally:
            if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)
    finally:
        subprocess.run(["losetup", "-d", str(device)], capture_output=True)


def write_activity(device: Path) -> tuple[int, int]:
    """(write and flush requests completed, requests in flight) of a block device, from sysfs."""
    f = (Path("/sys/block") / device.name / "stat").read_text().split()
    flushes = int(f[15]) if len(f) > 15 else 0
    return int(f[4]) + flushes, int(f[8])


class CrashDisk:
    """A fresh `size_mb` ext4 file system in `workdir`, mounted at `workdir/mnt` (`.mnt`).

        with CrashDisk(tmp) as disk:
            ...  # a process writes under disk.mnt; SIGKILL it (wait until it is gone)
            image = disk.crash_image(tmp / "cut.img")
        with mounted(image, tmp / "after"): ...
    """

    def __init__(self, workdir: Path, size_mb: int = 1024, options: str = "") -> None:
        self.workdir = Path(workdir)
        self.backing = self.workdir / "disk.img"
        self.mnt = self.workdir / "mnt"
        self.size_mb = size_mb
        self.options = options  # mount options; the default is ext4's own (data=ordered, commit=5)
        self.device: Path | None = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> CrashDisk:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.backing, "wb") as f:
            f.truncate(self.size_mb << 20)  # sparse: only what the file system writes takes room
        _run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(self.backing))
        try:
            self.device = self._stack.enter_context(mounted(self.backing, self.mnt, self.options))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        self.device = None

    def crash_image(self, dest: Path, attempts: int = 20) -> Path:
        """Copy the backing file, the mounted file system NOT synced: the disk as a power cut now
        leaves it. Taken while the device is quiet (no request in flight, none completed during
        the copy), so the copy is one moment of the disk, not a mix of two; the kernel writes to
        the disk by itself (journal commits, writeback) only now and then, so a retry finds a
        quiet spell. Stop the processes writing to the disk first (SIGKILL, waited for)."""
        assert self.device is not None
        for _ in range(attempts):
            before = write_activity(self.device)
            if before[1] == 0:
                _run("cp", "--sparse=always", str(self.backing), str(dest))
                if write_activity(self.device) == before:
                    return dest
            time.sleep(0.05)
        raise RuntimeError(f"{self.device} never went quiet for the length of a copy")


def unsynced_file(path: Path, size: int = 1 << 20) -> bytes:
    """Write `size` bytes (not zeros) to `path` without fsync: a power cut should lose them.
    Returns the bytes, to look for in a crash image."""
    data = (path.name.encode() + b"\x01") * (size // (len(path.name) + 1) + 1)
    data = data[:size]
    with open(path, "wb") as f:
        f.write(data)
    return data


def differing_pages(a: Path, b: Path) -> tuple[int, int, list[int]]:
    """(pages of `a`, pages of `b`, the numbers of the pages that differ between them, a page
    missing from one counting as differing): how much of a file a crash image lost."""
    sa, sb = a.stat().st_size, b.stat().st_size
    differ = []
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for n in itertools.count():
            pa, pb = fa.read(PAGE), fb.read(PAGE)
            if not pa and not pb:
                break
            if pa != pb:
                differ.append(n)
    return -(-sa // PAGE), -(-sb // PAGE), differ
