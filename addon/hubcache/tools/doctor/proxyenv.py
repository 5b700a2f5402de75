"""Which proxy a Go client (dockerd, containerd) uses, and which hosts NO_PROXY sends around it.

Pure: parses proxy URLs and environments as Go's net/http does, tested without a network.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class ProxyURL:
    host: str
    port: int
    user: str = ""
    password: str = ""

    @property
    def auth_header(self) -> str:
        if not self.user:
            return ""
        raw = f"{self.user}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def show(self) -> str:
        """The URL without the password."""
        who = f"{self.user}:***@" if self.user else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{who}{host}:{self.port}"


def parse_proxy(url: str) -> ProxyURL:
    """`http://[user:pass@]host[:port]` (a bare `host:port` too, as Go clients take it).

    hubcache speaks plain HTTP to its clients: an `https://` proxy URL is an error here.
    """
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"{parts.scheme}:// proxy URLs are not what hubcache serves: use http://HOST:PORT")
    if not parts.hostname:
        raise ValueError(f"no host in proxy URL {url!r}")
    try:
        port = parts.port or 80
    except ValueError as e:
        raise ValueError(f"bad port in proxy URL {url!r}") from e
    return ProxyURL(parts.hostname, port, unquote(parts.username or ""), unquote(parts.password or ""))


def same_proxy(a: str, b: str) -> bool:
    try:
        pa, pb = parse_proxy(a), parse_proxy(b)
    except ValueError:
        return a.strip() == b.strip()
    return (pa.host.lower(), pa.port) == (pb.host.lower(), pb.port)


def proxy_from_env(env: dict[str, str]) -> str:
    """The HTTPS proxy a Go program (dockerd, containerd) would use with this environment."""
    return env.get("HTTPS_PROXY") or env.get("https_proxy") or ""


def no_proxy_from_env(env: dict[str, str]) -> str:
    return env.get("NO_PROXY") or env.get("no_proxy") or ""


def no_proxy_match(no_proxy: str, host: str) -> str:
    """The NO_PROXY entry that sends `host` around the proxy, or "" (Go's rules for names:
    `*` matches all, `example.com` matches it and its subdomains, `.example.com` subdomains only;
    a port after the name is ignored here)."""
    host = host.lower().rstrip(".")
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return raw.strip()
        if re.fullmatch(r"[^\[\]:]+:\d+", entry):
            entry = entry.rsplit(":", 1)[0]
        entry = entry.lstrip("*")  # "*.example.com" acts like ".example.com"
        if entry.startswith("."):
            if host.endswith(entry):
                return raw.strip()
        elif host == entry or host.endswith("." + entry):
            return raw.strip()
    return ""
