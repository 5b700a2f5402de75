"""The pure parts of `hubcache doctor`: parsing what it reads and deciding what it says."""

from __future__ import annotations

import ssl

import pytest

from hubcache.tools import doctor
from hubcache.tools.doctor import Check

# ------------------------------------------------------------------------ proxy URLs


def test_parse_proxy_forms():
    assert doctor.parse_proxy("http://hubcache.internal:3128") == doctor.ProxyURL("hubcache.internal", 3128)
    assert doctor.parse_proxy("hubcache.internal:3128") == doctor.ProxyURL("hubcache.internal", 3128)
    assert doctor.parse_proxy("http://10.0.0.5") == doctor.ProxyURL("10.0.0.5", 80)
    p = doctor.parse_proxy("http://ci:s%40cret@hubcache.internal:3128/")
    assert (p.user, p.password) == ("ci", "s@cret")
    assert p.auth_header == "Basic Y2k6c0BjcmV0"
    assert p.show() == "http://ci:***@hubcache.internal:3128"  # never prints the password
    assert doctor.parse_proxy("http://[::1]:3128").show() == "http://[::1]:3128"


@pytest.mark.parametrize("bad", ["https://hubcache:3128", "socks5://h:1", "http://:3128", "http://h:port"])
def test_parse_proxy_rejects(bad):
    with pytest.raises(ValueError):
        doctor.parse_proxy(bad)


def test_proxy_from_env_prefers_upper_case_like_go():
    assert doctor.proxy_from_env({"HTTPS_PROXY": "http://a:1", "https_proxy": "http://b:2"}) == "http://a:1"
    assert doctor.proxy_from_env({"https_proxy": "http://b:2"}) == "http://b:2"
    assert doctor.proxy_from_env({"HTTP_PROXY": "http://c:3"}) == ""  # Hub is https: HTTP_PROXY is not used


def test_same_proxy_ignores_scheme_and_credentials():
    assert doctor.same_proxy("http://u:p@Hub.internal:3128", "hub.internal:3128")
    assert not doctor.same_proxy("http://hub:3128", "http://hub:3129")


# -------------------------------------------------------------------------- NO_PROXY


@pytest.mark.parametrize("no_proxy,host,entry", [
    ("localhost,127.0.0.1", "registry-1.docker.io", ""),
    ("*", "registry-1.docker.io", "*"),
    ("docker.io", "registry-1.docker.io", "docker.io"),
    (".docker.io", "registry-1.docker.io", ".docker.io"),
    (".docker.io", "docker.io", ""),  # a leading dot: subdomains only
    ("*.docker.io", "registry-1.docker.io", "*.docker.io"),
    ("gitlab.example.com, registry-1.docker.io:443", "registry-1.docker.io", "registry-1.docker.io:443"),
    ("notdocker.io", "docker.io", ""),
    ("10.0.0.0/8,.svc,.cluster.local", "registry-1.docker.io", ""),
])
def test_no_proxy_match(no_proxy, host, entry):
    assert doctor.no_proxy_match(no_proxy, host) == entry


# --------------------------------------------------------------- what is read from disk


def test_parse_environ():
    data = b"PATH=/usr/bin\0HTTPS_PROXY=http://h:3128\0EMPTY=\0BROKEN\0A=b=c\0"
    assert doctor.parse_environ(data) == {"PATH": "/usr/bin", "HTTPS_PROXY": "http://h:3128", "EMPTY": "", "A": "b=c"}


def test_parse_systemctl_environment():
    out = 'Environment=HTTPS_PROXY=http://hubcache.internal:3128 "NO_PROXY=localhost,127.0.0.1" "X=a b"\n'
    assert doctor.parse_systemctl_environment(out) == {
        "HTTPS_PROXY": "http://hubcache.internal:3128", "NO_PROXY": "localhost,127.0.0.1", "X": "a b"}
    assert doctor.parse_systemctl_environment("Environment=\n") == {}


def test_daemon_json_proxies():
    assert doctor.daemon_json_proxies('{"proxies": {"https-proxy": "http://h:3128", "no-proxy": "x"}}') == {
        "https-proxy": "http://h:3128", "no-proxy": "x"}
    assert doctor.daemon_json_proxies('{"log-driver": "json-file"}') == {}
    for bad in ("[1]", '{"proxies": "http://h"}', "{not json"):
        with pytest.raises(ValueError):
            doctor.daemon_json_proxies(bad)


def test_pem_certs_reads_every_certificate_of_a_bundle():
    pem = _self_signed_pem()
    assert len(doctor.pem_certs("junk\n" + pem + "\n# comment\n" + pem)) == 2
    assert doctor.pem_certs("nothing here") == []


# --------------------------------------------------------------------------- verdicts


def test_judge_docker_env_with_proxy():
    c = doctor.judge_docker({"HTTPS_PROXY": "http://hub:3128"}, "the environment of dockerd (pid 7)", None, "http://hub:3128")
    assert c.ok is True
    assert c.line() == "OK   dockerd proxy: HTTPS_PROXY in the environment of dockerd (pid 7) is http://hub:3128"


def test_judge_docker_other_proxy_than_checked_is_said():
    c = doctor.judge_docker({"https_proxy": "http://other:3128"}, "env", None, "http://hub:3128")
    assert c.ok is True and "not http://hub:3128, the proxy checked here" in c.detail


def test_judge_docker_no_proxy_anywhere_fails_with_the_drop_in_as_fix():
    c = doctor.judge_docker({"PATH": "/bin"}, "env", {}, "http://hub:3128")
    assert c.ok is False
    assert "docker.service.d/http-proxy.conf" in c.fix and "systemctl restart docker" in c.fix
    assert c.line().startswith("FAIL dockerd proxy: no HTTPS_PROXY")


def test_judge_docker_no_proxy_covering_hub_fails():
    c = doctor.judge_docker({"HTTPS_PROXY": "http://hub:3128", "NO_PROXY": "localhost,.docker.io"}, "env", None, "http://hub:3128")
    assert c.ok is False and "'.docker.io'" in c.detail and "remove '.docker.io'" in c.fix


def test_judge_docker_no_proxy_covering_the_blob_redirect_host_fails():
    c = doctor.judge_docker({"HTTPS_PROXY": "http://hub:3128", "NO_PROXY": "localhost,.invalid"}, "env", None, "http://hub:3128")
    assert c.ok is False and "blobs.hubcache.invalid" in c.detail and "remove '.invalid'" in c.fix


def test_judge_docker_daemon_json_wins_over_environment():
    c = doctor.judge_docker({"HTTPS_PROXY": "http://old:3128"}, "env", {"https-proxy": "http://hub:3128"}, "http://hub:3128")
    assert c.ok is True and "daemon.json" in c.detail and "http://hub:3128" in c.detail
    c = doctor.judge_docker(None, "/proc/1/environ needs root", {"https-proxy": "http://hub:3128", "no-proxy": "*"}, "http://hub:3128")
    assert c.ok is False and "'*'" in c.detail


def test_judge_docker_unknown_environment_is_a_skip():
    c = doctor.judge_docker(None, "/proc/12/environ needs root", None, "http://hub:3128")
    assert c.ok is None and c.line().startswith("SKIP dockerd proxy: could not read")


def test_judge_docker_pending_daemon_reload():
    c = doctor.judge_docker({"HTTPS_PROXY": "http://hub:3128"}, "unit", None, "http://hub:3128", need_reload=True)
    assert c.ok is False and "daemon-reload" in c.fix


def test_judge_ca_by_bytes_and_by_name():
    ca = ssl.PEM_cert_to_DER_cert(_self_signed_pem())
    other = b"not a certificate"
    assert doctor.judge_ca("/b.crt", [other, ca], ca, "ca.pem", "", "FIX").ok is True
    c = doctor.judge_ca("/b.crt", [other], ca, "ca.pem", "", "FIX")
    assert c.ok is False and c.fix == "FIX" and "is not in /b.crt" in c.detail
    # without --ca: by the issuer the proxy showed, else by name
    assert "CN=mitmproxy" in doctor.cert_subject(ca)
    assert doctor.judge_ca("/b.crt", [ca], None, "", doctor.cert_subject(ca), "FIX").ok is True
    assert doctor.judge_ca("/b.crt", [ca], None, "", "", "FIX").ok is True
    assert doctor.judge_ca("/b.crt", [ca], None, "", "CN=someone else", "FIX").ok is False


def test_parse_challenge():
    c = doctor.parse_challenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io"')
    assert c == {"scheme": "bearer", "realm": "https://auth.docker.io/token", "service": "registry.docker.io"}
    assert doctor.parse_challenge("") == {"scheme": ""}


@pytest.mark.parametrize("image,expected", [
    ("library/hello-world:latest", ("library/hello-world", "latest")),
    ("hello-world", ("library/hello-world", "latest")),
    ("postgres:12.2", ("library/postgres", "12.2")),
    ("docker.io/bitnami/redis:7.2", ("bitnami/redis", "7.2")),
    ("alpine@sha256:" + "a" * 64, ("library/alpine", "sha256:" + "a" * 64)),
])
def test_pull_target_is_what_docker_pull_asks_for(image, expected):
    assert doctor.pull_target(image) == expected


def test_pull_target_rejects_other_registries_and_bad_names():
    for bad in ("Upper/case:1", "library/:x", "quay.io/coreos/etcd:v3"):
        with pytest.raises(ValueError):
            doctor.pull_target(bad)


def test_answered_by_and_outcome():
    own = {"content-type": "application/vnd.oci.image.index.v1+json", "docker-content-digest": "sha256:ab",
           "content-length": "500", "docker-distribution-api-version": "registry/2.0"}
    assert doctor.answered_by(own) == "hubcache"
    ok, what = doctor.hub_outcome(200, own)
    assert ok and "sha256:ab" in what and "a hit" in what
    upstream = dict(own, date="Mon, 01 Jan 2026 00:00:00 GMT")
    assert doctor.answered_by(upstream) == "upstream"
    ok, what = doctor.hub_outcome(200, upstream)
    assert ok and "a miss" in what
    assert doctor.answered_by({"ratelimit-remaining": "76;w=21600"}) == "upstream"
    ok, what = doctor.hub_outcome(404, own, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"x is not in '
                                            b'hubcache\'s store and upstream is unreachable"}]}')
    assert not ok and what.startswith("404: x is not in hubcache's store")


def test_exit_code_counts_only_checks_that_ran():
    assert doctor.exit_code([Check("a", True, ""), Check("b", None, "")]) == 0
    assert doctor.exit_code([Check("a", True, ""), Check("b", False, "", "fix it")]) == 1
    assert Check("b", False, "broken", "fix it").line() == "FAIL b: broken -- fix: fix it"
    assert Check("b", None, "unknown", "unused").line() == "SKIP b: unknown"


def _self_signed_pem() -> str:
    """A CA certificate named like hubcache's (mitmproxy's) own."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mitmproxy"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mitmproxy")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_the_egress_proxys_login_comes_from_a_file_and_is_never_shown(tmp_path):
    from hubcache.tools.doctor.egresschecks import egress_proxy

    f = tmp_path / "login"
    f.write_text("runner:s3cret\n")
    proxy = egress_proxy("http://proxy.corp:3128", str(f))
    assert (proxy.host, proxy.port, proxy.user, proxy.password) == ("proxy.corp", 3128, "runner", "s3cret")
    assert "s3cret" not in proxy.show()
    f.write_text("nothing\n")
    with pytest.raises(ValueError, match="one line user:password"):
        egress_proxy("http://proxy.corp:3128", str(f))
