"""Manifest writes relayed through hubcache: once upstream accepted one, hubcache's record of
the tag follows at once, so that the next pull through hubcache gets what was just pushed
(not the old digest until the tag's TTL ends), and a deleted manifest is no longer served."""

from __future__ import annotations

import logging
import time

from mitmproxy import http

from hubcache.decide import access
from hubcache.hooks.flowstate import FlowState
from hubcache.hooks.services import Services
from hubcache.model import MAX_MANIFEST_BYTES, is_digest, sha256_digest

log = logging.getLogger(__name__)


async def after_upstream(svc: Services, flow: http.HTTPFlow, st: FlowState) -> None:
    resp = flow.response
    if resp is None:
        return
    if flow.request.method == "PUT" and resp.status_code == 201:
        await _pushed(svc, flow, st, resp.headers.get("docker-content-digest", ""))
    elif flow.request.method == "DELETE" and resp.status_code == 202:
        await _deleted(svc, st)


async def _pushed(svc: Services, flow: http.HTTPFlow, st: FlowState, digest: str) -> None:
    """The PUT's body is the manifest: kept, with the tag pointing to it, when it hashes to the
    digest upstream answered with; otherwise the tag record is dropped (the next pull asks)."""
    store, repo, ref = svc.the_store(), st.route.repository, st.route.reference
    body = flow.request.raw_content  # None when mitmproxy streamed it (over stream_large_bodies)
    media_type = flow.request.headers.get("content-type", "").split(";")[0].strip()
    if body is None or len(body) > MAX_MANIFEST_BYTES or sha256_digest(body) != digest or not media_type \
            or (st.route.by_digest and ref != digest):
        if st.route.by_digest:
            return
        if is_digest(digest) and media_type:  # the tag's new digest, without the manifest: the next pull fetches it
            length = flow.request.headers.get("content-length", "")
            size = int(length) if length.isdigit() else 0
            await svc.in_writer(store.put_tag, repo, ref, media_type, digest, size, time.time(), only=True)
            st.note = "pushed; tag updated, manifest not kept"
        else:
            await svc.in_writer(store.drop_tag, repo, ref)
            st.note = "pushed; tag record dropped"
        return
    # Pushed with the client's own login: private to the repository until upstream confirms a pull.
    seen = access.seen_as(repo, private=not st.account)

    def keep() -> None:
        store.put_manifest(digest, media_type, body, seen)
        if not st.route.by_digest:
            store.put_tag(repo, ref, media_type, digest, len(body), time.time(), only=True)  # the registry has only this now

    await svc.in_writer(keep)
    st.note = "pushed; tag updated" if not st.route.by_digest else "pushed"


async def _deleted(svc: Services, st: FlowState) -> None:
    store, repo, ref = svc.the_store(), st.route.repository, st.route.reference
    if st.route.by_digest:
        seen = [access.seen_as(repo, False), access.seen_as(repo, True), repo]
        await svc.in_writer(store.remove_from_repository, ref, repo, seen)
    else:
        await svc.in_writer(store.drop_tag, repo, ref)
    st.note = "deleted upstream; forgotten here"
