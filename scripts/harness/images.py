"""Build test images in skopeo's `dir:` layout, deterministically and in constant memory.

A `dir:` layout is a directory with `version`, `manifest.json` and one file per
blob named by its hex digest; instance manifests of an index are
`<hex>.manifest.json`. skopeo pushes the manifest bytes from it unchanged, so
the digests computed here are the ones the registry serves.

Each layer is a tar holding one file of pseudo-random bytes (random.Random(seed),
generated 1 MiB at a time), gzip-wrapped at level 0: valid gzip that costs no
CPU (random data would not compress anyway), so a 1 GiB layer builds in seconds.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
V2S2_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
V2S2_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
V2S2_CONFIG = "application/vnd.docker.container.image.v1+json"
V2S2_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

TYPES = {  # fmt -> (manifest, config, layer, index)
    "oci": (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER, OCI_INDEX),
    "v2s2": (V2S2_MANIFEST, V2S2_CONFIG, V2S2_LAYER, V2S2_LIST),
}

BLOCK = 1 << 20
EPOCH = 1700000000  # fixed mtime/created: same seeds, same digests
CREATED = "2023-11-14T22:13:20Z"


@dataclass
class ImageInfo:
    manifest_digest: str
    manifest_bytes: bytes
    media_type: str
    config_digest: str
    layer_digests: list[str]
    layer_sizes: list[int]  # blob (compressed) sizes, as in the manifest
    config_bytes: bytes = b""
    diff_ids: list[str] = field(default_factory=list)
    platform: dict = field(default_factory=dict)
    name: str = ""  # repository and tag it was pushed to, if any
    tag: str = ""


@dataclass
class IndexInfo:
    digest: str
    manifest_bytes: bytes
    media_type: str
    manifests: dict[str, ImageInfo]  # platform key as given -> child image
    name: str = ""
    tag: str = ""


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def platform_of(key: str) -> dict:
    """'amd64', 'arm64', 'linux/arm/v7' -> an OCI platform object."""
    parts = key.split("/")
    if len(parts) == 1:
        parts = ["linux"] + parts
    plat = {"architecture": parts[1], "os": parts[0]}
    if len(parts) > 2:
        plat["variant"] = parts[2]
    elif parts[1] == "arm64":
        plat["variant"] = "v8"
    return plat


class _RandomReader:
    """File-like source of `size` bytes from random.Random(seed), in fixed blocks
    so the bytes do not depend on how the reader is called."""

    def __init__(self, size: int, seed: int):
        self.left = size
        self.rng = random.Random(seed)
        self.buf = b""

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = self.left + len(self.buf)
        while len(self.buf) < n and self.left:
            k = min(BLOCK, self.left)
            self.buf += self.rng.randbytes(k)
            self.left -= k
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


class _Hashing:
    """Write-through wrapper that hashes and counts what passes."""

    def __init__(self, target):
        self.target = target
        self.h = hashlib.sha256()
        self.n = 0

    def write(self, b) -> int:
        self.h.update(b)
        self.n += len(b)
        if self.target is not None:
            self.target.write(b)
        return len(b)

    def flush(self):
        pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.h.hexdigest()


def write_layer(directory: Path, size: int, seed: int) -> tuple[str, int, str]:
    """Write one layer blob into `directory`; returns (digest, blob size, diff_id)."""
    tmp = directory / f".layer-{seed}-{size}.tmp"
    with open(tmp, "wb") as f:
        blob = _Hashing(f)
        with gzip.GzipFile(filename="", mode="wb", compresslevel=0, fileobj=blob, mtime=0) as gz:
            tar_stream = _Hashing(gz)
            with tarfile.open(
                fileobj=tar_stream, mode="w|", bufsize=BLOCK, format=tarfile.USTAR_FORMAT,
                copybufsize=BLOCK,
            ) as tar:
                info = tarfile.TarInfo(f"hubcache/seed-{seed}-size-{size}.bin")
                info.size, info.mtime, info.mode = size, EPOCH, 0o644
                info.uname = info.gname = "root"
                tar.addfile(info, _RandomReader(size, seed))
    os.replace(tmp, directory / blob.digest.split(":", 1)[1])
    return blob.digest, blob.n, tar_stream.digest


def _write_blob(directory: Path, data: bytes) -> str:
    digest = sha256(data)
    (directory / digest.split(":", 1)[1]).write_bytes(data)
    return digest


def _dumps(obj) -> bytes:
    return json.dumps(obj, indent=3).encode()  # Docker's own manifests use 3 spaces


def _start_layout(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "version").write_text("Directory Transport Version: 1.1\n")


def build_image(
    directory: Path, layers: list[tuple[int, int]], fmt: str = "oci", platform: str = "amd64",
    write_manifest: bool = True,
) -> ImageInfo:
    """Build an image in `directory` (a dir: layout). layers: [(size_bytes, seed), ...]."""
    manifest_type, config_type, layer_type, _ = TYPES[fmt]
    _start_layout(directory)
    plat = platform_of(platform)
    built = [write_layer(directory, size, seed) for size, seed in layers]
    config = {
        **plat,
        "created": CREATED,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
        },
        "rootfs": {"type": "layers", "diff_ids": [d for _, _, d in built]},
        "history": [
            {"created": CREATED, "created_by": f"hubcache test layer size={s} seed={seed}"}
            for s, seed in layers
        ],
    }
    config_bytes = _dumps(config)
    config_digest = _write_blob(directory, config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": layer_type, "digest": d, "size": n} for d, n, _ in built],
    }
    manifest_bytes = _dumps(manifest)
    if write_manifest:
        (directory / "manifest.json").write_bytes(manifest_bytes)
    return ImageInfo(
        manifest_digest=sha256(manifest_bytes),
        manifest_bytes=manifest_bytes,
        media_type=manifest_type,
        config_digest=config_digest,
        layer_digests=[d for d, _, _ in built],
        layer_sizes=[n for _, n, _ in built],
        config_bytes=config_bytes,
        diff_ids=[d for _, _, d in built],
        platform=plat,
    )


def build_attestation(directory: Path, child: ImageInfo) -> ImageInfo:
    """An attestation manifest for `child` as BuildKit attaches one to each platform of an index
    (provenance, as Hub serves them in 2026): an OCI manifest of in-toto layers, platform
    unknown/unknown, pointing back at the child by the index entry's annotations."""
    statement = _dumps({"_type": "https://in-toto.io/Statement/v0.1",
                        "predicateType": "https://slsa.dev/provenance/v0.2",
                        "subject": [{"name": "_", "digest": {"sha256": child.manifest_digest.split(":", 1)[1]}}],
                        "predicate": {"buildType": "https://mobyproject.org/buildkit@v1"}})
    layer = _write_blob(directory, statement)
    config_bytes = _dumps({"architecture": "unknown", "os": "unknown", "config": {},
                           "rootfs": {"type": "layers", "diff_ids": [layer]}})
    config = _write_blob(directory, config_bytes)
    manifest_bytes = _dumps({
        "schemaVersion": 2, "mediaType": TYPES["oci"][0],
        "config": {"mediaType": TYPES["oci"][1], "digest": config, "size": len(config_bytes)},
        "layers": [{"mediaType": "application/vnd.in-toto+json", "digest": layer, "size": len(statement),
                    "annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"}}],
    })
    return ImageInfo(sha256(manifest_bytes), manifest_bytes, TYPES["oci"][0], config, [layer], [len(statement)],
                     config_bytes, [layer], {"architecture": "unknown", "os": "unknown"})


def build_index(
    directory: Path, children: dict[str, ImageInfo], fmt: str, blob_source, attestations: bool = False,
) -> tuple[str, bytes, str]:
    """Write an index over already-built children into `directory` (a dir: layout); with
    `attestations`, each child is followed by its attestation manifest (build_attestation).

    Child blobs not in `directory` yet are symlinked from `blob_source(digest)`
    (the registry's storage), so nothing is copied. Returns (digest, bytes, media type).
    """
    index_type = TYPES[fmt][3]
    _start_layout(directory)
    entries = []
    for key, child in children.items():
        hexd = child.manifest_digest.split(":", 1)[1]
        (directory / f"{hexd}.manifest.json").write_bytes(child.manifest_bytes)
        for digest in [child.config_digest, *child.layer_digests]:
            p = directory / digest.split(":", 1)[1]
            if not p.exists():
                p.symlink_to(blob_source(digest))
        entries.append({
            "mediaType": child.media_type,
            "digest": child.manifest_digest,
            "size": len(child.manifest_bytes),
            "platform": child.platform or platform_of(key),
        })
        if attestations:
            att = build_attestation(directory, child)
            (directory / f"{att.manifest_digest.split(':', 1)[1]}.manifest.json").write_bytes(att.manifest_bytes)
            entries.append({
                "mediaType": att.media_type, "digest": att.manifest_digest, "size": len(att.manifest_bytes),
                "annotations": {"vnd.docker.reference.digest": child.manifest_digest,
                                "vnd.docker.reference.type": "attestation-manifest"},
                "platform": att.platform,
            })
    data = _dumps({"schemaVersion": 2, "mediaType": index_type, "manifests": entries})
    (directory / "manifest.json").write_bytes(data)
    return sha256(data), data, index_type
