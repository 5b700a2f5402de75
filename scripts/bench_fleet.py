"""scripts/bench's `fleet` section (issue 13, docs/design.md "A parent registry"): N hubcache hosts, each with a store of
its own and the same CA, make a cold pull of one image with skopeo, without a parent and with one.

The parent is Debian's docker-registry 2.8 in proxy mode over TLS as https://mirror.internal, with a
CA and a Docker Hub account of its own (harness/parent.py); the hosts bring the team's Hub login
(a 0600 credentials file), so the fake Hub's book tells the parent's counted pulls from the hosts'.
Two variants, each with both set-ups, interleaved in every round:
- sequential: host 1, then 2, then 3, each after the previous one's pull finished and, with the
  parent, after the parent has stored what it fetched (2.8 stores a missed blob from a second
  fetch in the background; asked for it before that, it fetches it once more). That wait is not
  in the hosts' times: it stands for the minutes between two runners' jobs.
- concurrent: the N hosts pull at the same moment.
Every set-up starts empty: new stores, a new parent with empty storage. Docker Hub's side is read
from the fake Hub's logs: counted pulls by account (its book), manifest GETs at the registry host,
body bytes sent by the CDN host. Every pull is compared file by file (sha256) with a direct one.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness.clients import skopeo_copy
from harness.hubenv import CDN_HOST, REGISTRY_HOST
from harness.parent import Parent

MiB = 1 << 20
SETUPS = ("no-parent", "parent")
VARIANTS = ("sequential", "concurrent")
PARENT_ACCOUNT = ("parentbot", "parent-bench-pw")  # the parent's own Docker Hub account
HOSTS_ACCOUNT = ("fleethosts", "fleet-bench-pw")  # the team's login every hubcache host brings
IMAGE = "library/benchfleet"
REF = f"docker.io/{IMAGE}:1"


def file_digests(d: Path) -> dict[str, str]:
    """sha256 of every file of a skopeo `dir:` pull (manifest and blobs, as downloaded)."""
    out = {}
    for p in sorted(d.iterdir()):
        if p.name != "version":
            h = hashlib.sha256()
            with open(p, "rb") as f:
                while chunk := f.read(MiB):
                    h.update(chunk)
            out[p.name] = h.hexdigest()
    return out


def pull_checked(dest: Path, proxy, certs: Path, reference: dict[str, str] | None) -> tuple[float, dict[str, str]]:
    """One skopeo pull (through `proxy`, or direct if None); (seconds, its files' digests), which
    must equal `reference`'s if given. The pulled files are removed."""
    t0 = time.perf_counter()
    res = skopeo_copy(REF, dest, proxy=proxy.url if proxy else None, cert_dir=certs)
    wall = time.perf_counter() - t0
    try:
        if res.returncode:
            raise RuntimeError(f"bench: fleet pull of {REF} via {proxy.url if proxy else 'direct'} failed: {res.stderr}")
        got = file_digests(dest)
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    if reference is not None and got != reference:
        raise RuntimeError(f"bench: fleet pull via {proxy.url} is not byte-identical to a direct pull: "
                           f"{sorted(set(got.items()) ^ set(reference.items()))}")
    return wall, got


def credentials_file(work: Path) -> Path:
    path = work / "fleet-hub.toml"
    user, password = HOSTS_ACCOUNT
    path.write_text(f'[[accounts]]\nusername = "{user}"\npassword = "{password}"\n')
    path.chmod(0o600)
    return path


def fleet_section(up, work: Path, certs: Path, start, args) -> dict:
    up.add_account(*PARENT_ACCOUNT)
    up.add_account(*HOSTS_ACCOUNT)
    creds = credentials_file(work)
    print(f"bench: fleet: pushing a {args.fleet_layers} x {args.layer_mib} MiB image", file=sys.stderr)
    img = up.push_image(IMAGE, "1", [(args.layer_mib * MiB, 8000 + i) for i in range(args.fleet_layers)])
    _, reference = pull_checked(work / "fleet-direct", None, certs, None)
    expected = {"manifest.json", *(d.split(":", 1)[1] for d in (img.config_digest, *img.layer_digests))}
    if set(reference) != expected:  # the reference every pull is held to must be the whole image
        raise RuntimeError(f"bench: the direct pull of {REF} has files {sorted(reference)}, not {sorted(expected)}")
    results: dict = {v: {s: [] for s in SETUPS} for v in VARIANTS}
    # Its threads live until the end of the section: a proxy is started with PR_SET_PDEATHSIG, which
    # kills it when the *thread* that started it exits.
    with ThreadPoolExecutor(args.fleet_hosts) as starter:
        for rnd, variant, setup in itertools.product(range(args.rounds), VARIANTS, SETUPS):
            with up.cdn_rate(args.fleet_link_mbps * 1e6) if args.fleet_link_mbps else contextlib.nullcontext():
                r = fleet_run(up, work, certs, start, starter, args, creds, img, reference, variant, setup, rnd)
            results[variant][setup].append(r)
            print(f"bench: fleet round {rnd + 1} {variant} {setup}: total {r['total_s']:.2f} s, hosts "
                  + " ".join(f"{s:.2f}" for s in r["host_s"])
                  + f" s; counted pulls {r['pulls']}; {r['manifest_gets']} manifest GETs,"
                  f" {r['cdn_gets']} CDN GETs, {r['cdn_bytes'] / 1e6:.0f} MB from the CDN", file=sys.stderr)
    return fleet_summary(results, img, args)


def fleet_run(up, work: Path, certs: Path, start, starter: ThreadPoolExecutor, args, creds: Path, img,
              reference: dict[str, str], variant: str, setup: str, rnd: int) -> dict:
    """One set-up, from empty: N new hosts (and a new parent), N cold pulls, what Hub saw. The hosts
    are started side by side (a second or two each) by `starter`'s threads."""
    tag = f"{variant}-{setup}-{rnd}"
    parent = None
    if setup == "parent":
        parent = Parent(work / "parents" / tag, up, PARENT_ACCOUNT, tls=True).start()
    stores = [work / "stores" / f"fleet-{tag}-{i}" for i in range(args.fleet_hosts)]
    try:
        sets = [f"hubcache_credentials={creds}"]
        if parent:
            sets += [f"hubcache_parent={parent.url}", f"hubcache_parent_ca={parent.ca_cert}"]
        hosts = list(starter.map(lambda i: start("hubcache", stores[i], name=f"fleet-{tag}-{i}", sets=sets),
                                 range(len(stores))))
        pulls_before, mark = up.pulls_by_account(), up.mark()
        pmark = parent.mark() if parent else 0
        dests = [work / f"fleet-pull-{tag}-{i}" for i in range(len(hosts))]
        host_s, total, waited = pull_all(variant, list(zip(hosts, dests, strict=True)), certs, reference, parent, img)
        out = hub_book(up, pulls_before, mark)
        out.update(host_s=host_s, total_s=total, parent_store_wait_s=waited,
                   parent_requests=len(parent.requests_since(pmark)) if parent else 0)
        list(starter.map(lambda h: h.stop(), hosts))
        return out
    finally:
        if parent:
            parent.close()
            shutil.rmtree(parent.workdir, ignore_errors=True)
        for store in stores:
            shutil.rmtree(store, ignore_errors=True)


def pull_all(variant: str, pulls: list, certs: Path, reference: dict[str, str], parent: Parent | None,
             img) -> tuple[list[float], float, float]:
    """Each (host, dest) pulls once, in turn or all at once: (seconds of each, total seconds, seconds
    waited between two hosts for the parent to store what it fetched)."""
    if variant == "concurrent":
        t0 = time.perf_counter()
        with ThreadPoolExecutor(len(pulls)) as pool:
            host_s = [w for w, _ in pool.map(lambda hd: pull_checked(hd[1], hd[0], certs, reference), pulls)]
        return host_s, time.perf_counter() - t0, 0.0
    host_s, waited = [], 0.0
    for host, dest in pulls:
        host_s.append(pull_checked(dest, host, certs, reference)[0])
        if parent:
            t0 = time.perf_counter()
            parent.wait_stored([img.config_digest, *img.layer_digests], timeout=60)
            waited += time.perf_counter() - t0
    return host_s, sum(host_s), waited


def hub_book(up, pulls_before: dict[str, int], mark: int) -> dict:
    """What Docker Hub saw since `mark`: counted pulls by account, manifest GETs, CDN GETs and bytes."""
    after = up.pulls_by_account()
    pulls = {k: n - pulls_before.get(k, 0) for k, n in after.items() if n != pulls_before.get(k, 0)}
    reqs = up.requests_since(mark)
    manifests = [r for r in reqs if r.host == REGISTRY_HOST and r.method == "GET" and "/manifests/" in r.path]
    heads = [r for r in reqs if r.host == REGISTRY_HOST and r.method == "HEAD" and "/manifests/" in r.path]
    cdn = [r for r in reqs if r.host == CDN_HOST and r.method == "GET"]
    return {"pulls": pulls, "pulls_parent": pulls.get(PARENT_ACCOUNT[0], 0), "pulls_hosts": pulls.get(HOSTS_ACCOUNT[0], 0),
            "pulls_other": sum(n for k, n in pulls.items() if k not in (PARENT_ACCOUNT[0], HOSTS_ACCOUNT[0])),
            "manifest_gets": len(manifests), "manifest_heads": len(heads), "cdn_gets": len(cdn),
            "cdn_bytes": sum(r.bytes for r in cdn)}


NUMBERS = ("pulls_parent", "pulls_hosts", "pulls_other", "manifest_gets", "manifest_heads", "cdn_gets", "cdn_bytes",
           "total_s", "parent_store_wait_s", "parent_requests")
RATIOS = {"counted_pulls": ("pulls_parent", "pulls_hosts", "pulls_other"), "cdn_bytes": ("cdn_bytes",),
          "manifest_gets": ("manifest_gets",), "total_s": ("total_s",)}


def fleet_summary(results: dict, img, args) -> dict:
    med: dict = {}
    for variant, setups in results.items():
        med[variant] = {}
        for setup, runs in setups.items():
            m = {k: statistics.median(r[k] for r in runs) for k in NUMBERS}
            m["host_s"] = [statistics.median(r["host_s"][i] for r in runs) for i in range(args.fleet_hosts)]
            med[variant][setup] = m
    ratios = {v: {name: _ratio(sum(s["parent"][k] for k in keys), sum(s["no-parent"][k] for k in keys))
                  for name, keys in RATIOS.items()} for v, s in med.items()}
    blob_bytes = sum(img.layer_sizes) + len(img.config_bytes)  # what a cold pull takes from the CDN
    return {"hosts": args.fleet_hosts, "cdn_link_mbps": args.fleet_link_mbps or None, "image_layers": args.fleet_layers, "layer_mib": args.layer_mib,
            "blob_bytes": blob_bytes, "rounds": args.rounds, "median": med, "ratios_parent_vs_no_parent": ratios,
            "raw": results}


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def print_fleet(t: dict) -> None:
    n = t["hosts"]
    link = f"each connection paced at {t['cdn_link_mbps']:g} MB/s" if t["cdn_link_mbps"] else "loopback"
    print(f"\nfleet: {n} hubcache hosts (own stores, one CA, the team's Hub login), each a cold skopeo pull of one"
          f" {t['image_layers']} x {t['layer_mib']} MiB image ({t['blob_bytes'] / 1e6:.0f} MB of blobs), median of {t['rounds']} rounds;"
          f" CDN: {link};"
          f" every pull byte-identical to a direct one. Parent: docker-registry 2.8 in proxy mode, its own Hub account."
          f" sequential: one host after the other (the parent's background store awaited between, not timed);"
          f" concurrent: all at once. Counted pulls, manifest GETs and CDN bytes as seen by Docker Hub.")
    hosts = " ".join(f"{'host' + str(i + 1) + ' s':>8}" for i in range(n))
    print(f"{'variant':<12}{'set-up':<11}{'pulls parent':>13}{'pulls hosts':>12}{'other':>6}{'manifest GETs':>14}"
          f"{'HEADs':>6}{'CDN GETs':>9}{'CDN MB':>8}{'x blobs':>8}{hosts}{'total s':>8}")
    for variant, setups in t["median"].items():
        for setup, m in setups.items():
            print(f"{variant:<12}{setup:<11}{m['pulls_parent']:>13.0f}{m['pulls_hosts']:>12.0f}{m['pulls_other']:>6.0f}"
                  f"{m['manifest_gets']:>14.0f}{m['manifest_heads']:>6.0f}{m['cdn_gets']:>9.0f}{m['cdn_bytes'] / 1e6:>8.0f}"
                  f"{m['cdn_bytes'] / t['blob_bytes']:>8.2f}" + "".join(f"{s:>8.2f}" for s in m["host_s"])
                  + f"{m['total_s']:>8.2f}")
    for variant, ratios in t["ratios_parent_vs_no_parent"].items():
        print(f"{variant:<12}parent/no-parent: " + ", ".join(
            f"{k} {'-' if v is None else f'{v:.2f}'}" for k, v in ratios.items()))
