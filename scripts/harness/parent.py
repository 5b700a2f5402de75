"""A parent registry for fleet tests (issue 13, docs/fleet.md): Debian's docker-registry (the CNCF
distribution registry, 2.8) in proxy mode, with the fake Docker Hub as its upstream and an account
of its own there, so that its counted pulls show in the fake Hub's book.

    with Parent(workdir, upstream, account=("parentbot", "pw")) as parent:
        parent.url          # http://127.0.0.1:PORT, the root hubcache's hubcache_parent names
        parent.blob_file(d) # its storage, to corrupt an object in a test

It runs inside the test's namespaces (the fake Hub's names resolve there) and trusts the fake Hub's
CA through SSL_CERT_FILE. Started and stopped by its PID.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

from harness.proxy import _die_with_parent, free_port, terminate


class Parent:
    def __init__(self, workdir: Path, upstream, account: tuple[str, str]) -> None:
        self.workdir = Path(workdir)
        self.upstream = upstream
        self.account = account
        self.port = free_port()
        self.storage = self.workdir / "storage"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def blob_file(self, digest: str) -> Path:
        algo, hexd = digest.split(":", 1)
        return self.storage / "docker/registry/v2/blobs" / algo / hexd[:2] / hexd / "data"

    def start(self, timeout: float = 20) -> Parent:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(exist_ok=True)
        user, password = self.account
        config = {
            "version": "0.1",
            "log": {"level": "info", "formatter": "json"},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)}, "delete": {"enabled": True}},
            "http": {"addr": f"127.0.0.1:{self.port}"},
            "proxy": {"remoteurl": "https://registry-1.docker.io", "username": user, "password": password},
        }
        cfg = self.workdir / "config.yml"
        cfg.write_text(json.dumps(config))  # YAML is a superset of JSON
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SSL_CERT_FILE": str(self.upstream.ca_cert)}
        with open(self.workdir / "parent.log", "ab") as log:
            self.proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, env=env, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the parent registry exited: {(self.workdir / 'parent.log').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the parent registry did not listen within {timeout} s")

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)
        self.proc = None

    def __enter__(self) -> Parent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
