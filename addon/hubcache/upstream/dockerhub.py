"""Docker Hub as hubcache speaks to it: which of its hosts are up, which account a pull goes as,
pull tokens, and hubcache's own requests (tokens, manifests, HEAD revalidation and confirmation;
blob downloads go through fetch.py with the same TLS settings and availability check).

Every upstream request hubcache makes itself goes through `request`, which refuses while offline
or backing off, waits its turn (pacing.py), bounds the time, and remembers how it went.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Collection, Mapping
from urllib.parse import urlsplit

from hubcache import logs
from hubcache.decide import access
from hubcache.decide.budget import ANONYMOUS, Budgets, pull_limited
from hubcache.decide.health import Health
from hubcache.decide.redirects import Hops
from hubcache.metrics import Metrics
from hubcache.registries import DOCKER_HUB
from hubcache.settings import Egress, Settings
from hubcache.upstream import client, credentials, egress, tokens
from hubcache.upstream.pacing import Pacer
from hubcache.upstream.registryauth import RegistryAuth

log = logging.getLogger(__name__)

REGISTRY = "registry"  # the health key of all registry host aliases
RECENTLY_OK = 60  # seconds after a good upstream answer in which connections are not probed first
ABUSE_LIMIT = "answered a bare 429 (Docker Hub's abuse limit on requests from this address)"


class DockerHub:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.health = Health(30)
        self.accounts: list[credentials.Credential] = []
        self.budgets = Budgets()
        self.tokens: tokens.UpstreamTokens | None = None
        self.settings = Settings()
        self.egress: Egress | None = None  # the corporate proxy every connection goes through, with its login
        self.pacer = Pacer(metrics)  # hubcache's own requests, blob downloads included (fetch.get's pace)
        self.others = RegistryAuth(self.request, follow=self.follow)  # every other registry: its challenge and realm
        self._creds_loaded = False
        self._reserve_warned = 0.0

    def configure(self, settings: Settings, updated: Collection[str]) -> None:
        """Take new settings; (re)load the accounts when their sources changed. Raises
        credentials.CredentialsError when a source is unusable."""
        self.settings = settings
        self.health.backoff = settings.backoff
        self.pacer.configure(settings.upstream_concurrency, settings.upstream_rate, settings.upstream_burst)
        if {"hubcache_credentials", "hubcache_docker_config", "hubcache_registries"} & set(updated) or not self._creds_loaded:
            self._creds_loaded = True
            self._load_logins(settings)
        self.others.pool_private = settings.pool_private
        self.egress = credentials.egress_with_login(settings)
        realm, service = settings.auth_realm, settings.auth_service
        if self.tokens is None or (self.tokens.realm, self.tokens.service) != (realm, service):
            self.tokens = tokens.UpstreamTokens(self._get, realm, service)

    def _load_logins(self, settings: Settings) -> None:
        """Docker Hub's accounts (the pool) and the other registries' logins, those of registries
        hubcache serves only."""
        problems: list[str] = []
        found = credentials.load(settings.credentials, os.environ, settings.docker_config,
                                 lambda name: settings.registries.named(name) is not None, problems)
        self.accounts = [c for c in found if c.registry == DOCKER_HUB]
        others = [c for c in found if c.registry != DOCKER_HUB]
        self.others.configure(others, settings.pool_private)
        if self.accounts:
            logs.event(log, logging.INFO, "accounts_loaded",
                       "Docker Hub accounts: " + ", ".join(str(c) for c in self.accounts),
                       accounts=[c.account for c in self.accounts])
        if others:
            used = list(self.others.logins.values())
            logs.event(log, logging.INFO, "registry_logins",
                       "logins of other registries: " + ", ".join(str(c) for c in used) + " (used for public "
                       "content, and for repositories named in hubcache_pool_private)",
                       logins=[c.name for c in used])
        for why in problems:
            logs.event(log, logging.WARNING, "login_unavailable",
                       f"{why}: that registry is asked anonymously (fix the credential helper, or remove its entry "
                       f"from {settings.docker_config})", reason=why)

    # -- which hosts are up -------------------------------------------------------------------

    def health_key(self, host: str) -> str:
        host = host.lower()
        return REGISTRY if host in self.settings.registry_hosts else host

    def watched(self, host: str, port: int = 443) -> bool:
        """Whether `host` is one hubcache serves (a registry, a token realm, Docker Hub's CDN): its
        health is tracked."""
        return host.lower() in self.settings.intercepted_hosts or self.settings.registries.lookup(host, port) is not None

    def unavailable(self, host: str) -> str | None:
        """Why hubcache will not ask `host` now (offline, or backing off after a failure), or None."""
        if self.settings.offline:
            return "hubcache is offline"
        why = self.health.down(self.health_key(host), time.time())
        return f"upstream {host} unavailable: {why}" if why else None

    def result(self, host: str, status: int | None, error: str = "", body: bytes | None = None) -> None:
        """Remember how an upstream request went: failures start the back-off. `body`: the answer's
        body when it was read (a 429's tells one account's pull limit from the abuse limit)."""
        key, now = self.health_key(host), time.time()
        other = (reg := self.settings.registries.lookup(host)) is not None and not reg.is_hub
        if status == 429 and not pull_limited(status, body) and not other:
            self._abuse_limited(host, key, now)
            return
        if status == 429 and other:  # no pool to turn to there: that registry backs off, its tags go stale
            status, error = None, error or "answered 429 (too many requests)"
        # A 500 can be about one object (distribution answers 500 for a manifest it cannot
        # parse); unreachable or overloaded is about the host. A 429 for one account's pull
        # limit is about that account (observe_budget): the host answers, other accounts pull.
        if status is None or status in (502, 503, 504):
            reason = error or f"answered {status}"
            if self.health.failed(key, reason, now):
                logs.event(log, logging.WARNING, "upstream_backoff",
                           f"upstream {host} failed ({reason}): not asked for {self.health.backoff:.0f} s, stored "
                           "content is served meanwhile (if it persists: check this host's route to it, "
                           "HTTPS_PROXY and DNS)", host=host, reason=reason, seconds=self.health.backoff)
        elif self.health.succeeded(key, now):
            logs.event(log, logging.INFO, "upstream_recovered", f"upstream {host} answers again", host=host)

    def _abuse_limited(self, host: str, key: str, now: float) -> None:
        """A bare 429: Docker Hub's abuse limit on every request from this address, whatever the
        account. The host backs off for all of them; no account is marked spent."""
        if self.health.failed(key, ABUSE_LIMIT, now):
            logs.event(log, logging.WARNING, "abuse_limit",
                       f"upstream {host} {ABUSE_LIMIT}: not asked for {self.health.backoff:.0f} s as any account, "
                       "stored tags are served stale meanwhile (if it recurs: lower hubcache_upstream_rate, or send "
                       "fewer runners' requests to Docker Hub from this address)",
                       host=host, seconds=self.health.backoff)

    async def probe(self, host: str, port: int) -> str | None:
        """Before mitmproxy connects to `host` for a client: why it must not (offline, backing
        off, or no route within hubcache_connect_timeout), or None. The route is the one that will
        be used: a TCP connection, or in upstream mode a tunnel the corporate proxy accepted. A host
        that answered within the last RECENTLY_OK seconds is not probed: a hit's neighbours cost
        nothing."""
        if why := self.unavailable(host):
            return why
        if self.health.recently_ok(self.health_key(host), time.time(), RECENTLY_OK):
            return None
        try:
            await asyncio.wait_for(egress.probe(host, port, self.egress), self.settings.connect_timeout)
        except egress.EgressError as e:
            reason = str(e)
            self.result(host, None, reason)
            return reason
        except (OSError, TimeoutError) as e:
            via = f" through egress proxy {self.egress}" if self.egress else ""
            reason = f"cannot connect to {host}:{port}{via}: {e or 'timed out'}"
            self.result(host, None, reason)
            return reason
        return None

    # -- hubcache's own requests --------------------------------------------------------------

    async def request(self, method: str, url: str, headers: list[tuple[str, str]], kind: str = "") -> client.UpstreamResponse:
        """One request of hubcache's own, unless the host is backing off, when its turn comes
        (hubcache_upstream_concurrency, hubcache_upstream_rate: the wait is not part of the
        timeout); the outcome is remembered. `kind` labels it in the upstream request metric."""
        host = urlsplit(url).hostname or ""
        if why := self.unavailable(host):  # fail fast, not after queueing
            raise client.UpstreamError(why)
        async with self.pacer.turn(host):
            return await self._request(method, url, headers, kind)

    async def _request(self, method: str, url: str, headers: list[tuple[str, str]], kind: str) -> client.UpstreamResponse:
        host = urlsplit(url).hostname or ""
        if why := self.unavailable(host):
            raise client.UpstreamError(why)
        self.metrics.upstream.labels(kind or ("token" if method == "GET" else "revalidate")).inc()
        try:
            resp = await client.request(method, url, headers, self.settings.tls, self.settings.upstream_timeout,
                                        self.egress)
        except client.TransferError as e:  # the host answered; this one transfer failed
            self.result(host, e.status)
            raise
        except client.UpstreamError as e:
            self.result(host, None, str(e))
            raise
        self.result(host, resp.status, body=resp.body)
        return resp

    async def _get(self, url: str, headers: list[tuple[str, str]]) -> client.UpstreamResponse:
        return await self.request("GET", url, headers)

    async def follow(self, method: str, url: str, headers: list[tuple[str, str]], kind: str = "") -> client.UpstreamResponse:
        """`request`, following a registry's redirects itself (registry.k8s.io sends every /v2/
        request to an Artifact Registry host): the Authorization is dropped on a change of host,
        and when the new host answers 401 with a Bearer challenge, that hop is asked once more with
        an anonymous token of its realm (decide/redirects: at most MAX_REDIRECTS, https only)."""
        way = Hops(url, headers)
        while True:  # each redirect and each token retry is bounded by Hops
            resp = await self.request(method, way.url, way.headers, kind)
            try:
                if way.redirected(resp.status, resp.header("location")):
                    continue
            except ValueError as e:
                raise client.UpstreamError(f"{method} {client.redact(way.url)}: {e}") from e
            if way.wants_token(resp.status) and (
                    auth := await self.others.redirected_token(resp.header("www-authenticate"), way.url)):
                way.with_token(auth)
                continue
            return resp

    # -- accounts and the pull budget ---------------------------------------------------------

    async def authorization(self, client_auth: str, scope: str, registry: str = DOCKER_HUB) -> tuple[str, str]:
        """(Authorization, account) for an upstream request on a client's behalf: the client's
        own credentials with account "", or a token for `scope` of the pool account with the most
        pull budget left. Fails fast while the auth host backs off."""
        if not tokens.brings_no_login(client_auth):
            return client_auth, ""
        if registry != DOCKER_HUB:  # its own realm and login: no Docker Hub token or login goes there
            return await self.others.authorization(registry, scope)
        assert self.tokens
        if self.accounts and not await self._pool_may_fetch(scope):
            return f"Bearer {await self.tokens.token_for(scope, None)}", ANONYMOUS
        account = self.budgets.choose(self.account_names(), time.time())
        credential = next((c for c in self.accounts if c.account == account), None)
        return f"Bearer {await self.tokens.token_for(scope, credential)}", account

    async def _pool_may_fetch(self, scope: str) -> bool:
        """Whether a pool login may be used for `scope`: the repository is public (an anonymous
        token may pull it: asked once per token lifetime, tokens cost no pulls) or named in
        hubcache_pool_private."""
        assert self.tokens
        repository = access.scope_repository(scope)
        if not repository:
            return False
        if access.named_by(repository, self.settings.pool_private):
            return True
        return tokens.grants(await self.tokens.token_for(scope, None), repository) is True

    def account_names(self) -> list[str]:
        return [c.account for c in self.accounts] or [ANONYMOUS]

    def budget_low(self) -> bool:
        """Every account is below hubcache_budget_reserve, or spent: keep the last pulls, serve
        stale tags."""
        now = time.time()
        names = self.account_names()
        reserve = self.settings.budget_reserve
        if not self.budgets.all_below(names, reserve, now):
            return False
        window = max(self.budgets.window(a) for a in names)
        if now - self._reserve_warned > window:  # once per window
            logs.event(log, logging.WARNING, "budget_low",
                       f"every account is spent or below the pull reserve ({reserve}): stored tags are served "
                       "stale instead of pulling until the limit window resets (more accounts: "
                       "hubcache_credentials)", reserve=reserve, accounts=names)
            self._reserve_warned = now
        return True

    def observe_budget(self, account: str, method: str, status: int, headers: Mapping[str, str],
                       body: bytes | None = None, registry: str = DOCKER_HUB) -> None:
        """A manifest response upstream gave for `account` ("" = the client's own login: not ours).
        `body`: as for `result`; a bare 429 (the abuse limit) leaves every account as it was.
        Only Docker Hub reports a pull budget: other registries' answers are not counted."""
        if not account or registry != DOCKER_HUB or (status == 429 and not pull_limited(status, body)):
            return
        now = time.time()
        told = self.budgets.observe(account, {k.lower(): v for k, v in headers.items()}, now)
        if status == 429:
            self.budgets.exhausted(account, now)
            logs.event(log, logging.WARNING, "pull_limit",
                       f"Docker Hub's pull limit reached for {account}: other accounts are used, stored "
                       "tags served stale, until its window resets", account=account)
        elif method == "GET" and status == 200:
            self.budgets.spend(account, told)
            self.metrics.pulls.labels(account).inc()
        self.metrics.set_budget(account, self.budgets.shown(account, now))
