"""SFTJob status from what the cluster shows: a pure function of (status so far, Job, Pods, progress).

`compute_status` reads the Job the operator created, the Pods the Job
controller made for it, and the runtime's last progress report, and returns
a JSON merge patch for `.status` (empty when nothing changed). It never
talks to the API server, so every outcome is tested with plain dicts.

Where the truth comes from, in order of trust:
1. the Job's own conditions (Complete / Failed and their reasons);
2. the runtime's `Outcome` in a container's termination message (what our
   code knew when it exited: a sanity failure, the best checkpoint);
3. what the kubelet says about the containers (OOMKilled, image pull, ...);
4. the scheduler's PodScheduled condition and disruption conditions.

Conditions follow Kubernetes conventions: `lastTransitionTime` moves only
when a condition's `status` changes; reasons are `sftjob.vocabulary.Reason`
values; messages say what to change.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sftjob.report import Outcome, Progress
from sftjob.vocabulary import (
    KUEUE_QUEUE_LABEL,
    PERMANENT_EXIT_CODES,
    REASON_FOR_EXIT_CODE,
    SANITY_CONTAINER,
    TERMINAL_PHASE_NAMES,
    TRAIN_CONTAINER,
    ConditionType,
    ExitCode,
    Phase,
    Reason,
    memory_hint,
)

from sftjob_operator.progress import progress_status

# Condition set when a spec edit reaches an SFTJob whose Job already exists
# (the CRD forbids such edits; this reports the ones that slip through).
SPEC_IGNORED_CONDITION = ConditionType.SPEC_CHANGE_IGNORED.value
SPEC_IGNORED_REASON = Reason.JOB_ALREADY_CREATED.value

IMAGE_PULL_WAITING = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
CONFIG_WAITING = frozenset({"CreateContainerConfigError", "CreateContainerError"})
RUNNING_PHASES = frozenset({Phase.SANITY_CHECKING.value, Phase.TRAINING.value, Phase.EXPORTING.value})
# Fields of .status this module owns; everything else (jobName, observedGeneration) is left alone.
_MANAGED = ("phase", "conditions", "progress", "sanityCheck", "bestCheckpoint", "resolved", "startTime", "completionTime")
# What to change after an OOM when the follower does not say what the job already does.
_MEMORY_HINT = memory_hint(False, False)


@dataclass(frozen=True)
class Verdict:
    """A reason and a message that tells the user what to change."""

    reason: str
    message: str
    condition: str = ConditionType.TRAINING.value  # the stage it belongs to


# -- small readers -----------------------------------------------------------------------------


def now_rfc3339(now: datetime.datetime | None = None) -> str:
    """Kubernetes' time format (UTC, seconds)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _true_condition(obj: Mapping[str, Any] | None, ctype: str) -> Mapping[str, Any] | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype and cond.get("status") == "True":
            return cond
    return None


def _container_status(pod: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    status = pod.get("status") or {}
    for key in ("initContainerStatuses", "containerStatuses"):
        for cs in status.get(key) or []:
            if cs.get("name") == name:
                return cs
    return None


def _has_sanity_container(pod_spec_holder: Mapping[str, Any] | None) -> bool:
    spec = (pod_spec_holder or {}).get("spec") or {}
    if any(c.get("name") == SANITY_CONTAINER for c in spec.get("initContainers") or []):
        return True
    return any(cs.get("name") == SANITY_CONTAINER for cs in ((pod_spec_holder or {}).get("status") or {}).get("initContainerStatuses") or [])


def _pod_order(pod: Mapping[str, Any]) -> tuple[str, str]:
    meta = pod.get("metadata") or {}
    return (meta.get("creationTimestamp") or "", meta.get("name") or "")


def _finished(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _terminated(cs: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if not cs:
        return None
    return (cs.get("state") or {}).get("terminated") or None


def _outcome(cs: Mapping[str, Any] | None) -> Outcome | None:
    term = _terminated(cs) or (cs or {}).get("lastState", {}).get("terminated")
    return Outcome.from_termination_message((term or {}).get("message")) if term else None


def _typed_reason(reason: str | None) -> str | None:
    """The runtime's reason if it is one of ours; None for anything else."""
    try:
        return Reason(reason).value if reason else None
    except ValueError:
        return None


def _dump(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_none=True)


# -- explaining what happened to a pod ---------------------------------------------------------


def _stage_of(container: str) -> str:
    return ConditionType.SANITY_CHECKED.value if container == SANITY_CONTAINER else ConditionType.TRAINING.value


def explain_termination(pod: Mapping[str, Any], container: str, hint: str = _MEMORY_HINT) -> Verdict | None:
    """Why a container stopped with a non-zero exit code (None if it did not); `hint` says how to fit in memory."""
    term = _terminated(_container_status(pod, container))
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


def _disruption(pod: Mapping[str, Any]) -> Verdict | None:
    cond = _true_condition(pod, "DisruptionTarget")
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


def _waiting(pod: Mapping[str, Any]) -> Verdict | None:
    """A container stuck before it could start: image pull or configuration (missing Secret)."""
    for container in (SANITY_CONTAINER, TRAIN_CONTAINER):
        waiting = ((_container_status(pod, container) or {}).get("state") or {}).get("waiting") or {}
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


def _unschedulable(pod: Mapping[str, Any]) -> Verdict | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            return Verdict(
                Reason.UNSCHEDULABLE.value,
                f"The pod cannot be scheduled: {cond.get('message') or 'no node fits'}. Lower spec.resources "
                "(gpus, cpu, memory), fix spec.resources.nodeSelector/tolerations, or add capacity.",
                ConditionType.SANITY_CHECKED.value if _has_sanity_container(pod) else ConditionType.TRAINING.value,
            )
    return None


def _permanent_failure(pod: Mapping[str, Any]) -> bool:
    """Whether a container exited with a code the Job's podFailurePolicy fails the Job on."""
    codes = {int(c) for c in PERMANENT_EXIT_CODES}
    return any((_terminated(_container_status(pod, name)) or {}).get("exitCode") in codes for name in (SANITY_CONTAINER, TRAIN_CONTAINER))


def explain_pod_failure(pod: Mapping[str, Any], hint: str = _MEMORY_HINT) -> Verdict | None:
    """The most specific explanation of why a pod failed, or None.

    A disruption comes first: a preempted or drained pod's containers exit
    on the SIGTERM it brought (143), which is its consequence, not a cause.
    """
    return (
        _disruption(pod)
        or explain_termination(pod, SANITY_CONTAINER, hint)
        or explain_termination(pod, TRAIN_CONTAINER, hint)
        or _waiting(pod)
    )


def explain_job_failure(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], hint: str = _MEMORY_HINT) -> Verdict:
    """Why a failed Job failed: its deadline, then the pods' own story, then the Job's reason."""
    cond = _true_condition(job, "Failed") or _true_condition(job, "FailureTarget") or {}
    job_reason = cond.get("reason") or ""
    spec = job.get("spec") or {}
    if job_reason == "DeadlineExceeded":
        return Verdict(
            Reason.DEADLINE_EXCEEDED.value,
            f"The job ran longer than spec.activeDeadlineSeconds ({spec.get('activeDeadlineSeconds', '?')} s) and was "
            "stopped. Raise spec.activeDeadlineSeconds, or shorten the run (spec.training.maxSteps or epochs).",
        )
    for pod in sorted(pods, key=_pod_order, reverse=True):
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


# -- conditions --------------------------------------------------------------------------------


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    ctype: str,
    status: str,
    reason: str,
    message: str,
    now: str,
) -> list[dict[str, Any]]:
    """A copy of `conditions` with one condition set; lastTransitionTime moves only when status does."""
    out = [dict(c) for c in conditions]
    for cond in out:
        if cond.get("type") == ctype:
            if cond.get("status") != status or not cond.get("lastTransitionTime"):
                cond["lastTransitionTime"] = now
            cond.update(status=status, reason=reason, message=message)
            return out
    out.append({"type": ctype, "status": status, "reason": reason, "message": message, "lastTransitionTime": now})
    return out


def condition(status: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    """The condition of a type in an SFTJob status, or None."""
    for cond in status.get("conditions") or []:
        if cond.get("type") == ctype:
            return cond
    return None


# -- merge patches -----------------------------------------------------------------------------


def merge_diff(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`; {} when equal."""
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return new
    patch: dict[str, Any] = {}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_diff(old[key], value) if isinstance(value, Mapping) and isinstance(old[key], Mapping) else value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """Apply a JSON merge patch to a copy of `target`."""
    if not isinstance(patch, Mapping):
        return patch
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = apply_merge_patch(out.get(key), value)
    return out


# -- the status ------------------------------------------------------------------------------


def _succeeded(desired: dict[str, Any], pods: Sequence[Mapping[str, Any]], now: str) -> None:
    ordered = sorted(pods, key=_pod_order, reverse=True)
    done = next((p for p in ordered if (p.get("status") or {}).get("phase") == "Succeeded"), ordered[0] if ordered else None)
    outcome = _outcome(_container_status(done, TRAIN_CONTAINER)) if done else None
    conds = desired["conditions"]
    if outcome is not None and outcome.bestCheckpoint is not None:
        best = outcome.bestCheckpoint
        desired["bestCheckpoint"] = _dump(best)
        where = f"step {best.step}, eval loss {best.evalLoss:.4g}" if best.step is not None and best.evalLoss is not None else "best"
        message = f"Training finished; the checkpoint ({where}) is at {best.uri}."
        conds = set_condition(conds, ConditionType.EXPORTED.value, "True", Reason.COMPLETED.value, f"Exported to {best.uri}.", now)
    elif outcome is not None:
        message = outcome.message or "Training finished."
    else:
        message = (
            "The Job completed, but the runtime left no report in its termination message; "
            "see the train container's logs for where the checkpoint went."
        )
    if outcome is not None and outcome.resolved:
        desired["resolved"] = outcome.resolved
    if condition({"conditions": conds}, ConditionType.SANITY_CHECKED.value) is not None:
        sanity = condition({"conditions": conds}, ConditionType.SANITY_CHECKED.value)
        if sanity.get("status") != "True":
            conds = set_condition(conds, ConditionType.SANITY_CHECKED.value, "True", Reason.PASSED.value, "The sanity check passed.", now)
    conds = set_condition(conds, ConditionType.TRAINING.value, "False", Reason.COMPLETED.value, "Training finished.", now)
    conds = set_condition(conds, ConditionType.SUCCEEDED.value, "True", Reason.COMPLETED.value, message, now)
    desired["conditions"] = conds
    desired["phase"] = Phase.SUCCEEDED.value


def _failed(desired: dict[str, Any], verdict: Verdict, now: str) -> None:
    conds = desired["conditions"]
    conds = set_condition(conds, verdict.condition, "False", verdict.reason, verdict.message, now)
    conds = set_condition(conds, ConditionType.FAILED.value, "True", verdict.reason, verdict.message, now)
    desired["conditions"] = conds
    desired["phase"] = Phase.FAILED.value


def _sanity_report(desired: dict[str, Any], pods: Sequence[Mapping[str, Any]], now: str) -> None:
    """status.sanityCheck and the SanityChecked condition from the newest init container report."""
    for pod in sorted(pods, key=_pod_order, reverse=True):
        cs = _container_status(pod, SANITY_CONTAINER)
        outcome = _outcome(cs)
        if outcome is not None and outcome.sanity is not None:
            desired["sanityCheck"] = _dump(outcome.sanity)
            if outcome.resolved and "resolved" not in desired:
                desired["resolved"] = outcome.resolved
        term = _terminated(cs)
        if term is not None and term.get("exitCode") == 0:
            sanity = outcome.sanity if outcome is not None else None
            if sanity is not None and sanity.initialLoss is not None and sanity.finalLoss is not None:
                msg = f"The sanity check passed: loss {sanity.initialLoss:.4g} -> {sanity.finalLoss:.4g}."
            else:
                msg = "The sanity check passed."
            desired["conditions"] = set_condition(
                desired["conditions"], ConditionType.SANITY_CHECKED.value, "True", Reason.PASSED.value, msg, now
            )
        if cs is not None:
            return


def _running(desired: dict[str, Any], job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], progress: Progress | None,
             now: str, hint: str) -> None:
    """Phase and conditions of a Job that is neither finished nor suspended."""
    conds = desired["conditions"]
    job_name = (job.get("metadata") or {}).get("name", "?")
    ordered = sorted(pods, key=_pod_order, reverse=True)
    live = next((p for p in ordered if not _finished(p) and not (p.get("metadata") or {}).get("deletionTimestamp")), None)
    first_stage = ConditionType.SANITY_CHECKED.value if _has_sanity_container(job.get("spec", {}).get("template")) or (
        live is not None and _has_sanity_container(live)
    ) else ConditionType.TRAINING.value

    if live is None:
        if any((p.get("status") or {}).get("phase") == "Succeeded" for p in ordered):
            # The pod finished well; the Job controller has not marked the Job Complete yet.
            desired["phase"] = desired.get("phase") if desired.get("phase") in RUNNING_PHASES else Phase.TRAINING.value
            return
        failed_pods = [p for p in ordered if (p.get("status") or {}).get("phase") == "Failed"]
        previous = next((v for v in (explain_pod_failure(p, hint) for p in failed_pods) if v is not None), None)
        desired["phase"] = Phase.PENDING.value
        if previous is not None:
            if previous.reason == Reason.PREEMPTED.value:
                # Its message already says disruptions do not count; no failure count beside it.
                note = "Waiting for the Job's replacement pod."
            elif _permanent_failure(failed_pods[0]):
                # podFailurePolicy fails the Job on these exit codes; its Failed condition follows.
                note = "A retry cannot help; the Job is failing."
            else:
                # Disrupted pods are not failures (podFailurePolicy ignores them), so count only the others.
                counted = sum(1 for p in failed_pods if _disruption(p) is None)
                failures = max((job.get("status") or {}).get("failed", 0), counted)
                note = f"The Job retries the pod ({failures} failure(s) so far, spec.backoffLimit allows " \
                       f"{(job.get('spec') or {}).get('backoffLimit', '?')})."
            conds = set_condition(conds, previous.condition, "Unknown", previous.reason, f"{previous.message} {note}", now)
        elif condition(desired, first_stage) is None or condition(desired, first_stage).get("reason") == Reason.QUEUED.value:
            conds = set_condition(
                conds, first_stage, "Unknown", Reason.CREATED.value,
                f"Job {job_name} created; waiting for its pod to be scheduled.", now,
            )
        desired["conditions"] = conds
        return

    problem = _unschedulable(live) or _waiting(live)
    disrupted = _disruption(live)
    init = _container_status(live, SANITY_CONTAINER)
    main = _container_status(live, TRAIN_CONTAINER)
    main_state = (main or {}).get("state") or {}
    init_state = (init or {}).get("state") or {}

    training = condition({"conditions": conds}, ConditionType.TRAINING.value) or {}
    if disrupted is None and training.get("reason") == Reason.PREEMPTED.value:
        # The disrupted pod is gone and its replacement is here: the preemption is history.
        conds = set_condition(conds, ConditionType.TRAINING.value, "Unknown", Reason.POD_REPLACED.value,
                              "A replacement pod started after the disruption; training resumes from the latest checkpoint.",
                              now)
    if problem is not None:
        desired["phase"] = Phase.PENDING.value
        conds = set_condition(conds, problem.condition, "False", problem.reason, problem.message, now)
    elif disrupted is not None:
        conds = set_condition(conds, ConditionType.TRAINING.value, "Unknown", disrupted.reason, disrupted.message, now)
    elif "running" in main_state:
        exporting = progress is not None and progress.stage == "exporting"
        desired["phase"] = Phase.EXPORTING.value if exporting else Phase.TRAINING.value
        conds = set_condition(conds, ConditionType.TRAINING.value, "True", Reason.RUNNING.value, "The train container is running.", now)
    elif "running" in init_state:
        desired["phase"] = Phase.SANITY_CHECKING.value
        conds = set_condition(
            conds, ConditionType.SANITY_CHECKED.value, "Unknown", Reason.RUNNING.value,
            "The sanity check is running: a few real training steps on a small subset.", now,
        )
    elif desired.get("phase") not in RUNNING_PHASES:
        desired["phase"] = Phase.PENDING.value
    desired["conditions"] = conds


def compute_status(
    current: Mapping[str, Any],
    job: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]] = (),
    progress: Progress | None = None,
    *,
    suspend: bool = False,
    hint: str = _MEMORY_HINT,
    now: datetime.datetime | None = None,
) -> dict[str, Any]:
    """The merge patch for SFTJob `.status` given its Job, the Job's Pods and the latest progress.

    `current` is the status so far; `suspend` is the SFTJob's spec.suspend;
    `hint` says how to fit in memory (from `memory_hint` for the job's settings).
    Returns {} when nothing changes. A missing Job (not seen yet, or
    deleted after it finished) changes nothing: only evidence moves status.
    """
    if job is None:
        return {}
    stamp = now_rfc3339(now)
    old = {k: current[k] for k in _MANAGED if k in current}
    desired: dict[str, Any] = dict(old)
    desired["conditions"] = [dict(c) for c in current.get("conditions") or []]
    if current.get("phase") in TERMINAL_PHASE_NAMES:
        return {}  # a finished SFTJob stays as it finished

    _sanity_report(desired, pods, stamp)
    job_spec = job.get("spec") or {}
    labels = (job.get("metadata") or {}).get("labels") or {}

    if _true_condition(job, "Complete") or _true_condition(job, "SuccessCriteriaMet"):
        _succeeded(desired, pods, stamp)
    elif _true_condition(job, "Failed") or _true_condition(job, "FailureTarget"):
        verdict = explain_job_failure(job, pods, hint)
        _failed(desired, verdict, stamp)
    elif suspend or job_spec.get("suspend"):
        queued = not suspend and labels.get(KUEUE_QUEUE_LABEL)
        if queued:
            desired["phase"] = Phase.QUEUED.value
            desired["conditions"] = set_condition(
                desired["conditions"],
                ConditionType.SANITY_CHECKED.value if _has_sanity_container(job_spec.get("template")) else ConditionType.TRAINING.value,
                "Unknown", Reason.QUEUED.value,
                f"Waiting for Kueue to admit the job in LocalQueue {labels[KUEUE_QUEUE_LABEL]!r} (spec.queueName).", stamp,
            )
        else:
            desired["phase"] = Phase.SUSPENDED.value
            why = "spec.suspend is true" if suspend else f"the Job {(job.get('metadata') or {}).get('name')} is suspended"
            desired["conditions"] = set_condition(
                desired["conditions"], ConditionType.SUSPENDED.value, "True", Reason.SUSPENDED.value,
                f"Suspended: {why}; the training pod is stopped. Set spec.suspend: false to resume from the latest checkpoint.",
                stamp,
            )
    else:
        if condition(desired, ConditionType.SUSPENDED.value) is not None:
            desired["conditions"] = set_condition(
                desired["conditions"], ConditionType.SUSPENDED.value, "False", Reason.RUNNING.value, "Resumed.", stamp
            )
        _running(desired, job, pods, progress, stamp, hint)

    phase = desired.get("phase")
    job_status = job.get("status") or {}
    if job_status.get("startTime") and "startTime" not in desired:
        desired["startTime"] = job_status["startTime"]
    if phase in TERMINAL_PHASE_NAMES and "completionTime" not in desired:
        desired["completionTime"] = job_status.get("completionTime") or stamp
    shown = progress_status(progress, phase) if progress is not None else None
    if shown is not None:
        desired["progress"] = shown
    if phase in TERMINAL_PHASE_NAMES and isinstance(desired.get("progress"), Mapping):
        # A finished job has no ETA, and a succeeded one is no longer exporting.
        finished = {k: v for k, v in desired["progress"].items() if k not in ("eta", "etaSeconds")}
        if phase == Phase.SUCCEEDED.value and "stage" in finished:
            finished["stage"] = "done"
        desired["progress"] = finished
    if not desired["conditions"]:
        del desired["conditions"]
    return merge_diff(old, desired)


def invalid_spec_status(errors: Sequence[str], generation: int | None, now: datetime.datetime | None = None) -> dict[str, Any]:
    """Status of an SFTJob whose spec failed validation: Failed/InvalidSpec naming each bad field."""
    stamp = now_rfc3339(now)
    shown = "; ".join(errors[:10]) + (f"; and {len(errors) - 10} more" if len(errors) > 10 else "")
    message = f"Invalid spec: {shown}. Fix the field(s) and apply the SFTJob again."
    status: dict[str, Any] = {
        "phase": Phase.FAILED.value,
        "conditions": set_condition([], ConditionType.FAILED.value, "True", Reason.INVALID_SPEC.value, message, stamp),
    }
    if generation is not None:
        status["observedGeneration"] = generation
    return status


def create_refused_status(
    kind: str, name: str, namespace: str | None, code: int, detail: str, generation: int | None, *,
    first_stage: str, retry_seconds: float | None, now: datetime.datetime | None = None,
) -> dict[str, Any]:
    """Status of an SFTJob whose ConfigMap or Job the API server refused although its spec is valid.

    403 (RBAC, ResourceQuota, an admission policy answering Forbidden) may
    pass once the cause is fixed, so the operator retries (`retry_seconds`)
    and the job waits in Pending; 400/422 from admission will not, so the job
    fails. Neither is InvalidSpec: the spec passed validation.
    """
    where = f"namespace {namespace}" if namespace else "this namespace"
    refused = f"The API server refused to create {kind} {name} (HTTP {code}: {detail.rstrip('.')})."
    stamp = now_rfc3339(now)
    if retry_seconds is not None:
        message = (f"{refused} The SFTJob itself is valid: an RBAC rule, a ResourceQuota or an admission policy in {where} "
                   f"forbids the {kind}. Retrying every {retry_seconds:.0f} s; once the cluster admin fixes the cause "
                   "(or quota frees up), the job starts.")
        reason, phase = Reason.CREATE_FORBIDDEN.value, Phase.PENDING.value
        conds = set_condition([], first_stage, "False", reason, message, stamp)
    else:
        message = (f"{refused} The SFTJob's spec is valid, but an admission policy or webhook in {where} rejects the "
                   f"{kind} rendered from it (see `sftjob render`). Ask the cluster admin, or change the SFTJob so that "
                   "it complies and apply it again.")
        reason, phase = Reason.CREATE_REJECTED.value, Phase.FAILED.value
        conds = set_condition([], first_stage, "False", reason, message, stamp)
        conds = set_condition(conds, ConditionType.FAILED.value, "True", reason, message, stamp)
    status: dict[str, Any] = {"phase": phase, "conditions": conds}
    if generation is not None:
        status["observedGeneration"] = generation
    return status


def spec_ignored_status(
    current: Mapping[str, Any], fields: Sequence[str], job_name: str, generation: int | None, now: datetime.datetime | None = None
) -> dict[str, Any]:
    """Merge patch recording that spec edits after the Job exists were not applied."""
    message = (
        f"Changes to {', '.join(fields)} were not applied: Job {job_name} already runs with the spec it was created "
        "with. To train with the new spec, apply it as a new SFTJob (a new metadata.name), or delete and re-create this one."
    )
    conds = set_condition(current.get("conditions") or [], SPEC_IGNORED_CONDITION, "True", SPEC_IGNORED_REASON, message, now_rfc3339(now))
    patch: dict[str, Any] = {"conditions": conds}
    if generation is not None:
        patch["observedGeneration"] = generation
    return patch


def job_lost_status(current: Mapping[str, Any], job_name: str, now: datetime.datetime | None = None) -> dict[str, Any]:
    """Merge patch for an unfinished SFTJob whose Job was deleted (seen, or found missing after a restart)."""
    message = (
        f"Job {job_name} was deleted before it finished (by hand, or by its ttlSecondsAfterFinished while "
        "the operator was down), so the result is unknown. Delete and re-create the SFTJob to run it again."
    )
    stamp = now_rfc3339(now)
    conds = set_condition(current.get("conditions") or [], ConditionType.FAILED.value, "True", Reason.INTERNAL_ERROR.value, message, stamp)
    return {"phase": Phase.FAILED.value, "conditions": conds}
