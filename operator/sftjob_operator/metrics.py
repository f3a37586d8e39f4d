"""Prometheus metrics of the operator, served on `config.metrics_port` at /metrics.

The registry is this operator's own (not prometheus_client's global one), so
importing the module twice or in tests never collides. The server is a tiny
aiohttp app on the operator's event loop: no extra thread, and the phase
gauge is computed from the same in-memory view the handlers use.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import aiohttp.web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from sftjob.vocabulary import Phase

# Reconcile work is milliseconds when healthy; API trouble stretches it to seconds.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """The operator's metrics and their registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._phases: Callable[[], Iterable[str | None]] = lambda: ()
        self._api_requests: Callable[[], int] = lambda: 0
        self.sftjobs = Gauge(
            "sftjob_operator_sftjobs", "SFTJobs known to the operator, by status.phase.", ["phase"], registry=self.registry
        )
        self.reconcile_errors = Counter(
            "sftjob_operator_reconcile_errors", "Reconciliations that failed (and will be retried).", ["handler"],
            registry=self.registry,
        )
        self.reconcile_latency = Histogram(
            "sftjob_operator_reconcile_seconds", "Time spent in one reconciliation.", ["handler"],
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.job_creation_latency = Histogram(
            "sftjob_operator_job_creation_seconds", "From SFTJob creationTimestamp to its Job being created.",
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300), registry=self.registry,
        )
        self.progress_polls = Counter(
            "sftjob_operator_progress_polls", "Polls of training pods' progress endpoints.", ["result"],
            registry=self.registry,
        )
        self.api_requests = Gauge(
            "sftjob_operator_api_requests", "Requests the operator's own client sent (kopf's watches not included).",
            registry=self.registry,
        )

    def set_sources(self, phases: Callable[[], Iterable[str | None]], api_requests: Callable[[], int]) -> None:
        """Where the gauges read their values from at scrape time: current phases, requests sent."""
        self._phases = phases
        self._api_requests = api_requests

    def _refresh(self) -> None:
        counts = Tally(p or "Unknown" for p in self._phases())
        for phase in [p.value for p in Phase] + ["Unknown"]:
            self.sftjobs.labels(phase=phase).set(counts.get(phase, 0))
        self.api_requests.set(self._api_requests())

    @contextmanager
    def timed(self, handler: str) -> Iterator[None]:
        """Measure one reconciliation; count it as an error if it raises."""
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            self.reconcile_errors.labels(handler=handler).inc()
            raise
        finally:
            self.reconcile_latency.labels(handler=handler).observe(time.perf_counter() - start)

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        self._refresh()
        return generate_latest(self.registry)

    async def serve(self, host: str, port: int) -> aiohttp.web.AppRunner:
        """Start the /metrics server on the running loop; cleanup() the returned runner to stop it."""

        async def metrics(_: aiohttp.web.Request) -> aiohttp.web.Response:
            return aiohttp.web.Response(body=self.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

        app = aiohttp.web.Application()
        app.router.add_get("/metrics", metrics)
        runner = aiohttp.web.AppRunner(app, access_log=None)
        await runner.setup()
        await aiohttp.web.TCPSite(runner, host, port).start()
        return runner
