"""Starting an SFTJob: validate, render, create the ConfigMap and the Job, report the first status.

Idempotent by construction, so kopf may run it again at any point (a retry,
or a restart after the operator was killed inside the handler): child names
are deterministic (`<name>-run-config`, `<name>-sft`), and "409 already
exists" for a child that this SFTJob owns counts as created. A child with
the same name that belongs to someone else is never adopted.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from typing import Any

import kopf
from sftjob.manifest import ManifestError, parse_sftjob
from sftjob.vocabulary import ConditionType, Reason

from sftjob_operator.conditions import keep_transition_times
from sftjob_operator.config import OperatorConfig
from sftjob_operator.events import EventPoster
from sftjob_operator.kube import ApiError, KubeClient, owned_by
from sftjob_operator.metrics import Metrics
from sftjob_operator.render import RenderError, render
from sftjob_operator.status import compute_status, create_refused_status, invalid_spec_status


class ChildConflict(Exception):
    """A child's name is taken by an object this SFTJob does not own."""


class ChildRefused(Exception):
    """The API server refused to create a child: 403 (RBAC, quota, admission) or 400/422 (admission)."""

    def __init__(self, kind: str, name: str, error: ApiError) -> None:
        super().__init__(f"creating {kind} {name} was refused: {error}")
        self.kind, self.name, self.error = kind, name, error


class CreateForbidden(kopf.TemporaryError):
    """A 403 on create: retry later; `status` says why the SFTJob waits."""

    def __init__(self, message: str, status: dict[str, Any], delay: float) -> None:
        super().__init__(message, delay=delay)
        self.status = status


def forbidden_retry_seconds(retry: int) -> float:
    """10 s, 20 s, 40 s, ... at most 5 minutes between attempts after a 403."""
    return float(min(10 * 2 ** min(retry, 5), 300))


def _plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """A plain-dict copy of what parse_sftjob reads (kopf bodies are read-only views)."""
    meta = body.get("metadata") or {}
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "generation", "labels") if k in meta},
        "spec": _thaw(body.get("spec")),
    }


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_thaw(v) for v in value]
    return value


async def ensure_child(kube: KubeClient, manifest: Mapping[str, Any], owner_uid: str | None, logger: logging.Logger) -> bool:
    """Create one child; True if created now, False if this SFTJob's child already existed.

    Raises ChildConflict for a name held by an unrelated object, and
    kopf.TemporaryError when waiting can help (API trouble, the garbage
    collector still deleting a previous SFTJob's child of the same name).
    """
    kind, name = manifest["kind"], manifest["metadata"]["name"]
    namespace = manifest["metadata"].get("namespace")
    try:
        await kube.create(manifest)
        return True
    except ApiError as e:
        if e.status != 409:
            if e.status in (400, 403, 422):
                raise ChildRefused(kind, name, e) from None
            raise kopf.TemporaryError(f"creating {kind} {name} failed ({e}); retrying", delay=2) from None
    existing = await kube.get(manifest["apiVersion"], kind, namespace, name)
    if existing is None:
        raise kopf.TemporaryError(f"{kind} {name} existed a moment ago and is gone now; retrying", delay=1)
    if owner_uid and owned_by(existing, owner_uid):
        logger.info("%s %s already exists and belongs to this SFTJob: nothing to create", kind, name)
        return False
    owners = (existing.get("metadata") or {}).get("ownerReferences") or []
    if any(ref.get("kind") == "SFTJob" for ref in owners):
        raise kopf.TemporaryError(
            f"{kind} {name} still belongs to an earlier SFTJob of the same name; waiting for the garbage collector",
            delay=5,
        )
    raise ChildConflict(
        f"{kind} {name} already exists in namespace {namespace} and does not belong to this SFTJob. "
        "Rename the SFTJob (metadata.name) or delete that object, then apply the SFTJob again."
    )


def _age_seconds(body: Mapping[str, Any]) -> float | None:
    created = (body.get("metadata") or {}).get("creationTimestamp")
    if not created:
        return None
    try:
        then = datetime.datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (datetime.datetime.now(datetime.timezone.utc) - then).total_seconds()


async def start_sftjob(
    body: Mapping[str, Any],
    kube: KubeClient,
    config: OperatorConfig,
    metrics: Metrics,
    events: EventPoster,
    logger: logging.Logger,
    retry: int = 0,
) -> dict[str, Any]:
    """Validate, render and create the children of an SFTJob; return the status to write.

    An invalid spec yields phase Failed with a Failed/InvalidSpec condition
    naming each bad field, and creates nothing. A child the API server
    refuses with 403 raises CreateForbidden (kopf retries; its `status` says
    why the job waits); with 400/422 the job fails with CreateRejected.
    `retry` is kopf's retry count for this handler. Every status it returns
    records the generation it acted on, with the summary conditions
    (Ready, Reconciling, Stalled) for it.
    """
    obj = _plain(body)
    generation = obj["metadata"].get("generation")
    try:
        sftjob = parse_sftjob(obj, source="")
        manifests = render(sftjob, config)
    except ManifestError as e:
        return _invalid(body, e.errors, generation, events, logger)
    except RenderError as e:
        return _invalid(body, e.errors, generation, events, logger)

    uid = obj["metadata"].get("uid")
    # In order, ConfigMap first: a Job must never start (and hold GPUs) when its run
    # config could not be created, or when the name belongs to someone else's ConfigMap.
    results = []
    first_stage = ConditionType.SANITY_CHECKED.value if sftjob.spec.sanityCheck.enabled else ConditionType.TRAINING.value
    for manifest in manifests:
        try:
            results.append(await ensure_child(kube, manifest, uid, logger))
        except ChildConflict as e:
            return _invalid(body, [str(e)], generation, events, logger)
        except ChildRefused as e:
            forbidden = e.error.status == 403
            delay = forbidden_retry_seconds(retry) if forbidden else None
            status = _kept(body, create_refused_status(e.kind, e.name, obj["metadata"].get("namespace"), e.error.status,
                                                       e.error.message, generation, first_stage=first_stage, retry_seconds=delay))
            message = status["conditions"][0]["message"]
            if retry == 0:  # one Event per refusal, not one per retry
                events.post(body, "Warning", status["conditions"][0]["reason"], message)
            logger.warning("%s", message)
            if forbidden:
                raise CreateForbidden(message, status, delay) from None
            return status
    children = ", ".join(f"{m['kind']} {m['metadata']['name']}" for m in manifests)

    job = next(m for m in manifests if m["kind"] == "Job")
    job_name = job["metadata"]["name"]
    status = _kept(body, compute_status({}, job, [], None, suspend=sftjob.spec.suspend, generation=generation))
    status.update(jobName=job_name, observedGeneration=generation)
    if all(results):  # all created by this run (not a retry after a lost answer or a restart)
        age = _age_seconds(body)
        if age is not None and age >= 0:
            metrics.job_creation_latency.observe(age)
    # Posted by the run that sets status.jobName: runs that failed before did not get
    # here, and none runs after (only a crash between here and kopf's patch repeats it).
    events.post(body, "Normal", Reason.CREATED.value, f"Created {children}.")
    logger.info("created %s", children)
    return status


def _kept(body: Mapping[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """`status` (built afresh: a retry, a fixed spec) with the transition times of conditions whose status stayed."""
    status["conditions"] = keep_transition_times((body.get("status") or {}).get("conditions") or [], status["conditions"])
    return status


def _invalid(
    body: Mapping[str, Any], errors: list[str], generation: int | None, events: EventPoster, logger: logging.Logger
) -> dict[str, Any]:
    status = _kept(body, invalid_spec_status(errors, generation))
    message = status["conditions"][0]["message"]
    logger.warning("not starting: %s", message)
    events.post(body, "Warning", Reason.INVALID_SPEC.value, message)
    return status

