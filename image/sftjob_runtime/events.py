"""Structured log lines: one JSON object per line on stderr, prefixed for grep.

Warnings from training (loss spikes, grad norm, overfitting) go here so
that both a person reading `kubectl logs` and a machine can read them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

logger = logging.getLogger("sftjob")
PREFIX = "sftjob-event "


def _verbose() -> bool:
    """Info events go to logs (pods, CI, files); on an interactive terminal the progress bar says enough."""
    setting = os.environ.get("SFTJOB_EVENTS", "auto")
    if setting == "auto":
        return not sys.stderr.isatty()
    return setting == "all"


def emit(event: str, level: str = "info", **fields) -> dict:
    """Write one structured event (warnings always; info events unless on a terminal) and return it."""
    record = {"ts": round(time.time(), 3), "level": level, "event": event, **fields}
    if level != "info" or _verbose():
        # One write per line: the checkpoint mirror's thread emits too, and lines must not interleave.
        sys.stderr.write(PREFIX + json.dumps(record, default=str) + "\n")
        sys.stderr.flush()
    return record
