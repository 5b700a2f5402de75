"""The names hubcache's CA may vouch for: X.509 Name Constraints from what hubcache intercepts.

Pure: no I/O. A name constraint is a DNS *subtree* (RFC 5280 4.2.1.10): `docker.io` permits
docker.io and every name below it (auth.docker.io, registry-1.docker.io), nothing else. Globs do
not exist there, so a wildcard entry of the registry table is widened to the fixed part on its
right: `*-docker.pkg.dev` -> `pkg.dev`, `*.gcr.io` -> `gcr.io`, `*.r2.cloudflarestorage.com` ->
`r2.cloudflarestorage.com`. A wildcard whose fixed part is shorter than two labels (`*.com`)
cannot be constrained and is refused. Ports do not exist there either: `registry.corp.example:5000`
is permitted as `registry.corp.example`. A registry named by an IPv4/IPv6 address is permitted
as that one address; without one, every IP address is excluded (a DNS-only constraint would
leave IP names unconstrained).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

_GLOB = set("*?[]")


@dataclass(frozen=True)
class Permitted:
    """What a name-constrained CA may sign for: DNS subtrees and single IP addresses."""

    dns: tuple[str, ...]
    ips: tuple[str, ...] = ()

    def covers(self, host: str) -> bool:
        """Would a certificate for `host` (a name, or an address) signed by the CA be accepted?"""
        ip = _ip(host)
        if ip is not None:
            return ip in self.ips
        h = host.lower().rstrip(".")
        return any(h == d or h.endswith("." + d) for d in self.dns)


def _ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def strip_port(pattern: str) -> str:
    """`host:port` -> host; `[::1]:5000` -> ::1."""
    p = pattern.lower().strip()
    if p.startswith("["):
        return p[1:p.index("]")]
    return p.rpartition(":")[0] if ":" in p else p


def subtree(pattern: str) -> str:
    """One intercepted host pattern -> the DNS subtree (or IP address) that covers it.
    Raises ValueError for a wildcard too broad to constrain."""
    host = strip_port(pattern).rstrip(".")
    if (ip := _ip(host)) is not None:
        return ip
    labels = host.split(".")
    wild = [i for i, label in enumerate(labels) if _GLOB & set(label)]
    if not wild:
        return host
    fixed = labels[wild[-1] + 1:]
    if len(fixed) < 2:
        raise ValueError(f"{pattern!r} is too broad for a name-constrained CA (it would vouch for all of "
                         f"{'.'.join(fixed) or 'the DNS'}): name the registries' hosts instead")
    return ".".join(fixed)


def permitted(patterns: Iterable[str]) -> Permitted:
    """The smallest set of subtrees covering every pattern (one below another is dropped)."""
    dns: set[str] = set()
    ips: set[str] = set()
    for p in patterns:
        s = subtree(p)
        (ips if _ip(s) is not None else dns).add(s)
    kept = sorted(d for d in dns if not any(d != o and d.endswith("." + o) for o in dns))
    return Permitted(tuple(kept), tuple(sorted(ips)))


def uncovered(patterns: Iterable[str], names: Permitted) -> list[str]:
    """The patterns a CA with `names` cannot vouch for (for a wildcard: its whole subtree)."""
    out = []
    for p in patterns:
        try:
            s = subtree(p)
        except ValueError:
            out.append(p)
            continue
        if not names.covers(s):
            out.append(p)
    return out
