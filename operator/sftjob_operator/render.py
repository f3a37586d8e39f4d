"""Rendering: one SFTJob in, the Kubernetes objects the operator creates out.

Pure: no API calls, no clock, no randomness, no kopf or kubernetes-client
imports, so `sftjob render` prints exactly what the operator would create and
tests check it without a server. Objects are built as plain dicts.

What it renders, for an SFTJob named N:
- ConfigMap `N-run-config` holding the versioned run config (no secrets);
- Job `N-sft`: an init container `sanity-check` (when enabled) and the main
  container `train`, both from the training image, sharing /workspace.

Credentials reach the pod only as files of a projected Secret volume
(`vocabulary.SECRETS_DIR`), never as environment variables in the pod spec;
the pod gets no service-account token and runs under the `restricted` Pod
Security Standard.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from sftjob import vocabulary as vocab
from sftjob.manifest import API_VERSION_FULL, SFTJob
from sftjob.runconfig import RunConfig
from sftjob.spec import DNS_LABEL_PATTERN, KIND
from sftjob_operator.config import OperatorConfig
from sftjob_operator.locations import PVC_MOUNT_ROOT, PVC_SCHEME, RenderError, local_only_errors, pvc_claims, pvc_local

CONFIGMAP_SUFFIX = "-run-config"
JOB_SUFFIX = "-sft"
MAX_OBJECT_NAME = 63
OUTPUT_DIR = f"{vocab.WORK_DIR}/output"
HF_HOME = f"{vocab.WORK_DIR}/.cache/huggingface"
# Above 10000 so it never maps to a host user (and CKV_K8S_40 holds); the image's user has it too.
RUN_AS_USER = 65532
# Kubernetes' default of 30 s cannot write a GPU job's checkpoint (an 8B full fine-tune with AdamW is ~100 GB).
DEFAULT_GRACE_GPU, DEFAULT_GRACE_CPU = 900, 120
COMPONENT_RUN_CONFIG = "run-config"
COMPONENT_TRAINING = "training"
APP_NAME = "sftjob"

_DNS_LABEL = re.compile(DNS_LABEL_PATTERN)

# Volume names inside the pod.
_VOL_WORK, _VOL_SHM, _VOL_RUN_CONFIG, _VOL_TMP, _VOL_SECRETS = "work", "dshm", "run-config", "tmp", "secrets"


# Security-scanner findings on the training Job that are decisions, not oversights:
# checkov's skip annotations with the reason (tests/test_checkov.py keeps the set exact).
CHECKOV_SKIPS = {
    "checkov.io/skip1": "CKV_K8S_43=The training image comes from the operator (training.image.digest pins it) "
                        "or spec.image",
    "checkov.io/skip2": "CKV_K8S_15=IfNotPresent suits versioned tags and digests; the image is gigabytes, pulled once per node",
    "checkov.io/skip3": "CKV2_K8S_6=Training pods need egress to model and data stores; the chart's "
                        "networkPolicy.trainingNamespaces limits their ingress to the operator",
}


def configmap_name(name: str) -> str:
    """Name of the run-config ConfigMap of SFTJob `name`."""
    return name + CONFIGMAP_SUFFIX


def job_name(name: str) -> str:
    """Name of the batch/v1 Job of SFTJob `name`."""
    return name + JOB_SUFFIX


def render(job: SFTJob, config: OperatorConfig) -> list[dict]:
    """The objects the operator creates for `job`: [ConfigMap, Job], as plain dicts.

    Deterministic: the same SFTJob and config always give the same objects.
    Owner references are set only when the SFTJob's uid is known (objects
    read from the API server); offline renders omit them.
    """
    _check_name(job.name)
    local = local_only_errors(job)
    if local:
        raise RenderError(*local)
    pvcs = pvc_claims(job)
    run_config = _run_config(job)
    run_config_json = run_config.to_json()
    job_spec = _job_spec(job, config, pvcs)
    digest = spec_hash(run_config_json, job_spec)
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, configmap_name(job.name), COMPONENT_RUN_CONFIG, digest),
        "data": {vocab.RUN_CONFIG_KEY: run_config_json},
    }
    batch_job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(job, job_name(job.name), COMPONENT_TRAINING, digest),
        "spec": job_spec,
    }
    batch_job["metadata"]["annotations"].update(CHECKOV_SKIPS)
    if job.spec.queueName:
        batch_job["metadata"]["labels"][vocab.KUEUE_QUEUE_LABEL] = job.spec.queueName
    # A JSON round trip: plain JSON types only, and no sub-object shared
    # between containers (so callers may edit one; YAML shows no anchors).
    return json.loads(json.dumps([configmap, batch_job]))


def spec_hash(run_config_json: str, job_spec: dict) -> str:
    """sha256 over the canonical run config and the Job spec (less `suspend`, which may change).

    Stamped on both children so a person (or a later tool) can tell which
    spec a Job was made from; the operator itself recognises its children by
    their owner reference.
    """
    relevant = {k: v for k, v in job_spec.items() if k != "suspend"}
    canonical = json.dumps({"runConfig": json.loads(run_config_json), "jobSpec": relevant},
                           sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _check_name(name: str) -> None:
    longest = max(configmap_name(name), job_name(name), key=len)
    if not _DNS_LABEL.match(name) or len(longest) > MAX_OBJECT_NAME:
        raise RenderError(
            f"metadata.name: must be a DNS label short enough that {longest!r} fits in "
            f"{MAX_OBJECT_NAME} characters (at most {MAX_OBJECT_NAME - len(CONFIGMAP_SUFFIX)}), got {name!r}"
        )


def _labels(name: str, component: str) -> dict[str, str]:
    return {
        vocab.LABEL_NAME: APP_NAME,
        vocab.LABEL_INSTANCE: name,
        vocab.LABEL_MANAGED_BY: vocab.MANAGED_BY,
        vocab.LABEL_JOB_NAME: name,
        vocab.LABEL_COMPONENT: component,
    }


def _metadata(job: SFTJob, name: str, component: str, digest: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if job.namespace:
        meta["namespace"] = job.namespace
    meta["labels"] = _labels(job.name, component)
    meta["annotations"] = {vocab.ANNOTATION_SPEC_HASH: digest}
    if job.uid:
        meta["ownerReferences"] = [{
            "apiVersion": API_VERSION_FULL,
            "kind": KIND,
            "name": job.name,
            "uid": job.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }]
    return meta


def _run_config(job: SFTJob) -> RunConfig:
    """The run config, with pvc:// locations replaced by their mount paths."""
    rc = RunConfig.from_sftjob(job)
    s = job.spec

    def local(field: str, uri: str | None) -> str | None:
        return pvc_local(field, uri) if uri and uri.startswith(PVC_SCHEME) else uri

    return rc.model_copy(update={
        "model": rc.model.model_copy(update={"source": local("spec.model.source", s.model.source)}),
        "dataset": rc.dataset.model_copy(update={
            "train": local("spec.dataset.train", s.dataset.train),
            "validation": local("spec.dataset.validation", s.dataset.validation),
        }),
        "output": rc.output.model_copy(update={"uri": local("spec.output.uri", s.output.uri)}),
    })


# ---- the Job ---------------------------------------------------------------


def _job_spec(job: SFTJob, config: OperatorConfig, pvcs: dict[str, bool]) -> dict[str, Any]:
    s = job.spec
    containers = [vocab.SANITY_CONTAINER] if s.sanityCheck.enabled else []
    containers.append(vocab.TRAIN_CONTAINER)
    return {
        "backoffLimit": s.backoffLimit,
        "activeDeadlineSeconds": s.activeDeadlineSeconds,
        "ttlSecondsAfterFinished": (
            s.ttlSecondsAfterFinished if s.ttlSecondsAfterFinished is not None else config.ttl_seconds_after_finished
        ),
        # Kueue admits a queued Job by unsuspending it, so it must start suspended.
        "suspend": bool(s.suspend or s.queueName),
        "completions": 1,
        "parallelism": 1,
        "podFailurePolicy": _pod_failure_policy(containers),
        "template": _pod_template(job, config, pvcs),
    }


def _pod_failure_policy(containers: list[str]) -> dict[str, Any]:
    """Disruptions never count against backoffLimit; permanent exit codes fail the Job at once."""
    codes = sorted({int(code) for code in vocab.PERMANENT_EXIT_CODES})
    rules: list[dict[str, Any]] = [
        # First, so a pod killed by preemption or a drain is retried whatever it exited with.
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]
    rules += [
        {"action": "FailJob", "onExitCodes": {"containerName": name, "operator": "In", "values": codes}}
        for name in containers
    ]
    return {"rules": rules}


def _pod_template(job: SFTJob, config: OperatorConfig, pvcs: dict[str, bool]) -> dict[str, Any]:
    s = job.spec
    r = s.resources
    mounts = _volume_mounts(pvcs, _secrets_volume(job) is not None)
    env = _env(job, config)
    resources = _container_resources(job)
    image = s.image or config.image
    pod: dict[str, Any] = {
        "restartPolicy": "Never",  # required by podFailurePolicy; retries are the Job's
        # Time to write the just-in-time checkpoint after SIGTERM (the runtime warns when it looks short).
        "terminationGracePeriodSeconds": grace_seconds(job),
        "automountServiceAccountToken": False,  # training pods get no API credentials
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if s.serviceAccountName:
        pod["serviceAccountName"] = s.serviceAccountName
    if r.priorityClassName:
        pod["priorityClassName"] = r.priorityClassName
    if r.nodeSelector:
        pod["nodeSelector"] = dict(sorted(r.nodeSelector.items()))
    if r.tolerations:
        pod["tolerations"] = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in r.tolerations]
    if r.affinity:
        pod["affinity"] = r.affinity
    if s.sanityCheck.enabled:
        # The check is one process; with several GPUs visible, one process would fall into
        # DataParallel (which TRL refuses), so it gets the first GPU only.
        sanity_env = env + [{"name": "CUDA_VISIBLE_DEVICES", "value": "0"}] if r.gpus > 1 else env
        pod["initContainers"] = [_container(
            vocab.SANITY_CONTAINER, image, config, ["sftjob", "sanity", vocab.RUN_CONFIG_PATH], sanity_env, resources, mounts,
        )]
    train_args = ["sftjob", "run", vocab.RUN_CONFIG_PATH, "--output", OUTPUT_DIR]
    if r.gpus > 1:
        # One data-parallel process per GPU (DDP); rank 0 reports and exports.
        train_args = ["torchrun", "--standalone", f"--nproc-per-node={r.gpus}", "-m", "sftjob.cli", *train_args[1:]]
    if s.sanityCheck.enabled:
        # The init container has run (and passed) the check; the main container must not repeat it.
        train_args.append("--skip-sanity")
    train = _container(vocab.TRAIN_CONTAINER, image, config, train_args, env, resources, mounts)
    train["ports"] = [{"name": "progress", "containerPort": config.progress_port, "protocol": "TCP"}]
    pod["containers"] = [train]
    pod["volumes"] = _volumes(job, pvcs)
    return {
        "metadata": {
            "labels": _labels(job.name, COMPONENT_TRAINING),
            # `kubectl logs` without -c shows the training log.
            "annotations": {"kubectl.kubernetes.io/default-container": vocab.TRAIN_CONTAINER, **CHECKOV_SKIPS},
        },
        "spec": pod,
    }


def grace_seconds(job: SFTJob) -> int:
    """The pod's terminationGracePeriodSeconds: the spec's, else a default for GPU or CPU jobs."""
    r = job.spec.resources
    if r.terminationGracePeriodSeconds is not None:
        return r.terminationGracePeriodSeconds
    return DEFAULT_GRACE_GPU if r.gpus > 0 else DEFAULT_GRACE_CPU


def _container(name: str, image: str, config: OperatorConfig, command: list[str], env: list[dict],
               resources: dict, mounts: list[dict]) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": config.image_pull_policy,
        "command": list(command),  # an argument array: nothing from the spec reaches a shell
        "workingDir": vocab.WORK_DIR,
        "env": [dict(e) for e in env],
        "resources": {k: dict(v) for k, v in resources.items()},
        "volumeMounts": [dict(m) for m in mounts],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        },
        # The runtime writes its outcome here; the operator reads it from the pod status.
        "terminationMessagePath": vocab.TERMINATION_LOG,
        "terminationMessagePolicy": "File",
    }


def _container_resources(job: SFTJob) -> dict[str, dict[str, str]]:
    """Requests equal limits; the init container gets the same (it trains a few steps on the GPU too)."""
    r = job.spec.resources
    amounts = {"cpu": r.cpu, "memory": r.memory}
    if r.gpus > 0:
        amounts[r.gpuResource] = str(r.gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _secret_files(job: SFTJob) -> list[tuple[str, str, str, str]]:
    """(file name, Secret, key, spec field) of every credential the pod needs."""
    s = job.spec
    files = []
    if s.model.tokenSecretRef:
        ref = s.model.tokenSecretRef
        files.append((vocab.SECRET_FILES[vocab.ENV_HF_TOKEN], ref.name, ref.key, "spec.model.tokenSecretRef"))
    creds = s.output.credentialsSecretRef
    if creds:
        field = "spec.output.credentialsSecretRef"
        files.append((vocab.SECRET_FILES[vocab.ENV_AWS_ACCESS_KEY_ID], creds.name, creds.accessKeyIdKey, field))
        files.append((vocab.SECRET_FILES[vocab.ENV_AWS_SECRET_ACCESS_KEY], creds.name, creds.secretAccessKeyKey, field))
    key_ref = s.monitoring.wandb.apiKeySecretRef if s.monitoring.wandb and "wandb" in s.monitoring.reportTo else None
    if key_ref:
        files.append((vocab.SECRET_FILES[vocab.ENV_WANDB_API_KEY], key_ref.name, key_ref.key, "spec.monitoring.wandb.apiKeySecretRef"))
    return files


def _env(job: SFTJob, config: OperatorConfig) -> list[dict[str, Any]]:
    s = job.spec
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": "/tmp"},  # the root filesystem is read-only
        {"name": "HF_HOME", "value": HF_HOME},
        # Inputs fetched from S3 (data files, model prefixes) land on the work volume, not in /tmp.
        {"name": "SFTJOB_CACHE_DIR", "value": f"{vocab.WORK_DIR}/.cache/sftjob"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": vocab.ENV_PROGRESS_PORT, "value": str(config.progress_port)},
        {"name": vocab.ENV_TERMINATION_LOG, "value": vocab.TERMINATION_LOG},
        {"name": vocab.ENV_GRACE_SECONDS, "value": str(grace_seconds(job))},
    ]
    files = _secret_files(job)
    if files:
        # Which files to expect and what names them: the runtime fails naming the field when one is
        # missing (the Secret volume is optional, so a missing Secret is a clear error, not a stuck pod).
        expected = {name: f"{field} (Secret {secret}, key {key})" for name, secret, key, field in files}
        env.append({"name": vocab.ENV_SECRETS_DIR, "value": vocab.SECRETS_DIR})
        env.append({"name": vocab.ENV_SECRET_FILES, "value": json.dumps(expected, sort_keys=True)})
    if "wandb" in s.monitoring.reportTo:
        key_ref = s.monitoring.wandb.apiKeySecretRef if s.monitoring.wandb else None
        # Without a key W&B still records the run, to files under the work volume.
        env.append({"name": "WANDB_MODE", "value": "online" if key_ref else "offline"})
    return env


def _secrets_volume(job: SFTJob) -> dict[str, Any] | None:
    files = _secret_files(job)
    if not files:
        return None
    by_secret: dict[str, list[dict[str, str]]] = {}
    for name, secret, key, _ in files:
        by_secret.setdefault(secret, []).append({"key": key, "path": name})
    return {
        "name": _VOL_SECRETS,
        "projected": {
            # Readable by the pod's group (fsGroup) only.
            "defaultMode": 0o440,
            "sources": [{"secret": {"name": secret, "items": items, "optional": True}} for secret, items in by_secret.items()],
        },
    }


def _volume_mounts(pvcs: dict[str, bool], secrets: bool) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"name": _VOL_WORK, "mountPath": vocab.WORK_DIR},
        {"name": _VOL_SHM, "mountPath": "/dev/shm"},
        {"name": _VOL_RUN_CONFIG, "mountPath": vocab.RUN_CONFIG_DIR, "readOnly": True},
        {"name": _VOL_TMP, "mountPath": "/tmp"},
    ]
    if secrets:
        mounts.append({"name": _VOL_SECRETS, "mountPath": vocab.SECRETS_DIR, "readOnly": True})
    for i, (claim, writable) in enumerate(pvcs.items()):
        mounts.append({"name": f"pvc-{i}", "mountPath": f"{PVC_MOUNT_ROOT}/{claim}", "readOnly": not writable})
    return mounts


def _volumes(job: SFTJob, pvcs: dict[str, bool]) -> list[dict[str, Any]]:
    r = job.spec.resources
    work: dict[str, Any] = (
        {"name": _VOL_WORK, "persistentVolumeClaim": {"claimName": r.workVolumeClaim}}
        if r.workVolumeClaim
        else {"name": _VOL_WORK, "emptyDir": {"sizeLimit": r.workVolumeSize}}
    )
    volumes = [
        work,
        {"name": _VOL_SHM, "emptyDir": {"medium": "Memory", "sizeLimit": r.shmSize}},
        {
            "name": _VOL_RUN_CONFIG,
            "configMap": {
                "name": configmap_name(job.name),
                "items": [{"key": vocab.RUN_CONFIG_KEY, "path": vocab.RUN_CONFIG_KEY}],
                "defaultMode": 0o444,
            },
        },
        {"name": _VOL_TMP, "emptyDir": {}},
    ]
    secrets = _secrets_volume(job)
    if secrets:
        volumes.append(secrets)
    for i, (claim, writable) in enumerate(pvcs.items()):
        volumes.append({"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": claim, "readOnly": not writable}})
    return volumes


__all__ = ["RenderError", "local_only_errors", "render", "spec_hash", "configmap_name", "job_name", "PVC_MOUNT_ROOT", "OUTPUT_DIR"]
