"""Live progress: the operator polls the training pod's progress endpoint and shows it in status.progress.

Why the operator pulls instead of the pod pushing:

* The training pod has no API credentials (DESIGN.md section 7: least
  privilege; a pod running user-chosen models and data must not be able to
  write to the API server). It cannot patch its own SFTJob, so it *serves*
  a JSON snapshot (`sftjob.report.Progress`) on
  `http://<podIP>:<PROGRESS_PORT>/progress` and the operator reads it.
* The operator already reaches pods over the pod network (it is a pod
  itself), so this needs no new Service, sidecar or message broker; a
  NetworkPolicy that isolates training pods must allow ingress on the
  progress port from the operator's pods.
* Polling is bounded by construction: one short request per running job
  per `progress_poll_seconds`, with `progress_timeout_seconds` as the
  timeout, so load on the API server (one status patch per poll, only when
  something changed) does not grow with the trainer's logging rate, and a
  slow or dead pod costs one timed-out request, not a stuck worker.
  Failures are logged and skipped: progress is a convenience.
* The final result does not depend on polling: the runtime writes its
  `Outcome` (best checkpoint, sanity report, failure reason) to the
  container's termination message, which Kubernetes keeps in the Pod's
  status after the container exits, and `status.py` reads it from there.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
from collections.abc import Mapping
from typing import Any

import aiohttp
from pydantic import ValidationError
from sftjob.report import Progress
from sftjob.vocabulary import PROGRESS_PATH, Phase

from sftjob_operator.explain import leader_pods

logger = logging.getLogger(__name__)

# Which progress stages belong to which SFTJob phases (a stale snapshot from
# the sanity run must not show up as training progress, and vice versa).
_STAGES_FOR_PHASE = {
    Phase.SANITY_CHECKING.value: {"loading", "sanity"},
    Phase.TRAINING.value: {"loading", "training", "evaluating", "exporting", "done"},
    Phase.EXPORTING.value: {"training", "evaluating", "exporting", "done"},
    Phase.SUCCEEDED.value: {"training", "evaluating", "exporting", "done"},
    Phase.FAILED.value: {"training", "evaluating", "exporting", "done"},
}
# Fields copied from the runtime's report into status.progress.
_FIELDS = (
    "stage", "step", "totalSteps", "epoch", "loss", "evalLoss", "bestEvalLoss", "bestStep",
    "learningRate", "gradNorm", "tokensPerSecond",
)


def format_eta(seconds: int | float | None) -> str | None:
    """Human text for a remaining time: '45s', '12m 05s', '3h 07m', '2d 04h'."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def _round(value: Any) -> Any:
    # Six significant digits: enough for a loss or a learning rate, and no
    # status patch just because the 12th digit of a float moved.
    if isinstance(value, float):
        return float(f"{value:.6g}")
    return value


def progress_status(progress: Progress, phase: str | None) -> dict[str, Any] | None:
    """status.progress for a runtime report, or None when the report does not belong to `phase`."""
    if progress.stage not in _STAGES_FOR_PHASE.get(phase or "", set()):
        return None
    out: dict[str, Any] = {}
    warnings = list(progress.warnings)
    for name in _FIELDS:
        value = getattr(progress, name)
        if isinstance(value, float) and not math.isfinite(value):
            # JSON (and the CRD's number fields) have no NaN/inf: say it in words instead.
            warnings.append(f"{name} is {value}")
        elif value is not None:
            out[name] = _round(value)
    if progress.etaSeconds is not None and progress.stage not in ("done",):
        out["etaSeconds"] = int(progress.etaSeconds)
        out["eta"] = format_eta(progress.etaSeconds)
    if warnings:
        out["warnings"] = warnings[:10]
    return out


def progress_url(pod_ip: str, port: int) -> str:
    """The runtime's progress URL on a pod (IPv6 addresses bracketed)."""
    try:
        host = f"[{pod_ip}]" if ipaddress.ip_address(pod_ip).version == 6 else pod_ip
    except ValueError:
        host = pod_ip
    return f"http://{host}:{port}{PROGRESS_PATH}"


def _serving(pod: Mapping[str, Any]) -> bool:
    """Whether a runtime runs in the pod: the train container (phase Running) or the sanity init container.

    While init containers run, the pod's phase is Pending; only the container
    statuses say that the sanity check (which serves progress too) is running.
    """
    status = pod.get("status") or {}
    if not status.get("podIP") or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    if status.get("phase") == "Running":
        return True
    return status.get("phase") == "Pending" and any(
        "running" in (cs.get("state") or {}) for cs in status.get("initContainerStatuses") or []
    )


def running_pod_ip(pods: list[Mapping[str, Any]] | tuple[Mapping[str, Any], ...]) -> str | None:
    """The IP of the newest pod whose runtime serves progress (training or the sanity check): node 0's."""
    live = [p for p in leader_pods(pods) if _serving(p)]
    if not live:
        return None
    newest = max(live, key=lambda p: ((p.get("metadata") or {}).get("creationTimestamp") or "", (p.get("metadata") or {}).get("name") or ""))
    return newest["status"]["podIP"]


async def fetch_progress(
    session: aiohttp.ClientSession, url: str, timeout: float, log: logging.Logger | logging.LoggerAdapter = logger
) -> Progress | None:
    """One GET of the progress endpoint; None (with a log line) on any failure."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            if response.status != 200:
                log.info("progress endpoint %s answered HTTP %s; skipped", url, response.status)
                return None
            text = await response.text()
        return Progress.model_validate(json.loads(text))
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        log.info("progress endpoint %s unreachable (%s); skipped", url, type(e).__name__)
    except (ValueError, ValidationError) as e:
        log.info("progress endpoint %s sent an unreadable report (%s); skipped", url, str(e).splitlines()[0][:200])
    return None
