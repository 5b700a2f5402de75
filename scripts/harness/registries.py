"""The registries beside the fake Docker Hub (hubenv.Upstream(..., registries=True)).

Each is the real CNCF distribution registry on plain HTTP behind a front of ours (hubfront.py,
or regfront.py where the token realm is on the registry's own host) that terminates TLS and logs
every request with its headers. Each has its own storage, request logs and, where it has them,
accounts and private repositories (tokenserver.py's policy) or an htpasswd file.

  name (as pulled)             address          auth                                   blobs
  ghcr.io                      127.0.0.5:443    Bearer realm="https://ghcr.io/token",  from the registry
                                                service="ghcr.io" (served by its front)
  registry.gitlab.com          127.0.0.6:443    Bearer realm="https://gitlab.com/jwt/auth",
                                                service="container_registry"           from the registry
    gitlab.com                 127.0.0.7:443    tokenserver.py at /jwt/auth
  mcr.microsoft.com            127.0.0.8:443    none (/v2/ answers 200; pushes too)    307 to the data host
    eastus.data.mcr.microsoft.com 127.0.0.9:443 cdnserver.py over mcr's storage
  registry.corp.example:5000   127.0.0.10:5000  Basic realm="corp registry" (htpasswd, bcrypt);
                                                CORP_USER's login in Upstream.docker_config
  registry.k8s.io              127.0.0.11:443   none of its own: k8sredir.py answers every /v2/
                                                request 307 to ghcr.io/v2/k8s-artifacts-prod/images/
                                                (/v2/ itself to ghcr.io/v2/), whose token ghcr's
                                                realm gives; push to ghcr as
                                                k8s-artifacts-prod/images/NAME, pull registry.k8s.io/NAME
distribution itself listens on the registry's address, port 5000 (corp: 5001).
Accounts: the Hub's user names, each registry with passwords of its own ("<key>-<password>",
e.g. ghcr-alice-pw); the corp registry also has CORP_USER. Private repositories per token
registry (tokenserver.py's policy). Anybody may push to mcr (real MCR takes no pushes; the
harness needs them).

This module only describes them (configs, files, commands); hubenv.Upstream starts, stops and
reads them.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

GHCR_HOST = "ghcr.io"
GITLAB_HOST = "registry.gitlab.com"
GITLAB_AUTH_HOST = "gitlab.com"
MCR_HOST = "mcr.microsoft.com"
MCR_DATA_HOST = "eastus.data.mcr.microsoft.com"  # MCR's data endpoints are *.data.mcr.microsoft.com
CORP_HOST = "registry.corp.example"
CORP_PORT = 5000
CORP_REGISTRY = f"{CORP_HOST}:{CORP_PORT}"
CORP_USER, CORP_PASSWORD = "corp-ci", "corp-ci-secret"  # the login written to Upstream.docker_config
CORP_REALM = "corp registry"
K8S_HOST = "registry.k8s.io"
K8S_PREFIX = "k8s-artifacts-prod/images/"  # where its images are in the registry it redirects to
HERE = Path(__file__).resolve().parent
BCRYPT_ROUNDS = 4  # distribution checks the hash on every request: the cheapest bcrypt it accepts


@dataclass(frozen=True)
class Spec:
    """One registry: what it is called, where it listens, how it authenticates."""

    key: str  # short name for files: logs/<key>-front.jsonl, registries/<key>/
    host: str
    port: int
    ip: str
    auth: str  # "token", "basic", "none" or "redirect" (k8sredir.py, no registry of its own)
    service: str = ""  # token: the service in the challenge (the JWT's aud)
    realm_host: str = ""  # token: the realm's host; "" = the registry's own host
    realm_path: str = ""
    data_host: str = ""  # blob GETs are redirected (307) to this host
    data_ip: str = ""
    realm_ip: str = ""
    redirect_to: str = ""  # auth "redirect": every /v2/<rest> is 307 to this URL + <rest>; no storage

    @property
    def name(self) -> str:
        """The registry as a reference spells it (with :port unless 443)."""
        return self.host if self.port == 443 else f"{self.host}:{self.port}"

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of every name this registry answers on: itself, its realm's host, its data host."""
        return [(self.host, self.port)] + ([(self.realm_host, 443)] if self.realm_host else []) + (
            [(self.data_host, 443)] if self.data_host else [])

    @property
    def backend(self) -> tuple[str, int]:
        return self.ip, self.port + 1 if self.port == 5000 else 5000

    @property
    def realm(self) -> str:
        return f"https://{self.realm_host or self.host}{self.realm_path}"

    @property
    def challenge(self) -> str:
        """The WWW-Authenticate of GET /v2/ without credentials ("" when it needs none)."""
        if self.auth == "token":
            return f'Bearer realm="{self.realm}",service="{self.service}"'
        if self.auth == "basic":
            return f'Basic realm="{CORP_REALM}"'
        return ""


SPECS = (
    Spec("ghcr", GHCR_HOST, 443, "127.0.0.5", "token", service="ghcr.io", realm_path="/token"),
    Spec("gitlab", GITLAB_HOST, 443, "127.0.0.6", "token", service="container_registry",
         realm_host=GITLAB_AUTH_HOST, realm_path="/jwt/auth", realm_ip="127.0.0.7"),
    Spec("mcr", MCR_HOST, 443, "127.0.0.8", "none", data_host=MCR_DATA_HOST, data_ip="127.0.0.9"),
    Spec("corp", CORP_HOST, CORP_PORT, "127.0.0.10", "basic"),
    Spec("k8s", K8S_HOST, 443, "127.0.0.11", "redirect", redirect_to=f"https://{GHCR_HOST}/v2/{K8S_PREFIX}"),
)
BY_NAME = {s.name: s for s in SPECS}


def hosts() -> dict[str, list[str]]:
    """IP -> names, for the namespace's hosts file."""
    out: dict[str, list[str]] = {}
    for s in SPECS:
        out[s.ip] = [s.host]
        if s.realm_ip:
            out[s.realm_ip] = [s.realm_host]
        if s.data_ip:
            out[s.data_ip] = [s.data_host]
    return out


@dataclass(frozen=True)
class Service:
    """A process to start: argv, where it listens when ready, where its output goes."""

    what: str
    argv: list[str]
    listen: tuple[str, int]
    output: Path  # stdout and stderr


class Registry:
    """One extra registry's files (configs, storage, logs) and the processes that serve it."""

    def __init__(self, spec: Spec, workdir: Path, logs: Path, accounts: dict[str, str],
                 private: dict[str, list[str]]):
        self.spec = spec
        self.dir = workdir / "registries" / spec.key
        self.storage = self.dir / "data"
        self.logs = logs
        # Same user names as the Hub's, passwords of their own (a ghcr.io login is no Docker Hub
        # login; tests that look for a Hub secret in every log must not find it here)
        self.accounts = {user: f"{spec.key}-{password}" for user, password in accounts.items()}
        if spec.auth == "basic":
            self.accounts.setdefault(CORP_USER, CORP_PASSWORD)
        self.private = {k: list(v) for k, v in private.items()}
        self.push_account = next(iter(self.accounts.items()))
        self.limits = self.dir / "limits.json"  # the front's LIMITS.json (hubfront.py): nobody limited

    @property
    def log_names(self) -> list[str]:
        """Request logs (logs/NAME.jsonl) of this registry's hosts."""
        k = self.spec.key
        return [f"{k}-front"] + ([f"{k}-auth"] if self.spec.realm_ip else []) + (
            [f"{k}-data"] if self.spec.data_ip else [])

    def prepare(self, pki) -> None:
        """Write every file the services read (once, before the first start)."""
        if self.spec.redirect_to:
            self.dir.mkdir(parents=True, exist_ok=True)
            return  # a redirector: no registry, no storage
        self.storage.mkdir(parents=True, exist_ok=True)
        self.limits.write_text(json.dumps({"limits": {}}))
        if self.spec.auth == "token":
            self.write_token_config(pki)
        if self.spec.auth == "basic":
            self.write_htpasswd()
        (self.dir / "registry.yml").write_text(json.dumps(self.registry_config(pki), indent=2))

    def registry_config(self, pki) -> dict:
        s = self.spec
        cfg: dict = {
            "version": "0.1",
            "log": {"level": "info", "formatter": "json", "fields": {"service": f"registry-{s.key}"}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": "{}:{}".format(*s.backend),  # plain HTTP behind the front (X-Forwarded-Proto: https)
                "headers": {"X-Content-Type-Options": ["nosniff"]},
                "secret": os.urandom(16).hex(),
            },
        }
        if s.data_host:
            cfg["middleware"] = {"storage": [{"name": "redirect", "options": {"baseurl": f"https://{s.data_host}"}}]}
        if s.auth == "token":
            cfg["auth"] = {"token": {"realm": s.realm, "service": s.service, "issuer": self.issuer,
                                     "rootcertbundle": str(pki.ca_cert)}}
        elif s.auth == "basic":
            cfg["auth"] = {"htpasswd": {"realm": CORP_REALM, "path": str(self.dir / "htpasswd")}}
        return cfg

    @property
    def issuer(self) -> str:
        return f"hubcache-test-{self.spec.key}"

    def write_token_config(self, pki) -> None:
        if self.spec.auth != "token" or pki is None:
            return
        path = self.dir / "token.json"
        tmp = path.with_name("token.json.tmp")
        tmp.write_text(json.dumps({
            "issuer": self.issuer, "service": self.spec.service,
            "jwt_key": str(pki.jwt_key), "jwt_cert": str(pki.jwt_cert),
            "accounts": self.accounts, "private": self.private,
            "fields": ["token"],  # ghcr.io and gitlab.com answer {"token": ...} only
        }, indent=2))
        tmp.replace(path)  # the token server re-reads it at every request

    def write_htpasswd(self) -> None:
        import bcrypt  # mitmproxy's dependency, so in the venv

        lines = [f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(BCRYPT_ROUNDS)).decode()}\n"
                 for u, p in self.accounts.items()]
        (self.dir / "htpasswd").write_text("".join(lines))

    def services(self, pki) -> list[Service]:
        s, py = self.spec, sys.executable
        out: list[Service] = []

        def https(what: str, script: str, ip: str, port: int, host: str, extra: list[str]) -> Service:
            return Service(what, [py, str(HERE / script), "--listen", f"{ip}:{port}",
                                  "--cert", str(pki.server_cert), "--key", str(pki.server_key),
                                  "--log", str(self.logs / f"{what}.jsonl"), "--host", host, *extra],
                           (ip, port), self.logs / f"{what}.err")

        if s.redirect_to:
            return [https(f"{s.key}-front", "k8sredir.py", s.ip, s.port, s.name, ["--target", s.redirect_to])]
        out.append(Service(f"{s.key}-registry", ["docker-registry", "serve", str(self.dir / "registry.yml")],
                           s.backend, self.logs / f"{s.key}-registry.log"))
        front = ["--backend", "{}:{}".format(*s.backend), "--limits", str(self.limits)]
        if s.auth == "token" and not s.realm_host:
            front += ["--config", str(self.dir / "token.json"), "--path", s.realm_path]
            out.append(https(f"{s.key}-front", "regfront.py", s.ip, s.port, s.name, front))
        else:
            out.append(https(f"{s.key}-front", "hubfront.py", s.ip, s.port, s.name, front))
        if s.realm_ip:
            out.append(https(f"{s.key}-auth", "tokenserver.py", s.realm_ip, 443, s.realm_host,
                             ["--config", str(self.dir / "token.json"), "--path", s.realm_path]))
        if s.data_ip:
            out.append(https(f"{s.key}-data", "cdnserver.py", s.data_ip, 443, s.data_host,
                             ["--root", str(self.storage)]))
        return out


def docker_config(path: Path) -> Path:
    """A docker config.json whose `auths` hold CORP_USER's login for the corp registry."""
    auth = base64.b64encode(f"{CORP_USER}:{CORP_PASSWORD}".encode()).decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"auths": {CORP_REGISTRY: {"auth": auth}}}, indent=2) + "\n")
    return path
