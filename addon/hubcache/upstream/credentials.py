"""Stored Docker Hub credentials: where they come from, and never where they go.

Sources, in order (all of them are used: several accounts make a pool):
1. hubcache's own credentials file (TOML or JSON; refused unless only its owner can read it):
   [[accounts]] username = "..." / token = "..." (or password = "...")
2. environment: HUBCACHE_DOCKERHUB_USERNAME with HUBCACHE_DOCKERHUB_TOKEN (or _PASSWORD)
3. a Docker config.json: `auths` for https://index.docker.io/v1/ or docker.io, and
   `credHelpers` / `credsStore` helpers run as `docker-credential-<name> get`.
A Credential's repr and str never show the secret.
"""

from __future__ import annotations

import base64
import json
import re
import stat
import subprocess
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubcache.settings import Egress, Settings

HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")
HELPER_TIMEOUT = 10

HelperRunner = Callable[[str, str], dict[str, Any] | None]  # (helper name, server) -> its JSON answer


class CredentialsError(Exception):
    pass


@dataclass(frozen=True)
class Credential:
    account: str
    secret: str = field(repr=False)
    source: str = ""

    def __str__(self) -> str:
        return f"{self.account} (from {self.source})"

    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.account}:{self.secret}".encode()).decode()


def _private(path: Path, what: str) -> None:
    """Refuse a secrets file that anybody but its owner can read or write."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise CredentialsError(f"cannot read {what} {path}: {e.strerror}") from e
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CredentialsError(
            f"{what} {path} has mode {stat.S_IMODE(mode):04o}: others can read it; run: chmod 600 {path}"
        )


def from_file(path: Path) -> list[Credential]:
    _private(path, "credentials file")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise CredentialsError(f"credentials file {path} does not parse: {type(e).__name__} at {_where(e)}") from None
    out = []
    for i, entry in enumerate(data.get("accounts", [])):
        user = entry.get("username")
        secret = entry.get("token") or entry.get("password")
        if not user or not secret:
            raise CredentialsError(f"credentials file {path}: account #{i + 1} needs a username and a token or password")
        out.append(Credential(user, secret, f"{path}"))
    return out


def _where(e: Exception) -> str:
    # Parser messages can quote the offending text, which may be a secret: give the position only.
    line = getattr(e, "lineno", None)
    if line is None:  # tomllib (before 3.14) has the position only in its message
        m = re.search(r"line (\d+)", str(e))
        line = m.group(1) if m else None
    return f"line {line}" if line else "an unknown position"


def from_env(env: Mapping[str, str]) -> list[Credential]:
    user = env.get("HUBCACHE_DOCKERHUB_USERNAME")
    secret = env.get("HUBCACHE_DOCKERHUB_TOKEN") or env.get("HUBCACHE_DOCKERHUB_PASSWORD")
    if user and secret:
        return [Credential(user, secret, "environment")]
    if user or secret:
        raise CredentialsError("set both HUBCACHE_DOCKERHUB_USERNAME and HUBCACHE_DOCKERHUB_TOKEN (or _PASSWORD)")
    return []


def from_docker_config(path: Path, run_helper: HelperRunner | None = None) -> list[Credential]:
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise CredentialsError(f"cannot read Docker config {path}: {type(e).__name__}") from None
    run_helper = run_helper or _run_helper
    helpers = config.get("credHelpers", {})
    for key in HUB_KEYS:
        if key in helpers:
            return _helper_credential(helpers[key], key, run_helper)
    auths = config.get("auths", {})
    for key in HUB_KEYS:
        entry = auths.get(key)
        if not entry:
            continue
        if entry.get("auth"):
            user, _, secret = base64.b64decode(entry["auth"]).decode().partition(":")
        else:
            user, secret = entry.get("username", ""), entry.get("password", "")
        if user and secret:
            return [Credential(user, secret, f"{path}")]
    if config.get("credsStore"):
        return _helper_credential(config["credsStore"], HUB_KEYS[0], run_helper)
    return []


def _helper_credential(name: str, server: str, run_helper: HelperRunner) -> list[Credential]:
    data = run_helper(name, server)
    if not data or not data.get("Username") or not data.get("Secret"):
        return []
    return [Credential(data["Username"], data["Secret"], f"docker-credential-{name}")]


def _run_helper(name: str, server: str) -> dict | None:
    try:
        out = subprocess.run(
            [f"docker-credential-{name}", "get"], input=server, capture_output=True, text=True, timeout=HELPER_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CredentialsError(f"credential helper docker-credential-{name} could not run: {type(e).__name__}") from None
    if out.returncode != 0:
        return None  # the helper has no credentials for Docker Hub
    try:
        return json.loads(out.stdout)
    except ValueError:
        raise CredentialsError(f"credential helper docker-credential-{name} printed something that is not JSON") from None


def load(credentials_file: str, env: Mapping[str, str], docker_config: str) -> list[Credential]:
    """Every configured account, in source order, one entry per account name."""
    found: list[Credential] = []
    if credentials_file:
        found += from_file(Path(credentials_file).expanduser())
    found += from_env(env)
    if docker_config:
        found += from_docker_config(Path(docker_config).expanduser())
    unique: dict[str, Credential] = {}
    for c in found:
        unique.setdefault(c.account, c)  # the first source that names an account wins
    return list(unique.values())


def proxy_login(path: Path) -> str:
    """The egress proxy's login (one line, user:password) from hubcache_upstream_auth_file."""
    _private(path, "egress proxy login file")
    try:
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise CredentialsError(f"cannot read egress proxy login file {path}: {type(e).__name__}") from None
    if len(lines) != 1 or ":" not in lines[0][1:]:
        raise CredentialsError(f"egress proxy login file {path} must hold one line user:password (its content is not shown)")
    return lines[0]


def egress_with_login(settings: Settings) -> Egress | None:
    """The egress proxy of mitmproxy's upstream mode with its login: upstream_auth, or the one in
    hubcache_upstream_auth_file (never both)."""
    egress = settings.egress
    if not settings.upstream_auth_file:
        return egress
    if settings.upstream_auth:
        raise CredentialsError("set upstream_auth or hubcache_upstream_auth_file, not both")
    login = proxy_login(Path(settings.upstream_auth_file).expanduser())
    return Egress(egress.host, egress.port, login) if egress else None
