"""The test pull's side of the registry: what it asks for, and what the answers through hubcache mean.

Pure: reads an image reference, a token challenge and response headers, tested without a network.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from hubcache.decide.routes import parse_reference
from hubcache.registries import DOCKER_HUB, split_reference
from hubcache.tools.doctor.check import REGISTRY


@dataclass(frozen=True)
class PullTarget:
    """What `docker pull IMAGE` asks which registry for."""

    registry: str  # its name: docker.io, ghcr.io, registry.corp.example:5000
    repository: str  # as the registry's URLs spell it (library/postgres, org/app)
    reference: str  # tag or digest

    @property
    def netloc(self) -> str:
        """host[:port] the pull connects to (Docker Hub's API host for docker.io)."""
        return REGISTRY if self.registry == DOCKER_HUB else self.registry

    @property
    def host(self) -> str:
        return self.netloc.rsplit(":", 1)[0] if self.netloc.rsplit(":", 1)[-1].isdigit() else self.netloc

    @property
    def port(self) -> int:
        last = self.netloc.rsplit(":", 1)[-1]
        return int(last) if ":" in self.netloc and last.isdigit() else 443

    @property
    def image(self) -> str:
        """The reference as the check's line shows it: docker.io/library/x:1, ghcr.io/org/app@sha256:..."""
        sep = "@" if self.reference.startswith("sha256:") else ":"
        return f"{self.registry}/{self.repository}{sep}{self.reference}"


def pull_target(image: str) -> PullTarget:
    """What `docker pull IMAGE` asks for, on any registry: `latest` when the reference names
    neither tag nor digest. Raises ValueError for what is not an image reference."""
    registry, _ = split_reference(image)
    stored, reference = parse_reference(image)
    repository = stored if registry == DOCKER_HUB else stored.removeprefix(registry + "/")
    return PullTarget(registry, repository, reference or "latest")


def parse_challenge(value: str) -> dict[str, str]:
    """`Bearer realm="...",service="..."` -> {"scheme": "bearer", "realm": ..., "service": ...}."""
    scheme, _, rest = value.strip().partition(" ")
    out = {"scheme": scheme.lower()}
    for m in re.finditer(r'(\w+)="([^"]*)"', rest):
        out[m.group(1).lower()] = m.group(2)
    return out


def answered_by(headers: dict[str, str]) -> str:
    """Who answered a registry response that came through hubcache, from its headers (lower-case
    names). hubcache's own answers (store hits, revalidated tags, /v2/, anonymous tokens) carry no
    `Date`; everything Docker Hub (or any HTTP server library) sends does."""
    if "date" in headers or any(k.startswith("ratelimit-") or k == "docker-ratelimit-source" for k in headers):
        return "upstream"
    return "hubcache"


def hub_outcome(status: int, headers: dict[str, str], body: bytes = b"") -> tuple[bool, str]:
    """(passed, what it means) for the manifest HEAD of the test pull."""
    if status == 200:
        digest = headers.get("docker-content-digest", "?")
        if answered_by(headers) == "hubcache":
            return True, f"200 {digest}, answered by hubcache from its store (no upstream response headers): a hit"
        warning = headers.get("warning", "")
        return True, (f"200 {digest}, answered by upstream through hubcache (a miss or a tag changed upstream; "
                      f"run again for a hit){' ' + warning if warning else ''}")
    try:
        message = json.loads(body)["errors"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        message = body[:200].decode(errors="replace").strip()
    return False, f"{status}{': ' + message if message else ''}"
