"""The test pull's side of Docker Hub: what it asks for, and what the answers through hubcache mean.

Pure: reads an image reference, a token challenge and response headers, tested without a network.
"""

from __future__ import annotations

import json
import re

from hubcache.decide.routes import parse_image


def pull_target(image: str) -> tuple[str, str]:
    """(repository, tag or digest) that `docker pull IMAGE` asks Docker Hub for: `latest` when
    the reference names neither."""
    repository, reference = parse_image(image)
    return repository, reference or "latest"


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
