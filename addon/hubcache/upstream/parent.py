"""The parent registry (a shared tier: distribution in proxy mode, docs/design.md, "A parent registry") as hubcache
speaks to it: whether it is up, its own login, and hubcache's requests to it.

The parent is asked only for content addressed by digest (and for tags with
hubcache_parent_tags=parent, or when the registry cannot answer a tag and the store has none):
hubcache hashes everything it gets before it serves or stores it, so a broken parent can withhold
content but never substitute it. A parent that fails (down, slow, 5xx, 404, bytes that do not
match) backs off like any upstream, under a key of its own (decide/parent.health_key), and the
object comes from the registry unless hubcache_parent_fallback=never.

Connections to the parent go direct, never through the egress proxy of mitmproxy's upstream mode
(the parent is in the data centre), with the parent's TLS settings (hubcache_parent_ca, else the
registries' own). Its login (hubcache_parent_credentials) goes to the parent and its token realm
only; no registry's login or token ever goes there.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from hubcache import logs
from hubcache.decide import access
from hubcache.decide import challenge as challenges
from hubcache.decide.health import Health
from hubcache.decide.parent import ParentPlan, health_key
from hubcache.metrics import Metrics
from hubcache.model import Kind, Route
from hubcache.registries import DOCKER_HUB
from hubcache.settings import Settings, TLSSettings
from hubcache.upstream import client, credentials, fetch, tokens

log = logging.getLogger(__name__)

PARENT_LOGIN = "hubcache_parent_credentials"


class ParentError(client.UpstreamError):
    """The parent could not give an object (down, refused, wrong bytes); `status`: its answer's
    status when it answered with an error (5xx), else 0."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class Parent:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.plan: ParentPlan | None = None
        self.health = Health(30)
        self.tls = TLSSettings()
        self.timeout = 15.0
        self.connect_timeout = 5.0
        self.read_timeout = 60.0
        self._login: credentials.Credential | None = None
        self.pool_private: tuple[str, ...] = ()
        self._challenges: dict[str, challenges.Challenge | None] = {}  # root -> its /v2/ challenge (None: none)
        self._tokens: dict[str, tokens.UpstreamTokens] = {}  # root -> tokens of its realm

    def configure(self, settings: Settings) -> None:
        """Take new settings. Raises credentials.CredentialsError when the login file is unusable
        or would go in clear text."""
        roots = dict(settings.parent)
        unknown = [r for r in roots if r != DOCKER_HUB and settings.registries.named(r) is None]
        if unknown:
            raise credentials.CredentialsError(f"hubcache_parent: {', '.join(unknown)} is not a registry hubcache "
                                               "serves (add it with hubcache_registries=+NAME)")
        if settings.parent_ca and not os.access(settings.parent_ca, os.R_OK):
            raise credentials.CredentialsError(f"hubcache_parent_ca: cannot read {settings.parent_ca}")
        self.plan = ParentPlan(roots, settings.parent_prefix, settings.parent_tags, settings.parent_fallback) if roots else None
        self.health.backoff = settings.backoff
        self.pool_private = settings.pool_private
        self.tls = settings.parent_tls
        self.timeout, self.connect_timeout = settings.upstream_timeout, settings.connect_timeout
        self.read_timeout = settings.tcp_timeout
        self._challenges.clear()
        self._tokens.clear()
        self._login = None
        if settings.parent_credentials:
            if any(url.startswith("http://") for url in roots.values()):
                raise credentials.CredentialsError("hubcache_parent_credentials: the parent is plain http, its login "
                                                   "would cross the network in clear (serve it over https)")
            user, _, secret = credentials.one_login(Path(settings.parent_credentials).expanduser(),
                                                    "parent login file").partition(":")
            self._login = credentials.Credential(user, secret, PARENT_LOGIN, registry="parent")

    # -- what goes to the parent ---------------------------------------------------------------

    def asks(self, route: Route, own_login: bool, tag: bool = False) -> bool:
        """Whether a GET of `route` is asked of its registry's parent first (`tag`: a tag's
        manifest, by way of the parent). Never with the client's own login, nor for a repository
        of hubcache_pool_private: private content stays away from the parent."""
        if self.plan is None or own_login or not self.has(route.registry):
            return False
        if access.named_by(route.repository, self.pool_private):
            return False
        return tag or self.plan.asks_parent(route, "GET", own_login)

    def first(self, route: Route, authorization: str, tag: bool = False) -> bool:
        """Whether a GET of `route`, sent with the client's `authorization`, goes to the parent
        first: asked of it (`asks`) and it is not backing off. Raises ParentError when it is
        backing off and hubcache_parent_fallback=never (nothing else may give the object)."""
        if not self.asks(route, not tokens.brings_no_login(authorization), tag=tag):
            return False
        if why := self.unavailable(route.registry):
            if not self.falls_back():
                raise ParentError(f"{why} (hubcache_parent_fallback=never)")
            return False  # its back-off was told once
        return True

    def has(self, registry: str) -> bool:
        return self.plan is not None and registry in self.plan.roots

    def falls_back(self) -> bool:
        return self.plan is None or self.plan.falls_back()

    def unavailable(self, registry: str) -> str | None:
        """Why the registry's parent is not asked now (backing off), or None."""
        why = self.health.down(health_key(registry), time.time())
        return f"parent {self._root(registry)} unavailable: {why}" if why else None

    def url(self, route: Route, digest: str = "") -> str:
        assert self.plan is not None
        return self.plan.url(route, digest)

    # -- how it went ---------------------------------------------------------------------------

    def failed(self, route: Route, kind: str, reason: str) -> None:
        """The parent could not give an object: it backs off; the object goes elsewhere."""
        registry = route.registry
        self.metrics.parent.labels(registry, kind, "failed").inc()
        if self.health.failed(health_key(registry), reason, time.time()):
            then = "the registry is asked instead" if self.falls_back() else \
                "pulls of what the store lacks fail meanwhile (hubcache_parent_fallback=never)"
            logs.event(log, logging.WARNING, "parent_backoff",
                       f"parent {self._root(registry)} failed ({reason}): not asked for {self.health.backoff:.0f} s, "
                       f"{then} (if it persists: check the parent's own log and its route to the registry)",
                       registry=registry, parent=self._root(registry), reason=reason, seconds=self.health.backoff)

    def fell_back(self, route: Route, kind: str, why: str) -> None:
        """One object the parent did not give came from the registry."""
        self.metrics.parent_fallbacks.labels(route.registry, kind).inc()
        logs.event(log, logging.INFO, "parent_fallback",
                   f"{kind} {route.image}@{route.reference} from the registry: {why}",
                   registry=route.registry, repository=route.repository, reference=route.reference, kind=kind, reason=why)

    def succeeded(self, route: Route, kind: str, size: int) -> None:
        self.metrics.parent.labels(route.registry, kind, "ok").inc()
        self.metrics.parent_bytes.labels(route.registry).inc(size)
        if self.health.succeeded(health_key(route.registry), time.time()):
            logs.event(log, logging.INFO, "parent_recovered", f"parent {self._root(route.registry)} answers again",
                       registry=route.registry, parent=self._root(route.registry))

    def _root(self, registry: str) -> str:
        return self.plan.roots.get(registry, "") if self.plan else ""

    # -- requests ------------------------------------------------------------------------------

    async def headers(self, route: Route) -> list[tuple[str, str]]:
        """The parent's own login for a request about `route`: none without
        hubcache_parent_credentials; Basic, or a token of the parent's realm, as its /v2/
        challenge asks (learned once per parent)."""
        if self._login is None:
            return []
        root = self._root(route.registry)
        if root not in self._challenges:
            resp = await self.base(route.registry)
            found = challenges.parse(resp.header("www-authenticate")) if resp.status == 401 else None
            self._challenges[root] = found
        found = self._challenges[root]
        if found is None:
            return []
        if found.scheme == "basic":
            return [("Authorization", self._login.basic())]
        realm = found.realm
        if not realm.startswith("https://"):
            raise ParentError(f"parent {root}'s token realm {client.redact(realm)} is not https: its login is not sent there")
        if root not in self._tokens:
            self._tokens[root] = tokens.UpstreamTokens(self._get, realm, found.service)
        name = self.plan.name(route) if self.plan else route.remote
        return [("Authorization", f"Bearer {await self._tokens[root].token_for(f'repository:{name}:pull', self._login)}")]

    async def manifest(self, route: Route, reference: str, accept: list[str], method: str = "GET") -> client.UpstreamResponse:
        """GET (or HEAD) a manifest (`reference`: a digest, or a tag with hubcache_parent_tags=parent)
        at the parent, with the client's Accept. Raises ParentError when it cannot be asked, and
        for an answer in the 5xx range (distribution 2.8 answers 500 for Docker Hub's 429)."""
        if why := self.unavailable(route.registry):
            raise ParentError(why)
        headers = [("Accept", v) for v in accept] + await self.headers(route)
        resp = await self._request(method, self.url(route, reference), headers)
        if resp.status >= 500:
            raise ParentError(f"answered {resp.status}", resp.status)
        return resp

    def blob(self, route: Route, headers: list[tuple[str, str]]) -> fetch.Response:
        """GET a blob at the parent, its body still to read (on a flight's thread). Raises
        ParentError; its hosts are not the registry's, so the answer carries no hops."""
        try:
            url = self.url(route)  # a plain-http parent may redirect to plain-http storage; an https one may not
            resp = fetch.get(url, headers, self.tls, self.read_timeout, connect_timeout=self.connect_timeout,
                             allow_http=url.startswith("http://"))
        except client.UpstreamError as e:
            never = "" if self.falls_back() else " (hubcache_parent_fallback=never)"
            raise ParentError(f"parent: {e}{never}") from e
        resp.hops = []
        return resp

    async def base(self, registry: str, headers: list[tuple[str, str]] | None = None) -> client.UpstreamResponse:
        """GET /v2/ at the registry's parent (its challenge; with `headers`, whether they are a
        login it takes). Raises ParentError when it does not answer."""
        return await self._request("GET", f"{self._root(registry)}/v2/", headers or [])

    async def _get(self, url: str, headers: list[tuple[str, str]]) -> client.UpstreamResponse:
        return await self._request("GET", url, headers)

    async def _request(self, method: str, url: str, headers: list[tuple[str, str]]) -> client.UpstreamResponse:
        try:
            return await client.request(method, url, headers, self.tls, self.timeout, allow_http=True)
        except client.UpstreamError as e:
            raise ParentError(str(e)) from e


def kind_of(route: Route) -> str:
    return "blob" if route.kind is Kind.BLOB else "manifest"
