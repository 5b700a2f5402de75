"""Single flight for blob misses: one upstream download per digest, however many clients ask.

A flight is hubcache's own download of one blob, on a thread of its own (fetch.py): it follows
Docker Hub's 307 to the CDN, hashes, and writes the bytes into the store as a pending blob
(BlobWriter), flushing at least every FLUSH_SECONDS so that readers see them soon. Every client
that wants the blob meanwhile, the one that started the flight included, is served by the blob
server, which follows the pending blob in the store (Store.progress): a late joiner gets what is
already written at once, then the rest as it arrives. The last byte goes out only after the
store published the blob, i.e. after sha256 and size matched.

The flight does not belong to any client: when they all go away it still finishes and stores the
blob. When it fails, the pending blob is dropped, every follower's connection is cut short, and
the flight leaves the table, so the next request starts a fresh one.

With worker processes (`hubcache run --workers N`), a flight first claims its digest in the store;
when a sibling worker downloads it already, the flight follows that download instead of making
its own (siblings.py), and takes it over when it ends without the blob.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from hubcache.serve.siblings import Siblings
from hubcache.store import BlobWriter, DigestMismatch, StoreError
from hubcache.store.claims import Claim
from hubcache.upstream.client import UpstreamError, relayable

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.1  # longest a received byte waits before followers can have it

T = TypeVar("T")


@dataclass(frozen=True)
class Head:
    """How upstream answered a flight: 200 with the blob's size (-1: not said), or another status
    whose small body is relayed to clients, or status 0 when no answer could be had (`error`)."""

    status: int
    size: int = -1
    blob_id: bytes = b""
    no_room: bool = False  # 200, but the store has no room for it: clients go upstream themselves
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str = ""


class Download(Protocol):
    """What a flight's opener returns: upstream's answer with its body still to read
    (upstream.fetch.Response; tests pass objects shaped like it)."""

    status: int
    headers: dict[str, str]

    def header(self, name: str, default: str = "") -> str: ...
    def read_small(self) -> bytes: ...
    def iter_body(self, idle: Callable[[], None], tick: float) -> Iterator[bytes]: ...
    def read_into(self, space: Callable[[], memoryview], idle: Callable[[], None], tick: float) -> int: ...
    def close(self) -> None: ...


class Flight:
    """One download. Created on the event loop; runs on its own thread."""

    def __init__(
        self,
        digest: str,
        opener: Callable[[], Download],
        begin: Callable[[int | None], BlobWriter],
        *,
        room: Callable[[int], bool] = lambda size: True,
        owner: str = "",
        on_hops: Callable[[list[Any]], None] = lambda hops: None,
        on_end: Callable[[Flight], None] = lambda f: None,
        fallback: Callable[[], Download] | None = None,
        on_fallback: Callable[[str], None] = lambda why: None,
        siblings: Siblings | None = None,
    ) -> None:
        self.digest = digest
        self.owner = owner  # "" for a pool-account download anyone may join; else whose login it used
        self._opener = opener
        self._begin = begin  # expected size -> BlobWriter
        self._room = room  # size -> whether the store can take it
        self._on_hops = on_hops
        self._on_end = on_end
        self._fallback = fallback  # asked when `opener`'s source (a parent registry) fails
        self._on_fallback = on_fallback  # why it failed, before the fallback is asked
        self.fell_back = False
        self._siblings = siblings  # the other workers' downloads (None: this process is alone)
        self._claimed = False
        self.sibling = 0  # the pid of the sibling worker whose download gave the blob (-1: it was stored already; 0: none)
        self._following = b""  # the blob id of that download's write
        self._loop = asyncio.get_running_loop()
        self._head: asyncio.Future[Head] = self._loop.create_future()
        self._cond = threading.Condition()
        self.done = False
        self.stored = False
        self.failure = ""
        self.rejected = False  # the bytes did not match the digest
        self.received = 0
        self._writer: BlobWriter | None = None
        self._thread = threading.Thread(target=self._run, name=f"hubcache-fetch-{digest[7:19]}", daemon=True)

    def start(self) -> Flight:
        self._thread.start()
        return self

    async def head(self) -> Head:
        """Upstream's answer; waiting for it does not tie the flight to the waiter."""
        return await asyncio.shield(self._head)

    @property
    def blob_id(self) -> bytes:
        """The blob id the download writes now; b"" before it began (or between two sources)."""
        writer = self._writer
        return writer.blob_id if writer is not None else self._following

    def wait(self, timeout: float) -> None:
        """Block until more bytes are written or the flight ends (for the blob server's threads)."""
        with self._cond:
            if not self.done:
                self._cond.wait(timeout)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # -- the flight's thread ------------------------------------------------------------------

    def _set_head(self, head: Head) -> None:
        def set_it() -> None:
            if not self._head.done():
                self._head.set_result(head)

        self._loop.call_soon_threadsafe(set_it)

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _run(self) -> None:
        try:
            if self._siblings is not None and not self._claim(self._siblings):
                return
            if self._fallback is None:
                self._attempt(self._opener, final=True)
            elif (why := self._attempt(self._opener, final=False)) is not None:
                # The first source failed; followers of what it wrote were cut short (a blob's
                # last byte waits for its publication). Late joiners wait for the fallback.
                self._on_fallback(why)
                self.fell_back, self.received, self._writer = True, 0, None
                self._loop.call_soon_threadsafe(self._renew_head)
                self._attempt(self._fallback, final=True)
        finally:
            if self._claimed and self._siblings is not None:  # after publishing: a sibling finds it stored
                self._siblings.release(self.digest)
            self._set_head(Head(0, error=self.failure or "fetch ended without an answer"))
            self.done = True
            self._notify()
            self._on_end(self)

    def _claim(self, siblings: Siblings) -> bool:
        """Claim the download among the workers. False when there is nothing to download: the
        store has the blob, or a sibling's download (followed meanwhile) stored it."""
        while True:
            got = siblings.take(self.digest, self.owner)
            if got is None:
                self._claimed = True
                return True
            if isinstance(got, Claim) and not siblings.shares(got, self.owner):
                return True  # a download with someone else's login: this one goes apart, as on another host
            info = siblings.follow(self.digest, got, self._followed, self._notify) if isinstance(got, Claim) \
                else siblings.blob_info(self.digest)
            if info is None:  # it ended without the blob (or the blob went at once): ours to download now
                self._following = b""
                continue
            self.stored, self.sibling = True, got.pid if isinstance(got, Claim) else -1
            self._following = info.blob_id
            self._set_head(Head(200, info.size, info.blob_id))
            return False

    def _followed(self, blob_id: bytes, size: int) -> None:
        """A sibling's download writes under `blob_id` now: this worker's clients follow it."""
        renew = bool(self._following)  # it went on from its next source: late joiners wait for it
        self._following = blob_id
        if renew:
            self._loop.call_soon_threadsafe(self._renew_head)
        self._set_head(Head(200, size, blob_id))

    def _attempt(self, opener: Callable[[], Download], final: bool) -> str | None:
        """Download from one source. None when the flight is decided (stored, or failed for
        good); else, for a source that is not `final`, why it could not give the blob."""
        resp = None
        try:
            resp = opener()
            if final:
                self._on_hops(list(getattr(resp, "hops", [])))
            if resp.status != 200:  # relayed to every waiter as upstream gave it
                if not final:
                    return f"answered {resp.status}"
                self._set_head(Head(resp.status, headers=relayable(resp.headers), body=resp.read_small()))
                self.failure = f"upstream answered {resp.status}"
                return None
            length = resp.header("content-length")
            size = int(length) if length.isdigit() else None
            if size is not None and not self._room(size):
                self.failure = f"not stored: no room for {size} bytes"
                self._set_head(Head(200, size, no_room=True))
                return None
            self._download(resp, size)
        except DigestMismatch as e:  # commit() has dropped the bytes already
            if not final:
                return str(e)
            self.failure, self.rejected = str(e), True  # logged by on_end, with the repository
        except UpstreamError as e:
            self._abort()
            if not final:
                return str(e)
            self.failure = str(e)
            self._on_hops(list(getattr(e, "hops", [])))
            self._set_head(Head(0, error=str(e)))
        except StoreError as e:
            self.failure = f"not stored: {e}"  # logged by on_end
            self._abort()
        except BaseException as e:  # never leave followers waiting on a dead thread
            self.failure = f"internal error: {e!r}"
            log.exception("fetching %s failed", self.digest)
            self._abort()
        finally:
            if resp is not None:
                resp.close()
        return None

    def _renew_head(self) -> None:  # on the event loop
        if self._head.done():
            self._head = self._loop.create_future()

    def _download(self, resp: Download, size: int | None) -> None:
        """Write the body into the store as it arrives, handing followers what is written at
        least every FLUSH_SECONDS; publish it once sha256 and size match."""
        writer = self._writer = self._begin(size)
        writer.register()  # followers can find it before the first byte
        if self._claimed and self._siblings is not None:  # and the other workers' followers
            self._siblings.writing(self.digest, writer.blob_id)
        self._set_head(Head(200, -1 if size is None else size, writer.blob_id))
        last_flush = time.monotonic()

        def hand_over(wait: bool = True) -> None:  # followers get the whole chunks received so far
            nonlocal last_flush
            writer.flush(wait)
            last_flush = time.monotonic()
            self._notify()

        # upstream paused: hand_over() waits for the commit; while bytes flow they are committed meanwhile
        while n := resp.read_into(writer.space, hand_over, FLUSH_SECONDS):  # straight into the writer's area
            writer.wrote(n)
            self.received += n
            if writer.failed:  # a full disk: stop here, followers are cut short
                raise StoreError(str(writer.failed))
            if time.monotonic() - last_flush >= FLUSH_SECONDS:
                hand_over(wait=False)
        writer.commit()  # verifies sha256 and size; publishes
        self.stored = True

    def _abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()


class Flights:
    """The flights under way, by digest. Added to and looked up on the event loop, removed by
    each flight's own thread as it ends (Flight's on_end), read by the blob server's threads
    (waiter wake-ups): hence the lock."""

    def __init__(self) -> None:
        self._flights: dict[str, Flight] = {}
        self._lock = threading.Lock()
        self.siblings: Siblings | None = None  # set while this process is one of several workers on its store

    def get(self, digest: str) -> Flight | None:
        with self._lock:
            return self._flights.get(digest)

    def locate(self, digest: str, stored: Callable[[str], T | None]) -> tuple[T | None, Flight | None]:
        """Where a blob is: (what `stored(digest)` gives, None) when the store has it, else
        (None, its flight under way or None). The flight is looked up before the store: a flight
        leaves the table only after its blob is published (or it failed), so a digest found in
        neither place is truly missing. Looked up the other way round, a flight that ends on its
        thread between the two looks is in neither, and the blob is downloaded a second time."""
        flight = self.get(digest)
        info = stored(digest)
        return (info, None) if info is not None else (None, flight)

    def add(self, flight: Flight) -> Flight:
        with self._lock:
            self._flights[flight.digest] = flight
        return flight

    def end(self, flight: Flight) -> None:
        with self._lock:
            if self._flights.get(flight.digest) is flight:
                del self._flights[flight.digest]

    def writing(self, digest: str) -> tuple[bool, bytes]:
        """Whether a download of `digest` is under way, and the blob id it writes now (b"" while
        it opens its next source)."""
        flight = self.get(digest)
        if flight is None and self.siblings is not None:  # a sibling worker's download, followed in the store
            claim = self.siblings.held(digest)
            return (True, claim.blob_id) if claim is not None else (False, b"")
        if flight is None or flight.done:
            return False, b""
        return True, flight.blob_id

    def wait(self, digest: str, timeout: float) -> None:
        flight = self.get(digest)
        if flight is None:
            time.sleep(min(timeout, 0.02))
        else:
            flight.wait(timeout)
