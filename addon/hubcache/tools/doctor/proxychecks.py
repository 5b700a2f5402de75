"""The checks made through the proxy: is it reachable, does it intercept Docker Hub, does a pull work.

The test pull sends only `GET /v2/`, an anonymous token request (from the realm the registry's
challenge names) and a manifest HEAD (Docker Hub does not count HEADs against the pull limit); only
when the HEAD fails, a manifest GET to show the error message. Any registry hubcache caches.
"""

from __future__ import annotations

import json
import ssl
from urllib.parse import urlencode, urlsplit

from hubcache.model import MANIFEST_TYPES
from hubcache.registries import DOCKER_HUB
from hubcache.tools.doctor.certs import cert_issuer, cert_subject
from hubcache.tools.doctor.check import REGISTRY, Check
from hubcache.tools.doctor.hostchecks import trust_fix
from hubcache.tools.doctor.hub import PullTarget, answered_by, hub_outcome, parse_challenge, pull_target
from hubcache.tools.doctor.probe import TunnelError, https_request, tls, tunnel
from hubcache.tools.doctor.proxyenv import ProxyURL


def check_proxy(proxy: ProxyURL, source: str) -> Check:
    name = "proxy reachable"
    where = f"{proxy.show()} ({source})"
    try:
        tunnel(proxy, REGISTRY).close()
    except TunnelError as e:
        if e.status == 407:
            return Check(name, False, f"{where}: {e}",
                         "put the user and password of hubcache's proxyauth in the URL: http://USER:PASS@HOST:PORT")
        return Check(name, False, f"{where}: {e}", "check that this is hubcache and not another proxy")
    except OSError as e:
        why = e.strerror or str(e) or type(e).__name__
        return Check(name, False, f"{where}: {why}",
                     "start hubcache (`systemctl start hubcache`, log: `journalctl -u hubcache`) or point "
                     "--proxy / HTTPS_PROXY at it; from another machine it must listen on 0.0.0.0 or its address")
    return Check(name, True, f"CONNECT {REGISTRY}:443 through {where}")


def _issuer(sock: ssl.SSLSocket) -> str:
    """Who signed the certificate the proxy showed ("" when it showed none)."""
    der = sock.getpeercert(binary_form=True)
    return cert_issuer(der) if der else ""


def check_interception(proxy: ProxyURL, ca_der: bytes | None) -> tuple[Check, str]:
    """A TLS handshake with registry-1.docker.io through the proxy, verified with the system
    trust store. Returns the check and the issuer of the certificate the proxy showed."""
    name = "intercepts Docker Hub"
    try:
        with tls(proxy, REGISTRY, ssl.create_default_context()) as s:
            issuer = _issuer(s)
    except ssl.SSLCertVerificationError as e:
        issuer = ""
        try:  # again without verification, only to name who signed it
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            with tls(proxy, REGISTRY, ctx) as s:
                issuer = _issuer(s)
        except (OSError, ValueError):
            pass
        return Check(name, False, f"certificate for {REGISTRY} issued by {issuer or '?'} is not trusted here "
                     f"({e.verify_message})", trust_fix("")), issuer
    except (OSError, ValueError) as e:
        return Check(name, False, f"TLS through the proxy failed: {e}",
                     "look at hubcache's log (`journalctl -u hubcache`) for the reason"), ""
    ours = cert_subject(ca_der) if ca_der else ""
    if (ours and issuer == ours) or (not ours and "mitmproxy" in issuer):
        return Check(name, True, f"certificate for {REGISTRY} issued by {issuer}, trusted by the system store"), issuer
    return Check(name, False, f"certificate for {REGISTRY} issued by {issuer}: the proxy does not intercept "
                 f"Docker Hub{' with the CA given by --ca' if ours else ''}",
                 "point HTTPS_PROXY at hubcache itself (not another proxy), with no allow_hosts/ignore_hosts "
                 "that leave Docker Hub out"), issuer


def _not_intercepted(proxy: ProxyURL, target: PullTarget, issuer: str) -> Check | None:
    """For a registry other than Docker Hub: a failed check when the certificate the proxy shows
    for it is not signed by the same CA as Docker Hub's (`issuer`): hubcache tunnels it untouched."""
    if target.registry == DOCKER_HUB or not issuer:
        return None
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # only to read who signed it
    try:
        with tls(proxy, target.host, ctx, target.port) as s:
            theirs = _issuer(s)
    except (OSError, ValueError) as e:
        return Check("test pull", False, f"{target.image}: TLS with {target.netloc} through the proxy failed: {e}",
                     "look at hubcache's log (`journalctl -u hubcache`) for the reason")
    if theirs == issuer:
        return None
    return Check("test pull", False, f"{target.image}: the certificate for {target.netloc} is issued by {theirs or '?'}, "
                 f"not by hubcache's CA ({issuer}): hubcache tunnels {target.registry} untouched, nothing is cached",
                 f"add it to hubcache's registries: --set hubcache_registries=+{target.registry}")


def _token(proxy: ProxyURL, ctx: ssl.SSLContext, target: PullTarget, challenge: dict[str, str],
           steps: list[str]) -> list[tuple[str, str]] | None:
    """An anonymous token from the realm the registry's challenge names (on its own host, as
    ghcr.io's, or another, as auth.docker.io or gitlab.com), through the proxy; None when refused."""
    realm = urlsplit(challenge["realm"])
    query = urlencode({"service": challenge.get("service", ""), "scope": f"repository:{target.repository}:pull"})
    status, headers, body = https_request(proxy, ctx, "GET", f"{challenge['realm']}?{query}", [("Host", realm.netloc)])
    steps.append(f"token {status} ({answered_by(headers)})")
    if status != 200:
        return None
    answer = json.loads(body)
    return [("Authorization", "Bearer " + (answer.get("token") or answer.get("access_token") or ""))]


def check_pull(proxy: ProxyURL, image: str, issuer: str = "") -> Check:
    """A manifest HEAD of `image` (any registry hubcache caches) through the proxy, asked as
    `docker pull` asks: /v2/, the challenge it answers with, a token from that challenge's realm.
    `issuer`: who signed the proxy's certificate for Docker Hub (check_interception)."""
    name = "test pull"
    try:
        target = pull_target(image)
    except ValueError as e:
        return Check(name, False, str(e), "pass --image NAME:TAG, e.g. library/alpine:3, ghcr.io/org/app:v1")
    if (bad := _not_intercepted(proxy, target, issuer)) is not None:
        return bad
    ctx = ssl.create_default_context()
    host = [("Host", target.netloc)]
    accept = [("Accept", media_type) for media_type in MANIFEST_TYPES]
    steps: list[str] = []
    try:
        status, headers, _ = https_request(proxy, ctx, "GET", f"https://{target.netloc}/v2/", host)
        challenge = parse_challenge(headers.get("www-authenticate", ""))
        steps.append(f"GET /v2/ {status} ({answered_by(headers)})")
        auth: list[tuple[str, str]] = []
        if status == 401 and challenge.get("scheme") == "bearer" and challenge.get("realm"):
            if (got := _token(proxy, ctx, target, challenge, steps)) is None:
                return Check(name, False, f"{target.image}: " + ", ".join(steps),
                             "look at hubcache's log (`journalctl -u hubcache`) for the token request")
            auth = got
        elif status == 401 and challenge.get("scheme") == "basic":
            steps.append("Basic login asked for, none sent")
        elif status != 200:
            return Check(name, False, f"{target.image}: " + ", ".join(steps), "look at hubcache's log for GET /v2/")
        manifest_url = f"https://{target.netloc}/v2/{target.repository}/manifests/{target.reference}"
        status, headers, body = https_request(proxy, ctx, "HEAD", manifest_url, [*host, *accept, *auth])
        if status != 200:
            # A HEAD carries no error message: a GET fetches it. It follows a failed HEAD, so it is
            # answered with an error as well (Docker Hub counts manifest GETs, this is the only one).
            steps.append(f"manifest HEAD {status}")
            status, headers, body = https_request(proxy, ctx, "GET", manifest_url, [*host, *accept, *auth])
    except ssl.SSLError as e:
        return Check(name, False, f"{target.image}: TLS failed ({e})", trust_fix(""))
    except (OSError, ValueError) as e:
        return Check(name, False, f"{target.image}: {', '.join(steps + [str(e)])}",
                     "look at hubcache's log (`journalctl -u hubcache`)")
    return _verdict(target, status, headers, body, steps, challenge.get("scheme", ""))


def _verdict(target: PullTarget, status: int, headers: dict[str, str], body: bytes, steps: list[str],
             scheme: str) -> Check:
    passed, meaning = hub_outcome(status, headers, body)
    detail = f"{target.image}: {', '.join(steps)}, manifest {'GET' if steps[-1].startswith('manifest') else 'HEAD'} {meaning}"
    if passed:
        return Check("test pull", True, detail)
    where = "Docker Hub" if target.registry == DOCKER_HUB else target.registry
    if status == 404 and answered_by(headers) == "upstream":
        fix = f"the image does not exist on {where}: pass --image of one that does"
    elif status == 401 and scheme == "basic":
        fix = (f"{where} wants a login and the test pull sends none: pass --image of an image anyone may pull, "
               f"or try `docker login {target.registry}` and `docker pull {target.image}`")
    else:
        fix = "look at hubcache's log (`journalctl -u hubcache`)"
    return Check("test pull", False, detail, fix)
