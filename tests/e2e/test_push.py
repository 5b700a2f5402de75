"""What is not a pull goes through hubcache as it goes direct: an authenticated push of an image
whose base layer hubcache has cached from another repository, the pushed tag seen at once, tag
lists, and content asked for under a repository that does not have it."""

from __future__ import annotations

import json

import pytest

from harness import images
from harness.clients import dir_files, direct_request, proxied_request, pull_ok, skopeo_copy, skopeo_list_tags, skopeo_push
from harness.hubenv import AUTH_HOST, REGISTRY_HOST

pytestmark = pytest.mark.e2e
PUSHER = "pusher:pushpass"


def direct_token(upstream, repo: str) -> list[tuple[str, str]]:
    """An anonymous pull token from the upstream's own token server, for direct requests."""
    status, _, body = direct_request(upstream.ca_cert, "GET", AUTH_HOST, f"/token?service=registry.docker.io&scope=repository:{repo}:pull")
    assert status == 200
    return [("Authorization", f"Bearer {json.loads(body)['token']}")]


def anonymous_token(hub, repo: str) -> list[tuple[str, str]]:
    """What an anonymous client sends after the token dance through hubcache (a local token)."""
    status, _, body = proxied_request(hub.port, hub.ca_cert, "GET", AUTH_HOST,
                                      f"/token?service=registry.docker.io&scope=repository:{repo}:pull")
    assert status == 200
    return [("Authorization", f"Bearer {json.loads(body)['token']}")]


def test_a_push_sharing_a_cached_base_layer_uploads_it_and_then_pulls_directly(upstream, start_hubcache, certs, tmp_path):
    base = upstream.push_image("library/base18", "1", [(300_000, 181)])
    hub = start_hubcache()
    pull_ok("docker.io/library/base18:1", tmp_path / "base", hub, certs)  # the base layer is in hubcache's store
    src = tmp_path / "built"
    built = images.build_image(src, [(300_000, 181), (200_000, 182)])  # FROM base18, plus a layer
    assert built.layer_digests[0] == base.layer_digests[0]

    res = skopeo_push(src, "docker.io/library/pushed18:1", proxy=hub.url, cert_dir=certs, creds=PUSHER)
    assert res.returncode == 0, res.stderr
    # The registry has the image whole: a direct pull gets the pushed bytes, the base layer included.
    direct = pull_ok("docker.io/library/pushed18:1", tmp_path / "direct", None, certs)
    assert dir_files(direct) == {k: v for k, v in dir_files(src).items() if k != "version"}


def test_a_tag_pushed_through_hubcache_is_pulled_through_it_at_once(upstream, start_hubcache, certs, tmp_path):
    old = upstream.push_image("library/solo18", "latest", [(200_000, 183)])
    hub = start_hubcache()  # tags are fresh for hubcache_tag_ttl (300 s) after a pull
    pull_ok("docker.io/library/solo18:latest", tmp_path / "old", hub, certs)
    src = tmp_path / "new"
    new = images.build_image(src, [(200_000, 184)])
    assert new.manifest_digest != old.manifest_digest
    res = skopeo_push(src, "docker.io/library/solo18:latest", proxy=hub.url, cert_dir=certs, creds=PUSHER)
    assert res.returncode == 0, res.stderr
    mark = upstream.mark()
    again = pull_ok("docker.io/library/solo18:latest", tmp_path / "again", hub, certs)
    assert (again / "manifest.json").read_bytes() == new.manifest_bytes
    # what the push left in hubcache was enough: the manifest came from its store
    assert not [r for r in upstream.requests_since(mark) if r.method == "GET" and "/manifests/" in r.path]


def test_tag_lists_match_the_registrys_online_and_are_partial_offline(upstream, start_hubcache, certs, tmp_path):
    for tag in ("1", "2", "3"):
        upstream.push_image("library/listed18", tag, [(100_000, 185)])
    hub = start_hubcache()
    direct = skopeo_list_tags("docker.io/library/listed18", proxy=None, cert_dir=certs)
    through = skopeo_list_tags("docker.io/library/listed18", proxy=hub.url, cert_dir=certs)
    assert direct.returncode == 0, direct.stderr
    assert through.returncode == 0, through.stderr
    assert json.loads(through.stdout)["Tags"] == json.loads(direct.stdout)["Tags"]  # in the registry's order
    assert sorted(json.loads(direct.stdout)["Tags"]) == ["1", "2", "3"]
    # a page asked for with n: whatever the registry answers (body, Link), hubcache relays
    page = "/v2/library/listed18/tags/list?n=2"
    status, headers, body = proxied_request(hub.port, hub.ca_cert, "GET", REGISTRY_HOST, page, anonymous_token(hub, "library/listed18"))
    d_status, d_headers, d_body = direct_request(upstream.ca_cert, "GET", REGISTRY_HOST, page, direct_token(upstream, "library/listed18"))
    assert (status, json.loads(body), headers.get("link")) == (d_status, json.loads(d_body), d_headers.get("link"))

    pull_ok("docker.io/library/listed18:2", tmp_path / "two", hub, certs)  # hubcache has seen tag 2 only
    with upstream.down():
        offline = skopeo_list_tags("docker.io/library/listed18", proxy=hub.url, cert_dir=certs)
        assert offline.returncode == 0, offline.stderr
        assert json.loads(offline.stdout)["Tags"] == ["2"]
        status, headers, _ = proxied_request(hub.port, hub.ca_cert, "GET", REGISTRY_HOST, "/v2/library/listed18/tags/list",
                                             anonymous_token(hub, "library/listed18"))
        assert status == 200 and "partial" in headers["warning"]


def test_content_is_not_answered_under_a_repository_that_does_not_have_it(upstream, start_hubcache, certs, tmp_path):
    img = upstream.push_image("library/owner18", "1", [(100_000, 186)])
    hub = start_hubcache()
    pull_ok("docker.io/library/owner18:1", tmp_path / "owner", hub, certs)
    upstream.push_image("library/other18", "1", [(100_000, 187)])  # the repository exists, without owner18's content
    for path, code in ((f"/v2/library/other18/manifests/{img.manifest_digest}", "MANIFEST_UNKNOWN"),
                       (f"/v2/library/other18/blobs/{img.layer_digests[0]}", "BLOB_UNKNOWN")):
        for method in ("HEAD", "GET"):
            status, _, body = proxied_request(hub.port, hub.ca_cert, method, REGISTRY_HOST, path,
                                              [("Accept", img.media_type), *anonymous_token(hub, "library/other18")])
            assert status == 404, (method, path, status)
            if method == "GET":
                assert json.loads(body)["errors"][0]["code"] == code
    # and the owner still pulls warm, with no upstream request at all
    mark = upstream.mark()
    again = skopeo_copy("docker.io/library/owner18:1", tmp_path / "again", proxy=hub.url, cert_dir=certs)
    assert again.returncode == 0, again.stderr
    assert upstream.requests_since(mark) == []
