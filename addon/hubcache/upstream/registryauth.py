"""How hubcache gets into registries other than Docker Hub: the challenge each one gives (asked
once at its `/v2/`, then remembered, in the store too, so that a restart while the registry is
down still answers clients' `/v2/`), and tokens from the realm that challenge names, never from a
hard-coded one. Docker Hub keeps its own path (dockerhub.py: accounts, budget).

A client's own login is relayed by the caller; what is here is what hubcache sends for a client
that brought none: an anonymous token of the registry's realm (Bearer), or nothing (a registry
that asks for no login; a Basic registry then answers the client its own 401), or the registry's
stored login (credentials.py) where the pool rule allows it (decide/access.py): where an
anonymous token may pull too (its grant, read as for Docker Hub's pool), or for a repository
named in hubcache_pool_private. Then a Bearer registry gets a token its realm gave for that login
(`Authorization: Basic` to the realm only, over https), a Basic registry the login itself. Docker
Hub's accounts never come here, and no login goes to another registry's realm.

A registry that redirects (registry.k8s.io sends every /v2/ request to a regional Artifact
Registry host) is followed by hubcache itself (DockerHub.follow): when the host redirected to asks
for a Bearer token, `redirected_token` gets an anonymous one from the realm that host names, for
the repository of the redirected URL; tokens are kept per (realm, service), never with a login.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import urlsplit

from hubcache.decide import access, challenge
from hubcache.decide.challenge import Challenge
from hubcache.registries import Registry
from hubcache.upstream import tokens
from hubcache.upstream.client import UpstreamError, UpstreamResponse
from hubcache.upstream.credentials import Credential
from hubcache.upstream.singleflight import Shared

Request = Callable[[str, str, list[tuple[str, str]]], Awaitable[UpstreamResponse]]
_REPOSITORY = re.compile(r"^/v2/(.+?)/(?:manifests|blobs)/[^/]+$")


def redirected_repository(url: str) -> str:
    """The repository a registry URL names (/v2/<name>/manifests|blobs/<ref>), "" for another path."""
    m = _REPOSITORY.match(urlsplit(url).path)
    return m.group(1) if m else ""


class RegistryAuth:
    def __init__(self, request: Request, learned: Callable[[str, Challenge], None] = lambda r, c: None,
                 follow: Request | None = None) -> None:
        self._request = request  # DockerHub.request's shape: health, pacing, egress, TLS options
        self._follow = follow or request  # the same, following redirects (DockerHub.follow)
        self.learned = learned  # called with a challenge seen for the first time or changed (to store it)
        self._challenges: dict[str, Challenge] = {}
        self._realm_paths: dict[str, set[str]] = {}  # host -> its token realms' paths, from _challenges
        self._relocated: dict[tuple[str, str], str] = {}  # (registry host, relocated realm path) -> the realm
        self._tokens: dict[tuple[str, str, str], tokens.UpstreamTokens] = {}  # (registry, realm, service)
        self.logins: dict[str, Credential] = {}  # registry -> its stored login (the first one found)
        self.pool_private: tuple[str, ...] = ()  # hubcache_pool_private

    def configure(self, logins: list[Credential], pool_private: tuple[str, ...]) -> None:
        """Take the stored logins of registries other than Docker Hub (the first per registry)."""
        self.logins = {}
        for c in logins:
            self.logins.setdefault(c.registry, c)
        self.pool_private = pool_private
        self._asking: Shared[Challenge] = Shared()

    def known(self, registry: str) -> Challenge | None:
        """The challenge last seen from `registry`, without asking it."""
        return self._challenges.get(registry)

    def remember(self, registry: str, seen: Challenge) -> None:
        """A challenge seen (a 401 a client got, or asked at /v2/); what is about one request (its
        scope, an error) is not kept. A new or changed one is passed on to `learned` (the store)."""
        seen = Challenge(seen.scheme, {k: v for k, v in seen.params.items() if k not in ("scope", "error")})
        if self._challenges.get(registry) != seen:
            self._set(registry, seen)
            self.learned(registry, seen)

    def restore(self, kept: Mapping[str, str]) -> None:
        """The challenges the store kept (registry -> WWW-Authenticate, "" for none)."""
        for registry, header in kept.items():
            self._set(registry, challenge.parse(header) or challenge.NONE)

    def _set(self, registry: str, seen: Challenge) -> None:
        self._challenges[registry] = seen
        self._realm_paths = {}
        self._relocated = {}
        for name, c in self._challenges.items():
            if c.realm_host:
                self._realm_paths.setdefault(c.realm_host, set()).add(urlsplit(c.realm).path.rstrip("/") or "/")
            if challenge.needs_relocation(c, name):  # asked on the registry's host (challenge.relocated)
                host = urlsplit(f"https://{name}").hostname or name
                self._realm_paths.setdefault(host, set()).add(challenge.relocated_path(c.realm))
                self._relocated[(host, challenge.relocated_path(c.realm))] = c.realm

    def original_realm(self, host: str, path: str) -> str | None:
        """The realm a relocated token request on `host` stands for (https://gitlab.com/jwt/auth),
        only ever one a registry named: None for any other path."""
        return self._relocated.get((host.lower(), path.split("?", 1)[0].rstrip("/") or "/"))

    def realm_paths(self, host: str) -> set[str]:
        """Paths of the token realms known to be on `host` (e.g. /token on ghcr.io, /jwt/auth on
        gitlab.com): asked for every request, so kept up to date when a challenge is learned."""
        return self._realm_paths.get(host.lower(), set())

    async def challenge(self, registry: str) -> Challenge:
        """`registry`'s challenge: remembered, or asked at its /v2/ (one request however many wait)."""
        if (known := self._challenges.get(registry)) is not None:
            return known
        got, _ = await self._asking.run(registry, lambda: self._ask(registry))
        return got

    async def _ask(self, registry: str) -> Challenge:
        # followed: a registry that redirects /v2/ wants no login of its own when the host it
        # sends clients to gives hubcache an anonymous token (registry.k8s.io: 200, so NONE)
        resp = await self._follow("GET", f"https://{registry}/v2/", [])
        if resp.status == 401:
            seen = challenge.parse(resp.header("www-authenticate"))
            if seen is None:
                raise UpstreamError(f"{registry} asks for a login hubcache cannot give: "
                                    f"WWW-Authenticate {resp.header('www-authenticate')[:200]!r}")
        elif resp.status < 400:
            seen = challenge.NONE
        else:
            raise UpstreamError(f"https://{registry}/v2/ answered {resp.status}")
        self.remember(registry, seen)
        return seen

    async def authorization(self, registry: str, scope: str) -> tuple[str, str]:
        """(Authorization, account) hubcache sends `registry` for a client without a login of its
        own ("" for none); the account as logs show it: user@registry or anonymous@registry."""
        seen = await self.challenge(registry)
        login = self.logins.get(registry)
        anonymous = f"anonymous@{registry}"
        if seen.scheme == "basic":
            if login and self._named(registry, scope):  # no anonymous access to compare with
                return login.basic(), login.name
            return "", anonymous
        if seen.scheme != "bearer":
            return "", anonymous
        if not seen.realm.lower().startswith("https://"):
            login = None  # a login never goes anywhere in clear text
        anonymous_token = await self._tokens_of(registry, seen).token_for(scope, None)
        if login and (self._named(registry, scope) or self._granted(anonymous_token, scope)):
            return f"Bearer {await self._tokens_of(registry, seen).token_for(scope, login)}", login.name
        return f"Bearer {anonymous_token}", anonymous

    async def redirected_token(self, www_authenticate: str, url: str) -> str | None:
        """The Authorization (an anonymous Bearer token) for `url`, a host a registry redirected
        hubcache to that answered 401 with `www_authenticate`; None when it asks for no Bearer token
        from an https realm (then its 401 stands)."""
        seen = challenge.parse(www_authenticate)
        if seen is None or seen.scheme != "bearer":
            return None
        repository = redirected_repository(url)
        scope = f"repository:{repository}:pull" if repository else ""
        return f"Bearer {await self._tokens_of('', seen).token_for(scope, None)}"

    def _tokens_of(self, registry: str, seen: Challenge) -> tokens.UpstreamTokens:
        """The tokens of `registry` from the realm it names: kept apart per registry, so that a
        realm two registries share never hands one registry's login token to the other (registry
        "": a redirect's anonymous tokens, per realm and service)."""
        key = (registry, seen.realm, seen.service)
        if key not in self._tokens:
            self._tokens[key] = tokens.UpstreamTokens(self._get, seen.realm, seen.service)
        return self._tokens[key]

    def _named(self, registry: str, scope: str) -> bool:
        repository = access.scope_repository(scope)
        return bool(repository) and access.named_by(Registry(registry).qualify(repository), self.pool_private)

    @staticmethod
    def _granted(anonymous_token: str, scope: str) -> bool:
        """Public: the anonymous token's claims grant the pull (a token that does not say counts
        as no: the login is then kept for named repositories)."""
        repository = access.scope_repository(scope)
        return bool(repository) and tokens.grants(anonymous_token, repository) is True

    async def _get(self, url: str, headers: list[tuple[str, str]]) -> UpstreamResponse:
        return await self._request("GET", url, headers)
