"""Manifests: by digest from the store; by tag, fresh from the store, past the TTL revalidated
with a HEAD (Docker Hub does not count HEADs), changed or missing fetched once for every client
asking at the same time (one counted pull), and when upstream cannot answer, the last stored."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

import lmdb
from mitmproxy import http

from hubcache import logs
from hubcache.decide import access, freshness
from hubcache.decide import manifests as checks
from hubcache.decide.budget import pull_limited
from hubcache.decide.mediatypes import Accept, choose
from hubcache.decide.parent import TAGS_AT_PARENT
from hubcache.hooks import responses
from hubcache.hooks.auth import allowed
from hubcache.hooks.fallback import go_upstream, not_stored, serve_stale, stale_or_refuse
from hubcache.hooks.flowstate import FlowState
from hubcache.hooks.services import Services, owner_of, url_of
from hubcache.model import MAX_MANIFEST_BYTES, OCI_INDEX, OCI_MANIFEST, Manifest, Outcome, Refusal, Route
from hubcache.registries import DOCKER_HUB
from hubcache.store import StoreError
from hubcache.store.claims import Claim
from hubcache.upstream import client
from hubcache.upstream.client import UpstreamError, UpstreamResponse
from hubcache.upstream.dockerhub import ABUSE_LIMIT
from hubcache.upstream.parent import ParentError

log = logging.getLogger(__name__)

# What a registry converts a Docker manifest to for a client that accepts none of the types it has:
# signed anew at every request, its digest that of the payload without the signatures. Relayed as
# upstream sent it; never stored, since it cannot be checked as a whole nor served again.
SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"


async def handle(svc: Services, flow: http.HTTPFlow, st: FlowState) -> None:
    if st.route.by_digest:
        await _by_digest(svc, flow, st)
    elif svc.settings.pin_time is not None:
        _pinned(svc, flow, st, svc.settings.pin_time)
    else:
        await _by_tag(svc, flow, st)


async def _by_digest(svc: Services, flow: http.HTTPFlow, st: FlowState) -> None:
    m = svc.the_store().get_manifest(st.route.reference)
    accept = Accept.parse(flow.request.headers.get_all("accept"))
    # The registry answers a digest in its own type whatever the client accepts, except an OCI
    # manifest or index: 404 MANIFEST_UNKNOWN to a client that accepts only Docker types. Upstream
    # gives that answer.
    servable = m is not None and (m.media_type not in (OCI_MANIFEST, OCI_INDEX) or accept.accepts(m.media_type))
    if m is not None and servable and await allowed(svc, flow, st, st.route.reference):
        flow.response = responses.manifest(m, flow.request.method == "HEAD")
        st.outcome = Outcome.HIT
        return
    if flow.request.method == "GET" and _asks_parent(svc, flow, st) and await _answer_from_parent(svc, flow, st, st.route.reference):
        return
    if flow.request.method == "HEAD" and st.route.registry != DOCKER_HUB:
        await _head_miss(svc, flow, st)
        return
    await go_upstream(svc, flow, st, _fetch)


async def _by_tag(svc: Services, flow: http.HTTPFlow, st: FlowState) -> None:
    store, route = svc.the_store(), st.route
    accept = Accept.parse(flow.request.headers.get_all("accept"))
    records = store.tag_records(route.repository, route.reference)
    chosen = choose(records, accept)
    record = records[chosen] if chosen else None
    m = store.get_manifest(record.digest) if record else None
    if m is not None and not await allowed(svc, flow, st, m.digest):
        record = m = None
    decision = freshness.decide(record, m is not None, time.time(), svc.settings.tag_ttl)
    if decision is freshness.Decision.HIT and m is not None:
        flow.response = responses.manifest(m, flow.request.method == "HEAD")
        st.outcome = Outcome.HIT
        return
    if decision is freshness.Decision.REVALIDATE and record is not None and m is not None:
        if await _revalidate(svc, flow, st, record.digest, record.media_type, m):
            return
    # Going upstream for a GET. What the tag last was, of what the store holds, is the answer
    # if upstream cannot be asked or refuses (429), or when the pull budget is at its reserve.
    st.stale = m or _last_stored(svc, route.repository, route.reference, accept)
    if st.stale is not None and st.stale is not m and not await allowed(svc, flow, st, st.stale.digest):
        st.stale = None
    if st.stale is not None and svc.dockerhub.budget_low():  # the last pulls are kept for images not cached at all
        serve_stale(flow, st, st.stale, "pull budget reserve reached")
        return
    if flow.request.method == "HEAD" and st.route.registry != DOCKER_HUB:
        await _head_miss(svc, flow, st)
        return
    if st.stale is None and svc.dockerhub.unavailable(flow.request.host) and _asks_parent(svc, flow, st, tag=True) \
            and await _answer_from_parent(svc, flow, st, route.reference):
        return  # the registry is down and the store never had the tag: the parent's answer for it
    await go_upstream(svc, flow, st, _fetch)


async def _head_miss(svc: Services, flow: http.HTTPFlow, st: FlowState) -> None:
    """A HEAD the store cannot answer, on a registry other than Docker Hub: hubcache's own HEAD,
    the registry's redirects followed (registry.k8s.io sends every request elsewhere), the tag
    recorded. The client never meets the redirect (dockerd and containerd resolve tags with a
    HEAD), and once the manifest is fetched by digest the tag is answered offline too. Docker Hub's
    HEAD misses are relayed as they are (answers compared byte for byte with Hub's own)."""
    if why := svc.dockerhub.unavailable(flow.request.host):
        stale_or_refuse(flow, st, why)
        return
    st.outcome = Outcome.MISS
    try:
        resp = await _head_upstream(svc, flow, st)
    except UpstreamError as e:
        stale_or_refuse(flow, st, str(e))
        return
    await _remember_tag(svc, st.route, resp.status, resp.header, flow.request.headers.get_all("accept"))
    # the registry's own answer (the last hop's: its headers, Date included), as a relayed HEAD would be
    flow.response = http.Response.make(resp.status, b"", client.relayable(resp.headers))
    if length := resp.header("content-length"):
        flow.response.headers["Content-Length"] = length
    if resp.status != 200:
        st.note = f"upstream answered {resp.status}"


async def _head_upstream(svc: Services, flow: http.HTTPFlow, st: FlowState) -> UpstreamResponse:
    """hubcache's own HEAD of the flow's manifest (free at Docker Hub), with the client's Accept
    and the credentials upstream takes for this client, redirects followed. With
    hubcache_parent_tags=parent, the parent's HEAD (hosts without the registry's egress)."""
    plan = svc.parent.plan
    if plan is not None and plan.tags == TAGS_AT_PARENT and _asks_parent(svc, flow, st, tag=True):
        try:
            return await svc.parent.manifest(st.route, st.route.reference, flow.request.headers.get_all("accept"), "HEAD")
        except ParentError as e:
            svc.parent.failed(st.route, "manifest", str(e))
            if not svc.parent.falls_back():
                raise
    auth = await svc.upstream_auth(flow, st)
    headers = [("Accept", v) for v in flow.request.headers.get_all("accept")] + [("Authorization", auth)]
    return await svc.dockerhub.follow("HEAD", url_of(flow), headers)


def _last_stored(svc: Services, repository: str, tag: str, accept: Accept) -> Manifest | None:
    """The newest manifest this tag pointed to that the store still holds and the client accepts."""
    store = svc.the_store()
    for _, _, media_type, digest in reversed(store.tag_history(repository, tag)):
        if accept.accepts(media_type) and (m := store.get_manifest(digest)) is not None:
            return m
    return None


def _pinned(svc: Services, flow: http.HTTPFlow, st: FlowState, pin: float) -> None:
    """The tag as it was at `pin` (hubcache_pin_time), from its history; upstream is not asked."""
    store, route = svc.the_store(), st.route
    records = store.tag_at(route.repository, route.reference, pin)
    chosen = choose(records, Accept.parse(flow.request.headers.get_all("accept")))
    m = store.get_manifest(records[chosen].digest) if chosen else None
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(pin))
    if m is None:
        raise Refusal(404, "MANIFEST_UNKNOWN",
                      f"{route.image}:{route.reference} has no stored manifest as of {when} (hubcache_pin_time)",
                      Outcome.ERROR, note=f"pinned to {when}")
    flow.response = responses.manifest(m, flow.request.method == "HEAD")
    st.outcome, st.note = Outcome.HIT, f"pinned to {when}"


async def _revalidate(svc: Services, flow: http.HTTPFlow, st: FlowState, digest: str, media_type: str,
                      m: Manifest) -> bool:
    """HEAD upstream (not counted by Docker Hub). True when the flow was answered here."""
    try:
        resp = await _head_upstream(svc, flow, st)
    except UpstreamError as e:
        serve_stale(flow, st, m, str(e))
        return True
    svc.dockerhub.observe_budget(st.account, "HEAD", resp.status, resp.headers, resp.body, st.route.registry)
    if resp.status == 429 or resp.status >= 500:  # HEADs are free: a 429 here is the abuse limit
        serve_stale(flow, st, m, _why_refused(svc, flow, resp.status, resp.body))
        return True
    head = await _remember_tag(svc, st.route, resp.status, resp.header, flow.request.headers.get_all("accept"))
    if head is None:
        return False
    if head.digest == digest and head.media_type == media_type:
        flow.response = responses.manifest(m, flow.request.method == "HEAD")
        st.outcome = Outcome.REVALIDATED
        return True
    if flow.request.method == "HEAD":  # the client only wants to know the new digest
        flow.response = responses.manifest_head(head.media_type, head.digest, head.size)
        st.outcome, st.note = Outcome.MISS, "tag changed"
        return True
    return False


async def _remember_tag(svc: Services, route: Route, status: int, header: Callable[[str], str],
                       accept: Iterable[str]) -> checks.TagHead | None:
    """Upstream answered a HEAD of a tag (asked with the client's `accept`): record what the tag
    points to now (and its history)."""
    head = checks.tag_head(header) if status == 200 and not route.by_digest else None
    if head is not None and head.media_type != SCHEMA1_SIGNED:
        await svc.in_writer(svc.the_store().put_tag, route.repository, route.reference, head.media_type,
                            head.digest, head.size, time.time(), replaces=_superseded(svc, route, accept, head.media_type))
    return head


def _superseded(svc: Services, route: Route, accept: Iterable[str], chosen: str) -> list[str]:
    """The tag's other records that the client accepted too: upstream, asked with this Accept,
    answered `chosen`, so what they say is out of date (a tag that moved from an OCI to a Docker
    manifest must not keep its OCI record, which a client accepting both would be served)."""
    parsed = Accept.parse(accept)
    return [m for m in svc.the_store().tag_records(route.repository, route.reference) if m != chosen and parsed.accepts(m)]


async def after_upstream(svc: Services, flow: http.HTTPFlow, st: FlowState) -> None:
    """A manifest request that upstream answered itself (a HEAD on a miss): count the budget,
    serve stale on a 429, remember what a tag points to."""
    resp = flow.response
    if resp is None:
        return
    body = resp.get_content(strict=False)
    svc.dockerhub.observe_budget(st.account, flow.request.method, resp.status_code, resp.headers, body,
                                 st.route.registry)
    if resp.status_code == 429 and st.stale is not None:
        serve_stale(flow, st, st.stale, _why_refused(svc, flow, 429, body))
    elif resp.status_code == 429 and not pull_limited(429, body):  # as when upstream backs off
        refusal = not_stored(st, _why_refused(svc, flow, 429, body))
        flow.response = responses.refusal(refusal, head=flow.request.method == "HEAD")
        st.outcome, st.note = refusal.outcome, refusal.note
    if flow.request.method == "HEAD":
        await _remember_tag(svc, st.route, resp.status_code, lambda name: resp.headers.get(name, ""),
                            flow.request.headers.get_all("accept"))


async def _fetch(svc: Services, flow: http.HTTPFlow, st: FlowState) -> None:
    """GET a manifest upstream, once for all clients asking the same thing at the same time
    (same URL, same Accept, same login or the pool): one counted pull instead of many. With a
    parent, a tag is resolved by a HEAD at the registry (free) and its manifest asked of the
    parent by digest (hubcache_parent_tags=parent: the tag itself is asked of the parent)."""
    if not st.route.by_digest and _asks_parent(svc, flow, st, tag=True) and await _tag_via_parent(svc, flow, st):
        return
    try:
        auth = await svc.upstream_auth(flow, st)
    except UpstreamError as e:
        stale_or_refuse(flow, st, f"no upstream token could be had: {e}")
        return
    url, accept = url_of(flow), tuple(flow.request.headers.get_all("accept"))
    key = (url, accept, owner_of(flow, st) if not st.account else "")
    headers = [("Accept", v) for v in accept] + [("Authorization", auth)]
    seen = access.seen_as(st.route.repository, not st.account)  # no pool account: the client's own login
    try:
        got, joined = await svc.manifest_fetches.run(
            key, lambda: _among_workers(svc, key, lambda: _fetch_once(svc, st.route, url, headers, st.account, seen),
                                        alone=st.after_sibling))
    except client.BodyTooLarge as e:
        raise _rejected(f"upstream manifest is over the {MAX_MANIFEST_BYTES} byte limit") from e
    except UpstreamError as e:
        stale_or_refuse(flow, st, str(e))
        return
    if got is None:  # another worker fetched it: the store answers now, as if asked again
        st.after_sibling = True
        await handle(svc, flow, st)
        return
    if joined:
        st.note = "joined a fetch under way"
    if isinstance(got, Manifest):
        flow.response = responses.manifest(got, False)
    elif isinstance(got, str):  # upstream sent a manifest that does not match its digest
        raise _rejected(got)
    elif got.status == 429 and (st.stale is not None or not pull_limited(429, got.body)):
        stale_or_refuse(flow, st, _why_refused(svc, flow, 429, got.body))  # a bare 429: as when upstream backs off
    else:
        flow.response = http.Response.make(got.status, got.body, client.relayable(got.headers))
        st.note = f"upstream answered {got.status}" if got.status != 200 else "a signed schema 1 conversion, relayed"


async def _among_workers[T](svc: Services, key: tuple[str, tuple[str, ...], str], fetch: Callable[[], Awaitable[T]],
                            alone: bool = False) -> T | None:
    """`fetch()` once among the worker processes of `hubcache run --workers N` (serve/siblings.py):
    None when another worker was fetching the same (`key`: URL, Accept, whose login) and has
    ended, its result in the store if it kept one. A client's own login is never shared; nor
    when `alone` (asked again after a sibling's fetch: its result was not stored)."""
    siblings = svc.flights.siblings
    if siblings is None or key[2] or alone:
        return await fetch()
    name = "manifest " + hashlib.sha256(repr(key[:2]).encode()).hexdigest()
    held = await asyncio.to_thread(siblings.take, name, "")
    if isinstance(held, Claim):  # under way in a sibling, or just done there
        if not held.done:
            await asyncio.to_thread(siblings.wait_end, name, held)
        return None
    try:
        return await fetch()
    finally:  # kept a moment: a sibling that missed in the store just before it was stored uses it
        await asyncio.to_thread(siblings.release, name, True)


async def _fetch_once(svc: Services, route: Route, url: str, headers: list[tuple[str, str]], account: str,
                      seen: str) -> Manifest | str | UpstreamResponse:
    """One upstream GET of a manifest: the verified, stored Manifest; a reason (str) when
    upstream's bytes were refused; or upstream's answer when it was not a 200, or a signed schema 1."""
    resp = await svc.dockerhub.follow("GET", url, headers, kind="manifest")
    svc.dockerhub.observe_budget(account, "GET", resp.status, resp.headers, resp.body, route.registry)
    if resp.status != 200 or resp.header("content-type").split(";")[0].strip() == SCHEMA1_SIGNED:
        return resp
    m = checks.check(route, resp.header("content-type"), resp.header("docker-content-digest"), resp.body)
    if isinstance(m, str):
        return m
    if not m.media_type:
        logs.event(log, logging.WARNING, "manifest_not_stored",
                   f"manifest {m.digest} of {route.repository}: upstream sent no Content-Type, served but not stored",
                   digest=m.digest, repository=route.repository, reason="no Content-Type")
        return m
    await _keep(svc, route, m, None if route.by_digest else route.reference, [v for k, v in headers if k == "Accept"], seen)
    return m


async def _keep(svc: Services, route: Route, m: Manifest, tag: str | None, accept: Iterable[str], seen: str) -> None:
    """Store a verified manifest, and what `tag` points to now (asked with `accept`)."""
    store = svc.the_store()
    superseded = _superseded(svc, route, accept, m.media_type) if tag else []

    def keep() -> None:  # on the writer thread, in one hand-over
        store.put_manifest(m.digest, m.media_type, m.body, seen)
        if tag is not None:
            store.put_tag(route.repository, tag, m.media_type, m.digest, len(m.body), time.time(), replaces=superseded)

    try:
        await svc.in_writer(keep)  # awaited: the client's next request must find it
    except (StoreError, lmdb.Error, OSError) as e:  # a full disk: served, not kept
        logs.event(log, logging.WARNING, "manifest_not_stored",
                   f"manifest {m.digest} of {route.repository} served but not stored: {e} (a full disk? "
                   "lower hubcache_max_size or free space)", digest=m.digest, repository=route.repository, reason=str(e))
        return
    svc.writer.submit(store.evict_if_needed)  # not on the client's time


def _why_refused(svc: Services, flow: http.HTTPFlow, status: int, body: bytes | None) -> str:
    """Why upstream's refusal (429, 5xx) of a manifest request is answered from the store or not
    at all. A bare 429 (the abuse limit) has backed the host off: said as any back-off is."""
    if status != 429:
        return f"upstream answered {status}"
    if pull_limited(status, body):
        return "pull limit reached: upstream answered 429 TOOMANYREQUESTS"
    return svc.dockerhub.unavailable(flow.request.host) or f"upstream {ABUSE_LIMIT}"


def _rejected(why: str) -> Refusal:
    return Refusal(502, "MANIFEST_INVALID", f"hubcache refused the upstream manifest: {why}", Outcome.REJECTED, note=why)




# -- the parent (hubcache_parent) ------------------------------------------------------------------

ELSEWHERE = "the parent's tag points to another digest"


def _asks_parent(svc: Services, flow: http.HTTPFlow, st: FlowState, tag: bool = False) -> bool:
    """Whether the registry's parent is asked for this GET (`tag`: about a tag, resolved at the
    registry or at the parent). Never with the client's own login. Raises Refusal when the parent
    is backing off and hubcache_parent_fallback=never."""
    try:
        return svc.parent.first(st.route, flow.request.headers.get("authorization", ""), tag=tag)
    except ParentError as e:
        raise not_stored(st, str(e)) from e


async def _tag_via_parent(svc: Services, flow: http.HTTPFlow, st: FlowState) -> bool:
    """A tag's manifest by way of the parent: resolved by hubcache's free HEAD at the registry,
    then fetched by digest (or, hubcache_parent_tags=parent, the tag asked of the parent). True
    when the flow was answered here."""
    route = st.route
    if svc.parent.plan is not None and svc.parent.plan.tags == TAGS_AT_PARENT:
        return await _answer_from_parent(svc, flow, st, route.reference)
    try:
        resp = await _head_upstream(svc, flow, st)
    except UpstreamError:  # the registry is down: the store's last answer, else the parent's
        return st.stale is None and await _answer_from_parent(svc, flow, st, route.reference)
    svc.dockerhub.observe_budget(st.account, "HEAD", resp.status, resp.headers, resp.body, route.registry)
    head = await _remember_tag(svc, route, resp.status, resp.header, flow.request.headers.get_all("accept"))
    if head is None or head.media_type == SCHEMA1_SIGNED:
        return False  # the registry's GET gives its answer (401, 404...) as it always has
    # Asked by tag, so that the parent keeps the tag too and can answer it while the registry is
    # down (its own HEAD there is free); what it answers must be the digest the registry said.
    if await _answer_from_parent(svc, flow, st, route.reference, expected=head.digest):
        return True
    return not svc.parent.unavailable(route.registry) and await _answer_from_parent(svc, flow, st, head.digest)


async def _answer_from_parent(svc: Services, flow: http.HTTPFlow, st: FlowState, reference: str,
                              expected: str = "") -> bool:
    """Answer the flow with the parent's manifest for `reference` (a digest, or the flow's tag:
    `expected` is then the digest it must have), verified and stored, once for every client
    asking the same at the same time. False when the parent could not give it (it backs off; the
    registry is asked), or its tag is elsewhere. Raises Refusal with hubcache_parent_fallback=never."""
    accept = tuple(flow.request.headers.get_all("accept"))
    key = ("parent", st.route.registry, st.route.repository, reference, accept, expected)
    got, joined = await svc.manifest_fetches.run(key, lambda: _parent_once(svc, st.route, reference, accept, expected))
    if got is ELSEWHERE:
        return False
    if isinstance(got, str):
        if not svc.parent.falls_back():
            raise not_stored(st, f"the parent could not give it: {got} (hubcache_parent_fallback=never)")
        return False
    flow.response = responses.manifest(got, False)
    st.outcome, st.note = Outcome.MISS, "from the parent" + (", joined a fetch under way" if joined else "")
    return True


async def _parent_once(svc: Services, route: Route, reference: str, accept: tuple[str, ...],
                       expected: str = "") -> Manifest | str:
    """One GET of a manifest at the parent: the verified, stored Manifest, ELSEWHERE (its tag
    is not at `expected`), or why not (the parent backs off, and the object is counted as falling
    back when the registry is asked instead)."""
    parent = svc.parent
    target = dataclasses.replace(route, reference=reference)
    try:
        resp = await parent.manifest(route, reference, list(accept))
        if resp.status != 200:
            raise ParentError(f"answered {resp.status}")
        m = checks.check(target, resp.header("content-type"), resp.header("docker-content-digest"), resp.body)
        if isinstance(m, str):
            raise ParentError(m.replace("upstream manifest", "its manifest"))
        if not m.media_type or m.media_type == SCHEMA1_SIGNED:
            raise ParentError(f"sent a manifest of type {m.media_type or 'none'}")
        if expected and m.digest != expected:
            return ELSEWHERE  # moved meanwhile, or another type for this Accept: asked by digest
    except (ParentError, client.BodyTooLarge) as e:
        parent.failed(route, "manifest", str(e))
        if parent.falls_back():
            parent.fell_back(route, "manifest", str(e))
        return str(e)
    parent.succeeded(route, "manifest", len(m.body))
    tag = None if route.by_digest else route.reference
    await _keep(svc, route, m, tag, accept, access.seen_as(route.repository, False))
    return m
