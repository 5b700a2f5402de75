"""Stored logins of registries other than Docker Hub: where they are read from (the credentials
file's `registry`, config.json per host), which repositories they may fetch for a client without
a login (the pool rule per registry), and where their secret goes (that registry's realm over
https, or that registry itself when it asks for Basic)."""

from __future__ import annotations

import asyncio
import base64
import json
import os

import pytest

from hubcache.decide import access
from hubcache.upstream import tokens
from hubcache.upstream.client import UpstreamResponse
from hubcache.upstream.credentials import Credential, CredentialsError, from_docker_config, from_file, load, registry_name
from hubcache.upstream.registryauth import RegistryAuth

SECRET = "c0rp-s3cret"
CORP = "registry.corp.example:5000"


def write(path, text, mode=0o600):
    path.write_text(text)
    os.chmod(path, mode)
    return path


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# -- where logins are read from ------------------------------------------------------------------

def test_the_credentials_file_names_each_accounts_registry_docker_hub_by_default(tmp_path):
    f = write(tmp_path / "c.toml", '[[accounts]]\nusername = "hubber"\ntoken = "t1"\n'
                                   f'[[accounts]]\nusername = "ci"\npassword = "{SECRET}"\nregistry = "https://{CORP}/"\n'
                                   '[[accounts]]\nusername = "ci"\ntoken = "t3"\nregistry = "GHCR.io"\n'
                                   '[[accounts]]\nusername = "hub2"\ntoken = "t4"\nregistry = "index.docker.io"\n')
    got = from_file(f)
    assert [(c.account, c.registry) for c in got] == [("hubber", "docker.io"), ("ci", CORP), ("ci", "ghcr.io"),
                                                      ("hub2", "docker.io")]
    assert [c.name for c in got] == ["hubber", f"ci@{CORP}", "ci@ghcr.io", "hub2"]
    assert str(got[1]) == f"ci@{CORP} (from {f})" and SECRET not in repr(got[1]) + str(got[1])
    # the same account name on two registries is two logins; on one registry the first source wins
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"auths": {CORP: {"auth": b64("ci:other")}, "quay.io": {"auth": b64("ci:q")}}}))
    loaded = load(str(f), {}, str(cfg))
    assert [(c.name, c.secret) for c in loaded] == [("hubber", "t1"), (f"ci@{CORP}", SECRET), ("ci@ghcr.io", "t3"),
                                                    ("hub2", "t4"), ("ci@quay.io", "q")]


@pytest.mark.parametrize("bad", ["not a host", "https://", "ghcr.io:x", "user@ghcr.io"])
def test_a_registry_that_is_no_host_is_refused_without_showing_the_secret(tmp_path, bad):
    f = write(tmp_path / "c.toml", f'[[accounts]]\nusername = "ci"\ntoken = "{SECRET}"\nregistry = "{bad}"\n')
    with pytest.raises(CredentialsError, match="account #1 has registry") as e:
        from_file(f)
    assert SECRET not in str(e.value)


def test_registry_names_as_config_json_spells_them():
    assert registry_name("https://index.docker.io/v1/") == "docker.io"
    assert registry_name("registry-1.docker.io") == "docker.io"
    assert registry_name("https://ghcr.io") == "ghcr.io"
    assert registry_name(f"https://{CORP}/v2/") == CORP
    assert registry_name("quay.io:443") == "quay.io"
    assert registry_name("") is None and registry_name("a b") is None


def test_config_json_is_read_per_host_auths_helpers_and_the_store(tmp_path):
    cfg = tmp_path / "config.json"
    ecr = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
    cfg.write_text(json.dumps({
        "auths": {"https://index.docker.io/v1/": {"auth": b64("dave:hubpw")},
                  CORP: {"auth": b64(f"ci:{SECRET}")},
                  "https://quay.io": {},  # docker login with a credsStore leaves an empty entry
                  "ghcr.io": {"username": "octo", "password": "ghp_x"},
                  "nowhere.example": {}},
        "credHelpers": {ecr: "ecr-login", "gcr.io": "gcloud"},
        "credsStore": "pass"}))
    calls = []

    def helper(name, server):
        calls.append((name, server))
        return {"ecr-login": {"Username": "AWS", "Secret": "ecr-token"}, "gcloud": None,
                "pass": {"Username": "quayer", "Secret": "q"} if server == "https://quay.io" else None}[name]

    got = from_docker_config(cfg, helper)
    assert [(c.name, c.secret, c.source) for c in got] == [
        ("dave", "hubpw", str(cfg)), (f"AWS@{ecr}", "ecr-token", "docker-credential-ecr-login"),
        (f"ci@{CORP}", SECRET, str(cfg)), ("quayer@quay.io", "q", "docker-credential-pass"),
        ("octo@ghcr.io", "ghp_x", str(cfg))]
    assert calls == [("ecr-login", ecr), ("gcloud", "gcr.io"), ("pass", "https://quay.io"), ("pass", "nowhere.example")]

    # only registries hubcache serves are asked for (no helper run for the others)
    calls.clear()
    got = from_docker_config(cfg, helper, wanted=lambda r: r in ("docker.io", CORP))
    assert [c.name for c in got] == ["dave", f"ci@{CORP}"] and calls == []


def test_a_helper_that_cannot_run_for_another_registry_is_a_problem_not_a_stop(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"credHelpers": {"gcr.io": "gcloud"}, "auths": {CORP: {"auth": b64(f"ci:{SECRET}")}}}))

    def broken(name, server):
        raise CredentialsError(f"credential helper docker-credential-{name} could not run: FileNotFoundError")

    problems: list[str] = []
    assert [c.name for c in from_docker_config(cfg, broken, problems=problems)] == [f"ci@{CORP}"]
    assert problems == ["no stored login for gcr.io: credential helper docker-credential-gcloud could not run: "
                        "FileNotFoundError"]
    with pytest.raises(CredentialsError):
        from_docker_config(cfg, broken)  # without a list to report to, as for Docker Hub's: it stops
    cfg.write_text(json.dumps({"credHelpers": {"docker.io": "gone"}}))
    with pytest.raises(CredentialsError):  # Docker Hub's helper failing stops hubcache, as before
        from_docker_config(cfg, broken, problems=[])


def test_an_auth_that_is_no_base64_is_refused_without_quoting_it(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"auths": {CORP: {"auth": SECRET + "!!"}}}))
    with pytest.raises(CredentialsError, match=f"the auth of {CORP}") as e:
        from_docker_config(cfg)
    assert SECRET not in str(e.value)


# -- which repositories a stored login may fetch for a client without one -------------------------

def test_pool_private_patterns_name_one_registry_each():
    pool = ("myorg/*", f"{CORP}/team/*", "ghcr.io/acme/app")
    assert access.pool_may_fetch("myorg/app", False, pool)
    assert access.pool_may_fetch(f"{CORP}/team/app", False, pool)
    assert access.pool_may_fetch(f"{CORP}/team/sub/app", False, pool)  # a glob's * spans components
    assert not access.pool_may_fetch(f"{CORP}/other/app", False, pool)
    assert not access.pool_may_fetch("registry.corp.example/team/app", False, pool)  # another port: another registry
    assert not access.pool_may_fetch("ghcr.io/myorg/app", False, pool)  # Docker Hub's myorg/* is not ghcr's
    assert not access.pool_may_fetch("ghcr.io/acme/app2", False, pool)
    assert not access.pool_may_fetch("ghcr.io/app", False, ("*/app",))  # * never crosses into another registry
    assert access.pool_may_fetch("ghcr.io/x/y", True, ())  # public: anonymous access works


def test_an_empty_basic_login_is_no_login():
    assert tokens.brings_no_login("")
    assert tokens.brings_no_login("Basic Og==")  # skopeo without a login, at a Basic registry
    assert tokens.brings_no_login("Bearer hubcache.abc")
    assert not tokens.brings_no_login("Basic " + b64("ci:pw"))
    assert not tokens.brings_no_login("Basic " + b64("ci:"))  # a user name is a login
    assert not tokens.brings_no_login("Bearer upstream-token")
    assert not tokens.brings_no_login("Basic !!notbase64")


# -- what goes where ---------------------------------------------------------------------------

def jwt(name: str, actions: list[str]) -> str:
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{enc({'alg': 'RS256'})}.{enc({'access': [{'type': 'repository', 'name': name, 'actions': actions}]})}.sig"


class Registry:
    """A registry's answers as RegistryAuth sees them, and every request it was sent."""

    def __init__(self, challenge: str, public: tuple[str, ...] = (), opaque: bool = False) -> None:
        self.challenge, self.public, self.opaque = challenge, public, opaque
        self.sent: list[tuple[str, list[tuple[str, str]]]] = []

    async def request(self, method: str, url: str, headers: list[tuple[str, str]]) -> UpstreamResponse:
        self.sent.append((url, headers))
        if url.endswith("/v2/"):
            return UpstreamResponse(401, {"www-authenticate": self.challenge}, b"")
        scope = url.split("scope=repository%3A", 1)[1].split("%3A", 1)[0].replace("%2F", "/")
        who = dict(headers).get("Authorization", "")
        actions = ["pull"] if who or scope in self.public else []
        token = f"opaque-{len(self.sent)}" if self.opaque else jwt(scope, actions)
        return UpstreamResponse(200, {}, json.dumps({"token": token, "expires_in": 300}).encode())

    def carrying(self, secret_header: str) -> list[str]:
        return [url for url, headers in self.sent if secret_header in dict(headers).values()]


def auth_for(reg: Registry, name: str, logins: list[Credential], pool: tuple[str, ...] = ()) -> RegistryAuth:
    ra = RegistryAuth(reg.request)
    ra.configure(logins, pool)
    return ra


def run(coro):
    return asyncio.run(coro)


def test_a_basic_registry_gets_its_login_only_for_named_repositories():
    reg = Registry('Basic realm="corp registry"')
    login = Credential("ci", SECRET, "config.json", CORP)
    ra = auth_for(reg, CORP, [login], (f"{CORP}/team/*",))
    assert run(ra.authorization(CORP, "repository:team/app:pull")) == (login.basic(), f"ci@{CORP}")
    # not named: no anonymous access to compare with, so the client gets the registry's own 401
    assert run(ra.authorization(CORP, "repository:other/app:pull")) == ("", f"anonymous@{CORP}")
    assert [url for url, _ in reg.sent] == [f"https://{CORP}/v2/"]  # asked how to log in, once, with no login
    assert reg.carrying(login.basic()) == []  # hubcache's own requests to the registry carry it (the caller's)
    ra.configure([], (f"{CORP}/team/*",))
    assert run(ra.authorization(CORP, "repository:team/app:pull")) == ("", f"anonymous@{CORP}")


def test_a_bearer_registrys_login_token_is_asked_of_its_realm_for_public_or_named_repositories():
    reg = Registry('Bearer realm="https://ghcr.io/token",service="ghcr.io"', public=("pub/app",))
    login = Credential("octo", SECRET, "hub.toml", "ghcr.io")
    ra = auth_for(reg, "ghcr.io", [login], ("ghcr.io/acme/*",))

    auth, account = run(ra.authorization("ghcr.io", "repository:pub/app:pull"))  # public: the login may fetch it
    assert account == "octo@ghcr.io" and tokens.grants(auth.split()[1], "pub/app")
    auth, account = run(ra.authorization("ghcr.io", "repository:acme/secret:pull"))  # named
    assert account == "octo@ghcr.io"
    auth, account = run(ra.authorization("ghcr.io", "repository:other/private:pull"))  # neither: anonymous
    assert account == "anonymous@ghcr.io" and tokens.grants(auth.split()[1], "other/private") is False
    # the login went to the realm only, never for the repository nobody named
    with_login = reg.carrying(login.basic())
    assert with_login and all(u.startswith("https://ghcr.io/token?") for u in with_login)
    assert not [u for u in with_login if "other%2Fprivate" in u]


def test_a_token_that_does_not_say_keeps_the_login_for_named_repositories_only():
    reg = Registry('Bearer realm="https://quay.io/v2/auth",service="quay.io"', public=("pub/app",), opaque=True)
    login = Credential("robot", SECRET, "config.json", "quay.io")
    ra = auth_for(reg, "quay.io", [login], ("quay.io/team/*",))
    assert run(ra.authorization("quay.io", "repository:pub/app:pull"))[1] == "anonymous@quay.io"
    assert run(ra.authorization("quay.io", "repository:team/app:pull"))[1] == "robot@quay.io"


def test_a_login_of_one_registry_never_goes_to_another_even_one_sharing_its_realm():
    realm = 'Bearer realm="https://gitlab.com/jwt/auth",service="container_registry"'
    reg = Registry(realm, public=("pub/app",))
    login = Credential("gl", SECRET, "config.json", "registry.gitlab.com")
    ra = auth_for(reg, "registry.gitlab.com", [login], ())
    assert run(ra.authorization("registry.gitlab.com", "repository:pub/app:pull"))[1] == "gl@registry.gitlab.com"
    sent = len(reg.sent)
    assert run(ra.authorization("other.gitlab.example", "repository:pub/app:pull"))[1] == "anonymous@other.gitlab.example"
    assert reg.carrying(login.basic()) and not [u for u, h in reg.sent[sent:] if dict(h).get("Authorization")]


def test_no_login_for_a_registry_that_asks_for_none():
    async def open_registry(method, url, headers):
        return UpstreamResponse(200, {}, b"{}")

    ra = RegistryAuth(open_registry)
    ra.configure([Credential("u", SECRET, "x", "mcr.microsoft.com")], ("mcr.microsoft.com/*",))
    assert run(ra.authorization("mcr.microsoft.com", "repository:dotnet/runtime:pull")) == ("", "anonymous@mcr.microsoft.com")


def test_hubcache_splits_docker_hubs_pool_from_other_registries_logins(tmp_path, caplog):
    import logging

    from hubcache import registries
    from hubcache.metrics import Metrics
    from hubcache.settings import Settings
    from hubcache.upstream.dockerhub import DockerHub

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"auths": {"docker.io": {"auth": b64("hubber:hubpw")}, CORP: {"auth": b64(f"ci:{SECRET}")},
                                         "elsewhere.example": {"auth": b64("x:y")}}}))
    settings = Settings(registries=registries.parse([f"+{CORP}"]), docker_config=str(cfg),
                        pool_private=(f"{CORP}/team/*",))
    dh = DockerHub(Metrics())
    caplog.set_level(logging.INFO, logger="hubcache")
    dh.configure(settings, ["hubcache_docker_config"])
    assert [c.account for c in dh.accounts] == ["hubber"] and dh.account_names() == ["hubber"]
    assert list(dh.others.logins) == [CORP]  # elsewhere.example is not a registry hubcache serves
    assert dh.others.pool_private == (f"{CORP}/team/*",)
    assert f"ci@{CORP} (from {cfg})" in caplog.text and SECRET not in caplog.text and b64(f"ci:{SECRET}") not in caplog.text
    # only Docker Hub reports a pull budget: another registry's answers count nothing
    dh.observe_budget(f"ci@{CORP}", "GET", 200, {"ratelimit-limit": "100;w=60", "ratelimit-remaining": "1;w=60"},
                      registry=CORP)
    assert dh.budgets.shown(f"ci@{CORP}", 0) is None
    from prometheus_client import generate_latest

    assert f'account="ci@{CORP}"' not in generate_latest(dh.metrics.registry).decode()
