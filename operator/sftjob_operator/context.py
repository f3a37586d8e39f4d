"""What the operator sets up at startup and tears down at exit: kopf settings, clients, metrics.

`configure_settings` is where every kopf setting is chosen, with the reason
next to it. `OperatorContext` holds the long-lived objects the handlers use
(the API client, the HTTP session for progress polls, the metrics and the
follower) and is kept in kopf's `memo`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import aiohttp.web
import kopf
from sftjob.spec import KIND
from sftjob.vocabulary import LABEL_JOB_NAME

from sftjob_operator.burst import CreatePath
from sftjob_operator.config import OperatorConfig
from sftjob_operator.events import EventPoster
from sftjob_operator.follow import Follower
from sftjob_operator.kube import KubeClient, login
from sftjob_operator.metrics import Metrics

# kopf's bookkeeping annotations, under a prefix of their own so that they
# never mix with users' sftjob.dev/* annotations.
KOPF_PREFIX = "operator.sftjob.dev"
FINALIZER = f"{KOPF_PREFIX}/finalizer"

logger = logging.getLogger(__name__)


class DiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff base in annotations, built straight from the fields it keeps.

    kopf builds the "essence" of every object on every watch event by deep-copying
    the whole body, status included, wrapping it, then keeping only spec, labels and
    the annotations that are not its own. Only SFTJobs have create/update/resume
    handlers, so the essence of a Job or a Pod is never read; an SFTJob's is built
    from exactly the fields kopf keeps (the same essence, hence the same stored
    annotation, tested against kopf's own), at a tenth of the cost: it was 7 % of
    the operator's CPU in a burst of new SFTJobs. Anything unusual (extra or
    ignored fields) goes through kopf's own build.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        if body.get("kind") != KIND:
            return kopf.BodyEssence()
        extra_fields = list(extra_fields or ())
        if extra_fields or self.ignored_fields:
            return super().build(body=body, extra_fields=extra_fields)  # e.g. a handler on a status field
        meta = body.get("metadata") or {}
        # JSON values only (a watch event's body): a round trip through the C codec is the cheapest deep copy.
        essence = json.loads(json.dumps({k: v for k, v in body.items() if k not in _NOT_ESSENCE}))
        kept: dict[str, Any] = {}
        if meta.get("labels"):
            kept["labels"] = dict(meta["labels"])
        annotations = dict(meta.get("annotations") or {})
        ignored = self._detect_marked_prefixes(annotations)
        own = set(self.make_keys(self.key, body=body))
        for name in list(annotations):
            if name in own or name == _LAST_APPLIED or any(name.startswith(f"{p}/") for p in ignored):
                del annotations[name]
        if annotations:
            kept["annotations"] = annotations
        if kept:
            essence["metadata"] = kept
        return kopf.BodyEssence(essence)


_NOT_ESSENCE = ("apiVersion", "kind", "metadata", "status")
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def configure_settings(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    """Tune kopf for this operator (called from the startup handler)."""
    # Events on SFTJobs are part of the product (`kubectl describe sftjob`):
    # one per phase transition and per newly reported problem, posted by
    # events.py (transitions also happen in the progress poller, outside
    # kopf's handler context where kopf.event works). kopf's own posting of
    # log lines as Events stays off: two API requests per object and handler.
    settings.posting.enabled = False
    settings.posting.loggers = False

    # Scanning watches CRDs and namespaces to follow them as they come and go.
    # With a fixed list of namespaces there is nothing to follow; in cluster
    # mode it can be switched off where the API server cannot serve it.
    settings.scanning.disabled = bool(config.namespaces) or config.disable_scanning

    # Persistence: kopf's handler progress and the last-handled spec (its
    # diff base, which tells "created" from "resumed" and "updated") live in
    # annotations, not in .status. Status belongs to users and to the CRD's
    # schema (status.kopf would be pruned by a structural schema), and
    # annotations survive `kubectl replace --subresource=status` edits.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX, v1=False)
    settings.persistence.diffbase_storage = DiffBaseStorage(prefix=KOPF_PREFIX, key="last-handled-configuration", v1=False)
    # No handler needs a finalizer (no delete handler, no daemons or timers):
    # children carry ownerReferences and the garbage collector deletes them.
    # The name is set anyway so that a finalizer added by a future handler is
    # recognisably ours.
    settings.persistence.finalizer = FINALIZER

    # Bursts: kopf runs one worker per object; a limit below the burst size
    # makes SFTJobs wait for idle workers to time out (100 jobs took 46 s
    # with a small limit). The cap only protects memory in pathological cases.
    settings.queueing.worker_limit = 5000

    # Watches: ask the server to end each watch after 5 minutes and give up
    # on a silent one after 6 (a half-open connection would otherwise stall
    # the operator forever); kopf re-lists and continues.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 360
    settings.watching.connect_timeout = 30
    # Only Jobs and Pods made by this operator: a cluster's other pods are
    # never sent to (or kept in memory by) the operator.
    settings.watching.label_selectors["batch", "v1", "jobs"] = LABEL_JOB_NAME
    settings.watching.label_selectors["v1", "pods"] = LABEL_JOB_NAME

    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10


@dataclass
class OperatorContext:
    """The operator's long-lived objects."""

    config: OperatorConfig
    kube: KubeClient
    http: aiohttp.ClientSession
    metrics: Metrics
    follower: Follower
    events: EventPoster
    create_path: CreatePath
    metrics_runner: aiohttp.web.AppRunner | None = None
    poller: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls,
        settings: kopf.OperatorSettings,
        config: OperatorConfig,
        indexes: tuple[Mapping[Any, Any], Mapping[Any, Any]],
        bind_address: str,
    ) -> OperatorContext:
        """Build the clients and the follower; start the metrics server when a port is set."""
        kube = KubeClient(lambda: login(settings), request_timeout=settings.networking.request_timeout or 60)
        # Progress polls go straight to pod IPs: never through a proxy from the environment.
        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=100),
            timeout=aiohttp.ClientTimeout(total=config.progress_timeout_seconds),
            trust_env=False,
        )
        metrics = Metrics()
        create_path = CreatePath()
        events = EventPoster(kube, create_path)
        follower = Follower(kube, config, metrics, http, events)
        follower.attach(*indexes)
        metrics.set_sources(follower.phases, lambda: kube.requests)
        ctx = cls(config=config, kube=kube, http=http, metrics=metrics, follower=follower, events=events,
                  create_path=create_path)
        ctx.poller = asyncio.get_running_loop().create_task(follower.poll_forever(), name="progress poller")
        if config.metrics_port:
            ctx.metrics_runner = await metrics.serve(bind_address, config.metrics_port)
            logger.info("serving metrics on http://%s:%s/metrics", bind_address, config.metrics_port)
        return ctx

    async def stop(self) -> None:
        """Stop the poller and the metrics server, flush Events, close connections."""
        if self.poller is not None:
            self.poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.poller
        if self.metrics_runner is not None:
            await self.metrics_runner.cleanup()
        await self.events.drain()
        await self.http.close()
        await self.kube.close()
