"""The versioned run config: the whole contract between operator and runtime.

The operator renders it into a ConfigMap (JSON); the runtime reads it and
nothing else. It holds no secrets: credentials reach the pod only as
environment variables from `secretKeyRef`, and the runtime reads them from
its environment. It holds nothing about Kubernetes either (no node
selectors, no secret names): only what training needs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, ValidationError

from sftjob.manifest import ManifestError, SFTJob, format_validation_error
from sftjob.spec import DatasetSpec, LoraSpec, ModelSettings, ModelSpec, OutputSettings, SanityCheckSpec, TrainingSpec, _Model

RUN_CONFIG_VERSION = "sftjob.dev/run-config/v1"


# The model and output sections as the spec has them, less the Secret references: a field
# added to the spec reaches the run config without being declared twice.
RunModel = ModelSettings
RunOutput = OutputSettings


class RunMonitoring(_Model):
    """Metric sinks (the W&B key comes from the environment)."""

    reportTo: list[Literal["tensorboard", "wandb"]] = Field(default_factory=lambda: ["tensorboard"])
    wandbProject: str | None = None
    wandbEntity: str | None = None


class RunConfig(_Model):
    """Everything one training run needs. `version` is checked on load."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    version: Literal["sftjob.dev/run-config/v1"] = RUN_CONFIG_VERSION
    name: str = Field(description="The SFTJob's name (for run names and logs).")
    namespace: str | None = None
    model: RunModel
    dataset: DatasetSpec
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    sanityCheck: SanityCheckSpec = Field(default_factory=SanityCheckSpec)
    output: RunOutput
    monitoring: RunMonitoring = Field(default_factory=RunMonitoring)
    gpus: int = Field(default=0, ge=0, description="Devices per node the job was given (0: CPU).")
    nodes: int = Field(default=1, ge=1)
    strategy: Literal["auto", "ddp", "fsdp"] = Field(default="auto", description="spec.resources.strategy.")
    gpuMemory: str | None = Field(default=None, description="spec.resources.gpuMemory.")

    @classmethod
    def from_sftjob(cls, job: SFTJob) -> "RunConfig":
        """Project a validated SFTJob onto the run config (drops everything Kubernetes)."""
        s = job.spec
        m: ModelSpec = s.model
        return cls(
            name=job.name,
            namespace=job.namespace,
            model=RunModel(**m.model_dump(exclude={"tokenSecretRef"})),
            dataset=s.dataset,
            training=s.training,
            sanityCheck=s.sanityCheck,
            output=RunOutput(**s.output.model_dump(exclude={"credentialsSecretRef"})),
            monitoring=RunMonitoring(
                reportTo=list(s.monitoring.reportTo),
                wandbProject=s.monitoring.wandb.project if s.monitoring.wandb else None,
                wandbEntity=s.monitoring.wandb.entity if s.monitoring.wandb else None,
            ),
            gpus=s.resources.gpus,
            nodes=s.resources.nodes,
            strategy=s.resources.strategy,
            gpuMemory=s.resources.gpuMemory,
        )

    def to_json(self) -> str:
        """Canonical JSON for the ConfigMap: fields in declaration order, unset optionals omitted, indented.

        Serialized by pydantic's own (compiled) serializer: `json.dumps` with
        an indent runs the pure-Python encoder, a tenth of the operator's
        render time per SFTJob.
        """
        return self.model_dump_json(by_alias=True, exclude_none=True, indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = "<run config>") -> "RunConfig":
        """Parse and validate; errors name the field, like manifest errors."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ManifestError([f"{source}:{e.lineno}: invalid JSON: {e.msg}"]) from None
        if not isinstance(data, dict) or data.get("version") != RUN_CONFIG_VERSION:
            got = data.get("version") if isinstance(data, dict) else None
            raise ManifestError([f"{source}: version: this runtime reads {RUN_CONFIG_VERSION} (got {got!r})"])
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ManifestError([f"{source}: " + line.replace("spec.", "", 1) for line in format_validation_error(e)]) from None

    @property
    def devices(self) -> int:
        """Data-parallel processes (at least 1: the CPU counts as one)."""
        return max(self.gpus, 1) * self.nodes


def load_run_config(path: str | Path) -> RunConfig:
    """A run config from a JSON file, or from an SFTJob manifest (local runs)."""
    p = Path(path)
    if p.suffix == ".json":
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise ManifestError([f"{p}: cannot read ({e.strerror or e})"]) from None
        return RunConfig.from_json(text, str(p))
    from sftjob.manifest import load_sftjob

    return RunConfig.from_sftjob(load_sftjob(p))


__all__ = ["RUN_CONFIG_VERSION", "RunConfig", "RunModel", "RunOutput", "RunMonitoring", "load_run_config", "LoraSpec"]
