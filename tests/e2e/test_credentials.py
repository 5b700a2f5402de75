"""Stored Docker Hub credentials: hubcache's own upstream requests use them, and the secret goes to
the token endpoint and nowhere else."""

from __future__ import annotations

import base64
import os

import pytest

from harness.clients import skopeo_copy
from harness.hubenv import AUTH_HOST

pytestmark = pytest.mark.e2e
SECRET = "pushpass"  # the password of the upstream's "pusher" account


def test_stored_credentials_are_used_and_the_secret_goes_nowhere_else(upstream, start_hubcache, certs, tmp_path):
    upstream.push_image("library/withcreds", "1", [(600_000, 31)])
    creds = tmp_path / "hub.toml"
    creds.write_text(f'[[accounts]]\nusername = "pusher"\ntoken = "{SECRET}"\n')
    os.chmod(creds, 0o600)
    mark = upstream.mark()
    hub = start_hubcache(f"hubcache_credentials={creds}")
    res = skopeo_copy("docker.io/library/withcreds:1", tmp_path / "pulled", proxy=hub.url, cert_dir=certs)
    assert res.returncode == 0, res.stderr
    token_requests = [r for r in upstream.requests_since(mark) if r.host == AUTH_HOST]
    # hubcache's own: one anonymous (may anybody pull it? then the pool may fetch it), one as the account
    assert sorted(r.extra.get("account") for r in token_requests) == ["anonymous", "pusher"]
    assert "pusher (from" in hub.log()
    # Every request header the registry host (its front) and the CDN received is captured in
    # their logs: the secret, plain or base64 as in Basic, is in none of them, nor in any other log;
    # only the token server saw it, in hubcache's token request.
    basic = base64.b64encode(f"pusher:{SECRET}".encode()).decode()
    captured = {p.name: p.read_text(errors="replace") for p in upstream.logs.iterdir()}
    assert "request_headers" in captured["hubfront.jsonl"] and "request_headers" in captured["cdnserver.jsonl"]
    for name, text in captured.items():
        assert SECRET not in text, name
        if name != "tokenserver.jsonl":
            assert basic not in text, name
    assert basic in captured["tokenserver.jsonl"]  # the one place it belongs (proves the capture works)
    assert SECRET not in hub.log() and basic not in hub.log()


def test_credentials_file_readable_by_others_is_refused(upstream, start_hubcache, tmp_path):
    creds = tmp_path / "hub.toml"
    creds.write_text(f'[[accounts]]\nusername = "pusher"\ntoken = "{SECRET}"\n')
    os.chmod(creds, 0o644)
    with pytest.raises(RuntimeError, match="chmod 600") as e:
        start_hubcache(f"hubcache_credentials={creds}")
    assert SECRET not in str(e.value)


def test_metrics_page_counts_outcomes_pulls_and_never_shows_the_secret(upstream, start_hubcache, certs, tmp_path):
    import re
    import urllib.request

    from harness.proxy import free_port

    upstream.push_image("library/metered", "1", [(400_000, 32)])
    creds = tmp_path / "hub.toml"
    creds.write_text(f'[[accounts]]\nusername = "pusher"\ntoken = "{SECRET}"\n')
    os.chmod(creds, 0o600)
    port = free_port()
    hub = start_hubcache(f"hubcache_credentials={creds}", f"hubcache_metrics_listen=127.0.0.1:{port}")
    for run in ("cold", "warm"):
        res = skopeo_copy("docker.io/library/metered:1", tmp_path / run, proxy=hub.url, cert_dir=certs)
        assert res.returncode == 0, res.stderr
    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()

    def value(pattern: str) -> float:
        m = re.search(pattern + r" ([0-9.e+]+)$", page, re.M)
        assert m, pattern
        return float(m.group(1))

    assert value(r'hubcache_requests_total\{kind="manifest",outcome="miss",registry="docker.io"\}') == 1
    assert value(r'hubcache_requests_total\{kind="manifest",outcome="hit",registry="docker.io"\}') == 1
    assert value(r'hubcache_requests_total\{kind="blob",outcome="hit",registry="docker.io"\}') == 2  # config and layer, warm
    assert value(r'hubcache_pulls_spent_total\{account="pusher"\}') == 1
    assert value(r'hubcache_bytes_total\{source="store"\}') >= 400_000
    assert 'hubcache_pull_budget_remaining{account="pusher"}' in page
    assert SECRET not in page


def test_proxyauth_guards_who_may_use_the_proxy(upstream, start_hubcache, proxy_login, certs, tmp_path):
    upstream.push_image("library/guarded", "1", [(100_000, 33)])
    hub = start_hubcache(proxy_login({"runner": "let-me-in"}))
    port = hub.url.rsplit(":", 1)[1]
    denied = skopeo_copy("docker.io/library/guarded:1", tmp_path / "no", proxy=hub.url, cert_dir=certs)
    assert denied.returncode != 0 and "Proxy Authentication Required" in denied.stderr, denied.stderr
    allowed = skopeo_copy("docker.io/library/guarded:1", tmp_path / "yes",
                          proxy=f"http://runner:let-me-in@127.0.0.1:{port}", cert_dir=certs)
    assert allowed.returncode == 0, allowed.stderr
    # the log names the client by its proxy login (never its password), the blob server's lines too
    log = hub.log()
    requests = [line for line in log.splitlines() if " library/guarded " in line]
    assert requests and all("runner@127.0.0.1:" in line for line in requests), log
    assert "let-me-in" not in log
