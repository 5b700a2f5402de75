"""`hubcache export` and `hubcache import`: a store's images to and from an OCI image layout
archive (decide/ocilayout.py says what it holds), for carrying a cache to a host without internet.
Both work beside a running `hubcache run` on the same store."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Protocol

from hubcache.decide.ocilayout import ArchiveError
from hubcache.settings import DEFAULT_HOME
from hubcache.tools import preflight


def add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="e.g. postgres:12.2, docker.io/library/redis:7, ghcr.io/org/app:v1")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the archive to write (a tar)")
    p.add_argument("--store", default=os.path.join(DEFAULT_HOME, "store"), help="LMDB store directory")


def add_import(p: argparse.ArgumentParser) -> None:
    p.add_argument("archive", metavar="FILE", help="an archive `hubcache export` wrote (an OCI image layout tar)")
    p.add_argument("--store", default=os.path.join(DEFAULT_HOME, "store"), help="LMDB store directory (made if missing)")


class Bar(Protocol):
    """What export and import ask of a progress bar (tqdm's)."""

    def update(self, n: int) -> object: ...
    def __enter__(self) -> Bar: ...
    def __exit__(self, *exc: object) -> object: ...


def progress(total: int, what: str) -> Bar:
    """A byte progress bar on stderr (tqdm: small, no dependencies of its own, and silent when
    stderr is not a terminal, so scripts and CI logs get no bar), shown only on a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=what, file=sys.stderr,
                disable=not sys.stderr.isatty(), leave=False)


def run(args: argparse.Namespace) -> int:
    try:
        if args.command == "export":
            from hubcache.tools.exporting import export
            print(export(args.store, args.images, Path(args.output)))
        else:
            from hubcache.tools.importing import import_archive
            print(import_archive(args.store, Path(args.archive)))
    except preflight.Problem as e:
        print(f"hubcache: {e}", file=sys.stderr)
        return e.code
    except ArchiveError as e:
        print(f"hubcache: {args.archive}: {e}: nothing was imported", file=sys.stderr)
        return preflight.EXIT_PROBLEM
    return 0
