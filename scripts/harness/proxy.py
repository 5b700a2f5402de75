"""Start `hubcache run` (or plain mitmdump) as a subprocess, in whatever namespaces this process is in."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


_handed_out: set[int] = set()


def free_port() -> int:
    """A port free on every address, and not handed out before by this process. Chosen by a
    wildcard bind: one on 127.0.0.1 could hand out a port that a client socket of another loopback
    address still holds (TIME_WAIT after the idle connections of test_limits), which a later bind
    on 0.0.0.0 then fails on. Never the same twice: the port is free again once this returns, and a
    test that asks for two ports before binding either (a proxy and its metrics listener) could
    otherwise be given one port for both (seen in CI: the second hubcache died on its metrics port)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("0.0.0.0", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no port that was not handed out before")


def terminate(proc: subprocess.Popen, timeout: float = 10) -> int:
    """SIGTERM a process the harness started, SIGKILL it if it is still there after `timeout`;
    its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _listens(pid: int, port: int) -> bool:
    """Whether process `pid` holds a socket listening on TCP `port` (/proc/net/tcp*, its fds)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                inodes.add(f[9])
    try:
        fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return False
    return any(fd.startswith("socket:[") and fd[8:-1] in inodes for fd in fds)


def _die_with_parent() -> None:
    import ctypes

    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Proxy:
    """A proxy process. `kind` is "hubcache" (the real CLI) or "mitmdump" (plain, for comparison)."""

    def __init__(self, workdir: Path, upstream_ca: Path, *, confdir: Path, sets: list[str] = (), kind: str = "hubcache",
                 store: Path | None = None, args: list[str] = (), wrap: list[str] = (),
                 host: str = "127.0.0.1", workers: int = 1) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.upstream_ca = upstream_ca
        self.confdir = Path(confdir)
        self.store = store or self.workdir / "store"
        self.sets = list(sets)
        self.args = list(args)  # extra command-line arguments
        self.wrap = list(wrap)  # a command that execs the proxy's, e.g. systemd-cat (its stdout then goes there)
        self.kind = kind
        self.host = host  # the address it listens on (another one when it runs in a netns of its own)
        self.workers = workers  # hubcache run --workers N when > 1 (one process, no flag, when 1)
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.logfile = self.workdir / f"{kind}.log"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ca_cert(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    def command(self) -> list[str]:
        common = [f"ssl_verify_upstream_trusted_ca={self.upstream_ca}", *self.sets]
        if self.kind == "hubcache":
            cmd = [*self.wrap, str(BIN / "hubcache"), "run", "--listen-host", self.host, "--listen-port", str(self.port),
                   "--store", str(self.store), "--confdir", str(self.confdir)]
            if self.workers > 1:
                cmd += ["--workers", str(self.workers)]
            for s in common:
                cmd += ["--set", s]
            return cmd + self.args
        cmd = [str(BIN / "mitmdump"), "--listen-host", self.host, "--listen-port", str(self.port),
               "--set", f"confdir={self.confdir}", "--set", "http2=false", "--set", "stream_large_bodies=1m",
               "--set", "flow_detail=0"]
        for s in common:
            cmd += ["--set", s]
        return cmd + self.args

    def start(self, timeout: float = 20) -> Proxy:
        self.port = self.port or free_port()  # a restart keeps the port clients were given
        log = open(self.logfile, "ab")
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=_die_with_parent)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}: {self.log()[-2000:]}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                if self.ca_cert.exists() and len(self.worker_pids()) == (self.workers if self.workers > 1 else 0):
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.kind} did not listen within {timeout} s: {self.log()[-2000:]}")

    def worker_pids(self) -> list[int]:
        """The pids of the workers of `--workers N`, in order of their numbers, once each one
        listens on the proxy's port; [] before."""
        if self.workers <= 1 or self.proc is None:
            return []
        kids = {}
        for child in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split():
            try:
                env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            index = next((e.split(b"=", 1)[1] for e in env if e.startswith(b"HUBCACHE_WORKER=")), None)
            if index is not None and _listens(int(child), self.port):
                kids[int(index)] = int(child)
        return [kids[i] for i in sorted(kids)] if len(kids) == self.workers else []

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        rc = terminate(self.proc)
        self.proc = None
        return rc

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: with workers, every process at once (as
        systemd's SIGKILL of the unit's cgroup)."""
        for pid in self.worker_pids() if self.proc is not None else []:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def peak_rss_mb(self) -> float:
        """VmHWM of the running proxy, in MiB."""
        assert self.proc
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def rss_mb(self) -> dict[str, float]:
        """Current VmRSS, RssAnon (heap) and RssFile (mapped files) of the proxy, in MiB."""
        assert self.proc
        out = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(line.split()[1]) / 1024
        return out

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
