"""Kubernetes Events on SFTJobs (what `kubectl describe sftjob` shows under Events).

Posted by the operator's own client rather than `kopf.event`: kopf's
poster only works inside kopf's per-object handler context, and status
transitions also happen in the progress poller, which runs outside it.
Posting is fire-and-forget: an Event that cannot be written is logged and
dropped, never a reason to fail or retry a reconciliation.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Mapping
from typing import Any

from sftjob.manifest import API_VERSION_FULL
from sftjob.spec import KIND

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
    """Posts Events in the background and keeps their tasks alive until done."""

    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube
        self.instance = socket.gethostname()
        self._tasks: set[asyncio.Task[None]] = set()

    def post(self, sftjob: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Queue one Event (Normal or Warning); returns at once."""
        manifest = event_manifest(sftjob, type_, reason, message, instance=self.instance)
        task = asyncio.get_running_loop().create_task(self._send(manifest), name=f"event {reason}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, manifest: dict[str, Any]) -> None:
        try:
            await self.kube.create(manifest)
        except ApiError as e:
            logger.warning("could not post event %s on %s: %s", manifest["reason"], manifest["involvedObject"]["name"], e)

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait (a little) for queued Events before shutting down."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
