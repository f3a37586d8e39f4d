"""SFTJob status from Job, Pods and progress: the pure `compute_status`, one realistic cluster state per outcome.

Each fixture is what the Job controller and the kubelet actually write
(Job conditions, pod phases, container states, termination messages);
each test asserts the phase, the condition reasons and the exact messages
a user reads in `kubectl describe sftjob`.
"""

from __future__ import annotations

import copy
import datetime
import json
from typing import Any

import pytest
from sftjob.report import BestCheckpoint, Outcome, PlanSummary, Progress, SanityResult

from sftjob_operator.explain import leader_pods
from sftjob_operator.progress import format_eta, progress_status, progress_url, running_pod_ip
from sftjob_operator.status import (
    apply_merge_patch,
    compute_status,
    condition,
    invalid_spec_status,
    job_lost_status,
    merge_diff,
    spec_ignored_status,
)

T0 = datetime.datetime(2026, 11, 25, 12, 0, 0, tzinfo=datetime.timezone.utc)
T1 = T0 + datetime.timedelta(minutes=5)
STAMP0, STAMP1 = "2026-11-25T12:00:00Z", "2026-11-25T12:05:00Z"
JOB_UID = "5f0c2d4e-8a51-4a8e-9c55-0b1e3c3b7a10"


# -- fixtures: what the cluster writes ---------------------------------------------------------


def make_job(*, conditions: list[dict] | None = None, suspend: bool = False, labels: dict | None = None,
             sanity: bool = True, failed: int = 0, active: int = 1) -> dict[str, Any]:
    """A batch/v1 Job as the operator renders it and the Job controller updates it."""
    template_spec: dict[str, Any] = {"containers": [{"name": "train"}]}
    if sanity:
        template_spec["initContainers"] = [{"name": "sanity-check"}]
    status: dict[str, Any] = {"startTime": "2026-11-25T11:59:00Z"}
    if active:
        status["active"] = active
    if failed:
        status["failed"] = failed
    if conditions:
        status["conditions"] = conditions
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "llama-sft-v1-sft",
            "namespace": "team-a",
            "uid": JOB_UID,
            "labels": {"sftjob.dev/job-name": "llama-sft-v1", **(labels or {})},
        },
        "spec": {"suspend": suspend, "backoffLimit": 3, "activeDeadlineSeconds": 86400, "template": {"spec": template_spec}},
        "status": status,
    }


def job_condition(ctype: str, reason: str, message: str) -> dict[str, str]:
    return {
        "type": ctype, "status": "True", "reason": reason, "message": message,
        "lastProbeTime": "2026-11-25T12:04:00Z", "lastTransitionTime": "2026-11-25T12:04:00Z",
    }


def waiting(reason: str, message: str = "") -> dict:
    return {"waiting": {"reason": reason, **({"message": message} if message else {})}}


def running() -> dict:
    return {"running": {"startedAt": "2026-11-25T12:01:00Z"}}


def terminated(code: int, reason: str, message: str | None = None) -> dict:
    term = {"exitCode": code, "reason": reason, "startedAt": "2026-11-25T12:01:00Z", "finishedAt": "2026-11-25T12:03:00Z",
            "containerID": "containerd://0a1b2c"}
    if message is not None:
        term["message"] = message
    return {"terminated": term}


def make_pod(*, phase: str = "Running", init: dict | None = None, main: dict | None = None,
             conditions: list[dict] | None = None, name: str = "llama-sft-v1-sft-x7k2p",
             created: str = "2026-11-25T11:59:01Z", pod_ip: str | None = "10.244.1.17",
             status_extra: dict | None = None) -> dict[str, Any]:
    """A Pod of the Job as the kubelet reports it."""
    status: dict[str, Any] = {"phase": phase, "hostIP": "10.0.0.5", "startTime": "2026-11-25T11:59:02Z"}
    if pod_ip:
        status["podIP"] = pod_ip
    status["conditions"] = conditions if conditions is not None else [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-25T11:59:01Z"},
    ]
    if init is not None:
        status["initContainerStatuses"] = [{"name": "sanity-check", "image": "ghcr.io/sftjob/sftjob-runtime:0.1.0",
                                            "ready": False, "restartCount": 0, "state": init}]
    if main is not None:
        status["containerStatuses"] = [{"name": "train", "image": "ghcr.io/sftjob/sftjob-runtime:0.1.0",
                                        "ready": "running" in main, "restartCount": 0, "state": main}]
    status.update(status_extra or {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "creationTimestamp": created,
            "labels": {"sftjob.dev/job-name": "llama-sft-v1", "batch.kubernetes.io/job-name": "llama-sft-v1-sft"},
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "llama-sft-v1-sft", "uid": JOB_UID,
                                 "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": {"initContainers": [{"name": "sanity-check"}], "containers": [{"name": "train"}]},
        "status": status,
    }


CREATED_MESSAGE = "Job llama-sft-v1-sft created; waiting for its pod to be scheduled."
PENDING_STATUS = {
    "phase": "Pending",
    "jobName": "llama-sft-v1-sft",
    "observedGeneration": 1,
    "conditions": [
        {"type": "SanityChecked", "status": "Unknown", "reason": "JobCreated", "message": CREATED_MESSAGE,
         "lastTransitionTime": STAMP0},
        # The summary GitOps tools read (readiness.py), for generation 1.
        {"type": "Ready", "status": "False", "reason": "Pending", "message": f"Pending: {CREATED_MESSAGE}",
         "lastTransitionTime": STAMP0, "observedGeneration": 1},
        {"type": "Reconciling", "status": "True", "reason": "JobCreated", "message": CREATED_MESSAGE,
         "lastTransitionTime": STAMP0, "observedGeneration": 1},
        {"type": "Stalled", "status": "False", "reason": "Pending", "message": "Not stalled: the job is Pending.",
         "lastTransitionTime": STAMP0, "observedGeneration": 1},
    ],
}

SANITY_PASSED = Outcome(
    ok=True,
    sanity=SanityResult(passed=True, initialLoss=2.31, finalLoss=1.12, rows=64, maskedRows=0, truncatedRows=2,
                        sample="<|im_start|>assistant\n{\"answer\": 4}<|im_end|>"),
    resolved={"learningRate": 2e-5, "gradientAccumulationSteps": 8, "effectiveBatchSize": 32},
)


def _status_schema() -> dict:
    """The CRD's status schema as plain JSON Schema (Kubernetes extensions dropped)."""
    from pathlib import Path

    import yaml

    crd = yaml.safe_load((Path(__file__).resolve().parents[1] / "crds" / "sftjob.dev_sftjobs.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]

    def plain(node):
        if isinstance(node, dict):
            if node.get("x-kubernetes-preserve-unknown-fields"):
                return {}
            out = {k: plain(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
            if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
                out["additionalProperties"] = False  # what the API server would prune, the test rejects
            return out
        if isinstance(node, list):
            return [plain(v) for v in node]
        return node

    return plain(schema)


STATUS_SCHEMA = _status_schema()


def assert_fits_crd(status: dict) -> None:
    """Every status the operator writes is admitted by the CRD: nothing pruned, no enum violated."""
    import jsonschema

    jsonschema.validate(status, STATUS_SCHEMA)


def step(current: dict, job: dict | None, pods: list[dict] = (), progress: Progress | None = None,
         *, suspend: bool = False, now: datetime.datetime = T1, hint: str | None = None,
         generation: int | None = None) -> tuple[dict, dict]:
    """compute_status, and the status after applying its patch (checked against the CRD's status schema)."""
    extra = {"hint": hint} if hint is not None else {}
    patch = compute_status(current, job, list(pods), progress, suspend=suspend, now=now, generation=generation, **extra)
    after = apply_merge_patch(current, patch)
    assert_fits_crd(after)
    return patch, after


def cond(status: dict, ctype: str) -> dict:
    found = condition(status, ctype)
    assert found is not None, f"no {ctype} condition in {status.get('conditions')}"
    return found


# -- before the pod runs -----------------------------------------------------------------------


def test_new_job_without_pods_is_pending_with_a_created_condition():
    patch, status = step({}, make_job(), now=T0, generation=1)
    assert patch == {"phase": "Pending", "conditions": PENDING_STATUS["conditions"], "startTime": "2026-11-25T11:59:00Z"}
    assert status == patch


def test_without_sanity_check_the_first_stage_is_training():
    _, status = step({}, make_job(sanity=False), now=T0)
    assert [c["type"] for c in status["conditions"]] == ["Training", "Ready", "Reconciling", "Stalled"]
    assert cond(status, "Training")["reason"] == "JobCreated"


def test_kueue_suspended_job_is_queued():
    job = make_job(suspend=True, labels={"kueue.x-k8s.io/queue-name": "gpu-queue"}, active=0)
    _, status = step({}, job)
    assert status["phase"] == "Queued"
    c = cond(status, "SanityChecked")
    assert (c["status"], c["reason"]) == ("Unknown", "WaitingForQuota")
    assert c["message"] == "Waiting for Kueue to admit the job in LocalQueue 'gpu-queue' (spec.queueName)."


def test_admitted_job_leaves_queued_for_pending():
    queued_job = make_job(suspend=True, labels={"kueue.x-k8s.io/queue-name": "gpu-queue"}, active=0)
    _, queued = step({}, queued_job)
    admitted = make_job(labels={"kueue.x-k8s.io/queue-name": "gpu-queue"})
    _, status = step(queued, admitted)
    assert status["phase"] == "Pending"
    assert cond(status, "SanityChecked")["reason"] == "JobCreated"


def test_suspend_then_resume():
    _, suspended = step(PENDING_STATUS, make_job(suspend=True, active=0), suspend=True, now=T1)
    assert suspended["phase"] == "Suspended"
    c = cond(suspended, "Suspended")
    assert (c["status"], c["reason"], c["lastTransitionTime"]) == ("True", "Suspended", STAMP1)
    assert c["message"] == (
        "Suspended: spec.suspend is true; the training pod is stopped. "
        "Set spec.suspend: false to resume from the latest checkpoint."
    )
    later = T1 + datetime.timedelta(minutes=1)
    _, resumed = step(suspended, make_job(), [make_pod(init=running(), main=waiting("PodInitializing"))], now=later)
    assert resumed["phase"] == "SanityChecking"
    c = cond(resumed, "Suspended")
    assert (c["status"], c["message"], c["lastTransitionTime"]) == ("False", "Resumed.", "2026-11-25T12:06:00Z")


def test_unschedulable_pod_names_the_scheduler_message_and_what_to_change():
    pod = make_pod(phase="Pending", pod_ip=None, conditions=[{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
        "lastTransitionTime": "2026-11-25T11:59:01Z",
    }])
    _, status = step(PENDING_STATUS, make_job(), [pod])
    assert status["phase"] == "Pending"
    c = cond(status, "SanityChecked")
    assert (c["status"], c["reason"]) == ("False", "Unschedulable")
    assert c["message"] == (
        "The pod cannot be scheduled: 0/4 nodes are available: 4 Insufficient nvidia.com/gpu. Lower spec.resources "
        "(gpus, cpu, memory), fix spec.resources.nodeSelector/tolerations, or add capacity."
    )
    assert c["lastTransitionTime"] == STAMP1  # Unknown -> False is a transition


@pytest.mark.parametrize("reason", ["ErrImagePull", "ImagePullBackOff"])
def test_image_pull_failure(reason):
    detail = 'Back-off pulling image "ghcr.io/acme/trainer:v9"'
    pod = make_pod(phase="Pending", init=waiting(reason, detail), main=waiting("PodInitializing"))
    _, status = step(PENDING_STATUS, make_job(), [pod])
    assert status["phase"] == "Pending"
    c = cond(status, "SanityChecked")
    assert (c["status"], c["reason"]) == ("False", "ImagePull")
    assert c["message"] == (
        f"Cannot pull the image of the sanity-check container ({reason}: {detail}). Check spec.image (or the "
        "operator's default image), the registry's reachability and the pull secrets of spec.serviceAccountName."
    )


def test_missing_secret_is_reported_as_invalid_spec_while_pending():
    detail = 'secret "hf-token" not found'
    pod = make_pod(phase="Pending", init=waiting("CreateContainerConfigError", detail), main=waiting("PodInitializing"))
    _, status = step(PENDING_STATUS, make_job(), [pod])
    assert status["phase"] == "Pending"
    c = cond(status, "SanityChecked")
    assert (c["status"], c["reason"]) == ("False", "InvalidSpec")
    assert c["message"].startswith(f"The sanity-check container cannot start (CreateContainerConfigError: {detail}). ")
    assert "model.tokenSecretRef" in c["message"]


# -- running -----------------------------------------------------------------------------------


def test_init_container_running_is_sanity_checking():
    pod = make_pod(init=running(), main=waiting("PodInitializing"), phase="Pending")
    _, status = step(PENDING_STATUS, make_job(), [pod])
    assert status["phase"] == "SanityChecking"
    c = cond(status, "SanityChecked")
    assert (c["status"], c["reason"]) == ("Unknown", "Running")
    assert c["message"] == "The sanity check is running: a few real training steps on a small subset."
    assert c["lastTransitionTime"] == STAMP0  # Unknown stayed Unknown


def test_training_after_a_passed_sanity_check_with_live_progress():
    pod = make_pod(init=terminated(0, "Completed", SANITY_PASSED.to_termination_message()), main=running())
    progress = Progress(stage="training", step=120, totalSteps=900, epoch=0.4, loss=1.2345678, evalLoss=1.31,
                        learningRate=1.9e-5, gradNorm=0.87, tokensPerSecond=15234.5, etaSeconds=3725)
    _, status = step(PENDING_STATUS, make_job(), [pod], progress)
    assert status["phase"] == "Training"
    assert status["sanityCheck"] == {
        "passed": True, "initialLoss": 2.31, "finalLoss": 1.12, "rows": 64, "maskedRows": 0, "truncatedRows": 2,
        "sample": "<|im_start|>assistant\n{\"answer\": 4}<|im_end|>",
    }
    assert status["resolved"] == {"learningRate": 2e-5, "gradientAccumulationSteps": 8, "effectiveBatchSize": 32}
    sanity = cond(status, "SanityChecked")
    assert (sanity["status"], sanity["reason"]) == ("True", "Passed")
    assert sanity["message"] == "The sanity check passed: loss 2.31 -> 1.12."
    training = cond(status, "Training")
    assert (training["status"], training["reason"], training["message"]) == ("True", "Running", "The train container is running.")
    assert status["progress"] == {
        "stage": "training", "step": 120, "totalSteps": 900, "epoch": 0.4, "loss": 1.23457, "evalLoss": 1.31,
        "learningRate": 1.9e-5, "gradNorm": 0.87, "tokensPerSecond": 15234.5, "etaSeconds": 3725, "eta": "1h 02m",
    }


def test_same_inputs_twice_change_nothing():
    pod = make_pod(init=terminated(0, "Completed", SANITY_PASSED.to_termination_message()), main=running())
    progress = Progress(stage="training", step=5, totalSteps=50, loss=2.0)
    _, status = step(PENDING_STATUS, make_job(), [pod], progress)
    patch, _ = step(status, make_job(), [pod], progress, now=T1 + datetime.timedelta(hours=1))
    assert patch == {}


def test_progress_patch_carries_only_what_moved():
    pod = make_pod(init=terminated(0, "Completed", SANITY_PASSED.to_termination_message()), main=running())
    _, status = step(PENDING_STATUS, make_job(), [pod], Progress(stage="training", step=5, totalSteps=50, loss=2.0, etaSeconds=90))
    patch, _ = step(status, make_job(), [pod], Progress(stage="training", step=6, totalSteps=50, loss=1.9))
    assert patch == {"progress": {"step": 6, "loss": 1.9, "etaSeconds": None, "eta": None}}


def test_exporting_stage_is_the_exporting_phase():
    pod = make_pod(init=terminated(0, "Completed", SANITY_PASSED.to_termination_message()), main=running())
    _, status = step(PENDING_STATUS, make_job(), [pod], Progress(stage="exporting", step=900, totalSteps=900))
    assert status["phase"] == "Exporting"
    assert status["progress"]["stage"] == "exporting"


def test_sanity_progress_is_not_shown_as_training_progress():
    pod = make_pod(init=terminated(0, "Completed", SANITY_PASSED.to_termination_message()), main=running())
    _, status = step(PENDING_STATUS, make_job(), [pod], Progress(stage="sanity", step=8, totalSteps=10))
    assert status["phase"] == "Training"
    assert "progress" not in status


def test_preemption_while_running_is_reported_and_retried():
    pod = make_pod(main=running(), init=terminated(0, "Completed"), conditions=[
        {"type": "PodScheduled", "status": "True"},
        {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
         "message": "team-b/serve-7d9 preempted this pod"},
    ])
    training = {**PENDING_STATUS, "phase": "Training"}
    _, status = step(training, make_job(), [pod])
    assert status["phase"] == "Training"
    c = cond(status, "Training")
    assert (c["status"], c["reason"]) == ("Unknown", "Preempted")
    assert c["message"] == (
        "The pod was disrupted (PreemptionByScheduler: team-b/serve-7d9 preempted this pod). Disruptions do not count "
        "against spec.backoffLimit; training resumes from the latest checkpoint in the next pod. To avoid them, set "
        "spec.resources.priorityClassName to a higher priority class."
    )


DISRUPTED = [{"type": "PodScheduled", "status": "True"},
             {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler", "message": "preempted"}]


def test_a_disrupted_pod_is_not_counted_as_a_failure():
    gone = make_pod(phase="Failed", init=terminated(0, "Completed"), main=terminated(143, "Error"), conditions=DISRUPTED)
    # podFailurePolicy ignores the disruption: the Job's failed count stays 0.
    _, status = step({**PENDING_STATUS, "phase": "Training"}, make_job(failed=0, active=0), [gone])
    c = cond(status, "Training")
    assert c["reason"] == "Preempted"
    assert "failure(s) so far" not in c["message"] and c["message"].endswith("Waiting for the Job's replacement pod.")


def test_the_preempted_condition_goes_once_the_replacement_pod_runs():
    gone = make_pod(phase="Failed", init=terminated(0, "Completed"), main=terminated(143, "Error"), conditions=DISRUPTED)
    _, status = step({**PENDING_STATUS, "phase": "Training"}, make_job(active=0), [gone])
    assert cond(status, "Training")["reason"] == "Preempted"
    replacement = make_pod(name="llama-sft-v1-sft-b8q3z", created="2026-11-25T12:04:00Z", phase="Pending",
                           init=running(), main=waiting("PodInitializing"))
    _, status = step(status, make_job(), [gone, replacement])
    assert status["phase"] == "SanityChecking"
    c = cond(status, "Training")
    assert (c["status"], c["reason"]) == ("Unknown", "PodReplaced")
    assert "Preempted" not in json.dumps(status["conditions"])


def test_a_succeeded_job_keeps_no_eta_even_with_a_late_progress_report():
    outcome = Outcome(ok=True, bestCheckpoint=BestCheckpoint(uri="s3://m/best", step=10, evalLoss=0.5))
    pod = make_pod(phase="Succeeded", init=terminated(0, "Completed"), main=terminated(0, "Completed", outcome.to_termination_message()))
    job = make_job(conditions=[job_condition("Complete", "CompletionsReached", "done")], active=0)
    late = Progress(stage="exporting", step=50, totalSteps=50, etaSeconds=60)
    _, status = step({**PENDING_STATUS, "phase": "Exporting"}, job, [pod], late)
    assert status["phase"] == "Succeeded"
    assert status["progress"] == {"stage": "done", "step": 50, "totalSteps": 50}


def test_the_sanity_check_serves_progress_while_the_pod_is_pending():
    init = make_pod(phase="Pending", init=running(), main=waiting("PodInitializing"), pod_ip="10.0.0.9")
    assert running_pod_ip([init]) == "10.0.0.9"
    done_init = make_pod(phase="Pending", init=terminated(0, "Completed"), main=waiting("PodInitializing"), pod_ip="10.0.0.9")
    assert running_pod_ip([done_init]) is None
    sanity = Progress(stage="sanity", step=3, totalSteps=10, loss=2.1)
    _, status = step(PENDING_STATUS, make_job(), [init], sanity)
    assert status["phase"] == "SanityChecking"
    assert status["progress"] == {"stage": "sanity", "step": 3, "totalSteps": 10, "loss": 2.1}


def test_retry_after_a_failed_pod_says_why():
    failed = make_pod(phase="Failed", init=terminated(0, "Completed"), main=terminated(137, "OOMKilled"))
    _, status = step({**PENDING_STATUS, "phase": "Training"}, make_job(failed=1, active=1), [failed])
    assert status["phase"] == "Pending"
    c = cond(status, "Training")
    assert (c["status"], c["reason"]) == ("Unknown", "OutOfMemory")
    assert c["message"].endswith("The Job retries the pod (1 failure(s) so far, spec.backoffLimit allows 3).")


def test_a_failure_that_fails_the_job_is_not_announced_as_retried():
    outcome = Outcome(ok=False, reason="DatasetSchema", message="train.jsonl:7: row has no 'messages' field.")
    failed = make_pod(phase="Failed", init=terminated(3, "Error", outcome.to_termination_message()), main=waiting("PodInitializing"))
    _, status = step(PENDING_STATUS, make_job(active=0), [failed])
    c = cond(status, "SanityChecked")
    assert (c["reason"], c["message"]) == ("DatasetSchema", "train.jsonl:7: row has no 'messages' field. A retry cannot help; the Job is failing.")


# -- outcomes ------------------------------------------------------------------------------------


def test_complete_job_is_succeeded_with_the_best_checkpoint():
    outcome = Outcome(
        ok=True, message="Training finished.",
        bestCheckpoint=BestCheckpoint(uri="s3://models/llama-sft-v1/best", step=800, evalLoss=0.912),
        evalLossBefore=1.9, evalLossAfter=0.912,
        resolved={"learningRate": 2e-5, "gradientAccumulationSteps": 8, "effectiveBatchSize": 32, "epochs": 3},
    )
    pod = make_pod(phase="Succeeded", init=terminated(0, "Completed", SANITY_PASSED.to_termination_message()),
                   main=terminated(0, "Completed", outcome.to_termination_message()))
    job = make_job(conditions=[job_condition("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"),
                               job_condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods")],
                   active=0)
    current = {**PENDING_STATUS, "phase": "Training",
               "progress": {"stage": "training", "step": 890, "totalSteps": 900, "etaSeconds": 20, "eta": "20s"}}
    _, status = step(current, job, [pod])
    assert status["phase"] == "Succeeded"
    assert status["bestCheckpoint"] == {"uri": "s3://models/llama-sft-v1/best", "step": 800, "evalLoss": 0.912}
    assert status["resolved"]["epochs"] == 3
    c = cond(status, "Succeeded")
    assert (c["status"], c["reason"]) == ("True", "Completed")
    assert c["message"] == "Training finished; the checkpoint (step 800, eval loss 0.912) is at s3://models/llama-sft-v1/best."
    assert cond(status, "Exported")["message"] == "Exported to s3://models/llama-sft-v1/best."
    assert (cond(status, "Training")["status"], cond(status, "Training")["reason"]) == ("False", "Completed")
    assert status["progress"] == {"stage": "done", "step": 890, "totalSteps": 900}  # no ETA once finished
    assert (status["startTime"], status["completionTime"]) == ("2026-11-25T11:59:00Z", STAMP1)
    assert condition(status, "Failed") is None


def test_complete_job_without_a_report_still_succeeds_and_says_so():
    pod = make_pod(phase="Succeeded", init=terminated(0, "Completed"), main=terminated(0, "Completed"))
    job = make_job(conditions=[job_condition("Complete", "CompletionsReached", "done")], active=0)
    _, status = step({**PENDING_STATUS, "phase": "Training"}, job, [pod])
    assert status["phase"] == "Succeeded"
    assert "bestCheckpoint" not in status
    assert cond(status, "Succeeded")["message"].startswith("The Job completed, but the runtime left no report")


def test_sanity_failure_fails_with_the_runtime_reason_and_report():
    outcome = Outcome(
        ok=False, reason="SanityLossNotDecreasing",
        message="Loss did not decrease in the sanity run (2.31 -> 2.35). Lower spec.training.learningRate or check the data.",
        sanity=SanityResult(passed=False, reason="SanityLossNotDecreasing", initialLoss=2.31, finalLoss=2.35, rows=64,
                            maskedRows=0, truncatedRows=0),
    )
    pod = make_pod(phase="Failed", init=terminated(10, "Error", outcome.to_termination_message()),
                   main=waiting("PodInitializing"))
    job = make_job(conditions=[job_condition(
        "Failed", "PodFailurePolicy",
        "Container sanity-check for pod team-a/llama-sft-v1-sft-x7k2p failed with exit code 10 matching FailJob rule at index 1",
    )], failed=1, active=0)
    _, status = step({**PENDING_STATUS, "phase": "SanityChecking"}, job, [pod])
    assert status["phase"] == "Failed"
    failed = cond(status, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "SanityLossNotDecreasing")
    assert failed["message"] == outcome.message
    sanity = cond(status, "SanityChecked")
    assert (sanity["status"], sanity["reason"]) == ("False", "SanityLossNotDecreasing")
    assert status["sanityCheck"] == {"passed": False, "reason": "SanityLossNotDecreasing", "initialLoss": 2.31,
                                     "finalLoss": 2.35, "rows": 64, "maskedRows": 0, "truncatedRows": 0}


def test_oom_killed_training_fails_with_out_of_memory_and_what_to_lower():
    pod = make_pod(phase="Failed", init=terminated(0, "Completed", SANITY_PASSED.to_termination_message()),
                   main=terminated(137, "OOMKilled"))
    job = make_job(conditions=[job_condition("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")],
                   failed=4, active=0)
    _, status = step({**PENDING_STATUS, "phase": "Training"}, job, [pod])
    assert status["phase"] == "Failed"
    c = cond(status, "Failed")
    assert c["reason"] == "OutOfMemory"
    assert c["message"] == (
        "The training container ran out of memory (OOMKilled). To fit, lower spec.training.perDeviceBatchSize (the "
        "effective batch is kept through accumulation), lower spec.training.maxSeqLength, enable "
        "spec.training.gradientCheckpointing or train LoRA adapters (spec.training.lora); or raise spec.resources.memory."
    )


def test_the_memory_hint_leaves_out_what_the_job_already_does():
    from sftjob.vocabulary import memory_hint

    pod = make_pod(phase="Failed", init=terminated(0, "Completed"), main=terminated(137, "OOMKilled"))
    job = make_job(conditions=[job_condition("Failed", "BackoffLimitExceeded", "limit")], failed=4, active=0)
    _, status = step({**PENDING_STATUS, "phase": "Training"}, job, [pod], hint=memory_hint(True, True))
    message = cond(status, "Failed")["message"]
    assert "gradientCheckpointing" not in message and "LoRA" not in message
    assert "lower spec.training.perDeviceBatchSize" in message and "spec.resources.memory" in message
    outcome = Outcome(ok=False, reason="OutOfMemory", message="CUDA out of memory at step 3.")
    pod = make_pod(phase="Failed", init=terminated(0, "Completed"), main=terminated(1, "Error", outcome.to_termination_message()))
    _, status = step({**PENDING_STATUS, "phase": "Training"}, job, [pod], hint=memory_hint(True, False))
    assert cond(status, "Failed")["message"].endswith(
        "lower spec.training.maxSeqLength or train LoRA adapters (spec.training.lora).")


def test_gpu_oom_reported_by_the_runtime_gets_the_memory_hint():
    outcome = Outcome(ok=False, reason="OutOfMemory", message="CUDA out of memory at step 3 (79.2 GiB in use).")
    pod = make_pod(phase="Failed", init=terminated(0, "Completed"), main=terminated(1, "Error", outcome.to_termination_message()))
    job = make_job(conditions=[job_condition("Failed", "BackoffLimitExceeded", "limit")], failed=4, active=0)
    _, status = step({**PENDING_STATUS, "phase": "Training"}, job, [pod])
    assert cond(status, "Failed")["message"] == (
        "CUDA out of memory at step 3 (79.2 GiB in use). To fit, lower spec.training.perDeviceBatchSize (the effective "
        "batch is kept through accumulation), lower spec.training.maxSeqLength, enable "
        "spec.training.gradientCheckpointing or train LoRA adapters (spec.training.lora)."
    )


def test_deadline_exceeded():
    job = make_job(conditions=[job_condition("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")],
                   active=0, failed=1)
    pod = make_pod(phase="Failed", init=terminated(0, "Completed"), main=terminated(143, "Error"))
    _, status = step({**PENDING_STATUS, "phase": "Training"}, job, [pod])
    c = cond(status, "Failed")
    assert (status["phase"], c["reason"], status["completionTime"]) == ("Failed", "DeadlineExceeded", STAMP1)
    assert c["message"] == (
        "The job ran longer than spec.activeDeadlineSeconds (86400 s) and was stopped. Raise "
        "spec.activeDeadlineSeconds, or shorten the run (spec.training.maxSteps or epochs)."
    )


def test_backoff_limit_exceeded_without_pods_left():
    job = make_job(conditions=[job_condition("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")],
                   active=0, failed=4)
    _, status = step({**PENDING_STATUS, "phase": "Training"}, job, [])
    c = cond(status, "Failed")
    assert c["reason"] == "BackoffLimitExceeded"
    assert c["message"] == (
        "The training pod failed 4 time(s), more than spec.backoffLimit (3) allows. See the pods' logs "
        "(`kubectl logs -l job-name=llama-sft-v1-sft`) for the cause."
    )


def test_exit_code_without_a_report_maps_to_its_reason():
    pod = make_pod(phase="Failed", init=terminated(3, "Error"), main=waiting("PodInitializing"))
    job = make_job(conditions=[job_condition("Failed", "PodFailurePolicy", "exit code 3")], active=0, failed=1)
    _, status = step({**PENDING_STATUS, "phase": "SanityChecking"}, job, [pod])
    c = cond(status, "Failed")
    assert c["reason"] == "DatasetSchema"
    assert c["message"] == (
        "The sanity check container exited with code 3 (DATASET) and left no report; "
        "see `kubectl logs llama-sft-v1-sft-x7k2p -c sanity-check`."
    )


def test_a_job_failure_that_overtakes_its_pods_exit_waits_for_the_pods_story():
    # Two watches, no ordering between them: the Job's Failed (PodFailurePolicy) can arrive while the pod
    # still looks like it runs. Concluding then would fix "InternalError" for good; the pod's event decides.
    job = make_job(conditions=[job_condition("Failed", "PodFailurePolicy", "exit code 10")], active=0, failed=1)
    running_pod = make_pod(phase="Pending", init=running(), main=waiting("PodInitializing"))
    assert compute_status({**PENDING_STATUS, "phase": "SanityChecking"}, job, [running_pod], now=T1) == {}
    outcome = Outcome(ok=False, reason="SanityNoEndOfTurn", message="sanity check failed: no end of turn")
    failed = make_pod(phase="Failed", init=terminated(10, "Error", outcome.to_termination_message()), main=waiting("PodInitializing"))
    _, status = step({**PENDING_STATUS, "phase": "SanityChecking"}, job, [failed])
    assert (cond(status, "Failed")["reason"], status["phase"]) == ("SanityNoEndOfTurn", "Failed")
    # With no pod left to tell, the Job's own reason is all there is.
    _, status = step({**PENDING_STATUS, "phase": "SanityChecking"}, job, [])
    assert cond(status, "Failed")["reason"] == "InternalError"


def test_unknown_runtime_reason_is_an_internal_error_that_keeps_the_text():
    outcome = Outcome(ok=False, reason="TokenizerExploded", message="the tokenizer exploded")
    pod = make_pod(phase="Failed", init=terminated(0, "Completed"), main=terminated(1, "Error", outcome.to_termination_message()))
    job = make_job(conditions=[job_condition("Failed", "BackoffLimitExceeded", "limit")], active=0, failed=4)
    _, status = step({**PENDING_STATUS, "phase": "Training"}, job, [pod])
    c = cond(status, "Failed")
    assert (c["reason"], c["message"]) == ("InternalError", "TokenizerExploded: the tokenizer exploded")


def test_preempted_last_pod_of_a_failed_job():
    pod = make_pod(phase="Failed", init=terminated(0, "Completed"), main=terminated(137, "Error"), conditions=[
        {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting"},
    ])
    # The main container was killed by the eviction (exit 137 without OOM): its exit code explains less than the disruption.
    pod["status"]["containerStatuses"][0]["state"] = {"terminated": {"exitCode": 0, "reason": "Completed"}}
    job = make_job(conditions=[job_condition("Failed", "BackoffLimitExceeded", "limit")], active=0, failed=4)
    _, status = step({**PENDING_STATUS, "phase": "Training"}, job, [pod])
    assert cond(status, "Failed")["reason"] == "Preempted"


def test_finished_status_is_final():
    finished = {"phase": "Failed", "jobName": "llama-sft-v1-sft", "observedGeneration": 1, "conditions": [
        {"type": "Failed", "status": "True", "reason": "OutOfMemory", "message": "m", "lastTransitionTime": STAMP0}]}
    # Written before the summary conditions existed: it gains them, and nothing else moves.
    patch = compute_status(finished, make_job(), [make_pod(main=running())], now=T1)
    assert set(patch) == {"conditions"} and patch["conditions"][0] == finished["conditions"][0]
    assert [(c["type"], c["status"], c["reason"]) for c in patch["conditions"][1:]] == [
        ("Ready", "False", "OutOfMemory"), ("Reconciling", "False", "Failed"), ("Stalled", "True", "OutOfMemory")]
    summarized = apply_merge_patch(finished, patch)
    assert compute_status(summarized, make_job(), [make_pod(main=running())], now=T1) == {}
    assert compute_status(summarized, None, [], now=T1) == {}


def test_unknown_job_changes_nothing():
    assert compute_status(PENDING_STATUS, None, []) == {}


def test_last_transition_time_moves_only_with_status():
    pod_a = make_pod(phase="Pending", init=waiting("ErrImagePull", "a"), main=waiting("PodInitializing"))
    _, first = step(PENDING_STATUS, make_job(), [pod_a], now=T1)
    pod_b = make_pod(phase="Pending", init=waiting("ImagePullBackOff", "b"), main=waiting("PodInitializing"))
    later = T1 + datetime.timedelta(minutes=3)
    patch, second = step(first, make_job(), [pod_b], now=later)
    c = cond(second, "SanityChecked")
    assert c["message"].startswith("Cannot pull the image of the sanity-check container (ImagePullBackOff: b)")
    assert c["lastTransitionTime"] == STAMP1
    assert "phase" not in patch


# -- status documents built elsewhere -----------------------------------------------------------


def test_invalid_spec_status_names_the_field():
    status = invalid_spec_status(["spec.training.learningRate: Input should be greater than 0 (got -1.0)"], 1, now=T0)
    assert_fits_crd(status)
    message = ("Invalid spec: spec.training.learningRate: Input should be greater than 0 (got -1.0). "
               "Fix the field(s) and apply the SFTJob again.")
    summary = {"lastTransitionTime": STAMP0, "observedGeneration": 1}
    assert status == {
        "phase": "Failed",
        "observedGeneration": 1,
        "conditions": [
            {"type": "Failed", "status": "True", "reason": "InvalidSpec", "lastTransitionTime": STAMP0, "message": message},
            {"type": "Ready", "status": "False", "reason": "InvalidSpec", "message": message, **summary},
            {"type": "Reconciling", "status": "False", "reason": "Failed",
             "message": "Nothing left to do: the job failed (InvalidSpec) and is not retried.", **summary},
            {"type": "Stalled", "status": "True", "reason": "InvalidSpec", "message": message, **summary},
        ],
    }


def test_spec_ignored_and_job_lost():
    patch = spec_ignored_status(PENDING_STATUS, ["spec.training.learningRate"], "llama-sft-v1-sft", 2, now=T1)
    assert_fits_crd(apply_merge_patch(PENDING_STATUS, patch))
    assert patch["observedGeneration"] == 2
    c = cond(patch, "SpecChangeIgnored")
    assert c["message"].startswith("Changes to spec.training.learningRate were not applied: Job llama-sft-v1-sft already runs")
    lost = job_lost_status(PENDING_STATUS, "llama-sft-v1-sft", now=T1)
    assert lost["phase"] == "Failed" and cond(lost, "Failed")["reason"] == "InternalError"


def test_merge_diff_round_trips():
    old = {"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2]}
    new = {"a": 1, "b": {"c": 5}, "e": [1], "f": "x"}
    patch = merge_diff(old, new)
    assert patch == {"b": {"c": 5, "d": None}, "e": [1], "f": "x"}
    assert apply_merge_patch(old, patch) == new
    assert merge_diff(new, copy.deepcopy(new)) == {}


# -- progress helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (59, "59s"), (60, "1m 00s"), (725, "12m 05s"),
                                               (11220, "3h 07m"), (187200, "2d 04h"), (None, None), (-1, None)])
def test_format_eta(seconds, text):
    assert format_eta(seconds) == text


def test_non_finite_numbers_become_warnings():
    shown = progress_status(Progress(stage="training", step=3, loss=float("nan"), gradNorm=float("inf")), "Training")
    assert shown == {"stage": "training", "step": 3, "warnings": ["loss is nan", "gradNorm is inf"]}


def test_progress_url_and_running_pod():
    assert progress_url("10.0.0.7", 8321) == "http://10.0.0.7:8321/progress"
    assert progress_url("fd00::7", 8321) == "http://[fd00::7]:8321/progress"
    old = make_pod(name="a", created="2026-11-25T10:00:00Z", pod_ip="10.0.0.1")
    new = make_pod(name="b", created="2026-11-25T11:00:00Z", pod_ip="10.0.0.2")
    gone = make_pod(name="c", phase="Failed", created="2026-11-25T12:00:00Z", pod_ip="10.0.0.3")
    assert running_pod_ip([old, new, gone]) == "10.0.0.2"
    assert running_pod_ip([gone]) is None


# -- a multi-node job: node 0 reports, every node can hold it up --------------------------------


def node_pod(index: int, **kwargs) -> dict[str, Any]:
    """A pod of an Indexed Job, with the completion index the Job controller annotates it with.

    Node 1's pod is created a moment later, so it is the newest: status must not read it for what node 0 reports.
    """
    pod = make_pod(name=f"llama-sft-v1-sft-{index}-ab{index}cd", created=f"2026-11-25T11:59:0{1 + index}Z", **kwargs)
    pod["metadata"]["annotations"] = {"batch.kubernetes.io/job-completion-index": str(index)}
    return pod


def test_the_runtimes_plan_is_shown_in_status_from_the_sanity_check_on():
    plan = PlanSummary(strategy=None, fits=False, devices=1, memory="80 GB (nodeSelector nvidia.com/gpu.product)",
                       usableBytes=76 * 2**30, ddpPeakBytes=664 * 2**30,
                       message="does not fit one 80 GB GPU under DDP (needs ~664 GiB): train LoRA adapters (spec.training.lora)")
    checked = Outcome(ok=True, reason="Passed", sanity=SANITY_PASSED.sanity, plan=plan)
    pod = make_pod(phase="Running", init=terminated(0, "Completed", checked.to_termination_message()), main=running())
    _, status = step(PENDING_STATUS, make_job(), [pod])
    assert status["plan"] == {"fits": False, "devices": 1, "memory": "80 GB (nodeSelector nvidia.com/gpu.product)",
                              "usableBytes": 76 * 2**30, "ddpPeakBytes": 664 * 2**30, "message": plan.message}
    failed = make_job(conditions=[job_condition("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")],
                      active=0)
    oom = make_pod(phase="Failed", init=terminated(0, "Completed", checked.to_termination_message()),
                   main=terminated(137, "OOMKilled"))
    _, after = step(status, failed, [oom])
    assert after["phase"] == "Failed" and after["plan"] == status["plan"]  # kept beside the failure it foretold


def test_a_waiting_node_does_not_pass_node_0s_sanity_check():
    waited = Outcome(ok=True, reason="Passed", message="node 1: node 0 ran the sanity check and started training (waited 3 s)")
    pods = [node_pod(0, phase="Pending", init=running(), main=waiting("PodInitializing")),
            node_pod(1, phase="Running", init=terminated(0, "Completed", waited.to_termination_message()), main=running())]
    _, status = step(PENDING_STATUS, make_job(active=2), pods)
    assert status["phase"] == "SanityChecking"
    c = cond(status, "SanityChecked")
    assert (c["status"], c["reason"]) == ("Unknown", "Running")
    assert "sanityCheck" not in status


def test_a_multi_node_job_succeeds_with_node_0s_report():
    outcome = Outcome(ok=True, message="Training finished.",
                      bestCheckpoint=BestCheckpoint(uri="s3://models/llama-sft-v1/best", step=800, evalLoss=0.912))
    pods = [node_pod(0, phase="Succeeded", init=terminated(0, "Completed", SANITY_PASSED.to_termination_message()),
                     main=terminated(0, "Completed", outcome.to_termination_message())),
            node_pod(1, phase="Succeeded", init=terminated(0, "Completed"), main=terminated(0, "Completed"))]
    job = make_job(conditions=[job_condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods")],
                   active=0)
    _, status = step({**PENDING_STATUS, "phase": "Training"}, job, pods)
    assert status["phase"] == "Succeeded"
    assert status["bestCheckpoint"] == {"uri": "s3://models/llama-sft-v1/best", "step": 800, "evalLoss": 0.912}
    assert status["sanityCheck"]["initialLoss"] == 2.31  # node 0's check, not node 1's wait


def test_an_unschedulable_node_holds_up_a_multi_node_job():
    unschedulable = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                      "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
                      "lastTransitionTime": "2026-11-25T11:59:01Z"}]
    pods = [node_pod(0, phase="Running", init=running()),
            node_pod(1, phase="Pending", pod_ip=None, conditions=unschedulable)]
    _, status = step(PENDING_STATUS, make_job(active=2), pods)
    assert status["phase"] == "Pending"
    c = cond(status, "SanityChecked")
    assert (c["status"], c["reason"]) == ("False", "Unschedulable")


def test_progress_is_read_from_node_0():
    pods = [node_pod(0, phase="Running", init=terminated(0, "Completed"), main=running(), pod_ip="10.244.1.17"),
            node_pod(1, phase="Running", init=terminated(0, "Completed"), main=running(), pod_ip="10.244.2.9")]
    assert running_pod_ip(pods) == "10.244.1.17"


def test_the_operators_slim_pod_keeps_the_node_index():
    from sftjob_operator.index import slim_pod

    assert leader_pods([slim_pod(node_pod(1)), slim_pod(node_pod(0))])[0]["metadata"]["name"].startswith("llama-sft-v1-sft-0-")
    assert "annotations" not in slim_pod(make_pod())["metadata"]  # a single-node pod carries no index


def test_a_failed_multi_node_job_is_explained_by_node_0s_report():
    """Node 1's workers die (exit 1, no report) because node 0's did: the reason is node 0's."""
    diverged = Outcome(ok=False, reason="TrainingDiverged", message="The loss became NaN at step 120; lower learningRate.")
    pods = [node_pod(0, phase="Failed", init=terminated(0, "Completed"), main=terminated(11, "Error", diverged.to_termination_message())),
            node_pod(1, phase="Failed", init=terminated(0, "Completed"), main=terminated(1, "Error"))]
    job = make_job(conditions=[job_condition("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")],
                   active=0, failed=2)
    _, status = step({**PENDING_STATUS, "phase": "Training"}, job, pods)
    c = cond(status, "Failed")
    assert c["reason"] == "TrainingDiverged" and "NaN at step 120" in c["message"]


@pytest.mark.parametrize("text", ["a" * 5000, "训练数据" * 1500, "ü" * 4000])
def test_a_termination_message_always_fits_and_parses(text):
    """Long or non-ASCII findings are cut: the kubelet keeps only the tail of a longer message, which would not parse."""
    outcome = Outcome(
        ok=False, reason="SanityLossNotDecreasing", message=text,
        sanity=SanityResult(passed=False, reason="SanityLossNotDecreasing", message=text, sample=text),
        plan=PlanSummary(fits=False, message=text), resolved={"note": text},
    )
    message = outcome.to_termination_message()
    assert len(message.encode()) <= 4096
    parsed = Outcome.from_termination_message(message)
    assert (parsed.ok, parsed.reason) == (False, "SanityLossNotDecreasing") and parsed.message.startswith(text[:100])
    small = Outcome(ok=True, reason="Passed", message="训练完成", sanity=SANITY_PASSED.sanity)
    assert Outcome.from_termination_message(small.to_termination_message()) == small  # nothing cut when it fits
