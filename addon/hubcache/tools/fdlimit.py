"""hubcache's open-file limit: raised at start to what hubcache_client_max needs.

A client connection takes up to three descriptors (the client's; hubcache's upstream connection,
or for a hit the pair of a loopback connection to hubcache's blob listener). The soft
RLIMIT_NOFILE, often 1024, is raised to the hard limit, which only the service manager can raise
(systemd: LimitNOFILE=). The event loop polls with epoll: no descriptor number is too high.
"""

from __future__ import annotations

import resource

FDS_PER_CLIENT = 3
RESERVE = 1024  # the store, the listeners, hubcache's own upstream connections, threads


def needed(client_max: int) -> int | None:
    """Descriptors hubcache_client_max connections may take, or None with no cap."""
    return client_max * FDS_PER_CLIENT + RESERVE if client_max else None


def raise_soft_limit(client_max: int) -> tuple[int, int | None]:
    """Raise the soft limit as far as the hard one lets (only as far as needed when the hard one
    is unlimited): (the soft limit now, descriptors needed or None)."""
    want = needed(client_max)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        target = max(soft, want or 1 << 20)
    else:
        target = hard
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft, want


def advice(soft: int, want: int | None) -> str | None:
    """What to tell the operator when the limit is below what the caps need, else None."""
    if want is None or soft >= want:
        return None
    return (f"open-file limit {soft} is below the {want} that hubcache_client_max needs ({FDS_PER_CLIENT} per "
            f"connection): clients will see refused connections first. Raise it (systemd: LimitNOFILE={want} or more; "
            f"a shell: ulimit -n {want}) or lower hubcache_client_max to {max((soft - RESERVE) // FDS_PER_CLIENT, 1)}")
