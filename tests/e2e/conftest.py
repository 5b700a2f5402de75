"""Fixtures for end-to-end tests against the Docker-Hub-shaped upstream (harness.hubenv)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.blobtests import CurlBlob
from harness.clients import make_cert_dir
from harness.hubenv import Upstream, missing_prerequisites
from harness.proxy import Proxy


@pytest.fixture(scope="session")
def upstream(tmp_path_factory):
    """A started Upstream for the whole session; this process stays in its namespaces
    until the session ends, so every client started by a test sees the fake Hub, and beside it
    the ghcr-like, gitlab-like, mcr-like and corp registries (harness.registries)."""
    why = missing_prerequisites()
    if why:
        pytest.skip(f"e2e upstream unavailable: {why}")
    # pusher pushes; alice and bob are the Docker Hub accounts of a credentials pool
    up = Upstream(tmp_path_factory.mktemp("upstream"),
                  accounts={"pusher": "pushpass", "alice": "alice-pw", "bob": "bob-pw"},
                  private={"acme/secret": ["pusher", "alice"]}, registries=True)
    up.start()
    try:
        yield up
    finally:
        up.stop()


@pytest.fixture(scope="session")
def confdir(tmp_path_factory) -> Path:
    """hubcache's confdir with its name-constrained CA made up front, so clients can trust it before a
    proxy runs: as `hubcache run` makes it for the registry table the tests use (the corp registry added)."""
    from harness.hubenv import CORP_REGISTRY
    from hubcache.tools import ca

    d = tmp_path_factory.mktemp("confdir")
    ca.ensure(d, ca.intercepted(ca.settings_from([f"hubcache_registries=+{CORP_REGISTRY}"])))
    return d


@pytest.fixture
def start_hubcache(upstream, confdir, tmp_path):
    started: list[Proxy] = []

    def start(*sets: str, name: str = "hubcache", args: list[str] = (), wrap: list[str] = (),
              host: str = "127.0.0.1", workers: int = 1) -> Proxy:
        p = Proxy(tmp_path / name, upstream.ca_cert, confdir=confdir, sets=list(sets), args=list(args),
                  wrap=list(wrap), host=host, workers=workers).start()
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


@pytest.fixture
def proxy_login(tmp_path):
    """`proxyauth=@FILE` for hubcache: an htpasswd file (bcrypt, mode 0600) of `logins` (user -> password)."""
    import bcrypt

    def make(logins: dict[str, str]) -> str:
        path = tmp_path / "htpasswd"
        path.write_text("".join(f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(4)).decode()}\n"
                                for user, pw in logins.items()))
        path.chmod(0o600)
        return f"proxyauth=@{path}"

    return make


@pytest.fixture
def certs(upstream, confdir, tmp_path) -> Path:
    """A skopeo cert dir trusting both the upstream CA (direct pulls) and hubcache's CA."""
    return make_cert_dir(tmp_path / "certs", upstream.ca_cert, confdir / "mitmproxy-ca-cert.pem")


@pytest.fixture
def key_holder(upstream, confdir, tmp_path):
    """A plain mitmdump with hubcache's CA key (the shared confdir), intercepting every host: what
    whoever obtained the key could run. It signs a certificate for any name a client asks for; the
    CA's Name Constraints decide which of them clients accept."""
    # lazy, as hubcache runs: the certificate names what the client asked for, not upstream's names too
    p = Proxy(tmp_path / "key-holder", upstream.ca_cert, confdir=confdir, kind="mitmdump",
              sets=["connection_strategy=lazy"]).start()
    yield p
    p.stop()


@pytest.fixture
def idle_clients():
    """Factory of idle client connections to a proxy port (harness.idleconns); all closed at the end."""
    from harness.idleconns import IdleClients

    made: list[IdleClients] = []

    def make(port: int) -> IdleClients:
        made.append(IdleClients(port))
        return made[-1]

    yield make
    for m in made:
        m.close()


@pytest.fixture
def curl(tmp_path):
    """curl(hub, repo, digest, token, name) starts a CurlBlob; every one still running at the end
    is killed by its PID."""
    started: list[CurlBlob] = []

    def start(hub, repo: str, digest: str, token: str, name: str, rate: str = "") -> CurlBlob:
        c = CurlBlob(hub, repo, digest, token, tmp_path / name, rate)
        started.append(c)
        return c

    yield start
    for c in started:
        c.kill()
