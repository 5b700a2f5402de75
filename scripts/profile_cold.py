"""Where a cold blob's time goes: one large blob pulled with curl through plain mitmdump and through
`hubcache run` (empty store), side by side, round after round, with the proxy's CPU seconds per GiB
(utime + stime from /proc/PID/stat, read before and after each pull) and, with --pyspy, a py-spy
profile of the hubcache process during its cold pull (a flamegraph SVG and a text summary by
thread and by function).

Everything runs in a network namespace of its own, as scripts/bench does (harness/hubenv.py).
Not a test: a tool for reading the write path (docs/performance.md).

    scripts/profile-cold --blob-mib 1024 --rounds 3
    scripts/profile-cold --blob-mib 1024 --rounds 1 --pyspy --out docs/profile --idle
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench import anonymous_token, curl_blob
from harness.hubenv import Upstream, missing_prerequisites
from harness.proxy import Proxy

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # fields 14 and 15 of proc(5)


class PySpy:
    """py-spy record on a running process until stop(); writes a flamegraph SVG and the raw
    (collapsed) stacks next to it."""

    def __init__(self, pid: int, out: Path, rate: int, idle: bool) -> None:
        self.svg, self.raw = out.with_suffix(".svg"), out.with_suffix(".txt")
        base = [str(ROOT / ".venv" / "bin" / "py-spy"), "record", "-p", str(pid), "-r", str(rate),
                "--threads", "--nonblocking", *(["--idle"] if idle else [])]
        self.procs = [subprocess.Popen([*base, "-f", "flamegraph", "-o", str(self.svg)], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE),
                      subprocess.Popen([*base, "-f", "raw", "-o", str(self.raw)], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE)]
        time.sleep(1.0)  # py-spy attaches

    def stop(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def summarize(raw: Path, top: int = 25) -> str:
    """Shares of samples by thread and by leaf function (self), and the functions most often on
    a stack (inclusive), from py-spy's raw output ("frame;frame;... count" per line)."""
    threads: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        thread = frames[0]
        if '"' in thread:  # thread (0x7f..): "name" -> name
            thread = thread.split('"')[1]
        threads[thread.split("-sha256")[0][:40]] += n
        leaves[_short(frames[-1])] += n
        for f in {_short(f) for f in frames[1:]}:
            inclusive[f] += n
    if not total:
        return "no samples\n"
    out = [f"{total} samples", "", "by thread:"]
    out += [f"  {n / total:6.1%}  {name}" for name, n in threads.most_common()]
    out += ["", f"by function (self, top {top}):"]
    out += [f"  {n / total:6.1%}  {name}" for name, n in leaves.most_common(top)]
    out += ["", f"by function (on the stack, top {top}):"]
    out += [f"  {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(out) + "\n"


def _short(frame: str) -> str:
    """`fn (path/to/file.py:123)` -> `fn (file.py)`."""
    fn, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0].rsplit("/", 1)[-1]
    return f"{fn} ({file})" if file else fn


def pull(mode: str, proxy: Proxy, up: Upstream, url: str, bundle: Path, size: int) -> dict:
    token = anonymous_token(up.ca_cert, "library/benchblob")
    assert proxy.proc
    before = cpu_seconds(proxy.proc.pid)
    wall, got = curl_blob(url, token, bundle, proxy.url)
    time.sleep(0.3)  # hubcache publishes (and its last commit syncs) after the client's last byte
    cpu = cpu_seconds(proxy.proc.pid) - before
    assert got == size, f"{mode}: got {got} bytes of {size}"
    return {"wall_s": wall, "mb_s": size / wall / 1e6, "cpu_s_per_gib": cpu / (size / (1 << 30))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blob-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pyspy", action="store_true", help="profile hubcache's cold pull of the last round")
    ap.add_argument("--idle", action="store_true", help="py-spy --idle: waits are sampled too")
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    ap.add_argument("--out", type=Path, default=Path("profile-cold"), help="py-spy output: OUT.svg, OUT.txt, OUT-summary.txt")
    ap.add_argument("--no-mitmdump", action="store_true", help="hubcache only")
    ap.add_argument("--set", action="append", default=[], help="hubcache --set option (repeatable)")
    ap.add_argument("--base", type=Path, help="also a cold pull through the hubcache whose package is in BASE "
                    "(e.g. another worktree's addon/ directory: PYTHONPATH), each round, for before/after")
    args = ap.parse_args()
    if why := missing_prerequisites():
        print(f"profile-cold: cannot run: {why}", file=sys.stderr)
        return 2
    out = args.out.resolve()
    work = Path(tempfile.mkdtemp(prefix="hubcache-profile-"))
    up = Upstream(work / "upstream")
    up.start()
    results: dict[str, list[dict]] = {"mitmdump": [], "hubcache-base": [], "hubcache-cold": []}
    try:
        big = up.push_image("library/benchblob", "1", [(args.blob_mib * MiB, 1)])
        digest, size = big.layer_digests[0], big.layer_sizes[0]
        url = f"https://registry-1.docker.io/v2/library/benchblob/blobs/{digest}"
        from mitmproxy.certs import CertStore

        confdir = work / "confdir"
        CertStore.from_store(confdir, "mitmproxy", 2048)
        bundle = work / "bundle.pem"
        bundle.write_bytes(up.ca_cert.read_bytes() + (confdir / "mitmproxy-ca-cert.pem").read_bytes())
        for rnd in range(args.rounds):
            modes = [*(() if args.no_mitmdump else ("mitmdump",)), *(("hubcache-base",) if args.base else ()),
                     "hubcache-cold"]
            for mode in modes:
                kind = "mitmdump" if mode == "mitmdump" else "hubcache"
                store = work / "store"
                shutil.rmtree(store, ignore_errors=True)
                proxy = Proxy(work / "proxies" / f"{mode}-{rnd}", up.ca_cert, confdir=confdir, kind=kind,
                              store=store, sets=args.set)
                if mode == "hubcache-base":
                    os.environ["PYTHONPATH"] = str(args.base.resolve())
                try:
                    proxy.start()
                finally:
                    os.environ.pop("PYTHONPATH", None)
                spy = None
                try:
                    if args.pyspy and kind == "hubcache" and rnd == args.rounds - 1:
                        assert proxy.proc
                        spy = PySpy(proxy.proc.pid, out, args.rate, args.idle)
                    r = pull(mode, proxy, up, url, bundle, size)
                finally:
                    if spy:
                        spy.stop()
                    proxy.stop()
                results[mode].append(r)
                print(f"profile-cold: round {rnd + 1} {mode}: {r['mb_s']:.0f} MB/s, {r['cpu_s_per_gib']:.2f} CPU s/GiB",
                      file=sys.stderr)
    finally:
        up.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.blob_mib} MiB blob via curl, cold; median of {args.rounds} rounds")
    print(f"{'mode':<15}{'MB/s':>8}{'CPU s/GiB':>11}")
    med = {}
    for mode, rs in results.items():
        if rs:
            med[mode] = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            print(f"{mode:<15}{med[mode]['mb_s']:>8.0f}{med[mode]['cpu_s_per_gib']:>11.2f}")
    for mode in ("hubcache-base", "hubcache-cold"):
        if mode in med and "mitmdump" in med:
            print(f"{mode} throughput vs mitmdump {med[mode]['mb_s'] / med['mitmdump']['mb_s']:.2f}")
    if args.pyspy:
        text = summarize(out.with_suffix(".txt"))
        out.with_name(out.name + "-summary.txt").write_text(text)
        print("\n" + text)
    print(json.dumps({"median": med, "raw": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
