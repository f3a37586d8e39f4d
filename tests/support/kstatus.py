"""What GitOps tools conclude from an SFTJob: kstatus (Flux, kpt, cli-utils) and `kubectl wait --for=condition=...`.

Small, faithful re-implementations of the rules as their sources state them,
so status tests can assert what those tools will say without running them:

- kstatus, `pkg/kstatus/status` of kubernetes-sigs/cli-utils (`Compute`,
  `checkGenericProperties`, `checkGeneration`, `checkReadyCondition`), for a
  custom resource (no type-specific rules): deletionTimestamp -> Terminating;
  status.observedGeneration present and != metadata.generation -> InProgress;
  then the first condition that is Reconciling=True (InProgress) or
  Stalled=True (Failed) decides; then a Ready condition decides (True ->
  Current, False or Unknown -> InProgress); otherwise Current.
- kubectl wait's condition check (`pkg/cmd/wait/condition.go` of
  kubernetes/kubectl): the named condition's status must equal the wanted
  one (case-insensitively), unless its observedGeneration (or, lacking one,
  status.observedGeneration) is below metadata.generation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

IN_PROGRESS, FAILED, CURRENT, TERMINATING = "InProgress", "Failed", "Current", "Terminating"


def _conditions(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list((obj.get("status") or {}).get("conditions") or [])


def kstatus(obj: Mapping[str, Any]) -> tuple[str, str]:
    """kstatus' (status, message) for a custom resource."""
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    if meta.get("deletionTimestamp"):
        return TERMINATING, "Resource scheduled for deletion"
    generation, observed = meta.get("generation"), status.get("observedGeneration")
    if generation is not None and observed is not None and observed != generation:
        return IN_PROGRESS, f"{obj.get('kind')} generation is {generation}, but latest observed generation is {observed}"
    for cond in _conditions(obj):
        if cond.get("type") == "Reconciling" and cond.get("status") == "True":
            return IN_PROGRESS, cond.get("message", "")
        if cond.get("type") == "Stalled" and cond.get("status") == "True":
            return FAILED, cond.get("message", "")
    for cond in _conditions(obj):
        if cond.get("type") != "Ready":
            continue
        if cond.get("status") == "True":
            return CURRENT, "Resource is Ready"
        if cond.get("status") in ("False", "Unknown"):
            return IN_PROGRESS, cond.get("message", "")
    return CURRENT, "Resource is current"


def kubectl_wait_met(obj: Mapping[str, Any], ctype: str, wanted: str = "True") -> bool:
    """Whether `kubectl wait --for=condition=<ctype>=<wanted>` returns for this object."""
    generation = (obj.get("metadata") or {}).get("generation")
    for cond in _conditions(obj):
        if str(cond.get("type", "")).casefold() != ctype.casefold() or "status" not in cond:
            continue
        observed = cond.get("observedGeneration", (obj.get("status") or {}).get("observedGeneration"))
        if generation is not None and observed is not None and observed < generation:
            return False
        return str(cond["status"]).casefold() == wanted.casefold()
    return False
