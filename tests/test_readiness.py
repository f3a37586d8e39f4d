"""Ready, Reconciling and Stalled: what kubectl wait, Flux's kstatus and GitOps tools conclude from an SFTJob.

Each phase is reached through the real status builders (`compute_status`
from realistic Job and Pod states, and the statuses written on create,
refusal, loss and spec edits); the three summary conditions are asserted
exactly, then read back by re-implementations of kstatus and `kubectl wait`
(tests/support/kstatus.py).
"""

from __future__ import annotations

import datetime

import pytest
from sftjob.report import BestCheckpoint, Outcome, Progress, SanityResult

from sftjob_operator.conditions import keep_transition_times
from sftjob_operator.readiness import SUMMARY_TYPES, readiness_conditions, summarize, without_summary
from sftjob_operator.status import (
    apply_merge_patch,
    condition,
    create_refused_status,
    generation_status,
    invalid_spec_status,
    job_lost_status,
    spec_ignored_status,
)
from tests.support.kstatus import CURRENT, FAILED, IN_PROGRESS, TERMINATING, kstatus, kubectl_wait_met
from tests.test_status import (
    CREATED_MESSAGE,
    PENDING_STATUS,
    SANITY_PASSED,
    STAMP0,
    STAMP1,
    T1,
    assert_fits_crd,
    job_condition,
    make_job,
    make_pod,
    running,
    step,
    terminated,
    waiting,
)

T2 = T1 + datetime.timedelta(minutes=5)
STAMP2 = "2026-11-25T12:10:00Z"
TRAIN_POD = make_pod(init=terminated(0, "Completed", SANITY_PASSED.to_termination_message()), main=running())
BEST = Outcome(ok=True, bestCheckpoint=BestCheckpoint(uri="s3://models/llama-sft-v1/best", step=800, evalLoss=0.912))
SUCCEEDED_POD = make_pod(phase="Succeeded", init=terminated(0, "Completed"), main=terminated(0, "Completed", BEST.to_termination_message()))
COMPLETE_JOB = make_job(conditions=[job_condition("Complete", "CompletionsReached", "done")], active=0)
SANITY_FAILURE = Outcome(ok=False, reason="SanityLossNotDecreasing", message="Loss did not decrease (2.31 -> 2.35).",
                         sanity=SanityResult(passed=False, reason="SanityLossNotDecreasing", initialLoss=2.31, finalLoss=2.35))
FAILED_POD = make_pod(phase="Failed", init=terminated(10, "Error", SANITY_FAILURE.to_termination_message()), main=waiting("PodInitializing"))
FAILED_JOB = make_job(conditions=[job_condition("Failed", "PodFailurePolicy", "exit code 10")], failed=1, active=0)
SUCCEEDED_MESSAGE = "Training finished; the checkpoint (step 800, eval loss 0.912) is at s3://models/llama-sft-v1/best."


def sftjob(status: dict, generation: int = 1, **meta) -> dict:
    """The SFTJob object a tool reads."""
    return {"apiVersion": "sftjob.dev/v1alpha1", "kind": "SFTJob",
            "metadata": {"name": "llama-sft-v1", "namespace": "team-a", "generation": generation, **meta}, "status": status}


def summary(status: dict) -> list[tuple[str, str, str, str]]:
    """(type, status, reason, message) of Ready, Reconciling, Stalled, in that order, last in the list."""
    tail = status["conditions"][-3:]
    assert [c["type"] for c in tail] == list(SUMMARY_TYPES)
    assert not [c for c in status["conditions"][:-3] if c["type"] in SUMMARY_TYPES]
    return [(c["type"], c["status"], c["reason"], c["message"]) for c in tail]


def assert_consistent(status: dict) -> None:
    """The summary is what readiness_conditions makes of the rest: no builder sets it on its own."""
    assert_fits_crd(status)
    again = readiness_conditions(status["phase"], status["conditions"], status.get("observedGeneration"), "2099-01-01T00:00:00Z")
    assert again == status["conditions"]


# -- every phase -------------------------------------------------------------------------------


def pending():
    return step({}, make_job(), generation=1)[1]


def queued():
    return step({}, make_job(suspend=True, labels={"kueue.x-k8s.io/queue-name": "gpu-queue"}, active=0), generation=1)[1]


def sanity_checking():
    return step(PENDING_STATUS, make_job(), [make_pod(phase="Pending", init=running(), main=waiting("PodInitializing"))])[1]


def training():
    return step(PENDING_STATUS, make_job(), [TRAIN_POD], Progress(stage="training", step=5, totalSteps=50))[1]


def exporting():
    return step(PENDING_STATUS, make_job(), [TRAIN_POD], Progress(stage="exporting", step=50, totalSteps=50))[1]


def succeeded():
    return step({**PENDING_STATUS, "phase": "Exporting"}, COMPLETE_JOB, [SUCCEEDED_POD])[1]


def failed():
    return step({**PENDING_STATUS, "phase": "SanityChecking"}, FAILED_JOB, [FAILED_POD])[1]


def suspended():
    return step(PENDING_STATUS, make_job(suspend=True, active=0), suspend=True)[1]


SUSPENDED_MESSAGE = ("Suspended: spec.suspend is true; the training pod is stopped. "
                     "Set spec.suspend: false to resume from the latest checkpoint.")
SANITY_RUNNING = "The sanity check is running: a few real training steps on a small subset."
QUEUED_MESSAGE = "Waiting for Kueue to admit the job in LocalQueue 'gpu-queue' (spec.queueName)."
PHASES = [
    (pending, "Pending", [("Ready", "False", "Pending", f"Pending: {CREATED_MESSAGE}"),
                          ("Reconciling", "True", "JobCreated", CREATED_MESSAGE),
                          ("Stalled", "False", "Pending", "Not stalled: the job is Pending.")], IN_PROGRESS),
    (queued, "Queued", [("Ready", "False", "Queued", f"Queued: {QUEUED_MESSAGE}"),
                        ("Reconciling", "True", "WaitingForQuota", QUEUED_MESSAGE),
                        ("Stalled", "False", "Queued", "Not stalled: the job is Queued.")], IN_PROGRESS),
    (sanity_checking, "SanityChecking", [("Ready", "False", "SanityChecking", f"SanityChecking: {SANITY_RUNNING}"),
                                         ("Reconciling", "True", "Running", SANITY_RUNNING),
                                         ("Stalled", "False", "SanityChecking", "Not stalled: the job is SanityChecking.")],
     IN_PROGRESS),
    (training, "Training", [("Ready", "False", "Training", "Training: The train container is running."),
                            ("Reconciling", "True", "Running", "The train container is running."),
                            ("Stalled", "False", "Training", "Not stalled: the job is Training.")], IN_PROGRESS),
    (exporting, "Exporting", [("Ready", "False", "Exporting", "Exporting: Training finished; exporting the best checkpoint."),
                              ("Reconciling", "True", "Exporting", "Training finished; exporting the best checkpoint."),
                              ("Stalled", "False", "Exporting", "Not stalled: the job is Exporting.")], IN_PROGRESS),
    (succeeded, "Succeeded", [("Ready", "True", "Completed", SUCCEEDED_MESSAGE),
                              ("Reconciling", "False", "Succeeded", "Nothing left to do: the job succeeded."),
                              ("Stalled", "False", "Succeeded", "Not stalled: the job succeeded.")], CURRENT),
    (failed, "Failed", [("Ready", "False", "SanityLossNotDecreasing", SANITY_FAILURE.message),
                        ("Reconciling", "False", "Failed",
                         "Nothing left to do: the job failed (SanityLossNotDecreasing) and is not retried."),
                        ("Stalled", "True", "SanityLossNotDecreasing", SANITY_FAILURE.message)], FAILED),
    # kstatus reads a suspended job as InProgress (Ready=False): a Flux `wait: true` keeps waiting until it resumes.
    (suspended, "Suspended", [("Ready", "False", "Suspended", SUSPENDED_MESSAGE),
                              ("Reconciling", "False", "Suspended", SUSPENDED_MESSAGE),
                              ("Stalled", "False", "Suspended",
                               "Not stalled: the job is suspended and resumes when spec.suspend is false.")], IN_PROGRESS),
]


@pytest.mark.parametrize(("make", "phase", "expected", "verdict"), PHASES, ids=[p[1] for p in PHASES])
def test_each_phase_has_its_summary_conditions(make, phase, expected, verdict):
    status = make()
    assert status["phase"] == phase
    assert summary(status) == expected
    assert_consistent(status)
    assert all(condition(status, t)["observedGeneration"] == 1 for t in SUMMARY_TYPES)
    assert kstatus(sftjob(status))[0] == verdict
    # kubectl wait --for=condition=Ready returns only for a job that succeeded ...
    assert kubectl_wait_met(sftjob(status), "Ready") is (phase == "Succeeded")
    # ... and a waiter can stop early on a failure: Ready=False together with Stalled=True.
    assert kubectl_wait_met(sftjob(status), "Stalled") is (phase == "Failed")
    assert kubectl_wait_met(sftjob(status), "ready", "false") is (phase != "Succeeded")


def test_kstatus_reads_the_failure_reason_and_message():
    assert kstatus(sftjob(failed())) == (FAILED, SANITY_FAILURE.message)
    assert kstatus(sftjob(training())) == (IN_PROGRESS, "The train container is running.")
    assert kstatus(sftjob(succeeded(), deletionTimestamp="2026-11-25T13:00:00Z"))[0] == TERMINATING


def test_a_problem_while_pending_is_what_reconciling_says():
    unschedulable = make_pod(phase="Pending", pod_ip=None, conditions=[{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."}])
    _, status = step(PENDING_STATUS, make_job(), [unschedulable])
    ready, reconciling, stalled = summary(status)
    assert reconciling[:3] == ("Reconciling", "True", "Unschedulable")
    assert reconciling[3] == condition(status, "SanityChecked")["message"]
    assert ready[:3] == ("Ready", "False", "Pending") and ready[3] == f"Pending: {reconciling[3]}"
    assert stalled[1] == "False"  # the scheduler may still place it: not a terminal failure
    assert kstatus(sftjob(status))[0] == IN_PROGRESS


def test_a_definite_problem_comes_before_an_older_wait():
    # Preempted mid-training (Training Unknown), then the replacement pod cannot be scheduled (SanityChecked False).
    conds = [{"type": "SanityChecked", "status": "False", "reason": "Unschedulable", "message": "no node fits"},
             {"type": "Training", "status": "Unknown", "reason": "Preempted", "message": "preempted"}]
    assert summarize("Pending", conds)[1][:3] == ("True", "Unschedulable", "no node fits")
    retrying = [{"type": "SanityChecked", "status": "True", "reason": "Passed", "message": "passed"},
                {"type": "Training", "status": "Unknown", "reason": "OutOfMemory", "message": "OOM; retrying"}]
    assert summarize("Pending", retrying)[1][:3] == ("True", "OutOfMemory", "OOM; retrying")


# -- Kubernetes conventions ----------------------------------------------------------------------


def test_last_transition_time_moves_only_when_a_summary_status_does():
    _, first = step({}, make_job(), generation=1, now=datetime.datetime(2026, 11, 25, 12, 0, tzinfo=datetime.timezone.utc))
    _, checking = step(first, make_job(), [make_pod(phase="Pending", init=running(), main=waiting("PodInitializing"))], now=T1)
    times = {c["type"]: c["lastTransitionTime"] for c in checking["conditions"]}
    assert (times["Ready"], times["Reconciling"], times["Stalled"]) == (STAMP0, STAMP0, STAMP0)  # messages moved, statuses not
    assert condition(checking, "Reconciling")["reason"] == "Running"
    _, done = step({**checking, "phase": "Exporting"}, COMPLETE_JOB, [SUCCEEDED_POD], now=T2)
    times = {c["type"]: c["lastTransitionTime"] for c in done["conditions"]}
    assert (times["Ready"], times["Reconciling"], times["Stalled"]) == (STAMP2, STAMP2, STAMP0)


def test_progress_polls_do_not_touch_the_summary():
    _, status = step(PENDING_STATUS, make_job(), [TRAIN_POD], Progress(stage="training", step=5, totalSteps=50))
    patch, _ = step(status, make_job(), [TRAIN_POD], Progress(stage="training", step=6, totalSteps=50))
    assert patch == {"progress": {"step": 6}}
    assert step(status, make_job(), [TRAIN_POD], Progress(stage="training", step=5, totalSteps=50))[0] == {}


def test_a_finished_job_stays_as_it_finished():
    done = succeeded()
    assert step(done, make_job(), [make_pod(main=running())])[0] == {}
    assert step(done, None)[0] == {}


def test_statuses_built_afresh_keep_transition_times_of_unchanged_statuses():
    before = PENDING_STATUS["conditions"]
    after = invalid_spec_status(["spec.x: bad"], 2, now=T1)["conditions"]
    kept = {c["type"]: c["lastTransitionTime"] for c in keep_transition_times(before, after)}
    # Ready stayed False; Reconciling and Stalled changed; Failed is new.
    assert kept == {"Failed": STAMP1, "Ready": STAMP0, "Reconciling": STAMP1, "Stalled": STAMP1}


# -- observedGeneration --------------------------------------------------------------------------


def test_summary_conditions_answer_the_generation_the_operator_acted_on():
    _, status = step({}, make_job(), generation=3)
    assert all(condition(status, t)["observedGeneration"] == 3 for t in SUMMARY_TYPES)
    # compute_status itself leaves status.observedGeneration to the paths that act on a spec,
    # and stamps the summary with it.
    _, later = step({**status, "observedGeneration": 3}, make_job(), [TRAIN_POD])
    assert all(condition(later, t)["observedGeneration"] == 3 for t in SUMMARY_TYPES)


def test_a_spec_edit_is_observed_by_status_and_conditions_together():
    done = {**succeeded(), "observedGeneration": 1}
    edited = sftjob(done, generation=2)  # e.g. spec.suspend flipped on a finished job
    assert kstatus(edited)[0] == IN_PROGRESS and not kubectl_wait_met(edited, "Ready")
    patch = generation_status(done, 2, now=T2)
    after = apply_merge_patch(done, patch)
    assert set(patch) == {"observedGeneration", "conditions"} and after["observedGeneration"] == 2
    assert all(condition(after, t)["observedGeneration"] == 2 for t in SUMMARY_TYPES)
    assert summary(after) == summary(done)  # the same answer, for the new generation
    assert condition(after, "Ready")["lastTransitionTime"] == condition(done, "Ready")["lastTransitionTime"]
    assert kstatus(sftjob(after, generation=2))[0] == CURRENT and kubectl_wait_met(sftjob(after, generation=2), "Ready")
    assert generation_status(after, 2) == {} and generation_status(after, None) == {}


def test_every_status_builder_ends_with_a_consistent_summary():
    refused = create_refused_status("Job", "llama-sft-v1-sft", "team-a", 403, "exceeded quota", 2,
                                    first_stage="SanityChecked", retry_seconds=10, now=T1)
    rejected = create_refused_status("Job", "llama-sft-v1-sft", "team-a", 422, "denied", 2,
                                     first_stage="SanityChecked", retry_seconds=None, now=T1)
    invalid = invalid_spec_status(["spec.training.learningRate: bad"], 2, now=T1)
    for status, verdict in ((refused, IN_PROGRESS), (rejected, FAILED), (invalid, FAILED)):
        assert status["observedGeneration"] == 2
        assert_consistent(status)
        assert all(condition(status, t)["observedGeneration"] == 2 for t in SUMMARY_TYPES)
        assert kstatus(sftjob(status, generation=2))[0] == verdict
        assert status["conditions"][0]["type"] != "Ready"  # the create handler's Event reads the first condition
    assert condition(refused, "Reconciling")["reason"] == "CreateForbidden"
    assert condition(rejected, "Stalled")["reason"] == "CreateRejected"

    lost = apply_merge_patch(PENDING_STATUS, job_lost_status(PENDING_STATUS, "llama-sft-v1-sft", now=T1))
    assert_consistent(lost)
    assert summary(lost)[2][:3] == ("Stalled", "True", "InternalError")
    assert kstatus(sftjob(lost))[0] == FAILED

    ignored = apply_merge_patch(PENDING_STATUS, spec_ignored_status(PENDING_STATUS, ["spec.image"], "llama-sft-v1-sft", 2, now=T1))
    assert_consistent(ignored)
    assert ignored["observedGeneration"] == 2 and condition(ignored, "Ready")["observedGeneration"] == 2
    assert condition(ignored, "SpecChangeIgnored")["status"] == "True"


def test_announcements_never_see_the_summary():
    status = failed()
    assert [c["type"] for c in without_summary(status)["conditions"]] == ["SanityChecked", "Failed"]
    assert without_summary({"phase": "Pending"}) == {"phase": "Pending"}
