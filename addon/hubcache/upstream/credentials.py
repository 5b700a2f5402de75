"""Stored registry logins: where they come from, and never where they go.

Sources, in order (all of them are used: several Docker Hub accounts make a pool; any other
registry uses the first login found for it):
1. hubcache's own credentials file (TOML or JSON; refused unless only its owner can read it):
   [[accounts]] username = "..." / token = "..." (or password = "...") / registry = "ghcr.io"
   (registry: default docker.io)
2. environment: HUBCACHE_DOCKERHUB_USERNAME with HUBCACHE_DOCKERHUB_TOKEN (or _PASSWORD), Docker Hub's
3. a Docker config.json, per registry host (host:port included): `credHelpers` for that host,
   else `auths` (an inline login), else `credsStore` (for Docker Hub, and for every host `auths`
   lists with an empty entry, as docker login writes them beside a store); helpers run as
   `docker-credential-<name> get` with the host on stdin.
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

from hubcache.registries import DOCKER_HUB, HUB_HOSTS
from hubcache.settings import Egress, Settings

HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")
_REGISTRY_RE = re.compile(r"[a-z0-9-]+(?:\.[a-z0-9-]+)*(?::\d{1,5})?|\[[0-9a-f:]+\](?::\d{1,5})?")
HELPER_TIMEOUT = 10

HelperRunner = Callable[[str, str], dict[str, Any] | None]  # (helper name, server) -> its JSON answer


class CredentialsError(Exception):
    pass


@dataclass(frozen=True)
class Credential:
    account: str
    secret: str = field(repr=False)
    source: str = ""
    registry: str = DOCKER_HUB  # the registry it logs in to (registries.Registry.name)

    def __str__(self) -> str:
        return f"{self.name} (from {self.source})"

    @property
    def name(self) -> str:
        """The account as logs and metrics show it: bare on Docker Hub, user@registry elsewhere."""
        return self.account if self.registry == DOCKER_HUB else f"{self.account}@{self.registry}"

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
        registry = registry_name(str(entry.get("registry") or DOCKER_HUB))
        if registry is None:
            raise CredentialsError(f"credentials file {path}: account #{i + 1} has registry "
                                   f"{str(entry.get('registry'))[:100]!r}, not a host[:port] (e.g. ghcr.io)")
        out.append(Credential(user, secret, f"{path}", registry))
    return out


def registry_name(server: str) -> str | None:
    """A registry as a credentials file or config.json spells it (`https://index.docker.io/v1/`,
    `ghcr.io`, `https://registry.corp.example:5000`) -> its name (docker.io, ghcr.io,
    registry.corp.example:5000), or None when it is no host[:port]."""
    host = server.strip().lower()
    for scheme in ("https://", "http://"):
        host = host.removeprefix(scheme)
    host = host.split("/", 1)[0].rstrip(".")
    if host in HUB_HOSTS:
        return DOCKER_HUB
    host = host.removesuffix(":443")
    return host if _REGISTRY_RE.fullmatch(host) else None


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


def from_docker_config(path: Path, run_helper: HelperRunner | None = None, wanted: Callable[[str], bool] | None = None,
                       problems: list[str] | None = None) -> list[Credential]:
    """The logins of a Docker config.json: Docker Hub's first (as before other registries were
    read), then one per other registry host that `wanted` accepts (default: all), in the order
    the file names them. A helper that cannot run for another registry is a line in `problems`
    (when given: that registry is then asked anonymously), not a reason to stop."""
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise CredentialsError(f"cannot read Docker config {path}: {type(e).__name__}") from None
    run_helper = run_helper or _run_helper
    helpers, auths = config.get("credHelpers") or {}, config.get("auths") or {}
    if not isinstance(helpers, dict) or not isinstance(auths, dict):
        raise CredentialsError(f"Docker config {path}: credHelpers and auths must be JSON objects")
    out = _hub_from_docker_config(path, config, helpers, auths, run_helper)
    done = {DOCKER_HUB}
    for key in [*helpers, *auths]:
        registry = registry_name(key)
        if registry is None or registry in done or (wanted is not None and not wanted(registry)):
            continue
        done.add(registry)
        try:
            out += _registry_login(path, config, key, registry, run_helper)
        except CredentialsError as e:
            if problems is None:
                raise
            problems.append(f"no stored login for {registry}: {e}")
    return out


def _registry_login(path: Path, config: dict, key: str, registry: str, run_helper: HelperRunner) -> list[Credential]:
    """One registry's login in a config.json: its credHelpers entry, else an inline auths login,
    else the credsStore when auths lists the host."""
    helpers, auths = config.get("credHelpers") or {}, config.get("auths") or {}
    helper = next((helpers[k] for k in helpers if registry_name(k) == registry), None)
    if helper:
        return _helper_credential(helper, key, run_helper, registry)
    entries = [auths[k] for k in auths if registry_name(k) == registry]
    found = next((c for e in entries if (c := _inline(path, e, registry))), None)
    if found:
        return [found]
    if config.get("credsStore") and entries:  # `docker login` with a store leaves {} here
        return _helper_credential(config["credsStore"], key, run_helper, registry)
    return []


def _hub_from_docker_config(path: Path, config: dict, helpers: dict, auths: dict,
                            run_helper: HelperRunner) -> list[Credential]:
    for key in HUB_KEYS:
        if key in helpers:
            return _helper_credential(helpers[key], key, run_helper)
    for key in HUB_KEYS:
        if found := _inline(path, auths.get(key), DOCKER_HUB):
            return [found]
    if config.get("credsStore"):
        return _helper_credential(config["credsStore"], HUB_KEYS[0], run_helper)
    return []


def _inline(path: Path, entry: Any, registry: str) -> Credential | None:
    """An `auths` entry's login (`auth`: base64 of user:password, or `username`/`password`)."""
    if not entry or not isinstance(entry, dict):
        return None
    if entry.get("auth"):
        try:
            user, _, secret = base64.b64decode(entry["auth"]).decode().partition(":")
        except (ValueError, TypeError):  # the message could quote the secret
            raise CredentialsError(f"Docker config {path}: the auth of {registry} is not base64 of user:password") from None
    else:
        user, secret = entry.get("username", ""), entry.get("password", "")
    return Credential(user, secret, f"{path}", registry) if user and secret else None


def _helper_credential(name: str, server: str, run_helper: HelperRunner, registry: str = DOCKER_HUB) -> list[Credential]:
    data = run_helper(name, server)
    if not data or not data.get("Username") or not data.get("Secret"):
        return []
    return [Credential(data["Username"], data["Secret"], f"docker-credential-{name}", registry)]


def _run_helper(name: str, server: str) -> dict | None:
    try:
        out = subprocess.run(
            [f"docker-credential-{name}", "get"], input=server, capture_output=True, text=True, timeout=HELPER_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CredentialsError(f"credential helper docker-credential-{name} could not run: {type(e).__name__}") from None
    if out.returncode != 0:
        return None  # the helper has no credentials for that registry
    try:
        return json.loads(out.stdout)
    except ValueError:
        raise CredentialsError(f"credential helper docker-credential-{name} printed something that is not JSON") from None


def load(credentials_file: str, env: Mapping[str, str], docker_config: str, wanted: Callable[[str], bool] | None = None,
         problems: list[str] | None = None) -> list[Credential]:
    """Every configured login, in source order, one entry per registry and account name
    (`wanted`, `problems`: as for from_docker_config)."""
    found: list[Credential] = []
    if credentials_file:
        found += from_file(Path(credentials_file).expanduser())
    found += from_env(env)
    if docker_config:
        found += from_docker_config(Path(docker_config).expanduser(), None, wanted, problems)
    unique: dict[tuple[str, str], Credential] = {}
    for c in found:
        unique.setdefault((c.registry, c.account), c)  # the first source that names an account wins
    return list(unique.values())


def proxy_login(path: Path) -> str:
    """The egress proxy's login (one line, user:password) from hubcache_upstream_auth_file."""
    return one_login(path, "egress proxy login file")


def one_login(path: Path, what: str) -> str:
    """A login file of one line, user:password, readable by its owner only."""
    _private(path, what)
    try:
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise CredentialsError(f"cannot read {what} {path}: {type(e).__name__}") from None
    if len(lines) != 1 or ":" not in lines[0][1:]:
        raise CredentialsError(f"{what} {path} must hold one line user:password (its content is not shown)")
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
