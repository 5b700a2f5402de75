"""The OCI image layout archive of `hubcache export` and `import`: what its index.json says and
what an import must check before anything is committed. Pure: no store, no files.

An archive is a tar of `oci-layout`, `blobs/sha256/<hex>` (manifests and blobs, byte for byte as
the registry sent them) and `index.json`, one entry per image, annotated with the full reference
(`org.opencontainers.image.ref.name` and containerd's `io.containerd.image.name`, both
`docker.io/library/postgres:12.2`, so skopeo's `oci-archive:FILE:REF` and `ctr images import`
find it) and with when hubcache first saw the tag point there and last had it confirmed."""

from __future__ import annotations

import calendar
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from hubcache.model import INDEX_TYPES, MANIFEST_TYPES, MAX_MANIFEST_BYTES, OCI_INDEX, TagRecord, is_digest
from hubcache.registries import image_name

LAYOUT_FILE = "oci-layout"
LAYOUT_BODY = b'{"imageLayoutVersion":"1.0.0"}'
INDEX_FILE = "index.json"
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
FETCHED = "io.hubcache.tag.fetched"  # when hubcache first saw the tag point to this digest
CONFIRMED = "io.hubcache.tag.confirmed"  # when upstream last confirmed it

MANIFESTS = frozenset(MANIFEST_TYPES) | {"application/vnd.oci.artifact.manifest.v1+json"}


class ArchiveError(ValueError):
    """The archive is not one import may take; the message says what is wrong, naming the file."""


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int


@dataclass(frozen=True)
class Entry:
    """One image of the archive: its reference, top manifest, and the tag's times."""

    reference: str  # docker.io/library/postgres:12.2
    top: Descriptor
    fetched: float
    confirmed: float


def blob_path(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def digest_of_path(name: str) -> str | None:
    """`blobs/sha256/<hex>` -> its digest; None for any other path."""
    name = name.removeprefix("./")
    if not name.startswith("blobs/sha256/"):
        return None
    digest = "sha256:" + name.removeprefix("blobs/sha256/")
    return digest if is_digest(digest) else None


def reference(repository: str, tag: str) -> str:
    """A store repository and tag as the archive names the image: docker.io/library/postgres:12.2."""
    return f"{image_name(repository)}:{tag}"


def stamp(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def parse_stamp(text: str) -> float:
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))


def index_json(entries: list[Entry]) -> bytes:
    """The archive's index.json: one descriptor per image, in the order given."""
    manifests = [{
        "mediaType": e.top.media_type, "digest": e.top.digest, "size": e.top.size,
        "annotations": {REF_NAME: e.reference, CONTAINERD_NAME: e.reference,
                        FETCHED: stamp(e.fetched), CONFIRMED: stamp(e.confirmed)},
    } for e in entries]
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}, indent=2).encode()


def _descriptor(item: object, where: str) -> Descriptor:
    if not isinstance(item, dict):
        raise ArchiveError(f"{where}: a descriptor that is not an object")
    digest, size, media_type = item.get("digest"), item.get("size"), item.get("mediaType")
    if not isinstance(digest, str) or not is_digest(digest):
        raise ArchiveError(f"{where}: digest {digest!r} is not a sha256 digest")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ArchiveError(f"{where}: {digest} has no valid size")
    if not isinstance(media_type, str) or not media_type:
        raise ArchiveError(f"{where}: {digest} has no mediaType")
    return Descriptor(media_type, digest, size)


def parse_index(raw: bytes) -> list[Entry]:
    """The images of an archive's index.json. Each entry needs a manifest media type and a
    reference by tag (ref.name, or containerd's name); times default to 0 (unknown)."""
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise ArchiveError(f"{INDEX_FILE} is not JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("manifests"), list):
        raise ArchiveError(f"{INDEX_FILE} is not an OCI image index")
    entries = []
    for n, item in enumerate(doc["manifests"]):
        top = _descriptor(item, f"{INDEX_FILE} entry {n}")
        if top.media_type not in MANIFESTS:
            raise ArchiveError(f"{INDEX_FILE} entry {n}: {top.digest} is a {top.media_type}, not a manifest")
        notes = item.get("annotations") or {}
        ref = notes.get(CONTAINERD_NAME) or notes.get(REF_NAME) if isinstance(notes, dict) else None
        if not isinstance(ref, str) or not ref:
            raise ArchiveError(f"{INDEX_FILE} entry {n}: {top.digest} names no image ({REF_NAME})")
        try:
            fetched = parse_stamp(notes[FETCHED]) if FETCHED in notes else 0.0
            confirmed = parse_stamp(notes[CONFIRMED]) if CONFIRMED in notes else fetched
        except (TypeError, ValueError):
            raise ArchiveError(f"{INDEX_FILE} entry {n}: a time that is not YYYY-MM-DDTHH:MM:SSZ") from None
        entries.append(Entry(ref, top, fetched, max(fetched, confirmed)))
    return entries


def references(media_type: str, body: bytes, where: str) -> tuple[list[Descriptor], list[Descriptor]]:
    """What a manifest references: (child manifests of an index, blobs of an image manifest:
    its config then its layers). Raises ArchiveError when the body is not such a manifest."""
    if len(body) > MAX_MANIFEST_BYTES:
        raise ArchiveError(f"{where}: a manifest over {MAX_MANIFEST_BYTES} bytes")
    try:
        doc = json.loads(body)
    except ValueError:
        raise ArchiveError(f"{where}: a {media_type} that is not JSON") from None
    if not isinstance(doc, dict):
        raise ArchiveError(f"{where}: a {media_type} that is not a JSON object")
    if media_type in INDEX_TYPES:
        children = doc.get("manifests")
        if not isinstance(children, list):
            raise ArchiveError(f"{where}: an index without manifests")
        return [_descriptor(c, where) for c in children], []
    blobs = [doc["config"]] if "config" in doc else []
    layers = doc.get("layers") or doc.get("blobs") or []
    if not isinstance(layers, list):
        raise ArchiveError(f"{where}: layers that are not a list")
    return [], [_descriptor(b, where) for b in blobs + layers]


def platform_of(descriptor_json: dict) -> str:
    """os/arch[/variant] of an index's child descriptor, for messages ("" when it says none)."""
    p = descriptor_json.get("platform")
    if not isinstance(p, dict):
        return ""
    return "/".join(str(p[k]) for k in ("os", "architecture", "variant") if p.get(k))


@dataclass(frozen=True)
class ImagePlan:
    """What importing one image writes: blobs, then manifests children first, then its tag."""

    entry: Entry
    repository: str  # the store's name: library/postgres
    tag: str
    blobs: tuple[Descriptor, ...]
    manifests: tuple[Descriptor, ...]
    left_out: tuple[str, ...]  # digests of an index's children the archive does not hold


def plan_import(entries: list[Entry], sizes: dict[str, int], body: Callable[[str], bytes]) -> list[ImagePlan]:
    """Check that every image of the archive is whole (each manifest and blob it needs is there,
    with the size its descriptor says) and say what importing it writes. `sizes`: the size of
    every blob file of the archive, by digest (already checked to hash to its name); `body`:
    a manifest's bytes by digest. An index may lack some of its children (an archive of the
    platforms a store held); an image manifest may lack nothing."""
    from hubcache.decide.routes import parse_reference

    plans = []
    for e in entries:
        try:
            repository, tag = parse_reference(e.reference)
        except ValueError as err:
            raise ArchiveError(f"{INDEX_FILE}: {err}") from None
        if tag is None or is_digest(tag):
            raise ArchiveError(f"{INDEX_FILE}: {e.reference} names no tag")
        blobs: dict[str, Descriptor] = {}
        manifests: list[Descriptor] = []
        left_out: list[str] = []
        _walk(e.top, e.reference, sizes, body, blobs, manifests, left_out, top=True)
        plans.append(ImagePlan(e, repository, tag, tuple(blobs.values()), tuple(manifests), tuple(left_out)))
    return plans


def _present(d: Descriptor, where: str, sizes: dict[str, int]) -> bool:
    if d.digest not in sizes:
        return False
    if sizes[d.digest] != d.size:
        raise ArchiveError(f"{where}: {blob_path(d.digest)} is {sizes[d.digest]} bytes, its descriptor says {d.size}")
    return True


def _walk(d: Descriptor, where: str, sizes: dict[str, int], body: Callable[[str], bytes], blobs: dict[str, Descriptor],
          manifests: list[Descriptor], left_out: list[str], top: bool = False) -> None:
    if not _present(d, where, sizes):
        if top:
            raise ArchiveError(f"{where}: its manifest {blob_path(d.digest)} is not in the archive")
        left_out.append(d.digest)
        return
    children, needed = references(d.media_type, body(d.digest), f"{where}: {blob_path(d.digest)}")
    for child in children:
        if child.media_type not in MANIFESTS:
            raise ArchiveError(f"{where}: {child.digest} in an index is a {child.media_type}, not a manifest")
        if child.media_type in INDEX_TYPES:
            raise ArchiveError(f"{where}: an index inside an index ({child.digest}) is not imported")
        _walk(child, where, sizes, body, blobs, manifests, left_out)
    for b in needed:
        if not _present(b, where, sizes):
            raise ArchiveError(f"{where}: {blob_path(b.digest)} (of {d.digest}) is not in the archive")
        blobs[b.digest] = b
    if children and len(left_out) == len(children):
        raise ArchiveError(f"{where}: none of the index's manifests is in the archive")
    if d not in manifests:
        manifests.append(d)


def keeps_newer(records: dict[str, TagRecord], entry: Entry) -> bool:
    """Whether the store's own record of the tag is newer than the archive's and points
    elsewhere: an import does not move a tag back to an older image."""
    return any(r.digest != entry.top.digest and r.confirmed > entry.confirmed for r in records.values())
