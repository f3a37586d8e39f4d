"""The e2e tier: the chart, the CRD and the operator against a real Kubernetes API server.

Runs only when SFTJOB_E2E_KUBECONFIG points at a cluster (kind, k3s, a real
one, or a bare kube-apiserver with etcd and kube-controller-manager); an
admin kubeconfig, since it installs the chart. It proves what the emulator
cannot: the API server accepts the CRD and enforces its schema and CEL
rules, the chart's RBAC is enough for the operator, admission and quota
refusals reach status, and garbage collection removes the children.
See README, "End-to-end tests".
"""

from __future__ import annotations

import json

import pytest
import yaml

from sftjob.report import BestCheckpoint, Outcome, PlanSummary
from tests.e2e.cluster import RELEASE, REPO, Kubectl, wait
from tests.support.kstatus import CURRENT, FAILED, IN_PROGRESS, kstatus
from tests.support.playback import SANITY_PASSED, pod_status, running, terminated, waiting
from tests.support.playback import sftjob_manifest as sftjob

pytestmark = pytest.mark.e2e
CRD = "sftjobs.sftjob.dev"
TIMEOUT = 60


def status_of(k: Kubectl, name: str, ns: str) -> dict:
    return (k.get("sftjob", name, ns) or {}).get("status") or {}


def condition(status: dict, ctype: str) -> dict:
    return next((c for c in status.get("conditions") or [] if c["type"] == ctype), {})


def job_pod(k: Kubectl, ns: str, job: str) -> str:
    """The pod the real Job controller made for the Job."""
    pods = wait(f"the Job controller's pod for {job}", lambda: k.list("pods", ns, f"batch.kubernetes.io/job-name={job}"))
    return pods[0]["metadata"]["name"]


def kubelet(k: Kubectl, ns: str, pod: str, status: dict) -> None:
    """What the kubelet would write: container states, the pod IP (this machine: progress is served here)."""
    status = {**status, "podIPs": [{"ip": status["podIP"]}], "hostIP": "127.0.0.1", "startTime": "2026-12-01T12:00:00Z"}
    for key in ("initContainerStatuses", "containerStatuses"):
        for cs in status.get(key, []):
            cs.setdefault("image", "ghcr.io/sftjob/sftjob-runtime:0.1.0")
            cs.setdefault("imageID", "")
    k.patch_status("pod", pod, ns, status)


@pytest.fixture
def ns(kubectl: Kubectl):
    name = kubectl.namespace()
    yield name
    kubectl.delete("namespace", name, None, "--wait=false")


# -- install ---------------------------------------------------------------------------------------


def test_helm_installs_the_chart_and_the_crd(kubectl, helm_release):
    crd = kubectl.get("crd", CRD)
    established = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert established.get("Established") == "True" and established.get("NamesAccepted") == "True"
    assert crd["metadata"]["annotations"].get("helm.sh/resource-policy") == "keep"
    assert kubectl.get("deployment", RELEASE, RELEASE) is not None
    assert kubectl.get("clusterrole", RELEASE) is not None


def test_every_example_passes_server_side_dry_run_with_strict_validation(kubectl, helm_release, ns):
    for path in sorted((REPO / "examples").glob("*.yaml")):
        for doc in (d for d in yaml.safe_load_all(path.read_text()) if d):
            doc["metadata"]["namespace"] = ns
            done = kubectl.run("apply", "--dry-run=server", "--validate=strict", "-f", "-", input=json.dumps(doc), check=False)
            assert done.returncode == 0, f"{path.name}: {done.stderr}"


@pytest.mark.parametrize(("change", "message"), [
    ({"output": {"uri": "ftp://host/out"}}, "spec.output.uri: Invalid value"),
    ({"model": {"source": "https://example.com/m"}}, "spec.model.source: Invalid value"),
    ({"training": {"perDeviceBatchSize": 4, "effectiveBatchSize": 30}}, "must be a multiple of perDeviceBatchSize"),
    ({"training": {"learningRat": 1e-5}}, 'unknown field "spec.training.learningRat"'),
])
def test_the_api_server_refuses_what_the_crd_forbids(kubectl, helm_release, ns, change, message):
    done = kubectl.run("apply", "--validate=strict", "-f", "-", input=json.dumps(sftjob("bad", ns, **change)), check=False)
    assert done.returncode != 0 and message in done.stderr, done.stderr


def test_a_name_too_long_for_the_children_is_refused(kubectl, helm_release, ns):
    done = kubectl.create(sftjob("x" * 53, ns), check=False)
    assert done.returncode != 0 and "metadata.name must be a DNS label of at most 52 characters" in done.stderr


def test_a_multi_node_job_may_not_share_one_work_volume_claim(kubectl, helm_release, ns):
    manifest = sftjob("duo", ns, resources={"gpus": 1, "nodes": 2, "workVolumeClaim": "scratch"})
    done = kubectl.create(manifest, check=False)
    assert done.returncode != 0 and "a multi-node job gives each node's pod a scratch volume of its own" in done.stderr


# -- the lifecycle, with the operator as the chart's ServiceAccount ------------------------------------


def test_a_strategy_the_api_server_accepts_but_this_release_cannot_run_fails_with_no_job(kubectl, operator, ns):
    """strategy: fsdp passes the CRD (manifests stay valid for a later release); the operator refuses it, no GPU asked."""
    kubectl.create(sftjob("sharded", ns, resources={"gpus": 2, "strategy": "fsdp"}))
    status = wait("Failed", lambda: (s := status_of(kubectl, "sharded", ns)).get("phase") == "Failed" and s, TIMEOUT,
                  operator.log_tail)
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec" and "spec.resources.strategy: fsdp is not available" in failed["message"]
    assert kubectl.get("job", "sharded-sft", ns) is None and kubectl.get("configmap", "sharded-run-config", ns) is None



def test_a_two_node_job_is_one_indexed_job_a_headless_service_and_two_rendezvousing_pods(kubectl, operator, ns):
    """The chart's RBAC lets the operator create the Service; the real Job controller makes one pod per index."""
    log = operator.log_tail
    kubectl.create(sftjob("duo", ns, resources={"gpus": 1, "nodes": 2}))
    job = wait("the Indexed Job", lambda: kubectl.get("job", "duo-sft", ns), TIMEOUT, log)
    assert (job["spec"]["completionMode"], job["spec"]["completions"], job["spec"]["parallelism"]) == ("Indexed", 2, 2)
    service = kubectl.get("service", "duo-sft", ns)
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["metadata"]["ownerReferences"][0]["name"] == "duo"
    pods = wait("two pods", lambda: (p := kubectl.list("pods", ns, "batch.kubernetes.io/job-name=duo-sft")) and len(p) == 2 and p,
                TIMEOUT, log)
    by_index = {p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]: p for p in pods}
    assert sorted(by_index) == ["0", "1"]
    for index, pod in by_index.items():
        spec = pod["spec"]
        # The Job controller names each pod's host after its index, under the Service's subdomain.
        assert (spec["hostname"], spec["subdomain"]) == (f"duo-sft-{index}", "duo-sft")
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        [train] = spec["containers"]
        assert "--rdzv-backend=c10d" in train["command"] and "--nnodes=2" in train["command"]
        assert "--rdzv-endpoint=duo-sft-0.duo-sft:29400" in train["command"]
        assert "--local-addr=$(SFTJOB_NODE_HOST)" in train["command"]
        env = {e["name"]: e for e in train["env"]}
        assert "JOB_COMPLETION_INDEX" in env  # added by the Job controller: it knows the pods are indexed
        assert env["SFTJOB_NODE_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == \
            "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        assert env["SFTJOB_NODE_HOST"]["value"] == "duo-sft-$(SFTJOB_NODE_INDEX).duo-sft"
    wait("Pending", lambda: status_of(kubectl, "duo", ns).get("phase") == "Pending", TIMEOUT, log)



def test_lifecycle_pending_sanity_training_succeeded(kubectl, operator, progress, ns):
    log = operator.log_tail
    kubectl.create(sftjob("life", ns))
    job = wait("the Job", lambda: kubectl.get("job", "life-sft", ns), TIMEOUT, log)
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("SFTJob", "life", True)
    assert kubectl.get("configmap", "life-run-config", ns) is not None
    wait("Pending", lambda: status_of(kubectl, "life", ns).get("phase") == "Pending", TIMEOUT, log)
    pod = job_pod(kubectl, ns, "life-sft")

    progress.payload = {"stage": "sanity", "step": 2, "totalSteps": 10, "loss": 2.4}
    kubelet(kubectl, ns, pod, pod_status("Pending", init=running(), main=waiting("PodInitializing")))
    st = wait("SanityChecking with progress", lambda: (s := status_of(kubectl, "life", ns)).get("phase") == "SanityChecking"
              and s.get("progress", {}).get("step") == 2 and s, TIMEOUT, log)
    assert st["progress"]["stage"] == "sanity"

    progress.payload = {"stage": "training", "step": 40, "totalSteps": 200, "loss": 1.43, "etaSeconds": 725}
    plan = PlanSummary(strategy="ddp", fits=True, devices=1, memory="80 GB (assumed)", usableBytes=76 * 2**30,
                       ddpPeakBytes=3 * 2**30, message="fits one 80 GB GPU under DDP (~3.0 GiB per device)")
    checked = SANITY_PASSED.model_copy(update={"plan": plan})
    kubelet(kubectl, ns, pod, pod_status("Running", init=terminated(0, "Completed", checked.to_termination_message()),
                                         main=running()))
    st = wait("Training at step 40", lambda: (s := status_of(kubectl, "life", ns)).get("progress", {}).get("step") == 40 and s,
              TIMEOUT, log)
    assert st["phase"] == "Training" and st["sanityCheck"]["passed"] is True and st["progress"]["eta"] == "12m 05s"
    # The CRD's status schema keeps every field of the plan (a structural schema prunes what it does not declare).
    assert st["plan"] == plan.model_dump(mode="json", exclude_none=True)
    # Not Ready while it trains: a waiter times out (exit 1), and kstatus reads InProgress.
    early = kubectl.wait_for("sftjob/life", ns, "Ready", 2)
    assert early.returncode != 0 and "timed out" in early.stderr, early
    assert kstatus(kubectl.get("sftjob", "life", ns))[0] == IN_PROGRESS

    progress.payload = {"stage": "exporting", "step": 200, "totalSteps": 200, "etaSeconds": 5}
    best = BestCheckpoint(uri="s3://models/life", step=180, evalLoss=0.8123)
    outcome = Outcome(ok=True, bestCheckpoint=best, resolved={"learningRate": 2e-5})
    # The real Job controller turns a Succeeded pod into a Complete Job by itself.
    kubelet(kubectl, ns, pod, pod_status("Succeeded", init=terminated(0, "Completed"),
                                         main=terminated(0, "Completed", outcome.to_termination_message())))
    st = wait("Succeeded", lambda: (s := status_of(kubectl, "life", ns)).get("phase") == "Succeeded" and s, TIMEOUT, log)
    assert st["bestCheckpoint"] == {"uri": "s3://models/life", "step": 180, "evalLoss": 0.8123}
    assert "eta" not in st.get("progress", {}) and st.get("progress", {}).get("stage", "done") == "done"
    # What a CI script or Flux sees: the real kubectl wait returns, kstatus says Current, -o wide shows READY.
    done = kubectl.wait_for("sftjob/life", ns, "Ready", TIMEOUT)
    assert done.returncode == 0 and "condition met" in done.stdout, done
    obj = kubectl.get("sftjob", "life", ns)
    assert kstatus(obj)[0] == CURRENT and obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    wide = kubectl.run("get", "sftjobs", "life", "-n", ns, "-o", "wide").stdout.splitlines()
    assert wide[0].split()[:3] == ["NAME", "PHASE", "READY"] and wide[1].split()[:3] == ["life", "Succeeded", "True"], wide
    # Immutable once the Job exists: the API server's CEL transition rule refuses a change of training.
    done = kubectl.run("patch", "sftjob", "life", "-n", ns, "--type=merge", "-p", '{"spec": {"training": {"epochs": 9}}}',
                       check=False)
    assert done.returncode != 0 and "cannot change once the training Job exists" in done.stderr
    assert [j["metadata"]["name"] for j in kubectl.list("jobs", ns)] == ["life-sft"]


def test_oom_killed_pod_fails_with_out_of_memory(kubectl, operator, progress, ns):
    progress.payload = None
    kubectl.create(sftjob("oom", ns, backoffLimit=0, training={"gradientCheckpointing": True}))
    wait("the Job", lambda: kubectl.get("job", "oom-sft", ns), TIMEOUT, operator.log_tail)
    pod = job_pod(kubectl, ns, "oom-sft")
    kubelet(kubectl, ns, pod, pod_status("Running", init=terminated(0, "Completed"), main=running()))
    wait("Training", lambda: status_of(kubectl, "oom", ns).get("phase") == "Training", TIMEOUT, operator.log_tail)
    kubelet(kubectl, ns, pod, pod_status("Failed", init=terminated(0, "Completed"), main=terminated(137, "OOMKilled")))
    st = wait("Failed", lambda: (s := status_of(kubectl, "oom", ns)).get("phase") == "Failed" and s, TIMEOUT, operator.log_tail)
    cond = condition(st, "Failed")
    assert cond["reason"] == "OutOfMemory" and "gradientCheckpointing" not in cond["message"]
    # A waiter stops early on a failure: Stalled=True, with the failure's own reason.
    stalled = kubectl.wait_for("sftjob/oom", ns, "Stalled", TIMEOUT)
    assert stalled.returncode == 0 and "condition met" in stalled.stdout, stalled
    assert condition(st, "Stalled")["reason"] == "OutOfMemory" and condition(st, "Ready")["status"] == "False"
    assert kstatus(kubectl.get("sftjob", "oom", ns)) == (FAILED, cond["message"])


def test_a_quota_that_forbids_the_job_is_reported_then_the_job_starts(kubectl, operator, ns):
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-jobs", "namespace": ns},
             "spec": {"hard": {"count/jobs.batch": "0"}}}
    kubectl.create(quota)
    wait("the quota to be counted", lambda: (kubectl.get("resourcequota", "no-jobs", ns) or {}).get("status", {}).get("hard"))
    kubectl.create(sftjob("quota", ns))
    st = wait("CreateForbidden", lambda: (s := status_of(kubectl, "quota", ns)).get("conditions") and s, TIMEOUT, operator.log_tail)
    cond = condition(st, "SanityChecked")
    assert st["phase"] == "Pending" and cond["reason"] == "CreateForbidden"
    assert "exceeded quota" in cond["message"] and "The SFTJob itself is valid" in cond["message"]
    events = kubectl.list("events", ns)
    assert any(e["reason"] == "CreateForbidden" and e["involvedObject"]["name"] == "quota" for e in events)
    kubectl.delete("resourcequota", "no-jobs", ns)
    wait("the Job after the quota is gone", lambda: kubectl.get("job", "quota-sft", ns), 90, operator.log_tail)
    wait("jobName", lambda: status_of(kubectl, "quota", ns).get("jobName") == "quota-sft", TIMEOUT, operator.log_tail)


def test_an_admission_policy_that_rejects_the_job_fails_it_as_create_rejected(kubectl, operator, ns):
    name = f"sftjob-e2e-{ns}"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy", "metadata": {"name": name},
        "spec": {"failurePolicy": "Fail",
                 "matchConstraints": {"resourceRules": [{"apiGroups": ["batch"], "apiVersions": ["v1"],
                                                         "operations": ["CREATE"], "resources": ["jobs"]}]},
                 "validations": [{"expression": "has(object.spec.template.spec.priorityClassName)",
                                  "message": "GPU jobs must set a priority class"}]},
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding", "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}},
    }
    kubectl.create(policy)
    kubectl.create(binding)
    try:
        probe = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "probe", "namespace": ns},
                 "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}}
        # The policy takes a moment to be in force.
        wait("the policy in force", lambda: kubectl.run("create", "--dry-run=server", "-f", "-", input=json.dumps(probe),
                                                          check=False).returncode != 0)
        kubectl.create(sftjob("denied", ns))
        st = wait("Failed", lambda: (s := status_of(kubectl, "denied", ns)).get("phase") == "Failed" and s, TIMEOUT, operator.log_tail)
        cond = condition(st, "Failed")
        assert cond["reason"] == "CreateRejected", cond
        assert "GPU jobs must set a priority class" in cond["message"] and "spec is valid" in cond["message"]
        assert kubectl.get("job", "denied-sft", ns) is None
    finally:
        kubectl.delete("validatingadmissionpolicybinding", name)
        kubectl.delete("validatingadmissionpolicy", name)


def test_operator_sigterm_and_sigkill_mid_lifecycle_make_no_duplicates(kubectl, operator, ns):
    for i in range(10):
        kubectl.create(sftjob(f"burst-{i}", ns))
    operator.kill()  # SIGKILL while it works through the burst
    operator.start()
    wait("a Job per SFTJob", lambda: len(kubectl.list("jobs", ns)) == 10, 90, operator.log_tail)
    operator.stop()  # SIGTERM
    operator.start()
    wait("every status caught up", lambda: all(
        (s.get("status") or {}).get("jobName") for s in kubectl.list("sftjobs", ns)), 90, operator.log_tail)
    names = sorted(j["metadata"]["name"] for j in kubectl.list("jobs", ns))
    assert names == sorted(f"burst-{i}-sft" for i in range(10))
    assert len(kubectl.list("configmaps", ns, "sftjob.dev/component=run-config")) == 10


def test_deleting_an_sftjob_garbage_collects_its_children(kubectl, operator, ns):
    kubectl.create(sftjob("gone", ns))
    wait("the Job", lambda: kubectl.get("job", "gone-sft", ns), TIMEOUT, operator.log_tail)
    job_pod(kubectl, ns, "gone-sft")
    kubectl.delete("sftjob", "gone", ns, "--wait=true")
    wait("the garbage collector", lambda: kubectl.get("job", "gone-sft", ns) is None
         and kubectl.get("configmap", "gone-run-config", ns) is None
         and not kubectl.list("pods", ns, "batch.kubernetes.io/job-name=gone-sft"), 90)


def test_helm_uninstall_keeps_the_crd_and_the_sftjobs(kubectl, helm_release, operator, ns):
    kubectl.create(sftjob("kept", ns))
    wait("the Job", lambda: kubectl.get("job", "kept-sft", ns), TIMEOUT, operator.log_tail)
    helm_release.run("uninstall", RELEASE, "-n", RELEASE, "--wait")
    assert kubectl.get("crd", CRD) is not None
    assert kubectl.get("sftjob", "kept", ns) is not None
    assert kubectl.get("deployment", RELEASE, RELEASE) is None
