"""Side-by-side benchmark of pulling through nothing, plain mitmdump, and hubcache cold and warm.

Everything runs on this machine, in a network namespace of its own: the real distribution registry
set up like Docker Hub (tests/support/hubenv.py), curl for a single large blob, skopeo for a whole
multi-layer image. Rounds interleave the modes so that machine noise hits them alike; medians and
ratios are printed, and a JSON summary is the last line.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.clients import make_cert_dir, skopeo_copy  # noqa: E402
from support.hubenv import Upstream, missing_prerequisites  # noqa: E402
from support.proxy import Proxy  # noqa: E402

MiB = 1 << 20
MODES = ("direct", "mitmdump", "hubcache-cold", "hubcache-warm")


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
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"})
    return time.perf_counter() - t0, int(out.stdout)


def skopeo_pull(ref: str, dest: Path, proxy: str | None, certs: Path) -> float:
    t0 = time.perf_counter()
    res = skopeo_copy(ref, dest, proxy=proxy, cert_dir=certs)
    wall = time.perf_counter() - t0
    if res.returncode:
        raise RuntimeError(f"skopeo failed: {res.stderr}")
    shutil.rmtree(dest)
    return wall


class RssSampler:
    """Samples the proxy's RssAnon (its own heap, as opposed to mapped file pages) every 20 ms."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy, self.peak, self._stop = proxy, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, self.proxy.rss_mb().get("RssAnon", 0.0))
            except (OSError, AssertionError):
                return

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


def extra_measurements(up, work: Path, certs: Path, bundle: Path, confdir: Path, start) -> dict:
    """N concurrent cold pulls of one image, warm manifest latency, and docker daemon pulls."""
    import subprocess as sp

    from support.clients import client_env, proxied_request

    out: dict = {"concurrent": {}, "docker": {}}
    img = up.push_image("library/benchconc", "1", [(8 * MiB, 300 + i) for i in range(4)])
    objects = 2 + len(img.layer_digests)  # manifest, config, layers
    policy = work / "policy.json"
    policy.write_text('{"default":[{"type":"insecureAcceptAnything"}]}')
    for n in (1, 4, 16):
        store = work / "stores" / f"conc-{n}"
        hub = start("hubcache", store, name=f"conc-{n}")
        (work / "conc").mkdir(parents=True, exist_ok=True)
        mark = up.mark()
        t0 = time.perf_counter()
        procs = [sp.Popen(["skopeo", "--policy", str(policy), "copy", "--quiet", "--src-cert-dir", str(certs),
                           "--src-no-creds", "docker://docker.io/library/benchconc:1", f"dir:{work / 'conc' / f'{n}-{i}'}"],
                          env=client_env(hub.url), stdout=sp.DEVNULL, stderr=sp.PIPE) for i in range(n)]
        failed = sum(1 for p in procs if p.wait() != 0)
        if failed:
            print(f"bench: a concurrent pull failed: {next(p.stderr.read() for p in procs if p.returncode)}", file=sys.stderr)
        wall = time.perf_counter() - t0
        reqs = up.requests_since(mark)
        gets = sum(1 for r in reqs if r.method == "GET" and ("/manifests/" in r.path or "/blobs/" in r.path or r.host.startswith("production.")))
        out["concurrent"][n] = {"wall_s": wall, "failed": failed, "upstream_gets": gets,
                                "objects": objects, "peak_rss_mb": hub.peak_rss_mb()}
        print(f"bench: {n} concurrent cold pulls: {wall:.2f} s, {gets} upstream GETs for {objects} objects"
              f" (each fetched via registry and CDN), {failed} failed", file=sys.stderr)
        if n == 16:
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
        shutil.rmtree(work / "conc", ignore_errors=True)
    try:
        from support.engines import Docker, missing_engine
    except ImportError:
        return out
    if missing_engine("docker"):
        return out
    store = work / "stores" / "docker"
    for mode in MODES:
        proxy = None
        if mode == "mitmdump":
            proxy = start("mitmdump", name="docker-mitmdump")
        elif mode.startswith("hubcache"):
            proxy = start("hubcache", store, name=f"docker-{mode}")
        with Docker(work / f"docker-{mode}", proxy=proxy.url if proxy else "", ca_cert=bundle) as d:
            t0 = time.perf_counter()
            d.pull("docker.io/library/benchimage:1")
            out["docker"][mode] = time.perf_counter() - t0
        if proxy:
            proxy.stop()
        print(f"bench: docker pull {mode}: {out['docker'][mode]:.2f} s", file=sys.stderr)
    shutil.rmtree(store, ignore_errors=True)
    return out


def print_extra(extra: dict) -> None:
    print("\nconcurrent cold pulls of one image (4 x 8 MiB layers) through hubcache:")
    print(f"{'N':>4}{'wall s':>9}{'x single':>10}{'upstream GETs':>15}{'objects':>9}{'failed':>8}{'peak RSS MiB':>14}")
    base = extra["concurrent"][1]["wall_s"]
    for n, r in extra["concurrent"].items():
        print(f"{n:>4}{r['wall_s']:>9.2f}{r['wall_s'] / base:>10.2f}{r['upstream_gets']:>15}{r['objects']:>9}"
              f"{r['failed']:>8}{r['peak_rss_mb']:>14.0f}")
    if "warm_manifest_ms" in extra:
        m = extra["warm_manifest_ms"]
        print(f"warm manifest GET by tag, new connection each: p50 {m['p50']:.1f} ms, p99 {m['p99']:.1f} ms")
    if extra.get("docker"):
        d = extra["docker"]
        print("docker daemon pull of the image: " + ", ".join(f"{k} {v:.2f} s" for k, v in d.items())
              + f"; warm/mitmdump {d['hubcache-warm'] / d['mitmdump']:.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--blob-mib", type=int, default=1024, help="size of the single large blob (default 1024)")
    ap.add_argument("--layers", type=int, default=8, help="layers of the multi-layer image (default 8)")
    ap.add_argument("--layer-mib", type=int, default=32, help="size of each of those layers (default 32)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, each running every mode once (default 3)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--skip-extra", action="store_true",
                    help="only the blob and image table: no concurrency, latency or docker daemon runs")
    args = ap.parse_args()
    if why := missing_prerequisites():
        print(f"bench: cannot run: {why}", file=sys.stderr)
        return 2
    work = args.workdir or Path(tempfile.mkdtemp(prefix="hubcache-bench-"))
    up = Upstream(work / "upstream")
    up.start()
    proxies: list[Proxy] = []
    try:
        print(f"bench: pushing a {args.blob_mib} MiB blob and a {args.layers} x {args.layer_mib} MiB image", file=sys.stderr)
        big = up.push_image("library/benchblob", "1", [(args.blob_mib * MiB, 1)])
        up.push_image("library/benchimage", "1", [(args.layer_mib * MiB, 100 + i) for i in range(args.layers)])
        from mitmproxy.certs import CertStore

        confdir = work / "confdir"
        CertStore.from_store(confdir, "mitmproxy", 2048)
        certs = make_cert_dir(work / "certs", up.ca_cert, confdir / "mitmproxy-ca-cert.pem")
        bundle = work / "bundle.pem"
        bundle.write_bytes(up.ca_cert.read_bytes() + (confdir / "mitmproxy-ca-cert.pem").read_bytes())
        blob_url = f"https://registry-1.docker.io/v2/library/benchblob/blobs/{big.layer_digests[0]}"
        blob_bytes = big.layer_sizes[0]
        results: dict[str, dict[str, list[float]]] = {m: {"blob_s": [], "image_s": [], "rss_mb": [], "anon_mb": []} for m in MODES}

        def start(kind: str, store: Path | None = None, name: str = "") -> Proxy:
            p = Proxy(work / "proxies" / name, up.ca_cert, confdir=confdir, kind=kind, store=store).start()
            proxies.append(p)
            return p

        def measure(mode: str, proxy: Proxy | None, rnd: int) -> None:
            sampler = RssSampler(proxy) if proxy else None
            token = anonymous_token(up.ca_cert, "library/benchblob")
            wall, size = curl_blob(blob_url, token, bundle, proxy.url if proxy else None)
            assert size == blob_bytes, f"{mode}: got {size} bytes of {blob_bytes}"
            results[mode]["blob_s"].append(wall)
            results[mode]["image_s"].append(
                skopeo_pull("docker.io/library/benchimage:1", work / f"pull-{mode}-{rnd}", proxy.url if proxy else None, certs)
            )
            if proxy:
                results[mode]["rss_mb"].append(proxy.peak_rss_mb())
                results[mode]["anon_mb"].append(sampler.stop())
                proxy.stop()
            print(f"bench: round {rnd + 1} {mode}: blob {wall:.2f} s, image {results[mode]['image_s'][-1]:.2f} s"
                  + (f", peak RSS {results[mode]['rss_mb'][-1]:.0f} MiB" if proxy else ""), file=sys.stderr)

        extra = {}
        if not args.skip_extra:
            extra = extra_measurements(up, work, certs, bundle, confdir, start)
        for rnd in range(args.rounds):
            measure("direct", None, rnd)
            measure("mitmdump", start("mitmdump", name=f"mitmdump-{rnd}"), rnd)
            store = work / "stores" / f"round-{rnd}"
            measure("hubcache-cold", start("hubcache", store, name=f"cold-{rnd}"), rnd)
            measure("hubcache-warm", start("hubcache", store, name=f"warm-{rnd}"), rnd)
            shutil.rmtree(store)
    finally:
        for p in proxies:
            p.stop()
        up.stop()

    med = {m: {k: (statistics.median(v) if v else None) for k, v in r.items()} for m, r in results.items()}
    print(f"\nblob {blob_bytes / MiB:.0f} MiB via curl; image {args.layers} x {args.layer_mib} MiB via skopeo; "
          f"median of {args.rounds} rounds; peak RSS = VmHWM of the proxy process")
    print(f"{'mode':<15}{'blob MB/s':>11}{'blob s':>9}{'image s':>9}{'peak RSS MiB':>14}{'peak anon MiB':>15}")
    for m in MODES:
        r = med[m]
        rss = f"{r['rss_mb']:.0f}" if r["rss_mb"] is not None else "-"
        anon = f"{r['anon_mb']:.0f}" if r["anon_mb"] is not None else "-"
        print(f"{m:<15}{blob_bytes / r['blob_s'] / 1e6:>11.0f}{r['blob_s']:>9.2f}{r['image_s']:>9.2f}{rss:>14}{anon:>15}")
    ratios = {
        "warm_image_time_vs_mitmdump": med["hubcache-warm"]["image_s"] / med["mitmdump"]["image_s"],
        "warm_blob_throughput_vs_mitmdump": med["mitmdump"]["blob_s"] / med["hubcache-warm"]["blob_s"],
        "cold_blob_throughput_vs_mitmdump": med["mitmdump"]["blob_s"] / med["hubcache-cold"]["blob_s"],
        "warm_blob_throughput_vs_direct": med["direct"]["blob_s"] / med["hubcache-warm"]["blob_s"],
    }
    for k, v in ratios.items():
        print(f"{k:<36}{v:6.2f}")
    if extra:
        print_extra(extra)
    summary = {"extra": extra, "blob_bytes": blob_bytes, "image_layers": args.layers, "layer_mib": args.layer_mib,
               "rounds": args.rounds, "median": med, "ratios": ratios, "raw": results}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
