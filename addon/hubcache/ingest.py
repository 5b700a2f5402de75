"""The tee for blob misses: bytes go on to the client while the store takes a verified copy.

The stream callable runs on mitmproxy's event loop, so it only hands chunks to the store's writer
thread (hashing and LMDB commits happen there). It always holds back the latest chunk; at the end
of the body it waits for the writer, and releases that last chunk only when sha256 and size match.
On a mismatch the client gets a short body and a closed connection, never wrong bytes as a success.
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Executor, Future

from .store import BlobWriter, DigestMismatch, StoreError

log = logging.getLogger("hubcache")

MAX_BACKLOG = 32 * 1024 * 1024  # bytes handed to the writer but not yet written, all tees together
BLOCK = 1024 * 1024  # bytes per hand-over: fewer, larger jobs keep GIL hand-offs rare


class Backlog:
    """Bytes handed to the one writer thread and not yet written, by every tee together: with
    many concurrent misses a per-tee bound would multiply. Touched only on the event loop."""

    def __init__(self, limit: int = MAX_BACKLOG) -> None:
        self.limit = limit
        self.bytes = 0


class Tee:
    def __init__(self, writer: BlobWriter, executor: Executor, backlog: Backlog | None = None) -> None:
        self._writer = writer
        self._executor = executor
        self._shared = backlog or Backlog()
        self._held = b""
        self._block: list[bytes] = []
        self._block_bytes = 0
        self._backlog: deque[tuple[Future, int]] = deque()
        self._backlog_bytes = 0
        self._finished = False
        self.verified = False
        self.stored = False
        self.failure = ""

    def __call__(self, data: bytes) -> bytes:
        if self._finished:
            return data
        if not data:
            return self._finish()
        self._block.append(data)
        self._block_bytes += len(data)
        if self._block_bytes >= BLOCK:
            self._submit()
        out, self._held = self._held, data
        return out

    def _submit(self) -> None:
        if not self._block:
            return
        data = b"".join(self._block)
        self._block.clear()
        self._block_bytes = 0
        self._backlog.append((self._executor.submit(self._writer.write, data), len(data)))
        self._backlog_bytes += len(data)
        self._shared.bytes += len(data)
        # The disk is slower than the network: wait for this tee's oldest block (the writer is
        # first-in first-out, so everything handed over before it is written too).
        while self._shared.bytes > self._shared.limit and self._backlog:
            self._pop_oldest()

    def _pop_oldest(self) -> None:
        fut, n = self._backlog.popleft()
        self._backlog_bytes -= n
        self._shared.bytes -= n
        fut.result()

    def _finish(self) -> bytes:
        self._finished = True
        try:
            self._submit()
            while self._backlog:
                self._pop_oldest()
            self._executor.submit(self._writer.commit).result()
        except DigestMismatch as e:
            self.failure = str(e)
            return b""
        except StoreError as e:  # the bytes were right; only storing them failed
            log.warning("hubcache: could not store %s: %s", self._writer.digest, e)
            self.verified = True
            return self._held
        self.verified = self.stored = True
        self._executor.submit(self._writer.store.evict_if_needed)
        return self._held

    def abort(self) -> None:
        """The transfer broke off: drop whatever was written."""
        if self.stored:
            return
        self._finished = True
        self._shared.bytes -= self._backlog_bytes  # no longer waited for
        self._backlog.clear()
        self._backlog_bytes = 0
        self._executor.submit(self._writer.abort)
