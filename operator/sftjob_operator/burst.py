"""Jobs first: in a burst of new SFTJobs, what can wait for the create path waits for it.

A sweep, a GitOps sync of a folder, or hundreds of SFTJobs found at startup
arrive at once, and the operator is one event loop. Left alone, each
SFTJob's Event and its first status write (with the watch events they cause)
compete with the Jobs still to be created, so the last Job, whose pods are
what users wait for, comes after all the bookkeeping. `CreatePath` counts
the SFTJobs whose children are being created; the Event senders and the
create handler's status write wait until none are (never longer than the
bound they pass), so every Job of a burst is requested first and the rest
follows. Outside bursts nothing waits: a lone create path ends before the
next begins.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator


class CreatePath:
    """How many SFTJobs are having their children created, and a way to wait until none are."""

    def __init__(self) -> None:
        self._running = 0
        self._idle: asyncio.Event | None = None  # made on first use, in the operator's running loop

    @contextlib.contextmanager
    def creating(self) -> Iterator[None]:
        """Count one create path while inside."""
        if self._idle is None:
            self._idle = asyncio.Event()
        self._running += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._running -= 1
            if not self._running:
                self._idle.set()

    async def idle(self, max_wait: float) -> None:
        """Return once no SFTJob is being created, or after `max_wait` seconds."""
        if self._running and self._idle is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), max_wait)
