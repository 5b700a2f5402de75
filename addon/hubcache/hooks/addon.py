"""The mitmproxy addon: lifecycle (options, store, servers) and the hooks, each a guard and a
hand-over. A registry request is recognised here (decide/routes), handled by the module of its
registry object (auth, manifests, blobs), and ends in one log line (flowstate)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from mitmproxy import connection, ctx, exceptions, http, tls
from mitmproxy.proxy import mode_specs, server_hooks

from hubcache import logs, settings
from hubcache.decide import challenge, routes
from hubcache.decide.redirects import REDIRECTS
from hubcache.hooks import access, auth, blobs, direct, manifests, pushes, responses, tags
from hubcache.hooks.flowstate import META, FlowState, log_request, state_of
from hubcache.hooks.limits import ConnectionLimits
from hubcache.hooks.services import Services
from hubcache.hooks.status import StatusPage
from hubcache.model import Kind, Outcome, Refusal
from hubcache.registries import DOCKER_HUB
from hubcache.serve.blobserver import BlobServer, tls_context
from hubcache.serve.siblings import Siblings
from hubcache.settings import DIRECT_HOST, Settings, SettingsError
from hubcache.store import Store, StoreError, pages
from hubcache.upstream.credentials import CredentialsError
from hubcache.upstream.dockerhub import DockerHub

log = logging.getLogger(__name__)

ACCESS_FLUSH_SECONDS = 5  # access times and store gauges are written this often

Handler = Callable[[Services, http.HTTPFlow, FlowState], Awaitable[None]]
HANDLERS: dict[Kind, Handler] = {
    Kind.ROOT: auth.root,
    Kind.TOKEN: auth.token,
    Kind.MANIFEST: manifests.handle,
    Kind.MANIFEST_WRITE: auth.other,
    Kind.TAGS: tags.handle,
    Kind.BLOB: blobs.handle,
    Kind.CDN: blobs.handle_cdn,
    Kind.INVALID: auth.invalid,
    Kind.OTHER: auth.other,
}


class HubCache:
    def __init__(self) -> None:
        self.svc = Services()
        self.status = StatusPage(self.svc)  # the page at / on hubcache_metrics_listen
        self.limits = ConnectionLimits(self.svc.metrics)  # client connections: caps, first-request deadline
        self._running = False
        self._configured = False
        self._flusher: asyncio.Task[None] | None = None
        self._tunnels: dict[str, tuple[str, int]] = {}  # upstream mode: client id -> the host it CONNECTed to

    @property
    def dockerhub(self) -> DockerHub:
        return self.svc.dockerhub

    # -- lifecycle ----------------------------------------------------------------------------

    def load(self, loader: Any) -> None:
        logs.install()
        settings.load(loader)
        pages.tune_malloc()  # before the flights' and blob server's threads allocate

    def configure(self, updated: Collection[str]) -> None:
        svc = self.svc
        try:  # taken only when all of it is valid: mitmproxy then rolls the options back
            new = Settings.parse(ctx.options, updated, svc.settings if self._configured else None)
            svc.dockerhub.configure(new, updated)
            svc.parent.configure(new)
            svc.settings = new
        except (SettingsError, CredentialsError) as e:
            raise exceptions.OptionsError(str(e)) from e
        self._configured = True
        svc.clients.configure(svc.settings.metrics_clients)
        self.limits.configure(svc.settings, svc.role)
        if {"hubcache_log_format", "hubcache_log_level"} & set(updated):
            logs.configure(svc.settings.log_format, svc.settings.log_level)
        # The store opens when the proxy runs (not while options are still being set, which would
        # open and lock the default store first) and again whenever hubcache_store changes then.
        if self._running and ("hubcache_store" in updated or svc.store is None):
            self._open_store()
        if svc.store:
            svc.store.max_size = svc.settings.max_size

    def _open_store(self) -> None:
        svc = self.svc
        self._close_store()
        try:
            svc.store = Store(svc.settings.store, max_size=svc.settings.max_size, shared=svc.role.shared)
        except (StoreError, OSError) as e:
            raise exceptions.OptionsError(f"hubcache_store: {e}") from e
        svc.flights.siblings = Siblings(svc.store) if svc.role.shared else None
        svc.blobserver = BlobServer(svc.store, svc.flights.wait, _direct_tls(), svc.flights.writing,
                                    secret=svc.role.secret())
        svc.counting.store = svc.store
        _keep_challenges(svc)
        size = svc.store.size()
        logs.event(log, logging.INFO, "store_opened", f"store {svc.settings.store} ({size >> 20} MiB in use)",
                   store=svc.settings.store, bytes=size, max_size=svc.settings.max_size)

    def running(self) -> None:
        if why := access.refusal(ctx.options):  # `hubcache run` checked it already; mitmdump -s did not
            logs.event(log, logging.ERROR, "start_refused", why, reason=why)
            ctx.master.shutdown()
            return
        access.warn_slow_logins(ctx.options)
        self._running = True
        self.configure({"hubcache_store"})
        if wanted := settings.mitmproxy_defaults(ctx.options, self.svc.settings):
            ctx.options.update(**wanted)
        if self.svc.settings.metrics_listen and self.svc.role.serves_metrics:
            self._serve_metrics(self.svc.settings.metrics_listen)
        try:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_access_forever())
        except RuntimeError:  # no event loop: driven by tests
            pass

    def _serve_metrics(self, listen: str) -> None:
        """The metrics endpoint and status page; a listener that cannot be had is one line, and
        the proxy serves on without it (`hubcache run` checked the address before starting)."""
        try:
            host, port = self.svc.metrics.serve(listen, self.status.html)
        except OSError as e:
            logs.event(log, logging.ERROR, "metrics_unavailable", f"no metrics or status page: cannot listen on {listen} "
                       f"({e.strerror or e}): choose another hubcache_metrics_listen", listen=listen, reason=str(e))
            return
        self.status.sample()
        logs.event(log, logging.INFO, "metrics_listening", f"metrics on http://{host}:{port}/metrics, status page on "
                   f"http://{host}:{port}/", url=f"http://{host}:{port}/metrics", page=f"http://{host}:{port}/")

    def done(self) -> None:
        if self._flusher:
            self._flusher.cancel()
        self.svc.metrics.stop()
        self.svc.writer.shutdown(wait=True)
        store = self.svc.settings.store if self.svc.store else None
        self._close_store()
        if store:
            logs.event(log, logging.INFO, "stop", f"stopped; store {store} closed", store=store)

    def _close_store(self) -> None:
        svc = self.svc
        if svc.blobserver:
            svc.blobserver.stop()
            svc.blobserver = None
        svc.counting.store = None
        if svc.store:
            svc.store.close()
            svc.store = None

    async def _flush_access_forever(self) -> None:
        svc = self.svc
        while True:
            await asyncio.sleep(ACCESS_FLUSH_SECONDS)
            if svc.store:
                await svc.in_writer(svc.store.flush_access)
                if svc.role.serves_metrics:  # one store for all workers: read by one of them
                    svc.metrics.store_bytes.set(svc.store.size())
                    for kind, n in svc.store.counts().items():
                        svc.metrics.store_entries.labels(kind).set(n)
            if svc.settings.metrics_listen:
                self.status.sample()

    # -- hooks --------------------------------------------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        svc = self.svc
        if flow.response or flow.error or not flow.live or svc.store is None:
            return
        req = flow.request
        if req.scheme != "https":  # never answer for, or send a token over, plain HTTP
            return
        if req.host.lower() == DIRECT_HOST and svc.blobserver:  # intercepted after all (allow_hosts set so)
            blobs.to_local(flow, svc.blobserver.port)
            return
        s = svc.settings
        route = routes.classify(req.host, req.method, req.path, registries=s.registries, port=req.port,
                                auth_hosts=s.auth_hosts, cdn_hosts=s.cdn_hosts,
                                token_paths=svc.dockerhub.others.realm_paths(req.host))
        if route is None:
            return
        logged = routes.logged_registry(route, req.host, s.registries, s.auth_realm_host, req.port)
        st = FlowState(route, registry=logged, registry_label=s.registries.label(logged))
        flow.metadata[META] = st
        try:
            await HANDLERS[route.kind](svc, flow, st)
        except Refusal as r:  # the one place a refusal becomes the client's answer
            flow.response = responses.refusal(r, head=req.method == "HEAD")
            st.outcome, st.note = r.outcome, r.note
        if flow.response:  # answered here
            if req.method == "HEAD" and flow.response.raw_content:  # any answer of ours: no body after a HEAD's
                responses.drop_body(flow.response)
            st.answered_here = True
            log_request(flow, st, svc.metrics, svc.clients, counting=svc.counting)

    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """Bound the connect time to upstream hosts that have not answered recently, and never
        connect while offline or backing off. In upstream mode the connection goes to the egress
        proxy, for the host the client CONNECTed to: that host's route is probed."""
        if not data.server.address or not self._configured:
            return
        host, port = data.server.address[0], data.server.address[1]
        mode = data.client.proxy_mode
        if isinstance(mode, mode_specs.UpstreamMode) and data.server.address == mode.address:
            if data.client.id not in self._tunnels:  # plain HTTP through the egress proxy
                return
            host, port = self._tunnels[data.client.id]
        if host.lower() == DIRECT_HOST:  # a redirected client's tunnel not taken by direct.serve: to the TLS listener
            server = self.svc.blobserver
            if server and server.tls_port:
                data.server.address = ("127.0.0.1", server.tls_port)
            else:
                data.server.error = f"{DIRECT_HOST} is served only while hubcache's TLS listener runs"
            return
        if self.svc.dockerhub.watched(host) and (why := await self.svc.dockerhub.probe(host, port)):
            data.server.error = why

    def client_connected(self, client: connection.Client) -> None:
        self.limits.connected(client)

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        self.limits.spoke(data.context.client)  # a TLS-first mode's first request

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        if self.limits.request(flow):  # over a cap: answered 503
            return
        access.connect_seen(flow, ctx.options)
        if flow.request.host.lower() == DIRECT_HOST and flow.response is None and self.svc.blobserver:
            if await direct.serve(flow, self.svc.blobserver):  # served on the client's socket, now closed
                return
        if isinstance(flow.client_conn.proxy_mode, mode_specs.UpstreamMode):
            self._tunnels[flow.client_conn.id] = (flow.request.host, flow.request.port)

    def client_disconnected(self, client: connection.Client) -> None:
        self._tunnels.pop(client.id, None)
        self.limits.disconnected(client)

    def http_connect_upstream(self, flow: http.HTTPFlow) -> None:
        """mitmproxy's CONNECT to the egress proxy: the login of hubcache_upstream_auth_file (mitmproxy
        adds upstream_auth's itself), and none on the tunnel to hubcache's own blob listener."""
        if flow.request.host.lower() == DIRECT_HOST:
            flow.request.headers.pop("Proxy-Authorization", None)
        elif (egress := self.svc.dockerhub.egress) and (auth := egress.authorization()):
            flow.request.headers["Proxy-Authorization"] = auth

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """A plain-HTTP request in upstream mode goes to the egress proxy as it is: with its login."""
        if self.limits.request(flow):  # over a cap: answered 503
            return
        access.http_seen(flow)
        if flow.request.scheme == "http" and isinstance(flow.client_conn.proxy_mode, mode_specs.UpstreamMode) \
                and (egress := self.svc.dockerhub.egress) and (auth := egress.authorization()):
            flow.request.headers["Proxy-Authorization"] = auth

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        st = state_of(flow)
        if st is None or flow.response is None:
            return
        if st.local_stream or st.route.kind is not Kind.MANIFEST:
            flow.response.stream = True
        if flow.response.status_code == 401 and st.route.registry != DOCKER_HUB and not (st.local_stream or st.answered_here):
            auth.relocate_challenge(self.svc, flow, st)  # upstream's, before the client sees it

    async def response(self, flow: http.HTTPFlow) -> None:
        st = state_of(flow)
        if st is None or flow.response is None:
            return
        svc = self.svc
        if not st.local_stream and not st.answered_here:  # the answer came from upstream
            resp = flow.response  # a streamed body was not kept: a 429 there is bare, as on Hub
            svc.dockerhub.result(flow.request.host, resp.status_code, body=None if resp.stream else resp.get_content(strict=False))
            svc.metrics.upstream.labels(st.route.kind.value).inc()
            await _after_upstream(svc, flow, st)
        log_request(flow, st, svc.metrics, svc.clients, counting=svc.counting)

    def error(self, flow: http.HTTPFlow) -> None:
        st = state_of(flow)
        if st is None:
            return
        msg = flow.error.msg if flow.error else ""
        upstream_fault = not st.local_stream and "client" not in msg.lower()  # a reset, a timeout: a warning
        if flow.response is None and upstream_fault:
            self.svc.dockerhub.result(flow.request.host, None, msg)
        if st.flight is not None and st.flight.done and st.flight.failure:  # the download failed
            st.outcome = Outcome.REJECTED if st.flight.rejected else Outcome.ERROR
            st.note = st.flight.failure
        elif st.outcome is not Outcome.REJECTED:
            st.note = msg or "error"
        log_request(flow, st, self.svc.metrics, self.svc.clients, warn=upstream_fault, counting=self.svc.counting)


async def _after_upstream(svc: Services, flow: http.HTTPFlow, st: FlowState) -> None:
    """What hubcache learns from an answer upstream gave a relayed request."""
    assert flow.response is not None
    status, kind = flow.response.status_code, st.route.kind
    if kind is Kind.MANIFEST and st.outcome is Outcome.MISS:
        await manifests.after_upstream(svc, flow, st)
    elif kind is Kind.MANIFEST_WRITE:
        await pushes.after_upstream(svc, flow, st)
    elif kind is Kind.BLOB and status in REDIRECTS:
        blobs.note_redirect(svc, flow, st)
    if kind in (Kind.MANIFEST, Kind.BLOB) and st.route.by_digest and status == 200:
        await auth.link_if_stored(svc, st, st.route.reference)  # upstream says it is in this repository


def _keep_challenges(svc: Services) -> None:
    """Registries' challenges: read back from the store (so /v2/ is answered while a registry is
    down, after a restart too), and written there when one is seen new or changed."""
    store, others = svc.the_store(), svc.dockerhub.others
    others.restore(store.challenges())

    def learned(registry: str, seen: challenge.Challenge) -> None:
        svc.writer.submit(store.put_challenge, registry, seen.header())

    others.learned = learned


def _direct_tls() -> ssl.SSLContext | None:
    """The TLS listener's context, from mitmproxy's CA; None when mitmproxy has none loaded
    (tests without a master)."""
    try:
        certstore = ctx.master.addons.get("tlsconfig").certstore
    except AttributeError:
        return None
    return tls_context(certstore) if certstore is not None else None
