"""Operator settings: one object, read from SFTJOB_OPERATOR_* environment variables, validated at startup."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sftjob.vocabulary import PROGRESS_PORT

ENV_PREFIX = "SFTJOB_OPERATOR_"
DEFAULT_IMAGE = "ghcr.io/sftjob/sftjob-runtime:0.1.0"


class OperatorConfig(BaseModel):
    """Everything the operator needs besides the SFTJobs themselves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str = Field(default=DEFAULT_IMAGE, description="Default training image (spec.image overrides it).")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(default="IfNotPresent")
    namespaces: tuple[str, ...] = Field(default=(), description="Namespaces to watch; empty means all (cluster mode).")
    disable_scanning: bool = Field(
        default=False,
        description="Skip kopf's scanning of CRDs and namespaces (always skipped when namespaces are listed).",
    )
    progress_port: int = Field(default=PROGRESS_PORT, ge=1, le=65535, description="Port of the runtime's progress endpoint.")
    progress_poll_seconds: float = Field(default=15.0, gt=0, description="How often a running job's progress is polled.")
    progress_timeout_seconds: float = Field(default=3.0, gt=0, description="Timeout of one progress request.")
    ttl_seconds_after_finished: int = Field(default=7 * 86400, ge=0, description="Default ttlSecondsAfterFinished of Jobs.")
    metrics_port: int = Field(default=8080, ge=0, le=65535, description="Prometheus metrics port (0 disables).")
    health_port: int = Field(default=8081, ge=0, le=65535, description="kopf liveness endpoint port (0 disables).")
    log_format: Literal["json", "plain"] = Field(default="json")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "OperatorConfig":
        """Read SFTJOB_OPERATOR_<FIELD> variables; raise ValueError naming the variable on bad values."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name in cls.model_fields:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is None or raw == "":
                continue
            values[name] = tuple(n.strip() for n in raw.split(",") if n.strip()) if name == "namespaces" else raw
        try:
            return cls(**values)
        except ValidationError as e:
            first = e.errors(include_url=False)[0]
            var = ENV_PREFIX + str(first["loc"][0]).upper()
            raise ValueError(f"{var}: {first['msg']} (got {first.get('input')!r})") from None
