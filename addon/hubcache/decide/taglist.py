"""A page of a repository's tag list, as the registry paginates it (`n`, `last`, a `Link` to the
next page): for answering `tags/list` from what hubcache has seen when upstream cannot answer."""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode


def page(tags: list[str], repository: str, query: str) -> tuple[list[str], str]:
    """The tags after `last`, at most `n` of them (all when n is absent), in lexical order, and
    the Link header for the next page ("" when this is the last). An unusable `n` counts as absent."""
    params = parse_qs(query)
    last = params.get("last", [""])[0]
    try:
        n = int(params.get("n", [""])[0])
    except ValueError:
        n = -1
    rest = [t for t in sorted(tags) if t > last]
    if n < 0 or n >= len(rest):
        return rest, ""
    shown = rest[:n]
    link = f'</v2/{repository}/tags/list?{urlencode({"n": n, "last": shown[-1]})}>; rel="next"' if shown else ""
    return shown, link
