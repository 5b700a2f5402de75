"""Stored Docker Hub credentials: hubcache's own upstream requests use them, and the secret goes to
the token endpoint and nowhere else."""

from __future__ import annotations

import os

import pytest

from support.clients import skopeo_copy
from support.hubenv import AUTH_HOST

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
    assert [r.extra.get("account") for r in token_requests] == ["pusher"]  # hubcache's own, as the account
    assert "pusher (from" in hub.log()
    # nothing any upstream service or hubcache wrote holds the secret
    for path in [*upstream.logs.iterdir(), hub.logfile]:
        assert SECRET not in path.read_text(errors="replace"), path


def test_credentials_file_readable_by_others_is_refused(upstream, start_hubcache, tmp_path):
    creds = tmp_path / "hub.toml"
    creds.write_text(f'[[accounts]]\nusername = "pusher"\ntoken = "{SECRET}"\n')
    os.chmod(creds, 0o644)
    with pytest.raises(RuntimeError, match="chmod 600") as e:
        start_hubcache(f"hubcache_credentials={creds}")
    assert SECRET not in str(e.value)
