"""`hubcache doctor` on a runner host, against a started hubcache and the Docker-Hub-like upstream.

The doctor runs as a subprocess inside the test's namespaces, with hubcache's CA trusted through
a system bundle of the test's own bind-mounted over /etc/ssl/certs/ca-certificates.crt (as
`update-ca-certificates` would have it; only in the test's private mount namespace), and checks
a dockerd started by the test (its environment carries HTTPS_PROXY, as the systemd drop-in of
docs/runner-guide.md gives it).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.engines import Docker, _SystemBundle, missing_engine
from harness.proxy import free_port

pytestmark = pytest.mark.e2e
HUBCACHE = str(Path(sys.executable).parent / "hubcache")
_seeds = itertools.count(9100)
CA_SUBJECT = "O=hubcache,CN=hubcache CA (registries only)"  # the name hubcache gives its CA (tools/ca.py)


def doctor(*args: str) -> tuple[int, list[str]]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    res = subprocess.run([HUBCACHE, "doctor", *args], capture_output=True, text=True, env=env, timeout=120)
    assert not res.stderr.strip(), res.stderr
    return res.returncode, res.stdout.splitlines()


def line(lines: list[str], name: str) -> str:
    found = [x for x in lines if x.split(":", 1)[0][5:] == name]
    assert len(found) == 1, f"no single {name!r} line in:\n" + "\n".join(lines)
    return found[0]


@pytest.fixture
def bundle(confdir, tmp_path):
    b = _SystemBundle(tmp_path / "ca-certificates.crt", confdir / "mitmproxy-ca-cert.pem")
    b.mount()
    yield b
    b.umount()


def test_doctor_all_ok_miss_then_hit_after_a_docker_pull(upstream, start_hubcache, tmp_path):
    why = missing_engine("docker")
    if why:
        pytest.skip(why)
    upstream.push_image("library/doctorhello", "1", [(4096, next(_seeds))])
    hub = start_hubcache()
    # The Docker engine mounts the system bundle with hubcache's CA for dockerd; the doctor
    # sees the same bundle, in the same mount namespace.
    with Docker(tmp_path / "docker", proxy=hub.url, ca_cert=hub.ca_cert) as docker:
        args = ["--proxy", hub.url, "--ca", str(hub.ca_cert), "--image", "library/doctorhello:1",
                "--dockerd-pid", str(docker.proc.pid), "--daemon-json", str(docker.config_file)]
        rc, lines = doctor(*args)
        assert rc == 0, "\n".join(lines)
        assert len(lines) == 7 and all(x.startswith("OK   ") for x in lines), "\n".join(lines)
        assert "may vouch only for " in line(lines, "CA name constraints")  # --ca given: the CA itself is checked
        assert "every host hubcache intercepts" in line(lines, "CA covers the registries")
        assert line(lines, "proxy reachable").endswith(f"CONNECT registry-1.docker.io:443 through {hub.url} (--proxy)")
        assert f"issued by {CA_SUBJECT}, trusted by the system store" in line(lines, "intercepts Docker Hub")
        assert "is in /etc/ssl/certs/ca-certificates.crt" in line(lines, "CA in system store")
        assert line(lines, "dockerd proxy").endswith(
            f"HTTPS_PROXY in the environment of dockerd (pid {docker.proc.pid}) is {hub.url}")
        cold = line(lines, "test pull")
        assert "docker.io/library/doctorhello:1: GET /v2/ 401 (hubcache), token 200 (hubcache)" in cold
        assert "answered by upstream through hubcache" in cold, cold

        docker.pull("docker.io/library/doctorhello:1")  # what a CI job's `image:` does
        rc, lines = doctor(*args)
        assert rc == 0, "\n".join(lines)
        assert "answered by hubcache from its store" in line(lines, "test pull")
    assert "hit         HEAD manifest library/doctorhello 1" in hub.log()


def test_doctor_names_the_fix_when_the_proxy_is_not_running(upstream, confdir, bundle):
    url = f"http://127.0.0.1:{free_port()}"
    rc, lines = doctor("--proxy", url, "--ca", str(confdir / "mitmproxy-ca-cert.pem"),
                       "--dockerd-pid", str(os.getpid()), "--daemon-json", "/nonexistent/daemon.json")
    assert rc == 1
    assert line(lines, "proxy reachable") == (
        f"FAIL proxy reachable: {url} (--proxy): Connection refused -- fix: start hubcache (`systemctl start "
        "hubcache`, log: `journalctl -u hubcache`) or point --proxy / HTTPS_PROXY at it; from another machine it "
        "must listen on 0.0.0.0 or its address")
    assert line(lines, "intercepts Docker Hub").startswith("SKIP ")
    assert line(lines, "CA in system store").startswith("OK   ")  # the bundle is there all the same
    # this pytest process stands in for a dockerd started without the drop-in
    assert line(lines, "dockerd proxy").startswith("FAIL dockerd proxy: no HTTPS_PROXY in the environment of dockerd")
    assert "docker.service.d/http-proxy.conf" in line(lines, "dockerd proxy")
    assert line(lines, "test pull").startswith("SKIP ")


def test_doctor_names_the_fix_when_the_ca_is_not_trusted(upstream, start_hubcache):
    hub = start_hubcache()
    rc, lines = doctor("--proxy", hub.url, "--ca", str(hub.ca_cert), "--dockerd-pid", str(os.getpid()),
                       "--daemon-json", "/nonexistent/daemon.json")
    assert rc == 1
    assert line(lines, "proxy reachable").startswith("OK   ")
    tls = line(lines, "intercepts Docker Hub")
    assert tls.startswith("FAIL intercepts Docker Hub: certificate for registry-1.docker.io issued by "
                          f"{CA_SUBJECT} is not trusted here"), tls
    assert "update-ca-certificates" in tls
    store = line(lines, "CA in system store")
    assert store.startswith(f"FAIL CA in system store: {hub.ca_cert} (sha256 ") and "is not in" in store
    assert f"cp {hub.ca_cert} /usr/local/share/ca-certificates/hubcache.crt" in store
    assert line(lines, "test pull").startswith("SKIP ")


def test_doctor_test_pull_of_an_image_docker_hub_does_not_have(upstream, start_hubcache, bundle):
    hub = start_hubcache()
    rc, lines = doctor("--proxy", hub.url, "--ca", str(hub.ca_cert), "--image", "library/doctornosuch:1",
                       "--dockerd-pid", str(os.getpid()), "--daemon-json", "/nonexistent/daemon.json")
    assert rc == 1
    pull = line(lines, "test pull")
    assert pull.startswith("FAIL test pull: docker.io/library/doctornosuch:1: GET /v2/ 401 (hubcache), token 200 "
                           "(hubcache), manifest HEAD 404, manifest GET 404: "), pull
    assert pull.endswith("-- fix: the image does not exist on Docker Hub: pass --image of one that does"), pull


def test_doctor_test_pull_of_a_ghcr_image_asks_the_realm_ghcr_names_and_nothing_of_docker_hub(
        upstream, start_hubcache, bundle, certs, tmp_path):
    from harness.clients import skopeo_copy
    from harness.hubenv import GHCR_HOST
    from harness.registries import BY_NAME

    img = upstream.push_image("team/doctorghcr", "1", [(4096, next(_seeds))], registry=GHCR_HOST)
    ref = f"{GHCR_HOST}/team/doctorghcr:1"
    hub = start_hubcache("hubcache_log_format=json")
    args = ("--proxy", hub.url, "--ca", str(hub.ca_cert), "--image", ref,
            "--dockerd-pid", str(os.getpid()), "--daemon-json", "/nonexistent/daemon.json")
    mark = upstream.mark()
    _, lines = doctor(*args)
    cold = line(lines, "test pull")
    # /v2/ answered by hubcache with ghcr's challenge (which it asked ghcr for), the token asked at the
    # realm that challenge names (ghcr.io/token, answered by hubcache), the HEAD a miss
    assert cold.startswith(f"OK   test pull: {ref}: GET /v2/ 401 (hubcache), token 200 (hubcache), manifest HEAD 200 "
                           f"{img.manifest_digest}, answered by upstream through hubcache"), cold
    reqs = upstream.requests_since(mark)
    assert reqs and {r.host for r in reqs} == {BY_NAME[GHCR_HOST].name}, reqs  # auth.docker.io never asked
    seen = [json.loads(x) for x in hub.log().splitlines() if x.startswith("{")]
    asked = [(e["kind"], e["registry"]) for e in seen if e.get("event") == "request"]
    assert asked == [("root", GHCR_HOST), ("token", GHCR_HOST), ("manifest", GHCR_HOST)], asked  # the realm on ghcr.io

    pulled = skopeo_copy(ref, tmp_path / "pulled", proxy=hub.url, cert_dir=certs)
    assert pulled.returncode == 0, pulled.stderr
    mark = upstream.mark()
    _, lines = doctor(*args)
    warm = line(lines, "test pull")
    assert warm.startswith(f"OK   test pull: {ref}: GET /v2/ 401 (hubcache), token 200 (hubcache), manifest HEAD 200 "
                           f"{img.manifest_digest}, answered by hubcache from its store"), warm
    assert upstream.requests_since(mark) == []


def test_doctor_says_when_hubcache_does_not_cache_the_images_registry(upstream, start_hubcache, bundle):
    from harness.hubenv import GHCR_HOST

    hub = start_hubcache("hubcache_registries=-ghcr.io")
    _, lines = doctor("--proxy", hub.url, "--ca", str(hub.ca_cert), "--image", f"{GHCR_HOST}/team/any:1",
                      "--dockerd-pid", str(os.getpid()), "--daemon-json", "/nonexistent/daemon.json")
    pull = line(lines, "test pull")
    assert pull.startswith(f"FAIL test pull: {GHCR_HOST}/team/any:1: the certificate for ghcr.io is issued by "), pull
    assert f"not by hubcache's CA ({CA_SUBJECT}): hubcache tunnels ghcr.io untouched" in pull, pull
    assert pull.endswith("-- fix: add it to hubcache's registries: --set hubcache_registries=+ghcr.io"), pull


# ------------------------------------------------------------------ the parent registry (--parent)

PARENT_ACCOUNT = ("doctorparentbot", "doctor-parent-hub-pw")  # the parent's account at the fake Hub
PARENT_LOGIN = ("doctorparentuser", "s3cret-of-the-parent-7Qx")  # the parent's own login (htpasswd)


def _secrets() -> list[str]:
    import base64

    return [PARENT_LOGIN[1], "wrong-s3cret-9Zk", PARENT_ACCOUNT[1],
            base64.b64encode(f"{PARENT_LOGIN[0]}:{PARENT_LOGIN[1]}".encode()).decode()]


@pytest.fixture
def parent(upstream, tmp_path):
    from harness.parent import Parent

    upstream.add_account(*PARENT_ACCOUNT)
    with Parent(tmp_path / "parent", upstream, PARENT_ACCOUNT, tls=True, login=PARENT_LOGIN) as p:
        yield p


def login_file(path: Path, login: str, mode: int = 0o600) -> Path:
    path.write_text(login + "\n")
    path.chmod(mode)
    return path


@contextlib.contextmanager
def stand_in_dockerd(hub):
    """A stand-in for dockerd (a process whose environment has HTTPS_PROXY, as the drop-in gives
    dockerd's), so that every check but the parent's passes and the exit code is the parent
    checks'. Yields the doctor's arguments without --parent*."""
    dockerd = subprocess.Popen(["sleep", "300"], env={"PATH": os.environ["PATH"], "HTTPS_PROXY": hub.url})
    try:
        yield ["--proxy", hub.url, "--ca", str(hub.ca_cert), "--dockerd-pid", str(dockerd.pid),
               "--daemon-json", "/nonexistent/daemon.json"]
    finally:
        dockerd.kill()
        dockerd.wait()


@pytest.fixture
def parent_host(start_hubcache, parent, bundle, tmp_path):
    """hubcache with the parent (its CA, its login in tmp_path/parent-login), and the doctor's arguments."""
    good = login_file(tmp_path / "parent-login", ":".join(PARENT_LOGIN))
    hub = start_hubcache(f"hubcache_parent={parent.url}", f"hubcache_parent_ca={parent.ca_cert}",
                         f"hubcache_parent_credentials={good}")
    with stand_in_dockerd(hub) as args:
        yield hub, args


def no_secret(lines: list[str]) -> None:
    text = "\n".join(lines)
    assert not [s for s in _secrets() if s in text], text


def test_doctor_checks_the_parent_its_ca_its_login_and_an_image_through_it(upstream, parent, parent_host, tmp_path):
    hub, args = parent_host
    img = upstream.push_image("library/doctorparent", "1", [(4096, next(_seeds))])
    good = tmp_path / "parent-login"
    mark = parent.mark()
    rc, lines = doctor(*args, "--image", "library/doctorparent:1", "--parent", parent.url,
                       "--parent-ca", str(parent.ca_cert), "--parent-credentials", str(good))
    assert rc == 0, "\n".join(lines)
    assert all(x.startswith("OK   ") for x in lines) and len(lines) == 10, "\n".join(lines)  # 2: the CA's own
    where = "https://mirror.internal (docker.io's parent)"
    assert line(lines, "parent reachable") == (
        f"OK   parent reachable: {where}: mirror.internal resolves to 127.0.0.20; port 443: TLS, certificate "
        f"verified by the usual trust and --parent-ca {parent.ca_cert}")
    assert line(lines, "parent login") == f"OK   parent login: {where}: GET /v2/ 401 (Basic), 200 with the login in {good}"
    assert line(lines, "parent pull") == (
        f"OK   parent pull: {where}: HEAD docker.io/library/doctorparent:1 200 {img.manifest_digest} "
        "(the parent has it, or reaches docker.io for it)")
    no_secret(lines)
    asked = [(r.method, r.path, r.status) for r in parent.requests_since(mark)]
    # the parent's own answers: the challenge, the login taken, the tag's HEAD with it
    assert ("GET", "/v2/", 401) in asked and ("GET", "/v2/", 200) in asked, asked
    assert ("HEAD", "/v2/library/doctorparent/manifests/1", 200) in asked, asked


def test_doctor_without_the_parents_ca_names_hubcache_parent_ca(upstream, parent, parent_host, tmp_path):
    _, args = parent_host
    upstream.push_image("library/doctorparentnoca", "1", [(4096, next(_seeds))])
    mark = parent.mark()
    rc, lines = doctor(*args, "--parent", parent.url, "--parent-credentials", str(tmp_path / "parent-login"),
                       "--image", "library/doctorparentnoca:1")
    assert rc == 1
    assert [x for x in lines if not x.startswith("OK   ")] == [
        line(lines, "parent reachable"), line(lines, "parent login"), line(lines, "parent pull")], "\n".join(lines)
    reach = line(lines, "parent reachable")
    assert reach.startswith("FAIL parent reachable: https://mirror.internal (docker.io's parent): TLS with "
                            "mirror.internal:443: its certificate is not trusted by the usual trust (no --parent-ca "
                            "given) ("), reach
    assert reach.endswith("-- fix: give hubcache_parent_ca the parent's CA, the one that signed its certificate "
                          "(and this check --parent-ca FILE)"), reach
    assert line(lines, "parent login").startswith("SKIP ") and line(lines, "parent pull").startswith("SKIP ")
    assert parent.requests_since(mark) == []  # the handshake failed: no request reached it
    no_secret(lines)


def test_doctor_says_the_parent_refused_a_wrong_login_and_never_shows_it(upstream, parent, parent_host, tmp_path):
    _, args = parent_host
    upstream.push_image("library/doctorparentwrong", "1", [(4096, next(_seeds))])
    wrong = login_file(tmp_path / "wrong-login", f"{PARENT_LOGIN[0]}:wrong-s3cret-9Zk")
    rc, lines = doctor(*args, "--parent", parent.url, "--parent-ca", str(parent.ca_cert),
                       "--parent-credentials", str(wrong), "--image", "library/doctorparentwrong:1")
    assert rc == 1
    assert line(lines, "parent reachable").startswith("OK   ")
    assert line(lines, "parent login") == (
        f"FAIL parent login: https://mirror.internal (docker.io's parent): GET /v2/ 401 (Basic); the parent refused "
        f"the login in {wrong} (401 with it) -- fix: put the parent's own login (its htpasswd user or token account, "
        f"never a registry's) in {wrong}, one line user:password")
    assert line(lines, "parent pull").startswith("SKIP ")
    no_secret(lines)
    # A login file others can read is refused, as hubcache refuses it at start, its content unread
    login_file(wrong, ":".join(PARENT_LOGIN), 0o644)
    rc, lines = doctor(*args, "--parent", parent.url, "--parent-ca", str(parent.ca_cert), "--parent-credentials", str(wrong))
    assert rc == 1
    login = line(lines, "parent login")
    assert login.startswith(f"FAIL parent login: https://mirror.internal (docker.io's parent): parent login file {wrong} "
                            "has mode 0644: others can read it"), login
    assert login.endswith(f"-- fix: chmod 600 {wrong}"), login
    no_secret(lines)


def test_doctor_with_the_parent_stopped_says_start_it(upstream, parent, parent_host, tmp_path):
    _, args = parent_host
    upstream.push_image("library/doctorparentstopped", "1", [(4096, next(_seeds))])
    parent.stop()
    rc, lines = doctor(*args, "--parent", parent.url, "--parent-ca", str(parent.ca_cert),
                       "--parent-credentials", str(tmp_path / "parent-login"), "--image", "library/doctorparentstopped:1")
    assert rc == 1
    assert line(lines, "parent reachable") == (
        "FAIL parent reachable: https://mirror.internal (docker.io's parent): mirror.internal resolves to 127.0.0.20; "
        "port 443: Connection refused -- fix: start the parent registry, or let this host reach mirror.internal:443 "
        "(hubcache connects to its parent directly, never through an egress proxy)")
    assert line(lines, "parent login").startswith("SKIP ") and line(lines, "parent pull").startswith("SKIP ")
    assert [x for x in lines if x.startswith("FAIL")] == [line(lines, "parent reachable")], "\n".join(lines)
    no_secret(lines)


def test_doctor_says_when_the_parent_cannot_reach_its_upstream(upstream, parent, start_hubcache, bundle, certs,
                                                              tmp_path):
    from harness.clients import pull_ok

    upstream.push_image("library/doctorparentcut", "1", [(4096, next(_seeds))])
    hub = start_hubcache()  # a host that pulled the image itself, before it had a parent
    pull_ok("docker.io/library/doctorparentcut:1", tmp_path / "pulled", hub, certs)
    login = login_file(tmp_path / "parent-login", ":".join(PARENT_LOGIN))
    with upstream.down("docker.io"), stand_in_dockerd(hub) as args:  # the parent's upstream is gone
        rc, lines = doctor(*args, "--parent", parent.url, "--parent-ca", str(parent.ca_cert),
                           "--parent-credentials", str(login), "--image", "library/doctorparentcut:1")
    assert rc == 1
    assert "answered by hubcache from its store" in line(lines, "test pull")
    assert [x for x in lines if not x.startswith("OK   ")] == [line(lines, "parent pull")], "\n".join(lines)
    # distribution 2.8 answers a tag it cannot get from its upstream with 404; the test pull
    # through hubcache found it: so the parent's way to its upstream is the fault
    assert line(lines, "parent pull") == (
        "FAIL parent pull: https://mirror.internal (docker.io's parent): HEAD docker.io/library/doctorparentcut:1 404, "
        "though the test pull above found it on docker.io -- fix: the parent cannot reach its upstream: check its own "
        "log (its proxy.remoteurl, its login there, its route out); and hubcache_parent_prefix (--parent-prefix) if it "
        "names its repositories so")
    no_secret(lines)
