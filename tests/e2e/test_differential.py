"""Registry requests are answered through hubcache as straight from the registry: one sweep (manifests
by tag and by digest with every Accept clients send, 404s, blobs and byte ranges, tag lists, /v2/,
tokens) sent direct and through hubcache, cold (nothing stored), warm (after a pull through it) and
past the tag TTL (revalidated), anonymous and with a login, compared field by field. Every
difference hubcache may make is in ALLOWED with its reason, and each must occur in the sweep: the
list is exact, not a list of excuses."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

from harness.clients import https_connection, pull_ok, send
from harness.hubenv import AUTH_HOST, REGISTRY_HOST, ImageInfo, IndexInfo
from harness.proxy import Proxy
from hubcache.model import DOCKER_LIST, DOCKER_MANIFEST, MANIFEST_TYPES, OCI_INDEX, OCI_MANIFEST

pytestmark = pytest.mark.e2e

DIRECT_MIN = 2 << 20  # hubcache_direct_min's default: from this size on, a blob is sent by hubcache's TLS listener
SMALL, LARGE = 100_000, 3 << 20
SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
PUSHER = "pusher:pushpass"
REDIRECTS = (301, 302, 303, 307, 308)

# The Accept headers clients send for manifests, one item per header line (notes/registry-facts.md).
ACCEPTS: dict[str, list[str]] = {
    "none": [],
    "oci-index": [OCI_INDEX],
    "oci-manifest": [OCI_MANIFEST],
    "docker-list": [DOCKER_LIST],
    "docker-manifest": [DOCKER_MANIFEST],
    "all four": [", ".join(MANIFEST_TYPES)],
    "containerd": [", ".join([DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX, "*/*"])],
    "skopeo lines": [*MANIFEST_TYPES, SCHEMA1_SIGNED, "application/vnd.docker.distribution.manifest.v1+json"],
    "dockerd lines": [DOCKER_LIST, OCI_INDEX, DOCKER_MANIFEST, OCI_MANIFEST, "application/json"],
    "*/*": ["*/*"],
}
RANGES = ("bytes=0-99", "bytes=100-", "bytes=-50", "past the end")


@dataclass(frozen=True)
class Case:
    group: str  # root, token, manifest, error, blob, tags
    name: str
    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    repo: str = ""  # the repository the client gets a pull token for; "" = none
    host: str = REGISTRY_HOST
    accept: str = ""  # manifests: a key of ACCEPTS
    by_tag: bool = False
    stored_type: str = ""  # manifests: the media type the registry has under the reference
    size: int = 0  # blobs: the blob's size


@dataclass(frozen=True)
class Answer:
    """What a client ends up with, after following redirects as clients do."""

    status: int
    codes: tuple[str, ...] = ()  # OCI error codes in the body
    content_type: str = ""
    digest: str = ""  # Docker-Content-Digest
    length: str = ""  # Content-Length
    body: str = ""  # sha256 of a 200 or 206 body (a signed schema 1 manifest: of its payload); a token: its fields
    content_range: str = ""
    challenge: str = ""  # Www-Authenticate
    link: str = ""
    hops: tuple[int, ...] = ()  # the redirects followed on the way


FIELDS = tuple(Answer.__dataclass_fields__)


def _unpadded_b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _payload(body: bytes) -> bytes:
    """A signed schema 1 manifest without its signatures (signed anew at every request): what its
    digest is the sha256 of, and what stays the same from one answer to the next."""
    header = json.loads(_unpadded_b64(json.loads(body)["signatures"][0]["protected"]))
    return body[: header["formatLength"]] + _unpadded_b64(header["formatTail"])


def answer(status: int, headers: dict[str, str], body: bytes, hops: tuple[int, ...]) -> Answer:
    ctype, codes, body_digest = headers.get("content-type", ""), (), ""
    if status >= 400 and body and ctype.startswith("application/json"):
        codes = tuple(e.get("code", "") for e in json.loads(body).get("errors", []))
    elif status in (200, 206) and body:
        body_digest = "sha256:" + hashlib.sha256(_payload(body) if ctype == SCHEMA1_SIGNED else body).hexdigest()
    return Answer(status, codes, ctype, headers.get("docker-content-digest", ""), headers.get("content-length", ""), body_digest,
                  headers.get("content-range", ""), headers.get("www-authenticate", ""), headers.get("link", ""), hops)


class Client:
    """A registry client, straight to the registry (`hub` None) or through hubcache, anonymous or
    with a login (`creds`, Basic to the token endpoint), doing its token dance the same way. It
    keeps a connection per host alive, as containerd does: the sweep is a thousand requests."""

    def __init__(self, ca: Path, hub: Proxy | None = None, creds: str = "") -> None:
        self.hub, self.creds = hub, creds
        self.tls = ssl.create_default_context(cafile=str(hub.ca_cert if hub else ca))
        self.tokens: dict[str, str] = {}
        self.conns: dict[str, http.client.HTTPSConnection] = {}
        self.answers: dict[Case, Answer] = {}

    def send(self, method: str, host: str, path: str, headers: list[tuple[str, str]]) -> tuple[int, dict[str, str], bytes]:
        try:
            return self._send(method, host, path, headers)
        except (http.client.RemoteDisconnected, ConnectionError):  # the server closed a kept-alive connection
            self.conns.pop(host).close()
            return self._send(method, host, path, headers)

    def _send(self, method: str, host: str, path: str, headers: list[tuple[str, str]]) -> tuple[int, dict[str, str], bytes]:
        if host not in self.conns:  # kept alive: a tunnel per host through the proxy, as clients make
            self.conns[host] = https_connection(host, self.tls, self.hub.port if self.hub else None)
        return send(self.conns[host], method, path, headers)

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()

    def token_request(self, repo: str) -> tuple[int, dict[str, str], bytes]:
        basic = [("Authorization", "Basic " + base64.b64encode(self.creds.encode()).decode())] if self.creds else []
        return self.send("GET", AUTH_HOST, f"/token?service=registry.docker.io&scope=repository:{repo}:pull", basic)

    def token(self, repo: str) -> str:
        if repo not in self.tokens:
            status, _, body = self.token_request(repo)
            assert status == 200, (repo, status, body)
            self.tokens[repo] = json.loads(body)["token"]
        return self.tokens[repo]

    def ask(self, case: Case) -> Answer:
        if case.group == "token":  # a token is made anew each time: what is compared is which fields it has
            status, headers, body = self.token_request(case.repo)
            return replace(answer(status, headers, b"", ()), body=",".join(sorted(json.loads(body))))
        headers = list(case.headers)
        if case.repo:
            headers.append(("Authorization", f"Bearer {self.token(case.repo)}"))
        host, path, hops = case.host, case.path, ()
        while True:
            status, got, body = self.send(case.method, host, path, headers)
            if status not in REDIRECTS or len(hops) == 3:
                return answer(status, got, body, hops)
            hops += (status,)
            target = urlsplit(urljoin(f"https://{host}{path}", got["location"]))
            if target.hostname != host:  # as clients do: no Authorization for another host
                headers = [(k, v) for k, v in headers if k.lower() != "authorization"]
            host, path = target.hostname or "", target.path + (f"?{target.query}" if target.query else "")

    def cached(self, case: Case) -> Answer:
        """The registry's answer, asked once: nothing is pushed while the sweep runs."""
        if case not in self.answers:
            self.answers[case] = self.ask(case)
        return self.answers[case]


# ------------------------------------------------------------------------------------ the sweep

@dataclass
class Images:
    oci: ImageInfo
    docker: ImageInfo
    index: IndexInfo
    docker_list: IndexInfo
    blobs: ImageInfo  # five small layers, then five large ones

    def manifests(self) -> dict[str, tuple[str, str]]:
        """repository -> (digest, media type) of its tag 1"""
        return {"library/diffoci": (self.oci.manifest_digest, self.oci.media_type),
                "library/diffdocker": (self.docker.manifest_digest, self.docker.media_type),
                "library/diffindex": (self.index.digest, self.index.media_type),
                "library/difflist": (self.docker_list.digest, self.docker_list.media_type)}


def manifest_cases(img: Images) -> list[Case]:
    return [Case("manifest", f"{method} {repo}{':1' if ref == '1' else '@' + ref[:19]} accept={accept}", method,
                 f"/v2/{repo}/manifests/{ref}", tuple(("Accept", line) for line in lines), repo,
                 accept=accept, by_tag=ref == "1", stored_type=media_type)
            for repo, (digest, media_type) in img.manifests().items() for ref in ("1", digest)
            for method in ("HEAD", "GET") for accept, lines in ACCEPTS.items()]


def error_cases(img: Images) -> list[Case]:
    accept = tuple(("Accept", line) for line in ACCEPTS["skopeo lines"])
    zero, layer = "sha256:" + "0" * 64, img.oci.layer_digests[0]
    paths = {
        "unknown tag": ("library/diffoci", "/v2/library/diffoci/manifests/nosuchtag"),
        "unknown manifest digest": ("library/diffoci", f"/v2/library/diffoci/manifests/{zero}"),
        "unknown blob": ("library/diffoci", f"/v2/library/diffoci/blobs/{zero}"),
        "unknown repository": ("library/diffnosuch", "/v2/library/diffnosuch/manifests/1"),
        "blob of an unknown repository": ("library/diffnosuch", f"/v2/library/diffnosuch/blobs/{layer}"),
        "manifest of another repository": ("library/diffother", f"/v2/library/diffother/manifests/{img.oci.manifest_digest}"),
        "blob of another repository": ("library/diffother", f"/v2/library/diffother/blobs/{layer}"),
    }
    cases = [Case("error", f"{method} {what}", method, path, accept, repo) for what, (repo, path) in paths.items() for method in ("HEAD", "GET")]
    # the registry serves tag lists to GET only (HEAD: Go's plain "404 page not found")
    return cases + [Case("error", "GET tags of an unknown repository", "GET", "/v2/library/diffnosuch/tags/list", (), "library/diffnosuch")]


def blob_cases(img: Images) -> list[Case]:
    """A HEAD, then a GET of the same blob, then one blob per range: each is cold once."""
    cases, repo = [], "library/diffblob"
    blobs = list(zip(img.blobs.layer_digests, img.blobs.layer_sizes, strict=True))
    for label, group in (("small", blobs[:5]), ("large", blobs[5:])):
        (first, size), rest = group[0], group[1:]
        cases += [Case("blob", f"HEAD {label} blob", "HEAD", f"/v2/{repo}/blobs/{first}", (), repo, size=size),
                  Case("blob", f"GET {label} blob", "GET", f"/v2/{repo}/blobs/{first}", (), repo, size=size)]
        for (digest, size), rng in zip(rest, RANGES, strict=True):
            value = f"bytes={size}-" if rng == "past the end" else rng
            cases.append(Case("blob", f"GET {label} blob Range {rng}", "GET", f"/v2/{repo}/blobs/{digest}", (("Range", value),), repo, size=size))
    return cases


def other_cases() -> list[Case]:
    return [
        Case("root", "GET /v2/ without a token", "GET", "/v2/"),
        Case("root", "GET /v2/ with a token", "GET", "/v2/", (), "library/diffoci"),
        Case("token", "token for a pull", "GET", "/token", (), "library/diffoci", host=AUTH_HOST),
        Case("tags", "tags/list", "GET", "/v2/library/diffoci/tags/list", (), "library/diffoci"),
        Case("tags", "tags/list n=1", "GET", "/v2/library/diffoci/tags/list?n=1", (), "library/diffoci"),
        Case("tags", "tags/list n=1 last=1", "GET", "/v2/library/diffoci/tags/list?n=1&last=1", (), "library/diffoci"),
    ]


def cold_order(cases: list[Case]) -> list[Case]:
    """HEADs first, then the GETs a stored manifest would answer otherwise (a tag the registry
    converts for a client that names none of its types), then the rest: so that what one request
    leaves in the cold store until it is evicted never changes another one's answer."""
    def rank(c: Case) -> int:
        return 0 if c.method == "HEAD" else 1 if c.by_tag and c.accept in ("none", "*/*") else 2
    return sorted(cases, key=rank)


# --------------------------------------------------------------------------- allowed differences

@dataclass(frozen=True)
class Allowed:
    """Where hubcache's answer may differ from the registry's: in the cases `when` selects (case,
    phase), the fields `expect` gives (it may ask the registry another question), with hubcache's
    value there (FREE: any value)."""

    why: str
    when: Callable[[Case, str], bool]
    expect: Callable[[Case, Callable[[Case], Answer]], dict[str, object]]


FREE = object()


def _as_stored(c: Case, registry: Callable[[Case], Answer]) -> dict[str, object]:
    """What the registry answers a client that names the type it has under the reference."""
    named = registry(replace(c, headers=(("Accept", c.stored_type),)))
    return {f: getattr(named, f) for f in FIELDS}


def _hops(c: Case) -> tuple[int, ...]:
    return (307,) if c.size >= DIRECT_MIN else ()


ALLOWED = [
    Allowed("A client that sends no Accept, or only */*, gets a stored OCI manifest or index (what a client naming its "
            "type gets): by HTTP's rules it accepts any type. The registry answers it 404 MANIFEST_UNKNOWN ('OCI manifest "
            "found, but accept header does not support OCI manifests'), as Docker Hub does. A tag past hubcache_tag_ttl is "
            "revalidated with the client's Accept, and then the registry's 404 is what the client gets. A client that "
            "names only other types gets the registry's 404 from hubcache too.",
            lambda c, phase: not phase.startswith("cold") and c.group == "manifest" and c.accept in ("none", "*/*")
            and c.stored_type in (OCI_MANIFEST, OCI_INDEX) and (phase != "past the TTL" or not c.by_tag),
            _as_stored),
    Allowed("A warm tag (within hubcache_tag_ttl) of a Docker manifest or list is served as it is stored to a client that "
            "accepts it through */* or by sending no Accept: the registry converts it for a client that names none of "
            "its types (to a signed schema 1 manifest, of the list's linux/amd64 image). No client pulls schema 1 today, "
            "and the stored answer costs no upstream request. Past the TTL, the HEAD that revalidates the tag carries "
            "the client's Accept, and the registry's conversion is what the client gets.",
            lambda c, phase: phase in ("warm", "warm, pusher") and c.group == "manifest" and c.by_tag and c.accept in ("none", "*/*")
            and c.stored_type in (DOCKER_MANIFEST, DOCKER_LIST),
            _as_stored),
    Allowed("A blob GET is answered by hubcache's blob server, which is the registry and its CDN at once: a small blob "
            "at once (200 or 206, no redirect), a large one by a 307 to hubcache's TLS listener instead of the CDN. Its "
            "answer carries Docker-Content-Digest, as distribution's does when it serves a blob itself; the CDN's has none.",
            lambda c, phase: c.group == "blob" and c.method == "GET" and not c.name.endswith("past the end"),
            lambda c, registry: {"digest": FREE, "hops": _hops(c)}),
    Allowed("A Range past the end of a blob gets 416 with the same Content-Range; the body is hubcache's OCI error "
            "(RANGE_INVALID) where the CDN sends its own (here an empty text/plain; S3 an XML error).",
            lambda c, phase: c.group == "blob" and c.name.endswith("past the end"),
            lambda c, registry: {"codes": ("RANGE_INVALID",), "content_type": "application/json", "length": FREE, "hops": _hops(c)}),
    Allowed("A warm blob HEAD is answered from the store (200, Content-Length, Docker-Content-Digest), as distribution "
            "answers it when it serves blobs itself; this registry redirects a HEAD to its CDN as well.",
            lambda c, phase: phase.startswith("warm") and c.group == "blob" and c.method == "HEAD",
            lambda c, registry: {"digest": FREE, "hops": ()}),
    Allowed("hubcache answers /v2/ itself (so a warm pull needs no upstream request), with Docker Hub's Content-Type, "
            "application/json: the test registry, distribution 2.8, adds '; charset=utf-8'.",
            lambda c, phase: c.group == "root",
            lambda c, registry: {"content_type": "application/json"}),
    Allowed("An anonymous token request is answered by hubcache with a token of its own (same fields, its own bytes), "
            "good only through hubcache, so that a warm pull needs no upstream request.",
            lambda c, phase: c.group == "token" and "pusher" not in phase,
            lambda c, registry: {"length": FREE}),
]


def compare(cases: list[Case], direct: Client, through: Client, phase: str, seen: set[int]) -> list[str]:
    """Every field where `through` answers otherwise than `direct` and ALLOWED does not say so,
    one line per case; `seen` gets the allowances that made a difference."""
    problems = []
    for case in cases:
        want, got = direct.cached(case), through.ask(case)
        for i, allowed in enumerate(ALLOWED):
            if allowed.when(case, phase):
                expect = {f: getattr(got, f) if v is FREE else v for f, v in allowed.expect(case, direct.cached).items()}
                if any(getattr(want, f) != v for f, v in expect.items()):
                    seen.add(i)
                want = replace(want, **expect)
        if diff := [f"{f}: registry {getattr(want, f)!r}, hubcache {getattr(got, f)!r}" for f in FIELDS if getattr(want, f) != getattr(got, f)]:
            problems.append(f"{phase}: {case.name}: " + "; ".join(diff))
    return problems


# -------------------------------------------------------------------------------------- set-up

@pytest.fixture(scope="module")
def images(upstream) -> Images:
    oci = upstream.push_image("library/diffoci", "1", [(SMALL, 7101), (LARGE, 7102)], fmt="oci")
    upstream.push_image("library/diffoci", "2", [(SMALL, 7101), (LARGE, 7102)], fmt="oci")  # a second tag to list
    upstream.push_image("library/diffother", "1", [(SMALL, 7108)])  # a repository without diffoci's content
    return Images(
        oci,
        upstream.push_image("library/diffdocker", "1", [(SMALL, 7103)], fmt="v2s2"),
        upstream.push_index("library/diffindex", "1", {"amd64": [(SMALL, 7104)], "arm64": [(SMALL, 7105)]}),
        upstream.push_index("library/difflist", "1", {"amd64": [(SMALL, 7106)], "arm64": [(SMALL, 7107)]}, fmt="v2s2"),
        upstream.push_image("library/diffblob", "1", [(SMALL, 7110 + i) for i in range(5)] + [(LARGE, 7120 + i) for i in range(5)]),
    )


@pytest.fixture(scope="module")
def hubs(upstream, confdir, tmp_path_factory):
    """cold: a store capped at one byte, so that what a request stores is evicted right after it;
    warm: an ordinary store; past the TTL: tags are revalidated upstream at every request."""
    base = tmp_path_factory.mktemp("differential")
    started = []
    try:
        for name, sets in (("cold", ["hubcache_max_size=1"]), ("warm", []), ("past the TTL", ["hubcache_tag_ttl=0"])):
            started.append(Proxy(base / name.replace(" ", "-"), upstream.ca_cert, confdir=confdir, sets=sets).start())
        yield started
    finally:
        for hub in started:
            hub.stop()


def test_every_request_of_the_sweep_is_answered_through_hubcache_as_direct(upstream, images, hubs, certs, tmp_path):
    cold, warm, past_ttl = hubs
    direct, pusher = Client(upstream.ca_cert), Client(upstream.ca_cert, creds=PUSHER)
    through = {(hub.workdir.name, creds): Client(upstream.ca_cert, hub, creds) for hub in hubs for creds in ("", PUSHER)}
    manifests, errors, blobs, others = manifest_cases(images), error_cases(images), blob_cases(images), other_cases()
    seen: set[int] = set()
    try:
        problems = compare(cold_order(manifests + errors + others), direct, through["cold", ""], "cold", seen)
        problems += compare(cold_order(manifests + errors + others), pusher, through["cold", PUSHER], "cold, pusher", seen)
        problems += compare(blobs, direct, through["warm", ""], "cold", seen)  # on the warm hubcache, before any pull
        for hub in (warm, past_ttl):
            for repo in (*images.manifests(), "library/diffblob"):
                pull_ok(f"docker.io/{repo}:1", tmp_path / hub.workdir.name / repo.replace("/", "_"), hub, certs)
        problems += compare(manifests + errors + blobs + others, direct, through["warm", ""], "warm", seen)
        problems += compare(manifests + errors + blobs + others, pusher, through["warm", PUSHER], "warm, pusher", seen)
        problems += compare(manifests, direct, through["past-the-TTL", ""], "past the TTL", seen)
    finally:
        for client in (direct, pusher, *through.values()):
            client.close()
    never = [f"allowed, but no case needed it: {a.why}" for i, a in enumerate(ALLOWED) if i not in seen]
    assert not problems and not never, "\n".join(problems + never)
