"""hubcache's CA: the names it may vouch for (pure), and the CA itself, checked by OpenSSL through
Python's ssl module (a TLS handshake over memory buffers, no network) with a leaf signed the way
mitmproxy signs them."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from mitmproxy import certs

from hubcache.decide.canames import Permitted, permitted, subtree, uncovered
from hubcache.settings import Settings
from hubcache.tools import ca


def test_a_subtree_is_the_host_without_port_and_a_wildcard_is_widened_to_its_fixed_right_part():
    assert subtree("registry-1.docker.io") == "registry-1.docker.io"
    assert subtree("registry.corp.example:5000") == "registry.corp.example"
    assert subtree("*-docker.pkg.dev") == "pkg.dev"
    assert subtree("*.gcr.io") == "gcr.io"
    assert subtree("*.r2.cloudflarestorage.com") == "r2.cloudflarestorage.com"
    assert subtree("registry.*.corp.example") == "corp.example"
    assert subtree("10.0.0.5:5000") == "10.0.0.5" and subtree("[fd00::5]:5000") == "fd00::5"
    for broad in ("*.com", "*", "*.io:5000", "registry.*"):
        with pytest.raises(ValueError, match="too broad"):
            subtree(broad)


def test_permitted_names_are_the_fewest_subtrees_covering_the_patterns_and_never_another_name():
    names = permitted(["registry-1.docker.io", "docker.io", "auth.docker.io", "*.gcr.io", "gcr.io", "quay.io",
                       "10.0.0.5:5000"])
    assert names == Permitted(("docker.io", "gcr.io", "quay.io"), ("10.0.0.5",))
    for host in ("docker.io", "registry-1.docker.io", "auth.docker.io", "us.gcr.io", "quay.io", "10.0.0.5"):
        assert names.covers(host), host
    for host in ("gitlab.com", "evildocker.io", "docker.io.evil.example", "quay.io.example", "10.0.0.6", "::1"):
        assert not names.covers(host), host
    assert uncovered(["ghcr.io", "us.gcr.io", "*-docker.pkg.dev", "*.com"], names) == ["ghcr.io", "*-docker.pkg.dev",
                                                                                       "*.com"]


def test_the_default_ca_permits_the_registry_table_realms_cdns_and_the_blob_host_but_not_gitlab_com():
    names = permitted(ca.intercepted(Settings()))
    assert "gitlab.com" not in names.dns and not names.covers("gitlab.com")
    for host in ("registry-1.docker.io", "auth.docker.io", "registry.gitlab.com", "europe-docker.pkg.dev",
                 "production.cloudflare.docker.com", "x.r2.cloudflarestorage.com", "blobs.hubcache.invalid"):
        assert names.covers(host), host
    assert names.ips == ()


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    d = tmp_path_factory.mktemp("ca") / "conf"
    info, created = ca.ensure(d, ["registry-1.docker.io", "docker.io", "registry.corp.example:5000"])
    assert created
    return d, info


def _handshake(cafile: Path, store: certs.CertStore, name: str) -> None:
    """A TLS handshake over memory buffers: the server presents mitmproxy's leaf for `name` from
    `store`; the client (OpenSSL via Python's ssl) trusts `cafile` and checks `name`."""
    entry = store.get_cert(name, [x509.DNSName(name)])
    pem = Path(cafile).parent / f"leaf-{name}.pem"
    pem.write_bytes(entry.cert.to_pem() + entry.privatekey.private_bytes(
        certs.serialization.Encoding.PEM, certs.serialization.PrivateFormat.PKCS8, certs.serialization.NoEncryption()))
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(pem)
    cctx = ssl.create_default_context(cafile=str(cafile))
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = cctx.wrap_bio(c_in, c_out, server_hostname=name)
    server = sctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side, out, peer_in in ((client, c_out, s_in), (server, s_out, c_in)):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
            peer_in.write(out.read())
        if client.version() and server.version():
            return
    raise AssertionError("handshake did not finish")


def test_a_made_ca_is_constrained_critically_and_its_key_is_the_owners_only(made):
    d, info = made
    ext = info.cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert ext.critical
    assert [n.value for n in ext.value.permitted_subtrees] == ["docker.io", "registry.corp.example"]
    assert {str(n.value) for n in ext.value.excluded_subtrees} == {"0.0.0.0/0", "::/0"}
    assert stat.S_IMODE((d / "mitmproxy-ca.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((d / "mitmproxy-ca.p12").stat().st_mode) == 0o600
    assert stat.S_IMODE(d.stat().st_mode) & 0o007 == 0
    assert (d / "mitmproxy-ca-cert.pem").read_bytes() == (d / "mitmproxy-ca-cert.cer").read_bytes()
    again, created = ca.ensure(d, ["quay.io"])  # there already: kept, not remade
    assert not created and again.fingerprint == info.fingerprint
    assert ca.problems(again, ["quay.io"]) and "hubcache ca renew" in ca.problems(again, ["quay.io"])[0]
    assert ca.problems(again, ["docker.io", "registry.corp.example:5000"]) == []


def test_openssl_accepts_mitmproxys_leaf_for_a_registry_and_refuses_one_for_another_name_from_the_same_key(made):
    d, _ = made
    store = certs.CertStore.from_store(d, "mitmproxy", 2048)  # mitmproxy loads hubcache's CA as its own
    _handshake(d / "mitmproxy-ca-cert.pem", store, "registry-1.docker.io")
    _handshake(d / "mitmproxy-ca-cert.pem", store, "registry.corp.example")
    for other in ("gitlab.com", "example.com"):
        with pytest.raises(ssl.SSLCertVerificationError, match="permitted subtree violation"):
            _handshake(d / "mitmproxy-ca-cert.pem", store, other)


def test_an_existing_ca_is_kept_with_its_key_tightened_and_an_unconstrained_one_is_a_problem(tmp_path):
    d = tmp_path / "old"
    certs.CertStore.from_store(d, "mitmproxy", 2048)  # mitmproxy's own, as before hubcache made one
    (d / "mitmproxy-ca.pem").chmod(0o644)
    d.chmod(0o755)
    info, created = ca.ensure(d, ["docker.io"])
    assert not created and info.names is None
    assert stat.S_IMODE((d / "mitmproxy-ca.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE(d.stat().st_mode) == 0o750
    (problem,) = ca.problems(info, ["docker.io"])
    assert "no Name Constraints" in problem and "hubcache ca renew" in problem


def test_doctor_flags_an_unconstrained_ca_and_registries_the_ca_does_not_cover_each_with_the_fix(tmp_path):
    from hubcache.tools.doctor.cachecks import check_ca

    d = tmp_path / "conf"  # as hubcache run makes it with the corp registry added
    ca.ensure(d, ca.intercepted(ca.settings_from(["hubcache_registries=+registry.corp.example:5000"])))
    old = tmp_path / "old"
    certs.CertStore.from_store(old, "mitmproxy", 2048)
    (bad,) = check_ca(str(old / "mitmproxy-ca-cert.pem"), [])
    assert bad.ok is False and "vouch for any site" in bad.detail and "hubcache ca renew" in bad.fix
    named, covered = check_ca(str(d / "mitmproxy-ca-cert.pem"), ["hubcache_registries=+registry.corp.example:5000"])
    assert named.ok and covered.ok, (named, covered)
    named, covered = check_ca(str(d / "mitmproxy-ca-cert.pem"), ["hubcache_registries=+registry.other.example",
                                                                 "hubcache_auth_hosts=auth.docker.io", "hubcache_auth_hosts=gitlab.com"])
    assert named.ok and covered.ok is False and "hubcache ca renew" in covered.fix
    assert "registry.other.example, gitlab.com" in covered.detail and "ghcr.io" not in covered.detail
    assert check_ca(str(tmp_path / "none.pem"), [])[0].ok is None


def test_ca_renew_replaces_an_unconstrained_ca_and_says_what_to_redistribute_and_show_names_a_problem(tmp_path, capsys):
    from hubcache.tools.cli import main

    d = tmp_path / "conf"
    certs.CertStore.from_store(d, "mitmproxy", 2048)
    before = ca.load(d)
    assert main(["ca", "show", "--confdir", str(d)]) == 1  # no Name Constraints: a problem
    assert "permitted:   any name" in capsys.readouterr().out
    assert main(["ca", "renew", "--confdir", str(d), "--set", "hubcache_registries=+registry.corp.example:5000"]) == 0
    out = capsys.readouterr().out
    after = ca.load(d)
    assert after.fingerprint != before.fingerprint and after.names and "registry.corp.example" in after.names.dns
    assert after.fingerprint in out and "restart hubcache" in out and str(d / "mitmproxy-ca-cert.pem") in out
    key = certs.CertStore.from_store(d, "mitmproxy", 2048).default_privatekey  # the key matches the new certificate
    assert key.public_key().public_numbers() == after.cert.public_key().public_numbers()
    assert main(["ca", "show", "--confdir", str(d), "--set", "hubcache_registries=+registry.corp.example:5000"]) == 0
    capsys.readouterr()
    assert main(["ca", "show", "--confdir", str(d), "--set", "hubcache_registries=+other.example"]) == 1
    assert "problem:     the CA may not vouch for other.example" in capsys.readouterr().out


def test_doctor_finds_hubcaches_ca_in_a_bundle_by_its_name_when_the_proxy_named_no_issuer(made):
    from hubcache.tools import doctor

    _, info = made
    der = info.cert.public_bytes(certs.serialization.Encoding.DER)
    assert doctor.judge_ca("/b.crt", [der], None, "", "", "FIX").ok is True
    assert doctor.judge_ca("/b.crt", [], None, "", "", "FIX").ok is False
