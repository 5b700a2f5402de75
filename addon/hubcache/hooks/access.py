"""The proxy's door: whether hubcache may listen as configured (decide/exposure), and one log line
for each CONNECT it relays untouched (a tunnel to a host it does not intercept) and for each one
mitmproxy's proxyauth refused, naming the client: its login, or its address."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

from mitmproxy import http
from mitmproxy.proxy import mode_specs

from hubcache import logs
from hubcache.decide import exposure
from hubcache.hooks.flowstate import client_of
from hubcache.settings import DIRECT_HOST

log = logging.getLogger(__name__)


def listeners(options: Any) -> list[tuple[str, int]]:
    """(host, port) of every network listener mitmproxy's `mode` option makes ("" = every address)."""
    out = []
    for spec in options.mode:
        mode = mode_specs.ProxyMode.parse(spec)
        if isinstance(mode, mode_specs.LocalMode):  # intercepts this host's own programs: no listener
            continue
        out.append((mode.listen_host(options.listen_host), mode.listen_port(options.listen_port) or 0))
    return out


def _addresses(host: str) -> list[str]:
    if not host.strip():
        return []
    try:
        return [str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)]
    except (OSError, UnicodeError):
        return []


def refusal(options: Any) -> str | None:
    """Why hubcache must not start with these options (a login on the command line; an open proxy
    beyond loopback), with the fix; None when it may."""
    proxyauth = getattr(options, "proxyauth", None)  # mitmproxy's proxyauth addon's option (absent without it)
    if why := exposure.inline_login_refusal(proxyauth):
        return why
    if exposure.login_kind(proxyauth) == "file":
        path = os.path.expanduser(str(proxyauth).strip()[1:])
        try:
            mode: int | None = os.stat(path).st_mode
        except OSError:
            mode = None
        if why := exposure.htpasswd_refusal(path, mode):
            return why
    exposed = [(h, p) for h, p in listeners(options) if not exposure.is_loopback(h, _addresses(h))]
    return exposure.open_proxy_refusal(exposed, proxyauth, options.hubcache_open_proxy)


def warn_slow_logins(options: Any) -> None:
    """One warning at start for htpasswd entries whose bcrypt cost stalls every new connection."""
    proxyauth = str(getattr(options, "proxyauth", None) or "").strip()
    if exposure.login_kind(proxyauth) != "file":
        return
    path = os.path.expanduser(proxyauth[1:])
    try:
        slow = exposure.slow_logins(Path(path).read_text())
    except OSError:
        return  # mitmproxy's proxyauth says it could not read the file
    if slow:
        users = ", ".join(f"{user} (cost {cost})" for user, cost in slow)
        logs.event(log, logging.WARNING, "slow_proxy_logins",
                   f"htpasswd {path}: {users}: each new client connection waits for a bcrypt check of that cost on "
                   f"the proxy's only event loop (cost 10: ~50 ms, 12: ~200 ms); make them again with cost 5: "
                   f"hubcache htpasswd {path} USER", file=path, logins=[u for u, _ in slow])


def _address(flow: http.HTTPFlow) -> str:
    peer = flow.client_conn.peername
    return f"{peer[0]}:{peer[1]}" if peer else "-"


def _refused(flow: http.HTTPFlow, what: str) -> None:
    address = _address(flow)
    logs.event(log, logging.WARNING, "proxy_login_refused",
               f"refused {what} from {address}: no proxy login, or a wrong one (proxyauth): give that client's "
               "engine HTTPS_PROXY=http://USER:PASSWORD@HOST:PORT with a login of the htpasswd file",
               client=address, host=flow.request.host, port=flow.request.port)


def http_seen(flow: http.HTTPFlow) -> None:
    """A plain-HTTP proxy request (absolute URL, no tunnel), after proxyauth judged it: relayed
    as it is (hubcache caches nothing over plain HTTP), one line naming the client; or refused."""
    req = flow.request
    if req.scheme != "http" or req.method == "CONNECT":
        return
    if flow.response is not None and flow.response.status_code == 407:
        _refused(flow, f"{req.method} http://{req.host}:{req.port}")
    elif flow.response is None:
        client = client_of(flow)  # the host only: a query string may carry anything
        logs.event(log, logging.INFO, "relayed_http", f"relayed plain HTTP {req.method} http://{req.host}:{req.port} "
                   f"for {client} (not cached)", client=client, host=req.host, port=req.port, method=req.method)


def connect_seen(flow: http.HTTPFlow, options: Any) -> None:
    """After mitmproxy's proxyauth judged a CONNECT: a refused login is a warning naming the
    address; a tunnel to a host hubcache does not intercept is an info line naming the client.
    (Intercepted hosts' requests have lines of their own; so do the blob listener's.)"""
    host, port = flow.request.host, flow.request.port
    if flow.response is not None and flow.response.status_code == 407:
        _refused(flow, f"CONNECT {host}:{port}")
        return
    if flow.response is not None or host.lower() == DIRECT_HOST:
        return
    if not exposure.intercepted(host, port, options.allow_hosts, options.ignore_hosts):
        client = client_of(flow)
        logs.event(log, logging.INFO, "tunnel", f"tunnel {host}:{port} for {client} (not intercepted: relayed as it is)",
                   client=client, host=host, port=port)
