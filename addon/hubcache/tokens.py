"""Tokens: local ones for anonymous clients, and hubcache's own upstream tokens per repository."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from .credentials import Credential
from .upstream import UpstreamError, UpstreamResponse

LOCAL_PREFIX = "hubcache."
LOCAL_TTL = 3600
EXPIRY_MARGIN = 30  # seconds before expiry at which an upstream token is fetched anew


def issue_local_token() -> dict:
    """The body of a token response for a client that asked anonymously."""
    token = LOCAL_PREFIX + secrets.token_urlsafe(24)
    return {
        "token": token,
        "access_token": token,
        "expires_in": LOCAL_TTL,
        "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def is_local(authorization: str) -> bool:
    scheme, _, token = authorization.partition(" ")
    return scheme.lower() == "bearer" and token.startswith(LOCAL_PREFIX)


Fetch = Callable[[str, list[tuple[str, str]]], Awaitable[UpstreamResponse]]


class UpstreamTokens:
    """hubcache's own pull tokens, one per repository scope, cached until shortly before expiry."""

    def __init__(self, fetch: Fetch, realm: str, service: str) -> None:
        self._fetch = fetch
        self.realm = realm
        self.service = service
        self._cache: dict[tuple[str, str], tuple[str, float]] = {}
        self._inflight: dict[tuple[str, str], asyncio.Future[str]] = {}

    async def token_for(self, repository: str, credential: Credential | None = None) -> str:
        """A pull token for `repository`, as `credential`'s account (anonymous when None)."""
        scope = f"repository:{repository}:pull"
        key = (credential.account if credential else "", scope)
        cached = self._cache.get(key)
        if cached and cached[1] > time.time():
            return cached[0]
        if key in self._inflight:  # one token fetch per account and scope, however many clients wait
            return await asyncio.shield(self._inflight[key])
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            token = await self._fetch_token(scope, credential)
            self._cache[key] = token
            fut.set_result(token[0])
            return token[0]
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # mark retrieved: waiters, if any, get it through shield
            raise
        finally:
            del self._inflight[key]

    async def _fetch_token(self, scope: str, credential: Credential | None) -> tuple[str, float]:
        # The stored secret goes to the configured realm (https, checked by the options) and
        # nowhere else: this is the only place it is sent, and no redirect is followed.
        url = f"{self.realm}?{urlencode({'service': self.service, 'scope': scope})}"
        headers = [("Authorization", credential.basic())] if credential else []
        resp = await self._fetch(url, headers)
        who = f" as {credential.account}" if credential else ""
        if resp.status != 200:
            raise UpstreamError(f"token endpoint answered {resp.status} for {scope}{who}")
        try:
            data = json.loads(resp.body)
            token = data.get("token") or data["access_token"]
            expires_in = int(data.get("expires_in", 60))
        except (ValueError, KeyError, TypeError) as e:
            raise UpstreamError(f"token endpoint sent an unusable answer for {scope}{who}") from e
        return token, time.time() + max(expires_in - EXPIRY_MARGIN, 1)
