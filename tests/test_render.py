"""Rendering an SFTJob into its ConfigMap and Job, checked without a server.

Every rendered object is validated in strict mode against the official
Kubernetes OpenAPI schemas of several minor versions (kubernetes-validate),
then the properties users and the operator depend on are asserted: names,
owner references, Kueue, the pod failure policy, the restricted Pod Security
Standard, secrets only by reference, and the run config contract.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sftjob import vocabulary as vocab
from sftjob.manifest import SFTJob, parse_sftjob
from sftjob.runconfig import RunConfig
from sftjob.spec import SFTJobSpec
from sftjob_operator.config import OperatorConfig
from sftjob_operator.render import PVC_MOUNT_ROOT, RenderError, render, spec_hash

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
K8S_VERSIONS = ("1.32", "1.33", "1.34")
CONFIG = OperatorConfig()
UID = "6f1c2a1e-8e0b-4c39-9d6e-2b7f5c3a9d10"

BASE = {
    "apiVersion": "sftjob.dev/v1alpha1",
    "kind": "SFTJob",
    "metadata": {"name": "llama-sft", "namespace": "team-a", "uid": UID},
    "spec": {
        "model": {"source": "meta-llama/Llama-3.1-8B-Instruct"},
        "dataset": {"train": "s3://data/train.jsonl", "validation": "s3://data/val.jsonl"},
        "output": {"uri": "s3://models/llama-sft"},
    },
}


def manifest(**spec_changes: Any) -> dict:
    """BASE with top-level spec sections replaced/added."""
    obj = copy.deepcopy(BASE)
    obj["spec"].update(copy.deepcopy(spec_changes))
    return obj


def job_of(obj: dict) -> SFTJob:
    return parse_sftjob(obj, "test")


ALL_SECRETS = manifest(
    model={"source": "meta-llama/Llama-3.1-8B-Instruct", "tokenSecretRef": {"name": "hf-token", "key": "token"}},
    output={"uri": "s3://models/x", "credentialsSecretRef": {"name": "s3-creds"}},
    monitoring={"reportTo": ["tensorboard", "wandb"],
                "wandb": {"project": "p", "apiKeySecretRef": {"name": "wandb-key", "key": "api-key"}}},
)

VARIANTS: dict[str, dict] = {
    "base": manifest(),
    "no-sanity": manifest(sanityCheck={"enabled": False}),
    "pvc-work-volume": manifest(resources={"workVolumeClaim": "sft-scratch"}),
    "kueue": manifest(queueName="gpu-queue"),
    "cpu": manifest(resources={"gpus": 0, "cpu": "2", "memory": "8Gi"}),
    "all-secrets": ALL_SECRETS,
    "pvc-locations": manifest(
        model={"source": "pvc://models/llama-8b"},
        dataset={"train": "pvc://sft-data/chat/train.jsonl", "validation": "pvc://sft-data/chat/val.jsonl"},
        output={"uri": "pvc://sft-out/llama"},
    ),
    "placement": manifest(resources={
        "gpus": 4, "gpuResource": "amd.com/gpu", "nodeSelector": {"pool": "mi300"},
        "tolerations": [{"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}]}}},
        "priorityClassName": "ml-high",
    }, serviceAccountName="sft-runner", image="registry.example/sft:2", ttlSecondsAfterFinished=60),
    "offline": {**manifest(), "metadata": {"name": "llama-sft"}},
    "multi-node": manifest(resources={"gpus": 8, "nodes": 2}, training={"effectiveBatchSize": 64}),
}
# Local manifests (paths on this machine): the operator refuses them, tested below.
LOCAL_EXAMPLES = {"quickstart.yaml", "wandb-offline.yaml"}
for _path in EXAMPLES:
    if _path.name in LOCAL_EXAMPLES:
        continue
    for _i, _doc in enumerate(d for d in yaml.safe_load_all(_path.read_text(encoding="utf-8")) if d):
        _doc.setdefault("metadata", {})["uid"] = UID
        VARIANTS[f"example:{_path.name}#{_i}"] = _doc


def rendered(name: str) -> list[dict]:
    return render(job_of(VARIANTS[name]), CONFIG)


def pod_spec(objs: list[dict]) -> dict:
    return next(o for o in objs if o["kind"] == "Job")["spec"]["template"]["spec"]


def all_containers(objs: list[dict]) -> list[dict]:
    spec = pod_spec(objs)
    return spec.get("initContainers", []) + spec["containers"]


def container(objs: list[dict], name: str) -> dict:
    [c] = [c for c in all_containers(objs) if c["name"] == name]
    return c


# ---- valid Kubernetes objects ----------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_objects_validate_strictly(variant, version):
    for obj in rendered(variant):
        kubernetes_validate.validate(obj, version, strict=True)


def test_strict_validation_catches_a_bad_object():
    """The validator used above does reject what the API server would."""
    objs = rendered("base")
    objs[1]["spec"]["template"]["spec"]["containers"][0]["comand"] = ["x"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(objs[1], "1.34", strict=True)


def test_objects_and_names():
    cm, job = rendered("base")
    assert (cm["apiVersion"], cm["kind"], cm["metadata"]["name"]) == ("v1", "ConfigMap", "llama-sft-run-config")
    assert (job["apiVersion"], job["kind"], job["metadata"]["name"]) == ("batch/v1", "Job", "llama-sft-sft")
    assert cm["metadata"]["namespace"] == job["metadata"]["namespace"] == "team-a"
    for obj in (cm, job):
        labels = obj["metadata"]["labels"]
        assert labels[vocab.LABEL_MANAGED_BY] == vocab.MANAGED_BY
        assert labels[vocab.LABEL_JOB_NAME] == "llama-sft"
    assert cm["metadata"]["labels"][vocab.LABEL_COMPONENT] == "run-config"
    assert job["metadata"]["labels"][vocab.LABEL_COMPONENT] == "training"
    assert job["spec"]["template"]["metadata"]["labels"][vocab.LABEL_JOB_NAME] == "llama-sft"


def test_longest_allowed_name_fits_and_longer_is_refused():
    obj = copy.deepcopy(BASE)
    obj["metadata"]["name"] = "a" * 52
    cm, job = render(job_of(obj), CONFIG)
    assert len(cm["metadata"]["name"]) == 63 and len(job["metadata"]["name"]) == 56
    # Objects read from a cluster whose CRD predates the name rule may be longer.
    too_long = SFTJob(name="a" * 53, namespace="x", spec=SFTJobSpec.model_validate(BASE["spec"]))
    with pytest.raises(RenderError, match="metadata.name"):
        render(too_long, CONFIG)


def test_owner_references_only_with_a_uid():
    for obj in rendered("base"):
        assert obj["metadata"]["ownerReferences"] == [{
            "apiVersion": "sftjob.dev/v1alpha1", "kind": "SFTJob", "name": "llama-sft", "uid": UID,
            "controller": True, "blockOwnerDeletion": True,
        }]
    for obj in rendered("offline"):
        assert "ownerReferences" not in obj["metadata"] and "namespace" not in obj["metadata"]


# ---- determinism and the spec hash -----------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_render_is_deterministic(variant):
    first = render(job_of(copy.deepcopy(VARIANTS[variant])), CONFIG)
    second = render(job_of(copy.deepcopy(VARIANTS[variant])), CONFIG)
    assert json.dumps(first, sort_keys=False) == json.dumps(second, sort_keys=False)


def test_spec_hash_annotation_tracks_what_was_rendered():
    def digest(obj: dict) -> str:
        cm, job = render(job_of(obj), CONFIG)
        assert cm["metadata"]["annotations"][vocab.ANNOTATION_SPEC_HASH] == job["metadata"]["annotations"][vocab.ANNOTATION_SPEC_HASH]
        return job["metadata"]["annotations"][vocab.ANNOTATION_SPEC_HASH]

    base = digest(manifest())
    assert len(base) == 64 and int(base, 16) >= 0
    assert digest(manifest(training={"learningRate": 1e-4})) != base      # run config changed
    assert digest(manifest(resources={"gpus": 2})) != base               # pod changed
    assert digest(manifest(suspend=True)) == base                         # suspend may toggle
    assert render(job_of(manifest()), OperatorConfig(image="other:1"))[1]["metadata"]["annotations"][
        vocab.ANNOTATION_SPEC_HASH] != base


def test_spec_hash_is_over_what_was_rendered_and_ignores_suspend():
    cm, job = rendered("base")
    run_config = cm["data"][vocab.RUN_CONFIG_KEY]
    assert spec_hash(run_config, job["spec"]) == job["metadata"]["annotations"][vocab.ANNOTATION_SPEC_HASH]
    assert spec_hash(run_config, {**job["spec"], "suspend": not job["spec"].get("suspend")}) == spec_hash(run_config, job["spec"])
    assert spec_hash(run_config + " ", job["spec"]) != spec_hash(run_config, job["spec"])
    assert rendered("base")[1]["metadata"]["annotations"] == job["metadata"]["annotations"]  # deterministic


def test_rendered_objects_share_no_sub_objects():
    objs = rendered("all-secrets")
    init, train = all_containers(objs)
    init["env"][0]["value"] = "changed"
    init["resources"]["limits"]["cpu"] = "1"
    assert train["env"][0]["value"] != "changed" and train["resources"]["limits"]["cpu"] != "1"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_objects_are_fresh_plain_json(variant):
    """Every dict and list appears once (none shared, none taken from the SFTJob), and every value is plain JSON."""
    job = job_of(copy.deepcopy(VARIANTS[variant]))
    first, second = render(job, CONFIG), render(job, CONFIG)
    seen: dict[int, str] = {}
    model = job.spec.resources.affinity

    def walk(node: Any, path: str) -> None:
        if isinstance(node, (dict, list)):
            assert id(node) not in seen, f"{path} is the same object as {seen[id(node)]}"
            assert node is not model, f"{path} is the SFTJob's own affinity"
            seen[id(node)] = path
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, value in items:
                assert isinstance(key, (str, int)), f"{path}: key {key!r}"
                walk(value, f"{path}.{key}")
        else:
            assert node is None or type(node) in (str, int, float, bool), f"{path}: {type(node).__name__}"

    walk(first, "first")
    walk(second, "second")  # and nothing is shared between two renders either


# ---- the Job: retries, Kueue ---------------------------------------------------------


def test_job_settings():
    job = rendered("base")[1]["spec"]
    assert job["backoffLimit"] == 3 and job["activeDeadlineSeconds"] == 86400
    assert job["ttlSecondsAfterFinished"] == CONFIG.ttl_seconds_after_finished
    assert job["suspend"] is False
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    assert rendered("placement")[1]["spec"]["ttlSecondsAfterFinished"] == 60


def test_pod_failure_policy():
    rules = rendered("base")[1]["spec"]["podFailurePolicy"]["rules"]
    codes = sorted(int(c) for c in vocab.PERMANENT_EXIT_CODES)
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
    for name in (vocab.SANITY_CONTAINER, vocab.TRAIN_CONTAINER):
        assert {"action": "FailJob", "onExitCodes": {"containerName": name, "operator": "In", "values": codes}} in rules
    # Disruptions are matched first: a preempted pod is retried whatever it exited with.
    assert rules[0]["action"] == "Ignore"
    no_sanity = rendered("no-sanity")[1]["spec"]["podFailurePolicy"]["rules"]
    assert all(r.get("onExitCodes", {}).get("containerName") != vocab.SANITY_CONTAINER for r in no_sanity)
    assert len(no_sanity) == 2


def test_kueue_job_starts_suspended_with_the_queue_label():
    job = rendered("kueue")[1]
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"][vocab.KUEUE_QUEUE_LABEL] == "gpu-queue"
    plain = rendered("base")[1]
    assert vocab.KUEUE_QUEUE_LABEL not in plain["metadata"]["labels"]
    assert render(job_of(manifest(suspend=True)), CONFIG)[1]["spec"]["suspend"] is True


# ---- the pod --------------------------------------------------------------------


def test_containers_commands_and_image():
    objs = rendered("base")
    init, train = all_containers(objs)
    assert init["name"] == vocab.SANITY_CONTAINER and train["name"] == vocab.TRAIN_CONTAINER
    assert init["command"] == ["sftjob", "sanity", "/etc/sftjob/run-config.json", "--output", "/workspace/output"]
    # The init container already ran the sanity check: the main container must not repeat it.
    assert train["command"] == ["sftjob", "run", "/etc/sftjob/run-config.json", "--output", "/workspace/output", "--skip-sanity"]
    assert init["image"] == train["image"] == CONFIG.image
    assert train["imagePullPolicy"] == CONFIG.image_pull_policy
    assert train["ports"] == [{"name": "progress", "containerPort": CONFIG.progress_port, "protocol": "TCP"}]
    assert {c["image"] for c in all_containers(rendered("placement"))} == {"registry.example/sft:2"}
    assert "initContainers" not in pod_spec(rendered("no-sanity"))
    (only,) = all_containers(rendered("no-sanity"))
    assert "--skip-sanity" not in only["command"]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_commands_are_argument_arrays(variant):
    for c in all_containers(rendered(variant)):
        assert isinstance(c["command"], list) and all(isinstance(a, str) for a in c["command"])
        assert "args" not in c and not any(a in ("sh", "bash", "-c") for a in c["command"])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_restricted_pod_security_standard(variant):
    objs = rendered(variant)
    pod = pod_spec(objs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key)
    allowed_volumes = {"emptyDir", "configMap", "persistentVolumeClaim", "projected"}  # all allowed by restricted
    for vol in pod["volumes"]:
        assert set(vol) - {"name"} <= allowed_volumes, vol
    for c in all_containers(objs):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["readOnlyRootFilesystem"] is True
        assert not sc.get("privileged")
        assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}
        assert c["terminationMessagePath"] == "/dev/termination-log"
        assert c["terminationMessagePolicy"] == "File"


def test_gpu_resources():
    for c in all_containers(rendered("base")):
        assert c["resources"]["requests"] == c["resources"]["limits"] == {
            "cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "1"}
    for c in all_containers(rendered("placement")):
        assert c["resources"]["limits"]["amd.com/gpu"] == "4"
        assert "nvidia.com/gpu" not in c["resources"]["limits"]
    for c in all_containers(rendered("cpu")):
        assert c["resources"]["limits"] == {"cpu": "2", "memory": "8Gi"}


def test_placement():
    pod = pod_spec(rendered("placement"))
    assert pod["nodeSelector"] == {"pool": "mi300"}
    assert pod["tolerations"] == [{"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert pod["priorityClassName"] == "ml-high" and pod["serviceAccountName"] == "sft-runner"
    base = pod_spec(rendered("base"))
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName", "serviceAccountName"):
        assert key not in base


def test_volumes():
    objs = rendered("base")
    vols = {v["name"]: v for v in pod_spec(objs)["volumes"]}
    assert vols["work"] == {"name": "work", "emptyDir": {"sizeLimit": "100Gi"}}
    assert vols["dshm"] == {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}
    assert vols["run-config"]["configMap"]["name"] == objs[0]["metadata"]["name"]
    for c in all_containers(objs):
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert mounts["/workspace"]["name"] == "work"
        assert mounts["/dev/shm"]["name"] == "dshm"
        assert mounts["/etc/sftjob"] == {"name": "run-config", "mountPath": "/etc/sftjob", "readOnly": True}
    pvc = {v["name"]: v for v in pod_spec(rendered("pvc-work-volume"))["volumes"]}
    assert pvc["work"] == {"name": "work", "persistentVolumeClaim": {"claimName": "sft-scratch"}}


def test_pvc_locations_are_mounted_and_given_to_the_runtime_as_paths():
    cm, job = rendered("pvc-locations")
    rc = RunConfig.from_json(cm["data"][vocab.RUN_CONFIG_KEY])
    assert rc.model.source == f"{PVC_MOUNT_ROOT}/models/llama-8b"
    assert rc.dataset.train == f"{PVC_MOUNT_ROOT}/sft-data/chat/train.jsonl"
    assert rc.dataset.validation == f"{PVC_MOUNT_ROOT}/sft-data/chat/val.jsonl"
    assert rc.output.uri == f"{PVC_MOUNT_ROOT}/sft-out/llama"
    claims = {v["persistentVolumeClaim"]["claimName"]: v for v in job["spec"]["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v}
    assert set(claims) == {"models", "sft-data", "sft-out"}
    for c in all_containers([cm, job]):
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert mounts[f"{PVC_MOUNT_ROOT}/models"]["readOnly"] is True
        assert mounts[f"{PVC_MOUNT_ROOT}/sft-data"]["readOnly"] is True
        assert mounts[f"{PVC_MOUNT_ROOT}/sft-out"]["readOnly"] is False
    assert claims["sft-out"]["persistentVolumeClaim"]["readOnly"] is False


@pytest.mark.parametrize("uri", ["pvc://", "pvc:///path", "pvc://Bad_Claim/x"])
def test_malformed_pvc_location_names_the_field(uri):
    with pytest.raises(RenderError, match=r"spec\.dataset\.train"):
        render(job_of(manifest(dataset={"train": uri, "validationSplit": 0.1})), CONFIG)


# ---- environment and secrets ---------------------------------------------------------


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c["env"]}


def test_secrets_reach_the_pod_only_as_files():
    cm, job = rendered("all-secrets")
    pod = job["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "secrets"]
    assert volume["projected"] == {"defaultMode": 0o440, "sources": [
        {"secret": {"name": "hf-token", "items": [{"key": "token", "path": "hf-token"}], "optional": True}},
        {"secret": {"name": "s3-creds", "optional": True, "items": [
            {"key": "AWS_ACCESS_KEY_ID", "path": "aws-access-key-id"},
            {"key": "AWS_SECRET_ACCESS_KEY", "path": "aws-secret-access-key"}]}},
        {"secret": {"name": "wandb-key", "items": [{"key": "api-key", "path": "wandb-api-key"}], "optional": True}},
    ]}
    for c in all_containers([cm, job]):
        assert {"name": "secrets", "mountPath": vocab.SECRETS_DIR, "readOnly": True} in c["volumeMounts"]
        env = env_of(c)
        assert env[vocab.ENV_SECRETS_DIR]["value"] == vocab.SECRETS_DIR
        assert json.loads(env[vocab.ENV_SECRET_FILES]["value"]) == {
            "hf-token": "spec.model.tokenSecretRef (Secret hf-token, key token)",
            "aws-access-key-id": "spec.output.credentialsSecretRef (Secret s3-creds, key AWS_ACCESS_KEY_ID)",
            "aws-secret-access-key": "spec.output.credentialsSecretRef (Secret s3-creds, key AWS_SECRET_ACCESS_KEY)",
            "wandb-api-key": "spec.monitoring.wandb.apiKeySecretRef (Secret wandb-key, key api-key)",
        }
        for name in ("HF_TOKEN", "WANDB_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert name not in env
    # The run config carries no secret references either.
    text = cm["data"][vocab.RUN_CONFIG_KEY]
    for secret in ("hf-token", "wandb-key", "s3-creds", "secretKeyRef", "SecretRef"):
        assert secret not in text


def test_no_secret_volume_without_credentials():
    pod = rendered("base")[1]["spec"]["template"]["spec"]
    assert "secrets" not in {v["name"] for v in pod["volumes"]}
    assert vocab.ENV_SECRETS_DIR not in env_of(pod["containers"][0])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_no_env_var_comes_from_a_secret(variant):
    """CKV_K8S_35: credentials are files; every environment variable is a plain value or the pod's own metadata."""
    for c in all_containers(rendered(variant)):
        assert "envFrom" not in c
        for e in c["env"]:
            if "valueFrom" in e:  # a multi-node pod's completion index, from the downward API
                assert set(e) == {"name", "valueFrom"} and set(e["valueFrom"]) == {"fieldRef"}
            else:
                assert set(e) == {"name", "value"} and isinstance(e["value"], str)


def test_environment():
    env = env_of(container(rendered("base"), vocab.TRAIN_CONTAINER))
    assert env["HF_HOME"]["value"] == "/workspace/.cache/huggingface"
    assert env[vocab.ENV_PROGRESS_PORT]["value"] == str(CONFIG.progress_port)
    assert "WANDB_MODE" not in env and vocab.ENV_SECRETS_DIR not in env
    assert env_of(container(rendered("all-secrets"), vocab.TRAIN_CONTAINER))["WANDB_MODE"]["value"] == "online"
    keyless = manifest(monitoring={"reportTo": ["wandb"], "wandb": {"project": "p"}})
    assert env_of(container(render(job_of(keyless), CONFIG), vocab.TRAIN_CONTAINER))["WANDB_MODE"]["value"] == "offline"
    port = OperatorConfig(progress_port=9000)
    train = container(render(job_of(manifest()), port), vocab.TRAIN_CONTAINER)
    assert env_of(train)[vocab.ENV_PROGRESS_PORT]["value"] == "9000" and train["ports"][0]["containerPort"] == 9000


# ---- the run config ----------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(v for v in VARIANTS if "pvc://" not in json.dumps(VARIANTS[v]["spec"])))
def test_configmap_holds_the_run_config(variant):
    """Without pvc:// locations the ConfigMap holds exactly the contract's run config."""
    obj = VARIANTS[variant]
    cm = render(job_of(copy.deepcopy(obj)), CONFIG)[0]
    assert set(cm["data"]) == {vocab.RUN_CONFIG_KEY}
    text = cm["data"][vocab.RUN_CONFIG_KEY]
    assert text == RunConfig.from_sftjob(job_of(copy.deepcopy(obj))).to_json()
    assert RunConfig.from_json(text).name == obj["metadata"]["name"]


def test_render_does_not_import_kubernetes_clients():
    code = (
        "import sys, sftjob_operator.render\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('kopf', 'kubernetes', 'aiohttp', 'torch'))\n"
        "print(heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_render_cli_prints_exactly_what_the_operator_creates(fmt):
    """`sftjob render` is the operator's own rendering, readable (the run config as a YAML block)."""
    import json
    import subprocess
    import sys

    import yaml

    from sftjob.manifest import load_sftjob
    from sftjob_operator.config import OperatorConfig
    from sftjob_operator.render import render

    path = REPO / "examples" / "llama-8b-recipe.yaml"
    r = subprocess.run([sys.executable, "-m", "sftjob.cli", "render", str(path), "-o", fmt],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    printed = list(yaml.safe_load_all(r.stdout)) if fmt == "yaml" else json.loads(r.stdout)["items"]
    assert printed == render(load_sftjob(path), OperatorConfig())
    if fmt == "yaml":
        assert "run-config.json: |" in r.stdout


@pytest.mark.parametrize(("changes", "field"), [
    ({"model": {"source": "~/.cache/sftjob/demo-model"}}, "spec.model.source"),
    ({"model": {"source": "./models/m"}}, "spec.model.source"),
    ({"model": {"source": "file:///models/m"}}, "spec.model.source"),
    ({"dataset": {"train": "data/train.jsonl", "validation": "s3://data/val.jsonl"}}, "spec.dataset.train"),
    ({"dataset": {"train": "s3://data/train.jsonl", "validation": "/data/val.jsonl"}}, "spec.dataset.validation"),
    ({"output": {"uri": "file:///tmp/out"}}, "spec.output.uri"),
    ({"output": {"uri": "./out"}}, "spec.output.uri"),
])
def test_local_only_locations_are_refused_for_a_cluster(changes, field):
    with pytest.raises(RenderError) as e:
        render(job_of(manifest(**changes)), CONFIG)
    assert len(e.value.errors) == 1 and e.value.errors[0].startswith(f"{field}: ")
    assert "s3://" in e.value.errors[0] and "pvc://" in e.value.errors[0]


def test_a_strategy_this_release_cannot_run_is_refused_before_any_gpu_is_requested():
    with pytest.raises(RenderError) as e:
        render(job_of(manifest(resources={"gpus": 2, "strategy": "fsdp"})), CONFIG)
    [error] = e.value.errors
    assert error.startswith("spec.resources.strategy: fsdp is not available in this release") and "lora" in error
    for strategy in ("auto", "ddp"):
        render(job_of(manifest(resources={"gpus": 2, "strategy": strategy})), CONFIG)


def test_hub_ids_and_cluster_locations_render():
    for source in ("meta-llama/Llama-3.1-8B-Instruct", "gpt2", "s3://m/llama", "pvc://models/llama"):
        render(job_of(manifest(model={"source": source})), CONFIG)


def test_render_of_the_local_quickstart_names_every_local_field():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "sftjob.cli", "render", str(REPO / "examples" / "quickstart.yaml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stdout == ""
    fields = [line.split(": ")[1] for line in r.stderr.strip().splitlines()]
    assert fields == ["spec.model.source", "spec.dataset.train", "spec.dataset.validation", "spec.output.uri"]
    assert "Traceback" not in r.stderr


def test_the_pod_gets_time_to_write_its_just_in_time_checkpoint():
    pod = rendered("base")[1]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 900  # GPU default, not Kubernetes' 30 s
    assert env_of(pod["containers"][0])[vocab.ENV_GRACE_SECONDS]["value"] == "900"
    assert rendered("cpu")[1]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 120
    custom = manifest(resources={"terminationGracePeriodSeconds": 1800})
    assert render(job_of(custom), CONFIG)[1]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 1800


# ---- multi-node: an Indexed Job, a headless Service, torchrun's c10d rendezvous on node 0 ----------------


def test_a_multi_node_job_is_an_indexed_job_with_a_headless_service_before_it():
    cm, service, job = rendered("multi-node")
    assert [o["kind"] for o in (cm, service, job)] == ["ConfigMap", "Service", "Job"]  # the Service first: DNS names
    assert service["metadata"]["name"] == job["metadata"]["name"] == "llama-sft-sft"
    assert service["metadata"]["ownerReferences"][0]["uid"] == UID  # garbage-collected with the SFTJob
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    assert spec["podFailurePolicy"]["rules"][0]["onPodConditions"][0]["type"] == "DisruptionTarget"
    pod = spec["template"]
    assert pod["spec"]["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["ports"] == [{"name": "rendezvous", "port": 29400, "targetPort": 29400, "protocol": "TCP"}]


def test_every_node_runs_torchrun_against_node_0_and_names_itself():
    objs = rendered("multi-node")
    train = container(objs, vocab.TRAIN_CONTAINER)
    cmd = train["command"]
    assert cmd[0] == "torchrun" and "--standalone" not in cmd
    args = dict(a.split("=", 1) for a in cmd[1:cmd.index("-m")])
    assert args == {
        "--nnodes": "2", "--nproc-per-node": "8", "--rdzv-backend": "c10d",
        "--rdzv-endpoint": "llama-sft-sft-0.llama-sft-sft:29400", "--rdzv-id": UID,
        "--rdzv-conf": "join_timeout=900,read_timeout=300", "--local-addr": "$(SFTJOB_NODE_HOST)",
        # torchrun's own 30 s would SIGKILL the workers while they write the just-in-time checkpoint.
        "--shutdown-timeout": "870",
    }
    assert cmd[cmd.index("-m"):] == ["-m", "sftjob.cli", "run", "/etc/sftjob/run-config.json", "--output",
                                     "/workspace/output", "--skip-sanity"]
    assert {"name": "rendezvous", "containerPort": 29400, "protocol": "TCP"} in train["ports"]
    for c in all_containers(objs):
        names = [e["name"] for e in c["env"]]
        env = env_of(c)
        # The completion index from the pod's own annotation, defined before the variable that expands it.
        assert env[vocab.ENV_NODE_INDEX]["valueFrom"]["fieldRef"]["fieldPath"] == \
            "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        assert names.index(vocab.ENV_NODE_INDEX) < names.index("SFTJOB_NODE_HOST")
        assert env["SFTJOB_NODE_HOST"]["value"] == "llama-sft-sft-$(SFTJOB_NODE_INDEX).llama-sft-sft"
        assert env[vocab.ENV_LEADER_ENDPOINT]["value"] == "llama-sft-sft-0.llama-sft-sft:29400"
    # The sanity check is the same command on every node: the runtime runs it on node 0 and waits elsewhere.
    assert container(objs, vocab.SANITY_CONTAINER)["command"][:2] == ["sftjob", "sanity"]


def test_node_0_sorts_first_among_the_nodes_addresses():
    """c10d ranks nodes by sorted address: node 0's name must sort first for any node count the spec allows."""
    names = [f"x-sft-{i}.x-sft" for i in range(16)]
    assert sorted(names)[0] == names[0]


def test_a_single_node_job_has_no_service_and_no_rendezvous():
    objs = rendered("placement")  # 4 GPUs on one node
    assert [o["kind"] for o in objs] == ["ConfigMap", "Job"]
    assert "completionMode" not in objs[1]["spec"] and "subdomain" not in pod_spec(objs)
    train = container(objs, vocab.TRAIN_CONTAINER)
    assert train["command"][:4] == ["torchrun", "--standalone", "--nproc-per-node=4", "--shutdown-timeout=870"]
    assert vocab.ENV_NODE_INDEX not in env_of(train)


def test_a_multi_node_job_needs_a_name_a_service_can_have():
    obj = manifest(resources={"nodes": 2})
    obj["metadata"]["name"] = "8b-run"
    with pytest.raises(RenderError, match=r"metadata.name: a multi-node job .* must start with a letter; got '8b-run'"):
        render(job_of(obj), CONFIG)
    single = manifest()
    single["metadata"]["name"] = "8b-run"
    assert len(render(job_of(single), CONFIG)) == 2  # a single-node job has no Service: any DNS label will do
