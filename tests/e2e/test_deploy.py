"""deploy/ exercised with real parts: the parent's filesystem config as shipped runs on Debian's
docker-registry (distribution 2.8) in proxy mode in front of the fake Docker Hub, with its TLS, its
own login, its own Hub account from the environment, its JSON log, debug listener and drain switch;
a skopeo pull through it is byte-identical to a direct pull. Only addresses and file paths are
replaced, and the keys 2.8 does not have are removed (harness.deployfiles.V3_ONLY, also listed in
deploy/README.md). Beside it: `docker-compose config` on deploy/compose.yml, `systemd-analyze
verify` on deploy/hubcache-central.service, and the package built from what the Dockerfile copies."""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from harness.certs import make_pki
from harness.clients import dir_files, make_cert_dir, skopeo_copy
from harness.deployfiles import (
    CENTRAL_UNIT,
    COMPOSE,
    DEPLOY,
    DOCKERFILE,
    PARENT_FS,
    ROOT,
    for_distribution_28,
    load_yaml,
)
from harness.proxy import _die_with_parent, free_port, terminate

pytestmark = pytest.mark.e2e
_seeds = itertools.count(99500)
HUB_ACCOUNT = ("deploybot", "deploy-hub-secret-1")  # the parent's own Docker Hub account
LOGIN = ("fleet", "parent-login-secret-2")  # the parent's own login (hubcache_parent_credentials)
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
# Go's HTTP server writes its own errors (a client that hung up during the TLS handshake) with
# Go's plain logger, not distribution's JSON one, in 2.8 and v3.x alike: deploy/README.md says so.
GO_HTTP_ERROR = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d http: ")


class DeployedParent:
    """docker-registry 2.8 on deploy/parent/config-filesystem.yml (for_distribution_28), started and
    stopped by its PID."""

    def __init__(self, workdir: Path, upstream) -> None:
        import bcrypt  # mitmproxy's dependency, so in the venv

        self.dir = workdir
        self.port, self.debug_port = free_port(), free_port()
        self.pki = make_pki(workdir / "tls", ["mirror.internal"], ["127.0.0.1"])
        self.storage = workdir / "storage"
        self.drain = workdir / "drain"
        htpasswd = workdir / "htpasswd"
        htpasswd.write_text(f"{LOGIN[0]}:{bcrypt.hashpw(LOGIN[1].encode(), bcrypt.gensalt(4)).decode()}\n")
        cfg = for_distribution_28(load_yaml(PARENT_FS), addr=f"127.0.0.1:{self.port}", debug_addr=f"127.0.0.1:{self.debug_port}",
                                  cert=self.pki.server_cert, key=self.pki.server_key, htpasswd=htpasswd,
                                  storage=self.storage, drain=self.drain)
        self.config = workdir / "config.yml"
        self.config.write_text(json.dumps(cfg))  # YAML is a superset of JSON
        self.log = workdir / "parent.log"
        # The Hub account as deploy/README.md says to give it: distribution's environment overrides.
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SSL_CERT_FILE": str(upstream.ca_cert),
                    "REGISTRY_PROXY_USERNAME": HUB_ACCOUNT[0], "REGISTRY_PROXY_PASSWORD": HUB_ACCOUNT[1]}
        self.proc: subprocess.Popen | None = None

    def start(self) -> DeployedParent:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(["docker-registry", "serve", str(self.config)], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, env=self.env, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the parent exited: {self.log.read_text()[-2000:]}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("the parent did not listen within 20 s")

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)
        self.proc = None

    def request(self, method: str, path: str, login: tuple[str, str] | None = LOGIN,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        tls = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=tls, timeout=30)
        headers = dict(headers or {})
        if login:
            headers["Authorization"] = "Basic " + base64.b64encode(":".join(login).encode()).decode()
        try:
            conn.request(method, path, headers=headers)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def debug(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.debug_port, timeout=10)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def parent(upstream, tmp_path_factory):
    upstream.add_account(*HUB_ACCOUNT)
    p = DeployedParent(tmp_path_factory.mktemp("deployed-parent"), upstream).start()
    try:
        yield p
    finally:
        p.stop()


def _pull(parent: DeployedParent, ref: str, dest: Path, cert_dir: Path, login: tuple[str, str] | None = LOGIN):
    return skopeo_copy(f"127.0.0.1:{parent.port}/{ref}", dest, proxy=None, cert_dir=cert_dir,
                       creds=":".join(login) if login else None)


def test_the_shipped_config_pulls_through_byte_identical_on_its_own_hub_account(upstream, certs, parent, tmp_path):
    img = upstream.push_image("library/deployed", "1", [(700_000, next(_seeds)), (90_000, next(_seeds))])
    direct = skopeo_copy("docker.io/library/deployed:1", tmp_path / "direct", proxy=None, cert_dir=certs)
    assert direct.returncode == 0, direct.stderr
    parent_ca = make_cert_dir(tmp_path / "parent-ca", parent.pki.ca_cert)
    before = upstream.pulls_by_account().get(HUB_ACCOUNT[0], 0)
    via = _pull(parent, "library/deployed:1", tmp_path / "via", parent_ca)
    assert via.returncode == 0, via.stderr
    assert dir_files(tmp_path / "via") == dir_files(tmp_path / "direct")
    # the Hub account came from REGISTRY_PROXY_USERNAME/PASSWORD: its pull is counted, nobody else's
    assert upstream.pulls_by_account().get(HUB_ACCOUNT[0], 0) == before + 1
    for d in img.layer_digests:  # stored where storage.filesystem.rootdirectory says
        algo, hexd = d.split(":", 1)
        assert (parent.storage / "docker/registry/v2/blobs" / algo / hexd[:2] / hexd / "data").is_file()
    mark = upstream.mark()
    again = _pull(parent, f"library/deployed@{img.manifest_digest}", tmp_path / "again", parent_ca)
    assert again.returncode == 0, again.stderr
    assert dir_files(tmp_path / "again") == dir_files(tmp_path / "direct")
    assert not [r for r in upstream.requests_since(mark) if "/blobs/" in r.path]  # from its storage


def test_the_parent_wants_its_login_and_its_ca(upstream, certs, parent, tmp_path):
    upstream.push_image("library/deployedauth", "1", [(50_000, next(_seeds))])
    parent_ca = make_cert_dir(tmp_path / "parent-ca", parent.pki.ca_cert)
    anonymous = _pull(parent, "library/deployedauth:1", tmp_path / "anon", parent_ca, login=None)
    assert anonymous.returncode != 0
    assert re.search(r"unauthorized|authentication required", anonymous.stderr, re.I), anonymous.stderr
    wrong = _pull(parent, "library/deployedauth:1", tmp_path / "wrong", parent_ca, login=(LOGIN[0], "not-it"))
    assert wrong.returncode != 0
    assert re.search(r"unauthorized|authentication required", wrong.stderr, re.I), wrong.stderr
    status, headers, _ = parent.request("GET", "/v2/", login=None)
    assert status == 401 and headers["www-authenticate"] == 'Basic realm="hubcache-parent"'
    # Docker Hub's CA (certs) is not the parent's: TLS fails before any login is sent
    untrusted = _pull(parent, "library/deployedauth:1", tmp_path / "untrusted", certs)
    assert untrusted.returncode != 0
    assert "x509" in untrusted.stderr or "certificate" in untrusted.stderr, untrusted.stderr


def test_clients_cannot_delete_from_the_parent(upstream, parent, tmp_path):
    """delete.enabled is on for the proxy's own expiry; a client's DELETE is still refused."""
    img = upstream.push_image("library/deployeddel", "1", [(40_000, next(_seeds))])
    status, _, _ = parent.request("GET", "/v2/library/deployeddel/manifests/1", headers={"Accept": OCI_MANIFEST})
    assert status == 200
    for path in (f"/v2/library/deployeddel/manifests/{img.manifest_digest}", f"/v2/library/deployeddel/blobs/{img.layer_digests[0]}"):
        status, _, body = parent.request("DELETE", path)
        assert status == 405, (path, status, body)
        assert json.loads(body)["errors"][0]["code"] == "UNSUPPORTED"
    status, _, _ = parent.request("GET", f"/v2/library/deployeddel/blobs/{img.layer_digests[0]}")
    assert status == 200


def test_its_log_is_json_lines_without_secrets_and_the_debug_listener_serves_health_and_metrics(parent):
    status, _, _ = parent.request("GET", "/v2/")
    assert status == 200
    assert parent.debug("/debug/health") == (200, b"{}")
    status, metrics = parent.debug("/metrics")
    assert status == 200 and b"registry_" in metrics
    text = parent.log.read_text()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert lines
    for ln in lines:  # accesslog disabled: nothing but JSON objects, and Go's own HTTP errors
        assert GO_HTTP_ERROR.match(ln) or isinstance(json.loads(ln), dict), ln
    assert any(json.loads(ln).get("service") == "hubcache-parent" for ln in lines)  # log.fields
    for secret in (HUB_ACCOUNT[1], LOGIN[1]):
        assert secret not in text


def test_the_drain_file_takes_the_parent_out_of_service_and_back(parent):
    parent.drain.touch()
    try:
        deadline = time.monotonic() + 20  # its check runs every 5 s
        while parent.request("GET", "/v2/")[0] != 503:
            assert time.monotonic() < deadline, "the parent kept serving with the drain file present"
            time.sleep(0.5)
        status, body = parent.debug("/debug/health")
        assert status == 503 and str(parent.drain).encode() in body
    finally:
        parent.drain.unlink()
    deadline = time.monotonic() + 20
    while parent.request("GET", "/v2/")[0] != 200:
        assert time.monotonic() < deadline, "the parent stayed out of service after the drain file went"
        time.sleep(0.5)


# ---------------------------------------------------------------- the other files, with their tools


def _compose_config(env: dict[str, str]) -> subprocess.CompletedProcess:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (scripts/test installs it)")
    base = {k: v for k, v in os.environ.items() if not k.startswith("PARENT_")}
    return subprocess.run(["docker-compose", "--project-directory", str(DEPLOY), "-f", str(COMPOSE), "config"],
                          env={**base, **env}, capture_output=True, text=True, timeout=60)


def test_compose_file_is_valid_for_docker_compose_and_refuses_a_parent_without_its_hub_account():
    ok = _compose_config({"PARENT_HUB_USER": "u", "PARENT_HUB_TOKEN": "t"})
    assert ok.returncode == 0, ok.stderr
    services = load_yaml_text(ok.stdout)["services"]
    assert services["parent"]["environment"]["REGISTRY_PROXY_PASSWORD"] == "t"
    missing = _compose_config({"PARENT_HUB_USER": "u"})
    assert missing.returncode != 0 and "PARENT_HUB_TOKEN" in missing.stderr


def load_yaml_text(text: str):
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True).load(text)


def test_central_unit_passes_systemd_analyze_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (package systemd)")
    text = CENTRAL_UNIT.read_text()
    assert "ExecStart=/opt/hubcache/venv/bin/hubcache run" in text  # where scripts/install-service puts it
    # verify wants the command to exist: this checkout's hubcache stands in for the installed one
    unit = tmp_path / CENTRAL_UNIT.name
    unit.write_text(text.replace("/opt/hubcache/venv/bin/hubcache", str(ROOT / ".venv/bin/hubcache")))
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout == "" and res.stderr == "", res.stdout + res.stderr


def test_the_files_the_dockerfile_copies_build_the_hubcache_package(tmp_path):
    """`pip install /src` in the image gets only what the Dockerfile COPYs: that must be a whole
    package with the `hubcache` command (built here as a wheel, from a copy of just those files)."""
    copies = re.findall(r"^COPY\s+(.+?)\s+(\S+)$", DOCKERFILE.read_text(), re.M)
    assert copies
    src = tmp_path / "src"
    src.mkdir()
    for sources, dest in copies:
        assert dest.startswith("/src/"), dest
        for s in sources.split():
            target = src / dest[len("/src/"):]
            if (ROOT / s).is_dir():
                shutil.copytree(ROOT / s, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(ROOT / s, target)
    res = subprocess.run([str(ROOT / ".venv/bin/pip"), "wheel", "-q", "--no-deps", "--disable-pip-version-check",
                          "-w", str(tmp_path / "out"), str(src)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    (wheel,) = (tmp_path / "out").glob("hubcache-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    modules = {str(p.relative_to(ROOT / "addon")) for p in (ROOT / "addon/hubcache").rglob("*.py")}
    assert modules <= names
    assert "hubcache = hubcache.tools.cli:main" in entry
