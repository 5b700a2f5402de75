"""Blobs: served by the blob server from the store, or followed into the store as hubcache's
own download (a flight) writes them: one download per digest, however many clients ask.

A large blob goes to the client by a 307 to the blob server's TLS listener, which mitmproxy only
tunnels; a small one through mitmproxy, which streams the plain listener's answer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any
from urllib.parse import urljoin, urlsplit

from mitmproxy import connection, http

from hubcache import logs
from hubcache.decide import access
from hubcache.hooks import responses
from hubcache.hooks.auth import allowed
from hubcache.hooks.fallback import go_upstream, not_stored, send_upstream
from hubcache.hooks.flowstate import FlowState, client_of
from hubcache.hooks.services import Services, owner_of, url_of
from hubcache.model import BlobInfo, Kind, Outcome, Route
from hubcache.serve.flights import Flight
from hubcache.settings import DIRECT_HOST
from hubcache.upstream import fetch
from hubcache.upstream.client import UpstreamError
from hubcache.upstream.parent import ParentError

log = logging.getLogger(__name__)



async def handle(svc: Services, flow: http.HTTPFlow, st: FlowState) -> None:
    """GET or HEAD of /v2/<name>/blobs/<digest> on the registry."""
    info, flight = svc.flights.locate(st.route.reference, svc.the_store().blob_info)
    if info is not None and await allowed(svc, flow, st, info.digest):
        _serve(svc, flow, st, info)
        return
    st.digest, st.repository = st.route.reference, st.route.repository
    if flow.request.method != "GET":  # HEAD: upstream answers, nothing to store
        await go_upstream(svc, flow, st)
        st.private = not st.account
        return
    await _miss(svc, flow, st, flight)


async def handle_cdn(svc: Services, flow: http.HTTPFlow, st: FlowState) -> None:
    """A request on a blob CDN host: served from the store when it is a URL upstream redirected
    a client to for a blob; anything else passes through untouched."""
    known = svc.redirects.get((flow.request.host.lower(), flow.request.path))
    if known is None:
        return  # not a blob we sent the client to: passed through, not stored
    digest, repository, st.private = known  # a URL upstream gave an authorized client
    info, flight = svc.flights.locate(digest, svc.the_store().blob_info)
    if info is not None:
        _serve(svc, flow, st, info)
        return
    st.digest, st.repository = digest, repository
    if why := svc.dockerhub.unavailable(flow.request.host):
        raise not_stored(st, why)
    if flow.request.method != "GET":
        st.outcome = Outcome.MISS
    else:
        await _miss(svc, flow, st, flight)


def note_redirect(svc: Services, flow: http.HTTPFlow, st: FlowState) -> None:
    """Upstream redirected a blob GET (to its CDN): remember the URL, so that the client's
    request there is recognised as that blob."""
    location = flow.response.headers.get("location", "") if flow.response else ""
    if not location:
        return
    target = urlsplit(urljoin(flow.request.pretty_url, location))
    host = (target.hostname or "").lower()
    if host in svc.settings.registry_hosts:
        return
    path = target.path + (f"?{target.query}" if target.query else "")
    svc.redirects.put((host, path), (st.route.reference, st.route.repository, not st.account))


async def _miss(svc: Services, flow: http.HTTPFlow, st: FlowState, flight: Flight | None) -> None:
    """A GET of a blob the store lacks: join the download of it under way (`flight`, found by
    Flights.locate), or start one. Either way the blob server sends the client the bytes as
    they reach the store."""
    cdn = st.route.kind is Kind.CDN
    if svc.no_room.get(st.digest):
        await _unstored(svc, flow, st, cdn)
        return
    if flight is None or (flight.owner and not cdn and flight.owner != owner_of(flow, st)):
        parent = None if cdn else await _parent_first(svc, flow, st)
        headers = [] if parent is not None else await _credentials(svc, flow, st, cdn)
        # While the token came, a download may have started, or even ended and stored the blob.
        info, flight = svc.flights.locate(st.digest, svc.the_store().blob_info)
        if info is not None and (cdn or await allowed(svc, flow, st, info.digest)):
            _serve(svc, flow, st, info)
            return
        owner = ("cdn " + flow.request.path if cdn else owner_of(flow, st)) if st.private else ""
        if flight is not None and flight.owner and flight.owner != owner:
            # a download with someone else's login: not shared, not stored
            if headers:
                flow.request.headers["authorization"] = headers[0][1]
            st.outcome, st.note = Outcome.MISS, "private download of another client under way"
            return
        if flight is None:
            flight = _start_flight(svc, flow, headers, st, owner, parent)
        else:
            st.note = "joined a download under way"
    else:
        st.note = "joined a download under way"
    await _follow(svc, flow, st, flight, cdn)


async def _parent_first(svc: Services, flow: http.HTTPFlow, st: FlowState) -> list[tuple[str, str]] | None:
    """The parent's own login headers when this blob is asked of the registry's parent first;
    None when it goes to the registry alone. Raises Refusal when the parent cannot be asked and
    hubcache_parent_fallback=never."""
    parent = svc.parent
    try:
        if not parent.first(st.route, flow.request.headers.get("authorization", "")):
            return None
    except ParentError as e:  # backing off, and nothing else may give it
        raise not_stored(st, str(e)) from e
    try:
        headers = await parent.headers(st.route)
    except ParentError as e:
        if not parent.falls_back():
            raise not_stored(st, f"{e} (hubcache_parent_fallback=never)") from e
        return None
    st.private = False  # the parent's account reads public content only: shared like the pool's
    return headers


async def _credentials(svc: Services, flow: http.HTTPFlow, st: FlowState, cdn: bool) -> list[tuple[str, str]]:
    """The headers a new download sends: a token for the registry; none for a CDN URL, which
    carries its own signature. Raises Refusal when upstream is not to be asked."""
    if why := svc.dockerhub.unavailable(flow.request.host):
        raise not_stored(st, why)
    if cdn:
        return []
    try:
        auth = await svc.upstream_auth(flow, st)
    except UpstreamError as e:
        raise not_stored(st, f"no upstream token could be had: {e}") from e
    st.private = not st.account
    return [("Authorization", auth)]


async def _follow(svc: Services, flow: http.HTTPFlow, st: FlowState, flight: Flight, cdn: bool) -> None:
    """Wait for upstream's answer to the download, then hand the client the bytes as they land."""
    st.flight = flight
    head = await flight.head()
    st.outcome = Outcome.MISS
    if head.no_room:
        svc.no_room.put(st.digest, True)
        await _unstored(svc, flow, st, cdn)
    elif head.status == 200:
        _hand_out(svc, flow, st, st.digest, head.size, head.blob_id)
    elif head.status == 0:
        raise not_stored(st, head.error)
    else:  # upstream's own answer (401, 404, 429...), as upstream gave it
        flow.response = http.Response.make(head.status, head.body, head.headers)
        st.note = f"upstream answered {head.status}"


async def _unstored(svc: Services, flow: http.HTTPFlow, st: FlowState, cdn: bool) -> None:
    """The store has no room for this blob: the client gets it from upstream, passed through."""
    st.outcome, st.note = Outcome.MISS, "not stored: no room in the store"
    if not cdn:
        await send_upstream(svc, flow, st)


def _start_flight(svc: Services, flow: http.HTTPFlow, headers: list[tuple[str, str]], st: FlowState, owner: str,
                  parent: list[tuple[str, str]] | None = None) -> Flight:
    """Start hubcache's download of st.digest: from the registry with `headers`; or,
    with `parent` (the parent's login headers), from the parent first, then (unless
    hubcache_parent_fallback=never) from the registry with a token asked for only then."""
    store, digest, dh, settings, url = svc.the_store(), st.digest, svc.dockerhub, svc.settings, url_of(flow)
    loop = asyncio.get_running_loop()
    seen = access.seen_as(st.repository, st.private)
    route = st.route

    def authorize(challenge: str, target: str) -> str | None:  # on the flight's thread
        # a registry redirected the blob to a host that wants a token of its own realm (registry.k8s.io)
        token = asyncio.run_coroutine_threadsafe(dh.others.redirected_token(challenge, target), loop)
        return token.result(settings.upstream_timeout * 2)  # the realm's request, bounded by its own timeout

    def opener() -> fetch.Response:
        wanted = headers if parent is None else _on_loop(loop, _registry_headers(svc, flow, st), settings.upstream_timeout * 2)
        return fetch.get(url, wanted, settings.tls, settings.tcp_timeout, dh.unavailable, settings.connect_timeout,
                         egress=dh.egress, authorize=authorize,
                         pace=dh.pacer.hold)  # each hop waits its turn; the blob's slot is held until closed

    def record(hops: list[fetch.Hop]) -> None:  # on the event loop
        for hop in hops:
            dh.result(hop.host, hop.status, hop.error)
            if hop.status is not None:
                svc.metrics.upstream.labels("blob").inc()

    def ended(f: Flight) -> None:  # on the flight's thread
        svc.flights.end(f)
        if f.sibling:  # another worker downloaded it, and said so
            log.debug("blob %s of %s came from worker pid %d's download", f.digest, st.repository, f.sibling)
            return
        if parent is not None and not f.fell_back:  # the parent gave it, or (never) failed for good
            loop.call_soon_threadsafe(_parent_result, svc, route, f)
        _told_end(svc, st.repository, f)

    def fell_back(why: str) -> None:  # on the flight's thread
        loop.call_soon_threadsafe(_parent_failed, svc, route, why)

    use_parent = parent is not None
    flight = Flight(
        digest, partial(svc.parent.blob, route, parent or []) if use_parent else opener,
        lambda size: store.begin_blob(digest, size, seen), owner=owner, room=store.room_for,
        on_hops=lambda hops: _soon(loop, record, hops), on_end=ended,
        fallback=opener if use_parent and svc.parent.falls_back() else None, on_fallback=fell_back,
        siblings=svc.flights.siblings,
    )
    return svc.flights.add(flight).start()


def _told_end(svc: Services, repository: str, f: Flight) -> None:
    """The log line of a download's end (on the flight's thread)."""
    digest = f.digest
    if f.stored:
        logs.event(log, logging.INFO, "blob_stored", f"stored {digest} ({f.received} bytes) for {repository}",
                   digest=digest, bytes=f.received, repository=repository)
        svc.writer.submit(svc.the_store().evict_if_needed)
    elif f.failure.startswith("not stored"):
        svc.no_room.put(digest, True)
        logs.event(log, logging.WARNING, "blob_not_stored",
                   f"blob {digest} of {repository} served but {f.failure} (a full disk? lower "
                   "hubcache_max_size or free space)", digest=digest, repository=repository, reason=f.failure)
    else:  # the log's outcome words: rejected (bytes did not match), error (no complete transfer)
        logs.event(log, logging.WARNING, "blob_rejected" if f.rejected else "blob_failed",
                   f"{'rejected' if f.rejected else 'error':<11} download of blob {repository} {digest} "
                   f"failed: {f.failure}", digest=digest, repository=repository, reason=f.failure,
                   bytes=f.received)


async def _registry_headers(svc: Services, flow: http.HTTPFlow, st: FlowState) -> list[tuple[str, str]]:
    """A registry token for a download the parent could not give (asked only then: the parent
    serves while the registry, its auth host included, is down)."""
    try:
        return [("Authorization", await svc.upstream_auth(flow, st))]
    except UpstreamError as e:
        raise UpstreamError(f"no upstream token could be had: {e}") from e


def _on_loop[T](loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T], timeout: float) -> T:
    """Run `coro` on the event loop and wait for it (from a flight's thread)."""
    try:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)
    except TimeoutError as e:
        raise UpstreamError(f"no answer within {timeout:g} s") from e


def _parent_failed(svc: Services, route: Route, why: str) -> None:
    svc.parent.failed(route, "blob", why)
    svc.parent.fell_back(route, "blob", why)


def _parent_result(svc: Services, route: Route, f: Flight) -> None:
    if f.stored:
        svc.parent.succeeded(route, "blob", f.received)
    elif not f.failure.startswith("not stored"):  # hubcache_parent_fallback=never: the parent failed
        svc.parent.failed(route, "blob", f.failure)


def _soon(loop: asyncio.AbstractEventLoop, fn: Callable[[list[fetch.Hop]], None], hops: list[fetch.Hop]) -> None:
    loop.call_soon_threadsafe(fn, hops)


def _serve(svc: Services, flow: http.HTTPFlow, st: FlowState, info: BlobInfo) -> None:
    st.outcome = Outcome.HIT
    if flow.request.method == "HEAD":
        flow.response = responses.blob_head(info)
        return
    _hand_out(svc, flow, st, info.digest, info.size)


def _hand_out(svc: Services, flow: http.HTTPFlow, st: FlowState, digest: str, size: int, pending: bytes = b"") -> None:
    """Have the blob server send a blob: from the store, or (`pending`: the blob id of a
    download under way) its bytes as they arrive. A large one by a redirect to the TLS
    listener, which mitmproxy only tunnels; else through mitmproxy, which streams the plain
    listener's answer to the client."""
    server = svc.blobserver
    assert server is not None  # open whenever the store is
    path = server.path(digest, pending, client_of(flow))
    least = svc.settings.direct_min
    if server.tls_port and least is not None and size >= max(least, 1):
        flow.response = http.Response.make(307, b"", {"Location": f"https://{DIRECT_HOST}{path}",
                                                      "Docker-Content-Digest": digest})
        st.direct_bytes = size
        return
    to_local(flow, server.port)
    flow.request.path = path
    st.local_stream = True


def to_local(flow: http.HTTPFlow, port: int) -> None:
    """Send `flow` to the blob server's plain listener on this host. Never through the egress
    proxy of mitmproxy's upstream mode: the flow's connection to its own host names that proxy in
    `via`, so it gets a connection of its own."""
    req = flow.request
    req.scheme, req.data.host, req.data.port = "http", "127.0.0.1", port
    if flow.server_conn.via is not None:
        flow.server_conn = connection.Server(address=("127.0.0.1", port))
