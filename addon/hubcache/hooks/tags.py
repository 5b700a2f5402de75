"""Tag lists: asked upstream by hubcache itself (a small answer, with a token for the repository
in place of a local one) and relayed as upstream gave them; when upstream cannot be asked or does
not answer, answered from the tags hubcache has seen, marked partial."""

from __future__ import annotations

import json

from mitmproxy import http

from hubcache.decide import taglist
from hubcache.hooks.auth import other
from hubcache.hooks.flowstate import FlowState
from hubcache.hooks.responses import API_VERSION
from hubcache.hooks.services import Services, url_of
from hubcache.model import Outcome, Refusal
from hubcache.upstream import client
from hubcache.upstream.client import UpstreamError


async def handle(svc: Services, flow: http.HTTPFlow, st: FlowState) -> None:
    if why := svc.dockerhub.unavailable(flow.request.host):
        _partial(svc, flow, st, why)
        return
    try:
        auth = await svc.upstream_auth(flow, st)
        resp = await svc.dockerhub.follow(flow.request.method, url_of(flow), [("Authorization", auth)], kind="tags")
    except client.BodyTooLarge:  # a long list without pages: mitmproxy relays it, streamed
        await other(svc, flow, st)
        return
    except UpstreamError as e:
        _partial(svc, flow, st, str(e))
        return
    flow.response = http.Response.make(resp.status, resp.body, client.relayable(resp.headers))
    if flow.request.method == "HEAD" and resp.header("content-length").isdigit():  # the length a GET would have
        flow.response.headers["Content-Length"] = resp.header("content-length")
    st.outcome = Outcome.PASSTHROUGH


def _partial(svc: Services, flow: http.HTTPFlow, st: FlowState, why: str) -> None:
    repo = st.route.repository
    known = svc.the_store().tags(repo)
    if not known:
        raise Refusal(404, "NAME_UNKNOWN", f"{st.route.image} has no tags hubcache has seen, and {why}", Outcome.ERROR, note=why)
    tags, link = taglist.page(known, st.route.remote, flow.request.path.partition("?")[2])
    headers = {"Content-Type": "application/json", API_VERSION[0]: API_VERSION[1],
               "Warning": f'110 hubcache "partial: only the tags hubcache has seen; {why}"'}
    if link:
        headers["Link"] = link
    body = json.dumps({"name": repo, "tags": tags}).encode()
    flow.response = http.Response.make(200, b"" if flow.request.method == "HEAD" else body, headers)
    st.outcome, st.note = Outcome.STALE, "partial tag list"
