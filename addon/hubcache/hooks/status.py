"""The status page's data: gathered from the metrics, Docker Hub's health and budgets, and the
store, when the page is asked (on the metrics server's thread); the charts' samples are taken on
the event loop (`sample`, every ACCESS_FLUSH_SECONDS; status/snapshot.History keeps one a minute)."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

from hubcache import __version__, logs
from hubcache.hooks.services import Services
from hubcache.metrics import FROM_STORE
from hubcache.model import ImageCounter
from hubcache.status import page
from hubcache.status.snapshot import Account, History, Recent, Sample, Snapshot, Upstream
from hubcache.upstream.dockerhub import REGISTRY

log = logging.getLogger(__name__)

CONTENT = frozenset({"manifest", "blob", "cdn"})  # the requests the hit ratio is of


def _values(svc: Services) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of the metrics, by name: name -> [(labels, value)]."""
    out: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in svc.metrics.families():
        for s in family.samples:
            out[s.name].append((s.labels, s.value))
    return out


def totals(values: dict[str, list[tuple[dict[str, str], float]]], now: float) -> Sample:
    hits = misses = 0.0
    for labels, v in values.get("hubcache_requests_total", []):
        if labels.get("kind") in CONTENT:
            if labels.get("outcome") in FROM_STORE:
                hits += v
            elif labels.get("outcome") == "miss":
                misses += v
    sent = {labels.get("source"): v for labels, v in values.get("hubcache_bytes_total", [])}
    return Sample(now, hits, misses, sent.get("store", 0.0), sent.get("upstream", 0.0))


class StatusPage:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.history = History()
        self.started = time.time()

    def sample(self) -> None:
        """A sample for the charts, and the gauges the alert rules read: the store's cap, each
        upstream host's back-off (this worker's view: every worker sets them). The charts' samples
        read every worker's metrics: only the worker that serves the page takes them."""
        svc, now = self.svc, time.time()
        if svc.role.serves_metrics:
            self.history.add(totals(_values(svc), now))
        svc.metrics.store_max_bytes.set(svc.settings.max_size)
        for host, why, _, _ in [*svc.dockerhub.health.states(now), *svc.parent.health.states(now)]:
            svc.metrics.upstream_backoff.labels(host).set(1 if why else 0)

    def html(self) -> bytes:
        """The page; on a failure to gather (the store closing under it), a page that says so."""
        try:
            return page.render(self.snapshot()).encode()
        except Exception as e:
            logs.event(log, logging.WARNING, "status_page_failed", f"the status page could not be made: {e} "
                       "(a bug: report it with this line; /metrics still answers)", error=str(e))
            return f"<!DOCTYPE html><title>hubcache status</title><p>The status page failed: {type(e).__name__}</p>".encode()

    def snapshot(self) -> Snapshot:
        svc, now = self.svc, time.time()
        values = _values(svc)
        spent = {labels["account"]: v for labels, v in values.get("hubcache_pulls_spent_total", [])}
        left = {labels["account"]: v for labels, v in values.get("hubcache_pull_budget_remaining", [])}
        names = sorted(set(svc.dockerhub.account_names()) | spent.keys() | left.keys())
        accounts = tuple(Account(n, spent.get(n, 0.0), None if left.get(n, -1.0) < 0 else left[n]) for n in names)
        upstream = tuple(Upstream(_shown(h), why, secs, ok) for h, why, secs, ok in
                         [*svc.dockerhub.health.states(now), *svc.parent.health.states(now)])
        store_bytes, entries, images = self._store()
        return Snapshot(now=now, started=self.started, samples=self.history.with_now(totals(values, now)),
                        saved=sum(v for _, v in values.get("hubcache_pulls_saved_total", [])), accounts=accounts,
                        upstream=upstream, offline=svc.settings.offline, images=images, store_bytes=store_bytes,
                        store_cap=svc.settings.max_size, recent=tuple(_recent(svc)), version=__version__, entries=entries)

    def _store(self) -> tuple[int | None, dict[str, int], tuple[ImageCounter, ...] | None]:
        store = self.svc.store
        if store is None:
            return None, {}, None
        counters = getattr(store, "image_counters", None)  # the store's per-image counters, where it keeps them
        images = tuple(counters()) if counters is not None else None
        return store.size(), store.counts(), images


def _recent(svc: Services) -> list[Recent]:
    out = []
    for at, f in reversed(list(svc.metrics.recent)):
        what = " ".join(str(x) for x in (f.get("kind"), f.get("repository"), f.get("reference")) if x)
        out.append(Recent(at, str(f.get("outcome", "")), str(f.get("method", "")), what, _int(f.get("status")),
                          str(f.get("client", "")), str(f.get("note") or "")))
    return out


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) else None


def _shown(key: str) -> str:
    """A health key as the page names it: Docker Hub's registry hosts share one, a parent's is
    `parent:<registry>`."""
    if key == REGISTRY:
        return "registry-1.docker.io (Docker Hub's registry)"
    if key.startswith("parent:"):
        return f"parent of {key.removeprefix('parent:')}"
    return key
