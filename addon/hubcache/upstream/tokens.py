"""Tokens: local ones for anonymous clients, and hubcache's own upstream tokens per repository."""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from hubcache.expiring import ExpiringCache
from hubcache.upstream.client import UpstreamError, UpstreamResponse
from hubcache.upstream.credentials import Credential
from hubcache.upstream.singleflight import Shared

LOCAL_PREFIX = "hubcache."
LOCAL_TTL = 3600
EXPIRY_MARGIN = 30  # seconds before expiry at which an upstream token is fetched anew
MAX_TOKENS = 4096  # (account, repository) pairs whose token is kept


class TokenRefused(UpstreamError):
    """A token endpoint answered, but not with a token (`status`: 401 or 403 for a refused login)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def issue_local_token() -> dict:
    """The body of a token response for a client that asked anonymously."""
    token = LOCAL_PREFIX + secrets.token_urlsafe(24)
    return {
        "token": token,
        "access_token": token,
        "expires_in": LOCAL_TTL,
        "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def grants(token: str, repository: str, action: str = "pull") -> bool | None:
    """Whether a registry token's claims grant `action` on `repository` (Docker Hub's and
    distribution's tokens are JWTs with an `access` claim); None for a token whose claims do not
    say. Read, not verified: it only ever narrows what hubcache does with the pool's logins."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        access = claims["access"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(access, list):
        return None
    return any(isinstance(a, dict) and a.get("type") == "repository" and a.get("name") == repository
               and action in (a.get("actions") or []) for a in access)


def is_local(authorization: str) -> bool:
    scheme, _, token = authorization.partition(" ")
    return scheme.lower() == "bearer" and token.startswith(LOCAL_PREFIX)


def brings_no_login(authorization: str) -> bool:
    """A client that logged in as nobody: no Authorization, hubcache's local token, or an empty
    Basic login (`Basic Og==`, what skopeo sends a Basic registry when it has no login)."""
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True) in (b"", b":")
        except ValueError:
            return False
    return not authorization.strip() or is_local(authorization)


Fetch = Callable[[str, list[tuple[str, str]]], Awaitable[UpstreamResponse]]


class UpstreamTokens:
    """hubcache's own pull tokens, one per repository scope, cached until shortly before expiry."""

    def __init__(self, fetch: Fetch, realm: str, service: str) -> None:
        self._fetch = fetch
        self.realm = realm
        self.service = service
        self._cache: ExpiringCache[tuple[str, str], str] = ExpiringCache(MAX_TOKENS, 60, clock=time.time)
        self._fetches: Shared[str] = Shared()  # one token fetch per account and scope, however many clients wait

    async def token_for(self, scope: str, credential: Credential | None = None) -> str:
        """A token for `scope` (e.g. repository:library/alpine:pull), as `credential`'s account
        (anonymous when None)."""
        key = (credential.account if credential else "", scope)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        token, _ = await self._fetches.run(key, lambda: self._fetch_and_keep(key, scope, credential))
        return token

    async def _fetch_and_keep(self, key: tuple[str, str], scope: str, credential: Credential | None) -> str:
        token, lifetime = await self._fetch_token(scope, credential)
        self._cache.put(key, token, lifetime)
        return token

    async def _fetch_token(self, scope: str, credential: Credential | None) -> tuple[str, float]:
        """(token, seconds to keep it)."""
        # The stored secret goes to the configured realm (https, checked by the options) and
        # nowhere else: this is the only place it is sent, and no redirect is followed.
        url = f"{self.realm}?{urlencode({'service': self.service, 'scope': scope})}"
        headers = [("Authorization", credential.basic())] if credential else []
        resp = await self._fetch(url, headers)
        who = f" as {credential.account}" if credential else ""
        if resp.status != 200:
            raise TokenRefused(f"token endpoint answered {resp.status} for {scope}{who}", resp.status)
        try:
            data = json.loads(resp.body)
            token = data.get("token") or data["access_token"]
            expires_in = int(data.get("expires_in", 60))
        except (ValueError, KeyError, TypeError) as e:
            raise UpstreamError(f"token endpoint sent an unusable answer for {scope}{who}") from e
        return token, max(expires_in - EXPIRY_MARGIN, 1)
