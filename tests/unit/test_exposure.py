"""Who may reach the proxy (decide/exposure, hooks/access): beyond loopback only with a login
from an htpasswd file or hubcache_open_proxy=allow; a login on the command line is refused; the
CONNECTs mitmproxy relays untouched, and those proxyauth refused, are each one line naming the
client, never a password."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from hubcache.decide import exposure
from hubcache.hooks import access
from hubcache.settings import DIRECT_HOST, allow_hosts_pattern


@pytest.mark.parametrize("host, addresses, loopback", [
    ("127.0.0.1", ["127.0.0.1"], True),
    ("127.0.0.53", ["127.0.0.53"], True),
    ("::1", ["::1"], True),
    ("localhost", ["127.0.0.1", "::1"], True),
    ("", [], False),  # mitmproxy's "": every address
    ("0.0.0.0", ["0.0.0.0"], False),
    ("::", ["::"], False),
    ("10.0.0.5", ["10.0.0.5"], False),
    ("myhost", ["127.0.1.1", "10.0.0.5"], False),  # one address beyond loopback is enough
    ("nowhere.invalid", [], False),  # does not resolve: not shown to be loopback
])
def test_only_addresses_that_are_all_loopback_count_as_loopback(host, addresses, loopback):
    assert exposure.is_loopback(host, addresses) is loopback


@pytest.mark.parametrize("proxyauth, kind", [
    (None, "none"), ("", "none"), ("any", "any"), ("@/etc/hubcache/htpasswd", "file"),
    ("runner:s3cret", "inline"), ("ldap:ldap.corp:cn=bind,dc=corp:bindpw:ou=users,dc=corp", "inline"),
])
def test_login_kinds(proxyauth, kind):
    assert exposure.login_kind(proxyauth) == kind


def test_a_login_on_the_command_line_is_refused_without_repeating_it():
    why = exposure.inline_login_refusal("runner:s3cret")
    assert why and "ps" in why and "--set proxyauth=@/etc/hubcache/htpasswd" in why and "hubcache htpasswd /etc/hubcache/htpasswd runner" in why
    assert "s3cret" not in why
    assert exposure.inline_login_refusal("@/etc/hubcache/htpasswd") is None
    assert exposure.inline_login_refusal(None) is None and exposure.inline_login_refusal("any") is None


def test_an_htpasswd_file_others_can_read_is_refused_as_every_secrets_file():
    assert exposure.htpasswd_refusal("/etc/hubcache/htpasswd", 0o100600) is None
    assert exposure.htpasswd_refusal("/etc/hubcache/htpasswd", 0o100400) is None
    why = exposure.htpasswd_refusal("/etc/hubcache/htpasswd", 0o100644)
    assert why and "0644" in why and "chmod 600 /etc/hubcache/htpasswd" in why
    assert "cannot read" in (exposure.htpasswd_refusal("/nope", None) or "")


def test_an_open_proxy_beyond_loopback_is_refused_with_the_commands_that_fix_it():
    why = exposure.open_proxy_refusal([("0.0.0.0", 3128)], None, "refuse")
    assert why and "open proxy" in why and "0.0.0.0" in why and "port 3128" in why
    assert "--set proxyauth=@/etc/hubcache/htpasswd" in why and "--set hubcache_open_proxy=allow" in why
    assert "hubcache htpasswd /etc/hubcache/htpasswd runner" in why and "HTTPS_PROXY=http://runner:PASSWORD@THIS-HOST:3128" in why
    assert "every address" in (exposure.open_proxy_refusal([("", 8080)], None, "refuse") or "")
    # proxyauth=any takes every password: it names clients, it guards nothing
    assert "proxyauth=any" in (exposure.open_proxy_refusal([("0.0.0.0", 3128)], "any", "refuse") or "")


@pytest.mark.parametrize("exposed, proxyauth, open_proxy", [
    ([], None, "refuse"),  # loopback only
    ([("0.0.0.0", 3128)], "@/etc/hubcache/htpasswd", "refuse"),  # a login
    ([("0.0.0.0", 3128)], None, "allow"),  # the operator's word
])
def test_what_may_start(exposed, proxyauth, open_proxy):
    assert exposure.open_proxy_refusal(exposed, proxyauth, open_proxy) is None


def test_interception_is_mitmproxys_rule_on_the_connect_host():
    allow = [allow_hosts_pattern(["registry-1.docker.io", "auth.docker.io", "registry.corp.example:5000"])]
    assert exposure.intercepted("registry-1.docker.io", 443, allow, [])
    assert exposure.intercepted("Registry-1.Docker.IO", 443, allow, [])
    assert exposure.intercepted("registry.corp.example", 5000, allow, [])
    assert not exposure.intercepted("registry.corp.example", 443, allow, [])
    assert not exposure.intercepted("gitlab.example.com", 443, allow, [])
    assert not exposure.intercepted("registry-1.docker.io", 443, [], [r"docker\.io"])
    assert exposure.intercepted("anything", 443, [], [])  # neither set: mitmproxy intercepts everything


def options(**overrides):
    values = dict(mode=["regular"], listen_host="127.0.0.1", listen_port=3128, proxyauth=None,
                  hubcache_open_proxy="refuse", allow_hosts=[allow_hosts_pattern(["registry-1.docker.io"])],
                  ignore_hosts=[])
    values.update(overrides)
    return SimpleNamespace(**values)


def test_every_listener_of_mitmproxys_modes_is_checked(tmp_path):
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("runner:$2b$04$abcdefghijklmnopqrstuuJ3oVy0e4ssvlCnmpz4dM6H7TiG6Qd1W\n")
    htpasswd.chmod(0o600)
    opts = options(mode=["regular", "socks5@0.0.0.0:1080", "upstream:http://proxy.corp:3128@127.0.0.1:3129", "local"])
    assert access.listeners(opts) == [("127.0.0.1", 3128), ("0.0.0.0", 1080), ("127.0.0.1", 3129)]
    assert "0.0.0.0" in (access.refusal(opts) or "")
    assert access.refusal(options()) is None
    assert access.refusal(options(listen_host="localhost")) is None
    assert "open proxy" in (access.refusal(options(listen_host="")) or "")
    assert "cannot read" in (access.refusal(options(listen_host="0.0.0.0", proxyauth="@/nonexistent/htpasswd")) or "")
    assert access.refusal(options(listen_host="0.0.0.0", proxyauth=f"@{htpasswd}")) is None
    htpasswd.chmod(0o644)
    assert "chmod 600" in (access.refusal(options(listen_host="0.0.0.0", proxyauth=f"@{htpasswd}")) or "")
    assert access.refusal(options(listen_host="0.0.0.0", hubcache_open_proxy="allow")) is None
    assert "ps" in (access.refusal(options(proxyauth="runner:pw")) or "")  # on loopback too: ps shows it


def connect(host: str, port: int, login: str | None = None, refused: bool = False) -> http.HTTPFlow:
    f = tflow.tflow(req=tutils.treq(method=b"CONNECT", host=host, port=port, path=b"", authority=f"{host}:{port}".encode()))
    f.client_conn.peername = ("10.0.0.7", 51234)
    if login:
        f.metadata["proxyauth"] = (login, "the-password")
    if refused:
        f.response = http.Response.make(407, b"", {"Proxy-Authenticate": 'Basic realm="mitmproxy"'})
    return f


def events(caplog, name):
    return [r for r in caplog.records if getattr(r, "event", None) == name]


def test_a_tunnel_is_one_line_naming_the_client_and_an_intercepted_host_none(caplog):
    caplog.set_level(logging.INFO, logger="hubcache")
    access.connect_seen(connect("gitlab.example.com", 443, login="runner7"), options())
    access.connect_seen(connect("pypi.org", 443), options())
    access.connect_seen(connect("registry-1.docker.io", 443, login="runner7"), options())  # its requests are logged
    access.connect_seen(connect(DIRECT_HOST, 443, login="runner7"), options())  # the blob listener logs its own
    lines = events(caplog, "tunnel")
    assert [(r.fields["client"], r.fields["host"]) for r in lines] == [
        ("runner7@10.0.0.7:51234", "gitlab.example.com"), ("10.0.0.7:51234", "pypi.org")]
    assert "tunnel gitlab.example.com:443 for runner7@10.0.0.7:51234" in lines[0].getMessage()
    assert "the-password" not in caplog.text


def test_a_refused_login_is_a_warning_naming_the_address_with_the_fix(caplog):
    caplog.set_level(logging.INFO, logger="hubcache")
    access.connect_seen(connect("gitlab.example.com", 443, refused=True), options())
    (line,) = events(caplog, "proxy_login_refused")
    assert line.levelno == logging.WARNING and line.fields["client"] == "10.0.0.7:51234"
    assert "HTTPS_PROXY=http://USER:PASSWORD@" in line.getMessage()
    assert events(caplog, "tunnel") == []


def test_a_plain_http_request_relayed_is_one_line_naming_the_client_and_host_not_path(caplog):
    caplog.set_level(logging.INFO, logger="hubcache")
    f = tflow.tflow(req=tutils.treq(scheme=b"http", host="deb.example.org", port=80, path=b"/pool/x?token=abc"))
    f.client_conn.peername = ("10.0.0.7", 51234)
    f.metadata["proxyauth"] = ("runner7", "the-password")
    access.http_seen(f)
    refused = tflow.tflow(req=tutils.treq(scheme=b"http", host="deb.example.org", port=80))
    refused.response = http.Response.make(407, b"")
    access.http_seen(refused)
    access.http_seen(tflow.tflow(req=tutils.treq(scheme=b"https")))  # intercepted TLS: its own lines
    (line,) = events(caplog, "relayed_http")
    assert line.fields["client"] == "runner7@10.0.0.7:51234" and line.fields["host"] == "deb.example.org"
    assert "token=abc" not in caplog.text and "the-password" not in caplog.text
    assert len(events(caplog, "proxy_login_refused")) == 1


def test_costly_bcrypt_entries_are_named_for_the_warning():
    text = ("# logins\nfast:$2b$05$abcdefghijklmnopqrstuu\nslow:$2y$12$abcdefghijklmnopqrstuu\n"
            "edge:$2a$08$abcdefghijklmnopqrstuu\nsha:{SHA}qUqP5cyxm6YcTAhz05Hph5gvu9M=\n")
    assert exposure.slow_logins(text) == [("slow", 12)]


def test_the_slow_login_warning_names_users_and_the_fix_never_a_hash(caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="hubcache")
    path = tmp_path / "htpasswd"
    path.write_text("runner:$2b$12$abcdefghijklmnopqrstuuJ3oVy0e4ssvlCnmpz4dM6H7TiG6Qd1W\n")
    access.warn_slow_logins(options(proxyauth=f"@{path}"))
    (line,) = events(caplog, "slow_proxy_logins")
    assert line.fields["logins"] == ["runner"] and f"hubcache htpasswd {path} USER" in line.getMessage()
    assert "$2b$" not in caplog.text
    access.warn_slow_logins(options(proxyauth=None))
    assert len(events(caplog, "slow_proxy_logins")) == 1
