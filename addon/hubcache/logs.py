"""hubcache's log lines: every module logs to `logging.getLogger(__name__)`; this puts the
`hubcache: ` prefix operators grep for in front of each of their messages, in one place.

mitmproxy's own handler formats the records (time, then the message), so the prefix cannot be a
handler's format: it is added when a record of a `hubcache.*` logger is made.
"""

from __future__ import annotations

import logging
from typing import Any

PREFIX = "hubcache: "
_installed = False


def install() -> None:
    """Prefix the messages of hubcache's loggers (idempotent; chains to the current factory)."""
    global _installed
    if _installed:
        return
    _installed = True
    make = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        if record.name == "hubcache" or record.name.startswith("hubcache."):
            record.msg = PREFIX + str(record.msg)
        return record

    logging.setLogRecordFactory(factory)
