"""This process's place among the workers of `hubcache run --workers N`: the supervisor
(tools/workers.py) starts each worker with it in the environment. A process started otherwise
(`hubcache run` with one worker, `mitmdump -s`) is alone."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

INDEX, COUNT, RUNTIME = "HUBCACHE_WORKER", "HUBCACHE_WORKERS", "HUBCACHE_RUNTIME_DIR"
SECRET_FILE = "blob-url-secret"  # in the runtime directory (0700): what signs blob server URLs
METRICS_DIR = "metrics"  # in it: prometheus-client's multiprocess files (PROMETHEUS_MULTIPROC_DIR)


@dataclass(frozen=True)
class Role:
    index: int = 0  # 1..count; 0 when alone
    count: int = 1
    runtime: str = ""  # the supervisor's private directory

    @property
    def shared(self) -> bool:
        """Whether other workers share this process's listening port and store."""
        return self.count > 1 and self.index > 0

    @property
    def serves_metrics(self) -> bool:
        """The metrics listener and status page are served by one worker, for all of them."""
        return self.index <= 1

    def share_of(self, total: int) -> int:
        """This worker's share of a limit set for the whole proxy (client connections)."""
        return -(-total // self.count) if self.shared else total

    def secret(self) -> bytes | None:
        """The key all workers sign blob URLs with (a client redirected by one worker may
        connect to another), or None when alone (the blob server makes its own)."""
        if not self.shared:
            return None
        return (Path(self.runtime) / SECRET_FILE).read_bytes()


ALONE = Role()


def role() -> Role:
    try:
        index, count = int(os.environ.get(INDEX, "0")), int(os.environ.get(COUNT, "1"))
    except ValueError:
        return Role()
    if index < 1 or count < 2 or index > count:
        return ALONE
    return Role(index, count, os.environ.get(RUNTIME, ""))
