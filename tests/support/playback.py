"""What the Job controller and the kubelet would write, played by tests; and the runtime's progress endpoint.

Used by the emulator tests (tests/test_operator.py) and by the e2e tier on a
real API server where no kubelet runs (tests/e2e/): both write these pod
states through the API and serve progress from 127.0.0.1, the podIP every
played pod reports.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
from typing import Any

from sftjob.report import Outcome, SanityResult


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProgressServer:
    """The runtime's progress endpoint: serves `payload` as JSON on /progress and counts requests."""

    def __init__(self) -> None:
        self.payload: dict[str, Any] | None = None
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                outer.requests += 1
                if self.path != "/progress" or outer.payload is None:
                    self.send_error(404)
                    return
                body = json.dumps(outer.payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- container states as the kubelet writes them -------------------------------------------------


def running() -> dict[str, Any]:
    return {"running": {"startedAt": "2026-11-25T12:00:00Z"}}


def waiting(reason: str) -> dict[str, Any]:
    return {"waiting": {"reason": reason}}


def terminated(code: int, reason: str, message: str | None = None) -> dict[str, Any]:
    term: dict[str, Any] = {"exitCode": code, "reason": reason, "finishedAt": "2026-11-25T12:30:00Z"}
    if message is not None:
        term["message"] = message
    return {"terminated": term}


def pod_status(phase: str, init: dict | None = None, main: dict | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "podIP": "127.0.0.1",
                              "conditions": [{"type": "PodScheduled", "status": "True"}]}
    if init is not None:
        status["initContainerStatuses"] = [{"name": "sanity-check", "state": init, "ready": False, "restartCount": 0}]
    if main is not None:
        status["containerStatuses"] = [{"name": "train", "state": main, "ready": "running" in main, "restartCount": 0}]
    return status


def job_finished(kind: str, reason: str, message: str) -> dict[str, Any]:
    return {"active": 0, "conditions": [{"type": kind, "status": "True", "reason": reason, "message": message}]}


SANITY_PASSED = Outcome(ok=True, sanity=SanityResult(passed=True, initialLoss=2.3, finalLoss=1.1, rows=32, maskedRows=0,
                                                      truncatedRows=0))


def sftjob_manifest(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    """A cluster-ready SFTJob (hub model, S3 data and output, one GPU); `spec` replaces whole sections."""
    base = {
        "model": {"source": "HuggingFaceTB/SmolLM2-135M-Instruct"},
        "dataset": {"train": "s3://data/train.jsonl", "validation": "s3://data/val.jsonl"},
        "output": {"uri": f"s3://models/{name}"},
        "resources": {"gpus": 1},
    }
    base.update(spec)
    return {"apiVersion": "sftjob.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": name, "namespace": namespace},
            "spec": base}
