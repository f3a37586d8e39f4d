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
) -> list[dict[str, Any]]:
    """A copy of `conditions` with one condition set; lastTransitionTime moves only when status does."""
    out = [dict(c) for c in conditions]
    for cond in out:
        if cond.get("type") == ctype:
            if cond.get("status") != status or not cond.get("lastTransitionTime"):
                cond["lastTransitionTime"] = now
            cond.update(status=status, reason=reason, message=message)
            return out
    out.append({"type": ctype, "status": status, "reason": reason, "message": message, "lastTransitionTime": now})
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
