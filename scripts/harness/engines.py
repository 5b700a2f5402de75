"""Real container engines pulling through hubcache, for end-to-end tests.

    eng = Docker(workdir, proxy=hub.url, ca_cert=hub.ca_cert).start()
    eng.pull("docker.io/library/alpine:3.19")
    eng.describe("docker.io/library/alpine:3.19")   # Image(digest, config_digest, diff_ids)
    eng.remove("docker.io/library/alpine:3.19")
    eng.login("pusher", "pushpass"); eng.build(context_dir, ref); eng.push(ref)   # Docker only
    eng.stop()

One class per engine, same methods: Docker (Debian's dockerd 20.10 + its own client), Containerd
(containerd 1.6 + `ctr`), Podman (4.3, no daemon). skopeo lives in clients.py.

Every engine keeps its state under `workdir` (plus a short directory in /tmp for unix sockets,
whose paths are limited to 108 bytes), runs with config files of its own rather than the
machine's (/etc/docker/daemon.json, /etc/containerd/config.toml, /etc/containers/*.conf), and
reaches Docker Hub and the other registries (harness.registries: ghcr-, gitlab-, mcr-like, corp)
only through HTTPS_PROXY=`proxy`, trusting `ca_cert` (hubcache's CA) and not the upstream test CA:
a client that bypassed the proxy would fail TLS. Where an engine's trust is per registry host
(containerd's hosts.toml, podman's certs.d), a directory is written for each name of `registries`
(REGISTRY_NAMES by default: every registry the harness runs, as references spell them). The few directories an engine
creates at a fixed path whatever its config (/run/docker, /run/containers) are removed again if
they were absent before and are left empty.

The processes inherit the namespaces of the test process (harness.hubenv: Hub's names point at
loopback). Daemons are stopped by their PID: SIGTERM, wait, then SIGKILL.
"""

from __future__ import annotations

import base64
import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlencode

from .proxy import terminate
from .registries import CORP_REGISTRY, GHCR_HOST, GITLAB_HOST, K8S_HOST, MCR_HOST

__all__ = ["Docker", "Containerd", "Podman", "Image", "EngineError", "ENGINES", "missing_engine"]

DOCKERD = "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker"  # Debian's client, matching the daemon; not whatever is first on PATH
CONTAINERD = "/usr/bin/containerd"
CTR = "/usr/bin/ctr"
PODMAN = "/usr/bin/podman"
RUNC = "/usr/sbin/runc"
SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY")
HUB = "docker.io"
# Registries as image references name them (a port other than 443 included), each given a trust
# directory of its own where the engine's trust is per host.
REGISTRY_NAMES = (HUB, GHCR_HOST, GITLAB_HOST, MCR_HOST, CORP_REGISTRY, K8S_HOST)

# engine name -> (binaries it needs, Debian packages providing them)
REQUIREMENTS = {
    "docker": ((DOCKERD, DOCKER, CONTAINERD, RUNC), ("docker.io",)),
    "containerd": ((CONTAINERD, CTR), ("containerd",)),
    "podman": ((PODMAN,), ("podman",)),
}


def missing_engine(name: str) -> str | None:
    """Why engine `name` cannot run here, or None."""
    if os.geteuid() != 0:
        return f"{name} tests need root (daemons, mounts, namespaces)"
    binaries, packages = REQUIREMENTS[name]
    for b in binaries:
        if not os.access(b, os.X_OK):
            return f"{b} is missing (apt-get install {' '.join(packages)})"
    return None


class EngineError(RuntimeError):
    pass


@dataclass
class Image:
    """What an engine says it holds for a reference."""

    ref: str
    digest: str  # the manifest (or index) digest the engine recorded for the pull
    config_digest: str  # the image ID: digest of the config blob
    diff_ids: list[str] = field(default_factory=list)  # uncompressed layer digests, from the config
    raw: dict = field(default_factory=dict, repr=False)


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _clean_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k.upper() not in PROXY_VARS and not k.startswith(("DOCKER_", "CONTAINERD_", "CONTAINERS_"))}
    env.update(extra or {})
    return env


def _in_private_mount_ns() -> bool:
    """True if this process has a mount namespace other than its parent's (hubenv made it)."""
    try:
        return os.readlink("/proc/self/ns/mnt") != os.readlink(f"/proc/{os.getppid()}/ns/mnt")
    except OSError:
        return False


class _SystemBundle:
    """hubcache's CA added to the system trust store the way update-ca-certificates would (appended
    to /etc/ssl/certs/ca-certificates.crt), as a bundle of our own bind-mounted over that file:
    only inside the test process's private mount namespace, so the machine never sees it."""

    def __init__(self, path: Path, ca_cert: Path):
        self.path = path
        self.ca_cert = ca_cert
        self.mounted = False

    def mount(self) -> None:
        if not _in_private_mount_ns():
            raise EngineError("refusing to bind-mount a CA bundle in the machine's own mount namespace: "
                              "start harness.hubenv.Upstream first")
        self.path.write_bytes(SYSTEM_BUNDLE.read_bytes().rstrip(b"\n") + b"\n" + self.ca_cert.read_bytes())
        subprocess.run(["mount", "--bind", str(self.path), str(SYSTEM_BUNDLE)], check=True, capture_output=True)
        self.mounted = True

    def umount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", str(SYSTEM_BUNDLE)], check=True, capture_output=True)
            self.mounted = False


def _remove_empty_tree(path: Path) -> None:
    """Remove `path` if nothing but empty directories is left in it."""
    for dirpath, _dirs, _files in sorted(os.walk(path), key=lambda t: -len(t[0])):
        try:
            os.rmdir(dirpath)
        except OSError:
            return


class _Engine:
    name = ""
    # Directories the engine creates whatever its configuration says (hard-coded in it): if one
    # did not exist before start() and holds nothing but empty directories at stop(), it goes.
    HARDCODED_DIRS: tuple[str, ...] = ()

    def __init__(self, workdir: Path, *, proxy: str, ca_cert: Path):
        self.workdir = Path(workdir).resolve()
        self.proxy = proxy
        self.ca_cert = Path(ca_cert)
        self.proc: subprocess.Popen | None = None
        self.logfile = self.workdir / f"{self.name}.log"
        self._short: Path | None = None
        self._absent = [Path(d) for d in self.HARDCODED_DIRS if not os.path.lexists(d)]

    # ----------------------------------------------------------------- process

    def _short_dir(self) -> Path:
        if self._short is None:
            self._short = Path(tempfile.mkdtemp(prefix=f"hc-{self.name[:2]}-", dir="/tmp"))
        return self._short

    def _spawn(self, cmd: list[str], env: dict) -> None:
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, preexec_fn=_die_with_parent)

    def _wait_ready(self, probe, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise EngineError(f"{self.name} exited with {self.proc.returncode} while starting:\n{self.log()[-3000:]}")
            if probe():
                return
            if time.monotonic() > deadline:
                raise EngineError(f"{self.name} not ready after {timeout}s:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def _stop_daemon(self, timeout: float = 20) -> None:
        if self.proc is None:
            return
        terminate(self.proc, timeout)
        self.proc = None

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def start(self):
        """Start the engine; whatever was started is stopped again if that fails half-way."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop_daemon()
        if self._short is not None:
            shutil.rmtree(self._short, ignore_errors=True)
            self._short = None
        for d in self._absent:
            if d.is_dir() and not d.is_symlink():
                _remove_empty_tree(d)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self, cmd: list[str], env: dict, check: bool, timeout: float,
             input: str | None = None) -> subprocess.CompletedProcess:
        stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **stdin)
        if check and res.returncode != 0:
            raise EngineError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr.strip()}\n{res.stdout[-2000:]}")
        return res

    # ------------------------------------------------------- the common interface

    def pull(self, ref: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        raise NotImplementedError

    def describe(self, ref: str) -> Image:
        raise NotImplementedError

    def remove(self, ref: str) -> None:
        raise NotImplementedError

    def has(self, ref: str) -> bool:
        raise NotImplementedError

    def stored(self, digest: str) -> bytes | None:
        """The bytes the engine keeps for a manifest, index or config digest (containerd: any blob), or None."""
        raise NotImplementedError


# ===================================================================== dockerd


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 300):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class Docker(_Engine):
    """dockerd 20.10 (Debian docker.io) with vfs storage and no networking of its own.

    dockerd ignores /etc/docker/certs.d for Docker Hub and reads the system trust store, so
    hubcache's CA goes into a bundle of our own (system bundle + CA) bind-mounted over
    /etc/ssl/certs/ca-certificates.crt: only inside the test process's private mount namespace,
    and unmounted at stop(). That store covers every registry host alike (ghcr.io, the gitlab.com
    realm, registry.corp.example:5000), so nothing per registry is written. dockerd gets a containerd of our own (`--containerd`), whose
    state also stays under workdir; the one dockerd would start writes to /opt/containerd.
    """

    name = "docker"
    API = "/v1.41"
    HARDCODED_DIRS = ("/run/docker",)  # plugin sockets: /run/docker/plugins

    def __init__(self, workdir: Path, *, proxy: str, ca_cert: Path):
        super().__init__(workdir, proxy=proxy, ca_cert=ca_cert)
        self.data_root = self.workdir / "data-root"
        self.bundle = _SystemBundle(self.workdir / "ca-certificates.crt", self.ca_cert)
        self.config_file = self.workdir / "daemon.json"
        self.client_config = self.workdir / "client-config"
        self.containerd: Containerd | None = None

    @property
    def sock(self) -> Path:
        return self._short_dir() / "docker.sock"

    def _start(self) -> None:
        for d in (self.workdir, self.data_root, self.client_config):
            d.mkdir(parents=True, exist_ok=True)
        self.bundle.mount()
        # Not the machine's /etc/docker/daemon.json; the trust key would go to /etc/docker/key.json.
        self.config_file.write_text(json.dumps({"deprecated-key-path": str(self.workdir / "key.json")}) + "\n")
        self.containerd = Containerd(self.workdir / "containerd", proxy=self.proxy, ca_cert=self.ca_cert).start()
        exec_root = self._short_dir() / "exec"
        cmd = [DOCKERD, "--config-file", str(self.config_file), "--containerd", str(self.containerd.sock),
               "--iptables=false", "--ip-masq=false", "--bridge=none", "--storage-driver=vfs",
               "--data-root", str(self.data_root), "--exec-root", str(exec_root),
               "--pidfile", str(self._short_dir() / "dockerd.pid"), "-H", f"unix://{self.sock}"]
        self._spawn(cmd, _clean_env({"HTTPS_PROXY": self.proxy, "https_proxy": self.proxy}))
        self._wait_ready(self._ping)

    def _ping(self) -> bool:
        try:
            return self.api("GET", "/_ping", timeout=2)[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        self._stop_daemon()
        if self.containerd is not None:
            self.containerd.stop()
            self.containerd = None
        self.bundle.umount()
        super().stop()

    # --------------------------------------------------------------- clients

    def docker(self, *args: str, check: bool = True, timeout: float = 300, input: str | None = None,
               env: dict | None = None) -> subprocess.CompletedProcess:
        """The Debian docker client against this daemon only, with a client config (logins) of its own."""
        env = _clean_env({"DOCKER_CONFIG": str(self.client_config), **(env or {})})
        return self._run([DOCKER, "-H", f"unix://{self.sock}", *args], env, check, timeout, input)

    def login(self, user: str, password: str, server: str = "docker.io", check: bool = True) -> subprocess.CompletedProcess:
        """`docker login`: the daemon checks the credentials with the registry (through its
        HTTPS_PROXY), the client keeps them in its own config.json for push and pull."""
        return self.docker("login", "--username", user, "--password-stdin", server, input=password, check=check)

    def build(self, context: Path, ref: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        """`docker build -t REF CONTEXT` with the classic builder (DOCKER_BUILDKIT=0), which runs no
        container for FROM and COPY: this daemon has no network (--bridge=none)."""
        return self.docker("build", "--tag", ref, str(context), check=check, timeout=timeout,
                           env={"DOCKER_BUILDKIT": "0"})

    def push(self, ref: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        """`docker push REF` with the client's login; see pushed_digest() for what the registry took."""
        return self.docker("push", ref, check=check, timeout=timeout)

    @staticmethod
    def pushed_digest(res: subprocess.CompletedProcess) -> str:
        """The manifest digest from `docker push`'s last line, "TAG: digest: sha256:... size: N"."""
        for line in reversed(res.stdout.splitlines()):
            words = line.split()
            if len(words) >= 3 and words[1] == "digest:":
                return words[2]
        raise EngineError(f"no digest in the output of docker push:\n{res.stdout[-2000:]}")

    def api(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
            timeout: float = 300) -> tuple[int, bytes]:
        """One Engine API request on the daemon's socket (as the Go SDK, e.g. gitlab-runner, sends it)."""
        conn = _UnixHTTPConnection(str(self.sock), timeout=timeout)
        try:
            conn.request(method, path if path == "/_ping" else self.API + path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def api_pull(self, image: str, tag: str) -> list[dict]:
        """POST /images/create?fromImage=IMAGE&tag=TAG, what the Go SDK's ImagePull sends.

        Returns the JSON progress messages; raises EngineError if the daemon reports an error.
        """
        query = urlencode({"fromImage": image, "tag": tag})
        # An anonymous pull still carries an (empty) auth header, as the SDK sends it.
        status, body = self.api("POST", f"/images/create?{query}", headers={"X-Registry-Auth": "e30="})
        msgs = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        errors = [m for m in msgs if "error" in m or "errorDetail" in m]
        if status != 200 or errors:
            raise EngineError(f"pull of {image}:{tag} via the API: {status} {errors or body[:500]!r}")
        return msgs

    def api_inspect(self, ref: str) -> dict:
        status, body = self.api("GET", f"/images/{quote(ref, safe='/:@')}/json")
        if status != 200:
            raise EngineError(f"inspect {ref}: {status} {body[:300]!r}")
        return json.loads(body)

    # ------------------------------------------------------------- interface

    def pull(self, ref: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        return self.docker("pull", ref, check=check, timeout=timeout)

    def inspect(self, ref: str) -> dict:
        return json.loads(self.docker("image", "inspect", ref).stdout)[0]

    def describe(self, ref: str) -> Image:
        info = self.inspect(ref)
        # RepoDigests hold familiar names: "docker.io/library/x:1" -> "x@sha256:..."
        repo = ref.split("@")[0]
        if ":" in repo.rsplit("/", 1)[-1]:
            repo = repo.rsplit(":", 1)[0]
        familiar = repo.removeprefix("docker.io/").removeprefix("library/")
        digests = [d for name, _, d in (rd.partition("@") for rd in info.get("RepoDigests") or [])
                   if name == familiar]
        return Image(ref, digests[0] if digests else "", info["Id"],
                     list(info.get("RootFS", {}).get("Layers", [])), info)

    def remove(self, ref: str) -> None:
        self.docker("image", "rm", ref)

    def has(self, ref: str) -> bool:
        return self.docker("image", "inspect", ref, check=False).returncode == 0

    def stored(self, digest: str) -> bytes | None:
        # dockerd 20.10 (graphdriver store) keeps image configs, by ID, and no manifests.
        path = self.data_root / "image" / "vfs" / "imagedb" / "content" / digest.replace(":", "/", 1)
        return path.read_bytes() if path.is_file() else None

    def image_ids(self) -> list[str]:
        return self.docker("images", "-q", "--no-trunc").stdout.split()


# ================================================================== containerd


class Containerd(_Engine):
    """containerd 1.6 with a config of its own (CRI plugin off), driven by `ctr`.

    The pull runs in the ctr process, so HTTPS_PROXY and the CA go on
    `ctr images pull --snapshotter native`: trust="tlscacert" passes `--tlscacert CA`,
    trust="hosts-dir" passes `--hosts-dir DIR` with DIR/<registry>/hosts.toml naming the CA, one
    per name of `registries` (DIR/docker.io/, DIR/ghcr.io/, DIR/registry.corp.example:5000/: the
    files certs/README.md puts in /etc/containerd/certs.d for Kubernetes nodes),
    trust="hosts-dir-crt" the same directories with the CA file alone, no hosts.toml (Docker's
    certs.d layout, which containerd reads where there is no hosts.toml),
    trust="system" passes nothing and puts the CA in the system bundle (see _SystemBundle).
    Each instance uses its own ctr namespace.
    """

    name = "containerd"
    NAMESPACE = "hubcache-e2e"
    TRUST = ("tlscacert", "hosts-dir", "hosts-dir-crt", "system")

    def __init__(self, workdir: Path, *, proxy: str, ca_cert: Path, trust: str = "tlscacert",
                 registries: tuple[str, ...] = REGISTRY_NAMES):
        super().__init__(workdir, proxy=proxy, ca_cert=ca_cert)
        if trust not in self.TRUST:
            raise ValueError(f"trust must be one of {self.TRUST}")
        self.trust = trust
        self.registries = tuple(registries)
        self.root = self.workdir / "root"
        self.config = self.workdir / "config.toml"
        self.hosts_dir = self.workdir / "certs.d"
        self.bundle = _SystemBundle(self.workdir / "ca-certificates.crt", self.ca_cert)

    @property
    def sock(self) -> Path:
        return self._short_dir() / "containerd.sock"

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(exist_ok=True)
        state = self._short_dir() / "state"
        self.config.write_text(
            "version = 2\n"
            f'root = "{self.root}"\n'
            f'state = "{state}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            "[grpc]\n"
            f'  address = "{self.sock}"\n'
            "[ttrpc]\n"
            f'  address = "{self.sock}.ttrpc"\n'
            "[debug]\n"
            '  address = ""\n'
            "[metrics]\n"
            '  address = ""\n'
            '[plugins."io.containerd.internal.v1.opt"]\n'
            f'  path = "{self.workdir / "opt"}"\n'
        )
        if self.trust == "system":
            self.bundle.mount()
        if self.trust in ("hosts-dir", "hosts-dir-crt"):
            for registry in self.registries:
                self.write_hosts_toml(registry)
        self._spawn([CONTAINERD, "--config", str(self.config)], _clean_env())
        self._wait_ready(lambda: self.sock.exists() and self.ctr("version", check=False).returncode == 0)

    def write_hosts_toml(self, registry: str) -> Path:
        """DIR/<registry>/hosts.toml (and the CA beside it), as certs/README.md shows it."""
        d = self.hosts_dir / registry
        d.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.ca_cert, d / "hubcache-ca.crt")
        server = "https://registry-1.docker.io" if registry == HUB else f"https://{registry}"
        if self.trust == "hosts-dir-crt":  # Docker's layout: the *.crt files, no hosts.toml
            return d
        # The CA twice. containerd tries each [host] first and then `server` with the top-level
        # settings: with the CA under [host] only, a 404 (an image name with a typo) moves on to
        # `server` without it and the pull ends in "x509: certificate signed by unknown authority".
        # Without any [host] section, containerd 1.6 logs "failed to decode hosts.toml" and falls
        # back to the *.crt files of the directory.
        ca = d / "hubcache-ca.crt"
        (d / "hosts.toml").write_text(
            f'server = "{server}"\n'
            f'ca = "{ca}"\n'
            "\n"
            f'[host."{server}"]\n'
            '  capabilities = ["pull", "resolve"]\n'
            f'  ca = "{ca}"\n'
        )
        return d

    def ctr(self, *args: str, check: bool = True, proxy: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
        env = _clean_env({"HTTPS_PROXY": self.proxy, "https_proxy": self.proxy} if proxy else None)
        return self._run([CTR, "--address", str(self.sock), "--namespace", self.NAMESPACE, *args],
                         env, check, timeout)

    def pull(self, ref: str, check: bool = True, timeout: float = 300,
             creds: str | None = None) -> subprocess.CompletedProcess:
        """`ctr images pull`; creds "user:password" go on `--user` (a login of the client's own)."""
        login = ["--user", creds] if creds else []
        trust = {"tlscacert": ["--tlscacert", str(self.ca_cert)],
                 "hosts-dir": ["--hosts-dir", str(self.hosts_dir)],
                 "hosts-dir-crt": ["--hosts-dir", str(self.hosts_dir)], "system": []}[self.trust]
        return self.ctr("images", "pull", "--snapshotter", "native", *trust, *login, ref,
                        check=check, proxy=True, timeout=timeout)

    def stored(self, digest: str) -> bytes | None:
        try:
            return self.content(digest)
        except EngineError:
            return None

    def content(self, digest: str) -> bytes:
        """A blob from containerd's content store."""
        res = subprocess.run([CTR, "--address", str(self.sock), "--namespace", self.NAMESPACE,
                              "content", "get", digest], capture_output=True, env=_clean_env(), timeout=60)
        if res.returncode != 0:
            raise EngineError(f"ctr content get {digest}: {res.stderr.decode(errors='replace')}")
        return res.stdout

    def content_digests(self) -> list[str]:
        return self.ctr("content", "ls", "-q").stdout.split()

    def _target(self, ref: str) -> tuple[str, str]:
        for line in self.ctr("images", "ls").stdout.splitlines()[1:]:
            cols = line.split()
            if cols and cols[0] == ref:
                return cols[2], cols[1]  # digest, media type
        raise EngineError(f"{ref} not in `ctr images ls`")

    def describe(self, ref: str) -> Image:
        digest, _ = self._target(ref)
        manifest = json.loads(self.content(digest))
        if "manifests" in manifest:  # an index: the platform containerd picked, linux/amd64 here
            wanted = [m for m in manifest["manifests"]
                      if m.get("platform", {}).get("os") == "linux"
                      and m.get("platform", {}).get("architecture") == "amd64"]
            manifest = json.loads(self.content(wanted[0]["digest"]))
        config_digest = manifest["config"]["digest"]
        config = json.loads(self.content(config_digest))
        return Image(ref, digest, config_digest, list(config["rootfs"]["diff_ids"]), manifest)

    def remove(self, ref: str) -> None:
        self.ctr("images", "rm", "--sync", ref)  # --sync: wait for the garbage collection of content

    def has(self, ref: str) -> bool:
        return any(line.split()[0] == ref for line in self.ctr("images", "ls").stdout.splitlines()[1:] if line.strip())

    def stop(self) -> None:
        super().stop()
        self.bundle.umount()


# ====================================================================== podman


class Podman(_Engine):
    """podman 4.3 as root with vfs storage, cgroupfs, file locks and config files of its own.

    trust="cert-dir": `podman pull --cert-dir DIR` with the CA as DIR/hubcache-ca.crt.
    trust="certs.d": the machine-wide way, /etc/containers/certs.d/<registry>/ca.crt for each name
    of `registries` (docker.io, ghcr.io, ..., registry.corp.example:5000), in a copy of
    /etc/containers bind-mounted over it inside the test's private mount namespace (unmounted at
    stop()).
    """

    name = "podman"
    HARDCODED_DIRS = ("/run/containers",)  # netavark's run dir: /run/containers/networks
    TRUST = ("cert-dir", "certs.d")
    ETC = Path("/etc/containers")

    def __init__(self, workdir: Path, *, proxy: str, ca_cert: Path, trust: str = "cert-dir",
                 registries: tuple[str, ...] = REGISTRY_NAMES):
        super().__init__(workdir, proxy=proxy, ca_cert=ca_cert)
        if trust not in self.TRUST:
            raise ValueError(f"trust must be one of {self.TRUST}")
        self.trust = trust
        self.registries = tuple(registries)
        self.cert_dir = self.workdir / "certs.d"
        self.env: dict = {}
        self._mounted = False

    def _start(self) -> Podman:
        w = self.workdir
        short = self._short_dir()
        for d in (w, self.cert_dir, w / "tmp", w / "graph"):
            d.mkdir(parents=True, exist_ok=True)
        if self.trust == "cert-dir":
            shutil.copyfile(self.ca_cert, self.cert_dir / "hubcache-ca.crt")
        else:
            if not _in_private_mount_ns():
                raise EngineError("refusing to bind-mount over /etc/containers in the machine's own "
                                  "mount namespace: start harness.hubenv.Upstream first")
            etc = w / "etc-containers"
            if self.ETC.is_dir():
                shutil.copytree(self.ETC, etc, symlinks=True)
            for registry in self.registries:
                (etc / "certs.d" / registry).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.ca_cert, etc / "certs.d" / registry / "ca.crt")
            subprocess.run(["mount", "--bind", str(etc), str(self.ETC)], check=True, capture_output=True)
            self._mounted = True
        (w / "storage.conf").write_text(
            "[storage]\n"
            'driver = "vfs"\n'
            f'graphroot = "{w / "graph"}"\n'
            f'runroot = "{short / "run"}"\n'
        )
        (w / "containers.conf").write_text(
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{w / "events.log"}"\n'
            'lock_type = "file"\n'
            f'tmp_dir = "{short / "libpod"}"\n'
            f'static_dir = "{w / "graph" / "libpod"}"\n'
            f'volume_path = "{w / "graph" / "volumes"}"\n'
            f'image_copy_tmp_dir = "{w / "tmp"}"\n'
            "[network]\n"
            f'network_config_dir = "{w / "networks"}"\n'
        )
        (w / "registries.conf").write_text('unqualified-search-registries = ["docker.io"]\n')
        (w / "policy.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}\n')
        (w / "auth.json").write_text('{"auths": {}}\n')
        self.env = _clean_env({
            "CONTAINERS_STORAGE_CONF": str(w / "storage.conf"),
            "CONTAINERS_CONF": str(w / "containers.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(w / "registries.conf"),
            "REGISTRY_AUTH_FILE": str(w / "auth.json"),
            "TMPDIR": str(w / "tmp"),
        })
        return self

    def podman(self, *args: str, check: bool = True, proxy: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
        env = dict(self.env)
        if proxy:
            env["HTTPS_PROXY"] = env["https_proxy"] = self.proxy
        return self._run([PODMAN, *args], env, check, timeout)

    def pull(self, ref: str, check: bool = True, timeout: float = 300,
             creds: str | None = None) -> subprocess.CompletedProcess:
        """`podman pull`; creds "user:password" go on `--creds` (a login of the client's own)."""
        trust = ["--cert-dir", str(self.cert_dir)] if self.trust == "cert-dir" else []
        trust += ["--creds", creds] if creds else []
        return self.podman("pull", *trust, "--signature-policy", str(self.workdir / "policy.json"), ref,
                           check=check, proxy=True, timeout=timeout)

    def inspect(self, ref: str) -> dict:
        return json.loads(self.podman("image", "inspect", ref).stdout)[0]

    def describe(self, ref: str) -> Image:
        info = self.inspect(ref)
        image_id = info["Id"] if info["Id"].startswith("sha256:") else "sha256:" + info["Id"]
        return Image(ref, info["Digest"], image_id, list(info.get("RootFS", {}).get("Layers", [])), info)

    def remove(self, ref: str) -> None:
        self.podman("rmi", ref)

    def has(self, ref: str) -> bool:
        return self.podman("image", "exists", ref, check=False).returncode == 0

    def stored(self, digest: str) -> bytes | None:
        # containers/storage keeps an image's manifests (keyed "manifest-<digest>") and its config
        # (keyed "<digest>") as files named "=" + base64(key) in the image's directory.
        names = {"=" + base64.b64encode(k.encode()).decode() for k in (f"manifest-{digest}", digest)}
        for image_dir in (self.workdir / "graph" / "vfs-images").glob("*/"):
            for name in names:
                if (image_dir / name).is_file():
                    return (image_dir / name).read_bytes()
        return None


    def stop(self) -> None:
        if self._mounted:
            subprocess.run(["umount", str(self.ETC)], check=True, capture_output=True)
            self._mounted = False
        super().stop()


ENGINES = {"docker": Docker, "containerd": Containerd, "podman": Podman}
