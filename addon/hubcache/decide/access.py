"""Who may get cached content: pure rules over where a digest was seen.

Each (digest, repository) pair is recorded as public (fetched with hubcache's own or a pool
token: anybody may pull it) or private (it took a client's own credentials). Content public
anywhere is public everywhere; content only ever seen privately is served only under the
repository it was seen in, and only to a client whose own token upstream accepts there.
"""

from __future__ import annotations

PUBLIC, PRIVATE = "P:", "C:"


def seen_as(repository: str, private: bool) -> str:
    return (PRIVATE if private else PUBLIC) + repository


def visibility(seen: list[str], repository: str) -> str:
    """'public', 'private' (needs the client's own token for `repository`), or 'foreign' (only
    seen privately in other repositories: not to be served from the store under this name)."""
    if any(s.startswith(PUBLIC) or not s.startswith(PRIVATE) for s in seen):
        return "public"
    if PRIVATE + repository in seen:
        return "private"
    return "foreign"
