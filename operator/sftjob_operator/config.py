"""Operator settings: one object, read from SFTJOB_OPERATOR_* environment variables, validated at startup."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from sftjob.vocabulary import PROGRESS_PORT

ENV_PREFIX = "SFTJOB_OPERATOR_"
DEFAULT_IMAGE = "ghcr.io/sftjob/sftjob-runtime:0.1.0"


class OperatorConfig(BaseSettings):
    """Everything the operator needs besides the SFTJobs themselves: SFTJOB_OPERATOR_<FIELD> variables (pydantic-settings)."""

    # An empty variable means "the default", as the chart leaves optional values empty.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="forbid", frozen=True)

    image: str = Field(default=DEFAULT_IMAGE, description="Default training image (spec.image overrides it).")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(default="IfNotPresent")
    # A comma-separated list in the environment (the chart writes "team-a,team-b"), not JSON.
    namespaces: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="Namespaces to watch; empty means all (cluster mode)."
    )
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

    @field_validator("namespaces", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return tuple(n.strip() for n in value.split(",") if n.strip()) if isinstance(value, str) else value

    @classmethod
    def from_env(cls) -> "OperatorConfig":
        """Read SFTJOB_OPERATOR_<FIELD> variables; raise ValueError naming the variable on bad values."""
        try:
            return cls()
        except ValidationError as e:
            first = e.errors(include_url=False)[0]
            var = ENV_PREFIX + str(first["loc"][0]).upper()
            raise ValueError(f"{var}: {first['msg']} (got {first.get('input')!r})") from None
