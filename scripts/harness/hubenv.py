"""A Docker-Hub-shaped upstream on this machine, for end-to-end tests.

    up = Upstream(workdir)
    up.start()          # this process moves into a netns + private mount ns
    info = up.push_image("library/alpine", "3.19", layers=[(1 << 20, 1)])
    ... run clients (they inherit the namespaces) ...
    up.requests()       # what the upstream saw
    up.stop()

Inside the namespaces:
  registry-1.docker.io, index.docker.io, docker.io -> 127.0.0.1  hubfront.py (Hub's pull limit),
                                                      in front of the real CNCF registry
                                                      (plain HTTP on 127.0.0.1:5000)
  auth.docker.io                                   -> 127.0.0.2  tokenserver.py
  production.cloudflare.docker.com                 -> 127.0.0.3  cdnserver.py
  hubcache.test                                    -> 127.0.0.4  (free, for the proxy)
All on :443 with certs from one test CA (`up.ca_cert`).

More registries beside it (registries.py has the details), with Upstream(workdir, registries=True):
  ghcr.io                        -> 127.0.0.5:443   token, realm https://ghcr.io/token (its own front)
  registry.gitlab.com            -> 127.0.0.6:443   token, realm https://gitlab.com/jwt/auth,
  gitlab.com                     -> 127.0.0.7:443     service container_registry
  mcr.microsoft.com              -> 127.0.0.8:443   anonymous; blobs 307 to its data host
  eastus.data.mcr.microsoft.com  -> 127.0.0.9:443
  registry.corp.example:5000     -> 127.0.0.10:5000 Basic (htpasswd); CORP_USER's login in
                                                    `up.docker_config` (a docker config.json)
  registry.k8s.io                -> 127.0.0.11:443  no content: every /v2/ request 307 to
                                                    ghcr.io/v2/k8s-artifacts-prod/images/...
                                                    (push_image(..., registry="registry.k8s.io")
                                                    pushes there; storage_of/blob_file are ghcr's)
The fleet tests' parent (parent.py, started by a test, not here), with a CA of its own:
  mirror.internal                -> 127.0.0.20      distribution 2.8 in proxy mode: Parent(..., tls=True)
Each is distribution with its own storage behind a front that logs every request (host: the
registry's name, with :port unless 443), and the same test CA. registry="ghcr.io" (default
docker.io) picks one in push_image, push_index, down, set_private, add_account, login, blob_file.

Pull limits (Docker Hub's: a pull is a manifest GET answered 200):
    up = Upstream(workdir, accounts={"alice": "pw"}, limits={"anonymous": 100, "alice": 200})
    up.set_limits({"anonymous": 2}, window=60)   # while running
    up.pulls_by_account()                         # {"127.0.0.1": 2, "alice": 1}
    up.reset_pulls()
Without `limits` nobody is limited and no ratelimit headers are sent.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from . import certs, images, reqlog
from . import registries as extra_registries
from .images import ImageInfo, IndexInfo
from .netns import Namespaces
from .parent import HOSTS as PARENT_HOSTS  # mirror.internal: in the hosts file started or not, not in the test CA's cert
from .registries import (
    CORP_HOST,
    CORP_PASSWORD,
    CORP_PORT,
    CORP_REGISTRY,
    CORP_USER,
    GHCR_HOST,
    GITLAB_AUTH_HOST,
    GITLAB_HOST,
    K8S_HOST,
    K8S_PREFIX,
    MCR_DATA_HOST,
    MCR_HOST,
)
from .reqlog import Req

__all__ = ["Upstream", "ImageInfo", "IndexInfo", "Req", "missing_prerequisites", "HUB", "REGISTRIES",
           "GHCR_HOST", "GITLAB_HOST", "GITLAB_AUTH_HOST", "MCR_HOST", "MCR_DATA_HOST", "K8S_HOST",
           "CORP_HOST", "CORP_PORT", "CORP_REGISTRY", "CORP_USER", "CORP_PASSWORD"]

REGISTRY_HOST = "registry-1.docker.io"
AUTH_HOST = "auth.docker.io"
CDN_HOST = "production.cloudflare.docker.com"
S3_HOST = "docker-images-prod.s3.dualstack.us-east-1.amazonaws.com"  # where Hub redirects from inside AWS (2026)
PROXY_HOST = "hubcache.test"
HOSTS = {
    "127.0.0.1": [REGISTRY_HOST, "index.docker.io", "docker.io"],
    "127.0.0.2": [AUTH_HOST],
    "127.0.0.3": [CDN_HOST, S3_HOST],  # one storage server under both names
    "127.0.0.4": [PROXY_HOST],
}
EXTRA_HOSTS = extra_registries.hosts()  # 127.0.0.5-10: in the hosts file and the cert even when not started
HUB = "docker.io"  # the registry= of Docker Hub (the default)
REGISTRIES = (HUB, *extra_registries.BY_NAME)  # docker.io, ghcr.io, registry.gitlab.com, mcr..., registry.corp.example:5000
SERVICE = "registry.docker.io"
ISSUER = "hubcache-test-auth"
HERE = Path(__file__).resolve().parent
REGISTRY_BACKEND = ("127.0.0.1", 5000)  # distribution itself, behind hubfront.py
HUB_WINDOW = 21600  # Docker Hub counts pulls over 6 hours


def missing_prerequisites() -> str | None:
    """Why this machine cannot run the upstream, or None."""
    if os.geteuid() != 0:
        return "needs root (network and mount namespaces, port 443)"
    for tool in ("docker-registry", "skopeo", "ip", "mount", "nsenter"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    return None


def _write_atomic(path: Path, text: str) -> None:
    # Whole or not at all (rename): the servers re-read these files at any moment.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _die_with_parent() -> None:
    # If the test process is killed, take the servers with it (PR_SET_PDEATHSIG).
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def _wait_listening(ip: str, port: int, proc: subprocess.Popen, what: str, timeout: float = 15) -> None:
    """A bare TCP connect: sends no request, so the request logs stay clean."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} while starting")
        try:
            socket.create_connection((ip, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not listening on {ip}:{port} after {timeout}s") from None
            time.sleep(0.05)


class Upstream:
    def __init__(self, workdir: Path, accounts: dict[str, str] | None = None,
                 private: dict[str, list[str]] | None = None,
                 limits: dict[str, int | None] | None = None, window: float = HUB_WINDOW,
                 registries: bool = False):
        """accounts: {user: password}; the first one pushes.
        private: {repo: [users who may pull it]}; anybody else is refused as on Hub.
        limits: pulls per `window` seconds, per account name; "anonymous" applies to each
        client IP; None = unlimited (no ratelimit headers); "*" for names not listed, which
        are unlimited without it. See hubfront.py.
        registries: also start the four registries of registries.py (ghcr-like, gitlab-like,
        mcr-like, corp); each has the users of `accounts` with passwords of its own,
        "<key>-<password>" (login(user, registry) spells them; the corp one adds CORP_USER) and
        no private repositories (set_private(..., registry=...))."""
        self.workdir = Path(workdir).resolve()
        self.accounts = dict(accounts or {"pusher": "pushpass"})
        self.private = {k: list(v) for k, v in (private or {}).items()}
        self.push_account = next(iter(self.accounts.items()))  # (user, password) used by push_*
        self.storage = self.workdir / "registry-data"
        self.cdn_faults = self.workdir / "cdn-faults.json"
        self.front_rules = self.workdir / "hubfront-limits.json"
        self._window = window
        self._rules = {"limits": dict(limits or {}), "window": window, "reset_at": 0,
                       "retry_after": None}
        self.logs = self.workdir / "logs"
        self.ns = Namespaces(f"hubcache-{os.getpid()}", self.workdir / "hosts")
        self.extra: dict[str, extra_registries.Registry] = {
            spec.name: extra_registries.Registry(spec, self.workdir, self.logs, self.accounts, {})
            for spec in (extra_registries.SPECS if registries else ())}
        self._procs: list[tuple[str, str, subprocess.Popen]] = []  # (registry, what, process)
        self.pki: certs.TestPKI | None = None
        self.started = False

    # ----------------------------------------------------------------- life cycle

    @property
    def ca_cert(self) -> Path:
        return self.workdir / "pki" / "ca.pem"

    @property
    def cert_dir(self) -> Path:
        """A skopeo/containers cert dir trusting the test CA."""
        return self.workdir / "certs.d"

    def start(self) -> Upstream:
        if self.started:
            return self
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.started = True
        return self

    def _start(self) -> None:
        for d in (self.workdir, self.storage, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        every = {**HOSTS, **EXTRA_HOSTS}
        names = [n for ns in every.values() for n in ns]
        self.pki = certs.make_pki(self.workdir / "pki", names, list(every))
        self.cert_dir.mkdir(exist_ok=True)
        shutil.copy(self.pki.ca_cert, self.cert_dir / "ca.crt")
        (self.workdir / "policy.json").write_text(
            '{"default": [{"type": "insecureAcceptAnything"}]}\n')
        (self.workdir / "auth.json").write_text('{"auths": {}}\n')
        hosts = "127.0.0.1 localhost\n::1 localhost\n" + "".join(
            f"{ip} {' '.join(ns)}\n" for ip, ns in {**every, **PARENT_HOSTS}.items())
        self.ns.hosts_file.write_text(hosts)
        for reg in self.extra.values():
            reg.prepare(self.pki)
        if self.extra:
            extra_registries.docker_config(self.docker_config)

        self._write_rules()
        self.ns.enter()
        self._start_services()

    @property
    def docker_config(self) -> Path:
        """A docker config.json (`auths`) holding CORP_USER's login for CORP_REGISTRY
        (registries=True only): skopeo --authfile, DOCKER_CONFIG=its folder, or hubcache's option."""
        return self.workdir / "docker-config" / "config.json"

    def _start_services(self, only: str | None = None) -> None:
        """Start every service (or only registry `only`'s): all processes are spawned first and
        waited for afterwards, so they start in parallel."""
        waits: list[tuple[str, int, subprocess.Popen, str]] = []
        if only in (None, HUB):
            waits.append((*REGISTRY_BACKEND, self._start_registry(), "docker-registry"))
            waits.append(self._start_script("hubfront", "127.0.0.1", REGISTRY_HOST,
                                            ["--backend", "{}:{}".format(*REGISTRY_BACKEND), "--limits", str(self.front_rules)]))
            waits.append(self._start_script("tokenserver", "127.0.0.2", AUTH_HOST, ["--config", str(self._token_config())]))
            waits.append(self._start_script("cdnserver", "127.0.0.3", CDN_HOST,
                                            ["--root", str(self.storage), "--faults", str(self.cdn_faults)]))
        for name, reg in self.extra.items():
            if only in (None, name):
                for svc in reg.services(self.pki):
                    with open(svc.output, "ab") as out:
                        proc = self._spawn(svc.what, svc.argv, group=name, stdout=out, stderr=out,
                                           stdin=subprocess.DEVNULL, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
                    waits.append((*svc.listen, proc, svc.what))
        for ip, port, proc, what in waits:
            _wait_listening(ip, port, proc, what)

    def _stop_services(self, only: str | None = None) -> None:
        mine = [(g, w, p) for g, w, p in self._procs if only in (None, g)]
        for _, _, proc in reversed(mine):
            if proc.poll() is None:
                proc.terminate()
        for _, _, proc in reversed(mine):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs = [e for e in self._procs if e not in mine]

    def _registry_name(self, registry: str | None) -> str | None:
        if registry is None or registry == HUB:
            return registry
        if registry not in self.extra:
            raise ValueError(f"no registry {registry!r} here: {', '.join(REGISTRIES) if self.extra else HUB}"
                             f"{'' if self.extra else ' (Upstream(..., registries=True) starts the others)'}")
        return registry

    @contextlib.contextmanager
    def down(self, registry: str | None = None):
        """While inside: every upstream service (registry and its front, token server, CDN) is
        stopped, so connections to the Hub names are refused; they start again, same storage
        (and same pull counts: the front reads its log back), afterwards.

        registry="ghcr.io" (any name of REGISTRIES; "docker.io": the Hub's): only that registry
        and its own auth and storage hosts go down, the others keep serving."""
        only = self._registry_name(registry)
        self._stop_services(only)
        try:
            yield
        finally:
            self._start_services(only)

    def _registry_config(self) -> Path:
        pki = self.pki
        cfg = {
            "version": "0.1",
            "log": {"level": "info", "formatter": "json", "fields": {"service": "registry"}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "middleware": {"storage": [{"name": "redirect", "options": {"baseurl": f"https://{CDN_HOST}"}}]},
            "http": {
                # Plain HTTP behind hubfront.py, which terminates TLS and sends
                # X-Forwarded-Proto: https, so the URLs distribution builds stay https.
                "addr": "{}:{}".format(*REGISTRY_BACKEND),
                "headers": {"X-Content-Type-Options": ["nosniff"]},
                "secret": os.urandom(16).hex(),  # signs upload state; one instance, so any value
            },
            "auth": {"token": {
                "realm": f"https://{AUTH_HOST}/token",
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(pki.ca_cert),
            }},
        }
        path = self.workdir / "registry.yml"
        path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML
        return path

    def _token_config(self) -> Path:
        path = self.workdir / "token.json"
        _write_atomic(path, json.dumps({
            "issuer": ISSUER, "service": SERVICE,
            "jwt_key": str(self.pki.jwt_key), "jwt_cert": str(self.pki.jwt_cert),
            "accounts": self.accounts, "private": self.private,
        }, indent=2))
        return path

    def login(self, user: str, registry: str = HUB) -> str:
        """"user:password" of an account of that registry (skopeo --creds)."""
        accounts = self.accounts if self._registry_name(registry) == HUB else self.extra[registry].accounts
        return f"{user}:{accounts[user]}"

    def add_account(self, user: str, password: str, registry: str = HUB) -> None:
        """A new account (or a new password) of a token registry (Hub by default), usable at
        once: the token server re-reads. The corp registry's htpasswd is read once by
        distribution: its accounts are the ones it started with."""
        if self._registry_name(registry) != HUB:
            reg = self.extra[registry]
            if reg.spec.auth != "token":
                raise ValueError(f"{registry} has no token server to add accounts to")
            reg.accounts[user] = password
            return reg.write_token_config(self.pki)
        self.accounts[user] = password
        if self.pki is not None:
            self._token_config()

    def set_private(self, repo: str, users: list[str], registry: str = HUB) -> None:
        """Only `users` may pull (or push) `repo`; anybody else gets no access in the token, and
        the registry answers 401 insufficient_scope, as Docker Hub does. registry: any token
        registry (docker.io, ghcr.io, registry.gitlab.com)."""
        if self._registry_name(registry) != HUB:
            reg = self.extra[registry]
            if reg.spec.auth != "token":
                raise ValueError(f"{registry} has no token server: nothing can be private there")
            reg.private[repo] = list(users)
            return reg.write_token_config(self.pki)
        self.private[repo] = list(users)
        if self.pki is not None:
            self._token_config()

    def _spawn(self, what: str, cmd: list[str], group: str = HUB, **kw) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, preexec_fn=_die_with_parent, **kw)
        self._procs.append((group, what, proc))
        return proc

    def _start_registry(self) -> subprocess.Popen:
        # Access log (stdout, every request) -> stamplog.py -> registry.jsonl;
        # the JSON app log (stderr) -> registry.log, for debugging.
        stamper = self._spawn(
            "stamplog",
            [sys.executable, str(HERE / "stamplog.py"), str(self.logs / "registry.jsonl"), REGISTRY_HOST],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        )
        with open(self.logs / "registry.log", "ab") as err:
            reg = self._spawn(
                "registry", ["docker-registry", "serve", str(self._registry_config())],
                stdout=stamper.stdin, stderr=err, stdin=subprocess.DEVNULL,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},  # no REGISTRY_* leaks in
            )
        stamper.stdin.close()  # the registry holds the write end now
        return reg

    def _start_script(self, name: str, ip: str, host: str, extra: list[str]) -> tuple[str, int, subprocess.Popen, str]:
        with open(self.logs / f"{name}.err", "ab") as err:
            proc = self._spawn(
                name,
                [sys.executable, str(HERE / f"{name}.py"), "--listen", f"{ip}:443",
                 "--cert", str(self.pki.server_cert), "--key", str(self.pki.server_key),
                 "--log", str(self.logs / f"{name}.jsonl"), "--host", host, *extra],
                stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL,
            )
        return ip, 443, proc, name

    def stop(self) -> None:
        """Stop every process started here (by PID), leave and delete the namespaces."""
        self._stop_services()
        self.ns.leave()
        self.started = False

    def __enter__(self) -> Upstream:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --------------------------------------------------------------- request log

    LOGS = ("registry", "hubfront", "tokenserver", "cdnserver")

    @property
    def _log_names(self) -> list[str]:
        return [*self.LOGS, *(n for reg in self.extra.values() for n in reg.log_names)]

    def requests(self, settle: float = 0.05) -> list[Req]:
        """Every request answered so far on the three hosts (and the extra registries' hosts),
        ordered by completion time.

        Waits until no log has grown for `settle` seconds (0: read at once).
        Requests hubfront.py answered itself (429 over the limit, 502 with the registry
        gone) are in, with extra["answered_by"] == "hubfront"; those it forwarded are
        listed once, from the registry's log. An extra registry's requests are its front's lines
        (host: its name, with :port unless 443; answered_by "registry", "hubfront" or, for
        ghcr.io's own realm, "token"), plus its realm's and data host's lines under their names.
        """
        if settle:
            reqlog.settle([self.logs / f"{n}.jsonl" for n in self._log_names], settle)
        return reqlog.read(self.logs, self._log_names)

    def mark(self) -> int:
        """Position in requests(), to pass to requests_since() later."""
        return len(self.requests())

    def requests_since(self, mark: int, settle: float = 0.05) -> list[Req]:
        return self.requests(settle)[mark:]

    # ---------------------------------------------------------------- pull limit

    def _write_rules(self) -> None:
        _write_atomic(self.front_rules, json.dumps(self._rules))

    def set_limits(self, limits: dict[str, int | None] | None = None, *, window: float | None = None,
                   retry_after: int | None = None, headers: str = "ratelimit") -> None:
        """Replace the limits (as in __init__; None: nobody limited), the window (None: the one
        Upstream() was given), retry_after and the header family. Counted pulls stay.

        retry_after=N: 429s carry Retry-After: N, which Docker Hub does not send. skopeo retries
        a 429 up to 4 times, waiting 2, 4, 8, 16 s; with Retry-After: 0 it fails at once.
        headers: "ratelimit" (ratelimit-limit/-remaining, as documented) or "x-ratelimit" (the
        x-ratelimit-* family of 2026 captures). An account whose limit is None gets only
        docker-ratelimit-source, as a paid account does."""
        self._rules["limits"] = dict(limits or {})
        self._rules["window"] = self._window if window is None else window
        self._rules["retry_after"] = retry_after
        self._rules["headers"] = headers
        self._write_rules()

    def abuse_limit(self, seconds: float) -> None:
        """For the next `seconds` (0: from now on no more), every request to the registry host gets
        a bare 429, as Docker Hub's abuse limit answers an address that asked too often."""
        self._rules["abuse_until"] = time.time() + seconds if seconds > 0 else 0
        self._write_rules()

    def reset_pulls(self) -> None:
        """Forget every pull counted so far, as if the window had just started for everybody."""
        self._rules["reset_at"] = time.time()
        self._write_rules()

    def pulls_by_account(self, settle: float = 0.05) -> dict[str, int]:
        """Pulls counted against the limits now (in the window, since the last reset), by
        source: the account name, or the client IP for anonymous pulls."""
        if settle:
            reqlog.settle([self.logs / f"{n}.jsonl" for n in self._log_names], settle)
        since = max(time.time() - self._rules["window"], self._rules["reset_at"])
        counts: dict[str, int] = {}
        for r in reqlog.lines(self.logs / "hubfront.jsonl"):
            if r.get("pull") and r["pull_t"] > since:
                counts[r["source"]] = counts.get(r["source"], 0) + 1
        return counts

    # ------------------------------------------------------------------- content

    @contextlib.contextmanager
    def cdn_fault(self, digest: str, **fault):
        """While inside, the CDN misbehaves on this blob: truncate_at=N (promise the whole blob,
        send N bytes, hang up), stall_at=N [stall_seconds=S] (send N bytes, then nothing for S
        seconds, then hang up; with resume=True send the rest instead: slow but whole),
        length_delta=D (declare a Content-Length off by D; negative: send only that)."""
        self.cdn_faults.write_text(json.dumps({digest.split(":", 1)[1]: fault}))
        try:
            yield
        finally:
            self.cdn_faults.write_text("{}")

    @contextlib.contextmanager
    def cdn_rate(self, bytes_per_second: float):
        """While inside, the CDN sends every blob at most this fast per connection: a runner's
        internet link to Docker Hub's CDN instead of loopback."""
        self.cdn_faults.write_text(json.dumps({"*": {"rate": bytes_per_second}}))
        try:
            yield
        finally:
            self.cdn_faults.write_text("{}")

    @contextlib.contextmanager
    def manifest_fault(self, reference: str, **fault):
        """While inside, the registry host misbehaves on manifest GETs of `reference` (a tag or a
        digest), with the faults of cdn_fault (applied by the front, hubfront.py)."""
        self._rules["manifest_faults"] = {reference: fault}
        self._write_rules()
        try:
            yield
        finally:
            self._rules["manifest_faults"] = {}
            self._write_rules()

    @contextlib.contextmanager
    def redirect_blobs_to(self, host: str):
        """While inside, the registry's blob redirects point at `host` (served by the CDN server
        when it is one of HOSTS' names for 127.0.0.3), as Hub moves between CDNs."""
        self._rules["redirect_host"] = host
        self._write_rules()
        try:
            yield
        finally:
            self._rules["redirect_host"] = ""
            self._write_rules()

    def cdn_truncates(self, digest: str, after: int):
        return self.cdn_fault(digest, truncate_at=after)

    def _content_of(self, registry: str, name: str = "") -> tuple[str, str]:
        """(registry, name) where a registry's content is stored: registry.k8s.io's in ghcr.io
        under k8s-artifacts-prod/images/ (the redirector has none of its own)."""
        if registry in self.extra and (target := self.extra[registry].spec.redirect_to):
            return (target.split("/")[2], K8S_PREFIX + name)
        return registry, name

    def storage_of(self, registry: str = HUB) -> Path:
        """A registry's distribution storage root (rootdirectory)."""
        registry = self._content_of(self._registry_name(registry) or HUB)[0]
        return self.storage if self._registry_name(registry) == HUB else self.extra[registry].storage

    def blob_file(self, digest: str, registry: str = HUB) -> Path:
        algo, hexd = digest.split(":", 1)
        return self.storage_of(registry) / "docker/registry/v2/blobs" / algo / hexd[:2] / hexd / "data"

    def _any_blob_file(self, registry: str):
        """blob_file for build_index: the registry's own copy, else any other registry's (a child
        ImageInfo pushed elsewhere first)."""
        def find(digest: str) -> Path:
            for reg in (registry, *(r for r in REGISTRIES if r != registry)):
                if reg == HUB or reg in self.extra:
                    if (path := self.blob_file(digest, reg)).exists():
                        return path
            return self.blob_file(digest, registry)
        return find

    def _skopeo_push(self, src: Path, name: str, tag: str, all_: bool = False, registry: str = HUB) -> None:
        registry, name = self._content_of(registry, name)
        user, password = self.push_account if registry == HUB else self.extra[registry].push_account
        cmd = ["skopeo", "--policy", str(self.workdir / "policy.json"), "copy", "--quiet",
               "--preserve-digests", "--dest-cert-dir", str(self.cert_dir),
               "--dest-creds", f"{user}:{password}"]
        if all_:
            cmd.append("--all")
        cmd += [f"dir:{src}", f"docker://{registry}/{name}:{tag}"]
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env["REGISTRY_AUTH_FILE"] = str(self.workdir / "auth.json")
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            raise RuntimeError(f"skopeo push of {registry}/{name}:{tag} failed: {res.stderr.strip()}")

    def _stored_manifest_digest(self, name: str, tag: str, registry: str = HUB) -> str:
        registry, name = self._content_of(registry, name)
        link = (self.storage_of(registry) / "docker/registry/v2/repositories" / name
                / "_manifests/tags" / tag / "current/link")
        return link.read_text().strip()

    def push_image(self, name: str, tag: str, layers: list[tuple[int, int]], fmt: str = "oci",
                   platform: str = "amd64", registry: str = HUB) -> ImageInfo:
        """Build an image from (size_bytes, seed) layers and push it as REGISTRY/NAME:TAG
        (docker.io by default; any of REGISTRIES with registries=True), as that registry's first
        account (the corp registry's too; mcr takes anonymous pushes)."""
        registry = self._registry_name(registry) or HUB
        src = self.workdir / "build" / f"{name.replace('/', '_')}_{tag}"
        shutil.rmtree(src, ignore_errors=True)
        try:
            info = images.build_image(src, layers, fmt, platform)
            self._skopeo_push(src, name, tag, registry=registry)
        finally:
            shutil.rmtree(src, ignore_errors=True)  # the registry has the bytes now
        stored = self._stored_manifest_digest(name, tag, registry)
        if stored != info.manifest_digest:
            raise RuntimeError(f"registry stored {stored}, built {info.manifest_digest}")
        info.name, info.tag = name, tag
        return info

    def push_index(self, name: str, tag: str, platforms: dict, fmt: str = "oci", attestations: bool = False,
                   registry: str = HUB) -> IndexInfo:
        """Push a multi-platform index as REGISTRY/NAME:TAG (docker.io by default).

        platforms: {"amd64": ImageInfo | [(size, seed), ...] | {"layers": [...]}, "arm64": ...}
        An ImageInfo is reused as is (its blobs come from the registry's storage);
        a spec is built with that platform in its config. attestations: each platform gets an
        attestation manifest (unknown/unknown), as BuildKit pushes and Hub serves them.
        """
        registry = self._registry_name(registry) or HUB
        src = self.workdir / "build" / f"{name.replace('/', '_')}_{tag}"
        shutil.rmtree(src, ignore_errors=True)
        try:
            children = {}
            for key, spec in platforms.items():
                if isinstance(spec, ImageInfo):
                    children[key] = spec
                else:
                    layers = spec["layers"] if isinstance(spec, dict) else spec
                    children[key] = images.build_image(src, layers, fmt, key, write_manifest=False)
            digest, data, media_type = images.build_index(src, children, fmt, self._any_blob_file(registry), attestations)
            self._skopeo_push(src, name, tag, all_=True, registry=registry)
        finally:
            shutil.rmtree(src, ignore_errors=True)
        stored = self._stored_manifest_digest(name, tag, registry)
        if stored != digest:
            raise RuntimeError(f"registry stored {stored}, built {digest}")
        return IndexInfo(digest, data, media_type, children, name, tag)
