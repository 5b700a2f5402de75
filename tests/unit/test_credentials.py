import base64
import json
import os

import pytest

from hubcache.upstream import credentials
from hubcache.upstream.credentials import Credential, CredentialsError, from_docker_config, from_env, from_file, load

SECRET = "s3cr3t-t0ken-value"


def write(path, text, mode=0o600):
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_secret_never_in_repr_or_str():
    c = Credential("alice", SECRET, "env")
    assert SECRET not in repr(c) and SECRET not in str(c) and SECRET not in f"{c!r} {c}"
    assert base64.b64decode(c.basic().split()[1]).decode() == f"alice:{SECRET}"


def test_toml_and_json_files(tmp_path):
    toml = write(tmp_path / "c.toml", f'[[accounts]]\nusername = "alice"\ntoken = "{SECRET}"\n'
                                      f'[[accounts]]\nusername = "bob"\npassword = "pw"\n')
    assert [(c.account, c.secret) for c in from_file(toml)] == [("alice", SECRET), ("bob", "pw")]
    js = write(tmp_path / "c.json", json.dumps({"accounts": [{"username": "carol", "token": "t"}]}))
    assert [c.account for c in from_file(js)] == ["carol"]


def test_file_readable_by_others_is_refused_with_the_fix(tmp_path):
    f = write(tmp_path / "c.toml", f'[[accounts]]\nusername = "a"\ntoken = "{SECRET}"\n', mode=0o644)
    with pytest.raises(CredentialsError, match=r"mode 0644.*chmod 600") as e:
        from_file(f)
    assert SECRET not in str(e.value)


def test_parse_error_does_not_quote_the_file(tmp_path):
    f = write(tmp_path / "c.toml", f'[[accounts]]\nusername = "a"\ntoken = {SECRET}\n')
    with pytest.raises(CredentialsError) as e:
        from_file(f)
    assert SECRET not in str(e.value) and "line" in str(e.value)


def test_env():
    assert from_env({"HUBCACHE_DOCKERHUB_USERNAME": "a", "HUBCACHE_DOCKERHUB_TOKEN": SECRET})[0].secret == SECRET
    assert from_env({}) == []
    with pytest.raises(CredentialsError):
        from_env({"HUBCACHE_DOCKERHUB_USERNAME": "a"})


def test_docker_config_auths_and_helpers(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": base64.b64encode(b"dave:pw").decode()}}}))
    assert [(c.account, c.secret) for c in from_docker_config(cfg)] == [("dave", "pw")]
    cfg.write_text(json.dumps({"credHelpers": {"docker.io": "pass"}, "auths": {"docker.io": {"auth": "eDp5"}}}))
    calls = []

    def helper(name, server):
        calls.append((name, server))
        return {"Username": "erin", "Secret": SECRET}

    assert [c.account for c in from_docker_config(cfg, helper)] == ["erin"]
    assert calls == [("pass", "docker.io")]
    cfg.write_text(json.dumps({"credsStore": "desktop"}))
    assert from_docker_config(cfg, lambda n, s: None) == []
    assert from_docker_config(tmp_path / "missing.json") == []


def test_real_credential_helper_program(tmp_path, monkeypatch):
    helper = tmp_path / "docker-credential-test"
    helper.write_text(f'#!/bin/sh\nread server\n[ "$server" = "https://index.docker.io/v1/" ] || exit 1\n'
                      f'echo \'{{"ServerURL":"x","Username":"frank","Secret":"{SECRET}"}}\'\n')
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"credsStore": "test"}))
    assert [(c.account, c.secret) for c in from_docker_config(cfg)] == [("frank", SECRET)]


def test_load_merges_sources_in_order_without_duplicates(tmp_path):
    f = write(tmp_path / "c.toml", '[[accounts]]\nusername = "alice"\ntoken = "t1"\n')
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"auths": {"docker.io": {"username": "alice", "password": "other"}}}))
    got = load(str(f), {"HUBCACHE_DOCKERHUB_USERNAME": "bob", "HUBCACHE_DOCKERHUB_TOKEN": "t2"}, str(cfg))
    assert [(c.account, c.secret) for c in got] == [("alice", "t1"), ("bob", "t2")]


def test_a_tokens_claims_say_whether_it_may_pull_a_repository():
    import base64
    import json

    from hubcache.upstream.tokens import grants

    def jwt(claims):
        enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
        return f"{enc({'alg': 'RS256'})}.{enc(claims)}.sig"

    public = jwt({"access": [{"type": "repository", "name": "library/alpine", "actions": ["pull"]}]})
    refused = jwt({"access": [{"type": "repository", "name": "myorg/app", "actions": []}]})
    assert grants(public, "library/alpine") is True
    assert grants(public, "library/other") is False
    assert grants(refused, "myorg/app") is False
    assert grants("opaque-token", "myorg/app") is None
    assert grants("a.b.c", "myorg/app") is None  # not JSON claims


def test_egress_proxy_login_from_a_private_file(tmp_path):
    from hubcache.settings import Settings

    f = tmp_path / "proxy-login"
    f.write_text("runner:s3cret\n")
    f.chmod(0o600)
    s = Settings(egress_proxy=("proxy.corp", 3128), upstream_auth_file=str(f))
    egress = credentials.egress_with_login(s)
    assert egress is not None and egress.login == "runner:s3cret" and str(egress) == "http://proxy.corp:3128"
    assert credentials.egress_with_login(Settings(upstream_auth_file=str(f))) is None  # no upstream mode
    with pytest.raises(credentials.CredentialsError, match="not both"):
        credentials.egress_with_login(Settings(egress_proxy=("p", 1), upstream_auth="a:b", upstream_auth_file=str(f)))
    f.chmod(0o640)
    with pytest.raises(credentials.CredentialsError, match=f"chmod 600 {f}"):
        credentials.egress_with_login(s)
    f.write_text("no login here\n")
    f.chmod(0o600)
    with pytest.raises(credentials.CredentialsError) as e:
        credentials.egress_with_login(s)
    assert "no login here" not in str(e.value)
