"""What the hooks share: the settings, the store and its servers, the downloads under way,
Docker Hub, the metrics, and the small tables that remember things for a while."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from mitmproxy import http

from hubcache.expiring import ExpiringCache
from hubcache.hooks.counting import Counting
from hubcache.hooks.flowstate import Clients, FlowState
from hubcache.metrics import Metrics
from hubcache.serve.blobserver import BlobServer
from hubcache.serve.flights import Flights
from hubcache.settings import Settings
from hubcache.store import Store
from hubcache.upstream.dockerhub import DockerHub
from hubcache.upstream.parent import Parent
from hubcache.upstream.singleflight import Shared
from hubcache.worker import Role, role

T = TypeVar("T")

NO_ROOM_SECONDS = 60  # a blob the store had no room for goes upstream unstored this long
CONFIRM_SECONDS = 300  # how long upstream's "yes, this token may pull that repository" is believed
REDIRECT_SECONDS = 3600  # a CDN URL from a 307 is recognised this long (Docker Hub's are signed for less)
MAX_ENTRIES = 10_000  # per table: a busy day's distinct blobs, logins or CDN URLs


class Services:
    def __init__(self) -> None:
        self.settings = Settings()
        self.role: Role = role()  # one of several workers on one port and store, or alone
        self.store: Store | None = None
        self.blobserver: BlobServer | None = None
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="hubcache-writer")  # manifests, tags, access times
        self.flights = Flights()  # blob downloads under way, by digest
        self.manifest_fetches: Shared[Any] = Shared()  # manifest GETs under way
        self.metrics = Metrics()
        self.clients = Clients(self.metrics, self.settings.metrics_clients)  # the per-client metrics' labels
        self.counting = Counting()  # the store's counters of what was served (hubcache stats)
        self.dockerhub = DockerHub(self.metrics)
        self.parent = Parent(self.metrics)  # the shared tier asked first for content by digest (hubcache_parent)
        self.no_room: ExpiringCache[str, bool] = ExpiringCache(MAX_ENTRIES, NO_ROOM_SECONDS)
        # (sha256 of a client's Authorization, repository): upstream accepted it for that repository
        self.confirmed: ExpiringCache[tuple[str, str], bool] = ExpiringCache(MAX_ENTRIES, CONFIRM_SECONDS)
        # (CDN host, path) -> (digest, repository, private): a URL upstream redirected a client to
        self.redirects: ExpiringCache[tuple[str, str], tuple[str, str, bool]] = ExpiringCache(MAX_ENTRIES, REDIRECT_SECONDS)

    def the_store(self) -> Store:
        """The open store (the request hook runs only while there is one)."""
        if self.store is None:
            raise RuntimeError("hubcache's store is not open")
        return self.store

    async def in_writer(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store write on the writer thread: never on the event loop (LMDB commits fsync)."""
        return await asyncio.get_running_loop().run_in_executor(self.writer, partial(fn, *args, **kwargs))

    async def upstream_auth(self, flow: http.HTTPFlow, st: FlowState, scope: str = "") -> str:
        """The Authorization for an upstream request on behalf of this client (st.account: as
        whom); a token for `scope`, by default pulling from the flow's repository."""
        scope = scope or f"repository:{st.route.remote}:pull"
        auth, st.account = await self.dockerhub.authorization(flow.request.headers.get("authorization", ""), scope,
                                                              st.route.registry)
        return auth


def url_of(flow: http.HTTPFlow, path: str = "") -> str:
    """The flow's URL upstream, or another `path` on the same registry host and port."""
    req = flow.request
    port = "" if req.port == 443 else f":{req.port}"
    return f"https://{req.host}{port}{path or req.path}"


def owner_of(flow: http.HTTPFlow, st: FlowState) -> str:
    """Who may share a download made with a client's own login: the same login, same repository."""
    auth = flow.request.headers.get("authorization", "")
    return hashlib.sha256(f"{auth}\n{st.repo}".encode()).hexdigest()
