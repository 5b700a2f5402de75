"""scripts/bench's `workers` section (issue 16): hubcache on one worker process and on N
(`hubcache run --workers N`), with 1 and with --clients concurrent clients, beside plain mitmdump
and direct HTTPS.

Two workloads, the table's: its large blob (--blob-mib) fetched by curl, and its multi-layer image
copied by skopeo (each client to a directory of its own). With C clients, C curls fetch the same
blob at once, or C skopeos copy the image at once. Modes: direct and mitmdump (passthrough), then
for each worker count hubcache cold (an empty store) and warm (a new proxy on the store that cold
filled). Every mode runs on a proxy of its own, blob first, then image; the CPU seconds of the
proxy's process tree (harness/proctree.py) are read before the blob, between, and after the image,
just before the proxy is stopped (so a supervisor's workers are all still there). Rounds interleave
every mode; medians are reported.

Columns: wall s (first client started to last one done), aggregate MB/s (total body bytes / wall),
CPU s/GiB (proxy tree CPU seconds per GiB of body bytes served), peak RSS of the proxy's whole tree
and of its largest single process (one worker's under --workers N), every 0.1 s. The ratios are
the issue's targets: cold >= 0.9x mitmdump (blob and image), warm blob >= 0.6x direct, and with
--clients clients N workers above one worker's aggregate warm throughput.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness.clients import client_env
from harness.proctree import TreeRssSampler, tree_cpu_s

MiB = 1 << 20
GiB = 1 << 30
WORKLOADS = ("blob", "image")
IMAGE_REF = "docker://docker.io/library/benchimage:1"
CLIENT_ENV = {"PATH": "/usr/bin:/bin"}  # no proxy variables: curl gets its proxy with -x
CLIENT_TIMEOUT_S = 1800


def modes(workers: int) -> list[tuple[str, str, int]]:
    """(label, kind, workers) in the order a round runs them; kind is direct, mitmdump, cold or warm."""
    out = [("direct", "direct", 0), ("mitmdump", "mitmdump", 0)]
    for w in sorted({1, workers}):
        out += [(f"hubcache-w{w}-cold", "cold", w), (f"hubcache-w{w}-warm", "warm", w)]
    return out


def _wait_all(procs: list[subprocess.Popen], t0: float) -> float:
    """Wait for every client (killing any still there after CLIENT_TIMEOUT_S); seconds from t0 until
    the last one was seen done."""
    try:
        for p in procs:
            p.wait(max(1.0, t0 + CLIENT_TIMEOUT_S - time.perf_counter()))
    except subprocess.TimeoutExpired:
        print("bench: workers: a client took too long, killed", file=sys.stderr)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return time.perf_counter() - t0


def curls(n: int, url: str, token: str, bundle: Path, proxy: str | None, size: int) -> tuple[float, int, int]:
    """n curls fetching `url` at once: (wall s, body bytes of those that got all `size`, failed)."""
    cmd = ["curl", "-sS", "-f", "-L", "-o", "/dev/null", "-w", "%{size_download}", "--cacert", str(bundle),
           "-H", f"Authorization: Bearer {token}", *(["-x", proxy] if proxy else []), url]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=CLIENT_ENV) for _ in range(n)]
    wall = _wait_all(procs, t0)
    got, failed = 0, 0
    for p in procs:
        out, err = p.communicate()
        if p.returncode == 0 and out.strip() == str(size).encode():
            got += size
        else:
            failed += 1
            print(f"bench: workers: curl exited {p.returncode}, {out.decode()[:20]} bytes: {err.decode()[:300]}",
                  file=sys.stderr)
    return wall, got, failed


def skopeos(n: int, dest: Path, certs: Path, proxy: str | None) -> tuple[float, int, int]:
    """n skopeo copies of the image at once, each to dir:dest/i: (wall s, body bytes of those that
    succeeded, failed). The directories are removed."""
    dest.mkdir(parents=True, exist_ok=True)
    policy = dest / "policy.json"
    policy.write_text('{"default":[{"type":"insecureAcceptAnything"}]}')
    cmd = ["skopeo", "--policy", str(policy), "copy", "--quiet", "--src-cert-dir", str(certs), "--src-no-creds", IMAGE_REF]
    t0 = time.perf_counter()
    procs = [subprocess.Popen([*cmd, f"dir:{dest / str(i)}"], env=client_env(proxy), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for i in range(n)]
    wall = _wait_all(procs, t0)
    got, failed = 0, 0
    for i, p in enumerate(procs):
        err = p.communicate()[1]
        if p.returncode == 0:
            got += sum(f.stat().st_size for f in (dest / str(i)).iterdir() if f.name != "version")
        else:
            failed += 1
            print(f"bench: workers: skopeo exited {p.returncode}: {err.decode()[-300:]}", file=sys.stderr)
    shutil.rmtree(dest, ignore_errors=True)
    return wall, got, failed


def _row(wall: float, nbytes: int, failed: int, cpu_s: float | None, mem: dict | None) -> dict:
    return {"wall_s": wall, "bytes": nbytes, "mb_s": nbytes / wall / 1e6, "failed": failed,
            "cpu_s": cpu_s, "cpu_s_gib": cpu_s / (nbytes / GiB) if cpu_s is not None and nbytes else None,
            "peak_rss_mb": mem["peak_rss_mb"] if mem else None, "peak_proc_rss_mb": mem["peak_proc_rss_mb"] if mem else None}


def run_mode(proxy, n: int, blob: tuple[str, int], token: str, work: Path, certs: Path, bundle: Path) -> dict:
    """The blob with n curls, then the image with n skopeos, through `proxy` (None: direct)."""
    digest, size = blob
    url = f"https://registry-1.docker.io/v2/library/benchblob/blobs/{digest}"
    pid = proxy.proc.pid if proxy else None
    out = {}
    cpu = tree_cpu_s(pid) if pid else None
    for workload in WORKLOADS:
        sampler = TreeRssSampler(pid) if pid else None
        if workload == "blob":
            wall, got, failed = curls(n, url, token, bundle, proxy.url if proxy else None, size)
        else:
            wall, got, failed = skopeos(n, work / "workers-pulls", certs, proxy.url if proxy else None)
        mem = sampler.stop() if sampler else None
        now = tree_cpu_s(pid) if pid else None
        out[workload] = _row(wall, got, failed, now - cpu if pid else None, mem)
        cpu = now
    return out


def workers_section(up, work: Path, certs: Path, bundle: Path, start, blob: tuple[str, int], token_for, args) -> dict:
    """Every round: for 1 and --clients clients, every mode of modes(); returns raw rows and medians."""
    workers = args.workers or 2
    counts = sorted({1, args.clients})
    table = modes(workers)
    raw: dict = {w: {str(n): {label: [] for label, _, _ in table} for n in counts} for w in WORKLOADS}
    for rnd in range(args.rounds):
        for n in counts:
            for label, kind, w in table:
                store = work / "stores" / f"workers-{rnd}-{n}-w{w}"
                proxy = None
                if kind == "mitmdump":
                    proxy = start("mitmdump", name=f"workers-{label}-{n}-{rnd}")
                elif kind in ("cold", "warm"):
                    proxy = start("hubcache", store, name=f"workers-{label}-{n}-{rnd}", workers=w)
                try:
                    rows = run_mode(proxy, n, blob, token_for("library/benchblob"), work, certs, bundle)
                finally:
                    if proxy:
                        proxy.stop()
                if kind == "warm":
                    shutil.rmtree(store, ignore_errors=True)
                for workload, r in rows.items():
                    raw[workload][str(n)][label].append(r)
                    print(f"bench: workers round {rnd + 1} {workload} x{n} {label}: {r['wall_s']:.2f} s, "
                          f"{r['mb_s']:.0f} MB/s" + (f", CPU {r['cpu_s_gib']:.2f} s/GiB, peak tree RSS "
                                                     f"{r['peak_rss_mb']:.0f} MiB" if proxy else "")
                          + (f", {r['failed']} FAILED" if r["failed"] else ""), file=sys.stderr)
    median = {w: {n: {label: _median(rows) for label, rows in by_mode.items()} for n, by_mode in by_n.items()}
              for w, by_n in raw.items()}
    return {"workers": workers, "clients": counts, "rounds": args.rounds, "blob_bytes": blob[1],
            "image_layers": args.layers, "layer_mib": args.layer_mib, "median": median,
            "ratios": workers_ratios(median, workers, counts), "raw": raw}


def _median(rows: list[dict]) -> dict:
    out = {}
    for k in rows[0]:
        values = [r[k] for r in rows if r[k] is not None]
        out[k] = statistics.median(values) if values else None
    out["failed"] = sum(r["failed"] for r in rows)
    return out


def workers_ratios(median: dict, workers: int, counts: list[int]) -> list[dict]:
    """The issue's targets, each as {name, value, op, target, met}."""
    out = []

    def ratio(name: str, a: dict, b: dict, op: str, target: float) -> None:
        if a["mb_s"] and b["mb_s"]:
            v = a["mb_s"] / b["mb_s"]
            out.append({"name": name, "value": v, "op": op, "target": target,
                        "met": v >= target if op == ">=" else v > target})

    for n in map(str, counts):
        for w in sorted({1, workers}):
            for workload in WORKLOADS:
                m = median[workload][n]
                ratio(f"{workload} x{n} w{w} cold vs mitmdump", m[f"hubcache-w{w}-cold"], m["mitmdump"], ">=", 0.9)
            m = median["blob"][n]
            ratio(f"blob x{n} w{w} warm vs direct", m[f"hubcache-w{w}-warm"], m["direct"], ">=", 0.6)
    if workers > 1:
        n = str(max(counts))
        for workload in WORKLOADS:
            m = median[workload][n]
            ratio(f"{workload} x{n} w{workers} warm vs w1 warm", m[f"hubcache-w{workers}-warm"], m["hubcache-w1-warm"],
                  ">", 1.0)
    return out


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def print_workers(r: dict) -> None:
    w = "1" if r["workers"] == 1 else f"1 and {r['workers']}"
    print(f"\nworkers: blob {r['blob_bytes'] / MiB:.0f} MiB via curl, image {r['image_layers']} x {r['layer_mib']} MiB"
          f" via skopeo, N clients at once (curls of the same blob, skopeos of the image each to its own dir);"
          f" hubcache --workers {w}; median of {r['rounds']} rounds.\nMB/s = all clients' body bytes / wall;"
          f" CPU s/GiB = the proxy's process tree; peak RSS of the tree and of its largest process (one worker)")
    print(f"{'workload':<9}{'N':>3}  {'mode':<20}{'wall s':>8}{'MB/s':>7}{'CPU s/GiB':>11}{'tree RSS MiB':>14}"
          f"{'proc RSS MiB':>14}{'failed':>8}")
    for workload, by_n in r["median"].items():
        for n, by_mode in by_n.items():
            for label, m in by_mode.items():
                print(f"{workload:<9}{n:>3}  {label:<20}{m['wall_s']:>8.2f}{m['mb_s']:>7.0f}{_num(m['cpu_s_gib'], '.2f'):>11}"
                      f"{_num(m['peak_rss_mb'], '.0f'):>14}{_num(m['peak_proc_rss_mb'], '.0f'):>14}{m['failed']:>8}")
    print("ratios of aggregate MB/s (issue 16's targets beside them):")
    for t in r["ratios"]:
        print(f"  {t['name']:<34}{t['value']:6.2f}   target {t['op']} {t['target']:<4}"
              f"{'met' if t['met'] else 'NOT met':>9}")
