"""What the single-flight tests and the workers' tests share: blob clients that a test can kill
by PID (curl), counting what reached the upstream, small waits."""

from __future__ import annotations

import hashlib
import itertools
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from harness.clients import client_env
from harness.loadgen import Client

MiB = 1 << 20
REG, AUTH, CDN = "registry-1.docker.io", "auth.docker.io", "production.cloudflare.docker.com"
_seeds = itertools.count(31000)


def layers(*sizes: int) -> list[tuple[int, int]]:
    return [(size, next(_seeds)) for size in sizes]


def hexd(digest: str) -> str:
    return digest.split(":", 1)[1]


def count(reqs, host: str, method: str | None = None, contains: str = "") -> int:
    return sum(1 for r in reqs if r.host == host and (method is None or r.method == method) and contains in r.path)


def cdn_gets(reqs, digest: str) -> list:
    return [r for r in reqs if r.host == CDN and r.method == "GET" and hexd(digest) in r.path]


def seen_since(upstream, mark: int) -> list[str]:
    """The upstream requests since `mark`, short: "HOST METHOD PATH"."""
    return [f"{r.host} {r.method} {r.path[:90]}" for r in upstream.requests_since(mark)]


def token_fetches(reqs, repo: str) -> int:
    """Token requests on the auth host whose scope names `repo`."""
    n = 0
    for r in reqs:
        if r.host == AUTH:
            scopes = " ".join(parse_qs(urlsplit(r.path).query).get("scope", []))
            n += f"repository:{repo}:" in scopes
    return n


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


class CurlBlob:
    """`curl -L` GET of /v2/<repo>/blobs/<digest> on the registry host through hubcache: its own
    process, so a test can kill it by PID; the body goes to a file as it arrives."""

    def __init__(self, hub, repo: str, digest: str, token: str, out: Path, rate: str = "") -> None:
        self.out = out
        self.err = out.with_name(out.name + ".err")
        with open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                ["curl", "-sS", "-f", "-L", "--max-time", "120", "--proxy", hub.url, "--cacert", str(hub.ca_cert),
                 *(["--limit-rate", rate] if rate else []),
                 "-H", f"Authorization: Bearer {token}", "-o", str(out), f"https://{REG}/v2/{repo}/blobs/{digest}"],
                env=client_env(None), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            )
        self.started = time.monotonic()

    def received(self) -> int:
        try:
            return self.out.stat().st_size
        except FileNotFoundError:
            return 0

    def wait(self, timeout: float = 90) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL to this PID: the client vanishes mid-body
        self.proc.wait()

    def stderr(self) -> str:
        return self.err.read_text(errors="replace").strip()

    def sha256(self) -> str:
        return sha256_file(self.out) if self.out.exists() else ""


def wait_until(cond, timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def one_blob(upstream, start_hubcache, repo: str, size: int):
    """An image of one layer of `size` pushed, a hubcache started, a token for `repo`, and an
    upstream mark: (layer digest, size, hub, token, mark)."""
    img = upstream.push_image(repo, "1", layers(size))
    hub = start_hubcache()
    token = token_for(hub, repo)
    return img.layer_digests[0], img.layer_sizes[0], hub, token, upstream.mark()


def token_for(hub, repo: str) -> str:
    """A pull token as a client gets it: from the token endpoint, through the proxy."""
    return Client(hub.port, hub.ca_cert).token(repo)


def concurrent_pulls(n: int, ref: str, proxy_url: str, certs: Path, workdir: Path, timeout: float = 300) -> list[Path]:
    """`n` skopeo pulls of `ref` through the proxy, all started at once (none waiting for
    another), each into workdir/pull-I; asserts each succeeded, and returns their directories."""
    policy = workdir / "policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}\n')
    procs: list[subprocess.Popen] = []
    try:
        for i in range(n):
            with open(workdir / f"pull-{i}.err", "wb") as err:
                procs.append(subprocess.Popen(
                    ["skopeo", "--policy", str(policy), "copy", "--quiet", "--src-cert-dir", str(certs),
                     "--src-no-creds", f"docker://{ref}", f"dir:{workdir / f'pull-{i}'}"],
                    env=client_env(proxy_url), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                ))
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, rc in enumerate(codes):
        assert rc == 0, f"pull {i} failed: {(workdir / f'pull-{i}.err').read_text()}"
    return [workdir / f"pull-{i}" for i in range(n)]


def fetches_per_object(reqs, img) -> dict[str, int]:
    """What an image's pull cost at the upstream: manifest GETs (counted pulls), and the registry
    and CDN GETs of each of its blobs."""
    got = {"manifest GETs": count(reqs, REG, "GET", "/manifests/")}
    for d in [img.config_digest, *img.layer_digests]:
        got[f"registry GETs of {d[:19]}"] = count(reqs, REG, "GET", f"/blobs/{d}")
        got[f"CDN GETs of {d[:19]}"] = len(cdn_gets(reqs, d))
    return got
