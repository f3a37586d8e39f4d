"""What the runtime reports back: live progress and the final result.

The training pod has no API credentials. It reports through two channels
the operator reads:
- live `Progress`, served as JSON on http://<pod-ip>:PROGRESS_PORT/progress
  and polled by the operator at a bounded rate;
- a final `Outcome`, written to the container's termination message
  (Kubernetes keeps at most 4096 bytes of it), read from the Pod status.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TERMINATION_MESSAGE_LIMIT = 4096


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class Progress(_Wire):
    """A snapshot of a running job, as status.progress shows it."""

    stage: Literal["loading", "sanity", "training", "evaluating", "exporting", "done"] = "loading"
    step: int = 0
    totalSteps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    evalLoss: float | None = None
    bestEvalLoss: float | None = None
    bestStep: int | None = None
    learningRate: float | None = None
    gradNorm: float | None = None
    tokensPerSecond: float | None = None
    etaSeconds: int | None = None
    warnings: list[str] = Field(default_factory=list)


class SanityResult(_Wire):
    """Findings of the sanity check (status.sanityCheck)."""

    passed: bool
    reason: str | None = None
    message: str | None = None
    initialLoss: float | None = None
    finalLoss: float | None = None
    rows: int | None = None
    maskedRows: int | None = None
    truncatedRows: int | None = None
    truncatedAnswers: int | None = None
    emptyAnswers: int | None = None
    suggestedMaxSeqLength: int | None = None
    sample: str | None = None


class BestCheckpoint(_Wire):
    """Where the exported checkpoint is (status.bestCheckpoint)."""

    uri: str
    step: int | None = None
    evalLoss: float | None = None


class PlanSummary(_Wire):
    """The pre-flight memory plan the runtime made with the job's model and data (status.plan).

    The whole plan (every strategy, the data, the assumptions) is in the run
    report and `sftjob plan --json`; this is what a person reads in status.
    """

    strategy: str | None = Field(default=None, description=(
        "Strategy the plan picks (ddp, fsdp, fsdp_offload); absent when none fits. The runtime trains DDP today."))
    fits: bool = Field(description="Whether the plan's pick fits the device memory.")
    devices: int | None = Field(default=None, description="Data-parallel processes: GPUs x nodes (the CPU counts as one).")
    memory: str | None = Field(default=None, description="Device memory the plan was made for (e.g. 80 GB), and from where.")
    usableBytes: int | None = Field(default=None, description=(
        "Bytes of that memory usable for tensors (less the CUDA context and allocator fragmentation)."))
    ddpPeakBytes: int | None = Field(default=None, description="Estimated peak bytes per device under DDP.")
    message: str | None = Field(default=None, description="Whether it fits and, if not, the changes that would make it fit.")


class Outcome(_Wire):
    """The termination message of a runtime container."""

    ok: bool
    reason: str | None = None
    message: str | None = None
    sanity: SanityResult | None = None
    bestCheckpoint: BestCheckpoint | None = None
    evalLossBefore: float | None = None
    evalLossAfter: float | None = None
    resolved: dict | None = None
    plan: PlanSummary | None = None

    def to_termination_message(self) -> str:
        """Compact JSON that fits Kubernetes' 4096-byte limit (long texts are cut first)."""
        data = self.model_dump(mode="json", exclude_none=True)
        text = json.dumps(data, separators=(",", ":"))
        for key in ("message",):
            if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
                break
            if data.get(key):
                data[key] = data[key][:500] + "..."
                text = json.dumps(data, separators=(",", ":"))
        if len(text.encode()) > TERMINATION_MESSAGE_LIMIT and (data.get("plan") or {}).get("message"):
            data["plan"]["message"] = data["plan"]["message"][:400] + "..."
            text = json.dumps(data, separators=(",", ":"))
        if len(text.encode()) > TERMINATION_MESSAGE_LIMIT and data.get("sanity", {}).get("sample"):
            data["sanity"]["sample"] = data["sanity"]["sample"][:300] + "..."
            text = json.dumps(data, separators=(",", ":"))
        if len(text.encode()) > TERMINATION_MESSAGE_LIMIT:
            data.pop("resolved", None)
            text = json.dumps(data, separators=(",", ":"))
        return text

    @classmethod
    def from_termination_message(cls, text: str | None) -> "Outcome | None":
        """Parse a termination message; None when absent or not ours (e.g. a crash's stack tail)."""
        if not text:
            return None
        try:
            return cls.model_validate_json(text.strip())
        except ValueError:
            return None
