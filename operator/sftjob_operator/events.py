"""Kubernetes Events on SFTJobs (what `kubectl describe sftjob` shows under Events).

Posted by the operator's own client rather than `kopf.event`: kopf's
poster only works inside kopf's per-object handler context, and status
transitions also happen in the progress poller, which runs outside it.
Posting is fire-and-forget: an Event that cannot be written is logged and
dropped, never a reason to fail or retry a reconciliation.

Events wait in a queue for a few senders instead of each getting a task of
its own, and the senders hold back while an SFTJob is being created (see
burst.py), for up to `max_hold` seconds: in a burst of new SFTJobs, 500
"Created" Events posted meanwhile would compete with the Jobs still to be
created for the one event loop and for the API server, whereas held back
they follow the burst, and no Event delays a Job.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Mapping
from typing import Any

from sftjob.manifest import API_VERSION_FULL
from sftjob.spec import KIND

from sftjob_operator.burst import CreatePath
from sftjob_operator.kube import ApiError, KubeClient
from sftjob_operator.conditions import now_rfc3339

COMPONENT = "sftjob-operator"
MESSAGE_LIMIT = 1024  # what events.k8s.io keeps of a note; longer ones are cut

logger = logging.getLogger(__name__)


def event_manifest(sftjob: Mapping[str, Any], type_: str, reason: str, message: str, *, instance: str = "") -> dict[str, Any]:
    """A core/v1 Event about an SFTJob (its metadata needs name, namespace and uid)."""
    meta = sftjob.get("metadata") or {}
    now = now_rfc3339()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta.get('name')}.", "namespace": meta.get("namespace")},
        "involvedObject": {
            "apiVersion": API_VERSION_FULL, "kind": KIND,
            "name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid"),
        },
        "type": type_,
        "reason": reason,
        "message": message if len(message) <= MESSAGE_LIMIT else message[: MESSAGE_LIMIT - 3] + "...",
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": instance,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


class EventPoster:
    """Posts Events in the background, `senders` at a time, in the order they were queued."""

    def __init__(self, kube: KubeClient, create_path: CreatePath | None = None, senders: int = 4, max_hold: float = 10.0) -> None:
        self.kube = kube
        self.instance = socket.gethostname()
        self.max_hold = max_hold
        self._create_path = create_path or CreatePath()
        self._senders = senders
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    def post(self, sftjob: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Queue one Event (Normal or Warning); returns at once."""
        self._queue.put_nowait(event_manifest(sftjob, type_, reason, message, instance=self.instance))
        if not self._tasks:  # started on first use: the queue needs the operator's running loop
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._send_queued(), name="event sender") for _ in range(self._senders)]

    async def _send_queued(self) -> None:
        while True:
            manifest = await self._queue.get()
            await self._create_path.idle(self.max_hold)
            try:
                await self.kube.create(manifest)
            except ApiError as e:
                logger.warning("could not post event %s on %s: %s", manifest["reason"], manifest["involvedObject"]["name"], e)
            except Exception:  # a sender must outlive any one Event
                logger.exception("could not post event %s", manifest["reason"])
            finally:
                self._queue.task_done()

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait (a little) for queued Events, then stop the senders (before shutting down)."""
        if not self._tasks:
            return
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except asyncio.TimeoutError:
            logger.warning("%d event(s) not posted before shutdown", self._queue.qsize())
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
