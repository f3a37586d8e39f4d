"""Multi-node runs as the pods run them, on this machine: node 0 alone checks, two torchrun agents train as one job.

The rendering (Indexed Job, headless Service, torchrun's arguments) is in
test_render.py and status from node 0's pod in test_status.py; the e2e tier
creates a 2-node SFTJob on a real API server. Here the runtime's half: the
other nodes' sanity step waits for node 0 to listen on its rendezvous
endpoint, and two torchrun agents on 127.0.0.1 (`--nnodes=2`, the c10d
rendezvous, gloo) train one model, of which exactly one copy is exported.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sftjob.report import Outcome
from sftjob.vocabulary import ENV_LEADER_ENDPOINT, ENV_NODE_INDEX
from tests.support.jobs import write_job

from sftjob_runtime.errors import RuntimeFailure
from sftjob_runtime.nodes import wait_for_leader


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra}


def test_another_node_waits_for_node_0_to_listen_then_passes_without_checking(tiny_model_dir, tmp_path):
    """`sftjob sanity` on node 1: no model loaded, no steps run; it ends when node 0's endpoint answers."""
    job = write_job(tmp_path, tiny_model_dir, sanity=True)
    port = free_port()
    term = tmp_path / "term"
    listener = socket.socket()

    def node_0_starts_training_later() -> None:
        time.sleep(2.0)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()

    threading.Thread(target=node_0_starts_training_later, daemon=True).start()
    started = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "sftjob.cli", "sanity", str(job), "--output", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=120,
        env=cli_env(tmp_path, **{ENV_NODE_INDEX: "1", ENV_LEADER_ENDPOINT: f"127.0.0.1:{port}",
                                 "SFTJOB_TERMINATION_LOG": str(term)}),
    )
    listener.close()
    assert r.returncode == 0, r.stderr[-2000:]
    assert time.monotonic() - started >= 2.0
    assert "node 1: node 0 ran the sanity check and started training" in r.stdout
    outcome = Outcome.from_termination_message(term.read_text())
    assert outcome.ok and outcome.sanity is None  # nothing for status.sanityCheck: node 0 reports the check
    assert not (tmp_path / "work" / "sanity.json").exists()


def test_node_0_runs_the_check_itself(tiny_model_dir, tmp_path):
    """Node 0 (index 0, or no index: a single-node pod) does not wait for anyone."""
    job = write_job(tmp_path, tiny_model_dir, sanity=True)
    r = subprocess.run(
        [sys.executable, "-m", "sftjob.cli", "sanity", str(job), "--output", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=300,
        env=cli_env(tmp_path, **{ENV_NODE_INDEX: "0", ENV_LEADER_ENDPOINT: f"127.0.0.1:{free_port()}"}),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "work" / "sanity.json").is_file()


def test_waiting_for_node_0_gives_up_with_one_line_naming_it():
    now = [0.0]

    def clock() -> float:
        return now[0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(RuntimeFailure, match=r"^node 0 \(127.0.0.1:\d+\) did not start training within 10 s; see node 0's pod"):
        wait_for_leader(("127.0.0.1", free_port()), 10, clock=clock, sleep=sleep)


def run_two_agents(tmp_path, job) -> list[tuple[int, str, str]]:
    """Two torchrun agents on 127.0.0.1 (--nnodes=2, c10d), each with its own work directory: (exit code, out, err)."""
    port = free_port()
    agents = []
    for node in (0, 1):
        work = tmp_path / f"node-{node}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=two-nodes",
               "--rdzv-conf=join_timeout=300,read_timeout=300", "--local-addr=127.0.0.1",
               "-m", "sftjob.cli", "run", str(job), "--output", str(work)]
        env = cli_env(tmp_path, SFTJOB_TERMINATION_LOG=str(tmp_path / f"term-{node}"))
        agents.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    return [(a.wait(timeout=900), *a.communicate()) for a in agents]


@pytest.mark.slow
def test_two_torchrun_agents_on_loopback_train_one_job_and_export_one_model(tiny_model_dir, tmp_path):
    """What two pods of a 2-node SFTJob run, as two agents on 127.0.0.1 with their own work directories."""
    job = write_job(tmp_path, tiny_model_dir, training={"maxSteps": 4, "perDeviceBatchSize": 2, "effectiveBatchSize": 8},
                    extra={"resources": {"gpus": 0, "nodes": 2}})
    results = run_two_agents(tmp_path, job)
    for code, _, err in results:
        assert code == 0, err[-3000:]
    summaries = sum(out.count("SFTJob tiny: done") for _, out, _ in results)
    assert summaries == 1  # one global rank 0, on one of the two nodes
    [reporting] = [n for n in (0, 1) if (tmp_path / f"term-{n}").exists()]
    assert Outcome.from_termination_message((tmp_path / f"term-{reporting}").read_text()).ok
    report = json.loads((tmp_path / f"node-{reporting}" / "report.json").read_text())
    assert report["resolved"]["devices"] == 2 and report["resolved"]["gradientAccumulationSteps"] == 2
    assert report["steps"] == 4
    export = tmp_path / "export"
    assert (export / "sftjob-manifest.json").is_file() and (export / "model.safetensors").is_file()
    # Both nodes kept a whole checkpoint of their own, to resume from their own volume (transformers 5 writes
    # the weights on global rank 0 only: node 1's first process adds them), with the same weights.
    from safetensors.torch import load_file

    newest = [sorted((tmp_path / f"node-{n}" / "checkpoints").glob("checkpoint-*"))[-1] for n in (0, 1)]
    assert newest[0].name == newest[1].name
    for checkpoint in newest:
        for name in ("model.safetensors", "config.json", "trainer_state.json", "optimizer.pt", "scheduler.pt"):
            assert (checkpoint / name).is_file(), checkpoint / name
    weights = [load_file(c / "model.safetensors") for c in newest]
    assert weights[0].keys() == weights[1].keys() and all(weights[0][k].equal(weights[1][k]) for k in weights[0])
    # Two new pods on those volumes (a longer run) both resume from their own checkpoint-4.
    job = write_job(tmp_path, tiny_model_dir, training={"maxSteps": 6, "perDeviceBatchSize": 2, "effectiveBatchSize": 8},
                    extra={"resources": {"gpus": 0, "nodes": 2}})
    for code, _, err in run_two_agents(tmp_path, job):
        assert code == 0, err[-3000:]
    report = json.loads((tmp_path / f"node-{reporting}" / "report.json").read_text())
    assert report["resumed_from"].endswith("checkpoint-4") and report["steps"] == 6
    # ...and the two optimizer states are the same: the nodes trained one model, their gradients all-reduced
    # (a trainer.evaluate() before train() once left the model unwrapped, and each node trained alone).
    import torch

    states = [torch.load(sorted((tmp_path / f"node-{n}" / "checkpoints").glob("checkpoint-*"))[-1] / "optimizer.pt",
                         weights_only=True)["state"] for n in (0, 1)]
    assert states[0] and states[0].keys() == states[1].keys()
    assert all(states[0][i]["exp_avg"].equal(states[1][i]["exp_avg"]) for i in states[0])
