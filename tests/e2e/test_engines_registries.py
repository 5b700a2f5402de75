"""dockerd 20.10, containerd 1.6 (ctr) and podman 4.3 pull images of the ghcr-like, gitlab-like
and mcr-like registries and of the corp registry on port 5000 (harness.registries) through one
hubcache, each engine trusting hubcache's CA the way certs/README.md says for registries other
than Docker Hub: dockerd the system store (one bundle for every host); ctr `--hosts-dir` with a
hosts.toml per registry host, and again with the CA file alone in each host's directory; podman
/etc/containers/certs.d/<host>/ca.crt per registry host.

For each engine and public registry: the cold pull gives what was pushed (manifest digest, image
ID, diff IDs and the stored bytes) and reaches only that registry's hosts, the pull after removing
the image reaches no upstream host at all, and with that registry stopped the image is pulled
again from hubcache's store while a never-cached one fails with the registry's (hubcache's)
answer, not a TLS error. The corp registry, added with hubcache_registries, is pulled with each
engine's own Basic login. Requests are counted at the upstream, never in the proxy.

One hubcache and one start of each engine setup serve the whole module (started in turn, one at
a time); repositories are named per setup so that no test sees another's cache.
"""

from __future__ import annotations

import itertools

import pytest

from harness.engines import Containerd, Docker, Podman, missing_engine
from harness.hubenv import GHCR_HOST, GITLAB_HOST, K8S_HOST, MCR_HOST
from harness.proxy import Proxy
from harness.registries import BY_NAME, CORP_PASSWORD, CORP_REGISTRY, CORP_USER, MCR_DATA_HOST

pytestmark = pytest.mark.e2e
MiB = 1 << 20
_seeds = itertools.count(93000)
REGISTRIES = [GHCR_HOST, GITLAB_HOST, MCR_HOST]
# Each engine set up as certs/README.md says for registries other than Docker Hub: dockerd the
# system store; ctr a hosts.toml per registry host, or the CA file alone in that host's directory;
# podman certs.d/<host>/ca.crt.
SETUPS = {
    "docker": (Docker, {}),
    "containerd": (Containerd, {"trust": "hosts-dir"}),
    "containerd-crt": (Containerd, {"trust": "hosts-dir-crt"}),
    "podman": (Podman, {"trust": "certs.d"}),
}


def hosts_of(registry: str) -> set[str]:
    """Every host name a pull from `registry` reaches: itself, its token realm's, its data host."""
    return {h for h, _ in BY_NAME[registry].addresses}


def layers(*sizes: int) -> list[tuple[int, int]]:
    return [(size, next(_seeds)) for size in sizes]


def hexd(digest: str) -> str:
    return digest.split(":", 1)[1]


def pull(engine, hub, upstream, ref: str, **kw) -> None:
    """Pull, and on failure say everything needed to tell whose fault it is."""
    mark = upstream.mark()
    res = engine.pull(ref, check=False, **kw)
    assert "failed to decode hosts.toml" not in res.stderr, res.stderr[-1500:]  # ctr read the CA from it
    if res.returncode != 0:
        reqs = "\n".join(f"  {r.host} {r.method} {r.path} {r.status}" for r in upstream.requests_since(mark))
        pytest.fail(f"{engine.name} pull {ref} failed ({res.returncode}): {res.stderr.strip()}\n"
                    f"upstream requests:\n{reqs}\nhubcache log (tail):\n{hub.log()[-3000:]}\n"
                    f"{engine.name} log (tail):\n{engine.log()[-2000:]}")


def assert_pushed(engine, ref: str, img) -> None:
    """The engine reports and keeps what was pushed: digest, image ID, diff IDs, config bytes and
    (but dockerd, which keeps no manifests) the manifest bytes."""
    got = engine.describe(ref)
    assert (got.digest, got.config_digest, got.diff_ids) == (img.manifest_digest, img.config_digest, img.diff_ids)
    assert engine.stored(img.config_digest) == img.config_bytes
    if engine.name != "docker":
        assert engine.stored(img.manifest_digest) == img.manifest_bytes


def remove(engine, ref: str, img) -> None:
    """Remove the image and check the engine really dropped its content, so the next pull must fetch."""
    engine.remove(ref)
    assert not engine.has(ref)
    for d in (img.config_digest, *img.layer_digests):
        assert engine.stored(d) is None, f"{engine.name} still holds {d} after removing {ref}"


def hub_lines(hub, since: int) -> list[str]:
    """hubcache's per-request outcome lines ("hit GET manifest ghcr.io/team/x 1 200 3ms") after `since`."""
    return [line.split("hubcache: ", 1)[1] for line in hub.log()[since:].splitlines()
            if "hubcache: " in line and "hubcache: store" not in line]


# ------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def hub(upstream, confdir, tmp_path_factory):
    """One hubcache for the module, with the corp registry added to its table as an operator would.
    hubcache_backoff=0: a registry a test stopped is asked again as soon as it is back, not 30 s
    later (the next engine's cold pull would get "upstream unavailable")."""
    p = Proxy(tmp_path_factory.mktemp("hubcache"), upstream.ca_cert, confdir=confdir,
              sets=[f"hubcache_registries=+{CORP_REGISTRY}", "hubcache_backoff=0"]).start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="module", params=list(SETUPS))
def engine(request, hub, upstream, tmp_path_factory):
    """Each engine started once for the module (pytest groups the tests by it), stopped by PID."""
    cls, kw = SETUPS[request.param]
    why = missing_engine(cls.name)
    if why:
        pytest.skip(why)
    with cls(tmp_path_factory.mktemp(request.param), proxy=hub.url, ca_cert=hub.ca_cert, **kw) as eng:
        eng.setup = request.param  # repository names of its own
        yield eng


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("registry", REGISTRIES)
def test_cold_identical_warm_without_requests_and_offline(engine, hub, upstream, registry):
    name = f"team/{engine.setup}-public"
    img = upstream.push_image(name, "1", layers(2 * MiB, 300_000), registry=registry)
    ref = f"{registry}/{name}:1"

    mark = upstream.mark()
    pull(engine, hub, upstream, ref)
    cold = upstream.requests_since(mark)
    assert_pushed(engine, ref, img)
    assert cold and {r.host for r in cold} <= hosts_of(registry), cold  # nothing went to Docker Hub's hosts
    for blob in (img.config_digest, *img.layer_digests):
        fetched = [r for r in cold if r.method == "GET" and r.status == 200 and hexd(blob) in r.path]
        assert len(fetched) == 1, f"{blob} fetched {len(fetched)} times: {cold}"
    if registry == MCR_HOST:  # blobs came from the data host, where the registry redirected hubcache
        assert {r.host for r in cold if "/blobs/" in r.path and r.status == 200} == {MCR_DATA_HOST}, cold

    remove(engine, ref, img)
    mark, logpos = upstream.mark(), len(hub.log())
    pull(engine, hub, upstream, ref)
    assert upstream.requests_since(mark) == []
    assert_pushed(engine, ref, img)
    lines = hub_lines(hub, logpos)
    assert lines and all(line.split()[0] == "hit" for line in lines), lines

    remove(engine, ref, img)
    with upstream.down(registry=registry):
        pull(engine, hub, upstream, ref)
        assert_pushed(engine, ref, img)
        never = engine.pull(f"{registry}/team/{engine.setup}-nevercached:1", check=False, timeout=120)
        assert never.returncode != 0, "a pull of an image never cached worked with its registry down"
        # what the engine says is the registry's (hubcache's) answer, not a TLS failure
        assert "x509" not in never.stderr and "unknown authority" not in never.stderr, never.stderr[-1500:]
        # nor a body after the answer to a HEAD (Go: "Unsolicited response received on idle HTTP channel")
        assert "Unsolicited response" not in never.stderr, never.stderr[-1500:]


def test_registry_k8s_io_redirects_are_followed_by_hubcache_for_every_engine(engine, hub, upstream):
    """registry.k8s.io answers every request with a 307 to another registry (here the ghcr-like
    one): the engine pulls through hubcache as from any registry, warm without a request, and with
    both hosts down from the store (dockerd and ctr resolve the tag with a HEAD first)."""
    name = f"{engine.setup}-pause"
    img = upstream.push_image(name, "3.9", layers(1 * MiB), registry=K8S_HOST)
    ref = f"{K8S_HOST}/{name}:3.9"
    mark = upstream.mark()
    pull(engine, hub, upstream, ref)
    assert_pushed(engine, ref, img)
    assert {r.host for r in upstream.requests_since(mark)} <= {K8S_HOST, GHCR_HOST}
    remove(engine, ref, img)
    mark = upstream.mark()
    pull(engine, hub, upstream, ref)
    assert upstream.requests_since(mark) == []
    remove(engine, ref, img)
    with upstream.down(registry=K8S_HOST), upstream.down(registry=GHCR_HOST):
        pull(engine, hub, upstream, ref)
        assert_pushed(engine, ref, img)


def test_a_registry_added_by_option_on_its_own_port_with_the_clients_own_basic_login(engine, hub, upstream):
    """registry.corp.example:5000 (Basic auth, htpasswd), added with
    hubcache_registries=+registry.corp.example:5000: each engine brings its own login (docker
    login, ctr --user, podman --creds) and trusts hubcache's CA for that host:port (ctr's and
    podman's directories are named registry.corp.example:5000). The image is private to that
    login: the pull after removing it only confirms the login with manifest HEADs (free), every
    byte comes from hubcache's store."""
    name = f"team/{engine.setup}-corp"
    img = upstream.push_image(name, "1", layers(1 * MiB, 200_000), registry=CORP_REGISTRY)
    ref = f"{CORP_REGISTRY}/{name}:1"
    kw = {} if isinstance(engine, Docker) else {"creds": f"{CORP_USER}:{CORP_PASSWORD}"}
    if isinstance(engine, Docker):
        engine.login(CORP_USER, CORP_PASSWORD, server=CORP_REGISTRY)  # dockerd checks it through hubcache

    mark = upstream.mark()
    pull(engine, hub, upstream, ref, **kw)
    cold = upstream.requests_since(mark)
    assert_pushed(engine, ref, img)
    assert {r.host for r in cold} == {CORP_REGISTRY}, cold  # the login went to no other host
    for blob in (img.config_digest, *img.layer_digests):
        assert len([r for r in cold if r.method == "GET" and r.status == 200 and hexd(blob) in r.path]) == 1, cold

    remove(engine, ref, img)
    mark = upstream.mark()
    pull(engine, hub, upstream, ref, **kw)
    assert_pushed(engine, ref, img)
    warm = upstream.requests_since(mark)
    assert all(r.method == "HEAD" and "/manifests/" in r.path for r in warm), warm


def test_ctr_with_a_hosts_toml_for_docker_io_only_does_not_trust_hubcache_for_ghcr(hub, upstream, tmp_path):
    """Why certs/README.md says one directory per registry host: containerd takes a hosts.toml's
    CA for that host only, so with docker.io's alone a ghcr.io pull fails TLS at hubcache."""
    why = missing_engine("containerd")
    if why:
        pytest.skip(why)
    upstream.push_image("team/untrusted", "1", layers(100_000), registry=GHCR_HOST)
    with Containerd(tmp_path / "ctr", proxy=hub.url, ca_cert=hub.ca_cert, trust="hosts-dir",
                    registries=("docker.io",)) as ctr:
        logpos = len(hub.log())
        res = ctr.pull(f"{GHCR_HOST}/team/untrusted:1", check=False, timeout=120)
    assert res.returncode != 0 and "x509: certificate signed by unknown authority" in res.stderr, res.stderr[-1500:]
    assert f"The client does not trust the proxy's certificate for {GHCR_HOST}" in hub.log()[logpos:]
