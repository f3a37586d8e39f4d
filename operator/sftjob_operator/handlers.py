"""Every kopf handler of the operator: thin, typed wrappers around the domain functions.

- startup/cleanup: `context` (kopf settings, clients, metrics server);
- SFTJob created / updated before it started: `children.start_sftjob`
  (validate, render, create ConfigMap + Job, first status, which in a
  burst of new SFTJobs waits for the burst's Jobs: see `burst.py`);
- SFTJob resumed after a restart, its spec edited, any event of it or of its
  Job or Pods: `follow.Follower` (status from the Job, Pods and progress
  through the pure `status.compute_status`); its progress poller is one
  background loop started with the operator (see `follow.py` for why it is
  not a kopf timer, and why SFTJobs are not a kopf index).

There is no delete handler: the ConfigMap and the Job carry ownerReferences
to the SFTJob, so Kubernetes' garbage collector removes them, and a delete
handler would put a finalizer on every SFTJob (a round trip on the create
path and a blocked delete whenever the operator is down). Nothing else puts
a finalizer on SFTJobs either.

Run with `sftjob operator` (see `main.py`), or `kopf run -m sftjob_operator.handlers`.
"""

from __future__ import annotations

from typing import Any

import kopf
from sftjob.spec import API_GROUP, API_VERSION, PLURAL
from sftjob.vocabulary import LABEL_JOB_NAME

from sftjob_operator.children import CreateForbidden, start_sftjob
from sftjob_operator.config import OperatorConfig
from sftjob_operator.context import OperatorContext, configure_settings
from sftjob_operator.index import Key, slim_job, slim_pod

# `main.run_operator` validates the same variables first and reports errors cleanly.
CONFIG = OperatorConfig.from_env()

SFTJOBS = (API_GROUP, API_VERSION, PLURAL)
# The longest a new SFTJob's first status waits for the Jobs of a burst to be created.
STATUS_HOLD_SECONDS = 5.0
OURS = {LABEL_JOB_NAME: kopf.PRESENT}


def _ctx(memo: kopf.Memo) -> OperatorContext:
    return memo["sftjob"]


# -- lifecycle of the operator -----------------------------------------------------------------


@kopf.on.startup()
async def startup(
    settings: kopf.OperatorSettings,
    memo: kopf.Memo,
    job_index: kopf.Index[Key, dict[str, Any]],
    pod_index: kopf.Index[Key, dict[str, Any]],
    **_: Any,
) -> None:
    """Tune kopf; build the clients and the follower; start the progress poller and the metrics server."""
    configure_settings(settings, CONFIG)
    memo["sftjob"] = await OperatorContext.start(
        settings, CONFIG, (job_index, pod_index), memo.get("bind_address", "0.0.0.0")
    )


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Stop the progress poller and the metrics server; close connections."""
    if "sftjob" in memo:
        await _ctx(memo).stop()


# -- what the operator keeps in memory (kopf fills these from its watches) --------------------
# Async on purpose: kopf runs sync handlers in a thread pool, and a thread hop
# per watch event was a fifth of the operator's CPU in a burst of 500 SFTJobs.
# SFTJobs themselves are kept by the follower, from `sftjob_event`'s filter (see follow.py).


@kopf.index("batch", "v1", "jobs", labels=OURS)
async def job_index(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    """Jobs made by the operator, by their SFTJob's (namespace, name)."""
    return {(namespace, labels[LABEL_JOB_NAME]): slim_job(body)}


@kopf.index("v1", "pods", labels=OURS)
async def pod_index(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    """Pods of those Jobs, by their SFTJob's (namespace, name)."""
    return {(namespace, labels[LABEL_JOB_NAME]): slim_pod(body)}


# -- SFTJobs -------------------------------------------------------------------------------------


async def _start(body: kopf.Body, patch: kopf.Patch, ctx: OperatorContext, logger: kopf.Logger, retry: int) -> None:
    try:
        with ctx.create_path.creating():
            status = await start_sftjob(body, ctx.kube, ctx.config, ctx.metrics, ctx.events, logger, retry)
    except CreateForbidden as e:
        patch.status.update(e.status)  # kopf applies the patch, then retries after e.delay
        raise
    # kopf writes this status once the handler returns: in a burst, after every Job (see burst.py).
    await ctx.create_path.idle(STATUS_HOLD_SECONDS)
    patch.status.update(status)


@kopf.on.create(*SFTJOBS)
async def sftjob_created(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger, retry: int, **_: Any
) -> None:
    """Validate, render and create the ConfigMap and the Job; write the first status."""
    ctx = _ctx(memo)
    with ctx.metrics.timed("create"):
        await _start(body, patch, ctx, logger, retry)


@kopf.on.resume(*SFTJOBS)
async def sftjob_resumed(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    """After an operator restart: catch the status up with the Job and its Pods."""
    await _ctx(memo).follower.resumed((namespace, name))


@kopf.on.update(*SFTJOBS, field="spec")
async def sftjob_spec_updated(
    namespace: str, name: str, body: kopf.Body, old: Any, new: Any, patch: kopf.Patch,
    memo: kopf.Memo, logger: kopf.Logger, retry: int, **_: Any,
) -> None:
    """spec.suspend suspends or resumes the Job; other edits are reported as not applied.

    An SFTJob that never started (its spec was invalid) is started now.
    """
    ctx = _ctx(memo)
    with ctx.metrics.timed("update"):
        if not await ctx.follower.spec_changed((namespace, name), body, old, new, logger):
            await _start(body, patch, ctx, logger, retry)


def _keep_sftjob(namespace: str, name: str, type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> bool:
    # Every SFTJob event passes through this filter, which keeps the follower's copy;
    # the handler below runs only when that copy calls for a reconcile. Invoking a
    # handler costs kopf far more than the dict write (its kwargs, handler state and
    # log lines): on every event it was a tenth of the operator's CPU in a burst.
    return _ctx(memo).follower.keep((namespace, name), type, body)


@kopf.on.event(*SFTJOBS, when=_keep_sftjob)
async def sftjob_event(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    """An SFTJob listed after a restart, or first showing jobName after its Job changed: catch its status up."""
    await _ctx(memo).follower.reconcile((namespace, name))


# -- the Jobs and Pods the operator made --------------------------------------------------------


def _job_news(type: str | None, status: kopf.Status, **_: Any) -> bool:
    # A Job seen for the first time while the operator runs, with no status yet, is
    # one the create handler just made: the first status was computed from exactly
    # that Job. Listed Jobs (type None, after a restart) and later events pass.
    return type != "ADDED" or bool(status)


@kopf.on.event("batch", "v1", "jobs", labels=OURS, when=_job_news)
async def job_event(
    namespace: str, name: str, type: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    """A Job changed: recompute its SFTJob's status (a deleted Job fails an SFTJob still waiting on it)."""
    key = (namespace, labels[LABEL_JOB_NAME])
    if type == "DELETED":
        await _ctx(memo).follower.job_deleted(key, name)
    else:
        await _ctx(memo).follower.reconcile(key)


@kopf.on.event("v1", "pods", labels=OURS)
async def pod_event(namespace: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    """A Pod changed: recompute its SFTJob's status."""
    await _ctx(memo).follower.reconcile((namespace, labels[LABEL_JOB_NAME]))
