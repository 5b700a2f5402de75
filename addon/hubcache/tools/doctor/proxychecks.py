"""The checks made through the proxy: is it reachable, does it intercept Docker Hub, does a pull work.

The test pull sends only `GET /v2/`, an anonymous token request and a manifest HEAD (Docker Hub
does not count HEADs against the pull limit); only when the HEAD fails, a manifest GET to show the
error message.
"""

from __future__ import annotations

import json
import ssl
from urllib.parse import urlencode, urlsplit

from hubcache.model import MANIFEST_TYPES, is_digest
from hubcache.tools.doctor.certs import cert_issuer, cert_subject
from hubcache.tools.doctor.check import REGISTRY, Check
from hubcache.tools.doctor.hostchecks import trust_fix
from hubcache.tools.doctor.hub import answered_by, hub_outcome, parse_challenge, pull_target
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


def check_pull(proxy: ProxyURL, image: str) -> Check:
    name = "test pull"
    try:
        repository, tag = pull_target(image)
    except ValueError as e:
        return Check(name, False, str(e), "pass --image NAME:TAG of a Docker Hub image")
    ctx = ssl.create_default_context()
    ref = f"docker.io/{repository}@{tag}" if is_digest(tag) else f"docker.io/{repository}:{tag}"
    accept = [("Accept", media_type) for media_type in MANIFEST_TYPES]
    steps = []
    try:
        status, headers, _ = https_request(proxy, ctx, "GET", f"https://{REGISTRY}/v2/", [("Host", REGISTRY)])
        challenge = parse_challenge(headers.get("www-authenticate", ""))
        steps.append(f"GET /v2/ {status} ({answered_by(headers)})")
        auth: list[tuple[str, str]] = []
        if status == 401 and challenge.get("scheme") == "bearer" and challenge.get("realm"):
            realm = urlsplit(challenge["realm"])
            query = urlencode({"service": challenge.get("service", ""), "scope": f"repository:{repository}:pull"})
            tstatus, theaders, tbody = https_request(
                proxy, ctx, "GET", f"{challenge['realm']}?{query}", [("Host", realm.netloc)])
            steps.append(f"token {tstatus} ({answered_by(theaders)})")
            if tstatus != 200:
                return Check(name, False, f"{ref}: " + ", ".join(steps),
                             "look at hubcache's log (`journalctl -u hubcache`) for the token request")
            body = json.loads(tbody)
            auth = [("Authorization", "Bearer " + (body.get("token") or body.get("access_token") or ""))]
        elif status != 200:
            return Check(name, False, f"{ref}: " + ", ".join(steps), "look at hubcache's log for GET /v2/")
        manifest_url = f"https://{REGISTRY}/v2/{repository}/manifests/{tag}"
        status, headers, body = https_request(proxy, ctx, "HEAD", manifest_url, [("Host", REGISTRY), *accept, *auth])
        if status != 200:
            # A HEAD carries no error message: a GET fetches it. It follows a failed HEAD, so it is
            # answered with an error as well (Docker Hub counts manifest GETs, this is the only one).
            steps.append(f"manifest HEAD {status}")
            status, headers, body = https_request(proxy, ctx, "GET", manifest_url, [("Host", REGISTRY), *accept, *auth])
    except ssl.SSLError as e:
        return Check(name, False, f"{ref}: TLS failed ({e})", trust_fix(""))
    except (OSError, ValueError) as e:
        return Check(name, False, f"{ref}: {', '.join(steps + [str(e)])}", "look at hubcache's log (`journalctl -u hubcache`)")
    passed, meaning = hub_outcome(status, headers, body)
    detail = f"{ref}: {', '.join(steps)}, manifest {'GET' if steps[-1].startswith('manifest') else 'HEAD'} {meaning}"
    if passed:
        return Check(name, True, detail)
    fix = ("the image does not exist on Docker Hub: pass --image of one that does" if status == 404
           and answered_by(headers) == "upstream" else "look at hubcache's log (`journalctl -u hubcache`)")
    return Check(name, False, detail, fix)
