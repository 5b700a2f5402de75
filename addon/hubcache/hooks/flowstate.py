"""What hubcache decided about one flow, and the one log line (and metrics) each flow ends with."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

from mitmproxy import http

from hubcache import logs
from hubcache.decide.clients import OTHER, ClientLabels
from hubcache.metrics import Metrics
from hubcache.model import Manifest, Outcome, Route
from hubcache.serve.flights import Flight

log = logging.getLogger(__name__)

FROM_STORE = frozenset({Outcome.HIT, Outcome.REVALIDATED, Outcome.STALE})
WARNED = frozenset({Outcome.REJECTED, Outcome.ERROR, Outcome.STALE})  # logged as warnings


@dataclass
class FlowState:
    """Kept in flow.metadata[META] from the request hook to the flow's last hook."""

    route: Route
    registry: str = ""  # the registry logged (routes.logged_registry); "" = the route's
    registry_label: str = ""  # the same as the request counter's label (RegistryTable.label); "" = registry
    outcome: Outcome = Outcome.PASSTHROUGH
    started: float = field(default_factory=time.monotonic)
    digest: str = ""  # the blob a CDN request is for
    repository: str = ""  # its repository
    local_stream: bool = False  # answered by the blob server
    flight: Flight | None = None  # the download this blob miss follows
    direct_bytes: int = 0  # redirected to the blob server's TLS listener: the size it sends
    after_sibling: bool = False  # another worker fetched this manifest meanwhile: asked of the store again
    note: str = ""
    logged: bool = False
    account: str = ""  # the pool account (or "anonymous") hubcache sent this upstream as; "" = the client's own
    stale: Manifest | None = None  # what to serve if upstream refuses (429) a counted pull
    private: bool = False  # fetched with the client's own login: stored as private to its repository
    answered_here: bool = False  # the request hook set the response: upstream was not asked
    verdicts: dict[str, bool] = field(default_factory=dict)  # digest -> may be served from the store (asked upstream)

    @property
    def repo(self) -> str:
        return self.route.repository or self.repository

    @property
    def ref(self) -> str:
        return self.route.reference or self.digest


META = "hubcache"


def state_of(flow: http.HTTPFlow) -> FlowState | None:
    st = flow.metadata.get(META)
    return st if isinstance(st, FlowState) else None


def login_of(flow: http.HTTPFlow) -> str:
    """The client's proxy login (mitmproxy's proxyauth: the user name, never the password); "" for none."""
    auth = flow.metadata.get("proxyauth")
    return str(auth[0]) if isinstance(auth, tuple) and auth and auth[0] else ""


def client_of(flow: http.HTTPFlow) -> str:
    """The client as the log names it: its address and port, after its proxy login if it gave
    one (mitmproxy's proxyauth): `runner7@10.0.0.7:51234`. Never the password."""
    peer = flow.client_conn.peername
    address = f"{peer[0]}:{peer[1]}" if peer else "-"
    login = login_of(flow)
    return f"{login}@{address}" if login else address


class Clients:
    """The per-client metrics: each flow counted under its client's bounded label (decide/clients.py);
    the series of a client whose place was given to another are removed."""

    def __init__(self, metrics: Metrics, limit: int = 0) -> None:
        self.metrics = metrics
        self.labels = ClientLabels(limit)

    def configure(self, limit: int) -> None:
        """hubcache_metrics_clients; a new limit starts the set afresh."""
        if limit != self.labels.limit:
            for name in self.labels.kept | {OTHER}:
                self.metrics.forget_client(name)
            self.labels = ClientLabels(limit)

    def count(self, flow: http.HTTPFlow, outcome: str, source: str, size: int) -> None:
        peer = flow.client_conn.peername
        label, dropped = self.labels.label(login_of(flow), str(peer[0]) if peer else "", time.monotonic())
        if dropped:
            self.metrics.forget_client(dropped)
        if label:
            self.metrics.count_client(label, outcome, source, size)


class Counter(Protocol):
    def count(self, flow: http.HTTPFlow, st: FlowState, size: int | None) -> None: ...


def log_request(flow: http.HTTPFlow, st: FlowState, metrics: Metrics, clients: Clients | None = None,
                warn: bool = False, counting: Counter | None = None) -> None:
    """The flow's one log line and its metrics (per client too, with `clients`; the store's
    counters with `counting`, hooks/counting.py), once:
    `hit GET manifest library/x 1 200 3ms (note)`. A warning when its outcome is one (WARNED) or
    `warn` (upstream failed the transfer)."""
    if st.logged:
        return
    st.logged = True
    registry = st.registry or st.route.registry
    metrics.requests.labels(st.route.kind.value, st.outcome.value, st.registry_label or registry).inc()
    length = flow.response.headers.get("content-length", "") if flow.response is not None else ""
    size = st.direct_bytes or (int(length) if length.isdigit() else None)  # what the client is sent
    source = ""
    if size is not None and not flow.error and flow.request.method == "GET":
        source = "store" if st.outcome in FROM_STORE else "upstream" if st.outcome is Outcome.MISS else ""
        if source:
            metrics.bytes.labels(source).inc(size)
    if clients is not None:
        clients.count(flow, st.outcome.value, source, size or 0)
    if counting is not None:
        counting.count(flow, st, size)
    status = flow.response.status_code if flow.response and not flow.error else "-"
    what = " ".join(x for x in (st.route.kind.value, st.repo, st.ref) if x)
    ms = (time.monotonic() - st.started) * 1000
    client = client_of(flow)
    line = f"{st.outcome.value:<11} {flow.request.method:<4} {what} {status} {ms:.0f}ms {client}"
    if st.note:
        line += f" ({st.note})"
    fields = {
        "outcome": st.outcome.value, "method": flow.request.method, "kind": st.route.kind.value,
        "registry": registry, "repository": st.repo, "reference": st.ref,
        "status": status if isinstance(status, int) else None,
        "bytes": size,
        "duration_ms": round(ms, 1), "client": client, "account": st.account or None, "note": st.note or None,
    }
    metrics.observed(st.route.kind.value, flow.request.method, st.outcome.value, st.registry_label or registry, fields)
    level = logging.WARNING if warn or st.outcome in WARNED else logging.INFO
    logs.event(log, level, "request", line, **fields)
