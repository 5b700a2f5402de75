"""Who may see cached content: a private image pulled with one client's own login is not handed
to an anonymous client, nor under another repository's name; its owner still gets it."""

from __future__ import annotations

import pytest

from harness.clients import proxied_request, skopeo_copy
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
