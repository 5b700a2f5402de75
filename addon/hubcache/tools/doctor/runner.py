"""`hubcache doctor`'s command line: runs the checks in order and prints one line for each.

The checks that go through the proxy are skipped, not failed, when an earlier proxy check failed:
one cause, one FAIL line.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from hubcache.tools.doctor.certs import pem_certs
from hubcache.tools.doctor.check import Check, exit_code
from hubcache.tools.doctor.egresschecks import check_all as check_egress
from hubcache.tools.doctor.hostchecks import DOCKER_PIDFILE, check_ca_store, check_docker
from hubcache.tools.doctor.parentchecks import check_all as check_parents
from hubcache.tools.doctor.proxychecks import check_interception, check_proxy, check_pull
from hubcache.tools.doctor.proxyenv import parse_proxy, proxy_from_env

DEFAULT_PROXY = "http://127.0.0.1:3128"
DEFAULT_IMAGE = "library/hello-world:latest"
DAEMON_JSON = "/etc/docker/daemon.json"


def run(args: argparse.Namespace) -> int:
    checks: list[Check] = []
    if args.proxy:
        url, source = args.proxy, "--proxy"
    elif proxy_from_env(dict(os.environ)):
        url, source = proxy_from_env(dict(os.environ)), "HTTPS_PROXY of this shell"
    else:
        url, source = DEFAULT_PROXY, "default"

    def emit(c: Check) -> None:
        checks.append(c)
        print(c.line(), flush=True)

    ca_der: bytes | None = None
    if args.ca:
        try:
            ca_der = next(iter(pem_certs(Path(args.ca).read_text(errors="replace"))), None)
        except OSError:
            pass
    try:
        proxy = parse_proxy(url)
    except ValueError as e:
        emit(Check("proxy reachable", False, f"{url} ({source}): {e}", "use the form http://HOST:3128"))
        proxy = None
    issuer = ""
    if proxy is not None:
        emit(check_proxy(proxy, source))
        if checks[-1].ok:
            c, issuer = check_interception(proxy, ca_der)
            emit(c)
        else:
            emit(Check("intercepts Docker Hub", None, "not checked: the proxy is not reachable"))
    emit(check_ca_store(args.ca or "", issuer))
    if args.ca or args.confdir:  # the CA itself: Name Constraints, and whether they cover the registry table
        from hubcache.tools.doctor.cachecks import check_ca
        for c in check_ca(args.ca or os.path.join(args.confdir, "mitmproxy-ca-cert.pem"), args.sets):
            emit(c)
    emit(check_docker(url, args.dockerd_pid, args.daemon_json))
    if proxy is not None and checks[0].ok and checks[1].ok:
        emit(check_pull(proxy, args.image or DEFAULT_IMAGE, issuer))
    else:
        emit(Check("test pull", None, "not tried: the checks of the proxy above failed"))
    if args.egress_proxy:  # the corporate proxy that hubcache itself goes through
        for c in check_egress(args.egress_proxy, args.egress_auth_file, args.egress_ca):
            emit(c)
    if args.parent:  # the parent registry hubcache asks first (hubcache_parent): run where hubcache runs
        found = next((c.ok for c in checks if c.name == "test pull"), None) if args.image else None
        for c in check_parents(args.parent, args.parent_ca, args.parent_credentials, args.parent_prefix,
                               args.egress_ca, args.image, found):
            emit(c)
    return exit_code(checks)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--proxy", default="", help="hubcache's URL, http://[USER:PASS@]HOST:PORT "
                   f"(default: HTTPS_PROXY of the environment, else {DEFAULT_PROXY})")
    p.add_argument("--ca", default="", help="hubcache's CA certificate (mitmproxy-ca-cert.pem) to look for in the system store")
    p.add_argument("--image", default=None, help=f"image for the test pull (default {DEFAULT_IMAGE}), on any registry hubcache caches "
                   "(ghcr.io/org/app:v1, registry.corp.example:5000/team/app:1); only a manifest HEAD, "
                   "which Docker Hub does not count; with --parent, its tag is also HEADed at its registry's parent")
    p.add_argument("--dockerd-pid", type=int, default=None, help=f"the dockerd to check (default: {DOCKER_PIDFILE}, else the only dockerd)")
    p.add_argument("--egress-proxy", default="", help="the corporate proxy hubcache goes through (its mode=upstream:URL): "
                   "check that it opens CONNECT tunnels to Docker Hub's hosts")
    p.add_argument("--egress-auth-file", default="", help="file with that proxy's login, user:password (hubcache_upstream_auth_file)")
    p.add_argument("--egress-ca", default="", help="CA file hubcache trusts upstream (ssl_verify_upstream_trusted_ca), for the "
                   "egress and parent checks; default: certifi's")
    p.add_argument("--parent", default="", help="the parent registry hubcache asks first, as hubcache_parent gives it "
                   "(https://mirror.internal:5000, or docker.io=https://a,quay.io=https://b): check it from here")
    p.add_argument("--parent-ca", default="", help="the parent's CA file (hubcache_parent_ca), trusted besides the usual ones")
    p.add_argument("--parent-credentials", default="", help="the parent's login file, mode 0600, one line user:password "
                   "(hubcache_parent_credentials); its content is never shown")
    p.add_argument("--parent-prefix", default="", help="repository prefix at the parent (hubcache_parent_prefix), for --image")
    p.add_argument("--confdir", default="", help="hubcache's confdir (where it runs): its CA is checked, as with --ca")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="OPTION=VALUE",
                   help="hubcache run's --set options (hubcache_registries ...): the CA must cover those registries")
    p.add_argument("--daemon-json", default=DAEMON_JSON, help=f"dockerd's configuration file (default {DAEMON_JSON})")
