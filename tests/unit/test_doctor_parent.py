"""`hubcache doctor --parent`: what the parent's answers mean (tools/doctor/parentchecks.judge) and
why a request got none (hooks/parentprobe), without a network."""

from __future__ import annotations

import socket
import ssl

import pytest

from hubcache.hooks import parentprobe
from hubcache.hooks.parentprobe import ParentFacts, Reply
from hubcache.metrics import Metrics
from hubcache.model import Kind, Route
from hubcache.tools.doctor import parentchecks
from hubcache.tools.doctor.hub import pull_target
from hubcache.upstream import client, tokens
from hubcache.upstream.parent import Parent, ParentError

ROOT = "https://mirror.internal:5000"
WHERE = f"{ROOT} (docker.io's parent)"
LOGIN = "/etc/hubcache/parent-login"
IMAGE = pull_target("library/alpine:3")
UP = dict(addresses=("10.0.0.9",))
BASIC = Reply(401, {"www-authenticate": 'Basic realm="parent"'})


def facts(**kw) -> ParentFacts:
    return ParentFacts("docker.io", ROOT, **{**UP, **kw})


def lines(f: ParentFacts, login: str = LOGIN, image=None, found=None) -> list[str]:
    return [c.line() for c in parentchecks.judge(f, "/etc/hubcache/parent-ca.pem", login, image, found)]


def test_all_ok_with_a_basic_login_and_the_image():
    f = facts(anonymous=BASIC, challenge="basic", with_login=Reply(200),
              image=Reply(200, {"docker-content-digest": "sha256:ab"}))
    assert lines(f, image=IMAGE) == [
        f"OK   parent reachable: {WHERE}: mirror.internal resolves to 10.0.0.9; port 5000: TLS, certificate verified "
        "by the usual trust and --parent-ca /etc/hubcache/parent-ca.pem",
        f"OK   parent login: {WHERE}: GET /v2/ 401 (Basic), 200 with the login in {LOGIN}",
        f"OK   parent pull: {WHERE}: HEAD docker.io/library/alpine:3 200 sha256:ab (the parent has it, or reaches "
        "docker.io for it)",
    ]


def test_a_parent_that_asks_no_login():
    out = lines(facts(anonymous=Reply(200)), login="")
    assert out[1] == f"OK   parent login: {WHERE}: GET /v2/ 200, no login asked"
    assert len(out) == 2  # no --image: no pull line


@pytest.mark.parametrize("reply, detail, fix", [
    (Reply(cause=parentprobe.CERTIFICATE, error="unable to get local issuer certificate"),
     "TLS with mirror.internal:5000: its certificate is not trusted by the usual trust and --parent-ca "
     "/etc/hubcache/parent-ca.pem (unable to get local issuer certificate)", "give hubcache_parent_ca the parent's CA"),
    (Reply(cause=parentprobe.CERTIFICATE, error="Hostname mismatch, certificate is not valid for 'mirror.internal'."),
     "its certificate does not name mirror.internal", "give the parent a certificate for mirror.internal"),
    (Reply(cause=parentprobe.CONNECT, error="Connection refused"),
     "mirror.internal resolves to 10.0.0.9; port 5000: Connection refused", "start the parent registry"),
    (Reply(cause=parentprobe.TLS, error="WRONG_VERSION_NUMBER"), "TLS with mirror.internal:5000 failed",
     "a plain-http parent is http:// in hubcache_parent"),
])
def test_unreachable_parent_one_fail_and_the_rest_skipped(reply, detail, fix):
    out = lines(facts(anonymous=reply), image=IMAGE)
    assert out[0].startswith(f"FAIL parent reachable: {WHERE}: ") and detail in out[0] and fix in out[0], out[0]
    assert out[1].startswith("SKIP parent login") and out[2].startswith("SKIP parent pull")


def test_a_name_that_does_not_resolve():
    out = lines(ParentFacts("docker.io", ROOT, resolve_error="Name or service not known"))
    assert out[0] == (f"FAIL parent reachable: {WHERE}: mirror.internal does not resolve (Name or service not known) "
                      "-- fix: put mirror.internal in this host's DNS (or /etc/hosts), or correct hubcache_parent")


def test_login_asked_and_none_given_names_the_option():
    out = lines(facts(anonymous=BASIC, challenge="basic"), login="")
    assert out[1].startswith(f"FAIL parent login: {WHERE}: GET /v2/ 401: it asks for a login (Basic) -- fix: give "
                             "hubcache_parent_credentials a file (mode 0600)"), out[1]


@pytest.mark.parametrize("with_login, said", [
    (Reply(401), "(401 with it)"),
    (Reply(cause=parentprobe.REFUSED, error="token endpoint answered 401 for repository:library/alpine:pull as bot"),
     "(token endpoint answered 401"),
])
def test_a_refused_login_basic_or_at_the_token_realm(with_login, said):
    bearer = Reply(401, {"www-authenticate": 'Bearer realm="https://auth.internal/token",service="parent"'})
    f = facts(anonymous=bearer, challenge="bearer", realm="https://auth.internal/token", with_login=with_login)
    out = lines(f, image=IMAGE)
    assert out[1].startswith(f"FAIL parent login: {WHERE}: GET /v2/ 401 (a token of https://auth.internal/token); "
                             f"the parent refused the login in {LOGIN} {said}"), out[1]
    assert out[1].endswith(f"-- fix: put the parent's own login (its htpasswd user or token account, never a "
                           f"registry's) in {LOGIN}, one line user:password")
    assert out[2].startswith("SKIP parent pull")


@pytest.mark.parametrize("error, fix", [
    ("parent login file /x has mode 0644: others can read it; run: chmod 600 /x", f"chmod 600 {LOGIN}"),
    ("hubcache_parent_credentials: the parent is plain http, its login would cross the network in clear (serve it "
     "over https)", "serve the parent over https"),
    ("parent login file /x must hold one line user:password (its content is not shown)",
     "put one line user:password in it, mode 0600"),
])
def test_a_login_file_hubcache_would_refuse(error, fix):
    out = lines(facts(anonymous=Reply(200), login_error=error))
    assert out[1].startswith(f"FAIL parent login: {WHERE}: {error} (hubcache does not start with it) -- fix: {fix}"), out[1]


def test_an_unreadable_ca_file():
    out = lines(ParentFacts("docker.io", ROOT, setup_error="hubcache_parent_ca: cannot read /nope"))
    assert out[0].startswith(f"FAIL parent reachable: {WHERE}: hubcache_parent_ca: cannot read /nope -- fix: ")


@pytest.mark.parametrize("status, found, detail, fix", [
    (500, None, "HEAD docker.io/library/alpine:3 500", "the parent cannot reach its upstream: check its own log"),
    (404, True, "HEAD docker.io/library/alpine:3 404, though the test pull above found it on docker.io",
     "the parent cannot reach its upstream: check its own log"),
    (404, False, "404: neither the parent has it nor did it get it from docker.io",
     "pass --image of an image that exists on docker.io"),
    (403, None, "HEAD docker.io/library/alpine:3 403", "give the parent's login pull access to library/alpine"),
])
def test_what_the_parent_answers_for_the_image(status, found, detail, fix):
    out = lines(facts(anonymous=Reply(200), image=Reply(status)), login="", image=IMAGE, found=found)
    assert out[2].startswith(f"FAIL parent pull: {WHERE}: ") and detail in out[2] and f"-- fix: {fix}" in out[2], out[2]


def test_plain_http_parent_and_an_address_for_a_name():
    f = ParentFacts("quay.io", "http://10.0.0.9:5000", addresses=("10.0.0.9",), anonymous=Reply(200))
    out = [c.line() for c in parentchecks.judge(f)]
    assert out[0] == ("OK   parent reachable: http://10.0.0.9:5000 (quay.io's parent): 10.0.0.9; port 5000: plain http "
                      "(no login is sent to it)")


def test_bad_parent_option_and_bad_image_are_one_line_each():
    [c] = parentchecks.check_all("ftp://mirror")
    assert c.ok is False and "not a parent registry's root URL" in c.detail
    [c] = parentchecks.check_all(ROOT, image="UPPER/case:1")
    assert c.ok is False and c.name == "parent pull"


def test_routes_and_settings_as_hubcache_names_them():
    hub = parentchecks.manifest_route(IMAGE)
    assert hub == Route(Kind.MANIFEST, "library/alpine", "3", registry="docker.io")
    ghcr = parentchecks.manifest_route(pull_target("ghcr.io/org/app:v1"))
    assert (ghcr.repository, ghcr.remote, ghcr.registry, ghcr.reference) == ("ghcr.io/org/app", "org/app", "ghcr.io", "v1")
    s = parentchecks.parent_settings("registry.corp.example:5000", ROOT, "/ca.pem", LOGIN, "hub-proxy", "/up.pem")
    assert s.registries.lookup("registry.corp.example", 5000) is not None  # a registry hubcache serves
    assert s.parent_tls.also_ca == "/ca.pem" and s.parent_tls.ca_file == "/up.pem"
    parent = Parent(Metrics())
    parent.configure(parentchecks.parent_settings("docker.io", "https://mirror.internal"))  # accepted as hubcache would
    assert parent.url(hub, "3") == "https://mirror.internal/v2/library/alpine/manifests/3"


def _raised(cause: BaseException) -> client.UpstreamError:
    try:
        try:
            raise cause
        except BaseException as e:
            raise client.UpstreamError(f"GET https://mirror.internal/v2/: {e}") from e
    except client.UpstreamError as outer:
        try:
            raise ParentError(str(outer)) from outer
        except ParentError as e:
            return e


def test_why_no_answer_from_the_exception_chain():
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "self-signed certificate in certificate chain"
    assert parentprobe._no_answer(_raised(verify)) == Reply(0, {}, parentprobe.CERTIFICATE,
                                                            "self-signed certificate in certificate chain")
    refused = ConnectionRefusedError(111, "Connect call failed ('127.0.0.20', 443)")
    assert parentprobe._no_answer(_raised(refused)) == Reply(0, {}, parentprobe.CONNECT, "Connection refused")
    assert parentprobe._no_answer(_raised(socket.gaierror(-2, "Name or service not known"))).cause == parentprobe.RESOLVE
    assert parentprobe._no_answer(_raised(TimeoutError())).cause == parentprobe.TIMEOUT
    assert parentprobe._no_answer(ParentError("answered 502", 502)) == Reply(502, {}, "", "answered 502")
    token = tokens.TokenRefused("token endpoint answered 401 for repository:x:pull as bot", 401)
    assert parentprobe._no_answer(token).cause == parentprobe.REFUSED
    assert parentprobe._no_answer(client.UpstreamError("realm is not https")).cause == parentprobe.OTHER
