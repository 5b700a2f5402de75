"""Client connections hubcache takes and keeps (hubcache_client_max, hubcache_client_max_per_address,
hubcache_client_idle). A connection over a cap is not counted: its first request is answered 503
with the reason (Go clients show it: `Get "https://...": hubcache: 50 connections are open from
10.0.0.7, ...`) and the connection closed; it gets REFUSING_SECONDS to send it, and when more than
REFUSING_MOST such connections wait at once, any more are closed before anything is read. A taken
connection that has not sent a whole first request after `client_idle` seconds is closed then. The
policy is decide/admission.py; this module holds the connections' timers and closes them through
mitmproxy.

After the first request, mitmproxy's own tcp_timeout (60 s under hubcache) closes a connection on
which nothing moves."""

from __future__ import annotations

import asyncio
import logging
import time

from mitmproxy import connection, ctx, http

from hubcache import logs
from hubcache.decide.admission import Admission, RefusalLog
from hubcache.decide.clients import address_name
from hubcache.metrics import Metrics
from hubcache.settings import Settings
from hubcache.worker import ALONE, Role

log = logging.getLogger(__name__)

REFUSING_SECONDS = 5  # an over-cap connection's time to send the request its 503 answers
REFUSING_MOST = 256  # over-cap connections waiting for that at once; more are closed at once


class ConnectionLimits:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.admission = Admission(Settings.client_max, Settings.client_max_per_address)
        self.idle = Settings.client_idle
        self.refusals = RefusalLog()  # one line per address a minute
        self.idlers = RefusalLog()  # idle connections closed: likewise
        self._taken: dict[str, str] = {}  # client id -> its address, for the connections taken
        self._timers: dict[str, asyncio.TimerHandle] = {}  # client id -> its first request's deadline
        self._refusing: dict[str, str] = {}  # client id -> why, for the over-cap connections to answer 503

    def configure(self, s: Settings, role: Role = ALONE) -> None:
        """New caps apply to connections from now on; open ones stay. A worker of several takes
        its share of hubcache_client_max (the kernel spreads connections evenly over the workers'
        sockets); the cap per address applies in each worker: a share of it could refuse an
        address below its cap when the kernel's spread is uneven."""
        self.admission.total, self.admission.per_address = role.share_of(s.client_max), s.client_max_per_address
        self.idle = s.client_idle

    def connected(self, client: connection.Client) -> None:
        if client.error:  # refused already (mitmproxy's block_global, block_private): not counted
            return
        address = client.peername[0] if client.peername else ""
        refused = self.admission.admit(address)
        if refused is not None:
            why = f"hubcache: {refused.why} ({refused.cap})"
            if len(self._refusing) >= REFUSING_MOST or not self._deadline(client.id, REFUSING_SECONDS):
                client.error = why  # mitmproxy closes it, reading nothing
            else:
                self._refusing[client.id] = why
            self.metrics.client_refused.labels(refused.cap).inc()
            if n := self.refusals.note(address, time.monotonic()):
                name = address_name(address)
                logs.event(log, logging.WARNING, "client_refused",
                           f"refused {n} connection(s) from {name}: {refused.why}; if they are real clients, raise "
                           f"{refused.cap}, else find what holds connections open on {name}",
                           client=name, refused=n, cap=refused.cap, reason=refused.why)
            return
        self._taken[client.id] = address
        self.metrics.client_connections.set(self.admission.open)
        if self.idle:
            self._deadline(client.id, self.idle)

    def _deadline(self, client_id: str, seconds: float) -> bool:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # driven by tests without a loop
            return False
        self._timers[client_id] = loop.call_later(seconds, self._expire, client_id)
        return True

    def spoke(self, client: connection.Client) -> None:
        """The client sent a whole request: no first-request deadline any more; an over-cap
        connection is closed (a TLS-first mode's: no HTTP request to answer)."""
        if timer := self._timers.pop(client.id, None):
            timer.cancel()
        if self._refusing.pop(client.id, None):
            _close(client.id, "over a cap")

    def request(self, flow: http.HTTPFlow) -> bool:
        """A client's request (CONNECT, or plain HTTP): True when it was answered 503 here, its
        connection being over a cap."""
        why = self._refusing.pop(flow.client_conn.id, None)
        self.spoke(flow.client_conn)
        if why is None:
            return False
        flow.response = http.Response.make(503, why.encode() + b"\n", {"Content-Type": "text/plain", "Connection": "close"})
        flow.response.reason = why  # what Go clients show of a refused CONNECT
        return True

    def disconnected(self, client: connection.Client) -> None:
        self._refusing.pop(client.id, None)
        self.spoke(client)
        address = self._taken.pop(client.id, None)
        if address is not None:
            self.admission.release(address)
            self.metrics.client_connections.set(self.admission.open)

    def _expire(self, client_id: str) -> None:
        self._timers.pop(client_id, None)
        if self._refusing.pop(client_id, None):
            _close(client_id, "over a cap")
            return
        address = self._taken.get(client_id)
        if address is None or not _close(client_id, "idle"):
            return
        self.metrics.client_idle_closed.inc()
        if n := self.idlers.note(address, time.monotonic()):
            name = address_name(address)
            logs.event(log, logging.INFO, "client_idle", f"closed {n} connection(s) from {name} that sent no request "
                       f"within {self.idle} s (hubcache_client_idle)", client=name, closed=n, seconds=self.idle)


def _close(client_id: str, why: str) -> bool:
    """Close a client connection as mitmproxy's own inactivity timeout does; False if it is gone."""
    try:
        handler = ctx.master.addons.get("proxyserver").connections.get(client_id)
    except AttributeError:  # no proxy server (tests)
        return False
    io = handler.transports.get(handler.client) if handler is not None else None
    if io is None or io.handler is None:
        return False
    io.handler.cancel(why)
    return True
