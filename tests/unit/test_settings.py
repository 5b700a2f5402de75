"""Options parsed once into typed settings; only what changed is parsed again."""

from types import SimpleNamespace

import pytest

from hubcache.settings import _PARSERS, REGISTRY_HOSTS, Settings, SettingsError


def options(**overrides):
    """Every option Settings reads, at mitmproxy's and hubcache's defaults."""
    values = {
        "hubcache_store": "/var/lib/hubcache/store", "hubcache_max_size": "0", "hubcache_direct_min": "2m",
        "hubcache_tag_ttl": 300, "hubcache_registries": [],
        "hubcache_auth_hosts": ["auth.docker.io"], "hubcache_cdn_hosts": ["production.cloudflare.docker.com"],
        "hubcache_auth_realm": "https://auth.docker.io/token", "hubcache_auth_service": "registry.docker.io",
        "hubcache_credentials": "", "hubcache_docker_config": "", "hubcache_budget_reserve": 0,
        "hubcache_pool_private": [],
        "hubcache_metrics_listen": "", "hubcache_metrics_clients": 100,
        "hubcache_client_max": 8192, "hubcache_client_max_per_address": 1024, "hubcache_client_idle": 30,
        "hubcache_upstream_timeout": 15, "hubcache_connect_timeout": 5,
        "hubcache_backoff": 30, "hubcache_upstream_concurrency": 16, "hubcache_upstream_rate": 20,
        "hubcache_upstream_burst": 40, "hubcache_pin_time": "", "hubcache_offline_private": "refuse", "hubcache_open_proxy": "refuse",
        "hubcache_offline": False, "hubcache_log_format": "text", "hubcache_log_level": "info",
        "ssl_insecure": False, "ssl_verify_upstream_trusted_ca": None,
        "ssl_verify_upstream_trusted_confdir": None, "tcp_timeout": 60,
        "mode": ["regular"], "upstream_auth": None, "hubcache_upstream_auth_file": "",
        "hubcache_parent": "", "hubcache_parent_ca": "", "hubcache_parent_credentials": "",
        "hubcache_parent_prefix": "", "hubcache_parent_tags": "hub", "hubcache_parent_fallback": "hub",
    }
    assert set(values) == set(_PARSERS)  # the test covers every option the settings read
    values.update(overrides)
    return SimpleNamespace(**values)


def test_values_are_parsed_into_typed_fields():
    s = Settings.parse(options(hubcache_max_size="50g", hubcache_direct_min="off",
                               hubcache_registries=["Registry-1.Docker.IO,+registry.corp.example:5000"],
                               hubcache_pin_time="2026-11-27T10:00:00Z",
                               ssl_verify_upstream_trusted_ca="/etc/ca.pem"), updated=())
    assert s.max_size == 50 << 30
    assert s.direct_min is None
    assert s.registry_hosts == frozenset(REGISTRY_HOSTS)  # Docker Hub's names are one registry
    assert s.registries.lookup("registry.corp.example", 5000) is not None and s.registries.lookup("quay.io") is None
    assert s.pin_time == 1795773600.0
    assert s.tls.ca_file == "/etc/ca.pem" and not s.tls.insecure
    assert (s.upstream_concurrency, s.upstream_rate, s.upstream_burst) == (16, 20, 40)


def test_only_the_options_that_changed_are_parsed_again():
    first = Settings.parse(options(hubcache_max_size="1g"), updated=())
    # An option that did not change is not read again, even if its value would no longer parse.
    later = Settings.parse(options(hubcache_max_size="not a size", hubcache_tag_ttl=10), {"hubcache_tag_ttl"}, first)
    assert later.tag_ttl == 10 and later.max_size == 1 << 30
    assert first.tag_ttl == 300  # frozen: the old settings object is unchanged


@pytest.mark.parametrize("option, value, says", [
    ("hubcache_max_size", "lots", "hubcache_max_size: not a size: 'lots'"),
    ("hubcache_direct_min", "big", "(or off)"),
    ("hubcache_tag_ttl", -1, "hubcache_tag_ttl: must be >= 0, not -1"),
    ("hubcache_upstream_timeout", 0, "hubcache_upstream_timeout: must be >= 1, not 0"),
    ("hubcache_upstream_rate", -1, "hubcache_upstream_rate: must be >= 0, not -1"),
    ("hubcache_metrics_clients", -1, "hubcache_metrics_clients: must be >= 0, not -1"),
    ("hubcache_upstream_burst", 0, "hubcache_upstream_burst: must be >= 1, not 0"),
    ("hubcache_metrics_listen", "9090", "must be host:port, not '9090'"),
    ("hubcache_pin_time", "yesterday", "hubcache_pin_time: not a time: 'yesterday'"),
    ("hubcache_offline_private", "maybe", "must be refuse or allow, not 'maybe'"),
    ("hubcache_auth_realm", "http://auth.docker.io/token", "must be an https URL"),
    ("hubcache_pool_private", ["myorg/*", "http://x"], "not a repository or namespace pattern: 'http://x'"),
    ("mode", ["upstream:https://proxy.corp:3128"], "over http:// only"),
    ("upstream_auth", "nocolon", "upstream_auth: must be user:password (the value is not shown)"),
    ("hubcache_parent", "mirror.internal", "hubcache_parent: not a parent registry's root URL: 'mirror.internal'"),
    ("hubcache_parent_tags", "registry", "hubcache_parent_tags: must be hub or parent, not 'registry'"),
    ("hubcache_parent_fallback", "no", "hubcache_parent_fallback: must be hub or never, not 'no'"),
    ("hubcache_parent_prefix", "Bad Prefix", "hubcache_parent_prefix: not a repository prefix"),
])
def test_a_bad_value_is_refused_naming_the_option_and_the_value(option, value, says):
    with pytest.raises(SettingsError) as e:
        Settings.parse(options(**{option: value}), updated=())
    assert says in str(e.value)


def test_pool_private_takes_globs_per_namespace_or_repository():
    s = Settings.parse(options(hubcache_pool_private=["MyOrg/*,otherorg/app", "postgres"]), updated=())
    assert s.pool_private == ("myorg/*", "otherorg/app", "library/postgres")


def test_pool_private_names_other_registries_repositories_qualified():
    corp = "registry.corp.example:5000"
    s = Settings.parse(options(hubcache_pool_private=[f"{corp}/team/*,GHCR.io/acme/*", "docker.io/myorg/*",
                                                      "docker.io/postgres"]), updated=())
    assert s.pool_private == (f"{corp}/team/*", "ghcr.io/acme/*", "myorg/*", "library/postgres")
    for bad in (corp, f"{corp}/", "ghcr.io//x", "ghcr.io/a:b", "http://x", "docker.io/a:b"):
        with pytest.raises(SettingsError, match="not a repository or namespace pattern"):
            Settings.parse(options(hubcache_pool_private=[bad]), updated=())


def test_json_logs_can_be_set_back_to_text_at_run_time():
    import logging

    from hubcache import logs

    handler, text = logging.StreamHandler(), logging.Formatter("%(message)s")
    handler.setFormatter(text)
    logging.getLogger().addHandler(handler)
    try:
        logs.configure("json", "info")
        assert isinstance(handler.formatter, logs.JsonFormatter)
        logs.configure("text", "info")
        assert handler.formatter is text
    finally:
        logging.getLogger().removeHandler(handler)


@pytest.mark.parametrize("modes, expected", [
    (["regular"], None),
    (["upstream:http://proxy.corp:3128"], ("proxy.corp", 3128)),
    (["upstream:proxy.corp:3128"], ("proxy.corp", 3128)),
    (["upstream:http://proxy.corp"], ("proxy.corp", 80)),  # mitmproxy's default port for http
    (["regular@8080", "upstream:http://10.1.2.3:8080@8081"], ("10.1.2.3", 8080)),
    (["upstream:http://[fd00::1]:3128"], ("fd00::1", 3128)),
])
def test_the_egress_proxy_comes_from_mitmproxys_upstream_mode(modes, expected):
    s = Settings.parse(options(mode=modes, upstream_auth="runner:pw"), updated=())
    assert s.egress_proxy == expected
    if expected:
        assert s.egress is not None and (s.egress.host, s.egress.port) == expected
        assert s.egress.authorization() == "Basic cnVubmVyOnB3"
    else:
        assert s.egress is None


def test_the_proxy_login_is_never_shown():
    s = Settings.parse(options(mode=["upstream:http://proxy.corp:3128"], upstream_auth="runner:s3cret"), updated=())
    assert "s3cret" not in repr(s) and "s3cret" not in repr(s.egress) and "s3cret" not in str(s.egress)


def test_the_parent_is_checked_against_its_own_ca_when_one_is_given():
    plain = Settings.parse(options(hubcache_parent="https://mirror.internal", ssl_verify_upstream_trusted_ca="/etc/hub-ca.pem"),
                           updated=())
    assert plain.parent == (("docker.io", "https://mirror.internal"),)
    assert plain.parent_tls == plain.tls  # no CA of its own: verified as the registries are
    own = Settings.parse(options(hubcache_parent="https://mirror.internal", hubcache_parent_ca="/etc/parent-ca.pem",
                                 ssl_verify_upstream_trusted_ca="/etc/hub-ca.pem"), updated=())
    assert own.parent_tls.also_ca == "/etc/parent-ca.pem"  # besides the registries' trust: S3 redirects verify
    assert own.parent_tls.ca_file == "/etc/hub-ca.pem"
    assert own.tls.also_ca is None
    assert own.tls.ca_file == "/etc/hub-ca.pem"  # the registries' verification is not changed


def test_a_parent_is_docker_hubs_or_one_per_registry():
    from hubcache.settings import parse_parent_prefix as _parent_prefix
    from hubcache.settings import parse_parents as _parents

    assert _parents("https://mirror.internal:5000/") == (("docker.io", "https://mirror.internal:5000"),)
    assert _parents("docker.io=https://a.internal, quay.io=http://b.internal:5000") == (
        ("docker.io", "https://a.internal"), ("quay.io", "http://b.internal:5000"))
    assert _parents("") == ()
    for bad, says in [("mirror.internal", "not a parent registry's root URL"),
                      ("https://mirror.internal/v2/", "not a parent registry's root URL"),
                      ("docker.io=https://a,docker.io=https://b", "two parents for docker.io")]:
        with pytest.raises(ValueError, match=says):
            _parents(bad)
    assert _parent_prefix("/dockerhub-proxy/") == "dockerhub-proxy"
    with pytest.raises(ValueError, match="not a repository prefix"):
        _parent_prefix("Bad Prefix")
