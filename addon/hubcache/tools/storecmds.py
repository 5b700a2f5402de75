"""`hubcache stats`, `ls` and `evict`: what the store served and holds, and making room. Each works
beside a running `hubcache run` on the same store: stats and ls open it read-only; evict opens it
without the proxy's lock (LMDB serialises the writers of both processes) and leaves the proxy's
writes in progress alone."""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import sys
import time
from typing import Any

from hubcache.registries import image_name
from hubcache.settings import DEFAULT_HOME, parse_size
from hubcache.store import Store
from hubcache.store.counters import CLIENT, IMAGE, TOTAL
from hubcache.store.inventory import CachedImage, only_theirs
from hubcache.tools import preflight

COMMANDS = ("stats", "ls", "evict")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def add_arguments(sub: Any) -> None:
    store = {"default": os.path.join(DEFAULT_HOME, "store"), "help": "LMDB store directory"}
    stats = sub.add_parser("stats", help="what the store served and saved, per image, per client and in total")
    stats.add_argument("--store", **store)
    stats.add_argument("--json", action="store_true", help="one JSON document instead of tables")
    ls = sub.add_parser("ls", help="the cached images and tags, their sizes and last use")
    ls.add_argument("--store", **store)
    ls.add_argument("pattern", nargs="?", default="*", help="glob on the image name, e.g. 'postgres:*' or 'quay.io/org/*'")
    ev = sub.add_parser("evict", help="remove cached content: unused for a while, down to a size, or named images")
    ev.add_argument("--store", **store)
    ev.add_argument("--older-than", metavar="DURATION", help="what was not used for this long: 30d, 12h, 90m, 2w")
    ev.add_argument("--to-size", metavar="SIZE", help="least recently used first until the store is this small: 20g")
    ev.add_argument("images", nargs="*", default=[], metavar="IMAGE",
                    help="the images' content no other cached image uses: postgres:12.2, or postgres for all its tags")


def run(args: argparse.Namespace) -> int:
    try:
        store = preflight.open_existing(args.store, readonly=args.command != "evict", beside=True)
    except preflight.Problem as e:
        print(f"hubcache: {e}", file=sys.stderr)
        return e.code
    try:
        return {"stats": stats, "ls": ls, "evict": evict}[args.command](store, args)
    except ValueError as e:
        print(f"hubcache: {e}", file=sys.stderr)
        return preflight.EXIT_USAGE
    finally:
        store.close()


# -- stats ----------------------------------------------------------------------------------------

def stats_document(store: Store) -> dict[str, Any]:
    """What `stats --json` prints: the totals, every image (most pulled first) and every client."""
    images, clients, total = [], [], {"pulls": 0, "hits": 0, "bytes": 0, "store_bytes": 0}
    for key, r in store.counters.records().items():
        row = {"pulls": r["pulls"], "saved": r["hits"], "bytes": r["bytes"], "store_bytes": r["store_bytes"],
               "first": r["first"], "last": r["last"]}
        if key.startswith(IMAGE):
            reference, _, digest = key[len(IMAGE):].decode().partition("\0")
            images.append({"reference": reference, "digest": digest, **row})
        elif key.startswith(CLIENT):
            clients.append({"client": key[len(CLIENT):].decode(), **row})
        elif key == TOTAL:
            total = {k: r[k] for k in total}
    images.sort(key=lambda i: (-i["pulls"], -i["bytes"], i["reference"]))
    clients.sort(key=lambda c: (-c["pulls"], -c["bytes"], c["client"]))
    return {"store": str(store.path), "size": store.size(),
            "total": {"pulls": total["pulls"], "saved": total["hits"], "upstream": total["pulls"] - total["hits"],
                      "bytes": total["bytes"], "store_bytes": total["store_bytes"]},
            "images": images, "clients": clients}


def stats(store: Store, args: argparse.Namespace) -> int:
    doc = stats_document(store)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    t = doc["total"]
    print(f"store {doc['store']}: {human(doc['size'])} stored")
    print(f"served {t['pulls']} pulls: {t['saved']} from the store (Docker Hub pulls saved), {t['upstream']} "
          f"from upstream; {human(t['bytes'])} sent, {human(t['store_bytes'])} of it from the store")
    if doc["images"]:
        print(f"\n{'PULLS':>7} {'SAVED':>7} {'SENT':>10} {'LAST PULLED':<20}  IMAGE")
        for i in doc["images"]:
            print(f"{i['pulls']:>7} {i['saved']:>7} {human(i['bytes']):>10} {stamp(i['last']):<20}  "
                  f"{i['reference']}  {short(i['digest'])}")
    if doc["clients"]:
        print(f"\n{'PULLS':>7} {'SAVED':>7} {'SENT':>10} {'LAST SEEN':<20}  CLIENT")
        for c in doc["clients"]:
            print(f"{c['pulls']:>7} {c['saved']:>7} {human(c['bytes']):>10} {stamp(c['last']):<20}  {c['client']}")
    return 0


# -- ls -------------------------------------------------------------------------------------------

def names(image: CachedImage) -> list[str]:
    """The names a pattern may match: docker.io/library/postgres:12.2, library/postgres:12.2,
    postgres:12.2 (and each without the tag)."""
    full = image_name(image.repository)
    out = [full, image.repository]
    if image.repository.startswith("library/"):
        out.append(image.repository[len("library/"):])
    return out + [f"{n}:{image.tag}" for n in out]


def ls(store: Store, args: argparse.Namespace) -> int:
    found = [i for i in store.inventory.images() if any(fnmatch.fnmatchcase(n, args.pattern) for n in names(i))]
    if not found:
        print(f"hubcache: no cached image matches {args.pattern}", file=sys.stderr)
        return preflight.EXIT_PROBLEM
    print(f"{'SIZE':>10} {'LAST USED':<20}  IMAGE")
    for i in found:
        print(f"{human(i.size):>10} {stamp(i.last_used):<20}  {image_name(i.repository)}:{i.tag}  {short(i.digest)}")
    return 0


# -- evict ----------------------------------------------------------------------------------------

def parse_duration(text: str) -> float:
    """`30d`, `12h`, `90m`, `45s`, `2w` (or plain seconds) -> seconds. Raises ValueError."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw]?)", text.strip().lower())
    if not m:
        raise ValueError(f"--older-than {text!r}: give a duration such as 30d, 12h, 90m or 2w")
    return float(m[1]) * UNITS[m[2] or "s"]


def chosen(images: list[CachedImage], wanted: list[str]) -> list[CachedImage]:
    """The stored images the IMAGE arguments name; ValueError naming one that names none."""
    from hubcache.decide.routes import parse_reference

    out = []
    for text in wanted:
        repository, ref = parse_reference(text)
        hits = [i for i in images if i.repository == repository and ref in (None, i.tag, i.digest)]
        if not hits:
            raise ValueError(f"{text} is not in the store (hubcache ls lists what is): nothing evicted")
        out += hits
    return out


def evict(store: Store, args: argparse.Namespace) -> int:
    if sum((args.older_than is not None, args.to_size is not None, bool(args.images))) != 1:
        raise ValueError("evict takes one of --older-than DURATION, --to-size SIZE, or IMAGE...")
    before = store.size()
    if args.older_than is not None:
        store.flush_access()
        victims = store.inventory.unused_since(time.time() - parse_duration(args.older_than))
    elif args.to_size is not None:
        victims = []
        target = parse_size(args.to_size)
        while store.size() > target and (oldest := store.inventory.oldest()) is not None:
            store.delete(oldest)
            victims.append(oldest)
    else:
        images = store.inventory.images()
        victims = sorted(only_theirs(images, chosen(images, args.images)))
    for digest in victims:
        if args.to_size is None:
            store.delete(digest)
    print(f"evicted {len(victims)} manifests and blobs, {human(before - store.size())} freed; "
          f"{human(store.size())} stored")
    return 0


def human(n: float) -> str:
    """Bytes for people: 512 B, 1.5 MiB, 20.0 GiB."""
    if abs(n) < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if abs(n) < 1024 or unit == "GiB":
            break
    return f"{n:.1f} {unit}"


def stamp(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when)) if when else "-"


def short(digest: str) -> str:
    return digest[:19] if digest.startswith("sha256:") else digest
