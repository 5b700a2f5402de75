"""scripts/bench's `registries` section: an image on registries other than Docker Hub, pulled with
skopeo direct, through plain mitmdump and through hubcache cold and warm, rounds interleaved.

The registries are the harness's (harness/registries.py): the ghcr-like one (token auth, realm on
its own host) and the mcr-like one (anonymous; every blob GET answered 307 to its data host, which
hubcache follows itself while a client behind mitmdump opens a second tunnel to it). Each round a
fresh store: cold is its first pull, warm a new hubcache process on that store. Upstream requests
of each pull are counted from the registries' own request logs (warm should be 0).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from harness.clients import skopeo_copy

MiB = 1 << 20
MODES = ("direct", "mitmdump", "hubcache-cold", "hubcache-warm")
REGISTRIES = ("ghcr.io", "mcr.microsoft.com")
IMAGE = "bench/image"


def push_images(up, layers: int, layer_mib: int) -> None:
    for i, registry in enumerate(REGISTRIES):
        print(f"bench: pushing a {layers} x {layer_mib} MiB image to {registry}", file=sys.stderr)
        up.push_image(IMAGE, "1", [(layer_mib * MiB, 7000 + 100 * i + n) for n in range(layers)], registry=registry)


def _pull(up, ref: str, dest: Path, proxy, certs: Path) -> tuple[float, int]:
    """(seconds, requests that reached the registry's hosts) of one skopeo pull."""
    import shutil

    mark = up.mark()
    t0 = time.perf_counter()
    res = skopeo_copy(ref, dest, proxy=proxy.url if proxy else None, cert_dir=certs)
    wall = time.perf_counter() - t0
    if res.returncode:
        raise RuntimeError(f"skopeo pull of {ref} failed: {res.stderr}")
    shutil.rmtree(dest)
    return wall, len(up.requests_since(mark))


def registries_section(up, work: Path, certs: Path, start, args) -> dict:
    """Each round, per registry: direct, mitmdump, hubcache cold (fresh store), hubcache warm."""
    import shutil

    push_images(up, args.layers, args.layer_mib)
    results = {r: {m: {"image_s": [], "upstream_requests": []} for m in MODES} for r in REGISTRIES}
    for rnd in range(args.rounds):
        for registry in REGISTRIES:
            key = registry.split(".")[0]
            ref = f"{registry}/{IMAGE}:1"
            store = work / "stores" / f"reg-{key}-{rnd}"
            for mode in MODES:
                proxy = None
                if mode == "mitmdump":
                    proxy = start("mitmdump", name=f"reg-{key}-mitmdump-{rnd}")
                elif mode.startswith("hubcache"):
                    proxy = start("hubcache", store, name=f"reg-{key}-{mode}-{rnd}")
                try:
                    wall, n = _pull(up, ref, work / f"pull-{key}-{mode}-{rnd}", proxy, certs)
                finally:
                    if proxy:
                        proxy.stop()
                results[registry][mode]["image_s"].append(wall)
                results[registry][mode]["upstream_requests"].append(n)
                print(f"bench: round {rnd + 1} {registry} {mode}: image {wall:.2f} s, {n} upstream requests",
                      file=sys.stderr)
            shutil.rmtree(store)
    return summary(results, args)


def summary(results: dict, args) -> dict:
    med = {r: {m: {k: statistics.median(v) for k, v in per.items()} for m, per in modes.items()}
           for r, modes in results.items()}
    ratios = {r: {"cold_image_time_vs_mitmdump": m["hubcache-cold"]["image_s"] / m["mitmdump"]["image_s"],
                  "warm_image_time_vs_mitmdump": m["hubcache-warm"]["image_s"] / m["mitmdump"]["image_s"],
                  "warm_image_time_vs_direct": m["hubcache-warm"]["image_s"] / m["direct"]["image_s"]}
              for r, m in med.items()}
    return {"registries": list(REGISTRIES), "image_layers": args.layers, "layer_mib": args.layer_mib,
            "rounds": args.rounds, "median": med, "ratios": ratios, "raw": results}


def print_registries(t: dict) -> None:
    print(f"\nother registries: image {t['image_layers']} x {t['layer_mib']} MiB via skopeo, median of {t['rounds']} rounds"
          f" (upstream requests: seen by that registry's hosts, its realm and data host included)")
    print(f"{'registry':<20}{'mode':<15}{'image s':>9}{'upstream requests':>19}")
    for registry, modes in t["median"].items():
        for mode, m in modes.items():
            print(f"{registry:<20}{mode:<15}{m['image_s']:>9.2f}{m['upstream_requests']:>19.0f}")
    for registry, ratios in t["ratios"].items():
        for k, v in ratios.items():
            print(f"{registry:<20}{k:<32}{v:6.2f}")
