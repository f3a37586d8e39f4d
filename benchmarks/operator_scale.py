"""Operator at scale: N SFTJobs created at once against the Kubernetes emulator.

Measures, for the real operator process (`python -m sftjob_operator`):
- SFTJob-created -> Job-created latency (p50/p90/p99/max): from just before
  each SFTJob POST to the moment a watch on Jobs (opened before the burst)
  sees that SFTJob's Job;
- API requests the operator sends per SFTJob, counted in the emulator by
  User-Agent (kopf's own and the operator's client), split into the create
  path (until every SFTJob is Pending) and the rest of a lifecycle (pod
  running the sanity check, training, Job complete -> Succeeded), with the
  benchmark playing the Job controller and the kubelet; watch streams are
  not counted;
- the operator's CPU time per SFTJob on the create path and its resident
  memory (RSS) idle, after the burst and at the end.

With --baseline, the same burst first runs against a minimal kopf operator
(create a Job, write a phase) on a fresh emulator, so both sets of numbers
come from the same machine under the same load: the emulator and the
benchmark's client threads share the CPU with the operator, so absolute
latencies depend on the machine; the ratio to the baseline and the request
counts do not.

Usage: python benchmarks/operator_scale.py [-n 500] [--baseline] [--no-lifecycle]
Prints a table; writes benchmarks/results/operator_scale.json.
Not part of the test run; about a minute for 500 on 2 cores (two with --baseline).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import datetime
import json
import os
import pathlib
import platform
import socket
import statistics
import sys
import threading
import time
import urllib.request
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from tests.support.kube import RunningEmulator, running_emulator, wait_for  # noqa: E402
from tests.support.operator_process import operator_process  # noqa: E402

API = "sftjob.dev/v1alpha1"
NAMESPACE = "bench"
RESULTS = ROOT / "benchmarks" / "results" / "operator_scale.json"


# The reference point: the least an operator can do on the create path (create
# a Job, write a phase). Run in the same session as ours with --baseline, so
# both numbers come from the same machine under the same load.
BASELINE_OPERATOR = """
import aiohttp, kopf

@kopf.on.startup()
async def startup(settings, memo, **_):
    settings.scanning.disabled = True
    info = kopf.login_with_kubeconfig(settings=settings)
    memo.api = info.server.rstrip("/")
    memo.session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {info.token}", "User-Agent": "sftjob-operator-baseline"})

@kopf.on.cleanup()
async def cleanup(memo, **_):
    await memo.session.close()

@kopf.on.create("sftjob.dev", "v1alpha1", "sftjobs")
async def created(body, name, namespace, memo, patch, **_):
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": f"{name}-sft"},
           "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "train", "image": "x"}]}}}}
    kopf.adopt(job, owner=body)
    async with memo.session.post(f"{memo.api}/apis/batch/v1/namespaces/{namespace}/jobs", json=job) as response:
        if response.status not in (201, 409):
            raise kopf.TemporaryError(f"HTTP {response.status}", delay=1)
    patch.status["phase"] = "Pending"
"""


def manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": API, "kind": "SFTJob", "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "model": {"source": "HuggingFaceTB/SmolLM2-135M-Instruct"},
            "dataset": {"train": "s3://data/train.jsonl", "validation": "s3://data/val.jsonl"},
            "output": {"uri": f"s3://models/{name}"},
        },
    }


class JobWatch:
    """Records when each Job is first seen on a watch stream (opened before the burst)."""

    def __init__(self, url: str) -> None:
        self.seen: dict[str, float] = {}
        self._response = urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
            f"{url}/apis/batch/v1/namespaces/{NAMESPACE}/jobs?watch=true", timeout=600
        )
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for line in self._response:
                if line.strip():
                    event = json.loads(line)
                    name = event["object"]["metadata"]["name"]
                    self.seen.setdefault(name, time.monotonic())
        except (OSError, ValueError):
            pass  # the stream ends when the emulator stops (closing it from here would block on the reader)


def operator_requests(kube: RunningEmulator) -> collections.Counter[str]:
    """Requests sent by the operator so far (not by this benchmark), by kind, watches excluded."""
    requests = kube.call(lambda: list(kube.emulator))
    counts: collections.Counter[str] = collections.Counter()
    for r in requests:
        agent = (r.headers or {}).get("User-Agent", "")
        if not (agent.startswith("kopf") or agent.startswith("sftjob-operator")):
            continue
        if (r.params or {}).get("watch") == "true":
            continue
        plural = r.resource.plural if r.resource is not None else "other"
        sub = f"/{r.subresource}" if r.subresource else ""
        method = str(getattr(r.method, "value", r.method)).upper()
        counts[f"{method} {plural}{sub}"] += 1
    return counts


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def play_lifecycle(kube: RunningEmulator, names: list[str], workers: int) -> None:
    """For every SFTJob: a pod that runs the sanity check, then trains, then the Job completes."""
    client = kube.client

    def one(name: str) -> None:
        job = client.get("batch/v1", "jobs", NAMESPACE, f"{name}-sft")
        meta, template = job["metadata"], job["spec"]["template"]
        pod = f"{meta['name']}-p0"
        client.create({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "namespace": NAMESPACE, "labels": template["metadata"]["labels"],
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                                              "uid": meta["uid"], "controller": True}]},
            "spec": template["spec"],
        })
        base = {"podIP": "127.0.0.1", "conditions": [{"type": "PodScheduled", "status": "True"}]}
        client.patch_status("v1", "pods", NAMESPACE, pod, {**base, "phase": "Pending", "initContainerStatuses": [
            {"name": "sanity-check", "state": {"running": {}}}]})
        client.patch_status("v1", "pods", NAMESPACE, pod, {**base, "phase": "Running",
            "initContainerStatuses": [{"name": "sanity-check", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}],
            "containerStatuses": [{"name": "train", "state": {"running": {}}}]})
        wait_for(lambda: client.get(API, "sftjobs", NAMESPACE, name).get("status", {}).get("phase") == "Training", timeout=300)
        message = json.dumps({"ok": True, "bestCheckpoint": {"uri": f"s3://models/{name}/best", "step": 10, "evalLoss": 0.5}})
        client.patch_status("v1", "pods", NAMESPACE, pod, {**base, "phase": "Succeeded",
            "containerStatuses": [{"name": "train", "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": message}}}]})
        client.patch_status("batch/v1", "jobs", NAMESPACE, meta["name"], {"active": 0, "succeeded": 1, "conditions": [
            {"type": "Complete", "status": "True", "reason": "CompletionsReached"}]})

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, names))


def burst(kube: RunningEmulator, op: Any, names: list[str], workers: int, result: dict[str, Any]) -> None:
    """Create all SFTJobs at once; record create->Job latencies, requests and the operator's CPU and memory."""
    client = kube.client
    # Warm-up: the operator is up and has finished its initial listing.
    client.create(manifest("warmup"))
    wait_for(lambda: client.get(API, "sftjobs", NAMESPACE, "warmup").get("status", {}).get("phase"), timeout=60)
    proc = psutil.Process(op.pid)
    result["rss_idle_mib"] = proc.memory_info().rss / 2**20
    cpu_before = sum(proc.cpu_times()[:2])
    baseline = operator_requests(kube)

    watch = JobWatch(kube.url)
    time.sleep(0.2)
    sent: dict[str, float] = {}

    def create(name: str) -> None:
        sent[name] = time.monotonic()
        client.create(manifest(name))

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(create, names))
    result["burst_seconds"] = time.monotonic() - started
    wait_for(lambda: all(f"{n}-sft" in watch.seen for n in names), timeout=600)
    wait_for(lambda: sum(o.get("status", {}).get("phase") == "Pending"
                         for o in client.list(API, "sftjobs", NAMESPACE)) >= len(names), timeout=600, interval=0.5)
    time.sleep(1.0)  # let events and late patches land before counting
    latencies = [watch.seen[f"{n}-sft"] - sent[n] for n in names]
    result["job_latency_seconds"] = {
        "p50": percentile(latencies, 50), "p90": percentile(latencies, 90), "p99": percentile(latencies, 99),
        "max": max(latencies), "mean": statistics.fmean(latencies),
    }
    result["last_job_after_seconds"] = max(watch.seen[f"{n}-sft"] for n in names) - started
    created = operator_requests(kube) - baseline
    result["create_requests_per_sftjob"] = sum(created.values()) / len(names)
    result["create_requests_by_kind"] = {k: v / len(names) for k, v in sorted(created.items())}
    result["jobs_created"] = len(client.list("batch/v1", "jobs", NAMESPACE)) - 1
    result["create_cpu_ms_per_sftjob"] = (sum(proc.cpu_times()[:2]) - cpu_before) / len(names) * 1000
    result["rss_after_burst_mib"] = proc.memory_info().rss / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=500, help="SFTJobs created at once (default 500)")
    parser.add_argument("--workers", type=int, default=16, help="client threads creating them (default 16)")
    parser.add_argument("--no-lifecycle", action="store_true", help="measure the create path only")
    parser.add_argument("--baseline", action="store_true", help="first run the same burst against a minimal kopf operator")
    parser.add_argument("--output", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args(argv)
    names = [f"job-{i:04d}" for i in range(args.n)]
    with socket.socket() as s:  # a closed port: progress polls fail fast, as for a pod that serves none
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    env = {
        "SFTJOB_OPERATOR_DISABLE_SCANNING": "true",
        "SFTJOB_OPERATOR_METRICS_PORT": "0",
        "SFTJOB_OPERATOR_HEALTH_PORT": "0",
        "SFTJOB_OPERATOR_PROGRESS_PORT": str(dead_port),
        "SFTJOB_OPERATOR_PROGRESS_POLL_SECONDS": "5",
        "SFTJOB_OPERATOR_LOG_FORMAT": "json",
    }
    result: dict[str, Any] = {"n": args.n}
    if args.baseline:
        path = args.output.parent / "baseline_operator.py"
        args.output.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(BASELINE_OPERATOR, encoding="utf-8")
        reference: dict[str, Any] = {}
        try:
            with running_emulator() as kube, operator_process(kube.kubeconfig, ["--all-namespaces", str(path)], {}) as op:
                burst(kube, op, names, args.workers, reference)
        finally:
            path.unlink()
        result["baseline"] = reference
    with running_emulator() as kube, operator_process(
        kube.kubeconfig, ["--bind-address", "127.0.0.1"], env, command=(sys.executable, "-m", "sftjob_operator")
    ) as op:
        client = kube.client
        proc = psutil.Process(op.pid)
        burst(kube, op, names, args.workers, result)

        if not args.no_lifecycle:
            before = operator_requests(kube)
            started = time.monotonic()
            play_lifecycle(kube, names, args.workers)
            wait_for(lambda: sum(o.get("status", {}).get("phase") == "Succeeded"
                                 for o in client.list(API, "sftjobs", NAMESPACE)) >= args.n, timeout=900, interval=0.5)
            wait_for(lambda: not any(o["metadata"].get("finalizers") for o in client.list(API, "sftjobs", NAMESPACE)),
                     timeout=300, interval=0.5)
            time.sleep(1.0)
            result["lifecycle_seconds"] = time.monotonic() - started
            rest = operator_requests(kube) - before
            result["lifecycle_requests_per_sftjob"] = sum(rest.values()) / args.n
            result["lifecycle_requests_by_kind"] = {k: v / args.n for k, v in sorted(rest.items())}
            result["total_requests_per_sftjob"] = result["create_requests_per_sftjob"] + result["lifecycle_requests_per_sftjob"]
        result["rss_end_mib"] = proc.memory_info().rss / 2**20
        result["operator_cpu_seconds"] = sum(proc.cpu_times()[:2])

    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    result["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    lat = result["job_latency_seconds"]
    rows = [
        ("SFTJobs created at once", f"{args.n} (in {result['burst_seconds']:.2f} s from {args.workers} threads)"),
        ("Jobs created", str(result["jobs_created"])),
        ("create -> Job p50 / p90 / p99 / max", f"{lat['p50']:.3f} / {lat['p90']:.3f} / {lat['p99']:.3f} / {lat['max']:.3f} s"),
        ("last Job after burst start", f"{result['last_job_after_seconds']:.2f} s"),
        ("API requests per SFTJob, create path", f"{result['create_requests_per_sftjob']:.2f}"),
    ]
    if "lifecycle_requests_per_sftjob" in result:
        rows += [
            ("API requests per SFTJob, rest of lifecycle", f"{result['lifecycle_requests_per_sftjob']:.2f}"),
            ("API requests per SFTJob, total", f"{result['total_requests_per_sftjob']:.2f}"),
        ]
    rows.append(("operator CPU per SFTJob, create path", f"{result['create_cpu_ms_per_sftjob']:.1f} ms"))
    if "baseline" in result:
        ref = result["baseline"]["job_latency_seconds"]
        rows += [
            ("baseline: create -> Job p50 / p99 / max", f"{ref['p50']:.3f} / {ref['p99']:.3f} / {ref['max']:.3f} s"),
            ("baseline: last Job after burst start", f"{result['baseline']['last_job_after_seconds']:.2f} s"),
            ("baseline: requests / CPU per SFTJob", f"{result['baseline']['create_requests_per_sftjob']:.2f} / "
                                                    f"{result['baseline']['create_cpu_ms_per_sftjob']:.1f} ms"),
        ]
    rows += [
        ("operator RSS idle / after burst / end", f"{result['rss_idle_mib']:.0f} / {result['rss_after_burst_mib']:.0f} / {result['rss_end_mib']:.0f} MiB"),
        ("operator CPU time, whole run", f"{result['operator_cpu_seconds']:.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    for section in ("create_requests_by_kind", "lifecycle_requests_by_kind"):
        if section in result:
            print(f"{section}: " + ", ".join(f"{k} {v:.2f}" for k, v in result[section].items()))
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
