"""Why a pod or a Job failed, in words that say what to change.

Pure functions of the Job and Pod objects the kubelet and the Job controller
write. Where the truth comes from, in order of trust: the runtime's `Outcome`
in a container's termination message (what our code knew when it exited);
what the kubelet says about the containers (OOMKilled, image pull, a missing
Secret); the scheduler's PodScheduled condition; disruption conditions, which
come first because the SIGTERM exit they cause is a consequence, not a cause.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sftjob.report import Outcome
from sftjob.vocabulary import (
    COMPLETION_INDEX_ANNOTATION,
    PERMANENT_EXIT_CODES,
    REASON_FOR_EXIT_CODE,
    SANITY_CONTAINER,
    TRAIN_CONTAINER,
    ConditionType,
    ExitCode,
    Reason,
    memory_hint,
)

IMAGE_PULL_WAITING = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
CONFIG_WAITING = frozenset({"CreateContainerConfigError", "CreateContainerError"})
# What to change after an OOM when the follower does not say what the job already does.
DEFAULT_MEMORY_HINT = memory_hint(False, False)


@dataclass(frozen=True)
class Verdict:
    """A reason and a message that tells the user what to change."""

    reason: str
    message: str
    condition: str = ConditionType.TRAINING.value  # the stage it belongs to


# -- small readers -----------------------------------------------------------------------------

def true_condition(obj: Mapping[str, Any] | None, ctype: str) -> Mapping[str, Any] | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype and cond.get("status") == "True":
            return cond
    return None


def container_status(pod: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    status = pod.get("status") or {}
    for key in ("initContainerStatuses", "containerStatuses"):
        for cs in status.get(key) or []:
            if cs.get("name") == name:
                return cs
    return None


def has_sanity_container(pod_spec_holder: Mapping[str, Any] | None) -> bool:
    spec = (pod_spec_holder or {}).get("spec") or {}
    if any(c.get("name") == SANITY_CONTAINER for c in spec.get("initContainers") or []):
        return True
    return any(cs.get("name") == SANITY_CONTAINER for cs in ((pod_spec_holder or {}).get("status") or {}).get("initContainerStatuses") or [])


def leader_pods(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The pods that report: node 0's in a multi-node (Indexed) Job, every pod otherwise.

    Only node 0 runs the sanity check, serves progress and writes the run's
    outcome; the other nodes' pods matter for failures and scheduling only.
    """
    indexed = [p for p in pods if ((p.get("metadata") or {}).get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION) is not None]
    if not indexed:
        return list(pods)
    return [p for p in indexed if p["metadata"]["annotations"][COMPLETION_INDEX_ANNOTATION] == "0"]


def pod_order(pod: Mapping[str, Any]) -> tuple[str, str]:
    meta = pod.get("metadata") or {}
    return (meta.get("creationTimestamp") or "", meta.get("name") or "")


def pod_finished(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def terminated_state(cs: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if not cs:
        return None
    return (cs.get("state") or {}).get("terminated") or None


def outcome_of(cs: Mapping[str, Any] | None) -> Outcome | None:
    term = terminated_state(cs) or (cs or {}).get("lastState", {}).get("terminated")
    return Outcome.from_termination_message((term or {}).get("message")) if term else None


def _typed_reason(reason: str | None) -> str | None:
    """The runtime's reason if it is one of ours; None for anything else."""
    try:
        return Reason(reason).value if reason else None
    except ValueError:
        return None


def dump(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_none=True)


# -- explaining what happened to a pod ---------------------------------------------------------


def _stage_of(container: str) -> str:
    return ConditionType.SANITY_CHECKED.value if container == SANITY_CONTAINER else ConditionType.TRAINING.value


def explain_termination(pod: Mapping[str, Any], container: str, hint: str = DEFAULT_MEMORY_HINT) -> Verdict | None:
    """Why a container stopped with a non-zero exit code (None if it did not); `hint` says how to fit in memory."""
    term = terminated_state(container_status(pod, container))
    if not term or term.get("exitCode", 0) == 0:
        return None
    pod_name = (pod.get("metadata") or {}).get("name", "?")
    stage = _stage_of(container)
    what = "sanity check" if container == SANITY_CONTAINER else "training"
    if term.get("reason") == "OOMKilled":
        return Verdict(
            Reason.OUT_OF_MEMORY.value,
            f"The {what} container ran out of memory (OOMKilled). To fit, {hint}; "
            "or raise spec.resources.memory.",
            stage,
        )
    outcome = Outcome.from_termination_message(term.get("message"))
    if outcome is not None and outcome.reason:
        reason = _typed_reason(outcome.reason)
        message = outcome.message or f"The {what} failed ({outcome.reason})."
        if reason == Reason.OUT_OF_MEMORY.value and "perDeviceBatchSize" not in message:
            message = f"{message.rstrip('.')}. To fit, {hint}."
        if reason is None:
            reason, message = Reason.INTERNAL_ERROR.value, f"{outcome.reason}: {message}"
        return Verdict(reason, message, stage)
    code = term.get("exitCode")
    logs = f"see `kubectl logs {pod_name} -c {container}`"
    try:
        exit_code = ExitCode(code)
    except ValueError:
        signal = f" (signal {code - 128})" if isinstance(code, int) and code > 128 else ""
        return Verdict(
            Reason.INTERNAL_ERROR.value,
            f"The {what} container exited with code {code}{signal} ({term.get('reason') or 'no reason given'}) "
            f"and left no report; {logs}.",
            stage,
        )
    reason = REASON_FOR_EXIT_CODE.get(exit_code, Reason.INTERNAL_ERROR).value
    return Verdict(reason, f"The {what} container exited with code {code} ({exit_code.name}) and left no report; {logs}.", stage)


def disruption(pod: Mapping[str, Any]) -> Verdict | None:
    cond = true_condition(pod, "DisruptionTarget")
    status = pod.get("status") or {}
    if cond is None and status.get("reason") != "Evicted":
        return None
    why = (cond or {}).get("reason") or status.get("reason")
    detail = (cond or {}).get("message") or status.get("message") or ""
    return Verdict(
        Reason.PREEMPTED.value,
        f"The pod was disrupted ({why}{': ' + detail if detail else ''}). Disruptions do not count against "
        "spec.backoffLimit; training resumes from the latest checkpoint in the next pod. To avoid them, set "
        "spec.resources.priorityClassName to a higher priority class.",
    )


def stuck_waiting(pod: Mapping[str, Any]) -> Verdict | None:
    """A container stuck before it could start: image pull or configuration (missing Secret)."""
    for container in (SANITY_CONTAINER, TRAIN_CONTAINER):
        waiting = ((container_status(pod, container) or {}).get("state") or {}).get("waiting") or {}
        reason, detail = waiting.get("reason"), waiting.get("message") or ""
        if reason in IMAGE_PULL_WAITING:
            return Verdict(
                Reason.IMAGE_PULL.value,
                f"Cannot pull the image of the {container} container ({reason}: {detail}). Check spec.image "
                "(or the operator's default image), the registry's reachability and the pull secrets of "
                "spec.serviceAccountName.",
                _stage_of(container),
            )
        if reason in CONFIG_WAITING:
            return Verdict(
                Reason.INVALID_SPEC.value,
                f"The {container} container cannot start ({reason}: {detail}). Check that the Secrets named in "
                "spec (model.tokenSecretRef, output.credentialsSecretRef, monitoring.wandb.apiKeySecretRef) "
                "exist in this namespace with the given keys.",
                _stage_of(container),
            )
    return None


def unschedulable(pod: Mapping[str, Any]) -> Verdict | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            return Verdict(
                Reason.UNSCHEDULABLE.value,
                f"The pod cannot be scheduled: {(cond.get('message') or 'no node fits').rstrip('. ')}. Lower spec.resources "
                "(gpus, cpu, memory), fix spec.resources.nodeSelector/tolerations, or add capacity.",
                ConditionType.SANITY_CHECKED.value if has_sanity_container(pod) else ConditionType.TRAINING.value,
            )
    return None


def permanent_failure(pod: Mapping[str, Any]) -> bool:
    """Whether a container exited with a code the Job's podFailurePolicy fails the Job on."""
    codes = {int(c) for c in PERMANENT_EXIT_CODES}
    return any((terminated_state(container_status(pod, name)) or {}).get("exitCode") in codes for name in (SANITY_CONTAINER, TRAIN_CONTAINER))


def explain_pod_failure(pod: Mapping[str, Any], hint: str = DEFAULT_MEMORY_HINT) -> Verdict | None:
    """The most specific explanation of why a pod failed, or None.

    A disruption comes first: a preempted or drained pod's containers exit
    on the SIGTERM it brought (143), which is its consequence, not a cause.
    """
    return (
        disruption(pod)
        or explain_termination(pod, SANITY_CONTAINER, hint)
        or explain_termination(pod, TRAIN_CONTAINER, hint)
        or stuck_waiting(pod)
    )


def explain_job_failure(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], hint: str = DEFAULT_MEMORY_HINT) -> Verdict:
    """Why a failed Job failed: its deadline, then the pods' own story, then the Job's reason."""
    cond = true_condition(job, "Failed") or true_condition(job, "FailureTarget") or {}
    job_reason = cond.get("reason") or ""
    spec = job.get("spec") or {}
    if job_reason == "DeadlineExceeded":
        return Verdict(
            Reason.DEADLINE_EXCEEDED.value,
            f"The job ran longer than spec.activeDeadlineSeconds ({spec.get('activeDeadlineSeconds', '?')} s) and was "
            "stopped. Raise spec.activeDeadlineSeconds, or shorten the run (spec.training.maxSteps or epochs).",
        )
    for pod in sorted(pods, key=pod_order, reverse=True):
        verdict = explain_pod_failure(pod, hint)
        if verdict is not None:
            return verdict
    failed = (job.get("status") or {}).get("failed", 0)
    if job_reason == "BackoffLimitExceeded":
        return Verdict(
            Reason.BACKOFF_LIMIT_EXCEEDED.value,
            f"The training pod failed {failed} time(s), more than spec.backoffLimit ({spec.get('backoffLimit', '?')}) "
            "allows. See the pods' logs (`kubectl logs -l job-name="
            f"{(job.get('metadata') or {}).get('name', '?')}`) for the cause.",
        )
    return Verdict(
        Reason.INTERNAL_ERROR.value,
        f"The Job failed ({job_reason or 'no reason given'}: {cond.get('message') or 'no message'}).",
    )
