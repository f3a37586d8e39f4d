"""Following started SFTJobs: their Job, Pods and progress, written into SFTJob status.

Level-triggered: any event of an SFTJob, of its Job or of one of its Pods
(and each progress poll) recomputes the whole status with the pure
`status.compute_status` from the latest known state of all three, and
writes only the difference. A lost or reordered event therefore costs
nothing; the next one brings status up to date.

The latest state of Jobs and Pods comes from kopf indexes (`handlers.py`
declares them): kopf fills them from its watch streams, and holds every
handler back until the initial listing of each is complete, so after a
restart status is never computed from a half-known world. SFTJobs are kept
here, by the filter of their own event handler (`keep`), which kopf calls
before their create/resume/update handlers: as an index they cost a second
handler invocation per event, and at startup kopf's readiness bookkeeping for
indexed objects wakes every waiting SFTJob once per listed SFTJob, a CPU cost
that grows with the square of their number. An SFTJob not seen yet is
reconciled by its resume handler once it is.

Progress is polled by one loop for all SFTJobs (`poll_forever`), not a
kopf timer per SFTJob: a kopf timer puts a finalizer on its object while it
runs, which cost four extra API requests per lifecycle (kopf's optimistic
finalizer patches race the status writes) and blocks deleting a running
SFTJob whenever the operator is down. The loop needs no finalizer: it only
reads the in-memory view and stops polling an SFTJob the moment it is gone.

Once an SFTJob has `status.jobName` (written by the create handler through
kopf's patch), this follower is the only writer of its status, so it trusts
the status it wrote last over the watched copy, which lags behind its own
writes by one round trip. One asyncio lock per SFTJob serializes the work
for one SFTJob; different SFTJobs proceed in parallel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import aiohttp
import kopf
from sftjob.manifest import API_VERSION_FULL
from sftjob.report import Progress
from sftjob.spec import KIND
from sftjob.vocabulary import TERMINAL_PHASE_NAMES

from sftjob_operator.announce import announce, sftjob_logger
from sftjob_operator.conditions import apply_merge_patch, merge_diff
from sftjob_operator.config import OperatorConfig
from sftjob_operator.events import EventPoster
from sftjob_operator.index import Key, slim_sftjob
from sftjob_operator.kube import ApiError, KubeClient, owned_by
from sftjob_operator.metrics import Metrics
from sftjob_operator.progress import fetch_progress, progress_url, running_pod_ip
from sftjob_operator.readiness import without_summary
from sftjob_operator.status import RUNNING_PHASES, compute_status, generation_status, job_lost_status, spec_ignored_status

Log = logging.Logger | logging.LoggerAdapter
_log = logging.getLogger(__name__)

_TERMINAL = TERMINAL_PHASE_NAMES
_RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


def _changed_paths(old: Any, new: Any, prefix: str = "spec") -> list[str]:
    diff = merge_diff(old or {}, new or {})
    out: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Mapping) and node:
            for key, value in node.items():
                walk(value, f"{path}.{key}")
        else:
            out.append(path)

    walk(diff, prefix)
    return sorted(p for p in out if p != prefix)


class Follower:
    """Keeps the status of every started SFTJob in step with its Job, Pods and progress."""

    def __init__(
        self, kube: KubeClient, config: OperatorConfig, metrics: Metrics, http: aiohttp.ClientSession, events: EventPoster
    ) -> None:
        self.kube = kube
        self.events = events
        self.config = config
        self.metrics = metrics
        self.http = http
        self._sftjobs: dict[Key, dict[str | None, dict[str, Any]]] = {}  # key -> uid -> slim SFTJob
        self._jobs: Mapping[Key, Any] = {}
        self._pods: Mapping[Key, Any] = {}
        self._locks: dict[Key, asyncio.Lock] = {}
        self._known: dict[Key, tuple[str | None, dict[str, Any]]] = {}
        self._progress: dict[Key, tuple[str | None, Progress]] = {}
        self._retries: dict[Key, asyncio.Task[None]] = {}
        self._attempts: dict[Key, int] = {}
        self._background: set[asyncio.Task[None]] = set()
        # SFTJobs whose Job or Pod changed before their status showed jobName (see `keep`).
        self._early: set[Key] = set()

    def attach(self, jobs: Mapping[Key, Any], pods: Mapping[Key, Any]) -> None:
        """Use these kopf indexes (key -> store of slim objects) as the view of Jobs and Pods."""
        self._jobs, self._pods = jobs, pods

    def phases(self) -> Iterator[str | None]:
        """The phase of every SFTJob the operator sees (for the metrics gauge)."""
        for store in list(self._sftjobs.values()):
            for sft in list(store.values()):
                yield (sft.get("status") or {}).get("phase")

    def keep(self, key: Key, type: str | None, body: Mapping[str, Any]) -> bool:
        """An SFTJob was listed, added, changed or deleted: keep its slim copy; return whether to reconcile it now.

        Synchronous and cheap, because it runs as the `when` filter of the
        SFTJob event handler (see handlers.py), which kopf invokes only when
        this returns True. Once status.jobName is written, status follows the
        Job and Pods (whose events reconcile), spec edits (the update handler)
        and progress polls; the SFTJob's own events add nothing, except when
        it is listed after a restart, or when it first shows jobName after a
        Job or Pod event had to be skipped for the lack of it.
        """
        sft = slim_sftjob(body)
        uid = sft["metadata"]["uid"]
        if type == "DELETED":
            store = self._sftjobs.get(key, {})
            store.pop(uid, None)
            if not store:  # not a newer SFTJob of the same name
                self._sftjobs.pop(key, None)
                self.forget(key)
            return False
        self._sftjobs.setdefault(key, {})[uid] = sft
        status = sft["status"]
        return bool(status.get("jobName") and status.get("phase") not in _TERMINAL and (type is None or key in self._early))

    def forget(self, key: Key) -> None:
        """Drop everything remembered about a deleted SFTJob."""
        self._early.discard(key)
        self._known.pop(key, None)
        self._progress.pop(key, None)
        self._attempts.pop(key, None)
        task = self._retries.pop(key, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]

    # -- reading the view --------------------------------------------------------------------

    def _sftjob(self, key: Key) -> dict[str, Any] | None:
        store = self._sftjobs.get(key)
        sft = next(iter(store.values()), None) if store else None
        if sft is None or sft["metadata"].get("deletionTimestamp"):
            return None
        return sft

    def _so_far(self, key: Key, sft: Mapping[str, Any]) -> dict[str, Any]:
        known = self._known.get(key)
        if known is not None and known[0] == sft["metadata"].get("uid"):
            return known[1]
        return dict(sft.get("status") or {})

    def _job(self, key: Key, sft: Mapping[str, Any], job_name: str) -> dict[str, Any] | None:
        uid = sft["metadata"].get("uid")
        for job in self._jobs.get(key) or ():
            if job["metadata"].get("name") == job_name and (not uid or owned_by(job, uid)):
                return job
        return None

    def _job_pods(self, key: Key, job: Mapping[str, Any]) -> list[dict[str, Any]]:
        uid = job["metadata"].get("uid")
        return [p for p in self._pods.get(key) or () if not uid or owned_by(p, uid)]

    def _lock(self, key: Key) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    # -- the work ------------------------------------------------------------------------------

    async def reconcile(self, key: Key) -> None:
        """Recompute the status of one SFTJob and write what changed."""
        async with self._lock(key):
            with self.metrics.timed("status"):
                await self._reconcile(key)

    async def _reconcile(self, key: Key) -> None:
        sft = self._sftjob(key)
        if sft is None:
            return
        status = self._so_far(key, sft)
        job_name = status.get("jobName")
        if not job_name:
            # Not started yet (or invalid): the create handler owns status until it sets jobName,
            # and the SFTJob event that shows jobName brings us back.
            self._early.add(key)
            return
        self._early.discard(key)
        job = self._job(key, sft, job_name)
        if job is None and status.get("phase") not in _TERMINAL:
            return  # not seen yet; its ADDED event will bring us back
        known = self._progress.get(key)
        progress = known[1] if known is not None and known[0] == sft["metadata"].get("uid") else None
        # A finished SFTJob needs no Job (it may be gone): compute_status only fills in missing summary conditions.
        pods = self._job_pods(key, job) if job is not None else []
        patch = compute_status(status, job, pods, progress, suspend=sft["spec"]["suspend"], hint=sft["spec"]["memoryHint"])
        if patch:
            await self._write(key, sft, status, patch)

    async def _write(self, key: Key, sft: Mapping[str, Any], status: Mapping[str, Any], patch: Mapping[str, Any]) -> bool:
        meta = sft["metadata"]
        try:
            answer = await self.kube.patch(API_VERSION_FULL, KIND, meta["namespace"], meta["name"], {"status": patch}, subresource="status")
        except ApiError as e:
            self._known.pop(key, None)  # re-read the watched status next time
            self.metrics.reconcile_errors.labels(handler="status-write").inc()
            if e.transient or e.status == 409:
                sftjob_logger(sft).warning("writing status failed (%s); retrying later", e)
                self._retry_later(key)
            else:
                # The same patch would be refused again (e.g. a schema the status does not fit):
                # the next event retries with fresh inputs.
                sftjob_logger(sft).error("the API server refused the status %s: %s", patch, e)
            return False
        if answer is None:
            self.forget(key)  # the SFTJob is gone
            return False
        self._attempts.pop(key, None)
        new = answer.get("status") if isinstance(answer.get("status"), Mapping) else apply_merge_patch(status, patch)
        self._known[key] = (meta.get("uid"), dict(new))
        self._announce(sft, status, new)
        return True

    def _retry_later(self, key: Key) -> None:
        running = self._retries.get(key)
        if running is not None and not running.done():
            return
        attempt = self._attempts.get(key, 0)
        self._attempts[key] = attempt + 1
        delay = _RETRY_DELAYS[min(attempt, len(_RETRY_DELAYS) - 1)]

        async def retry() -> None:
            await asyncio.sleep(delay)
            self._retries.pop(key, None)
            await self.reconcile(key)

        self._retries[key] = asyncio.get_running_loop().create_task(retry(), name=f"status retry {key}")

    def _announce(self, sft: Mapping[str, Any], old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        # Ready/Reconciling/Stalled restate the stage conditions: announcing them would tell each problem twice.
        announce(self.events, sft, without_summary(old), without_summary(new))

    def running(self) -> list[Key]:
        """SFTJobs whose pod is in a phase that serves progress (as this operator last wrote it)."""
        keys = []
        for key, store in list(self._sftjobs.items()):
            for sft in list(store.values()):
                if self._so_far(key, sft).get("phase") in RUNNING_PHASES:
                    keys.append(key)
        return keys

    async def poll_forever(self, concurrency: int = 32) -> None:
        """Every `progress_poll_seconds`, poll each running SFTJob once, at most `concurrency` at a time."""
        interval = self.config.progress_poll_seconds
        limit = asyncio.Semaphore(concurrency)
        loop = asyncio.get_running_loop()

        async def one(key: Key) -> None:
            async with limit:
                sft = self._sftjob(key)
                if sft is not None:
                    await self.poll_progress(key, sftjob_logger(sft))

        while True:
            started = loop.time()
            results = await asyncio.gather(*(one(key) for key in self.running()), return_exceptions=True)
            for error in (r for r in results if isinstance(r, Exception)):
                _log.warning("progress poll failed: %r", error)
            await asyncio.sleep(max(interval - (loop.time() - started), interval / 10))

    async def poll_progress(self, key: Key, logger: Log) -> None:
        """Read the running pod's progress report once and fold it into status."""
        sft = self._sftjob(key)
        if sft is None:
            return
        job_name = self._so_far(key, sft).get("jobName")
        job = self._job(key, sft, job_name) if job_name else None
        ip = running_pod_ip(self._job_pods(key, job)) if job is not None else None
        if ip is None:
            return
        url = progress_url(ip, self.config.progress_port)
        progress = await fetch_progress(self.http, url, self.config.progress_timeout_seconds, logger)
        self.metrics.progress_polls.labels(result="ok" if progress is not None else "failed").inc()
        if progress is None:
            return
        self._progress[key] = (sft["metadata"].get("uid"), progress)
        await self.reconcile(key)

    async def spec_changed(self, key: Key, body: Mapping[str, Any], old: Any, new: Any, logger: Log) -> bool:
        """Apply a spec edit to a started SFTJob: suspend/resume the Job, report other edits as ignored.

        Returns False if the SFTJob has not started (no Job yet), so the
        caller can try to start it with the edited spec.
        """
        async with self._lock(key):
            sft = self._sftjob(key) or slim_sftjob(body)
            status = self._so_far(key, sft)
            job_name = status.get("jobName")
            if not job_name:
                return False
            changed = _changed_paths(old, new)
            if "spec.suspend" in changed and status.get("phase") not in _TERMINAL:
                await self._suspend_job(sft, job_name, bool((new or {}).get("suspend")), logger)
            ignored = [p for p in changed if p != "spec.suspend"]
            generation = (body.get("metadata") or {}).get("generation")
            if ignored:
                logger.warning("spec changes after the Job exists are not applied: %s", ", ".join(ignored))
                patch = spec_ignored_status(status, ignored, job_name, generation)
            else:
                patch = generation_status(status, generation)
            if patch:
                await self._write(key, sft, status, patch)
        await self.reconcile(key)
        return True

    async def _suspend_job(self, sft: Mapping[str, Any], job_name: str, suspend: bool, logger: Log) -> None:
        meta = sft["metadata"]
        if not suspend and sft["spec"].get("queueName"):
            # Kueue owns the Job's suspend flag for queued jobs: it unsuspends when it admits the workload.
            logger.info("resumed; leaving Job %s to Kueue to admit", job_name)
            return
        try:
            done = await self.kube.patch("batch/v1", "Job", meta["namespace"], job_name, {"spec": {"suspend": suspend}})
        except ApiError as e:
            raise kopf.TemporaryError(f"could not {'suspend' if suspend else 'resume'} Job {job_name}: {e}", delay=5) from None
        if done is not None:
            logger.info("%s Job %s", "suspended" if suspend else "resumed", job_name)

    async def job_deleted(self, key: Key, job_name: str, attempt: int = 0) -> None:
        """A Job of ours was deleted: an SFTJob still waiting on it can never finish, so it fails (and says why)."""
        async with self._lock(key):
            sft = self._sftjob(key)
            if sft is None:
                return  # the SFTJob itself is gone: the garbage collector removed its Job
            status = self._so_far(key, sft)
            if not status.get("jobName") and attempt < 10:
                # The create handler's status write (status.jobName) may not have reached the watched
                # copy yet: look again shortly rather than miss the deletion.
                async def again() -> None:
                    await asyncio.sleep(0.5)
                    await self.job_deleted(key, job_name, attempt + 1)

                task = asyncio.get_running_loop().create_task(again(), name=f"job deleted {key}")
                self._background.add(task)  # the loop keeps only a weak reference
                task.add_done_callback(self._background.discard)
                return
            if status.get("jobName") == job_name and status.get("phase") not in _TERMINAL:
                await self._write(key, sft, status, job_lost_status(status, job_name))

    async def resumed(self, key: Key) -> None:
        """After an operator restart: fail an unfinished SFTJob whose Job vanished meanwhile, then catch up."""
        async with self._lock(key):
            sft = self._sftjob(key)
            if sft is None:
                return
            status = self._so_far(key, sft)
            job_name = status.get("jobName")
            if job_name and status.get("phase") not in _TERMINAL and self._job(key, sft, job_name) is None:
                await self._write(key, sft, status, job_lost_status(status, job_name))
        await self.reconcile(key)
