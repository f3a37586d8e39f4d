"""Where a training pod reads and writes: pvc:// locations, and values only a local run can use.

`pvc://CLAIM/PATH` locations in the spec are mounted at PVC_MOUNT_ROOT/CLAIM
and handed to the runtime as plain paths (the runtime knows no Kubernetes).
Local paths, `~` and `file://` name this machine's files: fine for `sftjob
run`, nowhere to be found in a pod, so rendering refuses them naming each field.
"""

from __future__ import annotations

import re

from sftjob.manifest import SFTJob


# pvc://CLAIM/PATH locations in the spec are mounted at PVC_MOUNT_ROOT/CLAIM
# and handed to the runtime as plain paths: the runtime knows no Kubernetes.
PVC_MOUNT_ROOT = "/mnt/pvc"
PVC_SCHEME = "pvc://"


class RenderError(ValueError):
    """The SFTJob cannot be rendered; each of `errors` names a field to change."""

    def __init__(self, *errors: str) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(errors))


# Where a pod can read from and write to. Anything else (a path, ~, file://) means
# this machine's files: fine for `sftjob run`, nowhere to be found in a pod.
CLUSTER_SCHEMES = ("s3://", PVC_SCHEME)
_LOCAL_MODEL = ("/", "./", "../", "~", "file://")


def local_only_errors(job: SFTJob) -> list[str]:
    """Fields that name this machine's files, which a training pod cannot see (empty: fit for a cluster)."""
    s = job.spec
    errors = []
    how = "only `sftjob run` on the machine that has it can read it; on a cluster use"
    source = s.model.source
    if source.startswith(_LOCAL_MODEL) or source in (".", ".."):
        errors.append(f"spec.model.source: {source!r} is a local path: {how} a Hugging Face hub id, s3://BUCKET/PREFIX "
                      "or pvc://CLAIM/PATH")
    for field, value in (("spec.dataset.train", s.dataset.train), ("spec.dataset.validation", s.dataset.validation)):
        if value and not value.startswith(CLUSTER_SCHEMES):
            errors.append(f"{field}: {value!r} is a local path: {how} s3://BUCKET/KEY or pvc://CLAIM/PATH")
    if not s.output.uri.startswith(CLUSTER_SCHEMES):
        errors.append(f"spec.output.uri: {s.output.uri!r} is a local location: the model would be written inside the "
                      "pod and lost with it; on a cluster use s3://BUCKET/PREFIX or pvc://CLAIM/PATH")
    return errors


# The training image's unprivileged user (restricted Pod Security Standard).
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _pvc_split(field: str, uri: str) -> tuple[str, str]:
    claim, _, path = uri[len(PVC_SCHEME):].partition("/")
    if not claim or len(claim) > 253 or not _DNS_SUBDOMAIN.match(claim):
        raise RenderError(f"{field}: pvc:// locations are pvc://CLAIM/PATH with a valid claim name, got {uri!r}")
    return claim, path.strip("/")


def pvc_local(field: str, uri: str) -> str:
    claim, path = _pvc_split(field, uri)
    return f"{PVC_MOUNT_ROOT}/{claim}/{path}" if path else f"{PVC_MOUNT_ROOT}/{claim}"


def _pvc_locations(job: SFTJob) -> list[tuple[str, str]]:
    s = job.spec
    found = [("spec.model.source", s.model.source), ("spec.dataset.train", s.dataset.train),
             ("spec.dataset.validation", s.dataset.validation), ("spec.output.uri", s.output.uri)]
    return [(f, u) for f, u in found if u and u.startswith(PVC_SCHEME)]


def pvc_claims(job: SFTJob) -> dict[str, bool]:
    """Claims named by pvc:// locations, mapped to whether the pod writes to them (the output)."""
    claims: dict[str, bool] = {}
    for field, uri in _pvc_locations(job):
        claim, _ = _pvc_split(field, uri)
        claims[claim] = claims.get(claim, False) or field == "spec.output.uri"
    return dict(sorted(claims.items()))
