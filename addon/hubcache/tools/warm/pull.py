"""One image pulled through the proxy as `docker pull` pulls it, bytes thrown away once hashed:
`/v2/`, an anonymous token from the realm the challenge names, the manifest (and from an index,
the manifest of each wanted platform), then the config and every layer. Each object is checked
against its digest (and a blob against its size), so a warm-up that reports success got exactly
what a later pull will be served.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from hubcache.model import INDEX_TYPES, MANIFEST_TYPES, sha256_digest
from hubcache.tools.doctor.hub import PullTarget, parse_challenge, pull_target
from hubcache.tools.warm.client import Answer, Client
from hubcache.tools.warm.platforms import Platform, select

FOREIGN = ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
           "application/vnd.docker.image.rootfs.foreign.diff.tar")  # Windows base layers: not on the registry


class PullError(Exception):
    """Why an image could not be warmed, in one line."""


@dataclass
class Pulled:
    image: str
    platforms: list[str] = field(default_factory=list)
    blobs: int = 0
    bytes: int = 0


@dataclass
class Progress:
    """Callbacks of the progress bar: more bytes to come, bytes received."""

    expect: Callable[[int], None] = lambda n: None
    got: Callable[[int], None] = lambda n: None


def error_text(answer: Answer) -> str:
    """An OCI error body's first message, or the start of any other body."""
    try:
        errors = json.loads(answer.body).get("errors") or []
        if errors and isinstance(errors[0], dict):
            return f"{errors[0].get('code', '')}: {errors[0].get('message', '')}".strip(": ")
    except (ValueError, AttributeError):
        pass
    return answer.body[:200].decode(errors="replace").strip()


class Puller:
    def __init__(self, client: Client, platforms: list[Platform], progress: Progress | None = None) -> None:
        self.client = client
        self.platforms = platforms
        self.progress = progress or Progress()
        self.tokens: dict[tuple[str, str], dict[str, str]] = {}
        self.done: set[tuple[str, str, str]] = set()  # (registry, repository, digest) fetched in this run

    def _auth(self, target: PullTarget) -> dict[str, str]:
        key = (target.registry, target.repository)
        if key in self.tokens:
            return self.tokens[key]
        ping = self.client.get(f"https://{target.netloc}/v2/", {})
        challenge = parse_challenge(ping.headers.get("www-authenticate", ""))
        auth: dict[str, str] = {}
        if ping.status == 401 and challenge.get("scheme") == "bearer" and challenge.get("realm"):
            query = urlencode({"service": challenge.get("service", ""), "scope": f"repository:{target.repository}:pull"})
            answer = self.client.get(f"{challenge['realm']}?{query}", {}, registry=False)
            if answer.status != 200:
                raise PullError(f"token from {challenge['realm']}: {answer.status} {error_text(answer)}")
            body = json.loads(answer.body)
            auth = {"Authorization": "Bearer " + (body.get("token") or body.get("access_token") or "")}
        elif ping.status == 401:
            raise PullError(f"{target.registry} asks for a login ({challenge.get('scheme') or 'no challenge'}): "
                            "warm pulls anonymously")
        elif ping.status != 200:
            raise PullError(f"GET /v2/ answered {ping.status} {error_text(ping)}")
        self.tokens[key] = auth
        return auth

    def _manifest(self, target: PullTarget, reference: str, pulled: Pulled) -> tuple[str, dict[str, Any]]:
        url = f"https://{target.netloc}/v2/{target.repository}/manifests/{reference}"
        answer = self.client.get(url, {**self._auth(target), "Accept": ", ".join(MANIFEST_TYPES)})
        if answer.status != 200:
            raise PullError(f"manifest {reference}: {answer.status} {error_text(answer)}")
        digest = sha256_digest(answer.body)
        said = answer.headers.get("docker-content-digest", digest)
        if said != digest or (reference.startswith("sha256:") and reference != digest):
            raise PullError(f"manifest {reference}: its bytes hash to {digest}, not {said if said != digest else reference}")
        try:
            return digest, json.loads(answer.body)
        except ValueError as e:
            raise PullError(f"manifest {reference} is not JSON") from e

    def _blob(self, target: PullTarget, descriptor: dict[str, Any], pulled: Pulled) -> None:
        digest, size = str(descriptor.get("digest", "")), int(descriptor.get("size", -1))
        if (target.registry, target.repository, digest) in self.done or descriptor.get("mediaType") in FOREIGN:
            return
        h = hashlib.sha256()
        got = 0

        def sink(chunk: bytes) -> None:
            nonlocal got
            h.update(chunk)
            got += len(chunk)
            self.progress.got(len(chunk))

        url = f"https://{target.netloc}/v2/{target.repository}/blobs/{digest}"
        answer = self.client.get(url, self._auth(target), sink)
        if answer.status != 200:
            raise PullError(f"blob {digest}: {answer.status} {error_text(answer)}")
        if "sha256:" + h.hexdigest() != digest or (size >= 0 and got != size):
            raise PullError(f"blob {digest}: got {got} bytes hashing to sha256:{h.hexdigest()} (expected {size} bytes)")
        self.done.add((target.registry, target.repository, digest))
        pulled.blobs += 1
        pulled.bytes += got

    def _image(self, target: PullTarget, manifest: dict[str, Any], pulled: Pulled) -> None:
        blobs = [manifest["config"]] if isinstance(manifest.get("config"), dict) else []
        blobs += [b for b in manifest.get("layers", []) if isinstance(b, dict)]
        self.progress.expect(sum(int(b.get("size", 0)) for b in blobs if b.get("mediaType") not in FOREIGN
                                 and (target.registry, target.repository, b.get("digest")) not in self.done))
        for b in blobs:
            self._blob(target, b, pulled)

    def pull(self, image: str) -> Pulled:
        try:
            target = pull_target(image)
        except ValueError as e:
            raise PullError(str(e)) from e
        pulled = Pulled(target.image)
        _, top = self._manifest(target, target.reference, pulled)
        if top.get("mediaType") in INDEX_TYPES or (top.get("manifests") and not top.get("layers")):
            chosen, missing = select(top, self.platforms)
            if missing:
                have = sorted({"/".join(str(m["platform"].get(k, "")) for k in ("os", "architecture", "variant")).rstrip("/")
                               for m in top.get("manifests", []) if isinstance(m.get("platform"), dict)} - {"unknown/unknown"})
                raise PullError(f"no manifest for {', '.join(map(str, missing))} (it has {', '.join(have) or 'none'})")
            for entry in chosen:
                _, child = self._manifest(target, str(entry["digest"]), pulled)
                pulled.platforms.append("/".join(str(entry["platform"].get(k, "")) for k in ("os", "architecture", "variant")).rstrip("/"))
                self._image(target, child, pulled)
        else:
            self._image(target, top, pulled)
        return pulled
