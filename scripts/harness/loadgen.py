"""A load generator for hubcache: many registry clients at once, every answer checked.

Each client is a thread that does what skopeo and dockerd do on the wire: a new CONNECT through
the proxy and a new TLS session (trusting hubcache's CA) for every request, HTTP/1.1, a pull
token per repository from the token endpoint, and blob 307s followed to the CDN host without the
Authorization header. Every answer is checked against what was pushed: status, headers, size,
and the sha256 of every body (streamed, never held in memory).

    plan = Plan(warm=[Image.from_info(i) for i in warm_infos], cold=[Image.from_info(i) for i in cold_infos])
    prime(proxy_port, ca_file, plan.warm)          # pull the warm images once (misses)
    result = run_load(proxy_port, ca_file, plan, clients=50, seconds=60)
    assert result["errors"] == 0 and result["corrupt"] == 0

What the clients do:
- most of them, until the time is up, a weighted mix (Plan.weights) over the warm images: blob
  GETs (hits), blob HEADs, tag manifest GETs, manifest GETs by digest, manifest HEADs (by tag or
  digest);
- `miss_groups` groups of `miss_group_size` clients also pull the cold images, spread over the
  run: the members of a group meet at a barrier and then all GET the same tag manifest, then each
  blob, at the same moment (several clients on one cold digest at once). A cold image joins the
  warm mix once its group has pulled it.

run_load() returns a dict (JSON-serialisable): requests by kind, errors, corrupt bodies (answers
presented as good whose bytes or size are wrong), body bytes, latencies (p50/p99 overall and by
kind, in ms), redirects followed, and up to 20 error messages. scripts/bench can call it as is.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import ssl
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urljoin, urlsplit

REGISTRY_HOST = "registry-1.docker.io"
AUTH_HOST = "auth.docker.io"
SERVICE = "registry.docker.io"
READ_SIZE = 256 * 1024
MAX_REDIRECTS = 5
MAX_SAMPLES = 20

# the ordinary mix over warm images (relative weights)
DEFAULT_WEIGHTS = {
    "blob_get": 40,  # GET /v2/<repo>/blobs/<digest>: a hit
    "blob_head": 15,
    "manifest_get_tag": 20,
    "manifest_get_digest": 10,
    "manifest_head": 15,  # half by tag, half by digest
}


@dataclass(frozen=True)
class Image:
    """What a client needs to know to pull an image and check every byte of it."""

    repo: str
    tag: str
    manifest_digest: str
    media_type: str
    manifest_bytes: bytes
    blobs: tuple[tuple[str, int], ...]  # (digest, size): config first, then the layers

    @classmethod
    def from_info(cls, info) -> Image:
        """From a harness.images.ImageInfo returned by Upstream.push_image."""
        blobs = [(info.config_digest, len(info.config_bytes))]
        blobs += list(zip(info.layer_digests, info.layer_sizes, strict=True))
        return cls(info.name, info.tag, info.manifest_digest, info.media_type, info.manifest_bytes, tuple(blobs))


@dataclass
class Plan:
    warm: list[Image]  # already in the store when the load starts
    cold: list[Image] = field(default_factory=list)  # pushed upstream, never pulled through this proxy
    miss_groups: int = 2
    miss_group_size: int = 5
    weights: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    cold_span: float = 0.75  # the cold pulls start spread over this fraction of the run


class CheckFailed(Exception):
    """An answer that is not what the registry holds. corrupt=True: presented as a good body."""

    def __init__(self, message: str, corrupt: bool = False) -> None:
        super().__init__(message)
        self.corrupt = corrupt


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    length: int  # body bytes received
    sha256: str  # "sha256:<hex>" of the body
    body: bytes  # kept only when asked for (small bodies)
    hops: int  # redirects followed


class Client:
    """HTTPS through the proxy at proxy_host:proxy_port, a new connection for every request."""

    def __init__(self, proxy_port: int, ca_file: Path | str, proxy_host: str = "127.0.0.1",
                 timeout: float = 60, context: ssl.SSLContext | None = None) -> None:
        self.proxy = (proxy_host, proxy_port)
        self.ctx = context or ssl.create_default_context(cafile=str(ca_file))
        self.timeout = timeout

    def request(self, method: str, url: str, headers: list[tuple[str, str]] = (), keep_body: bool = False) -> Answer:
        """One request, following redirects (each a new connection; Authorization is dropped on a
        hop to another host, as Docker's clients do). Raises on a broken transfer."""
        headers = list(headers)
        hops = 0
        while True:
            parts = urlsplit(url)
            if parts.scheme != "https" or not parts.hostname:
                raise CheckFailed(f"{method} {url}: not an https URL")
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            status, resp_headers, length, digest, body = self._once(
                method, parts.hostname, parts.port or 443, target, headers, keep_body)
            location = resp_headers.get("location")
            if status in (301, 302, 303, 307, 308) and location:
                hops += 1
                if hops > MAX_REDIRECTS:
                    raise CheckFailed(f"{method} {url}: more than {MAX_REDIRECTS} redirects")
                new = urljoin(url, location)
                if (urlsplit(new).hostname or "").lower() != parts.hostname.lower():
                    headers = [(k, v) for k, v in headers if k.lower() != "authorization"]
                url = new
                continue
            return Answer(status, resp_headers, length, digest, body, hops)

    def _once(self, method, host, port, target, headers, keep_body):
        conn = http.client.HTTPSConnection(*self.proxy, context=self.ctx, timeout=self.timeout)
        conn.set_tunnel(host, port)
        try:
            conn.putrequest(method, target, skip_accept_encoding=True)
            for k, v in headers:
                conn.putheader(k, v)
            conn.endheaders()
            resp = conn.getresponse()
            resp_headers: dict[str, str] = {}
            for k, v in resp.getheaders():
                k = k.lower()
                resp_headers[k] = f"{resp_headers[k]}, {v}" if k in resp_headers else v
            h, n, kept = hashlib.sha256(), 0, bytearray()
            while True:
                piece = resp.read(READ_SIZE)  # IncompleteRead if shorter than Content-Length
                if not piece:
                    break
                h.update(piece)
                n += len(piece)
                if keep_body:
                    kept += piece
            return resp.status, resp_headers, n, "sha256:" + h.hexdigest(), bytes(kept)
        finally:
            conn.close()

    def token(self, repo: str) -> str:
        """A pull token for `repo` from the token endpoint (through the proxy, as a client does)."""
        query = urlencode({"service": SERVICE, "scope": f"repository:{repo}:pull"})
        a = self.request("GET", f"https://{AUTH_HOST}/token?{query}", keep_body=True)
        if a.status != 200:
            raise CheckFailed(f"token for {repo}: status {a.status}")
        try:
            data = json.loads(a.body)
            return data.get("token") or data["access_token"]
        except (ValueError, KeyError, TypeError) as e:
            raise CheckFailed(f"token for {repo}: unusable answer {a.body[:200]!r}") from e


# -- checked requests, one per kind --------------------------------------------------------------

def _registry(repo: str, kind: str, ref: str) -> str:
    return f"https://{REGISTRY_HOST}/v2/{repo}/{kind}/{ref}"


def _expect(cond: bool, message: str, corrupt: bool = False) -> None:
    if not cond:
        raise CheckFailed(message, corrupt)


def get_blob(client: Client, token: str, repo: str, digest: str, size: int) -> Answer:
    a = client.request("GET", _registry(repo, "blobs", digest), [("Authorization", f"Bearer {token}")])
    what = f"GET blob {repo}@{digest[:19]}"
    _expect(a.status == 200, f"{what}: status {a.status}")
    cl = a.headers.get("content-length")
    _expect(cl is None or cl == str(a.length), f"{what}: Content-Length {cl}, body {a.length} bytes")
    _expect(a.length == size and a.sha256 == digest,
            f"{what}: {a.length} bytes hashing to {a.sha256[:19]}, expected {size} bytes", corrupt=True)
    dcd = a.headers.get("docker-content-digest")
    _expect(dcd is None or dcd == digest, f"{what}: Docker-Content-Digest {dcd}")
    return a


def head_blob(client: Client, token: str, repo: str, digest: str, size: int) -> Answer:
    a = client.request("HEAD", _registry(repo, "blobs", digest), [("Authorization", f"Bearer {token}")])
    what = f"HEAD blob {repo}@{digest[:19]}"
    _expect(a.status == 200, f"{what}: status {a.status}")
    _expect(a.headers.get("content-length") == str(size), f"{what}: Content-Length {a.headers.get('content-length')}, expected {size}")
    _expect(a.length == 0, f"{what}: a body of {a.length} bytes")
    return a


def get_manifest(client: Client, token: str, image: Image, by_digest: bool) -> Answer:
    ref = image.manifest_digest if by_digest else image.tag
    a = client.request("GET", _registry(image.repo, "manifests", ref),
                       [("Authorization", f"Bearer {token}"), ("Accept", image.media_type)], keep_body=True)
    what = f"GET manifest {image.repo}:{ref[:19]}"
    _expect(a.status == 200, f"{what}: status {a.status}: {a.body[:200]!r}")
    _expect(a.headers.get("content-length") in (None, str(a.length)), f"{what}: Content-Length vs body")
    _expect(a.body == image.manifest_bytes, f"{what}: body hashes to {a.sha256[:19]}", corrupt=True)
    _expect(a.headers.get("docker-content-digest") == image.manifest_digest,
            f"{what}: Docker-Content-Digest {a.headers.get('docker-content-digest')}")
    _expect((a.headers.get("content-type") or "").split(";")[0].strip() == image.media_type,
            f"{what}: Content-Type {a.headers.get('content-type')}")
    return a


def head_manifest(client: Client, token: str, image: Image, by_digest: bool) -> Answer:
    ref = image.manifest_digest if by_digest else image.tag
    a = client.request("HEAD", _registry(image.repo, "manifests", ref),
                       [("Authorization", f"Bearer {token}"), ("Accept", image.media_type)])
    what = f"HEAD manifest {image.repo}:{ref[:19]}"
    _expect(a.status == 200, f"{what}: status {a.status}")
    _expect(a.headers.get("docker-content-digest") == image.manifest_digest,
            f"{what}: Docker-Content-Digest {a.headers.get('docker-content-digest')}")
    _expect(a.headers.get("content-length") == str(len(image.manifest_bytes)),
            f"{what}: Content-Length {a.headers.get('content-length')}")
    return a


def prime(proxy_port: int, ca_file: Path | str, images: list[Image], proxy_host: str = "127.0.0.1") -> None:
    """Pull each image once, one request at a time (tag manifest, then every blob); raises
    CheckFailed on any wrong answer."""
    client = Client(proxy_port, ca_file, proxy_host)
    for image in images:
        token = client.token(image.repo)
        get_manifest(client, token, image, by_digest=False)
        for digest, size in image.blobs:
            get_blob(client, token, image.repo, digest, size)


# -- the run ----------------------------------------------------------------------------------

class _Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors = 0
        self.corrupt = 0
        self.bytes = 0
        self.redirects = 0
        self.samples: list[str] = []
        self.cold_done = 0

    def ok(self, kind: str, ms: float, a) -> None:
        with self.lock:
            self.requests[kind] += 1
            self.latency[kind].append(ms)
            if isinstance(a, Answer):
                self.bytes += a.length
                self.redirects += a.hops

    def failed(self, kind: str, ms: float, e: BaseException) -> None:
        with self.lock:
            self.requests[kind] += 1
            self.latency[kind].append(ms)
            if isinstance(e, CheckFailed) and e.corrupt:
                self.corrupt += 1
            else:
                self.errors += 1
            if len(self.samples) < MAX_SAMPLES:
                self.samples.append(f"{kind}: {type(e).__name__}: {e}")


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))], 1)


class _Run:
    def __init__(self, proxy_port, ca_file, plan: Plan, clients: int, seconds: float, seed: int, proxy_host: str):
        self.plan = plan
        self.ctx = ssl.create_default_context(cafile=str(ca_file))
        self.client = Client(proxy_port, ca_file, proxy_host, context=self.ctx)
        self.clients = clients
        self.seconds = seconds
        self.seed = seed
        self.tally = _Tally()
        self.warm = list(plan.warm)  # grows as cold images are pulled
        self.warm_lock = threading.Lock()
        self.start = 0.0
        self.deadline = 0.0
        groups = min(plan.miss_groups, clients // max(plan.miss_group_size, 1)) if plan.cold else 0
        self.groups = [threading.Barrier(plan.miss_group_size) for _ in range(groups)]
        # which cold images each group pulls, and when each starts (spread over the run)
        self.cold_of: list[list[tuple[float, Image]]] = [[] for _ in range(groups)]
        n = len(plan.cold)
        for i, image in enumerate(plan.cold if groups else ()):
            self.cold_of[i % groups].append((seconds * plan.cold_span * (i + 1) / (n + 1), image))
        self.unpulled = n if groups else 0

    def timed(self, kind: str, fn, *args):
        t = time.perf_counter()
        try:
            a = fn(*args)
        except Exception as e:  # noqa: BLE001 - every failure is counted and sampled
            self.tally.failed(kind, (time.perf_counter() - t) * 1000, e)
            return None
        self.tally.ok(kind, (time.perf_counter() - t) * 1000, a)
        return a

    def token(self, tokens: dict[str, str], repo: str) -> str | None:
        if repo not in tokens:
            tok = self.timed("token", self.client.token, repo)
            if tok is None:
                return None
            tokens[repo] = tok
        return tokens[repo]

    def worker(self, index: int) -> None:
        try:
            self._work(index)
        except BaseException as e:  # a bug here must show as an error, not as a quiet client
            self.tally.failed("loadgen", 0.0, e)
            for barrier in self.groups:
                barrier.abort()  # nobody waits for this client at a barrier

    def _work(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        tokens: dict[str, str] = {}
        group = index // self.plan.miss_group_size if index < len(self.groups) * self.plan.miss_group_size else None
        pending = list(self.cold_of[group]) if group is not None else []
        kinds = list(self.plan.weights)
        weights = [self.plan.weights[k] for k in kinds]
        while True:
            now = time.monotonic()
            if pending and now - self.start >= pending[0][0]:
                _, image = pending.pop(0)
                self.pull_cold(group, index % self.plan.miss_group_size == 0, tokens, image)
                continue
            if now >= self.deadline and not pending:
                return
            self.one(rng, rng.choices(kinds, weights)[0], tokens)

    def one(self, rng: random.Random, kind: str, tokens: dict[str, str]) -> None:
        with self.warm_lock:
            image = rng.choice(self.warm)
        token = self.token(tokens, image.repo)
        if token is None:
            return
        c = self.client
        if kind in ("blob_get", "blob_head"):
            digest, size = rng.choice(image.blobs)
            self.timed(kind, get_blob if kind == "blob_get" else head_blob, c, token, image.repo, digest, size)
        elif kind == "manifest_get_tag":
            self.timed(kind, get_manifest, c, token, image, False)
        elif kind == "manifest_get_digest":
            self.timed(kind, get_manifest, c, token, image, True)
        elif kind == "manifest_head":
            self.timed(kind, head_manifest, c, token, image, rng.random() < 0.5)
        else:
            raise ValueError(f"unknown request kind {kind!r}")

    def pull_cold(self, group: int, leader: bool, tokens: dict[str, str], image: Image) -> None:
        """All members of the group: the tag manifest at the same moment, then each blob."""
        barrier = self.groups[group]
        token = self.token(tokens, image.repo)
        steps = [("cold_manifest_get", get_manifest, (image, False))]
        steps += [("cold_blob_get", get_blob, (image.repo, d, s)) for d, s in image.blobs]
        for kind, fn, args in steps:
            try:
                barrier.wait(timeout=180)
            except threading.BrokenBarrierError as e:
                self.tally.failed(kind, 0.0, RuntimeError(f"miss group {group} broke up: {e!r}"))
                return
            if token is None:
                self.tally.failed(kind, 0.0, RuntimeError("no token"))
                continue
            self.timed(kind, fn, self.client, token, *args)
        try:
            barrier.wait(timeout=180)  # the whole group is through: the image is warm now
        except threading.BrokenBarrierError:
            return
        if leader:
            with self.warm_lock:
                self.warm.append(image)
            with self.tally.lock:
                self.tally.cold_done += 1

    def run(self) -> dict:
        threads = [threading.Thread(target=self.worker, args=(i,), name=f"loadgen-{i}", daemon=True)
                   for i in range(self.clients)]
        self.start = time.monotonic()
        self.deadline = self.start + self.seconds
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - self.start
        t = self.tally
        every = [ms for v in t.latency.values() for ms in v]
        return {
            "clients": self.clients,
            "seconds": round(elapsed, 2),
            "requests": dict(sorted(t.requests.items())),
            "total": sum(t.requests.values()),
            "errors": t.errors,
            "corrupt": t.corrupt,
            "bytes": t.bytes,
            "redirects": t.redirects,
            "cold_images": len(self.plan.cold),
            "cold_images_pulled": t.cold_done,
            "latency_ms": {"p50": _percentile(every, 0.50), "p99": _percentile(every, 0.99)},
            "latency_ms_by_kind": {k: {"p50": _percentile(v, 0.50), "p99": _percentile(v, 0.99)}
                                   for k, v in sorted(t.latency.items())},
            "error_samples": list(t.samples),
        }


def run_load(proxy_port: int, ca_file: Path | str, plan: Plan, clients: int = 50, seconds: float = 60,
             seed: int = 1, proxy_host: str = "127.0.0.1") -> dict:
    """Run `clients` concurrent clients against the proxy for `seconds` (requests under way at
    the end are finished, cold pulls scheduled in the run are completed); returns the counts."""
    if not plan.warm:
        raise ValueError("the plan needs at least one warm image")
    return _Run(proxy_port, ca_file, plan, clients, seconds, seed, proxy_host).run()
