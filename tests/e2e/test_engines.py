"""Real container engines pull through a running `hubcache run`: dockerd 20.10, containerd 1.6 (ctr)
and podman 4.3, each with all of its state in the test's tmp dir, HTTPS_PROXY at hubcache and
hubcache's CA trusted the way certs/README.md says (system bundle for dockerd, --tlscacert for
ctr, --cert-dir for podman). skopeo is covered by test_pull_through.py.

What the engine reports (manifest or index digest, image ID = config digest, diff IDs) is checked
against what was pushed; requests are counted at the upstream (registry, token server, CDN), never
in the proxy. Each test has a fresh hubcache, a fresh engine and repository names of its own.
"""

from __future__ import annotations

import itertools

import pytest

from harness.engines import ENGINES, Docker, missing_engine
from harness.hubenv import AUTH_HOST, CDN_HOST, REGISTRY_HOST

pytestmark = pytest.mark.e2e
_seeds = itertools.count(6000)


def layers(*sizes: int) -> list[tuple[int, int]]:
    return [(size, next(_seeds)) for size in sizes]


def hexd(digest: str) -> str:
    return digest.split(":", 1)[1]


def manifest_gets(reqs) -> list[str]:
    return [r.path.rsplit("/", 1)[1] for r in reqs
            if r.host == REGISTRY_HOST and r.method == "GET" and "/manifests/" in r.path]


def cdn_gets(reqs, digest: str) -> int:
    return sum(1 for r in reqs if r.host == CDN_HOST and r.method == "GET" and hexd(digest) in r.path)


def mentions(reqs, digest: str) -> list:
    return [r for r in reqs if hexd(digest) in r.path]


def pull(engine, hub, upstream, ref: str) -> None:
    """Pull, and on failure say everything needed to tell whose fault it is."""
    mark = upstream.mark()
    res = engine.pull(ref, check=False)
    if res.returncode != 0:
        reqs = "\n".join(f"  {r.host} {r.method} {r.path} {r.status}" for r in upstream.requests_since(mark))
        pytest.fail(f"{engine.name} pull {ref} failed ({res.returncode}): {res.stderr.strip()}\n"
                    f"upstream requests:\n{reqs}\nhubcache log (tail):\n{hub.log()[-3000:]}\n"
                    f"{engine.name} log (tail):\n{engine.log()[-2000:]}")


def assert_bytes(engine, config: tuple[str, bytes], manifests: dict[str, bytes]) -> None:
    """The engine keeps exactly the pushed bytes of the config and (but dockerd, which keeps none)
    of the manifests."""
    assert engine.stored(config[0]) == config[1], f"{engine.name} keeps other bytes for config {config[0]}"
    for digest, data in manifests.items():
        if engine.name != "docker":
            assert engine.stored(digest) == data, f"{engine.name} keeps other bytes for manifest {digest}"


def remove(engine, ref: str, *digests: str) -> None:
    """Remove the image and check the engine really dropped its content, so the next pull must fetch."""
    engine.remove(ref)
    assert not engine.has(ref)
    for d in digests:
        assert engine.stored(d) is None, f"{engine.name} still holds {d} after removing {ref}"


def hub_lines(hub, since: int = 0) -> list[str]:
    """hubcache's per-request outcome lines ("hit GET manifest library/x 1 200 3ms"), after `since` chars."""
    return [line.split("hubcache: ", 1)[1] for line in hub.log()[since:].splitlines()
            if "hubcache: " in line and "hubcache: store" not in line]


# ------------------------------------------------------------------------ fixtures


@pytest.fixture(params=list(ENGINES))
def engine_name(request) -> str:
    why = missing_engine(request.param)
    if why:
        pytest.skip(why)
    return request.param


@pytest.fixture
def hub(start_hubcache):
    return start_hubcache()


@pytest.fixture
def engine(engine_name, hub, upstream, tmp_path):
    """A started engine of its own, pulling through `hub`; stopped (by PID) after the test."""
    with ENGINES[engine_name](tmp_path / engine_name, proxy=hub.url, ca_cert=hub.ca_cert) as eng:
        yield eng


def repo(engine, what: str) -> str:
    return f"library/{engine.name}-{what}"


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("fmt", ["oci", "v2s2"])
def test_cold_pull_then_warm_pull_makes_no_upstream_request(engine, hub, upstream, fmt):
    name = repo(engine, f"warm-{fmt}")
    img = upstream.push_image(name, "1.0", layers(900_000, 300_000), fmt=fmt)
    ref = f"docker.io/{name}:1.0"

    mark = upstream.mark()
    pull(engine, hub, upstream, ref)
    cold = upstream.requests_since(mark)
    got = engine.describe(ref)
    assert (got.digest, got.config_digest, got.diff_ids) == (img.manifest_digest, img.config_digest, img.diff_ids)
    assert_bytes(engine, (img.config_digest, img.config_bytes), {img.manifest_digest: img.manifest_bytes})
    for blob in (img.config_digest, *img.layer_digests):
        assert cdn_gets(cold, blob) == 1, f"{blob} fetched {cdn_gets(cold, blob)} times from the CDN"
    assert manifest_gets(cold).count("1.0") + manifest_gets(cold).count(img.manifest_digest) == 1
    assert all(r.status < 400 or r.path == "/v2/" for r in cold), cold

    remove(engine, ref, img.config_digest, *img.layer_digests)
    mark, logpos = upstream.mark(), len(hub.log())
    pull(engine, hub, upstream, ref)
    assert upstream.requests_since(mark) == []
    again = engine.describe(ref)
    assert (again.digest, again.config_digest, again.diff_ids) == (got.digest, got.config_digest, got.diff_ids)
    assert_bytes(engine, (img.config_digest, img.config_bytes), {img.manifest_digest: img.manifest_bytes})
    lines = hub_lines(hub, logpos)
    assert lines and all(line.split()[0] == "hit" for line in lines), lines


def test_pull_by_digest(engine, hub, upstream):
    name = repo(engine, "bydigest")
    old = upstream.push_image(name, "v", layers(500_000))
    upstream.push_image(name, "v", layers(400_000))  # the tag moves on; the digest still names `old`
    ref = f"docker.io/{name}@{old.manifest_digest}"

    mark = upstream.mark()
    pull(engine, hub, upstream, ref)
    cold = upstream.requests_since(mark)
    got = engine.describe(ref)
    assert (got.digest, got.config_digest, got.diff_ids) == (old.manifest_digest, old.config_digest, old.diff_ids)
    assert_bytes(engine, (old.config_digest, old.config_bytes), {old.manifest_digest: old.manifest_bytes})
    assert manifest_gets(cold) == [old.manifest_digest]  # never the tag
    assert not any("/manifests/v" in r.path for r in cold)

    remove(engine, ref, old.config_digest, *old.layer_digests)
    mark = upstream.mark()
    pull(engine, hub, upstream, ref)
    assert upstream.requests_since(mark) == []
    assert engine.describe(ref).config_digest == old.config_digest


def test_multi_platform_index_fetches_only_linux_amd64(engine, hub, upstream):
    name = repo(engine, "multi")
    idx = upstream.push_index(name, "2", {"amd64": layers(400_000, 200_000), "arm64": layers(400_000, 200_000)})
    amd, arm = idx.manifests["amd64"], idx.manifests["arm64"]
    ref = f"docker.io/{name}:2"

    mark = upstream.mark()
    pull(engine, hub, upstream, ref)
    cold = upstream.requests_since(mark)
    got = engine.describe(ref)
    assert (got.digest, got.config_digest, got.diff_ids) == (idx.digest, amd.config_digest, amd.diff_ids)
    assert_bytes(engine, (amd.config_digest, amd.config_bytes),
                 {idx.digest: idx.manifest_bytes, amd.manifest_digest: amd.manifest_bytes})
    assert engine.stored(arm.manifest_digest) is None and engine.stored(arm.config_digest) is None
    gets = manifest_gets(cold)
    assert gets.count(amd.manifest_digest) == 1, gets
    assert set(gets) <= {"2", idx.digest, amd.manifest_digest}, gets
    for d in (arm.manifest_digest, arm.config_digest, *arm.layer_digests):
        assert mentions(cold, d) == [], f"arm64 object {d} was requested upstream"
    for blob in (amd.config_digest, *amd.layer_digests):
        assert cdn_gets(cold, blob) == 1

    remove(engine, ref, amd.config_digest, *amd.layer_digests)
    mark = upstream.mark()
    pull(engine, hub, upstream, ref)
    assert upstream.requests_since(mark) == []
    assert engine.describe(ref).config_digest == amd.config_digest


@pytest.mark.parametrize("name, trust", [("containerd", "hosts-dir"), ("containerd", "system"),
                                         ("podman", "certs.d")])
def test_ca_trusted_the_other_documented_way(name, trust, upstream, hub, tmp_path):
    """certs/README.md's other ways to trust hubcache's CA work too: for containerd a hosts.toml
    (what Kubernetes nodes use) or the system store, for podman /etc/containers/certs.d/docker.io/.
    (dockerd's only way, the system store, is what every docker test above uses.)"""
    why = missing_engine(name)
    if why:
        pytest.skip(why)
    img = upstream.push_image(f"library/{name}-trust-{trust}", "1", layers(300_000))
    ref = f"docker.io/library/{name}-trust-{trust}:1"
    with ENGINES[name](tmp_path / name, proxy=hub.url, ca_cert=hub.ca_cert, trust=trust) as engine:
        pull(engine, hub, upstream, ref)
        got = engine.describe(ref)
        assert (got.digest, got.config_digest) == (img.manifest_digest, img.config_digest)
        engine.remove(ref)
        mark = upstream.mark()
        pull(engine, hub, upstream, ref)
        assert upstream.requests_since(mark) == []


# -------------------------------------------------- the seed's example: GitLab CI services


@pytest.fixture
def docker_available():
    why = missing_engine("docker")
    if why:
        pytest.skip(why)


def test_gitlab_runner_pulls_postgres_service_through_hubcache(docker_available, upstream, start_hubcache, tmp_path):
    """A job with `services: [postgres:12.2]`: gitlab-runner's docker executor (pull_policy
    "always", the default) asks the daemon for the image by its short name through the Engine
    API on every job, then inspects it. postgres:12.2 on Hub is a Docker v2s2 manifest list."""
    idx = upstream.push_index("library/postgres", "12.2",
                              {"amd64": layers(600_000, 200_000), "arm64": layers(600_000, 200_000)}, fmt="v2s2")
    amd = idx.manifests["amd64"]
    hub = start_hubcache()

    def job(runner: Docker) -> tuple[list, list[dict]]:
        mark = upstream.mark()
        msgs = runner.api_pull("postgres", "12.2")  # ImagePull(ctx, "docker.io/library/postgres:12.2", ...)
        info = runner.api_inspect("postgres:12.2")  # ImageInspectWithRaw
        assert info["Id"] == amd.config_digest
        assert info["RootFS"]["Layers"] == amd.diff_ids
        assert f"postgres@{idx.digest}" in info["RepoDigests"]
        return upstream.requests_since(mark), msgs

    with Docker(tmp_path / "runner-a", proxy=hub.url, ca_cert=hub.ca_cert) as runner_a:
        cold, _ = job(runner_a)  # first job on this runner
        # dockerd: HEAD on the tag (free), then GET the list and the amd64 manifest by digest
        assert [r.method for r in cold if r.path.endswith("/manifests/12.2")] == ["HEAD"]
        assert sorted(manifest_gets(cold)) == sorted([idx.digest, amd.manifest_digest])
        for d in (*idx.manifests["arm64"].layer_digests, idx.manifests["arm64"].manifest_digest):
            assert mentions(cold, d) == []
        second, msgs = job(runner_a)  # next job, image still there, pulled again
        assert second == []
        assert any("Image is up to date" in m.get("status", "") for m in msgs), msgs
    with Docker(tmp_path / "runner-b", proxy=hub.url, ca_cert=hub.ca_cert) as runner_b:
        fresh, _ = job(runner_b)  # another runner host behind the same hubcache
        assert fresh == []
    assert sum(1 for r in cold if r.host == AUTH_HOST) >= 1
