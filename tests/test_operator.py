"""The real operator process against the Kubernetes emulator, with the test playing Job controller and kubelet.

One emulator and one operator (`sftjob operator`, as the chart's
Deployment runs it) serve the whole module; each test works in a namespace
of its own. The test creates the Pods a Job controller would create (the
Job's template labels, an ownerReference to the Job) and patches Job and Pod
status as the controller and the kubelet would. The runtime's progress
endpoint is a real HTTP server on 127.0.0.1: every pod reports that address
as its podIP, and the operator's progress port points at the server.
"""

from __future__ import annotations

import concurrent.futures
import json
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import kmock
import pytest
from sftjob.report import BestCheckpoint, Outcome, SanityResult

from tests.support.kstatus import CURRENT, FAILED, IN_PROGRESS, kstatus, kubectl_wait_met
from tests.support.kube import ApiError, RunningEmulator, running_emulator, wait_for
from tests.support.playback import (
    SANITY_PASSED,
    ProgressServer,
    free_port,
    job_finished,
    pod_status,
    running,
    sftjob_manifest,
    terminated,
    waiting,
)
from tests.support.operator_process import OperatorProcess, operator_process

API = "sftjob.dev/v1alpha1"
OPERATOR = (sys.executable, "-m", "sftjob.cli", "operator")
TIMEOUT = 30.0  # generous: the machine is shared
POLL_SECONDS = 0.3  # the operator's progress poll interval in these tests


class Cluster:
    """The test's hands: SFTJobs in, Job-controller and kubelet behaviour out, status read back."""

    def __init__(self, kube: RunningEmulator, operator: OperatorProcess, progress: ProgressServer, metrics_port: int, health_port: int) -> None:
        self.kube = kube
        self.client = kube.client
        self.operator = operator
        self.progress = progress
        self.metrics_port = metrics_port
        self.health_port = health_port

    def create(self, name: str, namespace: str, **spec: Any) -> dict[str, Any]:
        return self.client.create(sftjob_manifest(name, namespace, **spec))

    def sftjob(self, name: str, namespace: str) -> dict[str, Any]:
        return self.client.get(API, "sftjobs", namespace, name)

    def wait(self, what: str, predicate: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
        try:
            return wait_for(predicate, timeout=timeout, message=what)
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- operator log ---\n{self.operator.log_tail(40)}") from None

    def wait_sftjob(self, name: str, namespace: str, what: str, check: Callable[[dict[str, Any]], Any],
                    timeout: float = TIMEOUT) -> dict[str, Any]:
        """Wait until `check(sftjob)` holds; return that SFTJob."""
        def reached() -> dict[str, Any] | None:
            obj = self.sftjob(name, namespace)
            return obj if check(obj) else None
        return self.wait(f"{namespace}/{name}: {what}", reached, timeout)

    def wait_phase(self, name: str, namespace: str, phase: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        return self.wait_sftjob(name, namespace, f"phase {phase}", lambda o: o.get("status", {}).get("phase") == phase, timeout)

    def wait_job(self, name: str, namespace: str) -> dict[str, Any]:
        return self.wait(f"Job {name}-sft", lambda: self.client.get("batch/v1", "jobs", namespace, f"{name}-sft"))

    def start_pod(self, job: dict[str, Any], suffix: str = "x7k2p", index: int | None = None) -> str:
        """Create the Job's pod as the Job controller does (`index`: an Indexed Job's completion index); return its name."""
        meta = job["metadata"]
        template = job["spec"]["template"]
        name = f"{meta['name']}-{suffix}" if index is None else f"{meta['name']}-{index}-{suffix}"
        labels = {**template["metadata"]["labels"], "batch.kubernetes.io/job-name": meta["name"],
                  "batch.kubernetes.io/controller-uid": meta["uid"]}
        annotations = {} if index is None else {"batch.kubernetes.io/job-completion-index": str(index)}
        self.client.create({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": meta["namespace"], "labels": labels, "annotations": annotations,
                         "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"],
                "controller": True, "blockOwnerDeletion": True}]},
            "spec": template["spec"],
        })
        return name

    def kubelet(self, namespace: str, pod: str, status: dict[str, Any]) -> None:
        self.client.patch_status("v1", "pods", namespace, pod, status)

    def job_controller(self, namespace: str, job: str, status: dict[str, Any]) -> None:
        self.client.patch_status("batch/v1", "jobs", namespace, job, status)

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return [e for e in self.client.list("v1", "events", namespace) if e.get("involvedObject", {}).get("name") == name]

    def condition(self, obj: dict[str, Any], ctype: str) -> dict[str, Any]:
        for cond in obj.get("status", {}).get("conditions", []):
            if cond["type"] == ctype:
                return cond
        raise LookupError(f"no {ctype} condition in {obj.get('status')}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    progress = ProgressServer()
    metrics_port, health_port = free_port(), free_port()
    env = {
        "SFTJOB_OPERATOR_DISABLE_SCANNING": "true",  # the emulator serves no CRD/namespace scanning
        "SFTJOB_OPERATOR_PROGRESS_PORT": str(progress.port),
        "SFTJOB_OPERATOR_PROGRESS_POLL_SECONDS": str(POLL_SECONDS),
        "SFTJOB_OPERATOR_PROGRESS_TIMEOUT_SECONDS": "2",
        "SFTJOB_OPERATOR_METRICS_PORT": str(metrics_port),
        "SFTJOB_OPERATOR_HEALTH_PORT": str(health_port),
        "SFTJOB_OPERATOR_LOG_FORMAT": "json",
    }
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    try:
        with running_emulator() as kube, operator_process(
            kube.kubeconfig, ["--bind-address", "127.0.0.1"], env, command=OPERATOR, log_path=log
        ) as operator:
            yield Cluster(kube, operator, progress, metrics_port, health_port)
    finally:
        progress.close()


@pytest.fixture
def ns(cluster: Cluster) -> str:
    """A fresh namespace per test; the progress endpoint starts each test answering 404."""
    cluster.progress.payload = None
    return f"t-{uuid.uuid4().hex[:8]}"


# -- creation -----------------------------------------------------------------------------------


def test_create_makes_an_owned_configmap_and_job_and_reports_pending(cluster: Cluster, ns: str) -> None:
    sft = cluster.create("llama", ns)
    job = cluster.wait_job("llama", ns)
    configmap = cluster.client.get("v1", "configmaps", ns, "llama-run-config")
    for child in (job, configmap):
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("SFTJob", "llama", sft["metadata"]["uid"], True)
    assert json.loads(configmap["data"]["run-config.json"])  # the run config the pod mounts
    assert [c["name"] for c in job["spec"]["template"]["spec"]["initContainers"]] == ["sanity-check"]

    obj = cluster.wait_phase("llama", ns, "Pending")
    status = obj["status"]
    assert (status["jobName"], status["observedGeneration"]) == ("llama-sft", 1)
    cond = cluster.condition(obj, "SanityChecked")
    assert (cond["status"], cond["reason"]) == ("Unknown", "JobCreated")
    assert "finalizers" not in obj["metadata"]  # nothing blocks deletion of a job that is not running
    events = cluster.wait("a JobCreated event", lambda: [e for e in cluster.events(ns, "llama") if e["reason"] == "JobCreated"])
    assert events[0]["message"] == "Created ConfigMap llama-run-config, Job llama-sft."


def test_a_multi_node_job_gets_a_headless_service_and_reports_from_node_0(cluster: Cluster, ns: str) -> None:
    sft = cluster.create("duo", ns, resources={"gpus": 1, "nodes": 2})
    job = cluster.wait_job("duo", ns)
    service = cluster.client.get("v1", "services", ns, "duo-sft")
    assert service["metadata"]["ownerReferences"][0]["uid"] == sft["metadata"]["uid"]
    assert (job["spec"]["completionMode"], job["spec"]["parallelism"]) == ("Indexed", 2)
    events = cluster.wait("a JobCreated event", lambda: [e for e in cluster.events(ns, "duo") if e["reason"] == "JobCreated"])
    assert events[0]["message"] == "Created ConfigMap duo-run-config, Service duo-sft, Job duo-sft."

    leader, other = cluster.start_pod(job, "a1", index=0), cluster.start_pod(job, "b2", index=1)
    waited = Outcome(ok=True, reason="Passed", message="node 1: node 0 ran the sanity check and started training (waited 1 s)")
    cluster.kubelet(ns, other, pod_status("Running", init=terminated(0, "Completed", waited.to_termination_message()),
                                          main=running()))
    cluster.kubelet(ns, leader, pod_status("Pending", init=running(), main=waiting("PodInitializing")))
    obj = cluster.wait_phase("duo", ns, "SanityChecking")  # node 1's wait is not node 0's check
    assert "sanityCheck" not in obj["status"]

    cluster.progress.payload = {"stage": "training", "step": 7, "totalSteps": 100}
    cluster.kubelet(ns, leader, pod_status("Running", init=terminated(0, "Completed", SANITY_PASSED.to_termination_message()),
                                           main=running()))
    obj = cluster.wait_sftjob("duo", ns, "node 0's progress", lambda o: o["status"].get("progress", {}).get("step") == 7)
    assert obj["status"]["phase"] == "Training" and obj["status"]["sanityCheck"]["passed"] is True


def test_job_deleted_mid_run_fails_the_sftjob_instead_of_waiting_forever(cluster: Cluster, ns: str) -> None:
    cluster.create("gone", ns)
    cluster.wait_job("gone", ns)
    cluster.wait_phase("gone", ns, "Pending")
    cluster.client.delete("batch/v1", "jobs", ns, "gone-sft")
    obj = cluster.wait_phase("gone", ns, "Failed")
    cond = cluster.condition(obj, "Failed")
    assert "Job gone-sft was deleted before it finished" in cond["message"]


def test_invalid_spec_fails_naming_the_field_and_creates_nothing(cluster: Cluster, ns: str) -> None:
    cluster.create("bad", ns, training={"learningRate": -1})
    obj = cluster.wait_phase("bad", ns, "Failed")
    cond = cluster.condition(obj, "Failed")
    assert (cond["status"], cond["reason"]) == ("True", "InvalidSpec")
    assert cond["message"].startswith("Invalid spec: spec.training.learningRate: ")
    with pytest.raises(ApiError) as e:
        cluster.client.get("batch/v1", "jobs", ns, "bad-sft")
    assert e.value.status == 404
    assert cluster.wait("an InvalidSpec event", lambda: [e for e in cluster.events(ns, "bad") if e["reason"] == "InvalidSpec"])


def test_a_strategy_this_release_cannot_run_fails_before_any_child_exists(cluster: Cluster, ns: str) -> None:
    cluster.create("sharded", ns, resources={"gpus": 2, "strategy": "fsdp"})
    cond = cluster.condition(cluster.wait_phase("sharded", ns, "Failed"), "Failed")
    assert cond["reason"] == "InvalidSpec" and "spec.resources.strategy: fsdp is not available" in cond["message"]
    for api, plural, name in (("batch/v1", "jobs", "sharded-sft"), ("v1", "configmaps", "sharded-run-config")):
        with pytest.raises(ApiError) as e:
            cluster.client.get(api, plural, ns, name)
        assert e.value.status == 404


def test_a_forbidden_job_is_reported_in_status_and_created_once_allowed(cluster: Cluster, ns: str) -> None:
    """A 403 on Job creation (RBAC, ResourceQuota, admission): Pending with the reason and one Event, not silence."""
    quota = 'jobs.batch "quota-sft" is forbidden: exceeded quota: gpu-quota, requested: requests.nvidia.com/gpu=1'
    cluster.kube.call(cluster.kube.emulator.refuse, "jobs", ns, 403, "Forbidden", quota)
    cluster.create("quota", ns)
    obj = cluster.wait_sftjob("quota", ns, "CreateForbidden", lambda o: o.get("status", {}).get("conditions"))
    assert obj["status"]["phase"] == "Pending"
    cond = cluster.condition(obj, "SanityChecked")
    assert (cond["status"], cond["reason"]) == ("False", "CreateForbidden")
    assert "refused to create Job quota-sft (HTTP 403: " + quota in cond["message"]
    assert "The SFTJob itself is valid" in cond["message"] and "Retrying every 10 s" in cond["message"]
    assert "Invalid spec" not in cond["message"] and "jobName" not in obj["status"]
    events = cluster.wait("a CreateForbidden event", lambda: [e for e in cluster.events(ns, "quota") if e["reason"] == "CreateForbidden"])
    assert events[0]["type"] == "Warning"
    cluster.kube.call(cluster.kube.emulator.allow, "jobs", ns)
    cluster.wait_job("quota", ns)
    obj = cluster.wait_sftjob("quota", ns, "started", lambda o: o.get("status", {}).get("jobName") == "quota-sft", timeout=60)
    assert cluster.condition(obj, "SanityChecked")["reason"] == "JobCreated"
    assert len([e for e in cluster.events(ns, "quota") if e["reason"] == "CreateForbidden"]) == 1


def test_a_job_rejected_by_admission_fails_without_blaming_the_spec(cluster: Cluster, ns: str) -> None:
    denial = "ValidatingAdmissionPolicy 'gpu-jobs' denied request: GPU jobs must set a priority class"
    cluster.kube.call(cluster.kube.emulator.refuse, "jobs", ns, 422, "Invalid", denial)
    cluster.create("denied", ns)
    obj = cluster.wait_phase("denied", ns, "Failed")
    cond = cluster.condition(obj, "Failed")
    assert cond["reason"] == "CreateRejected"
    assert denial in cond["message"] and "spec is valid" in cond["message"]
    assert "InvalidSpec" not in json.dumps(obj["status"]) and "Fix the field" not in cond["message"]
    assert cluster.wait("a CreateRejected event", lambda: [e for e in cluster.events(ns, "denied") if e["reason"] == "CreateRejected"])
    cluster.kube.call(cluster.kube.emulator.allow, "jobs", ns)


def test_a_local_manifest_is_refused_naming_each_local_field(cluster: Cluster, ns: str) -> None:
    cluster.create("local", ns, model={"source": "~/.cache/sftjob/demo-model"},
                   dataset={"train": "data/train.jsonl", "validation": "data/val.jsonl"}, output={"uri": "file:///tmp/out"})
    obj = cluster.wait_phase("local", ns, "Failed")
    cond = cluster.condition(obj, "Failed")
    assert cond["reason"] == "InvalidSpec"
    for field in ("spec.model.source", "spec.dataset.train", "spec.dataset.validation", "spec.output.uri"):
        assert f"{field}: " in cond["message"]
    with pytest.raises(ApiError):
        cluster.client.get("batch/v1", "jobs", ns, "local-sft")


def test_fixing_an_invalid_spec_starts_the_job(cluster: Cluster, ns: str) -> None:
    cluster.create("fixed", ns, training={"learningRate": -1})
    cluster.wait_phase("fixed", ns, "Failed")
    cluster.client.patch(API, "sftjobs", ns, "fixed", {"spec": {"training": {"learningRate": 2e-5}}})
    cluster.wait_job("fixed", ns)
    obj = cluster.wait_phase("fixed", ns, "Pending")
    # The InvalidSpec failure is gone, and the summary answers the fixed spec.
    assert [c["type"] for c in obj["status"]["conditions"]] == ["SanityChecked", "Ready", "Reconciling", "Stalled"]
    assert obj["status"]["observedGeneration"] == 2 and cluster.condition(obj, "Stalled")["observedGeneration"] == 2
    assert cluster.condition(obj, "Stalled")["status"] == "False" and kstatus(obj)[0] == IN_PROGRESS


def test_queued_job_is_created_suspended_with_the_queue_label(cluster: Cluster, ns: str) -> None:
    cluster.create("queued", ns, queueName="gpu-queue")
    job = cluster.wait_job("queued", ns)
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    obj = cluster.wait_phase("queued", ns, "Queued")
    assert cluster.condition(obj, "SanityChecked")["reason"] == "WaitingForQuota"


# -- following the Job ---------------------------------------------------------------------------


def test_lifecycle_from_sanity_check_to_succeeded_with_live_progress(cluster: Cluster, ns: str) -> None:
    cluster.create("life", ns)
    job = cluster.wait_job("life", ns)
    pod = cluster.start_pod(job)

    cluster.kubelet(ns, pod, pod_status("Pending", init=running(), main=waiting("PodInitializing")))
    cluster.wait_phase("life", ns, "SanityChecking")

    cluster.progress.payload = {"stage": "training", "step": 40, "totalSteps": 200, "epoch": 0.6, "loss": 1.4321,
                                "evalLoss": 1.51, "learningRate": 2e-5, "gradNorm": 0.9, "tokensPerSecond": 1234.5,
                                "etaSeconds": 725}
    cluster.kubelet(ns, pod, pod_status("Running", init=terminated(0, "Completed", SANITY_PASSED.to_termination_message()),
                                        main=running()))
    obj = cluster.wait_sftjob("life", ns, "training progress", lambda o: o["status"].get("progress", {}).get("step") == 40)
    status = obj["status"]
    assert status["phase"] == "Training"
    assert status["progress"] == {"stage": "training", "step": 40, "totalSteps": 200, "epoch": 0.6, "loss": 1.4321,
                                  "evalLoss": 1.51, "learningRate": 2e-5, "gradNorm": 0.9, "tokensPerSecond": 1234.5,
                                  "etaSeconds": 725, "eta": "12m 05s"}
    assert status["sanityCheck"]["passed"] is True
    assert cluster.condition(obj, "SanityChecked")["reason"] == "Passed"
    assert not obj["metadata"].get("finalizers")  # polling needs none: deleting a running SFTJob never waits
    ready, reconciling = cluster.condition(obj, "Ready"), cluster.condition(obj, "Reconciling")
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "Training", "Training: The train container is running.")
    assert (reconciling["status"], reconciling["reason"]) == ("True", "Running")
    assert kstatus(obj)[0] == IN_PROGRESS and not kubectl_wait_met(obj, "Ready")

    cluster.progress.payload = {"stage": "training", "step": 41, "totalSteps": 200, "loss": 1.40}
    cluster.wait("the next poll", lambda: cluster.sftjob("life", ns)["status"]["progress"]["step"] == 41)

    cluster.progress.payload = {"stage": "exporting", "step": 200, "totalSteps": 200}
    cluster.wait_phase("life", ns, "Exporting")

    best = BestCheckpoint(uri="s3://models/life/best", step=180, evalLoss=0.8123)
    outcome = Outcome(ok=True, bestCheckpoint=best, resolved={"learningRate": 2e-5, "gradientAccumulationSteps": 4})
    cluster.kubelet(ns, pod, pod_status("Succeeded", init=terminated(0, "Completed"),
                                        main=terminated(0, "Completed", outcome.to_termination_message())))
    cluster.job_controller(ns, job["metadata"]["name"], job_finished("Complete", "CompletionsReached", "done"))
    obj = cluster.wait_phase("life", ns, "Succeeded")
    assert obj["status"]["bestCheckpoint"] == {"uri": "s3://models/life/best", "step": 180, "evalLoss": 0.8123}
    assert obj["status"]["resolved"] == {"learningRate": 2e-5, "gradientAccumulationSteps": 4}
    assert cluster.condition(obj, "Succeeded")["message"] == (
        "Training finished; the checkpoint (step 180, eval loss 0.8123) is at s3://models/life/best."
    )
    # What `kubectl wait --for=condition=Ready` and Flux read.
    ready = cluster.condition(obj, "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == ("True", "Completed", cluster.condition(obj, "Succeeded")["message"])
    assert [cluster.condition(obj, t)["status"] for t in ("Reconciling", "Stalled")] == ["False", "False"]
    assert ready["observedGeneration"] == obj["metadata"]["generation"] == obj["status"]["observedGeneration"]
    assert kstatus(obj)[0] == CURRENT and kubectl_wait_met(obj, "Ready")
    expected = {"JobCreated", "SanityChecking", "Training", "Exporting", "Succeeded"}
    cluster.wait("transition events", lambda: {e["reason"] for e in cluster.events(ns, "life")} >= expected)
    # The summary conditions restate the others: they add no Events of their own.
    assert {e["reason"] for e in cluster.events(ns, "life")} == expected


def test_sanity_failure_fails_with_the_report(cluster: Cluster, ns: str) -> None:
    cluster.create("sanity", ns)
    job = cluster.wait_job("sanity", ns)
    pod = cluster.start_pod(job)
    outcome = Outcome(ok=False, reason="SanityAllMasked",
                      message="Every sampled row has no trained token: check dataset.format and the chat template.",
                      sanity=SanityResult(passed=False, reason="SanityAllMasked", rows=32, maskedRows=32))
    cluster.kubelet(ns, pod, pod_status("Failed", init=terminated(10, "Error", outcome.to_termination_message()),
                                        main=waiting("PodInitializing")))
    cluster.job_controller(ns, job["metadata"]["name"], job_finished("Failed", "PodFailurePolicy", "exit code 10"))
    obj = cluster.wait_phase("sanity", ns, "Failed")
    cond = cluster.condition(obj, "Failed")
    assert (cond["reason"], cond["message"]) == ("SanityAllMasked", outcome.message)
    assert obj["status"]["sanityCheck"] == {"passed": False, "reason": "SanityAllMasked", "rows": 32, "maskedRows": 32}
    stalled = cluster.condition(obj, "Stalled")
    assert (stalled["status"], stalled["reason"], stalled["message"]) == ("True", "SanityAllMasked", outcome.message)
    assert cluster.condition(obj, "Ready")["status"] == "False" and kstatus(obj) == (FAILED, outcome.message)
    assert kubectl_wait_met(obj, "Stalled") and not kubectl_wait_met(obj, "Ready")
    events = cluster.wait("a Warning event", lambda: [e for e in cluster.events(ns, "sanity") if e["type"] == "Warning"])
    assert events[0]["reason"] == "SanityAllMasked"


SANITY_FAILURES = [
    SanityResult(passed=False, reason="SanityTruncated", rows=300, maskedRows=300, truncatedRows=300, truncatedAnswers=300,
                 suggestedMaxSeqLength=512, message="300 of 300 training rows lose answer tokens to "
                 "spec.training.maxSeqLength=64 (300 lose the whole answer, e.g. train.jsonl:1): set "
                 "spec.training.maxSeqLength to at least 512"),
    SanityResult(passed=False, reason="SanityEmptyAnswers", rows=300, emptyAnswers=4,
                 message="4 of 300 training rows have answers that are empty after stripping whitespace (train.jsonl:3)"),
    SanityResult(passed=False, reason="SanityNoEndOfTurn", rows=300, maskedRows=0,
                 message="no trained token is the end of turn: the model would never learn to stop"),
    SanityResult(passed=False, reason="SanityDiverged", rows=64, initialLoss=4.8, finalLoss=714.7,
                 message="the loss grew from 4.8016 to 714.6882 (148.8x) over 12 steps: lower spec.training.learningRate 3x"),
]


@pytest.mark.parametrize("report", SANITY_FAILURES, ids=[r.reason for r in SANITY_FAILURES])
def test_each_sanity_reason_is_shown_in_the_failed_condition_and_the_report(cluster: Cluster, ns: str, report) -> None:
    cluster.create("gate", ns)
    job = cluster.wait_job("gate", ns)
    pod = cluster.start_pod(job)
    outcome = Outcome(ok=False, reason=report.reason, message=f"sanity check failed: {report.message}", sanity=report)
    cluster.kubelet(ns, pod, pod_status("Failed", init=terminated(10, "Error", outcome.to_termination_message()),
                                        main=waiting("PodInitializing")))
    cluster.job_controller(ns, job["metadata"]["name"], job_finished("Failed", "PodFailurePolicy", "exit code 10"))
    obj = cluster.wait_phase("gate", ns, "Failed")
    cond = cluster.condition(obj, "Failed")
    assert (cond["reason"], cond["message"]) == (report.reason, outcome.message)
    assert cluster.condition(obj, "SanityChecked")["reason"] == report.reason
    assert obj["status"]["sanityCheck"] == report.model_dump(mode="json", exclude_none=True)


def test_oom_killed_training_fails_with_out_of_memory(cluster: Cluster, ns: str) -> None:
    cluster.create("oom", ns)
    job = cluster.wait_job("oom", ns)
    pod = cluster.start_pod(job)
    cluster.kubelet(ns, pod, pod_status("Running", init=terminated(0, "Completed"), main=running()))
    cluster.wait_phase("oom", ns, "Training")
    # This pod serves no progress (404): the poller logs it and carries on.
    cluster.wait("a skipped poll in the log", lambda: "answered HTTP 404; skipped" in cluster.operator.log_text())
    assert cluster.sftjob("oom", ns)["status"]["phase"] == "Training"
    cluster.kubelet(ns, pod, pod_status("Failed", init=terminated(0, "Completed"), main=terminated(137, "OOMKilled")))
    cluster.job_controller(ns, job["metadata"]["name"], job_finished("Failed", "BackoffLimitExceeded", "backoff limit"))
    obj = cluster.wait_phase("oom", ns, "Failed")
    cond = cluster.condition(obj, "Failed")
    assert cond["reason"] == "OutOfMemory"
    assert "spec.training.perDeviceBatchSize" in cond["message"]


def test_sanity_check_progress_is_shown_while_the_pod_is_pending(cluster: Cluster, ns: str) -> None:
    """Init containers run while the pod's phase is Pending: the sanity check's progress is polled all the same."""
    cluster.create("gate", ns)
    job = cluster.wait_job("gate", ns)
    pod = cluster.start_pod(job)
    cluster.progress.payload = {"stage": "sanity", "step": 3, "totalSteps": 10, "loss": 2.25}
    cluster.kubelet(ns, pod, pod_status("Pending", init=running(), main=waiting("PodInitializing")))
    obj = cluster.wait_sftjob("gate", ns, "sanity progress", lambda o: o["status"].get("progress", {}).get("step") == 3)
    assert obj["status"]["phase"] == "SanityChecking"
    assert obj["status"]["progress"] == {"stage": "sanity", "step": 3, "totalSteps": 10, "loss": 2.25}


def test_a_retried_failure_is_one_event_with_a_hint_that_fits_the_job(cluster: Cluster, ns: str) -> None:
    # gradientCheckpointing is on and LoRA is used: the hint must not suggest either.
    cluster.create("retry", ns, training={"gradientCheckpointing": True, "lora": {"r": 8}})
    job = cluster.wait_job("retry", ns)
    pod = cluster.start_pod(job)
    cluster.kubelet(ns, pod, pod_status("Running", init=terminated(0, "Completed"), main=running()))
    cluster.wait_phase("retry", ns, "Training")
    cluster.kubelet(ns, pod, pod_status("Failed", init=terminated(0, "Completed"), main=terminated(137, "OOMKilled")))
    cluster.job_controller(ns, job["metadata"]["name"], {"active": 0, "failed": 1})
    obj = cluster.wait_phase("retry", ns, "Pending")
    cond = cluster.condition(obj, "Training")
    assert cond["reason"] == "OutOfMemory" and "1 failure(s) so far" in cond["message"]
    assert "gradientCheckpointing" not in cond["message"] and "LoRA" not in cond["message"]
    cluster.wait("the OutOfMemory event", lambda: [e for e in cluster.events(ns, "retry") if e["reason"] == "OutOfMemory"])
    time.sleep(1.0)  # let any second Event with the same news arrive
    same = [e for e in cluster.events(ns, "retry") if e["message"] == cond["message"]]
    assert [(e["type"], e["reason"]) for e in same] == [("Warning", "OutOfMemory")]


def test_suspend_and_resume_patch_the_job(cluster: Cluster, ns: str) -> None:
    cluster.create("pause", ns)
    cluster.wait_phase("pause", ns, "Pending")
    cluster.client.patch(API, "sftjobs", ns, "pause", {"spec": {"suspend": True}})
    cluster.wait("the Job to be suspended", lambda: cluster.client.get("batch/v1", "jobs", ns, "pause-sft")["spec"]["suspend"])
    obj = cluster.wait_phase("pause", ns, "Suspended")
    assert cluster.condition(obj, "Suspended")["status"] == "True"
    assert obj["status"]["observedGeneration"] == 2
    assert [cluster.condition(obj, t)["observedGeneration"] for t in ("Ready", "Reconciling", "Stalled")] == [2, 2, 2]
    assert cluster.condition(obj, "Reconciling")["status"] == "False"
    cluster.client.patch(API, "sftjobs", ns, "pause", {"spec": {"suspend": False}})
    cluster.wait("the Job to be resumed", lambda: not cluster.client.get("batch/v1", "jobs", ns, "pause-sft")["spec"]["suspend"])
    obj = cluster.wait_phase("pause", ns, "Pending")
    assert cluster.condition(obj, "Suspended")["status"] == "False"


def test_spec_edits_after_the_job_exists_are_reported_not_applied(cluster: Cluster, ns: str) -> None:
    cluster.create("edit", ns)
    job = cluster.wait_job("edit", ns)
    cluster.wait_phase("edit", ns, "Pending")
    cluster.client.patch(API, "sftjobs", ns, "edit", {"spec": {"training": {"learningRate": 1e-4}}})
    obj = cluster.wait_sftjob("edit", ns, "the ignored-change condition", lambda o: any(
        c["type"] == "SpecChangeIgnored" for c in o["status"].get("conditions", [])))
    cond = cluster.condition(obj, "SpecChangeIgnored")
    assert cond["message"].startswith("Changes to spec.training.learningRate were not applied: Job edit-sft already runs")
    assert "new metadata.name" in cond["message"]
    assert obj["status"]["observedGeneration"] == 2 and cluster.condition(obj, "Ready")["observedGeneration"] == 2
    assert cluster.client.get("batch/v1", "jobs", ns, "edit-sft")["metadata"]["resourceVersion"] == job["metadata"]["resourceVersion"]


# -- robustness ------------------------------------------------------------------------------------


def test_lost_create_answer_is_retried_without_a_duplicate(cluster: Cluster, ns: str) -> None:
    # The Job is stored, but the operator is told 500: its retry meets 409 and must accept its own Job.
    cluster.kube.call(lambda: cluster.kube.emulator["post", kmock.resource("batch/v1/jobs"), kmock.namespace(ns)] << 500)
    cluster.create("lost", ns)
    obj = cluster.wait_phase("lost", ns, "Pending")
    assert obj["status"]["jobName"] == "lost-sft"
    assert [j["metadata"]["name"] for j in cluster.client.list("batch/v1", "jobs", ns)] == ["lost-sft"]


def test_operator_killed_inside_the_create_handler_creates_no_duplicate(cluster: Cluster, ns: str) -> None:
    # The Job POST is stored, then its answer never comes: the operator is killed while it waits.
    async def never_answer() -> None:
        import asyncio
        await asyncio.sleep(3600)

    cluster.kube.call(lambda: cluster.kube.emulator["post", kmock.resource("batch/v1/jobs"), kmock.namespace(ns)] << never_answer)
    cluster.create("killed", ns)
    job = cluster.wait_job("killed", ns)
    assert "status" not in cluster.sftjob("killed", ns) or not cluster.sftjob("killed", ns)["status"].get("jobName")
    cluster.operator.kill()
    since = len(cluster.operator.log_text())
    cluster.operator.start()
    obj = cluster.wait_phase("killed", ns, "Pending")
    assert obj["status"]["jobName"] == "killed-sft"
    jobs = cluster.client.list("batch/v1", "jobs", ns)
    assert [(j["metadata"]["name"], j["metadata"]["uid"]) for j in jobs] == [("killed-sft", job["metadata"]["uid"])]
    assert "already exists and belongs to this SFTJob" in cluster.operator.log_text()[since:]


def test_restart_mid_training_continues_the_status(cluster: Cluster, ns: str) -> None:
    cluster.create("restart", ns)
    job = cluster.wait_job("restart", ns)
    pod = cluster.start_pod(job)
    cluster.kubelet(ns, pod, pod_status("Running", init=terminated(0, "Completed", SANITY_PASSED.to_termination_message()),
                                        main=running()))
    before = cluster.wait_phase("restart", ns, "Training")

    cluster.operator.kill()
    # While the operator is down, the job finishes.
    outcome = Outcome(ok=True, bestCheckpoint=BestCheckpoint(uri="s3://models/restart/best", step=10, evalLoss=0.5))
    cluster.kubelet(ns, pod, pod_status("Succeeded", init=terminated(0, "Completed"),
                                        main=terminated(0, "Completed", outcome.to_termination_message())))
    cluster.job_controller(ns, "restart-sft", job_finished("Complete", "CompletionsReached", "done"))
    cluster.operator.start()

    obj = cluster.wait_phase("restart", ns, "Succeeded")
    assert obj["status"]["bestCheckpoint"]["uri"] == "s3://models/restart/best"
    assert obj["status"]["sanityCheck"] == before["status"]["sanityCheck"]  # nothing lost
    assert cluster.condition(obj, "SanityChecked")["lastTransitionTime"] == cluster.condition(before, "SanityChecked")["lastTransitionTime"]
    jobs = cluster.client.list("batch/v1", "jobs", ns)
    assert [(j["metadata"]["name"], j["metadata"]["uid"]) for j in jobs] == [("restart-sft", job["metadata"]["uid"])]


def test_delete_leaves_children_to_the_garbage_collector(cluster: Cluster, ns: str) -> None:
    sft = cluster.create("gone", ns)
    job = cluster.wait_job("gone", ns)
    pod = cluster.start_pod(job)
    cluster.kubelet(ns, pod, pod_status("Running", init=terminated(0, "Completed"), main=running()))
    cluster.wait_phase("gone", ns, "Training")
    cluster.client.delete(API, "sftjobs", ns, "gone")
    with pytest.raises(ApiError) as e:  # no finalizer: gone at once, even while training
        cluster.sftjob("gone", ns)
    assert e.value.status == 404
    # The emulator has no garbage collector: what matters is that the children point at the SFTJob.
    for api, plural, name in (("batch/v1", "jobs", "gone-sft"), ("v1", "configmaps", "gone-run-config")):
        owners = cluster.client.get(api, plural, ns, name)["metadata"]["ownerReferences"]
        assert [(o["kind"], o["uid"], o.get("blockOwnerDeletion")) for o in owners] == [("SFTJob", sft["metadata"]["uid"], True)]


def test_hundred_sftjobs_at_once_get_exactly_a_hundred_jobs(cluster: Cluster, ns: str) -> None:
    """The one burst test (the emulator's own tests leave load to this one): 100 at once, each started exactly once."""
    names = [f"burst-{i:03d}" for i in range(100)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        owners = {o["metadata"]["uid"] for o in pool.map(lambda n: cluster.create(n, ns), names)}
    cluster.wait("100 Jobs", lambda: len(cluster.client.list("batch/v1", "jobs", ns)) >= 100, timeout=120)
    cluster.wait("every SFTJob Pending", lambda: all(
        o.get("status", {}).get("phase") == "Pending" for o in cluster.client.list(API, "sftjobs", ns)), timeout=120)
    jobs = cluster.client.list("batch/v1", "jobs", ns)
    assert sorted(j["metadata"]["name"] for j in jobs) == [f"{n}-sft" for n in names]
    assert {j["metadata"]["ownerReferences"][0]["uid"] for j in jobs} == owners
    assert len(cluster.client.list("v1", "configmaps", ns)) == 100
    assert {o["status"]["jobName"] for o in cluster.client.list(API, "sftjobs", ns)} == {f"{n}-sft" for n in names}

    def created_events() -> list[dict[str, Any]] | None:
        found = [e for e in cluster.client.list("v1", "events", ns) if e["reason"] == "JobCreated"]
        return found if len(found) >= len(names) else None

    events = cluster.wait("100 JobCreated events", created_events)
    assert len({e["involvedObject"]["uid"] for e in events}) == len(events) == 100  # one each, none lost in the queue


# -- health, metrics, logs ---------------------------------------------------------------------


def test_liveness_metrics_and_json_logs(cluster: Cluster, ns: str) -> None:
    cluster.create("observed", ns)
    cluster.wait_phase("observed", ns, "Pending")
    with urllib.request.urlopen(f"http://127.0.0.1:{cluster.health_port}/healthz", timeout=10) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{cluster.metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    pending = [line for line in text.splitlines() if line.startswith('sftjob_operator_sftjobs{phase="Pending"}')]
    assert pending and float(pending[0].split()[-1]) >= 1
    assert "sftjob_operator_reconcile_seconds_bucket" in text
    assert "# TYPE sftjob_operator_reconcile_errors_total counter" in text
    lines = [line for line in cluster.operator.log_text().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    assert any(r.get("message") == "created ConfigMap observed-run-config, Job observed-sft" for r in records)


def test_progress_polling_is_bounded_to_one_request_per_job_and_interval(cluster: Cluster, ns: str) -> None:
    cluster.create("rate", ns)
    job = cluster.wait_job("rate", ns)
    pod = cluster.start_pod(job)
    cluster.progress.payload = {"stage": "training", "step": 1, "totalSteps": 10}
    cluster.kubelet(ns, pod, pod_status("Running", init=terminated(0, "Completed"), main=running()))
    cluster.wait_sftjob("rate", ns, "first progress", lambda o: o["status"].get("progress", {}).get("step") == 1)
    window = 3.0
    before = cluster.progress.requests
    time.sleep(window)
    polled = cluster.progress.requests - before
    polled_jobs = [o for o in cluster.client.list(API, "sftjobs")
                   if o.get("status", {}).get("phase") in ("SanityChecking", "Training", "Exporting")]
    assert 1 <= polled <= len(polled_jobs) * (window / POLL_SECONDS + 2)


# -- pure parts of the wiring --------------------------------------------------------------------


def test_kopf_settings() -> None:
    import kopf

    from sftjob_operator.config import OperatorConfig
    from sftjob_operator.context import configure_settings

    settings = kopf.OperatorSettings()
    configure_settings(settings, OperatorConfig())
    assert settings.scanning.disabled is False  # cluster mode follows CRDs as they come and go
    assert settings.queueing.worker_limit is None or settings.queueing.worker_limit >= 500
    assert settings.posting.loggers is False
    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert set(settings.watching.label_selectors.collect(kopf.Resource("batch", "v1", "jobs"))) == {"sftjob.dev/job-name"}
    assert set(settings.watching.label_selectors.collect(kopf.Resource("", "v1", "pods"))) == {"sftjob.dev/job-name"}
    namespaced = kopf.OperatorSettings()
    configure_settings(namespaced, OperatorConfig(namespaces=("team-a",)))
    assert namespaced.scanning.disabled is True


def test_event_manifest_names_the_sftjob() -> None:
    from sftjob_operator.events import event_manifest

    sft = {"metadata": {"name": "llama", "namespace": "team-a", "uid": "u-1"}}
    event = event_manifest(sft, "Warning", "OutOfMemory", "x" * 2000, instance="op-0")
    assert event["involvedObject"] == {"apiVersion": API, "kind": "SFTJob", "name": "llama", "namespace": "team-a", "uid": "u-1"}
    assert (event["type"], event["reason"], len(event["message"])) == ("Warning", "OutOfMemory", 1024)
    assert event["metadata"] == {"generateName": "llama.", "namespace": "team-a"}


def test_diff_base_is_kopfs_essence_without_copying_what_it_drops() -> None:
    import kopf
    from sftjob_operator.context import KOPF_PREFIX, DiffBaseStorage

    ours = DiffBaseStorage(prefix=KOPF_PREFIX, key="last-handled-configuration", v1=False)
    kopfs = kopf.AnnotationsDiffBaseStorage(prefix=KOPF_PREFIX, key="last-handled-configuration", v1=False)
    sft = {
        "apiVersion": API, "kind": "SFTJob",
        "metadata": {"name": "a", "namespace": "n", "uid": "u", "resourceVersion": "7", "labels": {"team": "a"},
                     "annotations": {f"{KOPF_PREFIX}/last-handled-configuration": "{}", f"{KOPF_PREFIX}/kopf-managed": "yes",
                                     "kubectl.kubernetes.io/last-applied-configuration": "{}", "note": "kept"}},
        "spec": {"model": {"source": "m"}, "suspend": False},
        "status": {"phase": "Pending", "conditions": [{"type": "Training"}]},
    }
    for extra in (None, [("spec",)], [("status", "phase")]):
        body = kopf.Body(sft)
        assert json.dumps(ours.build(body=body, extra_fields=extra)) == json.dumps(kopfs.build(body=body, extra_fields=extra))
    bare = {"apiVersion": API, "kind": "SFTJob", "metadata": {"name": "a"}, "spec": {"model": {"source": "m"}}}
    variants = [
        bare,
        {**bare, "metadata": {"name": "a", "labels": {}, "annotations": {}}},
        {**bare, "metadata": {"name": "a", "annotations": {f"{KOPF_PREFIX}/last-handled-configuration": "{}"}}},  # not marked yet
        {**bare, "metadata": {"name": "a", "annotations": {  # another kopf operator's storage, and kopf's default prefix
            "other.example.com/kopf-managed": "yes", "other.example.com/last-handled-configuration": "{}",
            "kopf.zalando.org/touch-dummy": "x", "x.kopf.zalando.org/y": "z", "team.example.com/owner": "me"}}},
        {**bare, "metadata": {"name": "a", "labels": {"a": "1"}, "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}}},
        {**bare, "extra": {"kept": [1, {"x": None}]}},
    ]
    for variant in variants:
        body = kopf.Body(variant)
        assert json.dumps(ours.build(body=body)) == json.dumps(kopfs.build(body=body)), variant
    built = ours.build(body=kopf.Body(sft))
    built["spec"]["model"]["source"] = "changed"
    assert sft["spec"]["model"]["source"] == "m"  # a copy, as kopf's is
    job = kopf.Body({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "a-sft"}, "spec": {"x": 1}})
    assert ours.build(body=job) == {}  # no create/update handler ever reads a Job's essence


def test_kopfs_routine_success_lines_are_dropped_and_failures_kept() -> None:
    import logging

    from sftjob_operator.main import QuietRoutineSuccess

    quiet = QuietRoutineSuccess()

    def kept(message: str) -> bool:
        return quiet.filter(logging.LogRecord("kopf.objects", logging.INFO, "", 0, message, None, None))

    assert not kept("Handler 'sftjob_created' succeeded.") and not kept("Handler 'job_event' succeeded.")
    assert not kept("Creation is processed: 1 succeeded; 0 failed.")
    assert kept("Creation is processed: 0 succeeded; 1 failed.")
    assert kept("Handler 'sftjob_created' failed temporarily: HTTP 503") and kept("Handler 'sftjob_resumed' succeeded.")


def test_follower_keeps_sftjobs_by_uid_and_catches_up_only_when_it_can_help() -> None:
    import asyncio

    from sftjob_operator.config import OperatorConfig
    from sftjob_operator.follow import Follower
    from sftjob_operator.metrics import Metrics

    def sft(uid: str, **status: Any) -> dict[str, Any]:
        return {"metadata": {"name": "a", "namespace": "n", "uid": uid}, "spec": {}, "status": status}

    async def scenario() -> list[str]:
        follower = Follower(None, OperatorConfig(), Metrics(), None, None)  # type: ignore[arg-type]
        follower.attach({}, {})
        reconciled: list[str] = []

        async def reconcile(key: tuple[str, str]) -> None:
            reconciled.append(f"{follower._sftjob(key)['metadata']['uid']}:{follower._sftjob(key)['status'].get('phase')}")

        follower.reconcile = reconcile  # type: ignore[method-assign]

        async def changed(key: tuple[str, str], type: str | None, body: dict[str, Any]) -> None:
            if follower.keep(key, type, body):  # what kopf does with the handler's filter
                await follower.reconcile(key)

        key = ("n", "a")
        await changed(key, "ADDED", sft("u1"))
        await changed(key, "MODIFIED", sft("u1", phase="Pending", jobName="a-sft"))  # its own first status
        assert reconciled == [] and list(follower.phases()) == ["Pending"]
        await changed(key, "ADDED", sft("u3"))  # another object of that name (deleted, created again)
        await changed(("n", "b"), "ADDED", {**sft("b1"), "metadata": {"name": "b", "namespace": "n", "uid": "b1"}})
        await follower._reconcile(("n", "b"))  # b's Job changed before b's status showed jobName
        await changed(("n", "b"), "MODIFIED", {**sft("b1", phase="Pending", jobName="b-sft"),
                                                              "metadata": {"name": "b", "namespace": "n", "uid": "b1"}})
        await changed(key, None, sft("u1", phase="Training", jobName="a-sft"))  # listed after a restart
        await changed(key, "MODIFIED", sft("u1", phase="Succeeded", jobName="a-sft"))  # finished
        await changed(key, "DELETED", sft("u3"))  # a late event of another object of that name
        assert follower._sftjob(key)["metadata"]["uid"] == "u1"
        await changed(key, "DELETED", sft("u1", phase="Succeeded", jobName="a-sft"))
        assert follower._sftjob(key) is None and list(follower.phases()) == ["Pending"]  # b's
        return reconciled

    assert asyncio.run(scenario()) == ["b1:Pending", "u1:Training"]  # b catches up once; a when listed


def test_follower_gives_a_finished_sftjob_its_summary_and_observes_later_spec_edits() -> None:
    """A status written before Ready/Reconciling/Stalled existed gains them (no Job needed); an edit moves observedGeneration."""
    import asyncio
    import logging

    from sftjob_operator.conditions import apply_merge_patch
    from sftjob_operator.config import OperatorConfig
    from sftjob_operator.follow import Follower
    from sftjob_operator.metrics import Metrics

    class Kube:
        def __init__(self) -> None:
            self.status: dict[str, Any] = {"phase": "Succeeded", "jobName": "a-sft", "observedGeneration": 1, "conditions": [
                {"type": "Succeeded", "status": "True", "reason": "Completed", "message": "done",
                 "lastTransitionTime": "2026-11-25T12:00:00Z"}]}
            self.patches: list[dict[str, Any]] = []

        async def patch(self, api: str, kind: str, namespace: str, name: str, body: dict[str, Any], **_: Any) -> dict[str, Any]:
            self.patches.append(body["status"])
            self.status = apply_merge_patch(self.status, body["status"])
            return {"status": self.status}

    class Events:
        def __init__(self) -> None:
            self.posted: list[str] = []

        def post(self, ref: Any, type_: str, reason: str, message: str) -> None:
            self.posted.append(reason)

    kube, events = Kube(), Events()

    def body(generation: int) -> dict[str, Any]:
        return {"metadata": {"name": "a", "namespace": "n", "uid": "u1", "generation": generation},
                "spec": {"suspend": generation > 1}, "status": kube.status}

    async def scenario() -> None:
        follower = Follower(kube, OperatorConfig(), Metrics(), None, events)  # type: ignore[arg-type]
        follower.attach({}, {})  # its Job is long gone (ttlSecondsAfterFinished)
        key = ("n", "a")
        assert not follower.keep(key, None, body(1))  # finished: nothing to catch up
        await follower.resumed(key)
        await follower.resumed(key)  # nothing more to write
        assert await follower.spec_changed(key, body(2), {"suspend": False}, {"suspend": True}, logging.getLogger("t"))

    asyncio.run(scenario())
    assert len(kube.patches) == 2 and events.posted == []
    assert [c["type"] for c in kube.patches[0]["conditions"]] == ["Succeeded", "Ready", "Reconciling", "Stalled"]
    ready = next(c for c in kube.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["message"], ready["observedGeneration"]) == ("True", "done", 2)
    assert kube.status["observedGeneration"] == 2 and kube.status["phase"] == "Succeeded"
    assert kstatus({"metadata": {"generation": 2}, "status": kube.status})[0] == CURRENT


def test_events_are_posted_in_order_behind_the_create_path_and_drained_at_exit() -> None:
    import asyncio

    from sftjob_operator.events import EventPoster
    from sftjob_operator.kube import ApiError

    class Kube:
        def __init__(self) -> None:
            self.posted: list[str] = []

        async def create(self, obj: dict[str, Any]) -> None:
            await asyncio.sleep(0.01)
            if obj["reason"] == "Refused":
                raise ApiError(403, "Forbidden", "events are forbidden")
            if obj["reason"] == "Broken":
                raise RuntimeError("unexpected")
            self.posted.append(obj["message"])

    async def scenario() -> list[str]:
        kube = Kube()
        poster = EventPoster(kube, senders=2)  # type: ignore[arg-type]
        sft = {"metadata": {"name": "a", "namespace": "n", "uid": "u"}}
        for i, reason in enumerate(["JobCreated", "Refused", "Broken"] + ["JobCreated"] * 5):
            poster.post(sft, "Normal", reason, f"m{i}")
        assert kube.posted == []  # queued: post() returns at once
        await poster.drain()
        return kube.posted

    assert sorted(asyncio.run(scenario())) == ["m0", "m3", "m4", "m5", "m6", "m7"]  # the senders outlive failures


def test_events_wait_while_an_sftjob_is_being_created_but_never_longer_than_max_hold() -> None:
    import asyncio

    from sftjob_operator.burst import CreatePath
    from sftjob_operator.events import EventPoster

    class Kube:
        def __init__(self) -> None:
            self.posted: list[tuple[str, float]] = []

        async def create(self, obj: dict[str, Any]) -> None:
            self.posted.append((obj["message"], asyncio.get_running_loop().time()))

    async def scenario() -> None:
        kube = Kube()
        path = CreatePath()
        poster = EventPoster(kube, path, senders=2, max_hold=0.5)  # type: ignore[arg-type]
        sft = {"metadata": {"name": "a", "namespace": "n", "uid": "u"}}
        loop = asyncio.get_running_loop()
        with path.creating():
            poster.post(sft, "Normal", "JobCreated", "during")
            await asyncio.sleep(0.2)
            assert kube.posted == []  # held: a Job is still being created
        await asyncio.sleep(0.05)
        assert [m for m, _ in kube.posted] == ["during"]  # sent once the create path is done
        with path.creating():  # a create path that never ends holds an Event for max_hold only
            start = loop.time()
            poster.post(sft, "Normal", "JobCreated", "starved")
            while "starved" not in dict(kube.posted) and loop.time() - start < 10:
                await asyncio.sleep(0.05)
            assert dict(kube.posted)["starved"] - start >= 0.45  # sent while still creating, after max_hold
        await poster.drain()

    asyncio.run(scenario())
