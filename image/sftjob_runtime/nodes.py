"""Multi-node runs: which node this process is on, and the wait of the other nodes for node 0.

A multi-node job runs one pod per node. Node 0 alone runs the sanity check;
the other nodes' sanity step instead waits until node 0 listens on its
rendezvous endpoint, which it does once its check has passed and torchrun
has started there, so no node starts training (or times out in torchrun's
rendezvous) while node 0 is still checking. Nothing here knows Kubernetes:
the node index and node 0's endpoint come from the environment
(`SFTJOB_NODE_INDEX`, `SFTJOB_LEADER_ENDPOINT`).
"""

from __future__ import annotations

import os
import socket
import time

from sftjob.vocabulary import ENV_LEADER_ENDPOINT, ENV_NODE_INDEX, ExitCode, Reason

from sftjob_runtime.errors import RuntimeFailure
from sftjob_runtime.events import emit

POLL_SECONDS = 2.0
REPORT_EVERY_SECONDS = 60.0


def node_index() -> int:
    """This node's index (0 on a single-node run)."""
    raw = os.environ.get(ENV_NODE_INDEX, "").strip()
    try:
        return int(raw) if raw else 0
    except ValueError:
        raise RuntimeFailure(Reason.INVALID_SPEC, f"{ENV_NODE_INDEX}={raw!r} is not a node index", ExitCode.INVALID_CONFIG) from None


def leader_endpoint() -> tuple[str, int] | None:
    """Node 0's rendezvous endpoint (host, port) on a multi-node run; None otherwise."""
    raw = os.environ.get(ENV_LEADER_ENDPOINT, "").strip()
    if not raw:
        return None
    host, _, port = raw.rpartition(":")
    if not host or not port.isdigit():
        raise RuntimeFailure(Reason.INVALID_SPEC, f"{ENV_LEADER_ENDPOINT}={raw!r} is not host:port", ExitCode.INVALID_CONFIG)
    return host, int(port)


def wait_for_leader(endpoint: tuple[str, int], timeout: float, *, clock=time.monotonic, sleep=time.sleep) -> float:
    """Block until `endpoint` accepts a TCP connection; return the seconds waited.

    A name that does not resolve yet (node 0's pod has no address yet) is
    waited for like a refused connection. Raises RuntimeFailure after `timeout`.
    """
    host, port = endpoint
    start = clock()
    last_report = start
    emit("waiting_for_node_0", endpoint=f"{host}:{port}")
    while True:
        try:
            with socket.create_connection((host, port), timeout=POLL_SECONDS):
                waited = clock() - start
                emit("node_0_ready", endpoint=f"{host}:{port}", waited_seconds=round(waited, 1))
                return waited
        except OSError:
            pass
        now = clock()
        if now - start >= timeout:
            raise RuntimeFailure(
                Reason.INTERNAL_ERROR,
                f"node 0 ({host}:{port}) did not start training within {timeout:.0f} s; see node 0's pod for why",
                ExitCode.INTERNAL,
            )
        if now - last_report >= REPORT_EVERY_SECONDS:
            emit("still_waiting_for_node_0", endpoint=f"{host}:{port}", waited_seconds=round(now - start))
            last_report = now
        sleep(POLL_SECONDS)


__all__ = ["node_index", "leader_endpoint", "wait_for_leader"]
