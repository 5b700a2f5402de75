"""Who may see cached content: a private image pulled with one client's own login is not handed
to an anonymous client, nor under another repository's name; its owner still gets it."""

from __future__ import annotations

import pytest

from harness.clients import dir_files, proxied_request, skopeo_copy
from harness.hubenv import REGISTRY_HOST

pytestmark = pytest.mark.e2e


def test_private_image_is_served_only_to_clients_upstream_lets_in(upstream, start_hubcache, certs, tmp_path):
    img = upstream.push_image("acme/secret", "1", [(300_000, 71)])
    layer = img.layer_digests[0]
    hub = start_hubcache()
    own = skopeo_copy("docker.io/acme/secret:1", tmp_path / "alice", proxy=hub.url, cert_dir=certs, creds="alice:alice-pw")
    assert own.returncode == 0, own.stderr

    anonymous = skopeo_copy(f"docker.io/acme/secret@{img.manifest_digest}", tmp_path / "anon", proxy=hub.url, cert_dir=certs)
    assert anonymous.returncode != 0
    assert not (tmp_path / "anon" / layer.split(":")[1]).exists()
    # the layer under another repository's name: not from the store; upstream has no such blob there
    status, _, body = proxied_request(hub.port, hub.ca_cert, "GET", REGISTRY_HOST, f"/v2/library/innocent/blobs/{layer}")
    assert status in (401, 404) and len(body) < 1000
    # a client upstream does not let in, with a login of its own
    bob = skopeo_copy("docker.io/acme/secret:1", tmp_path / "bob", proxy=hub.url, cert_dir=certs, creds="bob:bob-pw")
    assert bob.returncode != 0

    mark = upstream.mark()
    again = skopeo_copy("docker.io/acme/secret:1", tmp_path / "alice2", proxy=hub.url, cert_dir=certs, creds="alice:alice-pw")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "alice2" / layer.split(":")[1]).read_bytes() == (tmp_path / "alice" / layer.split(":")[1]).read_bytes()
    # served from the store: upstream only confirmed alice's token, with HEADs (and her token fetch)
    assert all(r.method == "HEAD" or r.host == "auth.docker.io" for r in upstream.requests_since(mark))

    with upstream.down():  # offline, private content is refused unless hubcache_offline_private=allow
        hub.stop()
        hub.start()
        offline = skopeo_copy("docker.io/acme/secret:1", tmp_path / "off", proxy=hub.url, cert_dir=certs, creds="alice:alice-pw")
        assert offline.returncode != 0


def test_public_image_first_pulled_with_a_login_is_then_served_to_anyone(upstream, start_hubcache, certs, tmp_path):
    upstream.push_image("library/sharedpublic", "1", [(300_000, 72)])
    hub = start_hubcache()
    own = skopeo_copy("docker.io/library/sharedpublic:1", tmp_path / "a", proxy=hub.url, cert_dir=certs, creds="alice:alice-pw")
    assert own.returncode == 0, own.stderr
    mark = upstream.mark()
    anon = skopeo_copy("docker.io/library/sharedpublic:1", tmp_path / "b", proxy=hub.url, cert_dir=certs)
    assert anon.returncode == 0, anon.stderr
    # confirmed with free HEADs as the pool (anonymous here), not fetched again
    assert not any(r.method == "GET" and r.host == REGISTRY_HOST and "/v2/library" in r.path
                   for r in upstream.requests_since(mark))


def _pool(tmp_path, account: str, password: str):
    creds = tmp_path / "pool.toml"
    creds.write_text(f'[[accounts]]\nusername = "{account}"\ntoken = "{password}"\n')
    creds.chmod(0o600)
    return creds


def test_a_pool_accounts_private_repository_is_not_served_to_anonymous_clients_unless_named(
        upstream, start_hubcache, certs, tmp_path):
    img = upstream.push_image("acme/poolonly", "1", [(200_000, 73)])
    upstream.set_private("acme/poolonly", ["pusher", "alice"])
    upstream.push_image("library/poolpublic", "1", [(100_000, 74)])
    creds = _pool(tmp_path, "alice", "alice-pw")  # alice may pull acme/poolonly; anonymous may not
    direct_anon = skopeo_copy("docker.io/acme/poolonly:1", tmp_path / "direct", proxy=None, cert_dir=certs)
    assert direct_anon.returncode != 0  # what an anonymous client gets without hubcache

    hub = start_hubcache(f"hubcache_credentials={creds}")
    mark = upstream.mark()
    anon = skopeo_copy("docker.io/acme/poolonly:1", tmp_path / "anon", proxy=hub.url, cert_dir=certs)
    assert anon.returncode != 0
    assert "unauthorized" in anon.stderr.lower() or "denied" in anon.stderr.lower(), anon.stderr
    assert not (tmp_path / "anon" / img.layer_digests[0].split(":")[1]).exists()
    reqs = upstream.requests_since(mark)
    # the pool's login was never used for it: no token as alice for that scope, nothing pulled
    assert not any(r.host == "auth.docker.io" and r.extra.get("account") == "alice" and "poolonly" in r.path
                   for r in reqs), reqs
    assert not any(r.host == REGISTRY_HOST and r.method == "GET" and "poolonly/manifests" in r.path and r.status == 200
                   for r in reqs)
    # public content still goes as the pool account (its budget)
    mark = upstream.mark()
    public = skopeo_copy("docker.io/library/poolpublic:1", tmp_path / "public", proxy=hub.url, cert_dir=certs)
    assert public.returncode == 0, public.stderr
    assert upstream.pulls_by_account().get("alice", 0) >= 1
    hub.stop()

    named = start_hubcache(f"hubcache_credentials={creds}", "hubcache_pool_private=acme/*", name="named")
    served = skopeo_copy("docker.io/acme/poolonly:1", tmp_path / "served", proxy=named.url, cert_dir=certs)
    assert served.returncode == 0, served.stderr
    own = skopeo_copy("docker.io/acme/poolonly:1", tmp_path / "own", proxy=None, cert_dir=certs, creds="alice:alice-pw")
    assert own.returncode == 0, own.stderr
    assert dir_files(tmp_path / "served") == dir_files(tmp_path / "own")
