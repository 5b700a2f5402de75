"""The checks of a corporate egress proxy that hubcache goes through (mitmproxy's upstream mode,
`--set mode=upstream:URL`): does it open a CONNECT tunnel to each Docker Hub host hubcache asks,
and is the certificate seen through it trusted as hubcache would check it.

One line per host, with the fix. `--egress-auth-file` reads the proxy's login from a file (as
hubcache_upstream_auth_file does), so that it is not on the command line.
"""

from __future__ import annotations

import ssl
from dataclasses import replace
from pathlib import Path

import certifi

from hubcache.settings import AUTH_HOSTS, CDN_HOSTS
from hubcache.tools.doctor.check import REGISTRY, Check
from hubcache.tools.doctor.probe import TunnelError, tls
from hubcache.tools.doctor.proxyenv import ProxyURL, parse_proxy

HOSTS = (REGISTRY, AUTH_HOSTS[0], CDN_HOSTS[0])  # a pull's token, manifests and blobs


def egress_proxy(url: str, auth_file: str = "") -> ProxyURL:
    """--egress-proxy, with the login of --egress-auth-file (one line user:password) if given."""
    proxy = parse_proxy(url)
    if auth_file:
        lines = [line.strip() for line in Path(auth_file).read_text().splitlines() if line.strip()]
        if len(lines) != 1 or ":" not in lines[0]:
            raise ValueError(f"{auth_file} must hold one line user:password")
        user, _, password = lines[0].partition(":")
        proxy = replace(proxy, user=user, password=password)
    return proxy


def _context(ca_file: str) -> ssl.SSLContext:
    """As hubcache checks upstream certificates: ssl_verify_upstream_trusted_ca, else certifi."""
    return ssl.create_default_context(cafile=ca_file or certifi.where())


def check_egress(proxy: ProxyURL, host: str, ca_file: str = "") -> Check:
    name = f"egress proxy to {host}"
    where = proxy.show()
    try:
        tls(proxy, host, _context(ca_file)).close()
    except TunnelError as e:
        fixes = {
            407: "it wants a login: give hubcache hubcache_upstream_auth_file (or upstream_auth), and this "
                 "check --egress-auth-file",
            403: f"its policy forbids {host}: ask the proxy's operator to allow CONNECT to {host}:443",
        }
        return Check(name, False, f"{where}: {e}",
                     fixes.get(e.status, f"the proxy cannot reach {host}: check the proxy's own route and DNS"))
    except ssl.SSLCertVerificationError as e:
        return Check(name, False, f"CONNECT through {where} works, but the certificate of {host} is not trusted "
                     f"({e.verify_message}): the proxy inspects TLS",
                     "give hubcache the proxy's CA: --set ssl_verify_upstream_trusted_ca=FILE (and this check --egress-ca FILE)")
    except (OSError, ValueError) as e:
        why = getattr(e, "strerror", None) or str(e) or type(e).__name__
        return Check(name, False, f"{where}: {why}",
                     "check the URL of mode=upstream:URL and this host's route to the proxy")
    return Check(name, True, f"CONNECT {host}:443 through {where}, certificate trusted")


def check_all(url: str, auth_file: str, ca_file: str) -> list[Check]:
    try:
        proxy = egress_proxy(url, auth_file)
    except (ValueError, OSError) as e:
        return [Check("egress proxy", False, str(e), "use --egress-proxy http://HOST:PORT, as in mode=upstream:URL")]
    return [check_egress(proxy, host, ca_file) for host in HOSTS]
