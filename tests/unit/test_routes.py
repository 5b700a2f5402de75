import pytest
from hypothesis import given
from hypothesis import strategies as st

from hubcache.decide.routes import classify, classify_registry
from hubcache.model import Kind, Route
from hubcache.registries import RegistryTable

D = "sha256:" + "a" * 64
HOSTS = dict(
    registries=RegistryTable(),
    auth_hosts={"auth.docker.io"},
    cdn_hosts={"production.cloudflare.docker.com"},
)


@pytest.mark.parametrize(
    "path,kind,repo,ref",
    [
        ("/v2/", Kind.ROOT, "", ""),
        ("/v2", Kind.ROOT, "", ""),
        ("/v2/library/postgres/manifests/12.2", Kind.MANIFEST, "library/postgres", "12.2"),
        (f"/v2/library/postgres/manifests/{D}", Kind.MANIFEST, "library/postgres", D),
        (f"/v2/a/b/c/blobs/{D}", Kind.BLOB, "a/b/c", D),
        ("/v2/library/postgres/tags/list", Kind.TAGS, "library/postgres", ""),
        ("/v2/library/postgres/blobs/uploads/", Kind.OTHER, "library/postgres", ""),
        ("/v2/library/postgres/blobs/uploads/6f0c-uuid?_state=x", Kind.OTHER, "library/postgres", ""),
        (f"/v2/library/postgres/referrers/{D}", Kind.OTHER, "library/postgres", ""),
        ("/v2/_catalog", Kind.OTHER, "", ""),
        ("/something", Kind.OTHER, "", ""),
    ],
)
def test_classify_registry(path, kind, repo, ref):
    route = classify_registry("GET", path)
    assert (route.kind, route.repository, route.reference) == (kind, repo, ref)


@pytest.mark.parametrize(
    "path,code",
    [
        ("/v2/Library/postgres/manifests/1", "NAME_INVALID"),
        ("/v2/library/../etc/manifests/1", "NAME_INVALID"),
        ("/v2/library/%2e%2e/manifests/1", "NAME_INVALID"),
        ("/v2/library/postgres/manifests/-bad", "TAG_INVALID"),
        ("/v2/library/postgres/manifests/" + "t" * 129, "TAG_INVALID"),
        ("/v2/library/postgres/blobs/sha256:abc", "DIGEST_INVALID"),
        ("/v2/library/postgres/blobs/sha512:" + "a" * 128, "DIGEST_INVALID"),
        ("/v2/library/postgres/blobs/latest", "DIGEST_INVALID"),
        (f"/v2/library/postgres/manifests/sha256:{'A' * 64}", "DIGEST_INVALID"),
    ],
)
def test_bad_paths_are_oci_errors(path, code):
    route = classify_registry("GET", path)
    assert route.kind is Kind.INVALID and route.error_code == code


def test_query_string_is_ignored():
    assert classify_registry("GET", "/v2/x/manifests/1?foo=bar").reference == "1"


def test_writes_are_relayed_and_known_as_writes():
    assert classify_registry("PUT", "/v2/x/manifests/1") == Route(Kind.MANIFEST_WRITE, "x", "1")
    assert classify_registry("DELETE", f"/v2/x/manifests/{D}") == Route(Kind.MANIFEST_WRITE, "x", D)
    assert classify_registry("DELETE", f"/v2/x/blobs/{D}") == Route(Kind.OTHER, "x", D)
    assert classify_registry("POST", f"/v2/x/blobs/uploads/?mount={D}&from=y") == Route(Kind.OTHER, "x")


def test_classify_by_host():
    assert classify("auth.docker.io", "GET", "/token?scope=x", **HOSTS).kind is Kind.TOKEN
    assert classify("auth.docker.io", "POST", "/token", **HOSTS).kind is Kind.OTHER
    assert classify("production.cloudflare.docker.com", "GET", "/x", **HOSTS).kind is Kind.CDN
    assert classify("DOCKER.IO.", "GET", "/v2/", **HOSTS).kind is Kind.ROOT
    assert classify("example.com", "GET", "/v2/", **HOSTS) is None


def test_other_registries_are_routed_under_their_own_names():
    quay = classify("quay.io", "GET", "/v2/prometheus/node-exporter/manifests/v1", **HOSTS)
    assert (quay.kind, quay.registry, quay.repository, quay.remote, quay.reference) == (
        Kind.MANIFEST, "quay.io", "quay.io/prometheus/node-exporter", "prometheus/node-exporter", "v1")
    assert quay.image == "quay.io/prometheus/node-exporter"
    hub = classify("registry-1.docker.io", "GET", "/v2/library/postgres/manifests/12", **HOSTS)
    assert (hub.registry, hub.repository, hub.remote, hub.image) == (
        "docker.io", "library/postgres", "library/postgres", "docker.io/library/postgres")
    corp = dict(HOSTS, registries=RegistryTable(("registry.corp.example:5000",)))
    assert classify("registry.corp.example", "GET", "/v2/team/app/blobs/" + D, port=5000, **corp).repository == \
        "registry.corp.example:5000/team/app"
    assert classify("registry.corp.example", "GET", "/v2/", **corp) is None  # not on 443
    # a realm on a registry's own host is its token endpoint; the same path elsewhere is not
    assert classify("ghcr.io", "GET", "/token?scope=repository:a/b:pull", token_paths={"/token"}, **HOSTS).kind is Kind.TOKEN
    assert classify("ghcr.io", "GET", "/token", **HOSTS).kind is Kind.OTHER
    assert classify("gitlab.com", "GET", "/jwt/auth?service=x", token_paths={"/jwt/auth"}, **HOSTS).kind is Kind.TOKEN
    gitlab = dict(HOSTS, auth_hosts={"auth.docker.io", "gitlab.com"})
    assert classify("gitlab.com", "GET", "/users/sign_in", **gitlab).kind is Kind.OTHER


@given(st.text(max_size=300))
def test_any_path_classifies_without_crashing(path):
    route = classify_registry("GET", "/v2/" + path)
    if route.kind in (Kind.MANIFEST, Kind.BLOB):
        # whatever is accepted is a plain name: no traversal, no encoding, no NUL
        assert ".." not in route.repository.split("/")
        assert "%" not in route.repository and "\x00" not in route.repository
        assert route.reference and "/" not in route.reference


@pytest.mark.parametrize(
    "text,expected",
    [
        ("postgres:12.2", ("library/postgres", "12.2")),
        ("postgres", ("library/postgres", None)),
        ("docker.io/library/postgres:12.2", ("library/postgres", "12.2")),
        ("bitnami/redis:7", ("bitnami/redis", "7")),
        ("index.docker.io/hello-world", ("library/hello-world", None)),
        ("registry-1.docker.io/bitnami/redis", ("bitnami/redis", None)),
        ("alpine@sha256:" + "a" * 64, ("library/alpine", "sha256:" + "a" * 64)),
        ("alpine:3.20@sha256:" + "a" * 64, ("library/alpine", "sha256:" + "a" * 64)),  # the digest wins, as in docker pull
        ("docker.io/docker.io/x", ("docker.io/x", None)),  # only the first component can name the registry
    ],
)
def test_parse_image(text, expected):
    from hubcache.decide.routes import parse_image

    assert parse_image(text) == expected


def test_parse_image_refuses_nonsense():
    from hubcache.decide.routes import parse_image

    with pytest.raises(ValueError):
        parse_image("Not An Image")


@pytest.mark.parametrize("text", ["quay.io/coreos/etcd:v3", "localhost:5000/app", "localhost/app",
                                  "alpine@sha256:abc", "alpine@md5:" + "a" * 32, "alpine:bad tag"])
def test_parse_image_refuses_other_registries_and_bad_references(text):
    from hubcache.decide.routes import parse_image

    with pytest.raises(ValueError):
        parse_image(text)


@pytest.mark.parametrize("text,expected", [
    ("quay.io/prometheus/node-exporter:v1.8", ("quay.io/prometheus/node-exporter", "v1.8")),
    ("registry.corp.example:5000/team/app", ("registry.corp.example:5000/team/app", None)),
    ("ghcr.io/org/app@sha256:" + "b" * 64, ("ghcr.io/org/app", "sha256:" + "b" * 64)),
    ("postgres:12.2", ("library/postgres", "12.2")),  # Docker Hub's names as parse_image gives them
    ("docker.io/bitnami/redis", ("bitnami/redis", None)),
])
def test_parse_reference_names_any_registry_as_the_store_does(text, expected):
    from hubcache.decide.routes import parse_reference

    assert parse_reference(text) == expected
    with pytest.raises(ValueError):
        parse_reference("quay.io/Bad Name")
