"""hubcache's log lines: every module logs to `logging.getLogger(__name__)`; this module puts
the `hubcache: ` prefix operators grep for in front of each of their messages, and, with
`hubcache_log_format=json`, makes every line of the process one JSON object.

mitmproxy's own handler writes the lines (time, then the message), so the prefix cannot be a
handler's format: it is added when a record of a `hubcache.*` logger is made. Records may carry
`event` (what happened: request, store_opened, ...) and `fields` (its data) for the JSON form.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

PREFIX = "hubcache: "
LEVELS = ("debug", "info", "warning", "error")
_installed = False


def install(worker: int = 0) -> None:
    """Prefix the messages of hubcache's loggers (idempotent; chains to the current factory).
    `worker`: this process's number among the workers of `hubcache run --workers N` (0: alone),
    which every line of the process then names: the workers write to one stream."""
    global _installed
    if _installed:
        return
    _installed = True
    make = logging.getLogRecordFactory()
    tag = f" [worker {worker}]" if worker else ""

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        if record.name == "hubcache" or record.name.startswith("hubcache."):
            record.msg = PREFIX + str(record.msg)
        if worker:
            record.msg, record.worker = str(record.msg) + tag, worker
        return record

    logging.setLogRecordFactory(factory)


def event(logger: logging.Logger, level: int, name: str, message: str, /, **fields: Any) -> None:
    """Log one named event: `message` is the text line (what happened, in hubcache's terms, and
    the fix when there is one); `name` and `fields` are what the JSON line carries. The catalogue
    of names is the README's "Events" table."""
    logger.log(level, "%s", message, extra={"event": name, "fields": fields})


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, event, message, then the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", "message"),
            "message": message.removeprefix(PREFIX),
        }
        out.update(getattr(record, "fields", {}))
        if worker := getattr(record, "worker", 0):
            out["worker"] = worker
            out["message"] = out["message"].removesuffix(f" [worker {worker}]")
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(fmt: str, level: str) -> None:
    """Apply hubcache_log_format (text or json: every handler of the root logger, mitmproxy's
    included, writes JSON) and hubcache_log_level (hubcache's own loggers)."""
    logging.getLogger("hubcache").setLevel(level.upper())
    for handler in logging.getLogger().handlers:
        if fmt == "json" and not isinstance(handler.formatter, JsonFormatter):
            _text_formatters[handler] = handler.formatter
            handler.setFormatter(JsonFormatter())
        elif fmt == "text" and handler in _text_formatters:  # set back at run time: the handler's own again
            handler.setFormatter(_text_formatters.pop(handler))


_text_formatters: dict[logging.Handler, logging.Formatter | None] = {}  # what json replaced
