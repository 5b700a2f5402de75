"""The mitmproxy hooks: recognise registry requests, answer from the store, fetch misses once.

Decisions live in routes/policy/mediatypes, bytes in store/flights/blobserver; this file wires them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from urllib.parse import urljoin, urlsplit

import lmdb
from mitmproxy import ctx, exceptions, http

from hubcache.decide import access
from hubcache.upstream import dockerhub
from hubcache.upstream import fetch
from hubcache.decide import manifests
from hubcache import settings as options
from hubcache.store import pages
from hubcache.decide import freshness as policy
from hubcache.hooks import responses
from hubcache.decide import routes
from hubcache.upstream import tokens
from hubcache.upstream import client as upstream
from hubcache.serve.blobserver import DIRECT_HOST, BlobServer, tls_context
from hubcache.upstream.dockerhub import DockerHub
from hubcache.serve.flights import Flight, Flights
from hubcache.metrics import Metrics
from hubcache.decide.mediatypes import Accept, choose
from hubcache.model import BlobInfo, Kind, Manifest, Route
from hubcache.upstream.singleflight import Shared
from hubcache.store import Store, StoreError

log = logging.getLogger("hubcache")

META = "hubcache"
MAX_MANIFEST = 4 * 1024 * 1024  # Docker Hub's own limit
MAX_REDIRECTS = 10_000  # CDN URLs remembered from 307s
ACCESS_FLUSH_SECONDS = 5
CONFIRM_SECONDS = 300  # how long upstream's "yes, this token may pull that repository" is believed
ALL_MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json"
)
NO_ROOM_SECONDS = 60  # a blob the store had no room for goes upstream unstored this long
RECENTLY_OK = 60  # seconds after a good upstream answer in which connections are not probed first


@dataclass
class _State:
    """What hubcache decided about one flow."""

    route: Route
    outcome: str = "passthrough"
    started: float = field(default_factory=time.monotonic)
    digest: str = ""  # the blob a CDN request is for
    repository: str = ""
    local_stream: bool = False  # answered by the blob server
    flight: Flight | None = None  # the download this blob miss follows
    direct_bytes: int = 0  # redirected to the blob server's TLS listener: the size it sends
    note: str = ""
    logged: bool = False
    account: str = ""  # the pool account (or "anonymous") hubcache sent this upstream as; "" = the client's own
    stale: Manifest | None = None  # what to serve if upstream refuses (429) a counted pull
    private: bool = False  # fetched with the client's own login: stored as private to its repository
    answered_here: bool = False  # the request hook set the response: upstream was not asked


class HubCache:
    def __init__(self) -> None:
        self.store: Store | None = None
        self.blobserver: BlobServer | None = None
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="hubcache-writer")
        self.flights = Flights()  # blob downloads under way, by digest
        self._manifest_fetches: Shared = Shared()  # manifest GETs under way
        self._no_room: dict[str, float] = {}  # digest -> until when it goes upstream unstored
        self.redirects: OrderedDict[tuple[str, str], tuple[str, str, bool]] = OrderedDict()
        self._hosts: dict[str, frozenset[str]] = {}
        self.metrics = Metrics()
        self.dockerhub = DockerHub(self.metrics)
        self._confirmed: dict[tuple[str, str], float] = {}  # (client token hash, repository) -> until
        self._running = False
        self._flusher: asyncio.Task | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def load(self, loader) -> None:
        options.load(loader)
        pages.tune_malloc()  # before the flights' and blob server's threads allocate

    def configure(self, updated: set[str]) -> None:
        max_size = options.check(ctx.options)
        # The store opens when the proxy runs (not while options are still being set, which would
        # open and lock the default store first) and again whenever hubcache_store changes then.
        if self._running and ("hubcache_store" in updated or self.store is None):
            self._close_store()
            try:
                self.store = Store(ctx.options.hubcache_store, max_size=max_size)
            except (StoreError, OSError) as e:
                raise exceptions.OptionsError(f"hubcache_store: {e}") from e
            self.blobserver = BlobServer(self.store, self.flights.wait, _direct_tls())
            log.info("hubcache: store %s (%d MiB in use)", ctx.options.hubcache_store, self.store.size() >> 20)
        if self.store:
            self.store.max_size = max_size
        self._hosts = {
            "registry_hosts": frozenset(h.lower() for h in ctx.options.hubcache_registry_hosts),
            "auth_hosts": frozenset(h.lower() for h in ctx.options.hubcache_auth_hosts),
            "cdn_hosts": frozenset(h.lower() for h in ctx.options.hubcache_cdn_hosts),
        }
        self.dockerhub.configure(updated, self._hosts["registry_hosts"])

    def running(self) -> None:
        self._running = True
        self.configure({"hubcache_store"})
        # What hubcache needs from mitmproxy: intercept only registry hosts, open no upstream
        # connection for a hit, keep memory bounded (HTTP/1.1 back-pressure, streamed passthrough).
        wanted: dict[str, object] = {}
        if not ctx.options.allow_hosts and not ctx.options.ignore_hosts:
            hosts = [*self._hosts["registry_hosts"], *self._hosts["auth_hosts"], *self._hosts["cdn_hosts"]]
            wanted["allow_hosts"] = [options.allow_hosts_pattern(sorted(hosts), options.CDN_SUFFIXES)]
        if ctx.options.connection_strategy != "lazy":
            wanted["connection_strategy"] = "lazy"
        if ctx.options.http2:
            wanted["http2"] = False
        if not ctx.options.stream_large_bodies:
            wanted["stream_large_bodies"] = "1m"
        if ctx.options.tcp_timeout == 600:  # mitmproxy's default: a stalled upstream would hold a pull 10 min
            wanted["tcp_timeout"] = 60
        if wanted:
            ctx.options.update(**wanted)
        if ctx.options.hubcache_metrics_listen:
            host, port = self.metrics.serve(ctx.options.hubcache_metrics_listen)
            log.info("hubcache: metrics on http://%s:%d/metrics", host, port)
        try:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_access_forever())
        except RuntimeError:  # no event loop: driven by tests
            pass

    def done(self) -> None:
        if self._flusher:
            self._flusher.cancel()
        self.metrics.stop()
        self.writer.shutdown(wait=True)
        self._close_store()

    def _close_store(self) -> None:
        if self.blobserver:
            self.blobserver.stop()
            self.blobserver = None
        if self.store:
            self.store.close()
            self.store = None

    async def _flush_access_forever(self) -> None:
        while True:
            await asyncio.sleep(ACCESS_FLUSH_SECONDS)
            if self.store:
                await self._in_writer(self.store.flush_access)
                self.metrics.store_bytes.set(self.store.size())
                for kind, n in self.store.counts().items():
                    self.metrics.store_entries.labels(kind).set(n)

    async def _in_writer(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.writer, partial(fn, *args))

    async def _upstream_auth(self, flow: http.HTTPFlow, st: _State) -> str:
        """The Authorization for an upstream request on behalf of this client (st.account: as whom)."""
        auth, st.account = await self.dockerhub.authorization(
            flow.request.headers.get("authorization", ""), st.route.repository or st.repository
        )
        return auth

    # -- hooks --------------------------------------------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live or self.store is None:
            return
        req = flow.request
        if req.scheme != "https":  # never answer for, or send a token over, plain HTTP
            return
        if req.host.lower() == DIRECT_HOST and self.blobserver:  # intercepted after all (allow_hosts set so)
            req.scheme, req.data.host, req.data.port = "http", "127.0.0.1", self.blobserver.port
            return
        route = routes.classify(req.host, req.method, req.path, **self._hosts)
        if route is None:
            return
        st = _State(route)
        flow.metadata[META] = st
        handler = {
            Kind.ROOT: self._root,
            Kind.TOKEN: self._token,
            Kind.MANIFEST: self._manifest,
            Kind.BLOB: self._blob,
            Kind.CDN: self._cdn,
            Kind.INVALID: self._invalid,
            Kind.OTHER: self._other,
        }[route.kind]
        await handler(flow, st)
        if flow.response:  # answered here
            st.answered_here = True
            self._log(flow, st)

    async def server_connect(self, data) -> None:
        """Bound the connect time to upstream hosts that have not answered recently, and never
        connect while offline or backing off."""
        if not data.server.address or not self._hosts:
            return
        host, port = data.server.address[0], data.server.address[1]
        if host.lower() == DIRECT_HOST:  # a redirected client's tunnel: to the blob server's TLS listener
            if self.blobserver and self.blobserver.tls_port:
                data.server.address = ("127.0.0.1", self.blobserver.tls_port)
            else:
                data.server.error = f"{DIRECT_HOST} is served only while hubcache's TLS listener runs"
            return
        if self.dockerhub.health_key(host) != dockerhub.REGISTRY and host.lower() not in self._hosts["auth_hosts"] | self._hosts["cdn_hosts"]:
            return
        if why := self.dockerhub.unavailable(host):
            data.server.error = why
            return
        if self.dockerhub.health.recently_ok(self.dockerhub.health_key(host), time.time(), RECENTLY_OK):
            return
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), ctx.options.hubcache_connect_timeout)
            writer.close()
        except (OSError, TimeoutError) as e:
            reason = f"cannot connect to {host}:{port}: {e or 'timed out'}"
            self.dockerhub.result(host, None, reason)
            data.server.error = reason

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        st: _State | None = flow.metadata.get(META)
        if st is None or flow.response is None:
            return
        if st.local_stream or st.route.kind is not Kind.MANIFEST:
            flow.response.stream = True

    async def response(self, flow: http.HTTPFlow) -> None:
        st: _State | None = flow.metadata.get(META)
        if st is None or flow.response is None:
            return
        if not st.local_stream and not st.answered_here:  # the answer came from upstream
            self.dockerhub.result(flow.request.host, flow.response.status_code)
            self.metrics.upstream.labels(st.route.kind.value).inc()
        if st.route.kind is Kind.MANIFEST and st.outcome == "miss" and not st.answered_here:  # a HEAD upstream answered
            self.dockerhub.observe_budget(st.account, flow.request.method, flow.response.status_code, flow.response.headers)
            if flow.response.status_code == 429 and st.stale is not None:
                self._serve_stale(flow, st, st.stale, "pull limit reached: upstream answered 429")
            await self._manifest_arrived(flow, st)
        elif st.route.kind is Kind.BLOB and flow.response.status_code in (301, 302, 303, 307, 308):
            self._note_redirect(flow, st)
        self._log(flow, st)

    def error(self, flow: http.HTTPFlow) -> None:
        st: _State | None = flow.metadata.get(META)
        if st is None:
            return
        msg = flow.error.msg if flow.error else ""
        if flow.response is None and not st.local_stream and "client" not in msg.lower():
            self.dockerhub.result(flow.request.host, None, msg)
        if st.flight is not None and st.flight.done and st.flight.failure:  # the download failed
            st.outcome, st.note = ("rejected" if st.flight.rejected else "error"), st.flight.failure
        elif st.outcome != "rejected":
            st.note = msg or "error"
        self._log(flow, st)

    # -- handlers -----------------------------------------------------------------------------

    async def _root(self, flow: http.HTTPFlow, st: _State) -> None:
        authorized = bool(flow.request.headers.get("authorization"))
        flow.response = responses.v2_root(authorized, ctx.options.hubcache_auth_realm, ctx.options.hubcache_auth_service)
        st.outcome = "hit"

    async def _token(self, flow: http.HTTPFlow, st: _State) -> None:
        auth = flow.request.headers.get("authorization")
        if auth:
            # A client's own credentials go to the token server unchanged, with hubcache's bounded
            # timeout; when it cannot be reached the client gets a local token and can still pull
            # what the store has.
            try:
                resp = await self.dockerhub.request("GET", _url(flow), [("Authorization", auth)])
            except upstream.UpstreamError as e:
                st.note = str(e)
            else:
                flow.response = http.Response.make(
                    resp.status, resp.body, {"Content-Type": resp.header("content-type", "application/json")}
                )
                if resp.header("www-authenticate"):
                    flow.response.headers["Www-Authenticate"] = resp.header("www-authenticate")
                st.outcome = "passthrough"
                return
        flow.response = responses.token(tokens.issue_local_token())
        st.outcome = "hit"

    async def _invalid(self, flow: http.HTTPFlow, st: _State) -> None:
        flow.response = responses.oci_error(400, st.route.error_code, st.route.error_message)
        st.outcome = "rejected"

    async def _other(self, flow: http.HTTPFlow, st: _State) -> None:
        auth = flow.request.headers.get("authorization", "")
        if not tokens.is_local(auth):
            return
        if st.route.repository:
            await self._send_upstream(flow, st)
        else:
            del flow.request.headers["authorization"]  # our local token means nothing upstream

    async def _allowed(self, flow: http.HTTPFlow, st: _State, digest: str) -> str:
        """May this client get `digest` from the store under st.route.repository? 'serve', 'miss'
        (go upstream, which decides), or 'refused' (flow.response is set)."""
        assert self.store
        repo = st.route.repository
        vis = access.visibility(self.store.repositories(digest), repo)
        if vis != "private":
            return "serve" if vis == "public" else "miss"
        auth = flow.request.headers.get("authorization", "")
        own = bool(auth) and not tokens.is_local(auth)
        key = (hashlib.sha256(auth.encode()).hexdigest(), repo)
        if own and self._confirmed.get(key, 0) > time.time():
            return "serve"
        if why := self.dockerhub.unavailable(flow.request.host):
            if ctx.options.hubcache_offline_private == "allow":
                return "serve"
            flow.response = responses.oci_error(
                403, "DENIED", f"docker.io/{repo} is private and upstream cannot confirm access now: {why}")
            st.outcome, st.note = "refused", "private, upstream unavailable"
            return "refused"
        # Ask upstream, with a HEAD (free), whether this client's token, or else a pool token, may
        # pull it there; a pool token's yes makes the content public in this repository.
        kind = "manifests" if st.route.kind is Kind.MANIFEST else "blobs"
        try:
            auth_up = await self._upstream_auth(flow, st)
            resp = await self.dockerhub.request("HEAD", f"https://{flow.request.host}/v2/{repo}/{kind}/{digest}",
                                           [("Authorization", auth_up), ("Accept", ALL_MANIFEST_TYPES)])
        except upstream.UpstreamError as e:
            flow.response = responses.oci_error(403, "DENIED", f"docker.io/{repo} is private and upstream cannot confirm access now: {e}")
            st.outcome, st.note = "refused", "private, upstream unavailable"
            return "refused"
        if resp.status < 400:
            if st.account:
                await self._in_writer(self.store.note_repository, digest, access.seen_as(repo, False))
            else:
                self._confirmed[key] = time.time() + CONFIRM_SECONDS
            return "serve"
        flow.response = responses.v2_root(False, ctx.options.hubcache_auth_realm, ctx.options.hubcache_auth_service)
        flow.response.headers["Www-Authenticate"] += f',scope="repository:{repo}:pull"'
        st.outcome, st.note = "refused", f"private: upstream answered {resp.status}"
        return "refused"

    async def _manifest(self, flow: http.HTTPFlow, st: _State) -> None:
        assert self.store
        route = st.route
        head = flow.request.method == "HEAD"
        if route.by_digest:
            m = self.store.get_manifest(route.reference)
            verdict = await self._allowed(flow, st, route.reference) if m is not None else "miss"
            if verdict == "serve":
                flow.response = responses.manifest(m, head)
                st.outcome = "hit"
            elif verdict == "miss":
                await self._miss(flow, st)
            return
        accept = Accept.parse(flow.request.headers.get_all("accept"))
        pin = options.parse_time(ctx.options.hubcache_pin_time)
        if pin is not None:
            self._pinned_tag(flow, st, accept, pin)
            return
        records = self.store.tag_records(route.repository, route.reference)
        chosen = choose(records, accept)
        record = records[chosen] if chosen else None
        m = self.store.get_manifest(record.digest) if record else None
        if m is not None:
            verdict = await self._allowed(flow, st, m.digest)
            if verdict == "refused":
                return
            if verdict == "miss":
                record = m = None
        decision = policy.decide(record, m is not None, time.time(), ctx.options.hubcache_tag_ttl)
        if decision is policy.Decision.HIT:
            flow.response = responses.manifest(m, head)
            st.outcome = "hit"
            return
        if decision is policy.Decision.REVALIDATE and await self._revalidate(flow, st, record, m):
            return
        # Going upstream for a GET. What the tag last was, of what the store holds, is the answer
        # if upstream cannot be asked or refuses (429), or when the pull budget is at its reserve.
        st.stale = m or self._last_stored(route.repository, route.reference, accept)
        if st.stale is not None and st.stale is not m:
            verdict = await self._allowed(flow, st, st.stale.digest)
            if verdict == "refused":
                return
            if verdict == "miss":
                st.stale = None
        if st.stale is not None and self.dockerhub.budget_low():  # the last pulls are kept for images not cached at all
            self._serve_stale(flow, st, st.stale, "pull budget reserve reached")
            return
        await self._miss(flow, st)

    def _last_stored(self, repository: str, tag: str, accept: Accept) -> Manifest | None:
        """The newest manifest this tag pointed to that the store still holds and the client accepts."""
        assert self.store
        for _, _, media_type, digest in reversed(self.store.tag_history(repository, tag)):
            if accept.accepts(media_type) and (m := self.store.get_manifest(digest)) is not None:
                return m
        return None

    def _pinned_tag(self, flow: http.HTTPFlow, st: _State, accept: Accept, pin: float) -> None:
        """The tag as it was at `pin`, from its history; upstream is not asked."""
        assert self.store
        route = st.route
        records = self.store.tag_at(route.repository, route.reference, pin)
        chosen = choose(records, accept)
        m = self.store.get_manifest(records[chosen].digest) if chosen else None
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(pin))
        if m is None:
            flow.response = responses.oci_error(
                404, "MANIFEST_UNKNOWN",
                f"docker.io/{route.repository}:{route.reference} has no stored manifest as of {when} (hubcache_pin_time)",
            )
            st.outcome, st.note = "error", f"pinned to {when}"
            return
        flow.response = responses.manifest(m, flow.request.method == "HEAD")
        st.outcome, st.note = "hit", f"pinned to {when}"

    async def _revalidate(self, flow: http.HTTPFlow, st: _State, record: policy.TagRecord, m) -> bool:
        """HEAD upstream (not counted by Docker Hub). True when the flow was answered here."""
        assert self.store
        route = st.route
        try:
            auth = await self._upstream_auth(flow, st)
            headers = [("Accept", v) for v in flow.request.headers.get_all("accept")] + [("Authorization", auth)]
            resp = await self.dockerhub.request("HEAD", _url(flow), headers)
        except upstream.UpstreamError as e:
            self._serve_stale(flow, st, m, str(e))
            return True
        self.dockerhub.observe_budget(st.account, "HEAD", resp.status, resp.headers)
        if resp.status == 429 or resp.status >= 500:
            self._serve_stale(flow, st, m, f"upstream answered {resp.status}")
            return True
        if resp.status != 200:
            return False
        digest = resp.header("docker-content-digest")
        media_type = resp.header("content-type").split(";")[0].strip()
        size = resp.header("content-length")
        if not routes.is_digest(digest) or not media_type or not size.isdigit():
            return False
        await self._in_writer(self.store.put_tag, route.repository, route.reference, media_type, digest, int(size), time.time())
        if digest == record.digest and media_type == record.media_type:
            flow.response = responses.manifest(m, flow.request.method == "HEAD")
            st.outcome = "revalidated"
            return True
        if flow.request.method == "HEAD":  # the client only wants to know the new digest
            flow.response = responses.manifest_head(media_type, digest, int(size))
            st.outcome, st.note = "miss", "tag changed"
            return True
        return False

    async def _blob(self, flow: http.HTTPFlow, st: _State) -> None:
        assert self.store
        info, flight = self.flights.locate(st.route.reference, self.store.blob_info)
        verdict = await self._allowed(flow, st, info.digest) if info is not None else "miss"
        if verdict == "serve":
            self._serve_blob(flow, st, info)
            return
        if verdict == "refused":
            return
        st.digest, st.repository = st.route.reference, st.route.repository
        if flow.request.method != "GET":  # HEAD: upstream answers, nothing to store
            await self._miss(flow, st)
            st.private = not st.account
            return
        await self._blob_miss(flow, st, flight)

    async def _cdn(self, flow: http.HTTPFlow, st: _State) -> None:
        assert self.store
        known = self.redirects.get((flow.request.host.lower(), flow.request.path))
        if known is None:
            return  # not a blob we sent the client to: passed through, not stored
        digest, repository, st.private = known  # a URL upstream gave an authorized client
        info, flight = self.flights.locate(digest, self.store.blob_info)
        if info is not None:
            self._serve_blob(flow, st, info)
            return
        st.digest, st.repository = digest, repository
        if why := self.dockerhub.unavailable(flow.request.host):
            self._refuse_miss(flow, st, why)
        elif flow.request.method != "GET":
            st.outcome = "miss"
        else:
            await self._blob_miss(flow, st, flight)

    async def _blob_miss(self, flow: http.HTTPFlow, st: _State, flight: Flight | None) -> None:
        """A GET of a blob the store lacks: join the download of it under way (`flight`, found by
        Flights.locate), or start one. Either way the blob server sends the client the bytes as
        they reach the store."""
        assert self.store
        cdn = st.route.kind is Kind.CDN
        if (until := self._no_room.get(st.digest)) is not None:
            if until > time.monotonic():
                await self._unstored(flow, st, cdn)
                return
            del self._no_room[st.digest]  # time to try storing it again
        if flight is None or (flight.owner and not cdn and flight.owner != _owner(flow, st)):
            if why := self.dockerhub.unavailable(flow.request.host):
                self._refuse_miss(flow, st, why)
                return
            headers: list[tuple[str, str]] = []
            if not cdn:  # a CDN URL carries its own signature; the registry wants a token
                try:
                    headers.append(("Authorization", await self._upstream_auth(flow, st)))
                except upstream.UpstreamError as e:
                    self._refuse_miss(flow, st, f"no upstream token could be had: {e}")
                    return
                st.private = not st.account
            # While the token came, a download may have started, or even ended and stored the blob.
            info, flight = self.flights.locate(st.digest, self.store.blob_info)
            if info is not None:
                verdict = "serve" if cdn else await self._allowed(flow, st, info.digest)
                if verdict == "serve":
                    self._serve_blob(flow, st, info)
                if verdict != "miss":
                    return
            owner = ("cdn " + flow.request.path) if cdn and st.private else _owner(flow, st) if st.private else ""
            if flight is None or (flight.owner and flight.owner != owner):
                if flight is not None:  # a download with someone else's login: not shared, not stored
                    if headers:
                        flow.request.headers["authorization"] = headers[0][1]
                    st.outcome, st.note = "miss", "private download of another client under way"
                    return
                flight = self._start_flight(_url(flow), headers, st, owner)
            else:
                st.note = "joined a download under way"
        else:
            st.note = "joined a download under way"
        st.flight = flight
        head = await flight.head()
        st.outcome = "miss"
        if head.no_room:
            self._no_room[st.digest] = time.monotonic() + NO_ROOM_SECONDS
            await self._unstored(flow, st, cdn)
        elif head.status == 200:
            self._hand_out(flow, st, st.digest, head.size, head.blob_id)
        elif head.status == 0:
            self._refuse_miss(flow, st, head.error)
        else:  # upstream's own answer (401, 404, 429...), as upstream gave it
            flow.response = http.Response.make(head.status, head.body, head.headers)
            st.note = f"upstream answered {head.status}"

    async def _unstored(self, flow: http.HTTPFlow, st: _State, cdn: bool) -> None:
        """The store has no room for this blob: the client gets it from upstream, passed through."""
        st.outcome, st.note = "miss", "not stored: no room in the store"
        if not cdn:
            await self._send_upstream(flow, st)

    def _start_flight(self, url: str, headers: list[tuple[str, str]], st: _State, owner: str) -> Flight:
        assert self.store
        store, digest, dh = self.store, st.digest, self.dockerhub
        loop = asyncio.get_running_loop()
        tls, timeout, connect_timeout = dh.tls(), ctx.options.tcp_timeout, ctx.options.hubcache_connect_timeout
        seen = access.seen_as(st.repository, st.private)

        def opener() -> fetch.Response:
            return fetch.get(url, headers, tls, timeout, dh.unavailable, connect_timeout)

        def record(hops: list[fetch.Hop]) -> None:  # on the event loop
            for hop in hops:
                dh.result(hop.host, hop.status, hop.error)
                if hop.status is not None:
                    self.metrics.upstream.labels("blob").inc()

        def ended(f: Flight) -> None:  # on the flight's thread
            self.flights.end(f)
            if f.stored:
                log.info("hubcache: stored %s (%d bytes) for %s", digest, f.received, st.repository)
                self.writer.submit(store.evict_if_needed)
            elif f.failure.startswith("not stored"):
                self._no_room[digest] = time.monotonic() + NO_ROOM_SECONDS
                log.warning("hubcache: %s %s", digest, f.failure)
            else:  # the log's outcome words: rejected (bytes did not match), error (no complete transfer)
                log.warning("hubcache: %-11s download of blob %s %s failed: %s", "rejected" if f.rejected else "error",
                            st.repository, digest, f.failure)

        flight = Flight(
            digest, opener, lambda size: store.begin_blob(digest, size, seen), owner=owner, room=store.room_for,
            on_hops=lambda hops: loop.call_soon_threadsafe(record, hops), on_end=ended,
        )
        return self.flights.add(flight).start()

    def _serve_blob(self, flow: http.HTTPFlow, st: _State, info: BlobInfo) -> None:
        st.outcome = "hit"
        if flow.request.method == "HEAD":
            flow.response = responses.blob_head(info)
            return
        self._hand_out(flow, st, info.digest, info.size)

    def _hand_out(self, flow: http.HTTPFlow, st: _State, digest: str, size: int, pending: bytes = b"") -> None:
        """Have the blob server send a blob: from the store, or (`pending`: the blob id of a
        download under way) its bytes as they arrive. A large one by a redirect to the TLS
        listener, which mitmproxy only tunnels; else through mitmproxy, which streams the plain
        listener's answer to the client."""
        assert self.blobserver
        path = self.blobserver.path(digest, pending)
        least = options.direct_min(ctx.options.hubcache_direct_min)
        if self.blobserver.tls_port and least is not None and size >= max(least, 1):
            flow.response = http.Response.make(307, b"", {"Location": f"https://{DIRECT_HOST}{path}",
                                                          "Docker-Content-Digest": digest})
            st.direct_bytes = size
            return
        req = flow.request
        req.scheme = "http"
        req.data.host = "127.0.0.1"
        req.data.port = self.blobserver.port
        req.path = path
        st.local_stream = True

    async def _miss(self, flow: http.HTTPFlow, st: _State) -> None:
        """Not in the store: upstream, unless upstream is not to be asked now."""
        if why := self.dockerhub.unavailable(flow.request.host):
            if st.stale is not None:
                self._serve_stale(flow, st, st.stale, why)
                return
            self._refuse_miss(flow, st, why)
            return
        st.outcome = "miss"
        if st.route.kind is Kind.MANIFEST and flow.request.method == "GET":
            await self._manifest_miss(flow, st)
        else:
            await self._send_upstream(flow, st)

    def _serve_stale(self, flow: http.HTTPFlow, st: _State, m: Manifest, why: str) -> None:
        """What the store has for a tag, marked stale (Warning header, log outcome), and why."""
        flow.response = responses.manifest(m, flow.request.method == "HEAD", warning=f"stale: {why}")
        st.outcome, st.note = "stale", why

    def _refuse_miss(self, flow: http.HTTPFlow, st: _State, why: str) -> None:
        route = st.route
        what = f"docker.io/{route.repository or st.repository}"
        ref = route.reference or st.digest
        what += f"@{ref}" if ref.startswith("sha256:") else f":{ref}"
        # 404 with the registry's own code: clients print the message of a 4xx error body, while
        # for a 5xx they print only the status.
        code = "MANIFEST_UNKNOWN" if route.kind is Kind.MANIFEST else "BLOB_UNKNOWN"
        flow.response = responses.oci_error(404, code, f"{what} is not in hubcache's store and {why}")
        st.outcome, st.note = "error", why

    async def _send_upstream(self, flow: http.HTTPFlow, st: _State) -> None:
        """Let the flow go upstream with credentials that upstream accepts."""
        try:
            flow.request.headers["authorization"] = await self._upstream_auth(flow, st)
        except upstream.UpstreamError as e:
            self._refuse_miss(flow, st, f"no upstream token could be had: {e}")

    # -- after upstream answered ------------------------------------------------------------

    async def _manifest_arrived(self, flow: http.HTTPFlow, st: _State) -> None:
        """A HEAD for a tag that upstream answered: remember what the tag points to."""
        assert self.store and flow.response
        resp, route = flow.response, st.route
        if resp.status_code != 200 or flow.request.method != "HEAD" or route.by_digest:
            return
        media_type = resp.headers.get("content-type", "").split(";")[0].strip()
        claimed = resp.headers.get("docker-content-digest", "")
        size = resp.headers.get("content-length", "")
        if routes.is_digest(claimed) and media_type and size.isdigit():
            await self._in_writer(self.store.put_tag, route.repository, route.reference, media_type, claimed, int(size), time.time())

    async def _manifest_miss(self, flow: http.HTTPFlow, st: _State) -> None:
        """GET a manifest upstream, once for all clients asking the same thing at the same time
        (same URL, same Accept, same login or the pool): one counted pull instead of many."""
        try:
            auth = await self._upstream_auth(flow, st)
        except upstream.UpstreamError as e:
            self._refuse_or_stale(flow, st, f"no upstream token could be had: {e}")
            return
        accept = tuple(flow.request.headers.get_all("accept"))
        key = (_url(flow), accept, _owner(flow, st) if not st.account else "")
        headers = [("Accept", v) for v in accept] + [("Authorization", auth)]
        seen = access.seen_as(st.route.repository, not st.account)  # no pool account: the client's own login
        try:
            got, joined = await self._manifest_fetches.run(
                key, lambda: self._fetch_manifest(st.route, _url(flow), headers, st.account, seen))
        except upstream.BodyTooLarge:
            self._reject_manifest(flow, st, f"upstream manifest is over the {MAX_MANIFEST} byte limit")
            return
        except upstream.UpstreamError as e:
            self._refuse_or_stale(flow, st, str(e))
            return
        if joined:
            st.note = "joined a fetch under way"
        if isinstance(got, Manifest):
            flow.response = responses.manifest(got, False)
            return
        if isinstance(got, str):  # upstream sent a manifest that does not match its digest
            self._reject_manifest(flow, st, got)
            return
        if got.status == 429 and st.stale is not None:
            self._serve_stale(flow, st, st.stale, "pull limit reached: upstream answered 429")
            return
        flow.response = http.Response.make(got.status, got.body, upstream.relayable(got.headers))
        st.note = f"upstream answered {got.status}"

    async def _fetch_manifest(self, route: Route, url: str, headers: list[tuple[str, str]], account: str,
                              seen: str) -> "Manifest | str | upstream.UpstreamResponse":
        """One upstream GET of a manifest: the verified, stored Manifest; a reason (str) when
        upstream's bytes were refused; or upstream's answer when it was not a 200."""
        assert self.store
        resp = await self.dockerhub.request("GET", url, headers, kind="manifest")
        self.dockerhub.observe_budget(account, "GET", resp.status, resp.headers)
        if resp.status != 200:
            return resp
        m = manifests.check(route, resp.header("content-type"), resp.header("docker-content-digest"), resp.body)
        if isinstance(m, str):
            return m
        if not m.media_type:
            log.warning("hubcache: upstream manifest %s has no Content-Type: served, not stored", m.digest)
            return m
        store, tag = self.store, None if route.by_digest else route.reference

        def keep() -> None:  # on the writer thread, in one hand-over
            store.put_manifest(m.digest, m.media_type, m.body, seen)
            if tag is not None:
                store.put_tag(route.repository, tag, m.media_type, m.digest, len(m.body), time.time())

        try:
            await self._in_writer(keep)  # awaited: the client's next request must find it
        except (StoreError, lmdb.Error, OSError) as e:  # a full disk: served, not kept
            log.warning("hubcache: manifest %s not stored: %s", m.digest, e)
            return m
        self.writer.submit(store.evict_if_needed)  # not on the client's time
        return m

    def _refuse_or_stale(self, flow: http.HTTPFlow, st: _State, why: str) -> None:
        if st.stale is not None:
            self._serve_stale(flow, st, st.stale, why)
        else:
            self._refuse_miss(flow, st, why)

    def _reject_manifest(self, flow: http.HTTPFlow, st: _State, why: str) -> None:
        flow.response = responses.oci_error(502, "MANIFEST_INVALID", f"hubcache refused the upstream manifest: {why}")
        st.outcome, st.note = "rejected", why

    def _note_redirect(self, flow: http.HTTPFlow, st: _State) -> None:
        location = flow.response.headers.get("location", "") if flow.response else ""
        if not location:
            return
        target = urlsplit(urljoin(flow.request.pretty_url, location))
        if (target.hostname or "").lower() in self._hosts["registry_hosts"]:
            return
        path = target.path + (f"?{target.query}" if target.query else "")
        self.redirects[((target.hostname or "").lower(), path)] = (st.route.reference, st.route.repository, not st.account)
        while len(self.redirects) > MAX_REDIRECTS:
            self.redirects.popitem(last=False)

    # -- logging ------------------------------------------------------------------------------

    def _log(self, flow: http.HTTPFlow, st: _State) -> None:
        if st.logged:
            return
        st.logged = True
        self.metrics.requests.labels(st.route.kind.value, st.outcome).inc()
        if flow.response is not None and not flow.error and flow.request.method == "GET":
            length = flow.response.headers.get("content-length", "")
            source = "store" if st.outcome in ("hit", "revalidated", "stale") else "upstream" if st.outcome == "miss" else ""
            if source and (st.direct_bytes or length.isdigit()):
                self.metrics.bytes.labels(source).inc(st.direct_bytes or int(length))
        route = st.route
        status = flow.response.status_code if flow.response and not flow.error else "-"
        what = " ".join(x for x in (route.kind.value, route.repository or st.repository, route.reference or st.digest) if x)
        ms = (time.monotonic() - st.started) * 1000
        line = f"{st.outcome:<11} {flow.request.method:<4} {what} {status} {ms:.0f}ms"
        if st.note:
            line += f" ({st.note})"
        (log.warning if st.outcome in ("rejected", "error", "stale") else log.info)("hubcache: %s", line)


def _direct_tls() -> ssl.SSLContext | None:
    """The TLS listener's context, from mitmproxy's CA; None when mitmproxy has none loaded
    (tests without a master)."""
    try:
        certstore = ctx.master.addons.get("tlsconfig").certstore
    except AttributeError:
        return None
    return tls_context(certstore) if certstore is not None else None


def _owner(flow: http.HTTPFlow, st: _State) -> str:
    """Who may share a download made with a client's own login: the same login, same repository."""
    auth = flow.request.headers.get("authorization", "")
    return hashlib.sha256(f"{auth}\n{st.route.repository or st.repository}".encode()).hexdigest()


def _url(flow: http.HTTPFlow) -> str:
    req = flow.request
    port = "" if req.port == 443 else f":{req.port}"
    return f"https://{req.host}{port}{req.path}"
