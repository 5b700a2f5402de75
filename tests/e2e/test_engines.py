"""Real container engines pull through a running `hubcache run`: dockerd 20.10, containerd 1.6 (ctr)
and podman 4.3, each with all of its state in the test's tmp dir, HTTPS_PROXY at hubcache and
hubcache's CA trusted the way certs/README.md says (system bundle for dockerd, --tlscacert for
ctr, --cert-dir for podman). skopeo is covered by test_pull_through.py. dockerd also logs in,
builds FROM an image it pulled through hubcache and pushes through it (issue 18; skopeo's pushes
are in test_push.py).

What the engine reports (manifest or index digest, image ID = config digest, diff IDs) is checked
against what was pushed; requests are counted at the upstream (registry, token server, CDN), never
in the proxy. Each test has a fresh hubcache, a fresh engine and repository names of its own.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from pathlib import Path

import pytest

from harness.clients import pull_ok
from harness.engines import ENGINES, Docker, Image, missing_engine
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


# ------------------------------------------------ docker push through hubcache (issue 18)

PUSHER = ("pusher", "pushpass")  # the upstream's account that may push (tests/e2e/conftest.py)


@pytest.fixture
def docker(docker_available, hub, upstream, tmp_path):
    """A started dockerd of its own, pulling and pushing through `hub`."""
    with Docker(tmp_path / "docker", proxy=hub.url, ca_cert=hub.ca_cert) as eng:
        yield eng


def build_on(docker: Docker, base_ref: str, ref: str, context: Path, seed: int) -> Image:
    """`FROM base` plus a layer of its own, as a CI job's `docker build` makes it."""
    context.mkdir(parents=True, exist_ok=True)
    (context / "payload").write_bytes(random.Random(seed).randbytes(300_000))
    (context / "Dockerfile").write_text(f"FROM {base_ref}\nCOPY payload /payload\n")
    docker.build(context, ref)
    return docker.describe(ref)


def push(docker: Docker, hub, upstream, ref: str) -> tuple[str, list]:
    """`docker push` with the pusher's login; the pushed digest and the upstream requests it made."""
    docker.login(*PUSHER)
    mark = upstream.mark()
    res = docker.push(ref, check=False)
    reqs = upstream.requests_since(mark)
    if res.returncode != 0:
        lines = "\n".join(f"  {r.host} {r.method} {r.path} {r.status}" for r in reqs)
        pytest.fail(f"docker push {ref} failed ({res.returncode}): {res.stderr.strip()}\n{res.stdout[-1500:]}\n"
                    f"upstream requests:\n{lines}\nhubcache log (tail):\n{hub.log()[-3000:]}")
    return Docker.pushed_digest(res), reqs


def test_docker_push_of_an_image_on_a_base_cached_from_another_repository_leaves_the_registry_whole(
        docker, hub, upstream, certs, tmp_path):
    """A CI job pulls its base through hubcache, builds FROM it and pushes to another repository:
    the base layer must reach the registry (mounted from the base's repository or uploaded), not be
    skipped because hubcache holds its bytes from elsewhere."""
    base = upstream.push_image("library/docker-pushbase", "1", layers(400_000))
    base_ref, ref = "docker.io/library/docker-pushbase:1", "docker.io/library/docker-pushed:1"
    pull(docker, hub, upstream, base_ref)  # hubcache holds the base layer now, under docker-pushbase
    built = build_on(docker, base_ref, ref, tmp_path / "context", next(_seeds))
    assert built.diff_ids[:1] == base.diff_ids and len(built.diff_ids) == 2

    assert docker.login(PUSHER[0], "not-the-password", check=False).returncode != 0  # hubcache answers /v2/ itself
    digest, reqs = push(docker, hub, upstream, ref)
    layer = base.layer_digests[0]
    reached = [r for r in reqs if r.host == REGISTRY_HOST and r.status == 201 and hexd(layer) in r.path
               and ((r.method == "POST" and "mount=" in r.path) or (r.method == "PUT" and "digest=" in r.path))]
    assert reached, f"the base layer was neither mounted nor uploaded: {reqs}"

    # What the registry itself serves, pulled directly (not through hubcache) and checked by skopeo
    # against every digest: the manifest dockerd pushed, its config, the base layer's bytes.
    direct = pull_ok(ref, tmp_path / "direct", None, certs)
    manifest_bytes = (direct / "manifest.json").read_bytes()
    assert "sha256:" + hashlib.sha256(manifest_bytes).hexdigest() == digest
    manifest = json.loads(manifest_bytes)
    assert manifest["config"]["digest"] == built.config_digest
    assert [m["digest"] for m in manifest["layers"]][:1] == [layer]
    assert (direct / hexd(layer)).read_bytes() == upstream.blob_file(layer).read_bytes()
    assert json.loads((direct / hexd(built.config_digest)).read_bytes())["rootfs"]["diff_ids"] == built.diff_ids


# dockerd 20.10 pushes Docker v2s2; the tag's old version is v2s2 too, or OCI (pushed by BuildKit, say).
@pytest.mark.parametrize("old_fmt", ["v2s2", "oci"])
def test_a_tag_docker_pushed_through_hubcache_is_pulled_through_it_at_once_right_after_the_old_one(
        docker, hub, upstream, certs, tmp_path, old_fmt):
    """The tag's old version was pulled through hubcache just before (fresh for hubcache_tag_ttl,
    300 s): the next pull through hubcache, by another client, gets what dockerd pushed at once."""
    upstream.push_image(f"library/docker-appbase-{old_fmt}", "1", layers(300_000))
    old = upstream.push_image(f"library/docker-app-{old_fmt}", "latest", layers(200_000), fmt=old_fmt)
    base_ref, ref = f"docker.io/library/docker-appbase-{old_fmt}:1", f"docker.io/library/docker-app-{old_fmt}:latest"
    pull(docker, hub, upstream, base_ref)
    pull(docker, hub, upstream, ref)
    assert docker.describe(ref).digest == old.manifest_digest
    built = build_on(docker, base_ref, ref, tmp_path / "context", next(_seeds))

    digest, _ = push(docker, hub, upstream, ref)
    assert digest != old.manifest_digest
    direct = pull_ok(ref, tmp_path / "direct", None, certs)
    assert "sha256:" + hashlib.sha256((direct / "manifest.json").read_bytes()).hexdigest() == digest, \
        "the registry itself does not serve what dockerd pushed"
    mark = upstream.mark()
    through = pull_ok(ref, tmp_path / "through", hub, certs)
    manifest_bytes = (through / "manifest.json").read_bytes()
    got = "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
    assert got == digest, f"hubcache served {got} ({'the old version' if got == old.manifest_digest else '?'}), pushed {digest}"
    assert json.loads(manifest_bytes)["config"]["digest"] == built.config_digest
    # the push left the manifest in hubcache's store: it was not fetched again
    assert not [r for r in upstream.requests_since(mark) if r.method == "GET" and "/manifests/" in r.path]
