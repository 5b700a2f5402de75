"""Who may get cached content under a repository: pure rules over the repositories a digest
belongs to.

Each (digest, repository) pair is recorded as public (fetched with hubcache's own or a pool
token: anybody may pull it there) or private (it took a client's own credentials), and a stored
manifest links what it references to its repository. Content is served from the store only under
a repository it belongs to, as the registry answers: the same bytes in another repository are
for upstream to confirm (a push probing whether a layer is there must get the registry's 404).
Private content is served only to a client whose own token upstream accepts there.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from hubcache.registries import split_reference

PUBLIC, PRIVATE = "P:", "C:"


def seen_as(repository: str, private: bool) -> str:
    return (PRIVATE if private else PUBLIC) + repository


def visibility(seen: list[str], repository: str) -> str:
    """'public' (belongs to `repository`, fetched there with hubcache's own or a pool token),
    'private' (belongs there by a client's own login: needs that client's token confirmed), or
    'foreign' (not known to belong to `repository`: upstream decides)."""
    if PUBLIC + repository in seen or repository in seen:  # unprefixed: written before the prefixes
        return "public"
    if PRIVATE + repository in seen:
        return "private"
    return "foreign"


def pool_may_fetch(repository: str, anonymous_may_pull: bool, pool_private: Iterable[str]) -> bool:
    """May hubcache fetch `repository` (its store name: bare on Docker Hub, qualified elsewhere)
    with a stored login (a pool account, another registry's login) for a client that brought
    none? Public content, yes (the pool is there for the budget). Content that only a stored login
    can pull would be handed to every client of the proxy: only where the operator named it in
    hubcache_pool_private (globs such as myorg/* on Docker Hub, ghcr.io/myorg/*,
    registry.corp.example:5000/team/*). A pattern names one registry: `*` never crosses from one
    registry into another's names."""
    return anonymous_may_pull or named_by(repository, pool_private)


def named_by(repository: str, pool_private: Iterable[str]) -> bool:
    """Is `repository` (a store name) one that hubcache_pool_private names?"""
    return any(named(repository, p) for p in pool_private)


def named(repository: str, pattern: str) -> bool:
    """Does hubcache_pool_private's `pattern` name `repository`? Both are store names; the
    registries must be the same, the rest is a glob."""
    registry, rest = split_reference(repository)
    p_registry, p_rest = split_reference(pattern)
    return registry == p_registry and fnmatchcase(rest, p_rest)


def scope_repository(scope: str) -> str:
    """`repository:myorg/app:pull` -> `myorg/app`; "" for other scopes."""
    kind, _, rest = scope.partition(":")
    return rest.rpartition(":")[0] if kind == "repository" else ""
