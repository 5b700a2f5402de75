"""A runner host behind a corporate HTTP proxy: `hubcache run --set mode=upstream:URL`.

hubcache runs in a network namespace of its own (harness.egress.EgressNet) whose only way out is
Debian's tinyproxy: the Hub's names resolve there to an empty loopback, so any connection that
skips the proxy (hubcache's token, manifest, HEAD, blob or probe, or a relayed flow) is refused
and fails the pull. tinyproxy's log is the witness of what went through it.
"""

from __future__ import annotations

import http.client
import itertools
import os
import ssl
import subprocess
import sys

import pytest

from harness.clients import dir_files, pull_ok, skopeo_copy, skopeo_push
from harness.egress import EgressNet, Tinyproxy
from harness.hubenv import AUTH_HOST, CDN_HOST, REGISTRY_HOST

pytestmark = pytest.mark.e2e
MiB = 1 << 20
_seeds = itertools.count(7300)
LOGIN = "runner:corp-Secret-77"
# hubcache listens on the address of the test's own namespace (not loopback): an open proxy on purpose
OPEN = "hubcache_open_proxy=allow"


def layers(*sizes: int) -> list[tuple[int, int]]:
    return [(size, next(_seeds)) for size in sizes]


@pytest.fixture
def egress_net(upstream):
    with EgressNet() as net:
        yield net


def start_proxy(tmp_path, net: EgressNet, login: str | None = None) -> Tinyproxy:
    return Tinyproxy(tmp_path / "tinyproxy", net.proxy_ip, allow=f"{net.inside_ip}/32", login=login).start()


@pytest.fixture
def proxy_factory(tmp_path, egress_net):
    started: list[Tinyproxy] = []

    def make(login: str | None = None) -> Tinyproxy:
        p = start_proxy(tmp_path, egress_net, login)
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()


def direct_route_is_closed(net: EgressNet) -> str:
    """What a direct connection to the registry gives from inside the namespace (it must fail)."""
    code = f"import socket; socket.create_connection(({REGISTRY_HOST!r}, 443), timeout=3); print('open')"
    res = subprocess.run([*net.enter, sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert res.returncode != 0, f"hubcache's namespace reaches {REGISTRY_HOST}:443 directly: the test would prove nothing"
    return res.stderr


def test_cold_pull_goes_through_the_egress_proxy_and_a_warm_pull_does_not(
        upstream, start_hubcache, certs, tmp_path, egress_net, proxy_factory):
    img = upstream.push_image("library/egresspull", "1", layers(3 * MiB, 1 * MiB, 200_000))
    direct = pull_ok("docker.io/library/egresspull:1", tmp_path / "direct", None, certs)
    assert "refused" in direct_route_is_closed(egress_net).lower()
    proxy = proxy_factory()
    hub = start_hubcache(f"mode=upstream:{proxy.url}", OPEN, wrap=egress_net.enter, host=egress_net.inside_ip)

    mark = upstream.mark()
    through = pull_ok("docker.io/library/egresspull:1", tmp_path / "through", hub, certs)
    assert dir_files(through) == dir_files(direct)
    connects = proxy.connects()
    hub_hosts = {f"{h}:443" for h in (REGISTRY_HOST, AUTH_HOST, CDN_HOST)}
    assert set(connects) == hub_hosts, connects  # token, manifest, blob requests; nothing local leaks out
    # the 3 MiB layer went by the redirect to hubcache's own TLS listener, still not through the proxy
    assert f"blob library/egresspull {img.layer_digests[0]} 307" in hub.log()
    reqs = upstream.requests_since(mark)
    for d in [img.config_digest, *img.layer_digests]:  # each object fetched once, by hubcache
        assert sum(1 for r in reqs if r.host == CDN_HOST and d.split(":")[1] in r.path) == 1

    mark, pmark = upstream.mark(), proxy.mark()
    warm = pull_ok("docker.io/library/egresspull:1", tmp_path / "warm", hub, certs)
    assert dir_files(warm) == dir_files(direct)
    assert proxy.connections(pmark) == 0, proxy.log()[pmark:]
    assert upstream.requests_since(mark) == []
    assert "Traceback" not in hub.log()


def test_a_host_that_is_not_the_registry_is_tunnelled_through_the_egress_proxy(
        upstream, start_hubcache, certs, tmp_path, egress_net, proxy_factory):
    """A CONNECT to a host hubcache does not intercept reaches it through the corporate proxy,
    end to end: the client sees the host's own certificate, not hubcache's."""
    proxy = proxy_factory()
    hub = start_hubcache(f"mode=upstream:{proxy.url}", OPEN, wrap=egress_net.enter, host=egress_net.inside_ip)
    target = "127.0.0.3"  # the CDN server, by address: not one of hubcache's hosts
    tls = ssl.create_default_context(cafile=str(upstream.ca_cert))  # the upstream CA only
    tls.check_hostname = False
    conn = http.client.HTTPSConnection(hub.host, hub.port, context=tls, timeout=30)
    conn.set_tunnel(target, 443)
    try:
        conn.request("GET", "/")
        status = conn.getresponse().status
    finally:
        conn.close()
    assert status in (200, 400, 403, 404)  # any answer of the CDN server itself
    assert f"{target}:443" in proxy.connects()


def test_a_proxy_that_wants_a_login_is_one_clear_line_without_it(
        upstream, start_hubcache, certs, tmp_path, egress_net, proxy_factory):
    upstream.push_image("library/egresslogin", "1", layers(300_000))
    proxy = proxy_factory(login=LOGIN)
    hub = start_hubcache(f"mode=upstream:{proxy.url}", OPEN, "hubcache_backoff=1", wrap=egress_net.enter,
                         host=egress_net.inside_ip)
    res = skopeo_copy("docker.io/library/egresslogin:1", tmp_path / "out", proxy=hub.url, cert_dir=certs)
    assert res.returncode != 0
    log = hub.log()
    assert "Traceback" not in log
    lines = [line for line in log.splitlines() if "407" in line]
    assert lines, log
    assert any(f"egress proxy {proxy.url} refused CONNECT" in line and "upstream_auth_file" in line for line in lines), lines
    assert proxy.refused_connects() > 0, proxy.log()[-3000:]  # the check the login tests rely on sees a 407


@pytest.mark.parametrize("how", ["file", "option"])
def test_a_proxy_login_from_a_file_or_the_option_lets_the_pull_through(
        how, upstream, start_hubcache, certs, tmp_path, egress_net, proxy_factory):
    img = upstream.push_image(f"library/egresslogin-{how}", "1", layers(3 * MiB, 100_000))
    direct = pull_ok(f"docker.io/library/egresslogin-{how}:1", tmp_path / "direct", None, certs)
    proxy = proxy_factory(login=LOGIN)
    if how == "file":
        login_file = tmp_path / "proxy-login"
        login_file.write_text(LOGIN + "\n")
        os.chmod(login_file, 0o600)
        sets = [f"hubcache_upstream_auth_file={login_file}"]
    else:
        sets = [f"upstream_auth={LOGIN}"]
    hub = start_hubcache(f"mode=upstream:{proxy.url}", OPEN, *sets, wrap=egress_net.enter, host=egress_net.inside_ip)
    through = pull_ok(f"docker.io/library/egresslogin-{how}:1", tmp_path / "through", hub, certs)
    assert dir_files(through) == dir_files(direct)
    assert f"{REGISTRY_HOST}:443" in proxy.connects() and f"{CDN_HOST}:443" in proxy.connects()
    assert proxy.refused_connects() == 0, proxy.log()[-3000:]
    secret = LOGIN.split(":", 1)[1]
    assert secret not in hub.log()
    assert img.layer_digests[0].split(":")[1] in "".join(r.path for r in upstream.requests())
    # A push is relayed by mitmproxy itself (its own CONNECT, probed first through the proxy): the
    # login must be on that CONNECT too.
    pmark = proxy.mark()
    res = skopeo_push(through, f"docker.io/library/egresspushed-{how}:1", proxy=hub.url, cert_dir=certs,
                      creds="pusher:pushpass")
    assert res.returncode == 0, res.stderr + hub.log()[-2000:]
    assert f"{REGISTRY_HOST}:443" in proxy.connects(pmark) and proxy.refused_connects() == 0
    again = pull_ok(f"docker.io/library/egresspushed-{how}:1", tmp_path / "again", None, certs)  # direct
    assert dir_files(again)[img.layer_digests[0].split(":")[1]] == dir_files(direct)[img.layer_digests[0].split(":")[1]]
    assert secret not in hub.log()


def test_a_readable_login_file_is_refused(upstream, start_hubcache, tmp_path, egress_net, proxy_factory):
    proxy = proxy_factory(login=LOGIN)
    login_file = tmp_path / "proxy-login"
    login_file.write_text(LOGIN + "\n")
    os.chmod(login_file, 0o644)
    with pytest.raises(RuntimeError) as e:
        start_hubcache(f"mode=upstream:{proxy.url}", OPEN, f"hubcache_upstream_auth_file={login_file}",
                       wrap=egress_net.enter, host=egress_net.inside_ip)
    assert f"chmod 600 {login_file}" in str(e.value)
    assert LOGIN.split(":", 1)[1] not in str(e.value)


def test_doctor_checks_the_egress_proxy_one_line_per_host(upstream, tmp_path, egress_net, proxy_factory):
    """Run where hubcache runs (its namespace): the corporate proxy opens tunnels to the Hub's hosts."""
    proxy = proxy_factory(login=LOGIN)
    login_file = tmp_path / "proxy-login"
    login_file.write_text(LOGIN + "\n")
    os.chmod(login_file, 0o600)
    hubcache = os.path.join(os.path.dirname(sys.executable), "hubcache")

    def doctor(*extra: str) -> list[str]:
        cmd = [*egress_net.enter, hubcache, "doctor", "--proxy", "http://127.0.0.1:9", "--egress-proxy", proxy.url,
               "--egress-ca", str(upstream.ca_cert), *extra]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        return [line for line in res.stdout.splitlines() if "egress proxy" in line]

    without = doctor()
    assert len(without) == 3, without
    assert all(line.startswith("FAIL egress proxy to ") and "407" in line and "hubcache_upstream_auth_file" in line
               for line in without), without
    with_login = doctor("--egress-auth-file", str(login_file))
    assert [line.split(":")[0] for line in with_login] == [
        f"OK   egress proxy to {h}" for h in (REGISTRY_HOST, AUTH_HOST, CDN_HOST)], with_login
    assert all(LOGIN.split(":", 1)[1] not in line for line in without + with_login)
