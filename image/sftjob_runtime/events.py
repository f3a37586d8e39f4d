"""Structured log lines: one JSON object per line on stderr, prefixed for grep.

Warnings from training (loss spikes, grad norm, overfitting) go here so
that both a person reading `kubectl logs` and a machine can read them.
"""

from __future__ import annotations

import json
import logging
import sys
import time

logger = logging.getLogger("sftjob")
PREFIX = "sftjob-event "


def emit(event: str, level: str = "info", **fields) -> dict:
    """Write one structured event and return it."""
    record = {"ts": round(time.time(), 3), "level": level, "event": event, **fields}
    print(PREFIX + json.dumps(record, default=str), file=sys.stderr, flush=True)
    return record
