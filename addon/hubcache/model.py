"""The registry objects every layer speaks of: manifests, blobs, tags, routes, outcomes, media types.

Pure data, no behaviour beyond what names it: the bottom of the dependency graph (hooks →
decide / upstream / serve → store → model).
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from dataclasses import dataclass

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)  # what hubcache asks for on its own HEADs

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # Docker Hub's own limit; larger upstream answers are refused

DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def is_digest(value: str) -> bool:
    return DIGEST_RE.fullmatch(value) is not None


def oci_error_body(code: str, message: str) -> bytes:
    """An OCI distribution error body: {"errors": [{"code": ..., "message": ...}]}."""
    return json.dumps({"errors": [{"code": code, "message": message}]}).encode()


@dataclass(frozen=True)
class Manifest:
    digest: str
    media_type: str
    body: bytes


@dataclass(frozen=True)
class BlobInfo:
    digest: str
    size: int
    blob_id: bytes
    chunk_size: int


@dataclass(frozen=True)
class TagRecord:
    repository: str
    tag: str
    media_type: str
    digest: str
    size: int
    fetched: float  # when this digest was first seen for the tag
    confirmed: float  # when upstream last confirmed it


class Kind(enum.Enum):
    ROOT = "root"  # GET /v2/
    MANIFEST = "manifest"  # GET or HEAD
    MANIFEST_WRITE = "manifest-write"  # PUT or DELETE of a manifest: relayed, then the tag record follows
    BLOB = "blob"
    TAGS = "tags"  # GET /v2/<name>/tags/list
    TOKEN = "token"
    CDN = "cdn"  # a request on a blob CDN host
    OTHER = "other"  # a registry request hubcache relays: uploads, blob deletes, referrers, _catalog, anything new
    INVALID = "invalid"  # a registry path with a bad name, tag or digest


@dataclass(frozen=True)
class Route:
    kind: Kind
    repository: str = ""  # the name the store keeps it under: bare on Docker Hub, else <registry>/<name>
    reference: str = ""  # tag or digest
    error_code: str = ""  # OCI error code for Kind.INVALID
    error_message: str = ""
    registry: str = "docker.io"  # the registry's name (registries.Registry.name)
    name: str = ""  # the repository as the registry's URLs and token scopes spell it ("": repository)

    @property
    def by_digest(self) -> bool:
        return self.reference.startswith("sha256:")

    @property
    def remote(self) -> str:
        """The repository as upstream knows it (URLs, token scopes)."""
        return self.name or self.repository

    @property
    def image(self) -> str:
        """The image as `docker pull` names it, for messages: docker.io/library/x, quay.io/org/y."""
        return f"{self.registry}/{self.remote}"


class Outcome(enum.Enum):
    """What hubcache did with a registry request: the log line's first word and a metric label."""

    HIT = "hit"  # answered from the store (or locally), upstream not asked
    REVALIDATED = "revalidated"  # a tag past its TTL that upstream confirmed with a free HEAD
    MISS = "miss"  # fetched upstream (and stored when it could be)
    STALE = "stale"  # upstream could not or would not answer: the store's last answer, marked stale
    PASSTHROUGH = "passthrough"  # relayed to upstream as the client sent it; nothing stored
    REJECTED = "rejected"  # bad input: a malformed request, or upstream bytes that did not match their digest
    REFUSED = "refused"  # private content upstream did not confirm this client may pull
    ERROR = "error"  # could not be served: upstream unavailable and nothing stored, or a failed transfer


class Refusal(Exception):
    """A request answered with an OCI error instead of content. Raised anywhere on the request
    path; one place (the request hook) turns it into the client's response and the log line.

    `note` is the log line's reason (the message says it to the client, in full)."""

    def __init__(self, status: int, code: str, message: str, outcome: Outcome = Outcome.ERROR, note: str = "",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.outcome = outcome
        self.note = note
        self.headers = headers or {}


@dataclass(frozen=True)
class ImageCounter:
    """What hubcache served of one image: `reference` as `docker pull` names it
    (docker.io/library/postgres:12.2), `digest` what the tag pointed to; times in epoch seconds."""

    reference: str
    digest: str
    pulls: int
    bytes: int
    first: float
    last: float


@dataclass(frozen=True)
class ClientCounter:
    """What hubcache served one client (its proxy login, else its address)."""

    client: str
    pulls: int
    bytes: int
    last: float
