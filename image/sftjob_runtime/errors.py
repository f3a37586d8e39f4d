"""The one exception type the runtime raises for problems a user can fix."""

from __future__ import annotations

from sftjob.vocabulary import ExitCode, Reason


class RuntimeFailure(Exception):
    """A failure with a typed reason, an actionable one-line message and the exit code to leave with."""

    def __init__(self, reason: Reason, message: str, exit_code: ExitCode = ExitCode.INTERNAL, sanity=None) -> None:
        super().__init__(message)
        self.reason = reason
        self.exit_code = exit_code
        self.sanity = sanity  # a SanityResult when the sanity gate's own checks found it
