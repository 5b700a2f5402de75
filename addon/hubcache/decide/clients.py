"""Which clients the per-client metrics name, bounded (hubcache_metrics_clients).

A client is named by its proxy login when it gave one (mitmproxy's proxyauth: the user name,
never the password), else by its address without the port. An autoscaled fleet brings a new
address with every VM, so at most `limit` names are kept; any other client is counted under
`other`. When the set is full, a login takes the place of the address seen longest ago (logins
name runner pools an operator chose; addresses come and go), and a newcomer of either kind may
take the place of one of its own kind not seen for `idle` seconds. An address never displaces a
login. A name dropped to make room is returned to the caller, which removes its series: the
labels shown at any time are at most `limit` names and `other`.

No clock of its own: the caller passes `now` (monotonic seconds) and serialises calls.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

OTHER = "other"
IDLE_SECONDS = 3600.0  # a kept name not seen this long gives its place to a newcomer of its kind


def address_name(host: str) -> str:
    """A peer address as a label: an IPv4 address a dual-stack listener saw as IPv4-mapped IPv6
    (`::ffff:10.0.0.7`) is named as IPv4 (`10.0.0.7`); anything else as it is."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped or ip)


class ClientLabels:
    def __init__(self, limit: int, idle: float = IDLE_SECONDS) -> None:
        """`limit`: most names kept (0: no per-client metrics at all)."""
        self.limit = max(limit, 0)
        self.idle = idle
        # name -> last seen, least recently seen first; a name is in one of them
        self._logins: OrderedDict[str, float] = OrderedDict()
        self._addresses: OrderedDict[str, float] = OrderedDict()

    @property
    def kept(self) -> set[str]:
        return set(self._logins) | set(self._addresses)

    def label(self, login: str, address: str, now: float) -> tuple[str, str | None]:
        """(the label this request counts under, a name dropped to make room for it or None).
        The label is "" when per-client metrics are off (limit 0) or there is no name at all."""
        name = login or address_name(address)
        if not self.limit or not name:
            return "", None
        if name == OTHER:  # a login literally called "other" cannot have a series of its own
            return OTHER, None
        table = self._logins if login else self._addresses
        if name in self._logins:  # (an address written like a kept login counts under it)
            self._logins[name] = now
            self._logins.move_to_end(name)
            return name, None
        if name in self._addresses:  # seen again: now the most recent (a login of that name: kept as a login)
            del self._addresses[name]
            table[name] = now
            return name, None
        dropped = None
        if len(self._logins) + len(self._addresses) >= self.limit:
            dropped = self._room(bool(login), now)
            if dropped is None:
                return OTHER, None
        table[name] = now
        return name, dropped

    def _room(self, login: bool, now: float) -> str | None:
        """Drop one name for a newcomer (a login if `login`); None when it must go under `other`."""
        if login and self._addresses:
            return self._addresses.popitem(last=False)[0]
        table = self._logins if login else self._addresses
        if table:
            oldest, seen = next(iter(table.items()))
            if now - seen >= self.idle:
                del table[oldest]
                return oldest
        return None
