"""hubcache's name-constrained CA with real clients (issue 15 item 1).

A fresh confdir gets, from `hubcache run`, a CA whose certificate carries critical Name
Constraints; pulls through hubcache still work. Then the threat itself: a proxy holding the CA's
key (plain mitmdump with the shared confdir, intercepting every host) signs a certificate for
whatever name a client asks. Go (skopeo, dockerd, containerd, podman), OpenSSL (curl, `openssl
verify`) and Python accept its certificate for a registry host and refuse its certificate for
gitlab.com, GitLab itself, which the CA may not vouch for.
"""

from __future__ import annotations

import itertools
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from mitmproxy import certs

from harness.clients import client_env, dir_files, https_connection, make_cert_dir, pull_ok, send, skopeo_copy
from harness.engines import ENGINES, missing_engine
from harness.hubenv import GHCR_HOST, GITLAB_AUTH_HOST, GITLAB_HOST
from harness.proxy import Proxy

pytestmark = pytest.mark.e2e
_seeds = itertools.count(15_100)
HUBCACHE = str(Path(sys.executable).parent / "hubcache")
OPENSSL_REFUSAL = "permitted subtree violation"


def go_refused(text: str) -> bool:
    """Go's crypto/x509 refusal of gitlab.com under the constraints (quotes come escaped in a log line)."""
    plain = text.replace("\\", "")
    return ("x509: a root or intermediate certificate is not authorized to sign for this name: "
            f'DNS name "{GITLAB_AUTH_HOST}" is not permitted by any constraint') in plain


def test_a_fresh_confdir_gets_a_constrained_ca_with_a_private_key_and_pulls_through_hubcache_work(upstream, tmp_path):
    confdir = tmp_path / "fresh-confdir"
    hub = Proxy(tmp_path / "hub", upstream.ca_cert, confdir=confdir).start()
    try:
        ca_pem = confdir / "mitmproxy-ca-cert.pem"
        cert = x509.load_pem_x509_certificate(ca_pem.read_bytes())
        nc = cert.extensions.get_extension_for_class(x509.NameConstraints)
        permitted = [n.value for n in nc.value.permitted_subtrees]
        assert nc.critical and "docker.io" in permitted and GITLAB_HOST in permitted
        assert GITLAB_AUTH_HOST not in permitted and "blobs.hubcache.invalid" in permitted
        assert stat.S_IMODE((confdir / "mitmproxy-ca.pem").stat().st_mode) == 0o600
        assert stat.S_IMODE(confdir.stat().st_mode) & 0o077 == 0
        assert "made a CA that may vouch only for" in hub.log()

        shown = subprocess.run([HUBCACHE, "ca", "show", "--confdir", str(confdir)], capture_output=True, text=True)
        assert shown.returncode == 0, shown
        assert cert.fingerprint(hashes.SHA256()).hex(":").upper() in shown.stdout
        assert f" {GITLAB_HOST} " in shown.stdout and f" {GITLAB_AUTH_HOST} " not in shown.stdout

        # mitmproxy's own leaf certificates from this CA, checked by `openssl verify`
        store = certs.CertStore.from_store(confdir, "mitmproxy", 2048)
        for name, ok in (("registry-1.docker.io", True), (GITLAB_HOST, True), (GITLAB_AUTH_HOST, False)):
            leaf = tmp_path / f"{name}.pem"
            leaf.write_bytes(store.get_cert(name, [x509.DNSName(name)]).cert.to_pem())
            v = subprocess.run(["openssl", "verify", "-CAfile", str(ca_pem), str(leaf)], capture_output=True, text=True)
            assert (v.returncode == 0) is ok, (name, v.stdout, v.stderr)
            assert ok or OPENSSL_REFUSAL in v.stdout + v.stderr, v

        cert_dir = make_cert_dir(tmp_path / "certs", upstream.ca_cert, ca_pem)
        for registry in ("docker.io", GITLAB_HOST):  # gitlab's realm is on gitlab.com: moved onto its host
            img = upstream.push_image("team/constrained", "1", [(3 << 20, next(_seeds)), (300_000, next(_seeds))],
                                      registry=registry)
            ref = f"{registry}/team/constrained:1"
            direct = pull_ok(ref, tmp_path / f"direct-{registry}", None, cert_dir)
            cold = pull_ok(ref, tmp_path / f"cold-{registry}", hub, cert_dir)
            warm = pull_ok(ref, tmp_path / f"warm-{registry}", hub, cert_dir)
            assert dir_files(cold) == dir_files(direct) == dir_files(warm)
            name = "team/constrained" if registry == "docker.io" else f"{registry}/team/constrained"
            # the 3 MiB layer of the warm pull came from blobs.hubcache.invalid, over TLS with this CA
            assert f"hit         GET  blob {name} {img.layer_digests[0]} 307" in hub.log(), hub.log()[-3000:]
    finally:
        hub.stop()


@pytest.fixture(scope="module")
def ghcr_image(upstream):
    """An image on the ghcr-like registry, whose realm is on its own host."""
    upstream.push_image("team/keyholder", "1", [(200_000, next(_seeds))], registry=GHCR_HOST)
    return f"{GHCR_HOST}/team/keyholder:1"


def test_skopeo_accepts_a_registry_certificate_from_the_ca_key_and_refuses_one_for_gitlab_com(
        key_holder, confdir, ghcr_image, tmp_path):
    cert_dir = make_cert_dir(tmp_path / "certs", confdir / "mitmproxy-ca-cert.pem")  # hubcache's CA only
    ok = skopeo_copy(ghcr_image, tmp_path / "ok", proxy=key_holder.url, cert_dir=cert_dir)
    assert ok.returncode == 0, ok.stderr
    bad = skopeo_copy(f"{GITLAB_AUTH_HOST}/team/keyholder:1", tmp_path / "bad", proxy=key_holder.url, cert_dir=cert_dir)
    assert bad.returncode != 0 and go_refused(bad.stderr), bad.stderr


def test_curl_and_python_accept_a_registry_certificate_from_the_ca_key_and_refuse_one_for_gitlab_com(
        key_holder, confdir):
    ca_pem = confdir / "mitmproxy-ca-cert.pem"

    def curl(host: str) -> subprocess.CompletedProcess:
        return subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--proxy", key_holder.url,
                               "--cacert", str(ca_pem), f"https://{host}/v2/"], capture_output=True, text=True,
                              env=client_env(None), timeout=60)

    ok = curl(GHCR_HOST)
    assert ok.returncode == 0 and ok.stdout == "401", ok  # the registry's own answer, over TLS it accepted
    bad = curl(GITLAB_AUTH_HOST)
    assert bad.returncode == 60 and OPENSSL_REFUSAL in bad.stderr, bad

    tls = ssl.create_default_context(cafile=str(ca_pem))
    conn = https_connection(GHCR_HOST, tls, key_holder.port)
    try:
        assert send(conn, "GET", "/v2/")[0] == 401
    finally:
        conn.close()
    conn = https_connection(GITLAB_AUTH_HOST, tls, key_holder.port)
    try:
        with pytest.raises(ssl.SSLCertVerificationError, match=OPENSSL_REFUSAL):
            send(conn, "GET", "/jwt/auth")
    finally:
        conn.close()


@pytest.mark.parametrize("engine_name", ["containerd", "podman"])
def test_containerd_and_podman_accept_a_registry_certificate_from_the_ca_key_and_refuse_one_for_gitlab_com(
        key_holder, confdir, ghcr_image, tmp_path, engine_name):
    if why := missing_engine(engine_name):
        pytest.skip(why)
    with ENGINES[engine_name](tmp_path / engine_name, proxy=key_holder.url,
                              ca_cert=Path(confdir) / "mitmproxy-ca-cert.pem") as engine:
        ok = engine.pull(ghcr_image, check=False)
        assert ok.returncode == 0, f"{ok.stderr}\n{engine.log()[-2000:]}"
        bad = engine.pull(f"{GITLAB_AUTH_HOST}/team/keyholder:1", check=False)
        assert bad.returncode != 0 and go_refused(bad.stderr + bad.stdout), f"{bad.stderr}\n{engine.log()[-2000:]}"


def test_dockerd_accepts_a_registry_certificate_from_the_ca_key_and_refuses_one_for_a_gitlab_name(
        key_holder, confdir, tmp_path):
    """dockerd skips certificate checks for a registry whose name resolves into 127.0.0.0/8 (its
    built-in insecure-registries, which daemon.json cannot remove), and here every harness name
    does: so this test uses names the test namespace does not resolve (dockerd then checks, and
    the key holder's lazy connection makes its certificate before it looks the name up). quay.io
    is permitted: the certificate is accepted and the pull fails only at the proxy's upstream
    connection; www.gitlab.com (GitLab's, not a registry) is refused by the certificate check."""
    if why := missing_engine("docker"):
        pytest.skip(why)
    import socket

    for name in ("quay.io", f"www.{GITLAB_AUTH_HOST}"):
        with pytest.raises(OSError):
            socket.getaddrinfo(name, 443)
    with ENGINES["docker"](tmp_path / "docker", proxy=key_holder.url,
                           ca_cert=Path(confdir) / "mitmproxy-ca-cert.pem") as engine:
        ok = engine.pull("quay.io/team/keyholder:1", check=False)
        assert ok.returncode != 0 and "502 Bad Gateway" in ok.stderr and "x509" not in ok.stderr, ok.stderr
        bad = engine.pull(f"www.{GITLAB_AUTH_HOST}/team/keyholder:1", check=False)
        plain = bad.stderr.replace("\\", "")
        assert bad.returncode != 0 and "x509: a root or intermediate certificate is not authorized to sign for this " \
            f'name: DNS name "www.{GITLAB_AUTH_HOST}" is not permitted by any constraint' in plain, bad.stderr
