"""`hubcache doctor` on a runner host, against a started hubcache and the Docker-Hub-like upstream.

The doctor runs as a subprocess inside the test's namespaces, with hubcache's CA trusted through
a system bundle of the test's own bind-mounted over /etc/ssl/certs/ca-certificates.crt (as
`update-ca-certificates` would have it; only in the test's private mount namespace), and checks
a dockerd started by the test (its environment carries HTTPS_PROXY, as the systemd drop-in of
docs/runner-guide.md gives it).
"""

from __future__ import annotations

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
        assert len(lines) == 5 and all(x.startswith("OK   ") for x in lines), "\n".join(lines)
        assert line(lines, "proxy reachable").endswith(f"CONNECT registry-1.docker.io:443 through {hub.url} (--proxy)")
        assert "issued by O=mitmproxy,CN=mitmproxy, trusted by the system store" in line(lines, "intercepts Docker Hub")
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
                          "O=mitmproxy,CN=mitmproxy is not trusted here"), tls
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
    assert "not by hubcache's CA (O=mitmproxy,CN=mitmproxy): hubcache tunnels ghcr.io untouched" in pull, pull
    assert pull.endswith("-- fix: add it to hubcache's registries: --set hubcache_registries=+ghcr.io"), pull
