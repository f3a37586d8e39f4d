"""Kubernetes condition conventions and JSON merge patches, for SFTJob status.

Pure helpers: a condition's `lastTransitionTime` moves only when its
`status` changes; `merge_diff` gives the RFC 7386 merge patch between two
statuses (what the operator writes), `apply_merge_patch` applies one.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any


def now_rfc3339(now: datetime.datetime | None = None) -> str:
    """Kubernetes' time format (UTC, seconds)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")



# -- conditions --------------------------------------------------------------------------------


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    ctype: str,
    status: str,
    reason: str,
    message: str,
    now: str,
    *,
    observed_generation: int | None = None,
) -> list[dict[str, Any]]:
    """A copy of `conditions` with one condition set; lastTransitionTime moves only when status does.

    `observed_generation`, when given, is the metadata.generation the condition answers (what
    `kubectl wait` compares with the object's generation); otherwise the condition keeps its own.
    """
    out = [dict(c) for c in conditions]
    found = next((c for c in out if c.get("type") == ctype), None)
    if found is None:
        found = {"type": ctype}
        out.append(found)
    if found.get("status") != status or not found.get("lastTransitionTime"):
        found["lastTransitionTime"] = now
    found.update(status=status, reason=reason, message=message)
    if observed_generation is not None:
        found["observedGeneration"] = observed_generation
    return out


def keep_transition_times(before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`after`, with the lastTransitionTime of `before` on each condition whose status did not change.

    For statuses built afresh (the create handler's) rather than step by step through set_condition.
    """
    old = {c.get("type"): c for c in before}
    out = []
    for cond in after:
        was = old.get(cond.get("type")) or {}
        same = was.get("status") == cond.get("status") and was.get("lastTransitionTime")
        out.append({**cond, "lastTransitionTime": was["lastTransitionTime"]} if same else dict(cond))
    return out


def condition(status: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    """The condition of a type in an SFTJob status, or None."""
    for cond in status.get("conditions") or []:
        if cond.get("type") == ctype:
            return cond
    return None


# -- merge patches -----------------------------------------------------------------------------


def merge_diff(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`; {} when equal."""
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return new
    patch: dict[str, Any] = {}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_diff(old[key], value) if isinstance(value, Mapping) and isinstance(old[key], Mapping) else value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """Apply a JSON merge patch to a copy of `target`."""
    if not isinstance(patch, Mapping):
        return patch
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = apply_merge_patch(out.get(key), value)
    return out
