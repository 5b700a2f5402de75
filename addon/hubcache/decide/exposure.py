"""Who may reach the proxy, decided before it listens, and which tunnels it relays untouched.

A proxy that other machines reach is an open relay unless its clients log in: listening on any
address but loopback needs mitmproxy's `proxyauth`, or the operator's explicit word that the
network is trusted (`hubcache_open_proxy=allow`). Logins come from an htpasswd file
(`proxyauth=@FILE`): a login written on the command line (`USER:PASSWORD`, an LDAP bind
password) is shown by `ps` to every user of the host, so it is refused. Pure: the caller resolves
the listen addresses and reads the options.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

HTPASSWD = "/etc/hubcache/htpasswd"


def is_loopback(host: str, addresses: Sequence[str]) -> bool:
    """Does a listener on `host` (mitmproxy's listen host: "" is every address) take connections
    from this host only? `addresses`: what `host` resolves to (empty: it does not resolve)."""
    if not host.strip() or not addresses:
        return False
    try:
        return all(ipaddress.ip_address(a.split("%", 1)[0]).is_loopback for a in addresses)
    except ValueError:
        return False


def login_kind(proxyauth: str | None) -> str:
    """'none' (no login asked), 'any' (any user and password accepted: names clients, guards
    nothing), 'file' (an htpasswd file) or 'inline' (a secret on the command line)."""
    value = (proxyauth or "").strip()
    if not value:
        return "none"
    if value == "any":
        return "any"
    if value.startswith("@"):
        return "file"
    return "inline"


def inline_login_refusal(proxyauth: str | None) -> str | None:
    """Why a login written into the option itself is refused, with the fix; None when it is not."""
    if login_kind(proxyauth) != "inline":
        return None
    return ("proxyauth: a login given on the command line (USER:PASSWORD, or an LDAP bind password) is shown by "
            f"`ps` to every user of this host: put the logins in an htpasswd file (hubcache htpasswd {HTPASSWD} runner) "
            f"and give --set proxyauth=@{HTPASSWD}")


def htpasswd_refusal(path: str, mode: int | None) -> str | None:
    """Why the htpasswd file of `proxyauth=@FILE` is refused (`mode`: its st_mode, None when it
    cannot be read), as hubcache's other secrets files are: bcrypt hashes others can read can be
    cracked offline."""
    if mode is None:
        return f"proxyauth: cannot read the htpasswd file {path}: check the path, and that hubcache's user may read it"
    if mode & 0o077:
        return f"proxyauth: the htpasswd file {path} has mode {mode & 0o7777:04o}: others can read it; run: chmod 600 {path}"
    return None


SLOW_COST = 8  # bcrypt cost 5: ~2 ms a check; 10: ~50 ms; 12 (Python's default): ~200 ms, each on the event loop


def slow_logins(htpasswd: str) -> list[tuple[str, int]]:
    """(user, cost) of the file's bcrypt entries costlier than SLOW_COST: mitmproxy checks one for
    every new client connection on its event loop, which serves nothing else meanwhile."""
    out = []
    for line in htpasswd.splitlines():
        user, _, hashed = line.strip().partition(":")
        m = re.fullmatch(r"\$2[aby]\$(\d\d)\$.*", hashed)
        if m and int(m[1]) > SLOW_COST:
            out.append((user, int(m[1])))
    return out


def open_proxy_refusal(exposed: Sequence[tuple[str, int]], proxyauth: str | None, open_proxy: str) -> str | None:
    """Why hubcache must not start: it listens beyond loopback (`exposed`: the listeners that do,
    host and port) with no login and without hubcache_open_proxy=allow. None: it may start."""
    if not exposed or open_proxy == "allow" or login_kind(proxyauth) in ("file", "inline"):
        return None
    host, port = exposed[0]
    shown = host or "every address"
    given = "proxyauth=any accepts any login, so" if login_kind(proxyauth) == "any" else "without a proxy login"
    return (f"listening on {shown} (not loopback) {given} makes hubcache an open proxy: whoever reaches port {port} "
            f"can tunnel anywhere through it. Give the runners a login: hubcache htpasswd {HTPASSWD} runner, "
            f"then add --set proxyauth=@{HTPASSWD} (runners use "
            f"HTTPS_PROXY=http://runner:PASSWORD@THIS-HOST:{port}); or listen on 127.0.0.1; or, on a network you "
            "trust, add --set hubcache_open_proxy=allow")


def intercepted(host: str, port: int, allow_hosts: Sequence[str], ignore_hosts: Sequence[str]) -> bool:
    """Whether mitmproxy intercepts a CONNECT to host:port (its allow_hosts / ignore_hosts rule,
    on the CONNECT's own host): if not, the connection is a tunnel hubcache cannot see into."""
    name = f"{host}:{port}"
    if ignore_hosts and any(re.search(p, name, re.IGNORECASE) for p in ignore_hosts):
        return False
    if allow_hosts:
        return any(re.search(p, name, re.IGNORECASE) for p in allow_hosts)
    return True
