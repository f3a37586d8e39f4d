"""What the operator keeps in memory: slim copies of SFTJobs, Jobs and Pods, by their SFTJob's key.

kopf fills its indexes of Jobs and Pods (declared in `handlers.py`) from its
watch streams, and the follower keeps the SFTJobs (see `follow.py`); each
entry keeps only the fields status computation reads, so memory stays small
with hundreds of SFTJobs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sftjob.vocabulary import COMPLETION_INDEX_ANNOTATION, memory_hint

Key = tuple[str, str]  # (namespace, SFTJob name)


def _names(containers: Any) -> list[dict[str, str]]:
    return [{"name": c.get("name")} for c in containers or []]


def slim_sftjob(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of an SFTJob the follower needs."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = {k: v for k, v in (body.get("status") or {}).items() if k != "kopf"}
    training = spec.get("training") or {}
    checkpointing = training.get("gradientCheckpointing")
    if checkpointing is None:  # the runtime's default: on for GPUs, off on CPU
        checkpointing = ((spec.get("resources") or {}).get("gpus", 1) or 0) > 0
    return {
        "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "generation", "deletionTimestamp")},
        "spec": {"suspend": bool(spec.get("suspend")), "queueName": spec.get("queueName"),
                 # What an out-of-memory message may suggest, given what the job already does.
                 "memoryHint": memory_hint(bool(checkpointing), bool(training.get("lora")))},
        "status": status,
    }


def slim_job(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a Job that status computation reads."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    template = ((spec.get("template") or {}).get("spec")) or {}
    return {
        "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "labels", "ownerReferences")},
        "spec": {
            "suspend": spec.get("suspend"),
            "activeDeadlineSeconds": spec.get("activeDeadlineSeconds"),
            "backoffLimit": spec.get("backoffLimit"),
            "template": {"spec": {"initContainers": _names(template.get("initContainers"))}},
        },
        "status": body.get("status") or {},
    }


def slim_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a Pod that status computation reads."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    slim_meta = {k: meta.get(k) for k in ("name", "uid", "creationTimestamp", "deletionTimestamp", "ownerReferences")}
    index = (meta.get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION)
    if index is not None:  # a multi-node job's pod: which node it is
        slim_meta["annotations"] = {COMPLETION_INDEX_ANNOTATION: index}
    return {
        "metadata": slim_meta,
        "spec": {"initContainers": _names(spec.get("initContainers")), "containers": _names(spec.get("containers"))},
        "status": body.get("status") or {},
    }
