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
        """Compact JSON that fits Kubernetes' 4096-byte limit (long texts are cut first, then whole sections).

        The kubelet keeps only the tail of a longer message, which would no
        longer parse: the outcome would be lost, so the limit always holds.
        """
        data = self.model_dump(mode="json", exclude_none=True)

        def text() -> str:  # UTF-8, not \u escapes: non-ASCII text costs 2-3 bytes a character, not 6-12
            return json.dumps(data, separators=(",", ":"), ensure_ascii=False)

        def fits() -> bool:
            return len(text().encode()) <= TERMINATION_MESSAGE_LIMIT

        cuts = [("message",), ("sanity", "message"), ("sanity", "sample"), ("plan", "message")]
        for path in cuts:
            if fits():
                return text()
            holder = data
            for key in path[:-1]:
                holder = holder.get(key) or {}
            if isinstance(holder.get(path[-1]), str) and len(holder[path[-1]]) > 300:
                holder[path[-1]] = holder[path[-1]][:300] + "..."
        for section in ("resolved", "plan", "sanity"):
            if fits():
                return text()
            data.pop(section, None)
        if not fits():  # the last resort: what status needs to say how it ended
            data = {k: data[k] for k in ("ok", "reason", "bestCheckpoint") if k in data}
            data["message"] = (self.message or "")[:1000]
        return text()

    @classmethod
    def from_termination_message(cls, text: str | None) -> "Outcome | None":
        """Parse a termination message; None when absent or not ours (e.g. a crash's stack tail)."""
        if not text:
            return None
        try:
            return cls.model_validate_json(text.strip())
        except ValueError:
            return None
