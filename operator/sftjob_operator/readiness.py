"""Ready, Reconciling and Stalled: the summary conditions that kubectl wait, Flux and other GitOps tools read.

Those tools know nothing of SFTJob's own conditions (SanityChecked,
Training, ...). They follow two shared conventions instead:

- `Ready` (normal-true): `kubectl wait --for=condition=Ready` returns once it
  is True, and kstatus falls back on it. True only when the job succeeded.
- `Reconciling` and `Stalled` (abnormal-true, kstatus' own): Reconciling True
  means work is in progress (kstatus: InProgress); Stalled True means the job
  failed and no retry will change that (kstatus: Failed).

`readiness_conditions` derives all three from the phase and the other
conditions, and every status the operator writes goes through it (through
`summarized`), so they can never disagree with the phase or with each other.
Being a function of what it is given, it changes nothing when nothing else
changed: no extra status patch per progress poll. Reasons are CamelCase: the
phase name while the job is on its way, the stage condition's reason for what
is going on, the failure's own reason once it failed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from sftjob.vocabulary import ConditionType, Phase, Reason

from sftjob_operator.conditions import set_condition

READY = ConditionType.READY.value
RECONCILING = ConditionType.RECONCILING.value
STALLED = ConditionType.STALLED.value
# In this order, after the conditions they summarize.
SUMMARY_TYPES = (READY, RECONCILING, STALLED)

_SANITY = ConditionType.SANITY_CHECKED.value
_TRAINING = ConditionType.TRAINING.value
# The stage condition that says what a phase is doing.
_STAGE_OF_PHASE = {Phase.SANITY_CHECKING.value: _SANITY, Phase.TRAINING.value: _TRAINING}
EXPORTING_MESSAGE = "Training finished; exporting the best checkpoint."


class Summary(NamedTuple):
    """One summary condition: status, reason, message."""

    status: str
    reason: str
    message: str


def _stage(phase: str, conds: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The stage condition that says what is going on in an unfinished phase."""
    own = _STAGE_OF_PHASE.get(phase)
    if own is not None and own in conds:
        return conds[own]
    # Pending, Queued: the stage still to pass; a definite problem (False) before a wait (Unknown),
    # the later stage before the earlier one.
    unsettled = [conds[t] for t in (_TRAINING, _SANITY) if t in conds and conds[t].get("status") != "True"]
    unsettled.sort(key=lambda c: c.get("status") != "False")
    return unsettled[0] if unsettled else None


def summarize(phase: str, conditions: Sequence[Mapping[str, Any]]) -> tuple[Summary, Summary, Summary]:
    """Ready, Reconciling and Stalled for a phase, given the job's other conditions."""
    conds = {c.get("type"): c for c in conditions}
    if phase == Phase.SUCCEEDED.value:
        done = (conds.get(ConditionType.SUCCEEDED.value) or {}).get("message") or "The job succeeded."
        return (Summary("True", Reason.COMPLETED.value, done),
                Summary("False", phase, "Nothing left to do: the job succeeded."),
                Summary("False", phase, "Not stalled: the job succeeded."))
    if phase == Phase.FAILED.value:
        failed = conds.get(ConditionType.FAILED.value) or {}
        reason, message = failed.get("reason") or phase, failed.get("message") or "The job failed."
        return (Summary("False", reason, message),
                Summary("False", phase, f"Nothing left to do: the job failed ({reason}) and is not retried."),
                Summary("True", reason, message))
    if phase == Phase.SUSPENDED.value:
        message = (conds.get(ConditionType.SUSPENDED.value) or {}).get("message") or "Suspended."
        return (Summary("False", Reason.SUSPENDED.value, message),
                Summary("False", Reason.SUSPENDED.value, message),
                Summary("False", phase, "Not stalled: the job is suspended and resumes when spec.suspend is false."))
    if phase == Phase.EXPORTING.value:
        reason, message = phase, EXPORTING_MESSAGE
    else:
        stage = _stage(phase, conds) or {}
        reason, message = stage.get("reason") or phase, stage.get("message") or f"The job is {phase}."
    return (Summary("False", phase, f"{phase}: {message}"),
            Summary("True", reason, message),
            Summary("False", phase, f"Not stalled: the job is {phase}."))


def readiness_conditions(
    phase: str | None, conditions: Sequence[Mapping[str, Any]], generation: int | None, now: str
) -> list[dict[str, Any]]:
    """`conditions` with Ready, Reconciling and Stalled set for `phase`, placed after the others.

    Each gets `observedGeneration` = `generation` when it is known; lastTransitionTime
    moves only when a condition's status does. Without a phase there is nothing to summarize.
    """
    if not phase:
        return [dict(c) for c in conditions]
    others = [dict(c) for c in conditions if c.get("type") not in SUMMARY_TYPES]
    previous = {c.get("type"): c for c in conditions if c.get("type") in SUMMARY_TYPES}
    summary = []
    for ctype, (status, reason, message) in zip(SUMMARY_TYPES, summarize(phase, others)):
        was = [previous[ctype]] if ctype in previous else []
        summary += set_condition(was, ctype, status, reason, message, now, observed_generation=generation)
    return others + summary


def summarized(status: Mapping[str, Any], generation: int | None, now: str) -> dict[str, Any]:
    """A copy of an SFTJob status with its summary conditions set, and observedGeneration when `generation` is known.

    Without a generation, the status' own observedGeneration (the spec the operator last acted on) is used.
    """
    out = dict(status)
    if generation is not None:
        out["observedGeneration"] = generation
    conds = readiness_conditions(out.get("phase"), out.get("conditions") or [], out.get("observedGeneration"), now)
    if conds:
        out["conditions"] = conds
    return out


def without_summary(status: Mapping[str, Any]) -> dict[str, Any]:
    """A status without the summary conditions (they restate the others: telling both would tell twice)."""
    out = dict(status)
    if "conditions" in out:
        out["conditions"] = [c for c in out["conditions"] or [] if c.get("type") not in SUMMARY_TYPES]
    return out
