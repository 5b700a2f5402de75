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
    ("library/hello-world:latest", ("docker.io", "library/hello-world", "latest", "registry-1.docker.io", 443)),
    ("hello-world", ("docker.io", "library/hello-world", "latest", "registry-1.docker.io", 443)),
    ("postgres:12.2", ("docker.io", "library/postgres", "12.2", "registry-1.docker.io", 443)),
    ("docker.io/bitnami/redis:7.2", ("docker.io", "bitnami/redis", "7.2", "registry-1.docker.io", 443)),
    ("alpine@sha256:" + "a" * 64, ("docker.io", "library/alpine", "sha256:" + "a" * 64, "registry-1.docker.io", 443)),
    ("ghcr.io/org/app:v1", ("ghcr.io", "org/app", "v1", "ghcr.io", 443)),
    ("ghcr.io:443/org/app", ("ghcr.io", "org/app", "latest", "ghcr.io", 443)),
    ("quay.io/coreos/etcd:v3", ("quay.io", "coreos/etcd", "v3", "quay.io", 443)),
    ("registry.corp.example:5000/team/app@sha256:" + "b" * 64,
     ("registry.corp.example:5000", "team/app", "sha256:" + "b" * 64, "registry.corp.example", 5000)),
])
def test_pull_target_is_what_docker_pull_asks_for_on_any_registry(image, expected):
    t = doctor.pull_target(image)
    assert (t.registry, t.repository, t.reference, t.host, t.port) == expected
    assert t.netloc == (t.host if t.port == 443 else f"{t.host}:{t.port}")


def test_pull_target_names_the_image_as_docker_pull_does():
    assert doctor.pull_target("postgres").image == "docker.io/library/postgres:latest"
    assert doctor.pull_target("ghcr.io/org/app@sha256:" + "c" * 64).image == "ghcr.io/org/app@sha256:" + "c" * 64
    assert doctor.pull_target("registry.corp.example:5000/team/app:1").image == "registry.corp.example:5000/team/app:1"


def test_pull_target_rejects_bad_names():
    for bad in ("Upper/case:1", "library/:x", "ghcr.io/Org/app:1", "ghcr.io/org/app:bad tag", "quay.io/a@sha256:zz"):
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


def _fake_registry(monkeypatch, answers):
    """proxychecks' network replaced by `answers`: (method, url) -> (status, headers, body); the
    requests made are returned, with their headers."""
    from hubcache.tools.doctor import proxychecks

    asked = []

    def https_request(proxy, ctx, method, url, headers):
        asked.append((method, url, dict(headers)))
        return answers[(method, url.split("?")[0])]

    monkeypatch.setattr(proxychecks, "https_request", https_request)
    return asked


def test_the_test_pull_of_a_ghcr_image_takes_its_token_from_the_realm_ghcr_names_not_docker_hubs(monkeypatch):
    from hubcache.tools.doctor.proxychecks import check_pull

    own = {"docker-content-digest": "sha256:ab"}  # no Date: hubcache's own answer
    asked = _fake_registry(monkeypatch, {
        ("GET", "https://ghcr.io/v2/"): (401, {"www-authenticate": 'Bearer realm="https://ghcr.io/token",service="ghcr.io"'}, b""),
        ("GET", "https://ghcr.io/token"): (200, {}, b'{"token": "t0k"}'),
        ("HEAD", "https://ghcr.io/v2/org/app/manifests/v1"): (200, own, b""),
    })
    c = check_pull(doctor.parse_proxy("http://127.0.0.1:3128"), "ghcr.io/org/app:v1")
    assert c.ok, c.line()
    assert c.detail.startswith("ghcr.io/org/app:v1: GET /v2/ 401 (hubcache), token 200 (hubcache), manifest HEAD 200")
    (_, v2, h1), (_, token, h2), (_, head, h3) = asked
    assert h1["Host"] == "ghcr.io" and h2["Host"] == "ghcr.io" and h3["Authorization"] == "Bearer t0k"
    assert token == "https://ghcr.io/token?service=ghcr.io&scope=repository%3Aorg%2Fapp%3Apull"
    assert not any("docker.io" in url for _, url, _ in asked)


def test_the_test_pull_of_a_basic_auth_registry_on_its_own_port_asks_for_no_token_and_says_it_wants_a_login(monkeypatch):
    from hubcache.tools.doctor.proxychecks import check_pull

    base = "https://registry.corp.example:5000"
    upstream = {"date": "Mon, 01 Jan 2026 00:00:00 GMT"}
    asked = _fake_registry(monkeypatch, {
        ("GET", f"{base}/v2/"): (401, {"www-authenticate": 'Basic realm="corp"'}, b""),
        ("HEAD", f"{base}/v2/team/app/manifests/1"): (401, upstream, b""),
        ("GET", f"{base}/v2/team/app/manifests/1"): (401, upstream, b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'),
    })
    c = check_pull(doctor.parse_proxy("http://127.0.0.1:3128"), "registry.corp.example:5000/team/app:1")
    assert c.ok is False
    assert c.detail == ("registry.corp.example:5000/team/app:1: GET /v2/ 401 (hubcache), Basic login asked for, none sent, "
                        "manifest HEAD 401, manifest GET 401: authentication required")
    assert "registry.corp.example:5000 wants a login" in c.fix and "docker login registry.corp.example:5000" in c.fix
    assert [h["Host"] for _, _, h in asked] == ["registry.corp.example:5000"] * 3
    assert not any("authorization" in (k.lower() for k in h) for _, _, h in asked)
