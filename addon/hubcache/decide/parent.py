"""What a parent registry (a shared tier: distribution in proxy mode) is asked for, and where.

Pure. The parent only ever serves content addressed by digest (hubcache hashes it before serving or
storing it), so a broken parent can withhold content but never substitute it. Tags are resolved
at the registry with hubcache's free HEAD unless `hubcache_parent_tags=parent`; anything a client
sent its own login for, pushes, and requests hubcache only relays never go to the parent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hubcache.model import Kind, Route

TAGS_AT_HUB, TAGS_AT_PARENT = "hub", "parent"
FALLBACK_HUB, FALLBACK_NEVER = "hub", "never"


@dataclass(frozen=True)
class ParentPlan:
    roots: Mapping[str, str]  # registry name -> the parent's root URL (https://mirror.internal:5000)
    prefix: str = ""  # a repository prefix at the parent (Harbor's proxy-cache project)
    tags: str = TAGS_AT_HUB
    fallback: str = FALLBACK_HUB

    def asks_parent(self, route: Route, method: str, own_login: bool) -> bool:
        """Whether this request is asked of the registry's parent first."""
        if route.registry not in self.roots or own_login or method not in ("GET", "HEAD"):
            return False
        if route.kind is Kind.BLOB:
            return True
        if route.kind is Kind.MANIFEST:
            return route.by_digest or self.tags == TAGS_AT_PARENT
        return False

    def name(self, route: Route) -> str:
        """The repository as the parent names it (its token scopes too): the prefix, then the
        registry's own name."""
        return f"{self.prefix.strip('/')}/{route.remote}" if self.prefix else route.remote

    def url(self, route: Route, digest: str = "") -> str:
        """The parent's URL for a route's object (`digest`: the tag resolved at the registry)."""
        kind = "blobs" if route.kind is Kind.BLOB else "manifests"
        return f"{self.roots[route.registry]}/v2/{self.name(route)}/{kind}/{digest or route.reference}"

    def falls_back(self) -> bool:
        """Whether an object the parent could not give comes from the registry instead."""
        return self.fallback == FALLBACK_HUB


def health_key(registry: str) -> str:
    """The parent's own back-off, apart from its registry's."""
    return f"parent:{registry}"
