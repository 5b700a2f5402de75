"""Client connections hubcache takes and keeps (hubcache_client_max, hubcache_client_max_per_address,
hubcache_client_idle): a connection over a cap is closed before anything is read from it; one that
has not sent a whole first request after `client_idle` seconds is closed then. The policy is
decide/admission.py; this module holds the connections' timers and closes them through mitmproxy.

After the first request, mitmproxy's own tcp_timeout (60 s under hubcache) closes a connection on
which nothing moves."""

from __future__ import annotations

import asyncio
import logging
import time

from mitmproxy import connection, ctx

from hubcache import logs
from hubcache.decide.admission import Admission, RefusalLog
from hubcache.decide.clients import address_name
from hubcache.metrics import Metrics
from hubcache.settings import Settings

log = logging.getLogger(__name__)


class ConnectionLimits:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.admission = Admission(Settings.client_max, Settings.client_max_per_address)
        self.idle = Settings.client_idle
        self.refusals = RefusalLog()  # one line per address a minute
        self.idlers = RefusalLog()  # idle connections closed: likewise
        self._taken: dict[str, str] = {}  # client id -> its address, for the connections taken
        self._timers: dict[str, asyncio.TimerHandle] = {}  # client id -> its first request's deadline

    def configure(self, s: Settings) -> None:
        """New caps apply to connections from now on; open ones stay."""
        self.admission.total, self.admission.per_address = s.client_max, s.client_max_per_address
        self.idle = s.client_idle

    def connected(self, client: connection.Client) -> None:
        address = client.peername[0] if client.peername else ""
        refused = self.admission.admit(address)
        if refused is not None:
            client.error = f"hubcache: {refused.why} ({refused.cap})"  # mitmproxy closes it, reading nothing
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
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # driven by tests without a loop
                return
            self._timers[client.id] = loop.call_later(self.idle, self._expire, client.id)

    def spoke(self, client: connection.Client) -> None:
        """The client sent a whole request: no first-request deadline any more."""
        if timer := self._timers.pop(client.id, None):
            timer.cancel()

    def disconnected(self, client: connection.Client) -> None:
        self.spoke(client)
        address = self._taken.pop(client.id, None)
        if address is not None:
            self.admission.release(address)
            self.metrics.client_connections.set(self.admission.open)

    def _expire(self, client_id: str) -> None:
        self._timers.pop(client_id, None)
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
