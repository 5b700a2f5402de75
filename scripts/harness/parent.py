"""A parent registry for fleet tests (issue 13, docs/design.md, "A parent registry"): Debian's docker-registry (the CNCF
distribution registry, 2.8) in proxy mode, with the fake Docker Hub as its upstream and an account
of its own there, so that its counted pulls show in the fake Hub's book.

    with Parent(workdir, upstream, account=("parentbot", "pw"), tls=True) as parent:
        parent.url          # https://mirror.internal (port 443), what hubcache_parent names
        parent.ca_cert      # the parent's own CA (hubcache_parent_ca); not the fake Hub's
        parent.cert_dir     # a skopeo cert dir trusting that CA only
        parent.name         # "mirror.internal" (":PORT" unless 443): a reference's registry part
        parent.requests()   # every request it answered (harness.reqlog.Req), from its access log
        parent.stop(); parent.start()   # down and up again, same storage, same address and cert
        parent.wait_stored([d]) # 2.8 stores a missed blob in the background, after answering it
        parent.blob_file(d) # filesystem storage: the file, to corrupt an object in a test

Addresses: tls=True listens on PARENT_IP (127.0.0.20) as PARENT_HOST (mirror.internal), port 443
unless `port=` (e.g. 5000: https://mirror.internal:5000); hubenv.Upstream puts the name in the
namespace's hosts file whether or not a Parent runs. tls=False (the default) is plain HTTP on
127.0.0.1:PORT (a free port unless `port=`). The certificate comes from a CA of the parent's own
(certs.make_pki, "hubcache test parent CA"), made once per workdir: a client that trusts only the
fake Hub's CA is refused.

Storage: "filesystem" (workdir/storage), or "s3": harness.motos3's server over plain http (PyPI
moto[server], in-memory S3) with bucket S3_BUCKET, used through the 2.8 s3 driver (region, regionendpoint
http://127.0.0.1:PORT, secure: false, v4auth: true). Tried with 2.8.2+ds1 and moto 5.2.5: pushes,
pulls and proxy-mode pull-through work, blobs land in the bucket. With `s3_redirect=False` (the
default, `storage.redirect.disable: true`) the parent streams blobs itself; with True a blob it
has answers 307 to a presigned http://127.0.0.1:PORT/<bucket>/docker/registry/v2/blobs/... URL
(X-Amz-Expires=1200) that moto serves, so the client fetches from the store, not the parent.
The registry's environment must not hold AWS_CA_BUNDLE: with it the 2.8 s3 driver panics at start
("failed to create new session with aws config: LoadCustomCABundleError: unable to load custom CA
bundle, HTTPClient's transport unsupported type"); it is started with PATH and SSL_CERT_FILE only.
stop() leaves the moto server running (its storage is in memory), close() (and leaving the `with`)
stops both.

It runs inside the test's namespaces (the fake Hub's names resolve there) and trusts the fake Hub's
CA through SSL_CERT_FILE. Every process is started and stopped by its PID.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from harness import certs, reqlog
from harness.motos3 import MotoS3
from harness.proxy import _die_with_parent, free_port, terminate
from harness.reqlog import Req

PARENT_HOST = "mirror.internal"
PARENT_IP = "127.0.0.20"
HOSTS = {PARENT_IP: [PARENT_HOST]}  # for the namespace's hosts file (hubenv), started or not
S3_BUCKET = "parent"
S3_REGION = "us-east-1"
S3_KEYS = ("parent-access", "parent-secret")  # moto's server checks no signature; the driver needs some
HERE = Path(__file__).resolve().parent


def _wait_listening(addr: tuple[str, int], proc: subprocess.Popen, what: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            socket.create_connection(addr, timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {addr[0]}:{addr[1]} within {timeout} s")


class Parent:
    def __init__(self, workdir: Path, upstream, account: tuple[str, str], *, tls: bool = False,
                 port: int | None = None, storage: str = "filesystem", s3_redirect: bool = False,
                 login: tuple[str, str] | None = None, remote: str = "https://registry-1.docker.io") -> None:
        if storage not in ("filesystem", "s3"):
            raise ValueError(f"storage is 'filesystem' or 's3', not {storage!r}")
        self.workdir = Path(workdir)
        self.upstream = upstream
        self.account = account
        self.tls = tls
        self.host = PARENT_IP if tls else "127.0.0.1"
        self.port = port if port is not None else (443 if tls else free_port())
        self.storage_kind = storage
        self.s3_redirect = s3_redirect
        self.remote = remote  # the registry it is the parent of (its proxy.remoteurl)
        self.login = login  # the parent's own login (htpasswd, bcrypt): what hubcache_parent_credentials holds
        self.storage = self.workdir / "storage"  # filesystem storage
        self.log = self.workdir / "parent.log"  # distribution's JSON app log
        self.proc: subprocess.Popen | None = None
        self._stamper: subprocess.Popen | None = None
        self.moto: MotoS3 | None = None  # storage="s3": its bucket, over plain http

    # ------------------------------------------------------------------ names

    @property
    def name(self) -> str:
        """The registry part of a reference to it: mirror.internal, mirror.internal:5000, 127.0.0.1:PORT."""
        if not self.tls:
            return f"127.0.0.1:{self.port}"
        return PARENT_HOST if self.port == 443 else f"{PARENT_HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.name}"

    @property
    def ca_cert(self) -> Path:
        """The parent's own CA (PEM), made at the first start with tls=True."""
        return self.workdir / "pki" / "ca.pem"

    @property
    def cert_dir(self) -> Path:
        """A containers cert dir (skopeo --src-cert-dir) trusting the parent's CA and nothing else of the test's."""
        return self.workdir / "certs.d"

    # ------------------------------------------------------------------ life cycle

    def start(self, timeout: float = 20) -> Parent:
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.tls and not self.ca_cert.exists():
            certs.make_pki(self.workdir / "pki", [PARENT_HOST], [PARENT_IP], ca_cn="hubcache test parent CA")
            self.cert_dir.mkdir(exist_ok=True)
            shutil.copyfile(self.ca_cert, self.cert_dir / "ca.crt")
        if self.storage_kind == "s3" and self.moto is None:
            self.moto = MotoS3(self.workdir / "s3", S3_BUCKET, S3_REGION, S3_KEYS, tls=False).start(timeout)
        cfg = self.workdir / "config.yml"
        cfg.write_text(json.dumps(self._config()))  # YAML is a superset of JSON
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SSL_CERT_FILE": str(self.upstream.ca_cert)}
        # Access log (stdout, one line per request whatever its status) -> stamplog.py -> requests.jsonl
        self._stamper = subprocess.Popen(
            [sys.executable, str(HERE / "stamplog.py"), str(self.workdir / "requests.jsonl"), self.name],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=self._stamper.stdin, stderr=log,
                                         stdin=subprocess.DEVNULL, env=env, preexec_fn=_die_with_parent)
        self._stamper.stdin.close()  # the registry holds the write end now
        try:
            _wait_listening((self.host, self.port), self.proc, "the parent registry", self.log, timeout)
        except BaseException:
            self.close()
            raise
        return self

    def _config(self) -> dict:
        user, password = self.account
        http: dict = {"addr": f"{self.host}:{self.port}", "secret": os.urandom(16).hex()}
        if self.tls:
            http["tls"] = {"certificate": str(self.workdir / "pki" / "server.pem"),
                           "key": str(self.workdir / "pki" / "server-key.pem")}
        storage: dict = {"delete": {"enabled": True}, "maintenance": {"uploadpurging": {"enabled": False}}}
        if self.storage_kind == "s3":
            storage["s3"] = {"region": S3_REGION, "bucket": S3_BUCKET, "regionendpoint": self.moto.endpoint if self.moto else "",
                             "accesskey": S3_KEYS[0], "secretkey": S3_KEYS[1], "secure": False, "v4auth": True}
            storage["redirect"] = {"disable": not self.s3_redirect}
        else:
            self.storage.mkdir(parents=True, exist_ok=True)
            storage["filesystem"] = {"rootdirectory": str(self.storage)}
        config = {
            "version": "0.1",
            "log": {"level": "info", "formatter": "json"},
            "storage": storage,
            "http": http,
            "proxy": {"remoteurl": self.remote, "username": user, "password": password},
        }
        if self.login:
            import bcrypt

            htpasswd = self.workdir / "htpasswd"
            name, secret = self.login
            htpasswd.write_text(f"{name}:{bcrypt.hashpw(secret.encode(), bcrypt.gensalt(4)).decode()}\n")
            config["auth"] = {"htpasswd": {"realm": "parent", "path": str(htpasswd)}}
        return config

    def stop(self) -> None:
        """Stop the registry (by PID); its storage stays (a moto server too), start() serves it again."""
        if self.proc is not None:
            terminate(self.proc)
        if self._stamper is not None:
            try:
                self._stamper.wait(5)  # EOF once the registry is gone: every line written
            except subprocess.TimeoutExpired:
                terminate(self._stamper)
        self.proc = self._stamper = None

    def close(self) -> None:
        """stop(), and the moto server of storage="s3" too (its bucket is gone then)."""
        self.stop()
        if self.moto is not None:
            self.moto.stop()
        self.moto = None

    def __enter__(self) -> Parent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ what it was asked

    def requests(self, settle: float = 0.05) -> list[Req]:
        """Every request it answered (all its runs), in order: host is self.name, path with the
        query. Waits until its log has not grown for `settle` seconds."""
        log = self.workdir / "requests.jsonl"
        if settle:
            reqlog.settle([log], settle)
        return reqlog.read(self.workdir, ["requests"])

    def mark(self) -> int:
        return len(self.requests())

    def requests_since(self, mark: int, settle: float = 0.05) -> list[Req]:
        return self.requests(settle)[mark:]

    # ------------------------------------------------------------------ its storage

    def blob_file(self, digest: str) -> Path:
        """The file of a blob in filesystem storage (to read, or corrupt, in a test)."""
        if self.storage_kind != "filesystem":
            raise ValueError("blob_file: storage is S3 here; stored_blob() reads from the bucket")
        return self.storage / self.blob_key(digest)

    @staticmethod
    def blob_key(digest: str) -> str:
        """Where distribution keeps a blob, relative to its storage root (the S3 key)."""
        algo, hexd = digest.split(":", 1)
        return f"docker/registry/v2/blobs/{algo}/{hexd[:2]}/{hexd}/data"

    def wait_stored(self, digests: list[str], timeout: float = 15) -> None:
        """Wait until every blob is in its storage: 2.8 answers a missed blob from one fetch and
        stores it from a second one in the background, so right after a pull (say, before a
        stop()) its storage may still lack some."""
        deadline = time.monotonic() + timeout
        while True:
            missing = [d for d in digests if self.stored_blob(d) is None]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the parent had not stored {', '.join(missing)} after {timeout} s")
            time.sleep(0.05)

    def bucket_keys(self) -> dict[str, int]:
        """storage="s3": every object in the bucket, key -> size."""
        assert self.moto is not None
        return self.moto.objects()

    def stored_blob(self, digest: str) -> bytes | None:
        """The bytes the parent stored for a blob (file or S3 object), or None."""
        if self.storage_kind == "filesystem":
            path = self.blob_file(digest)
            return path.read_bytes() if path.is_file() else None
        assert self.moto is not None
        return self.moto.get(self.blob_key(digest))
