"""The registry table (which hosts are cached, under which name) and registries' challenges."""

import pytest

from hubcache import registries
from hubcache.decide import challenge
from hubcache.registries import DOCKER_HUB, RegistryTable


def test_the_default_table_covers_the_registries_pipelines_pull_from():
    t = RegistryTable()
    for host in ("registry-1.docker.io", "index.docker.io", "docker.io"):
        assert t.lookup(host).name == DOCKER_HUB and t.lookup(host).budget
    assert t.lookup("Quay.IO.").name == "quay.io"
    assert t.lookup("europe-west1-docker.pkg.dev").name == "europe-west1-docker.pkg.dev"  # each region its own
    assert t.lookup("us.gcr.io").name == "us.gcr.io" and t.lookup("gcr.io").name == "gcr.io"
    for host in ("ghcr.io", "registry.k8s.io", "mcr.microsoft.com", "public.ecr.aws", "registry.gitlab.com", "nvcr.io"):
        assert t.lookup(host) is not None, host
    assert t.lookup("gitlab.com") is None and t.lookup("github.com") is None
    assert t.lookup("quay.io", 8443) is None  # a port is part of a registry's name
    assert t.lookup("evil-docker.pkg.dev.attacker.example") is None


def test_the_option_adds_removes_or_replaces_registries_ports_included():
    t = registries.parse(["+registry.corp.example:5000", "-quay.io"])
    assert t.lookup("registry.corp.example", 5000).name == "registry.corp.example:5000"
    assert t.lookup("registry.corp.example") is None
    assert t.lookup("quay.io") is None and t.lookup("ghcr.io") is not None
    only = registries.parse(["docker.io,ghcr.io"])
    assert only.lookup("registry-1.docker.io") is not None  # Docker Hub's names are one registry...
    assert only.lookup("quay.io") is None
    assert registries.parse(["-docker.io"]).lookup("registry-1.docker.io") is None  # ...removed as one
    assert registries.parse(["+https://harbor.corp.example:443/"]).lookup("harbor.corp.example").name == "harbor.corp.example"


@pytest.mark.parametrize("bad", ["+", "+http://x:y", "-quay.io/path", "+a b", "+registry:port"])
def test_a_bad_registry_entry_is_refused_naming_it(bad):
    with pytest.raises(ValueError, match="not a registry host"):
        registries.parse([bad])


def test_store_names_keep_docker_hub_bare_and_qualify_every_other_registry():
    t = RegistryTable()
    assert t.lookup("registry-1.docker.io").qualify("library/postgres") == "library/postgres"
    assert t.lookup("quay.io").qualify("prometheus/node-exporter") == "quay.io/prometheus/node-exporter"
    assert registries.split_reference("quay.io/prometheus/node-exporter:v1") == ("quay.io", "prometheus/node-exporter:v1")
    assert registries.split_reference("postgres:12.2") == (DOCKER_HUB, "postgres:12.2")
    assert registries.split_reference("index.docker.io/library/alpine") == (DOCKER_HUB, "library/alpine")
    assert registries.split_reference("localhost/app") == ("localhost", "app")
    assert registries.split_reference("registry.corp.example:5000/team/app") == ("registry.corp.example:5000", "team/app")


def test_challenges_are_read_as_registries_send_them():
    ghcr = challenge.parse('Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:user/image:pull"')
    assert ghcr and ghcr.scheme == "bearer" and ghcr.realm == "https://ghcr.io/token" and ghcr.service == "ghcr.io"
    gitlab = challenge.parse('Bearer realm="https://gitlab.com/jwt/auth",service="container_registry"')
    assert gitlab and gitlab.realm_host == "gitlab.com"
    basic = challenge.parse('Basic realm="Registry Realm"')
    assert basic and basic.scheme == "basic" and basic.realm_host == ""
    assert challenge.parse('bearer realm="https://x.example/t" , service=svc').service == "svc"  # token form, spaces
    assert challenge.parse('Bearer realm="http://plain.example/token"') is None  # a login never goes over http
    assert challenge.parse("Negotiate abc") is None and challenge.parse("") is None
    assert challenge.parse('Bearer realm="https://r.example/t\\"x",service="s"').realm == 'https://r.example/t"x'


def test_a_challenge_is_given_back_with_the_scope_asked_for():
    c = challenge.parse('Bearer realm="https://quay.io/v2/auth",service="quay.io",error="invalid_token"')
    assert c.header("repository:org/app:pull") == \
        'Bearer realm="https://quay.io/v2/auth",service="quay.io",scope="repository:org/app:pull"'
    assert challenge.parse('Basic realm="r"').header("repository:x:pull") == 'Basic realm="r"'
    assert challenge.NONE.header() == ""
