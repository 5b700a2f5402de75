"""A registry's `WWW-Authenticate` challenge, read as RFC 7235 writes it.

Pure. Registries answer `GET /v2/` (and any request without a good token) with 401 and one
challenge: `Bearer realm="https://ghcr.io/token",service="ghcr.io"` (token auth: the realm may be
on the registry's host or another, e.g. registry.gitlab.com's at gitlab.com), `Basic
realm="Registry"` (a login on every request), or no 401 at all (anonymous, e.g. mcr). hubcache
keeps the last one seen per registry, so it can answer `/v2/` itself when the registry is down,
and fetches its own tokens from the realm the registry named, never a hard-coded one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PARAM = re.compile(rf'\s*({_TOKEN})\s*=\s*(?:"((?:[^"\\]|\\.)*)"|({_TOKEN}))\s*(?:,|$)')


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "bearer" or "basic" (lower case), "" for none
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")

    @property
    def service(self) -> str:
        return self.params.get("service", "")

    @property
    def realm_host(self) -> str:
        """The host of a Bearer realm (where tokens come from), "" otherwise."""
        return (urlsplit(self.realm).hostname or "") if self.scheme == "bearer" else ""

    def header(self, scope: str = "") -> str:
        """The challenge as a WWW-Authenticate value, with `scope` for a Bearer one."""
        if not self.scheme:
            return ""
        params = dict(self.params)
        params.pop("error", None)
        if scope and self.scheme == "bearer":
            params["scope"] = scope
        else:
            params.pop("scope", None)
        quoted = ",".join(f'{k}="{_escape(v)}"' for k, v in params.items())
        return f"{self.scheme.capitalize()} {quoted}".rstrip()


NONE = Challenge("")


def parse(value: str) -> Challenge | None:
    """The first challenge of a WWW-Authenticate value; None when it does not parse.
    Only Bearer realms over https are taken (a token request carries the login)."""
    scheme, _, rest = value.strip().partition(" ")
    scheme = scheme.lower()
    if scheme not in ("bearer", "basic"):
        return None
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None:
            break  # a second challenge or junk: the first one's parameters are what we have
        name, quoted, plain = m.group(1).lower(), m.group(2), m.group(3)
        params.setdefault(name, re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else plain)
        pos = m.end()
    if scheme == "bearer" and not params.get("realm", "").startswith("https://"):
        return None
    return Challenge(scheme, params)


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"')


# A realm on a host of its own (registry.gitlab.com's at gitlab.com) is moved, in what clients are
# told, onto the registry's own host under this prefix: hubcache's CA may vouch for the registry
# but not for gitlab.com (GitLab itself), and the token request must still reach hubcache so that
# anonymous ones are answered here and a pull of what the store has works while GitLab is down.
RELOCATED = "/hubcache-realm/"


def relocated_path(realm: str) -> str:
    """The path a realm is asked at on its registry's host: /hubcache-realm/gitlab.com/jwt/auth."""
    parts = urlsplit(realm)
    return f"{RELOCATED}{parts.netloc.lower()}{parts.path.rstrip('/') or '/'}"


def needs_relocation(seen: Challenge, registry: str) -> bool:
    """A Bearer realm that is not on the registry's own host (`registry`: host[:port])."""
    host = registry[1:registry.index("]")] if registry.startswith("[") else registry.rpartition(":")[0] or registry
    return bool(seen.realm_host) and seen.realm_host.lower() != host.lower()


def relocated(seen: Challenge, registry: str) -> Challenge:
    """The challenge as clients are given it: a realm on another host moved onto the registry's
    own (`registry`: host[:port], as clients reach it); any other challenge unchanged."""
    if not needs_relocation(seen, registry):
        return seen
    return Challenge(seen.scheme, {**seen.params, "realm": f"https://{registry}{relocated_path(seen.realm)}"})
