"""Side-by-side benchmark of pulling through nothing, plain mitmdump, and hubcache cold and warm.

Everything runs on this machine, in a network namespace of its own: the real distribution registry
set up like Docker Hub (scripts/harness/hubenv.py), curl for a single large blob, skopeo for a whole
multi-layer image. Rounds interleave the modes so that machine noise hits them alike; medians and
ratios are printed, and a JSON summary is the last line.

Sections (all by default; --only picks one, --skip-extra keeps only the table):
  table   a large blob with curl and a multi-layer image with skopeo, every mode, several rounds;
          with the CPU seconds per GiB served of the proxy's process tree, blob and image apart
  extra   1/4/16 concurrent cold pulls, warm manifest latency, docker daemon pulls
  memory  16 concurrent clients on 16 distinct 1 GiB blobs (mitmdump, hubcache cold, warm), then
          16 slow clients (curl --limit-rate) on them: peak RSS of the proxy's whole process tree and
          of its largest process (hubcache on --workers N, default 1)
  load    50 clients for 60 s mixing hits, misses (groups asking for one cold image at once), HEADs
          and tags, every body's sha256 checked; `hubcache verify` on the store afterwards
  push    an authenticated skopeo push of a one-layer image (1 GiB by default) direct, through
          mitmdump and through hubcache, each to a new repository so the layer is uploaded whole:
          time and peak RSS (hubcache relays uploads streamed, never buffered)
  registries  the table's multi-layer image on a ghcr-like registry (token realm on its own host)
          and an mcr-like one (blobs redirected to a data host), skopeo direct, mitmdump, hubcache
          cold and warm, rounds interleaved; upstream requests of each pull (bench_registries.py)
  fleet   3 hubcache hosts (own stores) each make a cold pull of one image, one after another and
          all at once, without a parent and with a docker-registry 2.8 parent: counted pulls by
          account, manifest GETs and CDN bytes at Docker Hub, wall times (bench_fleet.py)
  workers the table's blob (curl) and image (skopeo) with 1 and --clients (8) clients at once:
          direct, mitmdump, hubcache --workers 1 and --workers N (default 2) cold and warm, rounds
          interleaved; wall, aggregate MB/s, CPU s/GiB, peak RSS of tree and largest process, and
          ratios beside issue 16's targets (bench_workers.py)

Every peak RSS is the summed VmRSS of the proxy process and all its descendants, sampled every
0.1 s; VmHWM of the proxy process itself is reported beside it. CPU seconds are utime + stime of
that tree (and cutime + cstime: children it reaped), read just before the proxy is stopped
(harness/proctree.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_fleet import fleet_section, print_fleet
from bench_registries import print_registries, registries_section
from bench_workers import print_workers, workers_section
from harness import images
from harness.clients import make_cert_dir, skopeo_copy, skopeo_push
from harness.hubenv import Upstream, missing_prerequisites
from harness.proctree import TreeRssSampler, tree_cpu_s
from harness.proxy import Proxy

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
MODES = ("direct", "mitmdump", "hubcache-cold", "hubcache-warm")
SECTIONS = ("table", "extra", "memory", "load", "push", "registries", "fleet", "workers")
CLIENT_ENV = {"PATH": "/usr/bin:/bin"}  # no proxy variables: curl gets its proxy with -x
BIG_REPO = "library/benchbig"


def anonymous_token(ca: Path, repository: str) -> str:
    ctx = ssl.create_default_context(cafile=str(ca))
    url = f"https://auth.docker.io/token?service=registry.docker.io&scope=repository:{repository}:pull"
    with urllib.request.urlopen(url, context=ctx) as r:
        return json.load(r)["token"]


def curl_blob(url: str, token: str, bundle: Path, proxy: str | None) -> tuple[float, int]:
    cmd = ["curl", "-sS", "-f", "-L", "-o", "/dev/null", "-w", "%{size_download}", "--cacert", str(bundle),
           "-H", f"Authorization: Bearer {token}", url]
    if proxy:
        cmd[1:1] = ["-x", proxy]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=CLIENT_ENV)
    return time.perf_counter() - t0, int(out.stdout)


def dir_bytes(d: Path) -> int:
    """Bytes of the files skopeo wrote into a `dir:` destination: the image's body bytes."""
    return sum(p.stat().st_size for p in d.iterdir() if p.is_file() and p.name != "version")


def skopeo_pull(ref: str, dest: Path, proxy: str | None, certs: Path) -> tuple[float, int]:
    """(seconds, body bytes) of one skopeo pull into `dest`, which is removed afterwards."""
    t0 = time.perf_counter()
    res = skopeo_copy(ref, dest, proxy=proxy, cert_dir=certs)
    wall = time.perf_counter() - t0
    if res.returncode:
        raise RuntimeError(f"skopeo failed: {res.stderr}")
    size = dir_bytes(dest)
    shutil.rmtree(dest)
    return wall, size


# ----------------------------------------------------------------- memory and CPU of a process tree

def sampled(proxy: Proxy, limit_mib: float | None = None) -> TreeRssSampler:
    return TreeRssSampler(proxy.proc.pid, limit_mib=limit_mib)


# ----------------------------------------------------------------- table: blob and image, every mode

def push_table_content(up: Upstream, args) -> tuple[str, int]:
    """The large blob (for the table) and the multi-layer image (table and docker pulls)."""
    blob = ("", 0)
    if "table" in args.sections or "workers" in args.sections:
        print(f"bench: pushing a {args.blob_mib} MiB blob", file=sys.stderr)
        big = up.push_image("library/benchblob", "1", [(args.blob_mib * MiB, 1)])
        blob = (big.layer_digests[0], big.layer_sizes[0])
    if {"table", "extra", "workers"} & set(args.sections):
        print(f"bench: pushing a {args.layers} x {args.layer_mib} MiB image", file=sys.stderr)
        up.push_image("library/benchimage", "1", [(args.layer_mib * MiB, 100 + i) for i in range(args.layers)])
    return blob


def cpu_s_per_gib(cpu_s: float, nbytes: int) -> float:
    return cpu_s / (nbytes / (1 << 30))


def table_rounds(up, work: Path, certs: Path, bundle: Path, start, blob: tuple[str, int], rounds: int) -> dict:
    """Each round: direct, mitmdump, hubcache cold, hubcache warm; blob with curl, image with skopeo.

    Each mode runs on a proxy of its own; the CPU seconds of its process tree are read before the
    blob, between blob and image, and after the image, just before it is stopped."""
    digest, blob_bytes = blob
    blob_url = f"https://registry-1.docker.io/v2/library/benchblob/blobs/{digest}"
    keys = ("blob_s", "image_s", "image_bytes", "blob_cpu_s_gib", "image_cpu_s_gib", "rss_mb", "anon_mb", "hwm_mb")
    results = {m: {k: [] for k in keys} for m in MODES}

    def measure(mode: str, proxy: Proxy | None, rnd: int) -> None:
        r = results[mode]
        sampler = sampled(proxy) if proxy else None
        cpu = [tree_cpu_s(proxy.proc.pid)] if proxy else []
        token = anonymous_token(up.ca_cert, "library/benchblob")
        wall, size = curl_blob(blob_url, token, bundle, proxy.url if proxy else None)
        assert size == blob_bytes, f"{mode}: got {size} bytes of {blob_bytes}"
        r["blob_s"].append(wall)
        cpu += [tree_cpu_s(proxy.proc.pid)] if proxy else []
        image_s, image_bytes = skopeo_pull("docker.io/library/benchimage:1", work / f"pull-{mode}-{rnd}",
                                           proxy.url if proxy else None, certs)
        r["image_s"].append(image_s)
        r["image_bytes"].append(image_bytes)
        if proxy and sampler:
            cpu.append(tree_cpu_s(proxy.proc.pid))
            r["blob_cpu_s_gib"].append(cpu_s_per_gib(cpu[1] - cpu[0], blob_bytes))
            r["image_cpu_s_gib"].append(cpu_s_per_gib(cpu[2] - cpu[1], image_bytes))
            r["hwm_mb"].append(proxy.peak_rss_mb())
            mem = sampler.stop()
            r["rss_mb"].append(mem["peak_rss_mb"])
            r["anon_mb"].append(mem["peak_anon_mb"])
            proxy.stop()
        print(f"bench: round {rnd + 1} {mode}: blob {wall:.2f} s, image {image_s:.2f} s"
              + (f", CPU s/GiB blob {r['blob_cpu_s_gib'][-1]:.2f} image {r['image_cpu_s_gib'][-1]:.2f},"
                 f" peak tree RSS {r['rss_mb'][-1]:.0f} MiB" if proxy else ""), file=sys.stderr)

    for rnd in range(rounds):
        measure("direct", None, rnd)
        measure("mitmdump", start("mitmdump", name=f"mitmdump-{rnd}"), rnd)
        store = work / "stores" / f"round-{rnd}"
        measure("hubcache-cold", start("hubcache", store, name=f"cold-{rnd}"), rnd)
        measure("hubcache-warm", start("hubcache", store, name=f"warm-{rnd}"), rnd)
        shutil.rmtree(store)
    return results


def table_summary(results: dict, blob_bytes: int, args) -> dict:
    med = {m: {k: (statistics.median(v) if v else None) for k, v in r.items()} for m, r in results.items()}
    ratios = {
        "warm_image_time_vs_mitmdump": med["hubcache-warm"]["image_s"] / med["mitmdump"]["image_s"],
        "warm_blob_throughput_vs_mitmdump": med["mitmdump"]["blob_s"] / med["hubcache-warm"]["blob_s"],
        "cold_blob_throughput_vs_mitmdump": med["mitmdump"]["blob_s"] / med["hubcache-cold"]["blob_s"],
        "cold_image_time_vs_mitmdump": med["hubcache-cold"]["image_s"] / med["mitmdump"]["image_s"],
        "warm_blob_throughput_vs_direct": med["direct"]["blob_s"] / med["hubcache-warm"]["blob_s"],
    }
    return {"blob_bytes": blob_bytes, "image_layers": args.layers, "layer_mib": args.layer_mib,
            "rounds": args.rounds, "median": med, "ratios": ratios, "raw": results}


def _mib(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def _f2(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def print_table(t: dict) -> None:
    med = t["median"]
    print(f"\nblob {t['blob_bytes'] / MiB:.0f} MiB via curl; image {t['image_layers']} x {t['layer_mib']} MiB via skopeo; "
          f"median of {t['rounds']} rounds; peak tree RSS/anon = summed over the proxy's process tree, "
          f"VmHWM = the proxy process's own high-water mark; CPU s/GiB = user+system seconds of the proxy's "
          f"process tree per GiB of body bytes served, blob and image apart")
    print(f"{'mode':<15}{'blob MB/s':>11}{'blob s':>9}{'image s':>9}{'blob CPU s/GiB':>16}{'image CPU s/GiB':>17}"
          f"{'peak tree RSS MiB':>19}{'peak anon MiB':>15}{'VmHWM MiB':>11}")
    for m in MODES:
        r = med[m]
        print(f"{m:<15}{t['blob_bytes'] / r['blob_s'] / 1e6:>11.0f}{r['blob_s']:>9.2f}{r['image_s']:>9.2f}"
              f"{_f2(r['blob_cpu_s_gib']):>16}{_f2(r['image_cpu_s_gib']):>17}"
              f"{_mib(r['rss_mb']):>19}{_mib(r['anon_mb']):>15}{_mib(r['hwm_mb']):>11}")
    for k, v in t["ratios"].items():
        print(f"{k:<36}{v:6.2f}")


# ----------------------------------------------------------------- extra: concurrency, latency, docker

def extra_measurements(up, work: Path, certs: Path, bundle: Path, confdir: Path, start,
                       link_mbps: tuple[float, ...] = (40, 4), rounds: int = 3) -> dict:
    """N concurrent cold pulls of one image, warm manifest latency, and docker daemon pulls.

    The concurrent pulls run twice: over loopback, where the upstream is faster than the 16
    clients' own TLS and hashing on this machine's cores, and with every CDN connection paced
    at each of `link_mbps` MB/s, a runner's internet link to Docker Hub, where the question is whether
    16 clients wait for one download or for sixteen."""
    from harness.clients import proxied_request

    out: dict = {"concurrent": {}, "docker": {}}
    img = up.push_image("library/benchconc", "1", [(8 * MiB, 300 + i) for i in range(4)])
    policy = work / "policy.json"
    policy.write_text('{"default":[{"type":"insecureAcceptAnything"}]}')
    for rate in (None, *link_mbps):
        link = "loopback" if rate is None else f"{rate:g} MB/s"
        out["concurrent"][link] = {}
        for n in (1, 4, 16):
            store = work / "stores" / f"conc-{n}"
            hub = start("hubcache", store, name=f"conc-{n}-{link.split()[0]}")
            if link == "loopback":
                r = concurrent_pulls(up, hub, n, work, certs, policy, img)
            else:
                with up.cdn_rate(rate * 1e6):
                    r = concurrent_pulls(up, hub, n, work, certs, policy, img)
            # The same n clients again, all from the store: what they cost without any upstream
            # (their own TLS, hashing and writing on this machine's cores), the floor for cold.
            r["warm_wall_s"] = concurrent_pulls(up, hub, n, work, certs, policy, img)["wall_s"]
            out["concurrent"][link][n] = r
            print(f"bench: {n} concurrent cold pulls ({link}): {r['wall_s']:.2f} s, {r['upstream_gets']} upstream GETs"
                  f" for {r['objects']} objects (each fetched via registry and CDN), {r['failed']} failed", file=sys.stderr)
            if n == 16 and link == "loopback":
                lat = []
                for _ in range(200):  # a new CONNECT and TLS handshake each, as skopeo and dockerd do
                    t = time.perf_counter()
                    status, _, _ = proxied_request(hub.port, hub.ca_cert, "GET", "registry-1.docker.io",
                                                   "/v2/library/benchconc/manifests/1",
                                                   [("Accept", img.media_type)])
                    lat.append((time.perf_counter() - t) * 1000)
                    assert status == 200
                lat.sort()
                out["warm_manifest_ms"] = {"p50": lat[len(lat) // 2], "p99": lat[int(len(lat) * 0.99) - 1]}
            hub.stop()
            shutil.rmtree(store)
    try:
        from harness.engines import Docker, missing_engine
    except ImportError:
        return out
    if missing_engine("docker"):
        return out
    # Interleaved rounds, each mode once per round with a fresh daemon (nothing in its own
    # image store); the cold store starts empty every round and the warm run reuses it. Median.
    store = work / "stores" / "docker"
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for rnd in range(1, rounds + 1):
        shutil.rmtree(store, ignore_errors=True)
        for mode in MODES:
            proxy = None
            if mode == "mitmdump":
                proxy = start("mitmdump", name=f"docker-mitmdump-{rnd}")
            elif mode.startswith("hubcache"):
                proxy = start("hubcache", store, name=f"docker-{mode}-{rnd}")
            home = work / f"docker-{mode}-{rnd}"
            with Docker(home, proxy=proxy.url if proxy else "", ca_cert=bundle) as d:
                t0 = time.perf_counter()
                d.pull("docker.io/library/benchimage:1")
                times[mode].append(time.perf_counter() - t0)
            if proxy:
                proxy.stop()
            shutil.rmtree(home, ignore_errors=True)
            print(f"bench: round {rnd} docker pull {mode}: {times[mode][-1]:.2f} s", file=sys.stderr)
    out["docker"] = {mode: statistics.median(t) for mode, t in times.items()}
    shutil.rmtree(store, ignore_errors=True)
    return out


def print_extra(extra: dict) -> None:
    print("\nconcurrent cold pulls of one image (4 x 8 MiB layers) through hubcache"
          " (upstream GETs: registry + CDN per blob, registry per manifest):")
    print("(warm s: the same N clients again, served from the store: the clients' own cost on this machine)")
    print(f"{'CDN link':<12}{'N':>4}{'wall s':>9}{'x single':>10}{'warm s':>8}{'x warm':>8}{'upstream GETs':>15}{'objects':>9}"
          f"{'failed':>8}{'peak tree RSS MiB':>19}{'VmHWM MiB':>11}")
    for link, runs in extra["concurrent"].items():
        base = runs[1]["wall_s"]
        for n, r in runs.items():
            print(f"{link:<12}{n:>4}{r['wall_s']:>9.2f}{r['wall_s'] / base:>10.2f}{r['warm_wall_s']:>8.2f}"
                  f"{r['wall_s'] / r['warm_wall_s']:>8.2f}{r['upstream_gets']:>15}{r['objects']:>9}"
                  f"{r['failed']:>8}{r['peak_rss_mb']:>19.0f}{r['hwm_mb']:>11.0f}")
    if "warm_manifest_ms" in extra:
        m = extra["warm_manifest_ms"]
        print(f"warm manifest GET by tag, new connection each: p50 {m['p50']:.1f} ms, p99 {m['p99']:.1f} ms")
    if extra.get("docker"):
        d = extra["docker"]
        print("docker daemon pull of the image (median of the rounds): " + ", ".join(f"{k} {v:.2f} s" for k, v in d.items())
              + f"; warm/mitmdump {d['hubcache-warm'] / d['mitmdump']:.2f}")


def concurrent_pulls(up, hub, n: int, work: Path, certs: Path, policy: Path, img) -> dict:
    """n skopeo pulls of one cold image through hubcache at once: wall time, upstream GETs."""
    import subprocess as sp

    from harness.clients import client_env

    objects = 2 + len(img.layer_digests)  # manifest, config, layers
    sampler = sampled(hub)
    dest = work / "conc"
    dest.mkdir(parents=True, exist_ok=True)
    mark = up.mark()
    t0 = time.perf_counter()
    procs = [sp.Popen(["skopeo", "--policy", str(policy), "copy", "--quiet", "--src-cert-dir", str(certs),
                       "--src-no-creds", "docker://docker.io/library/benchconc:1", f"dir:{dest / f'{n}-{i}'}"],
                      env=client_env(hub.url), stdout=sp.DEVNULL, stderr=sp.PIPE) for i in range(n)]
    try:
        failed = sum(1 for p in procs if p.wait() != 0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if failed:
        print(f"bench: a concurrent pull failed: {next(p.stderr.read() for p in procs if p.returncode)}", file=sys.stderr)
    wall = time.perf_counter() - t0
    mem = sampler.stop()
    reqs = up.requests_since(mark)
    gets = sum(1 for r in reqs if r.method == "GET" and ("/manifests/" in r.path or "/blobs/" in r.path or r.host.startswith("production.")))
    shutil.rmtree(dest, ignore_errors=True)
    return {"wall_s": wall, "failed": failed, "upstream_gets": gets, "objects": objects,
            "peak_rss_mb": mem["peak_rss_mb"], "hwm_mb": hub.peak_rss_mb()}


# ----------------------------------------------------------------- memory: many big blobs, slow clients

class Download:
    """`curl URL | reader` through a proxy, started at once; `reader` is sha256sum or `wc -c`.

    curl prints the bytes it received on stderr. Killed by PID in end()."""

    def __init__(self, url: str, token: str, bundle: Path, proxy: str, reader: list[str], rate: str | None) -> None:
        cmd = ["curl", "-sS", "-f", "-L", "-x", proxy, "--cacert", str(bundle), "-H", f"Authorization: Bearer {token}",
               "-y", "60", "-Y", "1024",  # a stalled transfer (under 1 KiB/s for 60 s) fails instead of hanging
               "-o", "-", "-w", "%{stderr}%{size_download}\n", url]
        if rate:
            cmd[1:1] = ["--limit-rate", rate]
        self.curl = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=CLIENT_ENV)
        try:
            self.reader = subprocess.Popen(reader, stdin=self.curl.stdout, stdout=subprocess.PIPE, env=CLIENT_ENV)
        except BaseException:
            self.curl.kill()
            self.curl.wait()
            raise
        self.curl.stdout.close()  # the reader holds the pipe now
        self.done_at: float | None = None  # perf_counter() when curl was seen to exit by itself

    def poll(self) -> bool:
        """True once curl has exited (by itself)."""
        if self.done_at is None and self.curl.poll() is not None:
            self.done_at = time.perf_counter()
        return self.done_at is not None

    def end(self) -> tuple[int, int | None, str]:
        """Kill curl if it still runs; then (curl's exit code, bytes curl received, reader's output)."""
        if self.curl.poll() is None:
            self.curl.kill()
        rc = self.curl.wait()
        err = self.curl.stderr.read().decode(errors="replace").strip().splitlines()
        self.curl.stderr.close()
        try:
            out = self.reader.communicate(timeout=30)[0].decode().strip()
        except subprocess.TimeoutExpired:
            self.reader.kill()
            out = self.reader.communicate()[0].decode().strip()
        size = int(err[-1]) if err and err[-1].isdigit() else None
        if rc and rc != -9 and err:
            print(f"bench: curl exited {rc}: {' '.join(err[:-1])[:300]}", file=sys.stderr)
        return rc, size, out


def wait_downloads(downloads: list[Download], deadline: float, abort: threading.Event) -> None:
    """Until every curl exited, the deadline passed or `abort` was set."""
    while not all(d.poll() for d in downloads):
        if time.perf_counter() > deadline or abort.is_set():
            return
        time.sleep(0.05)


def start_downloads(blobs: list[tuple[str, int]], proxy: Proxy, token: str, bundle: Path, reader: list[str],
                    rate: str | None = None) -> list[Download]:
    downloads = []
    try:
        for digest, _ in blobs:
            url = f"https://registry-1.docker.io/v2/{BIG_REPO}/blobs/{digest}"
            downloads.append(Download(url, token, bundle, proxy.url, reader, rate))
    except BaseException:
        for d in downloads:
            d.end()
        raise
    return downloads


def fetch_all(proxy: Proxy, blobs: list[tuple[str, int]], token: str, bundle: Path, limit_mib: float) -> dict:
    """Every blob at once, one curl each, as fast as they go; sizes and sha256 checked."""
    sampler = sampled(proxy, limit_mib)
    t0 = time.perf_counter()
    downloads: list[Download] = []
    ends = []
    try:
        downloads = start_downloads(blobs, proxy, token, bundle, ["sha256sum"])
        total_mib = sum(size for _, size in blobs) / MiB
        wait_downloads(downloads, t0 + 60 + total_mib / 5, sampler.over)  # a safety net: 5 MiB/s at least
    finally:
        ends = [d.end() for d in downloads]
        mem = sampler.stop()
        hwm = proxy.peak_rss_mb()
    done = [d.done_at - t0 for d in downloads if d.done_at is not None]
    wall = max(done) if len(done) == len(downloads) else time.perf_counter() - t0
    received = sum(size or 0 for _, size, _ in ends)
    verified = sum(1 for (digest, size), (rc, got, out) in zip(blobs, ends, strict=True)
                   if rc == 0 and got == size and out.split()[:1] == [digest.split(":", 1)[1]])
    return {"clients": len(blobs), "wall_s": wall, "mb_s": received / wall / 1e6, "received_bytes": received,
            "verified": verified, "failed": len(blobs) - verified, "first_done_s": min(done, default=None),
            "last_done_s": max(done, default=None), "hwm_mb": hwm, **mem}


AFTER_KILL_S = 2  # slow clients: sampling goes on this long after they were killed


def trickle_all(proxy: Proxy, blobs: list[tuple[str, int]], token: str, bundle: Path, seconds: float, rate: str,
                limit_mib: float) -> dict:
    """Every blob at once through slow clients (curl --limit-rate) for `seconds`, then they are killed.

    first_rss_mb is the tree RSS before the clients start, at_kill_rss_mb just before they are killed,
    last_rss_mb AFTER_KILL_S later."""
    sampler = sampled(proxy, limit_mib)
    downloads: list[Download] = []
    ends = []
    try:
        downloads = start_downloads(blobs, proxy, token, bundle, ["wc", "-c"], rate)
        wait_downloads(downloads, time.perf_counter() + seconds, sampler.over)
    finally:
        early = sum(1 for d in downloads if d.poll())
        at_kill = sampler.last
        ends = [d.end() for d in downloads]
        time.sleep(AFTER_KILL_S)  # how the proxy takes its clients' going is in the peak too
        mem = sampler.stop()
        hwm = proxy.peak_rss_mb()
    received = sum(int(out) for _, _, out in ends if out.isdigit())
    return {"clients": len(blobs), "seconds": seconds, "rate": rate, "received_bytes": received,
            "exited_early": early, "hwm_mb": hwm, **mem, "at_kill_rss_mb": at_kill}


def push_big_blobs(up: Upstream, n: int, mib: int) -> list[tuple[str, int]]:
    """`n` distinct blobs of `mib` MiB as one-layer images BIG_REPO:0..n-1, pushed two at a time (one
    builds its layer while the other's skopeo uploads); one repository, so one token reads them all."""
    def push(i: int) -> tuple[str, int]:
        info = up.push_image(BIG_REPO, str(i), [(mib * MiB, 5000 + i)])
        return info.layer_digests[0], info.layer_sizes[0]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        blobs = list(pool.map(push, range(n)))
    print(f"bench: pushed {n} x {mib} MiB in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return blobs


def check_disk(work: Path, n: int, mib: int) -> None:
    """The registry's copy, one store's and two layers being built must fit, with 2 GiB to spare."""
    need = (2 * n + 2) * mib * MiB + 2 * 1024 * MiB
    free = shutil.disk_usage(work).free
    if free < need:
        raise SystemExit(f"bench: the memory section needs {need / 2**30:.1f} GiB free in {work}, "
                         f"there are {free / 2**30:.1f}")


def memory_section(up: Upstream, work: Path, bundle: Path, start, args) -> dict:
    check_disk(work, args.big_n, args.big_mib)
    print(f"bench: pushing {args.big_n} distinct {args.big_mib} MiB blobs", file=sys.stderr)
    blobs = push_big_blobs(up, args.big_n, args.big_mib)
    store = work / "stores" / "memory"
    try:
        return memory_phases(up, blobs, store, bundle, start, args)
    finally:
        shutil.rmtree(store, ignore_errors=True)
        for digest, _ in blobs:
            shutil.rmtree(up.blob_file(digest).parent, ignore_errors=True)


def memory_phases(up: Upstream, blobs, store: Path, bundle: Path, start, args) -> dict:
    """Fast clients: mitmdump, hubcache cold (fresh store), warm (same store, new process). Slow
    clients: hubcache warm (that store), cold (a fresh one), mitmdump."""

    def phase(kind: str, label: str, slow: bool, store_dir: Path | None = None) -> dict:
        proxy = start(kind, store_dir, name=f"memory-{label}", workers=(args.workers or 1) if kind == "hubcache" else 1)
        try:
            token = anonymous_token(up.ca_cert, BIG_REPO)
            if slow:
                r = trickle_all(proxy, blobs, token, bundle, args.slow_seconds, args.slow_rate, args.rss_limit_mib)
            else:
                r = fetch_all(proxy, blobs, token, bundle, args.rss_limit_mib)
        finally:
            proxy.stop()
        print_phase(label, r)
        return r

    fast, slow = {}, {}
    fast["mitmdump"] = phase("mitmdump", "mitmdump", False)
    fast["hubcache-cold"] = phase("hubcache", "hubcache-cold", False, store)
    fast["hubcache-warm"] = phase("hubcache", "hubcache-warm", False, store)
    slow["hubcache-warm"] = phase("hubcache", "slow-hubcache-warm", True, store)
    shutil.rmtree(store)
    slow["hubcache-cold"] = phase("hubcache", "slow-hubcache-cold", True, store)
    shutil.rmtree(store)
    slow["mitmdump"] = phase("mitmdump", "slow-mitmdump", True)
    return {"blob_mib": args.big_mib, "clients": len(blobs), "workers": args.workers or 1, "fast": fast, "slow": slow,
            "ratios": memory_ratios(fast, slow)}


def memory_ratios(fast: dict, slow: dict) -> dict:
    m, ms = fast["mitmdump"], slow["mitmdump"]
    return {
        "cold_throughput_vs_mitmdump": fast["hubcache-cold"]["mb_s"] / m["mb_s"],
        "warm_throughput_vs_mitmdump": fast["hubcache-warm"]["mb_s"] / m["mb_s"],
        "cold_peak_rss_vs_mitmdump": fast["hubcache-cold"]["peak_rss_mb"] / m["peak_rss_mb"],
        "warm_peak_rss_vs_mitmdump": fast["hubcache-warm"]["peak_rss_mb"] / m["peak_rss_mb"],
        "slow_cold_peak_rss_vs_mitmdump": slow["hubcache-cold"]["peak_rss_mb"] / ms["peak_rss_mb"],
        "slow_warm_peak_rss_vs_mitmdump": slow["hubcache-warm"]["peak_rss_mb"] / ms["peak_rss_mb"],
    }


def print_phase(label: str, r: dict) -> None:
    limit = ", STOPPED: tree RSS over --rss-limit-mib" if r["rss_limit_hit"] else ""
    if "mb_s" in r:
        print(f"bench: memory {label}: {r['wall_s']:.1f} s, {r['mb_s']:.0f} MB/s, peak tree RSS {r['peak_rss_mb']:.0f} MiB,"
              f" {r['verified']}/{r['clients']} verified{limit}", file=sys.stderr)
    else:
        print(f"bench: memory {label}: peak tree RSS {r['peak_rss_mb']:.0f} MiB, {r['received_bytes'] / 1e6:.0f} MB"
              f" received, {r['exited_early']} clients exited early{limit}", file=sys.stderr)


# ----------------------------------------------------------------- push: uploads relayed, streamed

PUSH_MODES = ("direct", "mitmdump", "hubcache")


def push_section(up: Upstream, work: Path, certs: Path, start, args) -> dict:
    """Each round: an image pushed direct, through mitmdump and through hubcache. Each push has a
    layer of its own: the registry would mount one it has already (skopeo remembers where it
    pushed a blob and asks for a cross-repository mount), and then nothing is uploaded."""
    src = work / "pushsrc"
    user, password = up.push_account
    results: dict = {m: {"push_s": [], "rss_mb": [], "hwm_mb": []} for m in PUSH_MODES}
    try:
        for rnd in range(args.rounds):
            for i, mode in enumerate(PUSH_MODES):
                shutil.rmtree(src, ignore_errors=True)
                images.build_image(src, [(args.push_mib * MiB, 9000 + 10 * rnd + i)])  # not timed
                proxy = None
                if mode != "direct":
                    store = work / "stores" / f"push-{rnd}" if mode == "hubcache" else None
                    proxy = start(mode, store, name=f"push-{mode}-{rnd}")
                sampler = sampled(proxy) if proxy else None
                t0 = time.perf_counter()
                res = skopeo_push(src, f"docker.io/library/benchpush-{mode}-{rnd}:1", proxy=proxy.url if proxy else None,
                                  cert_dir=certs, creds=f"{user}:{password}")
                wall = time.perf_counter() - t0
                if res.returncode != 0:
                    raise SystemExit(f"bench: push {mode} failed: {res.stderr.strip()}")
                results[mode]["push_s"].append(wall)
                if proxy and sampler:
                    results[mode]["hwm_mb"].append(proxy.peak_rss_mb())
                    results[mode]["rss_mb"].append(sampler.stop()["peak_rss_mb"])
                    proxy.stop()
                print(f"bench: push round {rnd + 1} {mode}: {wall:.2f} s"
                      + (f", peak tree RSS {results[mode]['rss_mb'][-1]:.0f} MiB" if proxy else ""), file=sys.stderr)
    finally:
        shutil.rmtree(src, ignore_errors=True)
    median = {m: {k: statistics.median(v) if v else None for k, v in r.items()} for m, r in results.items()}
    return {"push_mib": args.push_mib, "rounds": args.rounds, "median": median, "raw": results,
            "ratios": {"push_time_vs_mitmdump": median["hubcache"]["push_s"] / median["mitmdump"]["push_s"],
                       "push_rss_vs_mitmdump": median["hubcache"]["rss_mb"] / median["mitmdump"]["rss_mb"]}}


def print_push(r: dict) -> None:
    print(f"\npush: one {r['push_mib']} MiB layer with skopeo, median of {r['rounds']} rounds")
    print(f"{'mode':<12}{'push s':>9}{'peak tree RSS MiB':>19}{'VmHWM MiB':>11}")
    for mode, m in r["median"].items():
        print(f"{mode:<12}{m['push_s']:>9.2f}{_mib(m['rss_mb']):>19}{_mib(m['hwm_mb']):>11}")
    for k, v in r["ratios"].items():
        print(f"{k:<37}{v:>6.2f}")


def print_memory(mem: dict) -> None:
    n, mib = mem["clients"], mem["blob_mib"]
    print(f"\n{n} concurrent curl clients, each on its own {mib} MiB blob (sha256 of every body checked);"
          f" hubcache --workers {mem.get('workers', 1)}; peak tree RSS = summed VmRSS of the proxy's process tree,"
          f" peak proc RSS = its largest single process (one worker), every 0.1 s")
    print(f"{'mode':<15}{'wall s':>8}{'MB/s':>7}{'first done s':>14}{'peak tree RSS MiB':>19}{'peak proc RSS MiB':>19}"
          f"{'peak anon MiB':>15}{'VmHWM MiB':>11}{'verified':>10}{'failed':>8}")
    for m, r in mem["fast"].items():
        print(f"{m:<15}{r['wall_s']:>8.1f}{r['mb_s']:>7.0f}{r['first_done_s'] or 0:>14.1f}{r['peak_rss_mb']:>19.0f}"
              f"{r['peak_proc_rss_mb']:>19.0f}{r['peak_anon_mb']:>15.0f}{r['hwm_mb']:>11.0f}{r['verified']:>10}"
              f"{r['failed']:>8}")
    s = next(iter(mem["slow"].values()))
    print(f"{n} slow clients (curl --limit-rate {s['rate']}) on the same blobs for {s['seconds']:.0f} s, then killed;"
          f" tree RSS MiB before they start, peak, when killed, {AFTER_KILL_S} s after:")
    print(f"{'mode':<15}{'before':>8}{'peak':>7}{'at kill':>9}{'after':>7}{'peak proc':>11}{'peak anon':>11}{'VmHWM':>7}"
          f"{'received MB':>13}{'exited early':>14}")
    for m, r in mem["slow"].items():
        print(f"{m:<15}{r['first_rss_mb']:>8.0f}{r['peak_rss_mb']:>7.0f}{r['at_kill_rss_mb']:>9.0f}{r['last_rss_mb']:>7.0f}"
              f"{r['peak_proc_rss_mb']:>11.0f}{r['peak_anon_mb']:>11.0f}{r['hwm_mb']:>7.0f}{r['received_bytes'] / 1e6:>13.0f}{r['exited_early']:>14}")
    if any(r["rss_limit_hit"] for r in (*mem["fast"].values(), *mem["slow"].values())):
        print("(a run was stopped early: its tree RSS went over --rss-limit-mib)")
    for k, v in mem["ratios"].items():
        print(f"{k:<36}{v:6.2f}")


# ----------------------------------------------------------------- main

# ----------------------------------------------------------------- load: many clients, every answer checked

def load_section(up: Upstream, work: Path, start, args) -> dict:
    """The load of tests/e2e/test_load.py (stored images, images pulled for the first time by groups
    of clients at once, HEADs, tags), timed, with every body's sha256 checked; then `hubcache
    verify` on the stopped proxy's store."""
    import re

    from harness.loadgen import Image, Plan, prime, run_load

    seeds = iter(range(52000, 53000))

    def push(name: str, sizes) -> Image:
        return Image.from_info(up.push_image(name, "1", [(n, next(seeds)) for n in sizes]))

    warm_sizes = [(64 << 10, 1 * MiB, 4 * MiB), (256 << 10, 2 * MiB, 8 * MiB), (128 << 10, 512 << 10, 6 * MiB), (32 * MiB,)]
    cold_sizes = [(64 << 10, 2 * MiB, 8 * MiB), (128 << 10, 4 * MiB), (32 * MiB, 256 << 10), (512 << 10, 1 * MiB, 6 * MiB),
                  (64 << 10, 3 * MiB), (192 << 10, 8 * MiB)]
    print(f"bench: load: pushing {len(warm_sizes) + len(cold_sizes)} images", file=sys.stderr)
    warm = [push(f"library/benchloadwarm{i}", s) for i, s in enumerate(warm_sizes)]
    cold = [push(f"library/benchloadcold{i}", s) for i, s in enumerate(cold_sizes)]
    store = work / "stores" / "load"
    hub = start("hubcache", store, name="load")
    prime(hub.port, hub.ca_cert, warm)
    sampler = sampled(hub, args.rss_limit_mib)
    print(f"bench: load: {args.load_clients} clients for {args.load_seconds:g} s", file=sys.stderr)
    result = run_load(hub.port, hub.ca_cert, Plan(warm, cold, miss_groups=2, miss_group_size=5),
                      clients=args.load_clients, seconds=args.load_seconds)
    result["peak_rss_mb"] = sampler.stop()["peak_rss_mb"]
    result["alive"] = hub.proc.poll() is None
    hub.stop()
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "hubcache"), "verify", "--store", str(store)],
                         capture_output=True, text=True, timeout=600)
    bad = re.search(r"(\d+) did not match", out.stdout)
    orphans = re.search(r"(\d+) orphaned chunk sets", out.stdout)
    result["verify"] = {"bad": int(bad[1]) if bad else None, "orphan_chunk_sets": int(orphans[1]) if orphans else None}
    shutil.rmtree(store, ignore_errors=True)
    return result


def print_load(r: dict) -> None:
    total = r["total"]
    print(f"\nload: {r['clients']} clients, {total} requests in {r['seconds']} s ({total / r['seconds']:.0f}/s,"
          f" {r['bytes'] / r['seconds'] / 1e6:.0f} MB/s of bodies); errors {r['errors']}, corrupt bodies {r['corrupt']},"
          f" cold images pulled {r.get('cold_images_pulled')}, hubcache alive {r['alive']}, peak tree RSS {r['peak_rss_mb']:.0f} MiB;"
          f" verify afterwards: {r['verify']['bad']} bad, {r['verify']['orphan_chunk_sets']} orphaned chunk sets")
    lat = r.get("latency_ms_by_kind", {})
    print(f"{'kind':<22}{'requests':>10}{'p50 ms':>9}{'p99 ms':>9}")
    for kind, n in sorted(r["requests"].items()):
        k = lat.get(kind, {})
        print(f"{kind:<22}{n:>10}{k.get('p50', 0):>9.1f}{k.get('p99', 0):>9.1f}")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blob-mib", type=int, default=1024, help="size of the single large blob (default 1024)")
    ap.add_argument("--layers", type=int, default=8, help="layers of the multi-layer image (default 8)")
    ap.add_argument("--layer-mib", type=int, default=32, help="size of each of those layers, and of the fleet's (default 32)")
    ap.add_argument("--fleet-hosts", type=int, default=3, help="fleet: hubcache hosts (default 3)")
    ap.add_argument("--fleet-layers", type=int, default=3, help="fleet: layers of its image, each --layer-mib (default 3)")
    ap.add_argument("--fleet-link-mbps", type=float, default=0,
                    help="fleet: pace every CDN connection at this many MB/s (default 0: loopback, unpaced)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, each running every mode once (default 3)")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory, removed at the end")
    ap.add_argument("--only", choices=SECTIONS, help="run only this section")
    ap.add_argument("--skip-extra", action="store_true",
                    help="only the blob and image table: no concurrency, latency, docker daemon or memory runs")
    ap.add_argument("--skip-memory", action="store_true", help="everything but the memory section")
    ap.add_argument("--big-n", type=int, default=16, help="memory: distinct blobs and clients (default 16)")
    ap.add_argument("--big-mib", type=int, default=1024, help="memory: size of each of those blobs (default 1024)")
    ap.add_argument("--slow-rate", default="2M", help="memory: curl --limit-rate of the slow clients (default 2M)")
    ap.add_argument("--slow-seconds", type=float, default=20, help="memory: how long slow clients run (default 20)")
    ap.add_argument("--link-mbps", type=lambda v: tuple(float(x) for x in v.split(",")), default=(40, 4),
                    help="extra: paces of each CDN connection for further runs of concurrent pulls, MB/s, "
                         "comma-separated (default 40,4)")
    ap.add_argument("--push-mib", type=int, default=1024, help="push: size of the pushed layer (default 1024)")
    ap.add_argument("--load-clients", type=int, default=50, help="load: concurrent clients (default 50)")
    ap.add_argument("--load-seconds", type=float, default=60, help="load: how long (default 60)")
    ap.add_argument("--workers", type=int, default=None,
                    help="workers: hubcache --workers N beside --workers 1 (default 2); memory: run hubcache with "
                         "--workers N (default 1)")
    ap.add_argument("--clients", type=int, default=8, help="workers: concurrent clients, beside 1 (default 8)")
    ap.add_argument("--rss-limit-mib", type=float, default=4096,
                    help="memory: stop a run once the proxy tree's RSS passes this (default 4096)")
    args = ap.parse_args()
    if args.only:
        args.sections = (args.only,)
    elif args.skip_extra:
        args.sections = ("table",)
    else:
        args.sections = tuple(s for s in SECTIONS if not (s == "memory" and args.skip_memory))
    return args


def main() -> int:
    args = parse_args()
    if why := missing_prerequisites():
        print(f"bench: cannot run: {why}", file=sys.stderr)
        return 2
    work = args.workdir or Path(tempfile.mkdtemp(prefix="hubcache-bench-"))
    up = Upstream(work / "upstream", registries="registries" in args.sections)
    up.start()
    proxies: list[Proxy] = []
    summary: dict = {"sections": list(args.sections), "extra": {}}
    try:
        blob = push_table_content(up, args)
        from mitmproxy.certs import CertStore

        confdir = work / "confdir"
        CertStore.from_store(confdir, "mitmproxy", 2048)
        certs = make_cert_dir(work / "certs", up.ca_cert, confdir / "mitmproxy-ca-cert.pem")
        bundle = work / "bundle.pem"
        bundle.write_bytes(up.ca_cert.read_bytes() + (confdir / "mitmproxy-ca-cert.pem").read_bytes())

        def start(kind: str, store: Path | None = None, name: str = "", sets: list[str] = (), workers: int = 1) -> Proxy:
            p = Proxy(work / "proxies" / name, up.ca_cert, confdir=confdir, kind=kind, store=store, sets=sets,
                      workers=workers).start()
            proxies.append(p)
            return p

        if "extra" in args.sections:
            summary["extra"] = extra_measurements(up, work, certs, bundle, confdir, start, args.link_mbps, args.rounds)
        if "table" in args.sections:
            results = table_rounds(up, work, certs, bundle, start, blob, args.rounds)
            summary.update(table_summary(results, blob[1], args))
        if "memory" in args.sections:
            summary["memory"] = memory_section(up, work, bundle, start, args)
        if "load" in args.sections:
            summary["load"] = load_section(up, work, start, args)
        if "push" in args.sections:
            summary["push"] = push_section(up, work, certs, start, args)
        if "registries" in args.sections:
            summary["registries"] = registries_section(up, work, certs, start, args)
        if "fleet" in args.sections:
            summary["fleet"] = fleet_section(up, work, certs, start, args)
        if "workers" in args.sections:
            summary["workers"] = workers_section(up, work, certs, bundle, start, blob,
                                                 lambda repo: anonymous_token(up.ca_cert, repo), args)
    finally:
        for p in proxies:
            p.stop()
        up.stop()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    if "table" in args.sections:
        print_table(summary)
    if summary.get("extra"):
        print_extra(summary["extra"])
    if "memory" in summary:
        print_memory(summary["memory"])
    if "load" in summary:
        print_load(summary["load"])
    if "push" in summary:
        print_push(summary["push"])
    if "registries" in summary:
        print_registries(summary["registries"])
    if "fleet" in summary:
        print_fleet(summary["fleet"])
    if "workers" in summary:
        print_workers(summary["workers"])
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
