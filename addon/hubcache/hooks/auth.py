"""/v2/, tokens, the registry requests hubcache only relays, and who may get private content.

A warm pull makes no upstream request at all: `/v2/` and anonymous token requests are answered
here; a client's own credentials pass through to the token server unchanged.
"""

from __future__ import annotations

import hashlib

from mitmproxy import http

from hubcache.decide import access, challenge
from hubcache.hooks import responses
from hubcache.hooks.fallback import send_upstream
from hubcache.hooks.flowstate import FlowState
from hubcache.hooks.services import Services, url_of
from hubcache.model import MANIFEST_TYPES, Kind, Outcome, Refusal
from hubcache.registries import DOCKER_HUB, image_name
from hubcache.upstream import tokens
from hubcache.upstream.client import UpstreamError

CATALOG_SCOPE = "registry:catalog:*"


async def root(svc: Services, flow: http.HTTPFlow, st: FlowState) -> None:
    """/v2/, answered here with the registry's own challenge (Docker Hub's from the options, any
    other's as it last gave it), or relayed when hubcache does not know it and cannot ask."""
    auth = flow.request.headers.get("authorization", "")
    if st.route.registry == DOCKER_HUB:
        wanted = f'Bearer realm="{svc.settings.auth_realm}",service="{svc.settings.auth_service}"'
    else:
        try:
            seen = await svc.dockerhub.others.challenge(st.route.registry)
        except UpstreamError as e:
            st.note = str(e)
            return
        if seen.scheme == "basic":  # only the registry can tell a good login (docker login)
            if not tokens.brings_no_login(auth):
                return
            auth = ""  # an empty login: asked for one, as the registry would
        wanted = challenge.relocated(seen, st.route.registry).header()
    flow.response = responses.v2_root(bool(auth) or not wanted, wanted)
    st.outcome = Outcome.HIT


async def token(svc: Services, flow: http.HTTPFlow, st: FlowState) -> None:
    auth = flow.request.headers.get("authorization")
    if auth:
        # A client's own credentials go to the token server unchanged, with hubcache's bounded
        # timeout; when it cannot be reached the client gets a local token and can still pull
        # what the store has.
        url = url_of(flow)
        if realm := svc.dockerhub.others.original_realm(flow.request.host, flow.request.path):  # relocated
            url = realm + (f"?{flow.request.path.split('?', 1)[1]}" if "?" in flow.request.path else "")
        try:
            resp = await svc.dockerhub.request("GET", url, [("Authorization", auth)])
        except UpstreamError as e:
            st.note = str(e)
        else:
            flow.response = http.Response.make(
                resp.status, resp.body, {"Content-Type": resp.header("content-type", "application/json")}
            )
            if resp.header("www-authenticate"):
                flow.response.headers["Www-Authenticate"] = resp.header("www-authenticate")
            st.outcome = Outcome.PASSTHROUGH
            return
    flow.response = responses.token(tokens.issue_local_token())
    st.outcome = Outcome.HIT


async def invalid(svc: Services, flow: http.HTTPFlow, st: FlowState) -> None:
    raise Refusal(400, st.route.error_code, st.route.error_message, Outcome.REJECTED)


async def other(svc: Services, flow: http.HTTPFlow, st: FlowState) -> None:
    """A registry request hubcache relays (uploads, manifest writes, referrers, _catalog,
    anything new): a client's own credentials go as they are; in place of hubcache's local token,
    a read gets a pool or anonymous token for the same scope, and a write gets none (our token
    means nothing upstream; the registry then asks the client to log in, as it would directly)."""
    auth = flow.request.headers.get("authorization", "")
    if not auth or not tokens.brings_no_login(auth):
        return
    if scope := _read_scope(flow, st):
        await send_upstream(svc, flow, st, scope)
    else:
        del flow.request.headers["authorization"]


def _read_scope(flow: http.HTTPFlow, st: FlowState) -> str:
    """The token scope a read needs ("" for a write, or a path with no known scope)."""
    if flow.request.method not in ("GET", "HEAD"):
        return ""
    if st.route.repository:
        return f"repository:{st.route.remote}:pull"
    return CATALOG_SCOPE if flow.request.path.split("?", 1)[0] == "/v2/_catalog" else ""


async def allowed(svc: Services, flow: http.HTTPFlow, st: FlowState, digest: str) -> bool:
    """May this client get `digest` from the store under its repository? True: serve it; False:
    go upstream, which decides. Raises Refusal for private content upstream did not confirm.

    Content that belongs to the repository is served (private content once upstream accepted the
    client's token there). Content stored but not known to belong there ('foreign') is confirmed
    with a free HEAD before a GET is served from the store; a HEAD is simply relayed, since the
    registry's own answer costs the same (a pusher probing for a layer gets the registry's 404)."""
    if digest in st.verdicts:  # asked already for this flow
        return st.verdicts[digest]
    vis = access.visibility(svc.the_store().repositories(digest), st.route.repository)
    if vis == "public":
        return True
    auth = flow.request.headers.get("authorization", "")
    key = (hashlib.sha256(auth.encode()).hexdigest(), st.route.repository)
    if vis == "private" and not tokens.brings_no_login(auth) and svc.confirmed.get(key):
        return True
    if why := svc.dockerhub.unavailable(flow.request.host):
        if vis == "foreign":
            return False
        if svc.settings.offline_private == "allow":
            return True
        raise _unconfirmed(st.route.repository, why)
    if vis == "foreign" and flow.request.method == "HEAD":
        return False
    st.verdicts[digest] = verdict = await _upstream_has(svc, flow, st, digest, vis, key)
    return verdict


async def _upstream_has(svc: Services, flow: http.HTTPFlow, st: FlowState, digest: str, vis: str,
                        key: tuple[str, str]) -> bool:
    """Ask upstream, with a HEAD (free), whether this client's token, or else a pool token, may
    pull `digest` from the repository; a yes links it there (public with a pool token)."""
    repo = st.route.repository  # as the store keeps it; the URL has the registry's own name and port
    kind = "manifests" if st.route.kind is Kind.MANIFEST else "blobs"
    url = url_of(flow, f"/v2/{st.route.remote}/{kind}/{digest}")
    try:
        auth_up = await svc.upstream_auth(flow, st)
        resp = await svc.dockerhub.follow("HEAD", url, [("Authorization", auth_up), ("Accept", ", ".join(MANIFEST_TYPES))])
    except UpstreamError as e:
        if vis == "foreign":
            return False
        raise _unconfirmed(repo, str(e)) from e
    if resp.status < 400:
        if st.account or vis == "foreign":
            await svc.in_writer(svc.the_store().note_repository, digest, access.seen_as(repo, not st.account))
        if not st.account:
            svc.confirmed.put(key, True)
        return True
    if vis == "foreign":
        return False
    wanted = await _challenge(svc, st, f"repository:{st.route.remote}:pull")
    raise Refusal(401, "UNAUTHORIZED", "authentication required", Outcome.REFUSED,
                  note=f"private: upstream answered {resp.status}", headers={"Www-Authenticate": wanted} if wanted else {})


async def _challenge(svc: Services, st: FlowState, scope: str) -> str:
    """The flow's registry's own challenge: never Docker Hub's realm for another registry, where
    the client would send that registry's login."""
    if st.route.registry == DOCKER_HUB:
        return f'Bearer realm="{svc.settings.auth_realm}",service="{svc.settings.auth_service}",scope="{scope}"'
    try:
        return challenge.relocated(await svc.dockerhub.others.challenge(st.route.registry), st.route.registry).header(scope)
    except UpstreamError:
        return ""


async def link_if_stored(svc: Services, st: FlowState, digest: str) -> None:
    """Upstream answered 200 for `digest` in the flow's repository: if the store has it, it
    belongs there now (public when hubcache's or a pool token asked, else private)."""
    store = svc.the_store()
    seen = access.seen_as(st.route.repository, not st.account)
    if seen not in store.repositories(digest) and store.holds(digest):
        await svc.in_writer(store.note_repository, digest, seen)


def _unconfirmed(repo: str, why: str) -> Refusal:
    return Refusal(403, "DENIED", f"{image_name(repo)} is private and upstream cannot confirm access now: {why}",
                   Outcome.REFUSED, note="private, upstream unavailable")




def relocate_challenge(svc: Services, flow: http.HTTPFlow, st: FlowState) -> None:
    """A registry's own 401, relayed: its challenge is remembered as it is, and the client gets it
    with a realm on another host moved onto the registry's (challenge.relocated)."""
    assert flow.response is not None
    if seen := challenge.parse(flow.response.headers.get("www-authenticate", "")):
        svc.dockerhub.others.remember(st.route.registry, seen)
        if challenge.needs_relocation(seen, st.route.registry):
            moved = challenge.relocated(seen, st.route.registry)
            flow.response.headers["Www-Authenticate"] = moved.header(seen.params.get("scope", ""))
