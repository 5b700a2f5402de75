"""deploy/ exercised with real parts: the parent's filesystem config as shipped runs on Debian's
docker-registry (distribution 2.8) in proxy mode in front of the fake Docker Hub, with its TLS, its
own login, its own Hub account from the environment, its JSON log, debug listener, drain switch and
compose.yml's health check of it; a skopeo pull through it is byte-identical to a direct pull. The
S3 config as shipped runs the same way on moto's S3 server (over TLS, keys from the AWS SDK's
environment variables), storing in the bucket and streaming blobs itself. hubcache runs with the
command line of the central systemd unit (proxy login from a bcrypt htpasswd file) and of
compose.yml (the Dockerfile's ENTRYPOINT and the service's command), against that parent, with its
login from a 0600 file. Only addresses, ports, file paths and the bucket are replaced, and the keys
2.8 does not have are removed (harness.deployfiles.V3_ONLY, also listed in deploy/README.md).
Beside it: `docker-compose config` on deploy/compose.yml, `systemd-analyze verify` on
deploy/hubcache-central.service, and the package built from what the Dockerfile copies."""

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
import urllib.request
import zipfile
from pathlib import Path

import pytest

from harness import reqlog
from harness.certs import make_pki
from harness.clients import dir_files, make_cert_dir, skopeo_copy
from harness.deployfiles import (
    CENTRAL_UNIT,
    COMPOSE,
    DEPLOY,
    DOCKERFILE,
    PARENT_FS,
    PARENT_S3,
    ROOT,
    S3Bucket,
    compose_healthcheck,
    compose_hubcache_command,
    for_distribution_28,
    load_yaml,
    substitute,
    unit_exec_start,
)
from harness.motos3 import MotoS3
from harness.proxy import BIN, Proxy, _die_with_parent, free_port, terminate

pytestmark = pytest.mark.e2e
_seeds = itertools.count(99500)
HUB_ACCOUNT = ("deploybot", "deploy-hub-secret-1")  # the parent's own Docker Hub account
LOGIN = ("fleet", "parent-login-secret-2")  # the parent's own login (hubcache_parent_credentials)
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
# Go's HTTP server writes its own errors (a client that hung up during the TLS handshake) with
# Go's plain logger, not distribution's JSON one, in 2.8 and v3.x alike: deploy/README.md says so.
GO_HTTP_ERROR = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d http: ")


class DeployedParent:
    """docker-registry 2.8 on a config of deploy/parent/ (for_distribution_28), on every address
    (as `:5000` in the file, on a port of the test's), started and stopped by its PID. `storage`
    is its filesystem root, or an S3Bucket for config-s3.yml; `env` adds to its environment."""

    def __init__(self, workdir: Path, upstream, config: Path = PARENT_FS, storage: Path | S3Bucket | None = None,
                 env: dict[str, str] | None = None, edit=None) -> None:
        import bcrypt  # mitmproxy's dependency, so in the venv

        self.dir = workdir
        self.port, self.debug_port = free_port(), free_port()
        self.pki = make_pki(workdir / "tls", ["mirror.internal"], ["127.0.0.1"], ca_cn="hubcache deploy test parent CA")
        self.storage = storage if storage is not None else workdir / "storage"
        self.drain = workdir / "drain"
        htpasswd = workdir / "htpasswd"
        htpasswd.write_text(f"{LOGIN[0]}:{bcrypt.hashpw(LOGIN[1].encode(), bcrypt.gensalt(4)).decode()}\n")
        cfg = for_distribution_28(load_yaml(config), addr=f":{self.port}", debug_addr=f"127.0.0.1:{self.debug_port}",
                                  cert=self.pki.server_cert, key=self.pki.server_key, htpasswd=htpasswd,
                                  storage=self.storage, drain=self.drain)
        if edit is not None:
            edit(cfg)
        self.config = workdir / "config.yml"
        self.config.write_text(json.dumps(cfg))  # YAML is a superset of JSON
        self.log = workdir / "parent.log"
        # The Hub account as deploy/README.md says to give it: distribution's environment overrides.
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SSL_CERT_FILE": str(upstream.ca_cert),
                    "REGISTRY_PROXY_USERNAME": HUB_ACCOUNT[0], "REGISTRY_PROXY_PASSWORD": HUB_ACCOUNT[1], **(env or {})}
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

    def mark(self) -> int:
        return len(self.log.read_text().splitlines())

    def responses(self, since: int = 0) -> list[dict]:
        """Its log's "response completed" lines (one a request: http.request.method, .uri,
        http.response.status, ...) after line `since` (mark())."""
        reqlog.settle([self.log], 0.1)
        out = []
        for line in self.log.read_text().splitlines()[since:]:
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("msg") == "response completed":
                    out.append(entry)
        return out

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
        assert (parent.storage / _blob_key(d)).is_file()
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
    # compose.yml's health check of the parent (wget of /debug/health), on the test's debug port
    healthcheck = substitute(compose_healthcheck("parent"), {
        "http://127.0.0.1:5001/debug/health": f"http://127.0.0.1:{parent.debug_port}/debug/health"})

    def healthy() -> bool:
        return subprocess.run(healthcheck, capture_output=True, timeout=30).returncode == 0

    assert healthy()
    parent.drain.touch()
    try:
        deadline = time.monotonic() + 20  # its check runs every 5 s
        while parent.request("GET", "/v2/")[0] != 503:
            assert time.monotonic() < deadline, "the parent kept serving with the drain file present"
            time.sleep(0.5)
        status, body = parent.debug("/debug/health")
        assert status == 503 and str(parent.drain).encode() in body
        assert not healthy()
    finally:
        parent.drain.unlink()
    deadline = time.monotonic() + 20
    while parent.request("GET", "/v2/")[0] != 200:
        assert time.monotonic() < deadline, "the parent stayed out of service after the drain file went"
        time.sleep(0.5)
    assert healthy()


# ---------------------------------------------------------------- config-s3.yml on moto's S3 server

S3_PREFIX = "hubcache-parent/"  # storage.s3.rootdirectory as shipped, without its leading slash


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    pytest.importorskip("moto", reason="config-s3.yml runs on moto[server] (the test extra)")
    with MotoS3(tmp_path_factory.mktemp("moto"), "deploy-parent") as s3:
        yield s3


@pytest.fixture
def s3_parent_of(upstream, s3, tmp_path):
    """config-s3.yml on 2.8 against the moto bucket: the S3 keys through the AWS SDK's environment
    variables (the file has none), the bucket's CA in SSL_CERT_FILE beside the fake Hub's (with
    AWS_CA_BUNDLE the 2.8 driver panics). `edit(cfg)` changes the config for a contrast run."""
    upstream.add_account(*HUB_ACCOUNT)
    started: list[DeployedParent] = []

    def start(edit=None) -> DeployedParent:
        workdir = tmp_path / f"s3-parent-{len(started)}"
        workdir.mkdir()
        bundle = workdir / "cas.pem"
        bundle.write_bytes(Path(upstream.ca_cert).read_bytes() + s3.ca_cert.read_bytes())
        env = {"SSL_CERT_FILE": str(bundle), "AWS_ACCESS_KEY_ID": s3.keys[0], "AWS_SECRET_ACCESS_KEY": s3.keys[1]}
        p = DeployedParent(workdir, upstream, PARENT_S3, S3Bucket(s3.bucket, s3.endpoint), env, edit)
        started.append(p)
        return p.start()

    yield start
    for p in started:
        p.stop()


def _blob_key(digest: str) -> str:
    algo, hexd = digest.split(":", 1)
    return f"docker/registry/v2/blobs/{algo}/{hexd[:2]}/{hexd}/data"


def _redirect_on(cfg: dict) -> None:
    cfg["storage"]["redirect"]["disable"] = False


@pytest.mark.parametrize("edit", [None, _redirect_on], ids=["as-shipped", "contrast-redirect-on"])
def test_the_s3_config_runs_on_a_bucket_and_the_parent_streams_blobs_itself(upstream, certs, s3, s3_parent_of, edit, tmp_path):
    parent = s3_parent_of(edit)
    name = f"library/deployeds3{'r' if edit else ''}"
    img = upstream.push_image(name, "1", [(2_500_000, next(_seeds)), (90_000, next(_seeds))])
    direct = skopeo_copy(f"docker.io/{name}:1", tmp_path / "direct", proxy=None, cert_dir=certs)
    assert direct.returncode == 0, direct.stderr
    # the parent's CA, and the bucket's: a client sent to the bucket by a 307 must trust it
    parent_ca = make_cert_dir(tmp_path / "parent-ca", parent.pki.ca_cert, s3.ca_cert)
    before = upstream.pulls_by_account().get(HUB_ACCOUNT[0], 0)
    via = _pull(parent, f"{name}:1", tmp_path / "via", parent_ca)
    assert via.returncode == 0, via.stderr + parent.log.read_text()[-2000:]
    assert dir_files(tmp_path / "via") == dir_files(tmp_path / "direct")
    assert upstream.pulls_by_account().get(HUB_ACCOUNT[0], 0) == before + 1
    # in the bucket, under storage.s3.rootdirectory (2.8 stores a missed blob in the background)
    blobs = [img.config_digest, *img.layer_digests]
    keys = {d: S3_PREFIX + _blob_key(d) for d in blobs}
    deadline = time.monotonic() + 20
    while set(keys.values()) - set(s3.objects()):
        assert time.monotonic() < deadline, (sorted(keys.values()), sorted(s3.objects()))
        time.sleep(0.1)
    for d, key in keys.items():
        assert s3.get(key) == (tmp_path / "direct" / d.split(":", 1)[1]).read_bytes()
    assert not [k for k in s3.objects() if not k.startswith(S3_PREFIX)]
    mark, hub_mark = parent.mark(), upstream.mark()
    again = _pull(parent, f"{name}@{img.manifest_digest}", tmp_path / "again", parent_ca)
    assert again.returncode == 0, again.stderr
    assert dir_files(tmp_path / "again") == dir_files(tmp_path / "direct")
    assert not [r for r in upstream.requests_since(hub_mark) if "/blobs/" in r.path]  # from the bucket
    gets = [r for r in parent.responses(mark) if r["http.request.method"] == "GET" and "/blobs/" in r["http.request.uri"]]
    assert len(gets) == len(blobs), gets
    if edit is None:  # redirect.disable: true as shipped: the parent streams every blob (200, no 307)
        assert {r["http.response.status"] for r in gets} == {200}
        assert sum(r["http.response.written"] for r in gets) == sum(len(s3.get(k) or b"") for k in keys.values())
    else:  # the contrast: with redirects on, each blob is a 307 to the bucket, which the client fetches itself
        assert {r["http.response.status"] for r in gets} == {307}


# ---------------------------------------------------------------- hubcache as the central unit and compose run it

RUNNER = ("runner", "runner-proxy-secret-3")  # a runner's proxy login (the central unit's htpasswd)


class FileHubcache(Proxy):
    """`hubcache run` with a command line read from a deploy/ file, started and stopped by PID."""

    def __init__(self, workdir: Path, upstream_ca: Path, confdir: Path, port: int, command: list[str]) -> None:
        super().__init__(workdir, upstream_ca, confdir=confdir)
        self.port = port
        self.file_command = command

    def command(self) -> list[str]:
        # The fake Hub's CA stands in for the system's CAs, which trust Docker Hub in production.
        return [*self.file_command, "--set", f"ssl_verify_upstream_trusted_ca={self.upstream_ca}"]


def _hubcache_as_shipped(kind: str, parent: DeployedParent, upstream, confdir: Path, workdir: Path) -> tuple[FileHubcache, int]:
    """hubcache run as `kind` ("central": deploy/hubcache-central.service, "compose": compose.yml
    with hubcache.Dockerfile's ENTRYPOINT) runs it, with the test's paths, ports and parent
    address; the parent's login in a 0600 file, the runners' (central) in a bcrypt htpasswd file.
    Returns it started, and its metrics port."""
    import bcrypt

    workdir.mkdir(parents=True)
    port, metrics = free_port(), free_port()
    login = workdir / "parent-login"
    login.write_text(":".join(LOGIN) + "\n")
    login.chmod(0o600)
    common = {
        "3128": str(port),
        "/var/lib/hubcache/store": str(workdir / "store"),
        "/var/lib/hubcache/confdir": str(confdir),
        "https://mirror.internal:5000": f"https://mirror.internal:{parent.port}",
        "/etc/hubcache/parent-ca.pem": str(parent.pki.ca_cert),
        "/etc/hubcache/parent-login": str(login),
    }
    if kind == "central":
        htpasswd = workdir / "htpasswd"
        htpasswd.write_text(f"{RUNNER[0]}:{bcrypt.hashpw(RUNNER[1].encode(), bcrypt.gensalt(5)).decode()}\n")
        htpasswd.chmod(0o600)
        command = substitute(unit_exec_start(CENTRAL_UNIT.read_text()), {
            **common, "/opt/hubcache/venv/bin/hubcache": str(BIN / "hubcache"), "@/etc/hubcache/htpasswd": f"@{htpasswd}",
            "127.0.0.1:9090": f"127.0.0.1:{metrics}"})
    else:
        command = substitute(compose_hubcache_command(), {
            **common, "hubcache": str(BIN / "hubcache"), "0.0.0.0:9090": f"0.0.0.0:{metrics}"})
    return FileHubcache(workdir, upstream.ca_cert, confdir, port, command).start(), metrics


@pytest.fixture
def file_hubcache(upstream, confdir, parent, tmp_path):
    started: list[FileHubcache] = []

    def start(kind: str) -> tuple[FileHubcache, int]:
        hub, metrics = _hubcache_as_shipped(kind, parent, upstream, confdir, tmp_path / kind)
        started.append(hub)
        return hub, metrics

    yield start
    for hub in started:
        hub.stop()


def _pull_goes_through_the_parent(upstream, parent: DeployedParent, hub: FileHubcache, proxy_url: str, metrics: int,
                                  certs: Path, tmp_path: Path, name: str) -> None:
    img = upstream.push_image(name, "1", [(1_500_000, next(_seeds)), (120_000, next(_seeds))])
    ref = f"docker.io/{name}:1"
    direct = skopeo_copy(ref, tmp_path / "direct", proxy=None, cert_dir=certs)
    assert direct.returncode == 0, direct.stderr
    before, pmark = upstream.pulls_by_account(), parent.mark()
    via = skopeo_copy(ref, tmp_path / "via", proxy=proxy_url, cert_dir=certs)
    assert via.returncode == 0, via.stderr + hub.log()[-3000:]
    assert dir_files(tmp_path / "via") == dir_files(tmp_path / "direct")
    # through the parent: it answered the blobs, with the login from hubcache_parent_credentials
    # (it wants it: test_the_parent_wants_its_login_and_its_ca), and fetched them on its own Hub
    # account: the one counted pull
    ok = {r["http.request.uri"] for r in parent.responses(pmark) if r["http.response.status"] == 200}
    assert {f"/v2/{name}/blobs/{d}" for d in [img.config_digest, *img.layer_digests]} <= ok, ok
    after = upstream.pulls_by_account()
    assert after.get(HUB_ACCOUNT[0], 0) == before.get(HUB_ACCOUNT[0], 0) + 1 and sum(after.values()) == sum(before.values()) + 1
    page = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10).read().decode()
    assert 'hubcache_parent_requests_total{kind="blob",registry="docker.io",result="ok"} 3.0' in page, page
    log = hub.log()
    events = [json.loads(line) for line in log.splitlines() if line.strip()]  # hubcache_log_format=json: every line
    assert [e for e in events if e.get("note") == "from the parent"], log[-3000:]
    for secret in (LOGIN[1], RUNNER[1], HUB_ACCOUNT[1]):
        assert secret not in log


def test_the_central_units_hubcache_wants_a_proxy_login_and_pulls_through_the_parent(
        upstream, parent, file_hubcache, certs, tmp_path):
    hub, metrics = file_hubcache("central")
    upstream.push_image("library/deployedguard", "1", [(60_000, next(_seeds))])
    pmark, hub_mark = parent.mark(), upstream.mark()
    for who, url in (("no login", hub.url), ("a wrong password", f"http://{RUNNER[0]}:not-it@127.0.0.1:{hub.port}")):
        refused = skopeo_copy("docker.io/library/deployedguard:1", tmp_path / who, proxy=url, cert_dir=certs,
                              extra_args=["--retry-times", "0"])
        assert refused.returncode != 0 and "Proxy Authentication Required" in refused.stderr, (who, refused.stderr)
    tunnel = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=10)
    tunnel.set_tunnel("registry-1.docker.io", 443)
    with pytest.raises(OSError, match="407 Proxy Authentication Required"):
        tunnel.connect()
    tunnel.close()
    assert parent.responses(pmark) == [] and upstream.requests_since(hub_mark) == []  # 407 before anything
    _pull_goes_through_the_parent(upstream, parent, hub, f"http://{RUNNER[0]}:{RUNNER[1]}@127.0.0.1:{hub.port}",
                                  metrics, certs, tmp_path, "library/deployedcentral")


def test_the_compose_files_hubcache_pulls_through_the_parent(upstream, parent, file_hubcache, certs, tmp_path):
    hub, metrics = file_hubcache("compose")
    _pull_goes_through_the_parent(upstream, parent, hub, hub.url, metrics, certs, tmp_path, "library/deployedcompose")
    # compose.yml's health check of hubcache (python, /metrics), on the test's metrics port
    python, flag, code = substitute(compose_healthcheck("hubcache"), {"python": str(BIN / "python")})
    assert flag == "-c" and code.count("127.0.0.1:9090") == 1, code
    healthcheck = [python, flag, code.replace("127.0.0.1:9090", f"127.0.0.1:{metrics}")]
    assert subprocess.run(healthcheck, capture_output=True, timeout=30).returncode == 0
    hub.stop()
    assert subprocess.run(healthcheck, capture_output=True, timeout=30).returncode != 0


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
