"""What `hubcache doctor --parent` asks of a parent registry, asked with hubcache's own code for it
(upstream/parent.Parent: its options' checks, its TLS settings, its login as the parent's /v2/
challenge asks, its URLs), so that the doctor sees what hubcache would see.

It is here, not in tools/, because only the hooks' layer may use upstream/ (tests/unit/test_layout.py);
it touches no mitmproxy state. It asks, in order, and stops at the first step that fails: the
name (the system resolver, as hubcache's connections use it), GET /v2/ without a login (the
connection: TCP, TLS with the parent's trust), the login (Parent.headers: Basic, or a token of
the parent's realm) and GET /v2/ with it, then a HEAD of an image's tag. What it returns holds no
secret: the errors are upstream/'s messages (URLs without their queries, account names only).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from hubcache.decide import challenge as challenges
from hubcache.metrics import Metrics
from hubcache.model import MANIFEST_TYPES, Route
from hubcache.settings import Settings
from hubcache.upstream import client, credentials, tokens
from hubcache.upstream.parent import Parent, ParentError

# why a request got no answer
RESOLVE, CONNECT, CERTIFICATE, TLS, TIMEOUT, REFUSED, OTHER = (
    "resolve", "connect", "certificate", "tls", "timeout", "refused", "other")


@dataclass(frozen=True)
class Reply:
    """One request's outcome: an answer (`status`, `headers`), or none (`cause`, `error`)."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    cause: str = ""  # no answer: RESOLVE, CONNECT, CERTIFICATE, TLS, TIMEOUT, REFUSED (a token realm's 401/403), OTHER
    error: str = ""

    @property
    def answered(self) -> bool:
        return self.status != 0


@dataclass(frozen=True)
class ParentFacts:
    """What one registry's parent answered. A step that was not reached is None."""

    registry: str
    root: str  # https://mirror.internal:5000
    addresses: tuple[str, ...] = ()  # what its name resolved to
    resolve_error: str = ""
    setup_error: str = ""  # Parent.configure refused the options (an unreadable CA file)
    login_error: str = ""  # ... or the login file (its mode, its content, a plain-http parent)
    anonymous: Reply | None = None  # GET /v2/ without a login
    challenge: str = ""  # the scheme its 401 asked for: basic, bearer
    realm: str = ""  # a bearer challenge's realm
    with_login: Reply | None = None  # GET /v2/ with the login (after a 401), None: not asked
    image: Reply | None = None  # HEAD of the image's tag, None: not asked


def probe(settings: Settings, registry: str, route: Route, image: Route | None) -> ParentFacts:
    """Ask `registry`'s parent (of settings.parent) as hubcache would. `route`: a repository for
    the scope of a token realm's login; `image`: a manifest by tag to HEAD, or None."""
    return asyncio.run(_probe(settings, registry, route, image))


async def _probe(settings: Settings, registry: str, route: Route, image: Route | None) -> ParentFacts:
    root = dict(settings.parent)[registry]
    facts = ParentFacts(registry, root)
    url = urlsplit(root)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(url.hostname, port, type=socket.SOCK_STREAM)
    except OSError as e:
        return dataclasses.replace(facts, resolve_error=e.strerror or str(e))
    facts = dataclasses.replace(facts, addresses=tuple(dict.fromkeys(str(i[4][0]) for i in infos)))
    parent = Parent(Metrics())
    try:
        parent.configure(settings)
    except credentials.CredentialsError as e:
        facts = dataclasses.replace(facts, login_error=str(e))
        try:  # the connection is checked all the same, without the login
            parent.configure(dataclasses.replace(settings, parent_credentials=""))
        except credentials.CredentialsError as e2:
            return dataclasses.replace(facts, setup_error=str(e2), login_error="")
    anonymous = await _reply(parent.base(registry))
    facts = dataclasses.replace(facts, anonymous=anonymous)
    if anonymous.status == 401:
        found = challenges.parse(anonymous.headers.get("www-authenticate", ""))
        facts = dataclasses.replace(facts, challenge=found.scheme if found else "", realm=found.realm if found else "")
        if settings.parent_credentials and not facts.login_error:
            facts = dataclasses.replace(facts, with_login=await _with_login(parent, route))
    ok = anonymous.status == 200 or (facts.with_login is not None and facts.with_login.status == 200)
    if image is not None and ok:
        facts = dataclasses.replace(facts, image=await _reply(parent.manifest(image, image.reference, list(MANIFEST_TYPES), "HEAD")))
    return facts


async def _with_login(parent: Parent, route: Route) -> Reply:
    try:
        headers = await parent.headers(route)
    except client.UpstreamError as e:
        return _no_answer(e)
    return await _reply(parent.base(route.registry, headers))


async def _reply(request: Awaitable[client.UpstreamResponse]) -> Reply:
    try:
        resp = await request
    except client.UpstreamError as e:
        return _no_answer(e)
    return Reply(resp.status, dict(resp.headers))


def _no_answer(e: client.UpstreamError) -> Reply:
    """Why a request got no answer, from the exception and its causes."""
    if isinstance(e, ParentError) and e.status:
        return Reply(e.status, {}, "", str(e))  # an answer all the same: a 5xx
    if isinstance(e, tokens.TokenRefused) and e.status in (401, 403):
        return Reply(0, {}, REFUSED, str(e))
    chain: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and len(chain) < 8:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    for c in chain:
        if isinstance(c, ssl.SSLCertVerificationError):
            return Reply(0, {}, CERTIFICATE, c.verify_message or str(c))
        if isinstance(c, socket.gaierror):
            return Reply(0, {}, RESOLVE, c.strerror or str(c))
        if isinstance(c, ssl.SSLError):
            return Reply(0, {}, TLS, c.reason or str(c))
        if isinstance(c, TimeoutError):
            return Reply(0, {}, TIMEOUT, str(e))
        if isinstance(c, OSError) and (c.errno or c.strerror):
            # asyncio says "Connect call failed (addr)": the reason is its errno's
            return Reply(0, {}, CONNECT, os.strerror(c.errno) if c.errno else str(c.strerror))
    return Reply(0, {}, OTHER, str(e))
