"""Prometheus metrics (prometheus-client), on hubcache_metrics_listen; account names only, never secrets.

With worker processes (`hubcache run --workers N`) prometheus-client runs in its multiprocess mode
(its supervisor sets PROMETHEUS_MULTIPROC_DIR): each worker writes its values to files there, and
the one worker that serves the listener reads them all, so /metrics and the status page count
every worker. Gauges say how their workers' values combine (`multiprocess_mode`)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app, multiprocess
from prometheus_client.exposition import ThreadingWSGIServer

# seconds an upstream request of hubcache's own waited for its turn (upstream/pacing.py)
WAIT_BUCKETS = (0.005, 0.05, 0.25, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
FROM_STORE = frozenset({"hit", "revalidated", "stale"})  # outcomes answered from the store
NOTED = frozenset({"miss", "error", "rejected", "refused"})  # outcomes the status page lists as recent
RECENT = 50  # of them kept
# The status page's answer: nothing may be fetched from elsewhere, or run (runner networks are often closed)
PAGE_HEADERS = [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store"),
                ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:"),
                ("X-Content-Type-Options", "nosniff")]


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Requests to the metrics listener are not logged (Prometheus scrapes it every few seconds)."""


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("hubcache_requests", "Registry requests by kind, cache outcome and registry "
                                "(docker.io, ghcr.io, ...: the registry table's names)", ["kind", "outcome", "registry"], registry=r)
        self.bytes = Counter("hubcache_bytes", "Body bytes sent to clients, by where they came from", ["source"], registry=r)
        self.upstream = Counter("hubcache_upstream_requests", "Requests that reached upstream, by kind", ["kind"], registry=r)
        self.pulls = Counter("hubcache_pulls_spent", "Counted pulls (manifest GETs) spent, by account", ["account"], registry=r)
        self.budget = Gauge("hubcache_pull_budget_remaining", "Pulls left in the window, by account (+Inf: unlimited, paid plan; -1: not known)",
                            ["account"], registry=r, multiprocess_mode="livemostrecent")
        self.upstream_queued = Gauge("hubcache_upstream_queued", "hubcache's own upstream requests waiting for their "
                                     "turn (hubcache_upstream_concurrency, hubcache_upstream_rate), by host", ["host"], registry=r,
                                     multiprocess_mode="livesum")
        self.upstream_active = Gauge("hubcache_upstream_active", "hubcache's own upstream requests under way (a blob "
                                     "download for its whole transfer), by host", ["host"], registry=r, multiprocess_mode="livesum")
        self.upstream_wait = Histogram("hubcache_upstream_wait_seconds", "Seconds hubcache's own upstream requests waited "
                                       "for their turn, by host", ["host"], buckets=WAIT_BUCKETS, registry=r)
        self.parent = Counter("hubcache_parent_requests", "Objects asked of a parent registry (hubcache_parent), by "
                              "registry, kind (manifest, blob) and result (ok, failed)", ["registry", "kind", "result"], registry=r)
        self.parent_fallbacks = Counter("hubcache_parent_fallbacks", "Objects fetched from the registry because the parent "
                                        "could not give them, by registry and kind", ["registry", "kind"], registry=r)
        self.parent_bytes = Counter("hubcache_parent_bytes", "Verified bytes hubcache took from a parent registry, by "
                                    "registry", ["registry"], registry=r)
        self.client_requests = Counter("hubcache_client_requests", "Registry requests by client (its proxy login, else "
                                       "its address; at most hubcache_metrics_clients of them, the rest under "
                                       "'other') and outcome", ["client", "outcome"], registry=r)
        self.client_bytes = Counter("hubcache_client_bytes", "Body bytes sent to clients, by client (as in "
                                    "hubcache_client_requests) and where they came from", ["client", "source"], registry=r)
        self.client_connections = Gauge("hubcache_client_connections", "Client connections open (taken under "
                                        "hubcache_client_max and hubcache_client_max_per_address)", registry=r, multiprocess_mode="livesum")
        self.client_refused = Counter("hubcache_client_refused", "Client connections closed at once, by the cap that "
                                      "refused them (hubcache_client_max, hubcache_client_max_per_address)", ["cap"], registry=r)
        self.client_idle_closed = Counter("hubcache_client_idle_closed", "Client connections closed because they sent no "
                                          "request within hubcache_client_idle seconds", registry=r)
        self._client_series: dict[str, set[tuple[Counter, str]]] = {}  # client -> its series: (counter, other label)
        self.store_bytes = Gauge("hubcache_store_bytes", "Bytes of content in the store", registry=r, multiprocess_mode="livemostrecent")
        self.store_entries = Gauge("hubcache_store_entries", "Entries in the store, by kind", ["kind"], registry=r,
                                   multiprocess_mode="livemostrecent")
        self.store_max_bytes = Gauge("hubcache_store_max_bytes", "The store's size cap, hubcache_max_size (0: no cap)",
                                     registry=r, multiprocess_mode="livemostrecent")
        self.upstream_backoff = Gauge("hubcache_upstream_backoff", "1 while hubcache is not asking an upstream host (it "
                                      "failed: back-off), 0 when it answers; by host ('registry': a registry's hosts)",
                                      ["host"], registry=r, multiprocess_mode="livemax")
        self.pulls_saved = Counter("hubcache_pulls_saved", "Manifest GETs answered from the store (hit, revalidated, "
                                   "stale): pulls the registry did not count, by registry", ["registry"], registry=r)
        self.recent: deque[tuple[float, dict[str, Any]]] = deque(maxlen=RECENT)  # (time, log fields) of misses and errors
        self._server: Any = None  # the WSGI server, while it runs
        self._served: CollectorRegistry | None = None  # what /metrics shows (served())

    def served(self) -> CollectorRegistry:
        """What /metrics shows: this process's registry, or with workers every worker's values
        (a collector that reads the workers' files whenever it is collected: made once)."""
        if self._served is None:
            self._served = self.registry
            if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                self._served = CollectorRegistry()
                multiprocess.MultiProcessCollector(self._served)
        return self._served

    def families(self) -> Iterable[Any]:
        """The metric families as /metrics shows them (for the status page)."""
        return self.served().collect()

    def serve(self, listen: str, page: Callable[[], bytes] | None = None) -> tuple[str, int]:
        """Start the HTTP server on 'host:port': the metrics at /metrics (and any other path, as
        prometheus-client serves them), and `page()`, the status page, at /."""
        host, _, port = listen.rpartition(":")
        metrics = make_wsgi_app(self.served())

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if page is not None and environ.get("PATH_INFO") in ("", "/") and environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
                body = page()
                start_response("200 OK", PAGE_HEADERS + [("Content-Length", str(len(body)))])
                return [b"" if environ["REQUEST_METHOD"] == "HEAD" else body]
            return metrics(environ, start_response)

        addr = host.strip("[]") or "127.0.0.1"

        class Server(ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET

        self._server = make_server(addr, int(port), app, Server, handler_class=_Quiet)
        threading.Thread(target=self._server.serve_forever, name="hubcache-metrics", daemon=True).start()
        return self._server.server_address[:2]

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def observed(self, kind: str, method: str, outcome: str, registry: str, fields: dict[str, Any]) -> None:
        """One registry request ended (its log line's `fields`): a manifest GET from the store is a
        pull saved; a miss or an error is kept for the status page."""
        if kind == "manifest" and method == "GET" and outcome in FROM_STORE:
            self.pulls_saved.labels(registry).inc()
        if outcome in NOTED:
            self.recent.append((time.time(), fields))

    def count_client(self, client: str, outcome: str, source: str = "", size: int = 0) -> None:
        """One request of `client` (a label the caller bounded), and the `size` bytes it was sent
        from `source` (store, upstream; "" for none)."""
        series = self._client_series.setdefault(client, set())
        self.client_requests.labels(client, outcome).inc()
        series.add((self.client_requests, outcome))
        if source:
            self.client_bytes.labels(client, source).inc(size)
            series.add((self.client_bytes, source))

    def forget_client(self, client: str) -> None:
        """Remove every series of `client` (its place was given to another)."""
        for counter, label in self._client_series.pop(client, ()):
            counter.remove(client, label)

    def set_budget(self, account: str, left: float | None) -> None:
        """`left`: pulls left; math.inf for an unlimited account; None when not known."""
        self.budget.labels(account).set(-1 if left is None else left)
