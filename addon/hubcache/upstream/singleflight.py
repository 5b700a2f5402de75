"""Single flight for coroutines: whoever asks first for a key runs the work; everyone who asks for
the same key meanwhile awaits that same run. Used for hubcache's own upstream requests: manifest
GETs (one counted pull for N concurrent clients) and token fetches.

A waiter that goes away (its client disconnected, its task cancelled) does not cancel the run:
the others still get its result."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from typing import Any


class Shared[T]:
    def __init__(self) -> None:
        self._runs: dict[Hashable, asyncio.Task[T]] = {}

    async def run(self, key: Hashable, work: Callable[[], Coroutine[Any, Any, T]]) -> tuple[T, bool]:
        """The result of `work()` for `key`, and whether this caller joined a run under way."""
        task = self._runs.get(key)
        joined = task is not None
        if task is None:
            task = asyncio.get_running_loop().create_task(work())
            self._runs[key] = task
            task.add_done_callback(lambda t: self._ended(key, t))
        return await asyncio.shield(task), joined

    def _ended(self, key: Hashable, task: asyncio.Task[T]) -> None:
        if self._runs.get(key) is task:
            del self._runs[key]  # the next caller starts afresh, after a failure too
        if not task.cancelled():
            task.exception()  # retrieved here: no "never retrieved" noise when every waiter left

    def __len__(self) -> int:
        return len(self._runs)
