"""The spec of an SFTJob's batch/v1 Job: retries, the pod template, its containers, environment and volumes.

Pure, like `render` (which names the objects, labels them and calls
`job_spec`): no API calls, no clock. Every call builds fresh dicts and lists
of plain JSON values, so no sub-object is shared between containers or with
the SFTJob model, and callers may edit what they get.

The pod gets an init container `sanity-check` (when enabled) and the main
container `train`, both from the training image, sharing /workspace.
Credentials reach it only as files of a projected Secret volume
(`vocabulary.SECRETS_DIR`), never as environment variables; it gets no
service-account token and runs under the `restricted` Pod Security Standard.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sftjob import vocabulary as vocab
from sftjob.manifest import SFTJob
from sftjob_operator.config import OperatorConfig
from sftjob_operator.locations import PVC_MOUNT_ROOT

OUTPUT_DIR = f"{vocab.WORK_DIR}/output"
HF_HOME = f"{vocab.WORK_DIR}/.cache/huggingface"
# Above 10000 so it never maps to a host user (and CKV_K8S_40 holds); the image's user has it too.
RUN_AS_USER = 65532
# Kubernetes' default of 30 s cannot write a GPU job's checkpoint (an 8B full fine-tune with AdamW is ~100 GB).
DEFAULT_GRACE_GPU, DEFAULT_GRACE_CPU = 900, 120

# Volume names inside the pod.
_VOL_WORK, _VOL_SHM, _VOL_RUN_CONFIG, _VOL_TMP, _VOL_SECRETS = "work", "dshm", "run-config", "tmp", "secrets"
_PERMANENT_CODES = tuple(sorted({int(code) for code in vocab.PERMANENT_EXIT_CODES}))

# Security-scanner findings on the training Job that are decisions, not oversights:
# checkov's skip annotations with the reason (tests/test_checkov.py keeps the set exact).
CHECKOV_SKIPS = {
    "checkov.io/skip1": "CKV_K8S_43=The training image comes from the operator (training.image.digest pins it) "
                        "or spec.image",
    "checkov.io/skip2": "CKV_K8S_15=IfNotPresent suits versioned tags and digests; the image is gigabytes, pulled once per node",
    "checkov.io/skip3": "CKV2_K8S_6=Training pods need egress to model and data stores; the chart's "
                        "networkPolicy.trainingNamespaces limits their ingress to the operator",
}


def job_spec(job: SFTJob, config: OperatorConfig, pvcs: Mapping[str, bool], labels: Mapping[str, str],
             run_config_name: str, job_name: str) -> dict[str, Any]:
    """The Job's `spec`: its pods carry `labels` and mount the ConfigMap `run_config_name`.

    With `resources.nodes` > 1 it is an Indexed Job, one pod per node, whose
    pods find each other through the headless Service named like the Job
    (`job_name`): see `_torchrun` for how they meet.
    """
    s = job.spec
    nodes = s.resources.nodes
    containers = [vocab.SANITY_CONTAINER] if s.sanityCheck.enabled else []
    containers.append(vocab.TRAIN_CONTAINER)
    spec: dict[str, Any] = {
        "backoffLimit": s.backoffLimit,
        "activeDeadlineSeconds": s.activeDeadlineSeconds,
        "ttlSecondsAfterFinished": (
            s.ttlSecondsAfterFinished if s.ttlSecondsAfterFinished is not None else config.ttl_seconds_after_finished
        ),
        # Kueue admits a queued Job by unsuspending it, so it must start suspended.
        "suspend": bool(s.suspend or s.queueName),
        # Every node's pod at once (Kueue admits them together, as one workload); the Job
        # succeeds when every index has, i.e. when torchrun ended well on every node.
        "completions": nodes,
        "parallelism": nodes,
        "podFailurePolicy": _pod_failure_policy(containers),
        "template": _pod_template(job, config, pvcs, labels, run_config_name, job_name),
    }
    if nodes > 1:
        # Stable pod host names <job>-<index>, and the index in each pod.
        spec["completionMode"] = "Indexed"
    return spec


def _pod_failure_policy(containers: list[str]) -> dict[str, Any]:
    """Disruptions never count against backoffLimit; permanent exit codes fail the Job at once."""
    rules: list[dict[str, Any]] = [
        # First, so a pod killed by preemption or a drain is retried whatever it exited with.
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]
    rules += [
        {"action": "FailJob", "onExitCodes": {"containerName": name, "operator": "In", "values": list(_PERMANENT_CODES)}}
        for name in containers
    ]
    return {"rules": rules}


def _pod_template(job: SFTJob, config: OperatorConfig, pvcs: Mapping[str, bool], labels: Mapping[str, str],
                  run_config_name: str, job_name: str) -> dict[str, Any]:
    s = job.spec
    r = s.resources
    files = _secret_files(job)
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
    multi_node = r.nodes > 1
    if multi_node:
        pod["subdomain"] = job_name  # the headless Service: <job>-<index>.<job> resolves to each pod
    if s.serviceAccountName:
        pod["serviceAccountName"] = s.serviceAccountName
    if r.priorityClassName:
        pod["priorityClassName"] = r.priorityClassName
    if r.nodeSelector:
        pod["nodeSelector"] = dict(sorted(r.nodeSelector.items()))
    if r.tolerations:
        pod["tolerations"] = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in r.tolerations]
    if r.affinity:
        pod["affinity"] = json.loads(json.dumps(r.affinity))  # a copy of the user's free-form object
    if s.sanityCheck.enabled:
        # The check is one process; with several GPUs visible, one process would fall into
        # DataParallel (which TRL refuses), so it gets the first GPU only.
        only_first = [{"name": "CUDA_VISIBLE_DEVICES", "value": "0"}] if r.gpus > 1 else []
        # --output: the findings stay on the shared work volume for the train container's run report.
        sanity_args = ["sftjob", "sanity", vocab.RUN_CONFIG_PATH, "--output", OUTPUT_DIR]
        # On a multi-node job only node 0 runs it; the others wait for node 0 to start training.
        pod["initContainers"] = [_container(vocab.SANITY_CONTAINER, image, job, config, files, pvcs, sanity_args,
                                            only_first + (_nodes_env(job_name) if multi_node else []))]
    train_args = ["sftjob", "run", vocab.RUN_CONFIG_PATH, "--output", OUTPUT_DIR]
    if multi_node:
        train_args = [*_torchrun(job, job_name), "-m", "sftjob.cli", *train_args[1:]]
    elif r.gpus > 1:
        # One data-parallel process per GPU (DDP); rank 0 reports and exports.
        train_args = ["torchrun", "--standalone", f"--nproc-per-node={r.gpus}", _shutdown_timeout(job), "-m", "sftjob.cli",
                      *train_args[1:]]
    if s.sanityCheck.enabled:
        # The init container has run (and passed) the check; the main container must not repeat it.
        train_args.append("--skip-sanity")
    train = _container(vocab.TRAIN_CONTAINER, image, job, config, files, pvcs, train_args,
                       _nodes_env(job_name) if multi_node else [])
    train["ports"] = [{"name": "progress", "containerPort": config.progress_port, "protocol": "TCP"}]
    if multi_node:
        train["ports"].append({"name": "rendezvous", "containerPort": vocab.RENDEZVOUS_PORT, "protocol": "TCP"})
    pod["containers"] = [train]
    pod["volumes"] = _volumes(job, pvcs, files, run_config_name)
    return {
        "metadata": {
            "labels": dict(labels),
            # `kubectl logs` without -c shows the training log.
            "annotations": {"kubectl.kubernetes.io/default-container": vocab.TRAIN_CONTAINER, **CHECKOV_SKIPS},
        },
        "spec": pod,
    }


_NODE_HOST = "SFTJOB_NODE_HOST"


def _leader_endpoint(job_name: str) -> str:
    """Node 0's rendezvous endpoint: its pod's name under the headless Service named like the Job."""
    return f"{job_name}-0.{job_name}:{vocab.RENDEZVOUS_PORT}"


def _nodes_env(job_name: str) -> list[dict[str, Any]]:
    """Which node a pod is (the Job controller's completion index) and where node 0 listens."""
    return [
        {"name": vocab.ENV_NODE_INDEX, "valueFrom": {"fieldRef": {
            "fieldPath": f"metadata.annotations['{vocab.COMPLETION_INDEX_ANNOTATION}']"}}},
        # This pod's own DNS name under the headless Service (earlier variables expand in later ones).
        {"name": _NODE_HOST, "value": f"{job_name}-$({vocab.ENV_NODE_INDEX}).{job_name}"},
        {"name": vocab.ENV_LEADER_ENDPOINT, "value": _leader_endpoint(job_name)},
    ]


def _torchrun(job: SFTJob, job_name: str) -> list[str]:
    """torchrun on every node, meeting at node 0 through the c10d rendezvous.

    c10d gives node ranks in the sorted order of the nodes' addresses, and
    each node gives its own DNS name (`--local-addr`), so `<job>-0` sorts
    first and node 0's first process is global rank 0, the one that reports,
    exports and serves progress. (`--node-rank` would be ignored: torchrun
    uses it with the static rendezvous only.) The other nodes' pods wait in
    their init container until node 0 listens, so the join timeout covers
    only the pods' start-up skew after that.
    """
    r = job.spec.resources
    return [
        "torchrun",
        f"--nnodes={r.nodes}",
        f"--nproc-per-node={max(r.gpus, 1)}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={_leader_endpoint(job_name)}",
        f"--rdzv-id={job.uid or job.name}",
        "--rdzv-conf=join_timeout=900,read_timeout=300",
        f"--local-addr=$({_NODE_HOST})",
        _shutdown_timeout(job),
    ]


def _shutdown_timeout(job: SFTJob) -> str:
    """How long torchrun lets its workers finish after SIGTERM (its default, 30 s, kills a just-in-time checkpoint).

    Most of the pod's grace period, keeping a little for torchrun itself to exit.
    """
    grace = grace_seconds(job)
    return f"--shutdown-timeout={max(grace - min(30, grace // 10), 1)}"


def grace_seconds(job: SFTJob) -> int:
    """The pod's terminationGracePeriodSeconds: the spec's, else a default for GPU or CPU jobs."""
    r = job.spec.resources
    if r.terminationGracePeriodSeconds is not None:
        return r.terminationGracePeriodSeconds
    return DEFAULT_GRACE_GPU if r.gpus > 0 else DEFAULT_GRACE_CPU


SecretFile = tuple[str, str, str, str]  # (file name, Secret, key, spec field)


def _container(name: str, image: str, job: SFTJob, config: OperatorConfig, files: list[SecretFile],
               pvcs: Mapping[str, bool], command: list[str], extra_env: list[dict[str, Any]]) -> dict[str, Any]:
    """One container of the pod; each call builds its own env, resources and mounts."""
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": config.image_pull_policy,
        "command": command,  # an argument array: nothing from the spec reaches a shell
        "workingDir": vocab.WORK_DIR,
        "env": _env(job, config, files) + extra_env,
        "resources": _container_resources(job),
        "volumeMounts": _volume_mounts(pvcs, bool(files)),
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
    return {"requests": dict(amounts), "limits": amounts}


def _secret_files(job: SFTJob) -> list[SecretFile]:
    """Every credential file the pod needs."""
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


def _env(job: SFTJob, config: OperatorConfig, files: list[SecretFile]) -> list[dict[str, Any]]:
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


def _secrets_volume(files: list[SecretFile]) -> dict[str, Any]:
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


def _volume_mounts(pvcs: Mapping[str, bool], secrets: bool) -> list[dict[str, Any]]:
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


def _volumes(job: SFTJob, pvcs: Mapping[str, bool], files: list[SecretFile], run_config_name: str) -> list[dict[str, Any]]:
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
                "name": run_config_name,
                "items": [{"key": vocab.RUN_CONFIG_KEY, "path": vocab.RUN_CONFIG_KEY}],
                "defaultMode": 0o444,
            },
        },
        {"name": _VOL_TMP, "emptyDir": {}},
    ]
    if files:
        volumes.append(_secrets_volume(files))
    for i, (claim, writable) in enumerate(pvcs.items()):
        volumes.append({"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": claim, "readOnly": not writable}})
    return volumes
