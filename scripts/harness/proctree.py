"""What a process and all its descendants cost: summed RSS (sampled in a thread) and CPU seconds.

Read from /proc: a `hubcache run --workers N` supervisor and its workers, or one mitmdump, are
measured alike as the tree under the PID the harness started."""

from __future__ import annotations

import os
import threading
from pathlib import Path

MiB = 1 << 20
PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / MiB
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int | str) -> list[str] | None:
    """/proc/PID/stat's fields after "pid (comm)": [0] is state (field 3), [1] ppid (field 4), ...,
    [11] utime (field 14). None if the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone meanwhile
        return None
    return stat[stat.rindex(")") + 2:].split()


def _ppid(pid: str) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants, by the ppid in /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (ppid := _ppid(name)) is not None:
            children.setdefault(ppid, []).append(int(name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) the process tree under `root` has used so far: utime + stime
    (fields 14, 15) of every live process in it (all its threads, live or ended), plus cutime +
    cstime (16, 17), the time of children it has already reaped. A child that ended and was reaped
    moves its time into its parent's cutime, so the sum only grows; a process that ended after its
    parent did (reparented to init) is lost, so sample before stopping the tree."""
    ticks = 0
    for pid in process_tree(root):
        if fields := _stat_fields(pid):
            ticks += sum(int(f) for f in fields[11:15])
    return ticks / CLK_TCK


def tree_rss_mib(root: int) -> tuple[float, float, float]:
    """Summed (VmRSS, RssAnon) of `root`'s process tree and the largest single process's VmRSS,
    in MiB (from /proc/PID/statm)."""
    rss = anon = largest = 0
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/statm").read_text().split()
        except OSError:
            continue
        rss += int(fields[1])
        anon += int(fields[1]) - int(fields[2])  # resident minus file-backed and shmem
        largest = max(largest, int(fields[1]))
    return rss * PAGE_MIB, anon * PAGE_MIB, largest * PAGE_MIB


class TreeRssSampler:
    """Samples the summed VmRSS and RssAnon of a process tree, and its largest process's VmRSS (the
    per-worker RSS under `hubcache run --workers`), every `interval` s in a thread.

    `over` is set once the RSS passes `limit_mib` (a guard: the machine is shared)."""

    def __init__(self, pid: int, interval: float = 0.1, limit_mib: float | None = None) -> None:
        self.pid, self.interval, self.limit = pid, interval, limit_mib
        self.peak = self.peak_anon = self.peak_proc = 0.0
        self.first: float | None = None
        self.last: float | None = None
        self.over = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            rss, anon, largest = tree_rss_mib(self.pid)
            self.first = rss if self.first is None else self.first
            self.last = rss
            self.peak, self.peak_anon = max(self.peak, rss), max(self.peak_anon, anon)
            self.peak_proc = max(self.peak_proc, largest)
            if self.limit and rss > self.limit:
                self.over.set()
            if self._stop.wait(self.interval):
                return

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {"peak_rss_mb": self.peak, "peak_anon_mb": self.peak_anon, "peak_proc_rss_mb": self.peak_proc,
                "first_rss_mb": self.first, "last_rss_mb": self.last, "rss_limit_hit": self.over.is_set()}
