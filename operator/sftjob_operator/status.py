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
values; messages say what to change. Every status built here ends with the
summary conditions (Ready, Reconciling, Stalled) of `readiness.py`, and the
ones that act on a spec record its generation in `observedGeneration`.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from sftjob.report import Progress
from sftjob.vocabulary import KUEUE_QUEUE_LABEL, SANITY_CONTAINER, TERMINAL_PHASE_NAMES, TRAIN_CONTAINER, ConditionType, Phase, Reason

from sftjob_operator.conditions import apply_merge_patch, condition, merge_diff, now_rfc3339, set_condition
from sftjob_operator.explain import (
    DEFAULT_MEMORY_HINT,
    Verdict,
    container_status,
    disruption,
    dump,
    explain_job_failure,
    explain_pod_failure,
    has_sanity_container,
    leader_pods,
    outcome_of,
    permanent_failure,
    pod_finished,
    pod_order,
    stuck_waiting,
    terminated_state,
    true_condition,
    unschedulable,
)
from sftjob_operator.progress import progress_status
from sftjob_operator.readiness import readiness_conditions, summarized

__all__ = ["apply_merge_patch", "compute_status", "condition", "create_refused_status", "generation_status",
           "invalid_spec_status", "job_lost_status", "merge_diff", "now_rfc3339", "set_condition", "spec_ignored_status"]

SPEC_IGNORED_CONDITION = ConditionType.SPEC_CHANGE_IGNORED.value
SPEC_IGNORED_REASON = Reason.JOB_ALREADY_CREATED.value
RUNNING_PHASES = frozenset({Phase.SANITY_CHECKING.value, Phase.TRAINING.value, Phase.EXPORTING.value})
# Fields of .status compute_status owns; everything else (jobName, observedGeneration) is left alone.
_MANAGED = ("phase", "conditions", "progress", "sanityCheck", "plan", "bestCheckpoint", "resolved", "startTime",
            "completionTime")


# -- the status ------------------------------------------------------------------------------


def _succeeded(desired: dict[str, Any], pods: Sequence[Mapping[str, Any]], now: str) -> None:
    ordered = sorted(pods, key=pod_order, reverse=True)
    done = next((p for p in ordered if (p.get("status") or {}).get("phase") == "Succeeded"), ordered[0] if ordered else None)
    outcome = outcome_of(container_status(done, TRAIN_CONTAINER)) if done else None
    conds = desired["conditions"]
    if outcome is not None and outcome.bestCheckpoint is not None:
        best = outcome.bestCheckpoint
        desired["bestCheckpoint"] = dump(best)
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
    if outcome is not None and outcome.plan is not None and "plan" not in desired:
        desired["plan"] = dump(outcome.plan)  # no sanity check ran: the train container planned
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
    for pod in sorted(pods, key=pod_order, reverse=True):
        cs = container_status(pod, SANITY_CONTAINER)
        outcome = outcome_of(cs)
        if outcome is not None and outcome.plan is not None:
            desired["plan"] = dump(outcome.plan)  # the pre-flight plan made with the job's model and data
        if outcome is not None and outcome.sanity is not None:
            desired["sanityCheck"] = dump(outcome.sanity)
            if outcome.resolved and "resolved" not in desired:
                desired["resolved"] = outcome.resolved
        term = terminated_state(cs)
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
             now: str, hint: str, others: Sequence[Mapping[str, Any]] = ()) -> None:
    """Phase and conditions of a Job that is neither finished nor suspended.

    `pods` are the reporting pods (node 0's); `others` every pod of the Job,
    whose scheduling problems hold up training as much as node 0's own.
    """
    conds = desired["conditions"]
    job_name = (job.get("metadata") or {}).get("name", "?")
    ordered = sorted(pods, key=pod_order, reverse=True)
    live = next((p for p in ordered if not pod_finished(p) and not (p.get("metadata") or {}).get("deletionTimestamp")), None)
    first_stage = ConditionType.SANITY_CHECKED.value if has_sanity_container(job.get("spec", {}).get("template")) or (
        live is not None and has_sanity_container(live)
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
            elif permanent_failure(failed_pods[0]):
                # podFailurePolicy fails the Job on these exit codes; its Failed condition follows.
                note = "A retry cannot help; the Job is failing."
            else:
                # Disrupted pods are not failures (podFailurePolicy ignores them), so count only the others.
                counted = sum(1 for p in failed_pods if disruption(p) is None)
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

    problem = unschedulable(live) or stuck_waiting(live)
    for other in others:
        if problem is not None:
            break
        if other is not live and not pod_finished(other) and not (other.get("metadata") or {}).get("deletionTimestamp"):
            problem = unschedulable(other) or stuck_waiting(other)
    disrupted = disruption(live)
    init = container_status(live, SANITY_CONTAINER)
    main = container_status(live, TRAIN_CONTAINER)
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


def _pod_evidence_pending(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a Job failed by its podFailurePolicy while every pod we know of still looks unfinished.

    The policy fires on a pod's exit code, so that pod has finished: the Job's
    watch event simply overtook the pod's. A finished SFTJob stays as it
    finished, so concluding now would fix a vague reason for good.
    """
    cond = true_condition(job, "Failed") or true_condition(job, "FailureTarget") or {}
    return cond.get("reason") == "PodFailurePolicy" and bool(pods) and not any(pod_finished(p) for p in pods)


def compute_status(
    current: Mapping[str, Any],
    job: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]] = (),
    progress: Progress | None = None,
    *,
    suspend: bool = False,
    hint: str = DEFAULT_MEMORY_HINT,
    generation: int | None = None,
    now: datetime.datetime | None = None,
) -> dict[str, Any]:
    """The merge patch for SFTJob `.status` given its Job, the Job's Pods and the latest progress.

    `current` is the status so far; `suspend` is the SFTJob's spec.suspend;
    `hint` says how to fit in memory (from `memory_hint` for the job's settings);
    `generation` is the metadata.generation the summary conditions answer
    (default: `current`'s observedGeneration, the spec the operator acted on).
    Returns {} when nothing changes. A missing Job (not seen yet, or
    deleted after it finished) changes nothing: only evidence moves status.
    A finished SFTJob stays as it finished; it only gains the summary
    conditions if its status was written before they existed.
    """
    stamp = now_rfc3339(now)
    old = {k: current[k] for k in _MANAGED if k in current}
    desired: dict[str, Any] = dict(old)
    desired["conditions"] = [dict(c) for c in current.get("conditions") or []]
    if generation is None:
        generation = current.get("observedGeneration")
    if current.get("phase") in TERMINAL_PHASE_NAMES:
        desired["conditions"] = readiness_conditions(current["phase"], desired["conditions"], generation, stamp)
        return merge_diff(old, desired)
    if job is None:
        return {}

    # Node 0 reports (the only node of a single-node job); every node's pods count for failures.
    reporting = leader_pods(pods)
    _sanity_report(desired, reporting, stamp)
    job_spec = job.get("spec") or {}
    labels = (job.get("metadata") or {}).get("labels") or {}

    if true_condition(job, "Complete") or true_condition(job, "SuccessCriteriaMet"):
        _succeeded(desired, reporting, stamp)
    elif true_condition(job, "Failed") or true_condition(job, "FailureTarget"):
        # Node 0's own story first: only it writes a report, and the other nodes mostly fail because it did.
        verdict = explain_job_failure(job, reporting, hint) if len(reporting) < len(pods) else None
        if verdict is None or verdict.reason == Reason.INTERNAL_ERROR.value:
            verdict = explain_job_failure(job, pods, hint)
        if verdict.reason == Reason.INTERNAL_ERROR.value and _pod_evidence_pending(job, pods):
            return {}  # the failed pod's own story has not reached this watch yet: its event brings us back
        _failed(desired, verdict, stamp)
    elif suspend or job_spec.get("suspend"):
        queued = not suspend and labels.get(KUEUE_QUEUE_LABEL)
        if queued:
            desired["phase"] = Phase.QUEUED.value
            desired["conditions"] = set_condition(
                desired["conditions"],
                ConditionType.SANITY_CHECKED.value if has_sanity_container(job_spec.get("template")) else ConditionType.TRAINING.value,
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
        _running(desired, job, reporting, progress, stamp, hint, others=pods)

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
    desired["conditions"] = readiness_conditions(phase, desired["conditions"], generation, stamp)
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
    return summarized(status, generation, stamp)


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
    return summarized({"phase": phase, "conditions": conds}, generation, stamp)


def spec_ignored_status(
    current: Mapping[str, Any], fields: Sequence[str], job_name: str, generation: int | None, now: datetime.datetime | None = None
) -> dict[str, Any]:
    """Merge patch recording that spec edits after the Job exists were not applied."""
    message = (
        f"Changes to {', '.join(fields)} were not applied: Job {job_name} already runs with the spec it was created "
        "with. To train with the new spec, apply it as a new SFTJob (a new metadata.name), or delete and re-create this one."
    )
    stamp = now_rfc3339(now)
    conds = set_condition(current.get("conditions") or [], SPEC_IGNORED_CONDITION, "True", SPEC_IGNORED_REASON, message, stamp)
    after = summarized({**current, "conditions": conds}, generation, stamp)
    return {k: after[k] for k in ("conditions", "observedGeneration") if k in after}


def generation_status(current: Mapping[str, Any], generation: int | None, now: datetime.datetime | None = None) -> dict[str, Any]:
    """Merge patch recording that the operator acted on spec `generation` ({} if it was recorded already).

    status.observedGeneration and the summary conditions' observedGeneration move together: kstatus
    reads the one, `kubectl wait` the other, and a stale one keeps either waiting.
    """
    if generation is None:
        return {}
    return merge_diff(dict(current), summarized(current, generation, now_rfc3339(now)))


def job_lost_status(current: Mapping[str, Any], job_name: str, now: datetime.datetime | None = None) -> dict[str, Any]:
    """Merge patch for an unfinished SFTJob whose Job was deleted (seen, or found missing after a restart)."""
    message = (
        f"Job {job_name} was deleted before it finished (by hand, or by its ttlSecondsAfterFinished while "
        "the operator was down), so the result is unknown. Delete and re-create the SFTJob to run it again."
    )
    stamp = now_rfc3339(now)
    conds = set_condition(current.get("conditions") or [], ConditionType.FAILED.value, "True", Reason.INTERNAL_ERROR.value, message, stamp)
    after = summarized({**current, "phase": Phase.FAILED.value, "conditions": conds}, None, stamp)
    return {"phase": after["phase"], "conditions": after["conditions"]}
