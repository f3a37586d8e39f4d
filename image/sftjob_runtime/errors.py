"""The exception types the runtime raises for problems a user can fix, and for SIGTERM outside training."""

from __future__ import annotations

import os

from sftjob.vocabulary import ExitCode, Reason


class RuntimeFailure(Exception):
    """A failure with a typed reason, an actionable one-line message and the exit code to leave with."""

    def __init__(self, reason: Reason, message: str, exit_code: ExitCode = ExitCode.INTERNAL, sanity=None) -> None:
        super().__init__(message)
        self.reason = reason
        self.exit_code = exit_code
        self.sanity = sanity  # a SanityResult when the sanity gate's own checks found it


class Terminated(Exception):
    """SIGTERM outside training (loading, the sanity check, the export), where no checkpoint can be written."""


def one_line(text: object, limit: int | None = None) -> str:
    """Text fit for a log line, a status condition or a terminal: one line, any secret from the environment blanked.

    Longer than `limit` characters, it is cut with an ellipsis.
    """
    flat = " ".join(str(text).split())
    for var in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        secret = os.environ.get(var)
        if secret and len(secret) >= 4:
            flat = flat.replace(secret, "***")
    return flat if limit is None or len(flat) <= limit else flat[: limit - 1] + "…"
