"""Serve the live `Progress` of this run as JSON, for the operator to poll.

Training pods get no Kubernetes credentials, so they cannot write status
themselves; the operator polls GET /progress at a bounded rate instead.
The server runs in a daemon thread and never blocks training.
"""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sftjob.report import Progress
from sftjob.vocabulary import ENV_PROGRESS_PORT, PROGRESS_PATH

ENV_PROGRESS_BIND = "SFTJOB_PROGRESS_BIND"


class ProgressState:
    """Thread-safe holder of the latest snapshot."""

    # Warnings kept for the run report (status shows only the latest `keep`).
    LOGGED_WARNINGS = 500

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._progress = Progress()
        self._logged: list[dict] = []

    def update(self, **fields) -> None:
        with self._lock:
            self._progress = self._progress.model_copy(update=fields)

    def warn(self, message: str, keep: int = 10, step: int | None = None) -> None:
        """Add a warning ("kind: text") to the progress; it is logged for the report at `step` (default: the current one)."""
        with self._lock:
            warnings = (self._progress.warnings + [message])[-keep:]
            kind, _, text = message.partition(": ")
            if len(self._logged) < self.LOGGED_WARNINGS:
                self._logged.append({"step": step if step is not None else self._progress.step,
                                     "stage": self._progress.stage, "kind": kind if text else "warning",
                                     "message": text or message})
            self._progress = self._progress.model_copy(update={"warnings": warnings})

    def logged_warnings(self) -> list[dict]:
        """Every warning of the run (up to LOGGED_WARNINGS) with the step and stage it was raised at."""
        with self._lock:
            return [dict(w) for w in self._logged]

    def snapshot(self) -> Progress:
        with self._lock:
            return self._progress


class ProgressServer:
    """An HTTP server answering GET /progress with the state's JSON."""

    def __init__(self, state: ProgressState, port: int, host: str = "0.0.0.0") -> None:
        self.state = state
        state_ref = state

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path.split("?")[0] != PROGRESS_PATH:
                    self.send_error(404)
                    return
                body = state_ref.snapshot().model_dump_json(exclude_none=True).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # polls are not worth a log line each
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="sftjob-progress", daemon=True)

    def start(self) -> "ProgressServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve_from_env(state: ProgressState) -> ProgressServer | None:
    """Start the server when SFTJOB_PROGRESS_PORT is set (the operator sets it in the pod); else None."""
    port = os.environ.get(ENV_PROGRESS_PORT)
    if not port:
        return None
    return ProgressServer(state, int(port), os.environ.get(ENV_PROGRESS_BIND, "0.0.0.0")).start()


def progress_json(state: ProgressState) -> str:
    """The JSON body the server returns (also logged at the end of a run)."""
    return json.dumps(state.snapshot().model_dump(mode="json", exclude_none=True))
