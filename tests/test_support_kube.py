"""The Kubernetes test support works: the emulator behaves like an API server, and a real kopf operator runs against it.

The operator here is a throwaway written to a temporary file (it is not the
product's operator): on SFTJob create it creates a Job owned by the SFTJob
and sets ``status.phase``; it mirrors the Job's state into
``status.jobPhase``; on delete it removes the Job (the emulator has no
garbage collector).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid

import kmock
import pytest

from tests.support.kube import (
    SFTJOB_API_VERSION,
    ApiError,
    KubeClient,
    running_emulator,
    wait_for,
)
from tests.support.operator_process import operator_process

PROOF_OPERATOR = '''
import asyncio
import os

import aiohttp
import kopf

SFTJOBS = ("sftjob.dev", "v1alpha1", "sftjobs")


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_):
    settings.scanning.disabled = True  # the emulator cannot serve kopf's namespace/CRD scanning
    info = kopf.login_with_kubeconfig(settings=settings)
    memo.api = info.server.rstrip("/")
    memo.session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {info.token}"})


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_):
    await memo.session.close()


@kopf.on.create(*SFTJOBS)
async def create_job(body, name, namespace, memo, patch, **_):
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
                                       "containers": [{"name": "main", "image": "busybox", "command": ["true"]}]}}},
    }
    kopf.adopt(job, owner=body)
    async with memo.session.post(f"{memo.api}/apis/batch/v1/namespaces/{namespace}/jobs", json=job) as rsp:
        if rsp.status not in (200, 201, 409):  # 409: created by an earlier, interrupted run
            raise kopf.TemporaryError(f"creating the Job: {rsp.status} {await rsp.text()}", delay=1)
    hold = os.environ.get("PROOF_HOLD_FILE")  # lets a test kill the operator inside this handler
    while hold and os.path.exists(hold):
        await asyncio.sleep(0.05)
    patch.status["phase"] = "Created"


@kopf.on.delete(*SFTJOBS)
async def delete_job(name, namespace, memo, **_):
    async with memo.session.delete(f"{memo.api}/apis/batch/v1/namespaces/{namespace}/jobs/{name}") as rsp:
        if rsp.status not in (200, 404):
            raise kopf.TemporaryError(f"deleting the Job: {rsp.status}", delay=1)


@kopf.on.event("batch", "v1", "jobs")
async def mirror_job(type, body, namespace, memo, **_):
    status = body.get("status", {})
    phase = ("Succeeded" if status.get("succeeded") else "Failed" if status.get("failed")
             else "Running" if status.get("active") else None)
    owners = [ref["name"] for ref in body.metadata.get("ownerReferences", []) if ref.get("kind") == "SFTJob"]
    if type == "DELETED" or phase is None:
        return
    for owner in owners:
        url = f"{memo.api}/apis/sftjob.dev/v1alpha1/namespaces/{namespace}/sftjobs/{owner}/status"
        patch = {"status": {"jobPhase": phase}}
        async with memo.session.patch(url, json=patch, headers={"Content-Type": "application/merge-patch+json"}) as rsp:
            if rsp.status not in (200, 404):
                raise kopf.TemporaryError(f"mirroring the Job status: {rsp.status}", delay=1)
'''


def sftjob(name: str, namespace: str) -> dict:
    return {
        "apiVersion": SFTJOB_API_VERSION,
        "kind": "SFTJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"model": {"source": "x"}},
    }


def configmap(name: str | None, namespace: str, **metadata) -> dict:
    named = {"name": name} if name else {}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {**named, "namespace": namespace, **metadata}}


def get_sftjob(client: KubeClient, namespace: str, name: str) -> dict:
    return client.get(SFTJOB_API_VERSION, "sftjobs", namespace, name)


@pytest.fixture(scope="module")
def kube():
    with running_emulator() as running:
        yield running


@pytest.fixture
def ns() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def hold_file(tmp_path):
    return tmp_path / "hold"


@pytest.fixture
def operator(kube, tmp_path, hold_file):
    path = tmp_path / "proof_operator.py"
    path.write_text(PROOF_OPERATOR, encoding="utf-8")
    env = {"PROOF_HOLD_FILE": str(hold_file)}
    log = tmp_path / "operator.log"  # kept by pytest with the test's other files
    with operator_process(kube.kubeconfig, ["--all-namespaces", str(path)], env=env, log_path=log) as process:
        yield process


# -- the emulator as an API server -----------------------------------------------------------


def test_create_stamps_server_metadata_and_rejects_duplicates(kube, ns):
    created = kube.client.create(sftjob("a", ns) | {"status": {"phase": "Forged"}})
    meta = created["metadata"]
    assert meta["namespace"] == ns and meta["generation"] == 1
    assert uuid.UUID(meta["uid"]) and meta["resourceVersion"].isdigit() and meta["creationTimestamp"].endswith("Z")
    assert "status" not in created  # status is written through /status only

    with pytest.raises(ApiError) as error:
        kube.client.create(sftjob("a", ns))
    assert (error.value.status, error.value.reason) == (409, "AlreadyExists")

    generated = kube.client.create(configmap(None, ns, generateName="cm-"))
    assert generated["metadata"]["name"].startswith("cm-") and len(generated["metadata"]["name"]) == 8


def test_patches_move_resource_version_and_generation_like_kubernetes(kube, ns):
    client = kube.client
    v1 = client.create(sftjob("b", ns))["metadata"]
    v2 = client.patch(SFTJOB_API_VERSION, "sftjobs", ns, "b", {"metadata": {"labels": {"a": "1"}}, "status": {"phase": "X"}})
    assert int(v2["metadata"]["resourceVersion"]) > int(v1["resourceVersion"])
    assert v2["metadata"]["generation"] == 1  # metadata-only change
    assert "status" not in v2  # the main endpoint ignores .status when /status exists
    v3 = client.patch(SFTJOB_API_VERSION, "sftjobs", ns, "b", {"spec": {"model": {"source": "y"}}, "metadata": {"uid": "x"}})
    assert v3["metadata"]["generation"] == 2 and v3["metadata"]["uid"] == v1["uid"]
    v4 = client.patch_status(SFTJOB_API_VERSION, "sftjobs", ns, "b", {"phase": "Training"})
    assert v4["status"] == {"phase": "Training"} and v4["metadata"]["generation"] == 2
    again = client.patch_status(SFTJOB_API_VERSION, "sftjobs", ns, "b", {"phase": "Training"})
    assert again["metadata"]["resourceVersion"] == v4["metadata"]["resourceVersion"]  # no-op: nothing moves

    stale = [{"op": "test", "path": "/metadata/resourceVersion", "value": v1["resourceVersion"]},
             {"op": "add", "path": "/metadata/finalizers", "value": ["x"]}]
    with pytest.raises(ApiError) as error:
        client.patch(SFTJOB_API_VERSION, "sftjobs", ns, "b", stale)
    assert error.value.status == 422
    fresh = [dict(stale[0], value=v4["metadata"]["resourceVersion"]), stale[1]]
    assert client.patch(SFTJOB_API_VERSION, "sftjobs", ns, "b", fresh)["metadata"]["finalizers"] == ["x"]

    with pytest.raises(ApiError) as error:
        client.patch(SFTJOB_API_VERSION, "sftjobs", ns, "b", {"metadata": {"resourceVersion": v1["resourceVersion"]}})
    assert (error.value.status, error.value.reason) == (409, "Conflict")

    current = client.get(SFTJOB_API_VERSION, "sftjobs", ns, "b")
    path = client.path(SFTJOB_API_VERSION, "sftjobs", ns, "b")
    replaced = client.request("PUT", path, current | {"spec": {"new": True}})
    assert replaced["spec"] == {"new": True} and replaced["status"] == current["status"]
    with pytest.raises(ApiError) as error:
        client.request("PUT", path, current)  # stale resourceVersion
    assert error.value.status == 409


def test_injected_reactions_answer_after_the_change_is_stored(kube, ns):
    # A lost answer: the Job exists, but the client saw a 503 (what an idempotent operator must survive).
    kube.call(lambda: kube.emulator["post", kmock.resource("batch/v1/jobs"), kmock.namespace(ns)] << 503)
    with pytest.raises(ApiError) as error:
        kube.client.create({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "lost", "namespace": ns}})
    assert error.value.status == 503
    assert kube.client.get("batch/v1", "jobs", ns, "lost")["metadata"]["uid"]


def test_delete_waits_for_finalizers(kube, ns):
    client = kube.client
    client.create(configmap("c", ns, finalizers=["keep"]))
    deleting = client.delete("v1", "configmaps", ns, "c")
    assert deleting["metadata"]["deletionTimestamp"]
    assert client.get("v1", "configmaps", ns, "c")["metadata"]["finalizers"] == ["keep"]
    client.patch("v1", "configmaps", ns, "c", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiError) as error:
        client.get("v1", "configmaps", ns, "c")
    assert error.value.status == 404

    client.create(configmap("d", ns))
    client.delete("v1", "configmaps", ns, "d")
    assert client.list("v1", "configmaps", ns) == []


def test_lists_select_by_namespace_and_labels_and_namespaces_are_a_resource(kube, ns):
    client = kube.client
    client.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    assert ns in [item["metadata"]["name"] for item in client.list("v1", "namespaces")]
    for name, labels in [("p1", {"app": "sft", "tier": "a"}), ("p2", {"app": "sft"}), ("p3", {"app": "other"})]:
        client.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels}})
    client.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p1", "namespace": ns + "-elsewhere"}})

    def names(selector=None):
        return [item["metadata"]["name"] for item in client.list("v1", "pods", ns, label_selector=selector)]

    assert names() == ["p1", "p2", "p3"]
    assert names("app=sft") == ["p1", "p2"]
    assert names("app=sft,!tier") == ["p2"]
    assert names("app in (other, x)") == ["p3"]
    with pytest.raises(ApiError) as error:
        names("app===sft")
    assert error.value.status == 400


def test_watch_resumes_after_a_resource_version(kube, ns):
    client = kube.client
    client.create(configmap("before", ns))
    listed = client.request("GET", client.path("v1", "configmaps", ns))["metadata"]["resourceVersion"]
    client.create(configmap("after", ns))
    client.patch("v1", "configmaps", ns, "after", {"data": {"k": "v"}})

    url = f"{kube.url}{client.path('v1', 'configmaps', ns)}?watch=true&resourceVersion={listed}&timeoutSeconds=1"
    started = time.monotonic()
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=10) as stream:
        events = [json.loads(line) for line in stream.read().splitlines() if line.strip()]
    assert time.monotonic() - started < 5  # timeoutSeconds ends the stream
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "after"), ("MODIFIED", "after")]


def test_shutdown_ends_open_watches_at_once():
    with running_emulator() as kube:
        url = f"{kube.url}/apis/batch/v1/jobs?watch=true"
        opened, ended = threading.Event(), threading.Event()

        def watch():
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=60) as stream:
                opened.set()
                stream.read()
            ended.set()

        threading.Thread(target=watch, daemon=True).start()
        assert opened.wait(10)
        started = time.monotonic()
    assert time.monotonic() - started < 5
    assert ended.wait(5)


# -- a real kopf operator against it -------------------------------------------------------------


def test_sftjob_gets_an_owned_job_and_deletion_runs_the_finalizer(kube, operator, ns):
    client = kube.client
    owner = client.create(sftjob("one", ns))
    job = wait_for(lambda: client.get("batch/v1", "jobs", ns, "one"), timeout=30)
    assert job["metadata"]["ownerReferences"][0]["uid"] == owner["metadata"]["uid"]
    assert job["metadata"]["ownerReferences"][0]["kind"] == "SFTJob"
    wait_for(lambda: get_sftjob(client, ns, "one")["status"]["phase"] == "Created", timeout=30)

    client.delete(SFTJOB_API_VERSION, "sftjobs", ns, "one")
    wait_for(lambda: not client.list(SFTJOB_API_VERSION, "sftjobs", ns), timeout=30, message="the SFTJob to be gone")
    assert client.list("batch/v1", "jobs", ns) == []  # the operator's delete handler ran before the finalizer went
    assert kube.call(lambda: list(kube.emulator.errors)) == []


def test_job_status_is_mirrored_into_the_sftjob(kube, operator, ns):
    client = kube.client
    client.create(sftjob("two", ns))
    wait_for(lambda: client.get("batch/v1", "jobs", ns, "two"), timeout=30)
    client.patch_status("batch/v1", "jobs", ns, "two", {"active": 1})
    wait_for(lambda: get_sftjob(client, ns, "two")["status"]["jobPhase"] == "Running", timeout=30)
    client.patch_status("batch/v1", "jobs", ns, "two", {"active": None, "succeeded": 1})
    wait_for(lambda: get_sftjob(client, ns, "two")["status"]["jobPhase"] == "Succeeded", timeout=30)


def test_operator_killed_inside_its_handler_creates_no_duplicate_on_restart(kube, operator, hold_file, ns):
    client = kube.client
    hold_file.touch()  # the create handler will create the Job, then wait before reporting success
    client.create(sftjob("crash", ns))
    job = wait_for(lambda: client.get("batch/v1", "jobs", ns, "crash"), timeout=30)
    assert "phase" not in get_sftjob(client, ns, "crash").get("status", {})

    operator.kill()
    hold_file.unlink()
    operator.restart()

    wait_for(lambda: get_sftjob(client, ns, "crash")["status"]["phase"] == "Created", timeout=30)
    jobs = client.list("batch/v1", "jobs", ns)
    assert [j["metadata"]["uid"] for j in jobs] == [job["metadata"]["uid"]]
    assert operator.starts == 2
