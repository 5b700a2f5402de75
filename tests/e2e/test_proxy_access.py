"""Who may use the proxy, with the real `hubcache run` and real clients (curl, skopeo): beyond
loopback it starts only with a login from an htpasswd file (or hubcache_open_proxy=allow); a login
on the command line is refused; with a login every tunnel, to hosts hubcache does not intercept
too, needs it, and each tunnel is a log line naming the client; and no secret (the proxy login,
Docker Hub's, another registry's from a docker config, the parent's) is in the process's command
line or environment as `ps` shows them."""

from __future__ import annotations

import base64
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from harness.clients import skopeo_copy
from harness.hubenv import CORP_PASSWORD, CORP_REGISTRY, CORP_USER
from harness.proxy import BIN, free_port

pytestmark = pytest.mark.e2e
RUNNER = ("runner", "runner-Pw-4471")


def refused_start(tmp_path: Path, confdir: Path, *args: str) -> tuple[subprocess.CompletedProcess, int]:
    port = free_port()
    res = subprocess.run([str(BIN / "hubcache"), "run", "--store", str(tmp_path / "store"), "--confdir", str(confdir),
                          "--listen-port", str(port), *args], capture_output=True, text=True, timeout=60)
    return res, port


def nothing_listens(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_listening_beyond_loopback_needs_a_login_from_a_file(upstream, start_hubcache, proxy_login, confdir, tmp_path):
    res, port = refused_start(tmp_path, confdir, "--listen-host", "0.0.0.0")
    assert res.returncode == 2, res.stderr
    (line,) = res.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith("hubcache: listening on 0.0.0.0 (not loopback) without a proxy login") and "open proxy" in line
    assert "hubcache htpasswd /etc/hubcache/htpasswd runner" in line and "--set proxyauth=@/etc/hubcache/htpasswd" in line
    assert "--set hubcache_open_proxy=allow" in line
    assert nothing_listens(port) and not (tmp_path / "store").exists()  # refused before anything was made

    # a login on the command line is refused on any address (ps shows it), without repeating it
    res, port = refused_start(tmp_path, confdir, "--set", "proxyauth=runner:on-the-command-line")
    assert res.returncode == 2 and "`ps`" in res.stderr and "proxyauth=@" in res.stderr, res.stderr
    assert "on-the-command-line" not in res.stderr and nothing_listens(port)

    # an htpasswd file others can read is refused like every secrets file
    login = proxy_login(dict([RUNNER]))
    Path(login.removeprefix("proxyauth=@")).chmod(0o644)
    res, port = refused_start(tmp_path, confdir, "--listen-host", "0.0.0.0", "--set", login)
    assert res.returncode == 2 and "chmod 600" in res.stderr and nothing_listens(port), res.stderr
    Path(login.removeprefix("proxyauth=@")).chmod(0o600)

    # with the login, or the operator's explicit word, it starts on every address
    guarded = start_hubcache(login, host="0.0.0.0", name="guarded")
    assert curl_tunnel(guarded.port, ("127.0.0.1", free_port()), None).returncode != 0
    opened = start_hubcache("hubcache_open_proxy=allow", host="0.0.0.0", name="open")
    assert opened.proc and opened.proc.poll() is None


def test_the_addon_in_mitmdump_shuts_an_open_proxy_down(upstream, confdir, tmp_path):
    """mitmdump listens on every address by default: the addon's running hook says so and stops it."""
    port = free_port()
    addon = Path(__file__).resolve().parents[2] / "addon" / "hubcache_addon.py"
    res = subprocess.run([str(BIN / "mitmdump"), "-s", str(addon), "--listen-port", str(port), "--set", f"confdir={confdir}",
                          "--set", f"hubcache_store={tmp_path / 'store'}"], capture_output=True, text=True, timeout=60)
    out = res.stdout + res.stderr
    assert "listening on every address (not loopback) without a proxy login" in out, out
    assert "Traceback" not in out and nothing_listens(port)


class Counting(http.server.BaseHTTPRequestHandler):
    """A host hubcache does not intercept: answers every GET, counts them."""
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        Counting.seen.append(self.path)
        body = b"not a registry\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def other_host():
    Counting.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Counting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[:2]
    server.shutdown()
    server.server_close()
    thread.join()


def curl_tunnel(proxy_port: int, target: tuple[str, int], login: tuple[str, str] | None,
                tunnel: bool = True) -> subprocess.CompletedProcess:
    """curl GETs the target through a CONNECT tunnel (-p) of the proxy, as an engine's HTTPS would
    go; or (tunnel=False) as a plain-HTTP proxy request."""
    cmd = ["curl", "-sS", "-x", f"http://127.0.0.1:{proxy_port}", "--max-time", "20", f"http://{target[0]}:{target[1]}/page"]
    if tunnel:
        cmd.insert(1, "-p")
    if login:
        cmd[1:1] = ["--proxy-user", ":".join(login)]  # curl -U: the password is curl's own argument here, a test's
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


def test_tunnels_to_other_hosts_need_the_login_and_each_names_its_client(start_hubcache, proxy_login, other_host):
    hub = start_hubcache(proxy_login(dict([RUNNER])))
    for login in (None, ("runner", "wrong-password")):
        res = curl_tunnel(hub.port, other_host, login)
        assert res.returncode != 0 and "407" in res.stderr, res.stderr
    assert Counting.seen == []  # refused before any connection to the host
    res = curl_tunnel(hub.port, other_host, RUNNER)
    assert res.returncode == 0 and res.stdout == "not a registry\n", res.stderr
    assert Counting.seen == ["/page"]
    lines = hub.log().splitlines()
    target = f"{other_host[0]}:{other_host[1]}"
    refused = [line for line in lines if f"refused CONNECT {target} from 127.0.0.1:" in line]
    assert len(refused) == 2 and all("HTTPS_PROXY=http://USER:PASSWORD@" in line for line in refused), lines
    tunnels = [line for line in lines if f"tunnel {target} for " in line]
    assert len(tunnels) == 1 and f"tunnel {target} for runner@127.0.0.1:" in tunnels[0], lines
    # a plain-HTTP proxy request (no tunnel) needs the login as well, and its line names the client
    res = curl_tunnel(hub.port, other_host, None, tunnel=False)
    assert "407 Proxy Authentication Required" in res.stdout, res.stdout + res.stderr  # the answer's page
    assert Counting.seen == ["/page"]
    res = curl_tunnel(hub.port, other_host, RUNNER, tunnel=False)
    assert res.returncode == 0 and res.stdout == "not a registry\n" and Counting.seen == ["/page", "/page"], res.stderr
    lines = hub.log().splitlines()
    assert len([line for line in lines if f"refused GET http://{target} from 127.0.0.1:" in line]) == 1, lines
    assert len([line for line in lines if f"relayed plain HTTP GET http://{target} for runner@127.0.0.1:" in line]) == 1
    assert RUNNER[1] not in hub.log() and "wrong-password" not in hub.log()

    # without a login (loopback): the tunnel is relayed and its line names the address
    open_hub = start_hubcache(name="nologin")
    assert curl_tunnel(open_hub.port, other_host, None).returncode == 0
    (line,) = [line for line in open_hub.log().splitlines() if f"tunnel {target} for " in line]
    assert f"tunnel {target} for 127.0.0.1:" in line


def _shown(pid: int) -> str:
    """A process's command line and environment as ps shows them to the users of the host: /proc
    and `ps` itself (BSD `e`: the environment after the command)."""
    proc = Path(f"/proc/{pid}")
    parts = [proc.joinpath(f).read_bytes().replace(b"\0", b" ").decode(errors="replace") for f in ("cmdline", "environ")]
    parts.append(subprocess.run(["ps", "eww", "-o", "args=", "-p", str(pid)], capture_output=True, text=True).stdout)
    return "\n".join(parts)


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except FileNotFoundError:  # a short-lived child (a credential helper) gone meanwhile
            continue
        for child in children:
            out.append(int(child))
            todo.append(int(child))
    return out


def test_no_secret_in_the_command_line_or_environment_that_ps_shows(upstream, start_hubcache, proxy_login, certs,
                                                                    tmp_path):
    upstream.push_image("library/nops", "1", [(200_000, 3401)])
    upstream.push_image("team/nops", "1", [(150_000, 3402)], registry=CORP_REGISTRY)
    creds = tmp_path / "hub.toml"
    creds.write_text('[[accounts]]\nusername = "pusher"\ntoken = "pushpass"\n')
    parent_login = tmp_path / "parent-login"
    parent_login.write_text("fleet:parent-Secret-93\n")
    config = tmp_path / "config.json"  # a Docker Hub login and the corp registry's, as `docker login` writes them
    config.write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"alice:alice-pw").decode()},
        CORP_REGISTRY: {"auth": base64.b64encode(f"{CORP_USER}:{CORP_PASSWORD}".encode()).decode()}}}))
    for f in (creds, parent_login, config):
        f.chmod(0o600)
    hub = start_hubcache(proxy_login(dict([RUNNER])), f"hubcache_credentials={creds}",
                         f"hubcache_docker_config={config}", f"hubcache_registries=+{CORP_REGISTRY}",
                         f"hubcache_pool_private={CORP_REGISTRY}/team/*",
                         "hubcache_parent=https://mirror.hubcache-test.invalid:5000", f"hubcache_parent_credentials={parent_login}")
    proxy = f"http://{RUNNER[0]}:{RUNNER[1]}@127.0.0.1:{hub.port}"
    for ref in ("docker.io/library/nops:1", f"{CORP_REGISTRY}/team/nops:1"):  # every login in use
        res = skopeo_copy(ref, tmp_path / ref.replace("/", "_"), proxy=proxy, cert_dir=certs)
        assert res.returncode == 0, res.stderr
    log = hub.log()
    assert "pusher (from" in log and "alice (from" in log and f"{CORP_USER}@{CORP_REGISTRY} (from" in log, log  # all read
    secrets = {"proxy login": RUNNER[1], "Docker Hub token": "pushpass", "docker config's Hub login": "alice-pw",
               "docker config's corp login": CORP_PASSWORD, "parent login": "parent-Secret-93"}
    secrets |= {f"{k} (base64)": base64.b64encode(f"{u}:{v}".encode()).decode() for k, u, v in (
        ("proxy login", *RUNNER), ("docker config's Hub login", "alice", "alice-pw"),
        ("docker config's corp login", CORP_USER, CORP_PASSWORD))}
    assert hub.proc
    pids = [hub.proc.pid, *_descendants(hub.proc.pid)]
    shown = "\n".join(_shown(pid) for pid in pids if Path(f"/proc/{pid}").exists())
    assert f"proxyauth=@{tmp_path}/htpasswd" in shown and str(parent_login) in shown  # what is read is what ps shows
    assert [name for name, secret in secrets.items() if secret in shown] == []
    # (hubcache's processes only: clients of other tests on this host may carry these accounts' passwords
    # in their own command lines, e.g. skopeo --dest-creds)
    assert [name for name, secret in secrets.items() if secret in hub.log()] == []

    # the check finds a secret where one is: a process given it on its command line and in its environment
    planted = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "marker-in-argv"],
                               env={"MARK": "marker-in-environ"})
    try:
        seen = _shown(planted.pid)
        assert "marker-in-argv" in seen and "marker-in-environ" in seen
    finally:
        planted.kill()
        planted.wait()
