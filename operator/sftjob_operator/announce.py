"""What status changes are worth telling: Kubernetes Events and log lines that name the SFTJob.

One Event per new message: a phase transition, and each newly reported
problem (a condition whose reason is not progress). A phase entered because
of a problem is told once, by the problem's Warning.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sftjob.manifest import API_VERSION_FULL
from sftjob.spec import KIND
from sftjob.vocabulary import ConditionType, Phase, Reason

from sftjob_operator.conditions import condition
from sftjob_operator.events import EventPoster

# Reasons that report progress; any other reason on a condition is a problem worth a Warning event.
_PROGRESS_REASONS = {
    Reason.CREATED.value, Reason.QUEUED.value, Reason.RUNNING.value, Reason.PASSED.value,
    Reason.COMPLETED.value, Reason.SUSPENDED.value, Reason.POD_REPLACED.value,
}
# The condition whose message describes each phase in its Event.
_PHASE_CONDITION = {
    Phase.PENDING.value: ConditionType.TRAINING.value,
    Phase.QUEUED.value: ConditionType.TRAINING.value,
    Phase.SANITY_CHECKING.value: ConditionType.SANITY_CHECKED.value,
    Phase.TRAINING.value: ConditionType.TRAINING.value,
    Phase.SUCCEEDED.value: ConditionType.SUCCEEDED.value,
    Phase.FAILED.value: ConditionType.FAILED.value,
    Phase.SUSPENDED.value: ConditionType.SUSPENDED.value,
}

def _ref(sft: Mapping[str, Any]) -> dict[str, Any]:
    """The identity an Event needs to name the SFTJob."""
    meta = sft["metadata"]
    return {"apiVersion": API_VERSION_FULL, "kind": KIND, "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid")}}


_log = logging.getLogger(__name__)


def sftjob_logger(sft: Mapping[str, Any]) -> logging.LoggerAdapter:
    """A logger whose records name the SFTJob (kopf's formatters show `k8s_ref` as the object).

    Status changes are often triggered by a Pod's or Job's event; the log
    line belongs to the SFTJob whose status changed, not to that Pod.
    """
    meta = sft["metadata"]
    ref = {"apiVersion": API_VERSION_FULL, "kind": KIND, **{k: meta.get(k) for k in ("name", "uid", "namespace")}}
    return logging.LoggerAdapter(_log, {"k8s_ref": ref})


def new_problems(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Conditions whose reason is a problem that `old` did not have (a scheduler's changing node counts are not news)."""
    found = []
    for cond in new.get("conditions") or []:
        if cond.get("type") == ConditionType.FAILED.value or cond.get("reason") in _PROGRESS_REASONS:
            continue
        previous = condition(old, cond.get("type", "")) or {}
        if (previous.get("status"), previous.get("reason")) != (cond.get("status"), cond.get("reason")):
            found.append(cond)
    return found



def announce(events: EventPoster, sft: Mapping[str, Any], old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Events (and log lines) for a phase transition and for newly reported problems; one Event per message."""
    ref = _ref(sft)
    logger = sftjob_logger(sft)
    post = events.post
    before, after = old.get("phase"), new.get("phase")
    problems = [] if after == Phase.FAILED.value else new_problems(old, new)  # the Failed event tells the story
    if after and after != before:
        cond = condition(new, _PHASE_CONDITION.get(after, "")) or {}
        message = cond.get("message") or f"The SFTJob is now {after}."
        if after == Phase.EXPORTING.value:
            message = "Training finished; exporting the best checkpoint."
        failed = after == Phase.FAILED.value
        reason = cond.get("reason") if failed and cond.get("reason") else after
        logger.log(logging.WARNING if failed else logging.INFO, "phase %s -> %s: %s", before, after, message)
        # A phase entered because of a problem is told once, by the problem's Warning below.
        if not any(p.get("message") == message for p in problems):
            post(ref, "Warning" if failed else "Normal", reason, message)
    for cond in problems:
        logger.warning("%s: %s", cond.get("reason"), cond.get("message"))
        post(ref, "Warning", cond.get("reason") or "Problem", cond.get("message") or "")
