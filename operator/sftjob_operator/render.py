"""Rendering: one SFTJob in, the Kubernetes objects the operator creates out.

Pure: no API calls, no clock, no randomness, no kopf or kubernetes-client
imports, so `sftjob render` prints exactly what the operator would create and
tests check it without a server. Objects are built as plain dicts of JSON
values, fresh on every call (no sub-object shared, so callers may edit them).

What it renders, for an SFTJob named N:
- ConfigMap `N-run-config` holding the versioned run config (no secrets);
- Job `N-sft`, whose spec (the training pod) is built by `jobspec.job_spec`;
- with `resources.nodes` > 1, a headless Service `N-sft` before the Job, which
  gives each node's pod the DNS name `N-sft-<index>.N-sft`.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pydantic_core

from sftjob import vocabulary as vocab
from sftjob.manifest import API_VERSION_FULL, SFTJob
from sftjob.runconfig import RunConfig
from sftjob.spec import DNS_LABEL_PATTERN, KIND, unavailable_errors
from sftjob_operator.config import OperatorConfig
from sftjob_operator.jobspec import CHECKOV_SKIPS, OUTPUT_DIR, job_spec
from sftjob_operator.locations import PVC_MOUNT_ROOT, PVC_SCHEME, RenderError, local_only_errors, pvc_claims, pvc_local

CONFIGMAP_SUFFIX = "-run-config"
JOB_SUFFIX = "-sft"
MAX_OBJECT_NAME = 63
COMPONENT_RUN_CONFIG = "run-config"
COMPONENT_TRAINING = "training"
APP_NAME = "sftjob"

_DNS_LABEL = re.compile(DNS_LABEL_PATTERN)

def configmap_name(name: str) -> str:
    """Name of the run-config ConfigMap of SFTJob `name`."""
    return name + CONFIGMAP_SUFFIX


def job_name(name: str) -> str:
    """Name of the batch/v1 Job of SFTJob `name`."""
    return name + JOB_SUFFIX


def render(job: SFTJob, config: OperatorConfig) -> list[dict]:
    """The objects the operator creates for `job`, in creation order: [ConfigMap, (Service,) Job], as plain dicts.

    Deterministic: the same SFTJob and config always give the same objects.
    Owner references are set only when the SFTJob's uid is known (objects
    read from the API server); offline renders omit them.
    """
    _check_name(job.name, job.spec.resources.nodes)
    refused = local_only_errors(job) + unavailable_errors(strategy=job.spec.resources.strategy)
    if refused:
        raise RenderError(*refused)
    run_config_json = _run_config(job).to_json()
    training_labels = _labels(job.name, COMPONENT_TRAINING)
    spec = job_spec(job, config, pvc_claims(job), training_labels, configmap_name(job.name), job_name(job.name))
    digest = spec_hash(run_config_json, spec)
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
        "spec": spec,
    }
    batch_job["metadata"]["annotations"].update(CHECKOV_SKIPS)
    if job.spec.queueName:
        batch_job["metadata"]["labels"][vocab.KUEUE_QUEUE_LABEL] = job.spec.queueName
    if job.spec.resources.nodes == 1:
        return [configmap, batch_job]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, job_name(job.name), COMPONENT_TRAINING, digest),
        "spec": {
            "clusterIP": "None",
            # Node 0 must be reachable by name as soon as it has an IP: the pods have no readiness probe
            # to wait for, and the other nodes look it up while it still runs its sanity check.
            "publishNotReadyAddresses": True,
            "selector": {k: training_labels[k] for k in (vocab.LABEL_JOB_NAME, vocab.LABEL_COMPONENT)},
            "ports": [{"name": "rendezvous", "port": vocab.RENDEZVOUS_PORT, "targetPort": vocab.RENDEZVOUS_PORT,
                       "protocol": "TCP"}],
        },
    }
    return [configmap, service, batch_job]


def spec_hash(run_config_json: str, job_spec: dict) -> str:
    """sha256 over the run config and the Job spec (less `suspend`, which may change), as rendered.

    Stamped on both children so a person (or a later tool) can tell which
    spec a Job was made from; the operator itself recognises its children by
    their owner reference. Rendering is deterministic, key order included, so
    the objects are hashed in the order they were built (compact JSON from
    pydantic's compiled serializer: sorting the keys of a 5 KB Job spec with
    `json.dumps` was half of the render time).
    """
    relevant = {k: v for k, v in job_spec.items() if k != "suspend"}
    digest = hashlib.sha256(run_config_json.encode())
    digest.update(b"\n")
    digest.update(pydantic_core.to_json(relevant))
    return digest.hexdigest()


def _check_name(name: str, nodes: int) -> None:
    longest = max(configmap_name(name), job_name(name), key=len)
    if not _DNS_LABEL.match(name) or len(longest) > MAX_OBJECT_NAME:
        raise RenderError(
            f"metadata.name: must be a DNS label short enough that {longest!r} fits in "
            f"{MAX_OBJECT_NAME} characters (at most {MAX_OBJECT_NAME - len(CONFIGMAP_SUFFIX)}), got {name!r}"
        )
    if nodes > 1 and not name[:1].isalpha():
        raise RenderError(
            f"metadata.name: a multi-node job (spec.resources.nodes: {nodes}) names its headless Service after it, "
            f"and a Service name must start with a letter; got {name!r}"
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
    if not any(uri and uri.startswith(PVC_SCHEME)
               for uri in (s.model.source, s.dataset.train, s.dataset.validation, s.output.uri)):
        return rc

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


__all__ = ["CHECKOV_SKIPS", "OUTPUT_DIR", "PVC_MOUNT_ROOT", "RenderError", "configmap_name", "job_name", "local_only_errors", "render",
           "spec_hash"]
