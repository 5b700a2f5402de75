"""/v2/, tokens, the registry requests hubcache only relays, and who may get private content.

A warm pull makes no upstream request at all: `/v2/` and anonymous token requests are answered
here; a client's own credentials pass through to the token server unchanged.
"""

from __future__ import annotations

import hashlib

from mitmproxy import http

from hubcache.decide import access
from hubcache.hooks import responses
from hubcache.hooks.fallback import send_upstream
from hubcache.hooks.flowstate import FlowState
from hubcache.hooks.services import Services, url_of
from hubcache.model import MANIFEST_TYPES, Kind, Outcome, Refusal
from hubcache.upstream import tokens
from hubcache.upstream.client import UpstreamError


async def root(svc: Services, flow: http.HTTPFlow, st: FlowState) -> None:
    authorized = bool(flow.request.headers.get("authorization"))
    flow.response = responses.v2_root(authorized, svc.settings.auth_realm, svc.settings.auth_service)
    st.outcome = Outcome.HIT


async def token(svc: Services, flow: http.HTTPFlow, st: FlowState) -> None:
    auth = flow.request.headers.get("authorization")
    if auth:
        # A client's own credentials go to the token server unchanged, with hubcache's bounded
        # timeout; when it cannot be reached the client gets a local token and can still pull
        # what the store has.
        try:
            resp = await svc.dockerhub.request("GET", url_of(flow), [("Authorization", auth)])
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
    """A registry request hubcache does not cache: relayed, with credentials upstream accepts
    in place of a local token."""
    if not tokens.is_local(flow.request.headers.get("authorization", "")):
        return
    if st.route.repository:
        await send_upstream(svc, flow, st)
    else:
        del flow.request.headers["authorization"]  # our local token means nothing upstream


async def allowed(svc: Services, flow: http.HTTPFlow, st: FlowState, digest: str) -> bool:
    """May this client get `digest` from the store under its repository? True: serve it; False:
    go upstream, which decides. Raises Refusal when upstream said no or cannot be asked."""
    store = svc.the_store()
    repo = st.route.repository
    vis = access.visibility(store.repositories(digest), repo)
    if vis != "private":
        return vis == "public"
    auth = flow.request.headers.get("authorization", "")
    own = bool(auth) and not tokens.is_local(auth)
    key = (hashlib.sha256(auth.encode()).hexdigest(), repo)
    if own and svc.confirmed.get(key):
        return True
    if why := svc.dockerhub.unavailable(flow.request.host):
        if svc.settings.offline_private == "allow":
            return True
        raise _unconfirmed(repo, why)
    # Ask upstream, with a HEAD (free), whether this client's token, or else a pool token, may
    # pull it there; a pool token's yes makes the content public in this repository.
    kind = "manifests" if st.route.kind is Kind.MANIFEST else "blobs"
    try:
        auth_up = await svc.upstream_auth(flow, st)
        resp = await svc.dockerhub.request("HEAD", f"https://{flow.request.host}/v2/{repo}/{kind}/{digest}",
                                           [("Authorization", auth_up), ("Accept", ", ".join(MANIFEST_TYPES))])
    except UpstreamError as e:
        raise _unconfirmed(repo, str(e)) from e
    if resp.status < 400:
        if st.account:
            await svc.in_writer(store.note_repository, digest, access.seen_as(repo, False))
        else:
            svc.confirmed.put(key, True)
        return True
    challenge = f'Bearer realm="{svc.settings.auth_realm}",service="{svc.settings.auth_service}",scope="repository:{repo}:pull"'
    raise Refusal(401, "UNAUTHORIZED", "authentication required", Outcome.REFUSED,
                  note=f"private: upstream answered {resp.status}", headers={"Www-Authenticate": challenge})


def _unconfirmed(repo: str, why: str) -> Refusal:
    return Refusal(403, "DENIED", f"docker.io/{repo} is private and upstream cannot confirm access now: {why}",
                   Outcome.REFUSED, note="private, upstream unavailable")


