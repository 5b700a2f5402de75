"""`hubcache warm`: the command line, the progress bar, the summary and the exit code."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TextIO

from tqdm import tqdm

from hubcache.settings import DEFAULT_HOME
from hubcache.tools import preflight
from hubcache.tools.doctor.proxyenv import ProxyURL, parse_proxy
from hubcache.tools.warm import platforms, sources
from hubcache.tools.warm.client import Client, NotIntercepted
from hubcache.tools.warm.gitlabci import Skipped
from hubcache.tools.warm.pull import Progress, Pulled, Puller, PullError

DEFAULT_PROXY = "http://127.0.0.1:3128"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="a .gitlab-ci.yml (or a directory holding one), a file listing images (one a line), or an image")
    p.add_argument("--proxy", default=DEFAULT_PROXY, help=f"hubcache's address, http://[USER:PASS@]HOST:PORT (default {DEFAULT_PROXY})")
    p.add_argument("--cacert", default=os.path.join(DEFAULT_HOME, "mitmproxy-ca-cert.pem"),
                   help="hubcache's CA certificate (default: the one in the default confdir)")
    p.add_argument("--platform", action="append", default=[], metavar="OS/ARCH[/VARIANT]",
                   help="fetch this platform's manifest and blobs from multi-platform images (repeatable; default: this host's)")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                   help="a value for a variable the CI file uses but does not set, e.g. CI_REGISTRY_IMAGE (repeatable)")
    p.add_argument("--jobs", type=int, default=4, help="images pulled at once (default 4)")
    p.add_argument("--list", action="store_true", help="only print the images the sources name, pull nothing")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _why(e: BaseException, proxy: ProxyURL) -> str:
    if isinstance(e, PullError | NotIntercepted):
        return str(e)
    if isinstance(e, ConnectionRefusedError):
        return f"cannot reach the proxy at {proxy.show()}: start hubcache, or give --proxy"
    if isinstance(e, OSError) and "Tunnel connection failed" in str(e):
        return f"the proxy refused the tunnel ({e}): a proxy login is given as --proxy http://USER:PASS@HOST:PORT"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _gather(args: argparse.Namespace) -> tuple[list[sources.Wanted], list[Skipped], list[Skipped]]:
    variables = dict(v.split("=", 1) for v in args.var)
    wanted: list[sources.Wanted] = []
    skipped: list[Skipped] = []
    for source in args.sources:
        w, s = sources.read_source(source, variables)
        wanted += w
        skipped += s
    good, invalid = sources.check(wanted)
    return good, skipped, invalid


def _options(args: argparse.Namespace, out: TextIO) -> tuple[ProxyURL, list[platforms.Platform]] | int:
    try:
        proxy = parse_proxy(args.proxy)
        wanted = [platforms.parse(p) for p in args.platform] or [platforms.of_host()]
        if any("=" not in v for v in args.var):
            raise ValueError("--var takes NAME=VALUE")
        if args.jobs < 1:
            raise ValueError("--jobs must be 1 or more")
    except ValueError as e:
        print(f"hubcache: {e}", file=sys.stderr)
        return preflight.EXIT_USAGE
    if not args.list and not os.path.isfile(args.cacert):
        print(f"hubcache: --cacert {args.cacert}: no such file: give hubcache's CA (<confdir>/mitmproxy-ca-cert.pem)",
              file=sys.stderr)
        return preflight.EXIT_USAGE
    return proxy, wanted


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    opts = _options(args, out)
    if isinstance(opts, int):
        return opts
    proxy, wanted_platforms = opts
    try:
        wanted, skipped, invalid = _gather(args)
    except sources.SourceError as e:
        print(f"hubcache: {e}", file=sys.stderr)
        return preflight.EXIT_USAGE
    if args.list:
        for w in wanted:
            print(f"{sources.canonical(w.image)}  ({w.origin})", file=out)
        _report_skips(skipped, invalid, out)
        return preflight.EXIT_PROBLEM if invalid else 0
    results, failed = _pull_all(args, proxy, wanted_platforms, wanted, out)
    _report_skips(skipped, invalid, out)
    for w, why in failed:
        print(f"failed   {sources.canonical(w.image)} ({w.origin}): {why}", file=out)
    print(f"warmed {len(results)} of {len(wanted) + len(invalid)} images for {', '.join(map(str, wanted_platforms))}: "
          f"{sum(p.blobs for p in results)} blobs, {_human(sum(p.bytes for p in results))}; "
          f"{len(skipped)} skipped, {len(failed) + len(invalid)} failed", file=out)
    return preflight.EXIT_PROBLEM if failed or invalid else 0


def _report_skips(skipped: list[Skipped], invalid: list[Skipped], out: TextIO) -> None:
    for s in skipped:
        print(f"skipped  {s.text} ({s.origin}): {s.reason}", file=out)
    for s in invalid:
        print(f"failed   {s.text} ({s.origin}): {s.reason}", file=out)


def _pull_all(args: argparse.Namespace, proxy: ProxyURL, wanted_platforms: list[platforms.Platform],
              wanted: list[sources.Wanted], out: TextIO) -> tuple[list[Pulled], list[tuple[sources.Wanted, str]]]:
    bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc="warming", disable=None, file=sys.stderr)
    lock = threading.Lock()
    local = threading.local()
    clients: list[Client] = []

    def expect(n: int) -> None:
        with lock:
            bar.total += n
            bar.refresh()

    def got(n: int) -> None:
        with lock:
            bar.update(n)

    def one(w: sources.Wanted) -> Pulled:
        if not hasattr(local, "puller"):
            client = Client(proxy, args.cacert)
            with lock:
                clients.append(client)
            local.puller = Puller(client, wanted_platforms, Progress(expect, got))
        return local.puller.pull(w.image)

    results: list[Pulled] = []
    failed: list[tuple[sources.Wanted, str]] = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for w, future in [(w, pool.submit(one, w)) for w in wanted]:
            try:
                p = future.result()
            except Exception as e:  # one image's failure is reported, the others go on
                failed.append((w, _why(e, proxy)))
                continue
            results.append(p)
            bar.write(f"ok       {p.image} {' '.join(p.platforms) or '(single-platform)'}: {p.blobs} blobs, "
                      f"{_human(p.bytes)}", file=out)
    bar.close()
    for c in clients:
        c.close()
    return results, failed
