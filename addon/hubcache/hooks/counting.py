"""The counters the store keeps (what was served, per image and client, across restarts): each
answered registry request, as its flow ends, told to decide/counting.py and its count handed to
the store, which buffers it and writes it with the access times."""

from __future__ import annotations

import time

from mitmproxy import http

from hubcache.decide.clients import address_name
from hubcache.decide.counting import Pulls, Served
from hubcache.hooks.flowstate import FROM_STORE, FlowState, login_of
from hubcache.model import Kind
from hubcache.registries import image_name
from hubcache.store import Store

COUNTED = frozenset({Kind.MANIFEST, Kind.BLOB, Kind.CDN})


class Counting:
    def __init__(self) -> None:
        self.pulls = Pulls()
        self.store: Store | None = None  # set while the store is open

    def count(self, flow: http.HTTPFlow, st: FlowState, size: int | None) -> None:
        """Count a flow that ended (`size`: the body bytes the client was sent, None unknown)."""
        store = self.store
        if store is None or st.route.kind not in COUNTED or flow.response is None or flow.error:
            return
        peer = flow.client_conn.peername
        client = login_of(flow) or (address_name(str(peer[0])) if peer else "")
        served = Served(client=client, repository=st.repo, image=image_name(st.repo),
                        manifest=st.route.kind is Kind.MANIFEST, method=flow.request.method, reference=st.ref,
                        digest=flow.response.headers.get("docker-content-digest", ""),
                        status=flow.response.status_code if not st.direct_bytes else 200,
                        size=size or 0, from_store=st.outcome in FROM_STORE)
        c = self.pulls.count(served, time.time())
        if c is not None:
            store.count(c.reference, c.digest, c.client, pull=c.pull, hit=c.hit, nbytes=c.bytes, store_bytes=c.store_bytes)
