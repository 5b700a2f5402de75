"""Serving-path measurement (not a test): one large blob with curl, cold and warm through `hubcache
run` and through plain mitmdump and direct, rounds interleaved, in a network namespace of its own
(scripts/harness/hubenv.py). For each proxied pull it prints the wall time, MB/s and the CPU
seconds per GiB the proxy process tree used (utime + stime from /proc/PID/stat, before and after
the pull). With --pyspy DIR, every hubcache pull is sampled by py-spy (--threads --nonblocking
-r 200) into DIR/<mode>-<round>.svg (a flamegraph) and .txt (collapsed stacks); those runs are
slower, so their times are not comparable to unsampled ones.

    .venv/bin/python scripts/serve_profile.py --blob-mib 1024 --rounds 3
    .venv/bin/python scripts/serve_profile.py --blob-mib 1024 --rounds 1 --pyspy /tmp/prof
    .venv/bin/python scripts/serve_profile.py --base /work/wt-base --modes base-cold,hubcache-cold,base-warm,hubcache-warm

--base CHECKOUT adds the modes base-cold and base-warm: `hubcache run` of another checkout (its own
.venv, made by its scripts/setup), interleaved with this one's in every round for an A/B comparison.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import MiB, anonymous_token, curl_blob, process_tree  # noqa: E402
from harness.hubenv import Upstream, missing_prerequisites  # noqa: E402
from harness.proxy import Proxy  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
PYSPY = Path(sys.executable).parent / "py-spy"


def tree_cpu_seconds(root: int) -> float:
    """utime + stime of `root` and its descendants (threads included), in seconds."""
    total = 0
    for pid in process_tree(root):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / TICK


def pyspy_start(pid: int, out: Path) -> subprocess.Popen:
    return subprocess.Popen([str(PYSPY), "record", "-p", str(pid), "--threads", "--nonblocking", "-r", "200",
                             "-f", "raw", "-o", str(out.with_suffix(".txt"))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pyspy_stop(spy: subprocess.Popen, out: Path) -> None:
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(60)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()
    txt = out.with_suffix(".txt")
    if txt.exists():  # the flamegraph from the same samples (py-spy renders either raw stacks or an SVG, not both)
        stacks = [line.rpartition(" ") for line in txt.read_text().splitlines() if line.strip()]
        out.write_text(flamegraph_svg([(s.split(";"), int(n)) for s, _, n in stacks]))
        print(summary(stacks), file=sys.stderr)


def flamegraph_svg(stacks: list[tuple[list[str], int]], width: float = 1800.0, row: int = 16) -> str:
    """A plain flamegraph (root at the bottom, frames merged by their path) of collapsed stacks."""
    from html import escape

    tree: dict = {}
    for frames, n in stacks:
        node = tree
        for f in frames:
            node = node.setdefault(f, [0, {}])
            node[0] += n
            node = node[1]
    total = sum(n for _, n in stacks) or 1
    depth_of = max((len(f) for f, _ in stacks), default=1)
    height = (depth_of + 1) * row
    rects: list[str] = []

    def draw(node: dict, x: float, depth: int) -> None:
        for name, (n, children) in sorted(node.items()):
            w = width * n / total
            if w >= 0.5:
                y = height - (depth + 1) * row
                label = escape(name if w > 60 else "")[: int(w / 7)]
                rects.append(f'<g><title>{escape(name)} ({n} samples, {100 * n / total:.1f}%)</title>'
                             f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 1}" fill="#e{(hash(name) % 7) + 2}8040"/>'
                             f'<text x="{x + 2:.1f}" y="{y + row - 4}" font-size="11">{label}</text></g>')
                draw(children, x, depth + 1)
            x += w

    draw(tree, 0.0, 0)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height}" font-family="monospace">'
            + "".join(rects) + "</svg>")


def summary(stacks: list[tuple[str, str, str]]) -> str:
    """Share of samples by thread (the first frame) and the 15 commonest innermost frames."""
    from collections import Counter

    threads: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for s, _, n in stacks:
        frames = s.split(";")
        threads[frames[0]] += int(n)
        leaves[frames[-1]] += int(n)
    total = sum(threads.values()) or 1
    lines = [f"{total} samples"] + [f"  {100 * n / total:5.1f}% thread {t}" for t, n in threads.most_common(8)]
    lines += [f"  {100 * n / total:5.1f}% in {f}" for f, n in leaves.most_common(15)]
    return "\n".join(lines)


class BaseProxy(Proxy):
    """`hubcache run` of another checkout (--base)."""

    base: Path

    def command(self) -> list[str]:
        cmd = super().command()
        return [str(self.base / ".venv" / "bin" / "hubcache"), *cmd[1:]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blob-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--modes", default="direct,mitmdump,hubcache-cold,hubcache-warm")
    ap.add_argument("--pyspy", type=Path, help="sample each hubcache pull with py-spy into this directory")
    ap.add_argument("--base", type=Path, help="another checkout, for the modes base-cold and base-warm")
    ap.add_argument("--set", action="append", default=[], help="an option for hubcache run (--set k=v)")
    args = ap.parse_args()
    if why := missing_prerequisites():
        print(f"serve_profile: cannot run: {why}", file=sys.stderr)
        return 2
    modes = args.modes.split(",")
    work = Path(tempfile.mkdtemp(prefix="hubcache-serveprof-"))
    up = Upstream(work / "upstream")
    up.start()
    results: dict[str, dict[str, list[float]]] = {m: {"s": [], "cpu_per_gib": []} for m in modes}
    proxies: list[Proxy] = []
    try:
        print(f"serve_profile: pushing a {args.blob_mib} MiB blob", file=sys.stderr)
        img = up.push_image("library/serveblob", "1", [(args.blob_mib * MiB, 7)])
        digest, size = img.layer_digests[0], img.layer_sizes[0]
        from mitmproxy.certs import CertStore

        confdir = work / "confdir"
        CertStore.from_store(confdir, "mitmproxy", 2048)
        bundle = work / "bundle.pem"
        bundle.write_bytes(up.ca_cert.read_bytes() + (confdir / "mitmproxy-ca-cert.pem").read_bytes())
        url = f"https://registry-1.docker.io/v2/library/serveblob/blobs/{digest}"
        if args.pyspy:
            args.pyspy.mkdir(parents=True, exist_ok=True)

        def pull(mode: str, rnd: int, store: Path) -> None:
            proxy = None
            if mode != "direct":
                kind = "mitmdump" if mode == "mitmdump" else "hubcache"
                cls = Proxy
                if mode.startswith("base-"):
                    cls = BaseProxy
                    BaseProxy.base = args.base
                proxy = cls(work / "proxies" / f"{mode}-{rnd}", up.ca_cert, confdir=confdir, kind=kind,
                            store=store.with_name(store.name + ("-base" if mode.startswith("base-") else "")),
                            sets=args.set).start()
                proxies.append(proxy)
            token = anonymous_token(up.ca_cert, "library/serveblob")
            spy = out = None
            if proxy and args.pyspy and kind == "hubcache":
                out = args.pyspy / f"{mode}-{rnd}.svg"
                spy = pyspy_start(proxy.proc.pid, out)
                time.sleep(1)
            cpu0 = tree_cpu_seconds(proxy.proc.pid) if proxy else 0.0
            wall, got = curl_blob(url, token, bundle, proxy.url if proxy else None)
            cpu = (tree_cpu_seconds(proxy.proc.pid) - cpu0) if proxy else 0.0
            assert got == size, f"{mode}: {got} of {size} bytes"
            if spy and out:
                pyspy_stop(spy, out)
            if proxy:
                proxy.stop()
            results[mode]["s"].append(wall)
            results[mode]["cpu_per_gib"].append(cpu / (size / (1 << 30)))
            print(f"serve_profile: round {rnd + 1} {mode}: {wall:.2f} s, {size / wall / 1e6:.0f} MB/s, "
                  f"proxy CPU {cpu:.2f} s ({cpu / (size / (1 << 30)):.2f} s/GiB)", file=sys.stderr)

        for rnd in range(args.rounds):
            store = work / "stores" / f"round-{rnd}"
            for mode in modes:
                pull(mode, rnd, store)
            shutil.rmtree(store, ignore_errors=True)
            shutil.rmtree(store.with_name(store.name + "-base"), ignore_errors=True)
    finally:
        for p in proxies:
            p.stop()
        up.stop()
        shutil.rmtree(work, ignore_errors=True)
    med = {m: {k: statistics.median(v) for k, v in r.items() if v} for m, r in results.items()}
    print(f"\n{args.blob_mib} MiB blob via curl, median of {args.rounds} rounds")
    print(f"{'mode':<15}{'MB/s':>8}{'s':>8}{'proxy CPU s/GiB':>17}")
    for m in modes:
        print(f"{m:<15}{size / med[m]['s'] / 1e6:>8.0f}{med[m]['s']:>8.2f}{med[m]['cpu_per_gib']:>17.2f}")
    if "hubcache-cold" in med and "mitmdump" in med:
        print(f"cold throughput vs mitmdump {med['mitmdump']['s'] / med['hubcache-cold']['s']:.2f}")
    if "hubcache-warm" in med and "direct" in med:
        print(f"warm throughput vs direct   {med['direct']['s'] / med['hubcache-warm']['s']:.2f}")
    for temp in ("cold", "warm"):
        if f"base-{temp}" in med and f"hubcache-{temp}" in med:
            print(f"{temp}: throughput vs base {med[f'base-{temp}']['s'] / med[f'hubcache-{temp}']['s']:.2f}, "
                  f"CPU s/GiB vs base {med[f'hubcache-{temp}']['cpu_per_gib'] / med[f'base-{temp}']['cpu_per_gib']:.2f}")
    print(json.dumps({"blob_bytes": size, "raw": results, "median": med}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
