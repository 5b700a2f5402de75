"""An S3 service for tests: moto's server (PyPI moto[server], the test extra; storage in memory)
on 127.0.0.1:PORT over TLS, with a certificate from a CA of its own (or, `tls=False`, plain http:
a store in the data centre without TLS), and one bucket.

    with MotoS3(workdir, "parent-bucket") as s3:
        s3.endpoint       # https://127.0.0.1:PORT (what storage.s3.regionendpoint names)
        s3.ca_cert        # its CA: a client must trust it (Go: in SSL_CERT_FILE)
        s3.keys           # (access key, secret key): moto checks no signature, clients need some
        s3.objects()      # every object in the bucket, key -> size
        s3.get(key)       # an object's bytes, or None

TLS because deploy/parent/config-s3.yml says `secure: true` and a test runs it as shipped. Never
give a Go client AWS_CA_BUNDLE for it: distribution 2.8's s3 driver panics at start with it
(harness.parent says how); put the CA in SSL_CERT_FILE instead. The server is started and stopped
by its PID.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from harness import certs
from harness.proxy import _die_with_parent, free_port, terminate

BIN = Path(sys.executable).parent


class MotoS3:
    def __init__(self, workdir: Path, bucket: str, region: str = "us-east-1",
                 keys: tuple[str, str] = ("moto-access", "moto-secret"), tls: bool = True) -> None:
        self.workdir = Path(workdir)
        self.tls = tls
        self.bucket = bucket
        self.region = region
        self.keys = keys
        self.port = 0
        self.log = self.workdir / "moto.log"
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ca_cert(self) -> Path:
        return self.workdir / "pki" / "ca.pem"

    def start(self, timeout: float = 30) -> MotoS3:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        tls: list[str] = []
        if self.tls:
            pki = certs.make_pki(self.workdir / "pki", ["s3.test"], ["127.0.0.1"], ca_cn="hubcache test S3 CA")
            tls = ["-c", str(pki.server_cert), "-k", str(pki.server_key)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port), *tls],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, preexec_fn=_die_with_parent)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"moto_server exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"moto_server did not listen within {timeout} s") from None
                    time.sleep(0.05)
            self.client().create_bucket(Bucket=self.bucket)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)
        self.proc = None

    def __enter__(self) -> MotoS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self):
        import boto3  # moto[server]'s dependency

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region,
                            verify=str(self.ca_cert) if self.tls else None,
                            aws_access_key_id=self.keys[0], aws_secret_access_key=self.keys[1])

    def objects(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            out.update({o["Key"]: o["Size"] for o in page.get("Contents", ())})
        return out

    def get(self, key: str) -> bytes | None:
        s3 = self.client()
        try:
            return s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except s3.exceptions.NoSuchKey:
            return None
