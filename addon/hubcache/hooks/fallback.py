"""What a request gets when the store cannot answer it: upstream with credentials upstream
accepts, the store's last answer marked stale, or a refusal that names the image and why."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from mitmproxy import http

from hubcache.hooks import responses
from hubcache.hooks.flowstate import FlowState
from hubcache.hooks.services import Services
from hubcache.model import Kind, Manifest, Outcome, Refusal
from hubcache.registries import image_name
from hubcache.upstream.client import UpstreamError

Fetch = Callable[[Services, http.HTTPFlow, FlowState], Awaitable[None]]


def not_stored(st: FlowState, why: str) -> Refusal:
    """A miss that cannot go upstream now. 404 with the registry's own code: clients print the
    message of a 4xx error body, while for a 5xx they print only the status."""
    ref = st.ref
    what = image_name(st.repo) + (f"@{ref}" if ref.startswith("sha256:") else f":{ref}")
    code = "MANIFEST_UNKNOWN" if st.route.kind is Kind.MANIFEST else "BLOB_UNKNOWN"
    return Refusal(404, code, f"{what} is not in hubcache's store and {why}", Outcome.ERROR, note=why)


def serve_stale(flow: http.HTTPFlow, st: FlowState, m: Manifest, why: str) -> None:
    """What the store has for a tag, marked stale (Warning header, log outcome), and why."""
    flow.response = responses.manifest(m, flow.request.method == "HEAD", warning=f"stale: {why}")
    st.outcome, st.note = Outcome.STALE, why


def stale_or_refuse(flow: http.HTTPFlow, st: FlowState, why: str) -> None:
    """The tag's last stored manifest if there is one (st.stale), else a refusal."""
    if st.stale is None:
        raise not_stored(st, why)
    serve_stale(flow, st, st.stale, why)


async def go_upstream(svc: Services, flow: http.HTTPFlow, st: FlowState, fetch: Fetch | None = None) -> None:
    """Not in the store: upstream, unless upstream is not to be asked now. A GET with `fetch`
    is fetched by hubcache itself (shared, verified, stored); anything else is relayed."""
    if why := svc.dockerhub.unavailable(flow.request.host):
        stale_or_refuse(flow, st, why)
        return
    st.outcome = Outcome.MISS
    if fetch is not None and flow.request.method == "GET":
        await fetch(svc, flow, st)
    else:
        await send_upstream(svc, flow, st)


async def send_upstream(svc: Services, flow: http.HTTPFlow, st: FlowState, scope: str = "") -> None:
    """Let the flow go upstream with credentials that upstream accepts (for `scope`: by default,
    pulling from the flow's repository)."""
    try:
        auth = await svc.upstream_auth(flow, st, scope)
    except UpstreamError as e:
        raise not_stored(st, f"no upstream token could be had: {e}") from e
    if auth:
        flow.request.headers["authorization"] = auth
    else:  # a registry that asks for no login: hubcache's local token means nothing there
        flow.request.headers.pop("authorization", None)
