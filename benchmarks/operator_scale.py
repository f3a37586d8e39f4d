"""Operator at scale: hundreds of SFTJobs against the Kubernetes emulator, next to a bare kopf operator.

Measures, for the real operator process (`python -m sftjob_operator`) and,
with --baseline, for a minimal kopf operator (create a Job, write a phase)
fed exactly the same SFTJobs on the same schedule, each on a fresh emulator:

- SFTJob-created -> Job-created latency (p50/p90/p99/max): from just before
  each SFTJob POST (cold start: from the operator's start) to the moment a
  watch on Jobs, opened beforehand, sees that SFTJob's Job;
- when the last Job exists;
- API requests the operator sends per SFTJob on the create path (until every
  SFTJob is Pending), counted in the emulator by User-Agent, watches excluded;
- the operator's CPU time per SFTJob on the create path and its RSS, and the
  CPU the emulator spent per SFTJob (it serves that operator's requests and
  watches, on the same cores).

Arrival schedules (`--modes`, each run for both operators):
- `paced`: the client, a process of its own, creates one SFTJob every
  1/`--rate` s at fixed times, so both operators see the same arrivals; the
  table shows the span they took (n/rate when the schedule held), and a line
  warns when it did not (the emulator, on the same two cores, is what falls
  behind first: at 100/s it stretched 500 arrivals over 15-21 s for the bare
  operator on a loaded 2-core machine, so the default is 50/s);
- `cold`: all SFTJobs are stored before the operator process starts; timed
  from its start (imports and initial listing included) to the last Job;
- `burst`: all created at once by the client's 16 threads, as fast as they
  can (the arrival schedule then depends on how much CPU the operator and the
  emulator leave them).

CPU per SFTJob counts from just before the first arrival (cold start: from
the operator's start, imports included) until every SFTJob is Pending and
the operator has sent nothing for a second, so work trailing the create path
(Events queued behind it) is counted too.

The emulator and the client share the CPU with the operator, so absolute
latencies depend on the machine and its load; compare ratios to the
baseline, taken pair by pair (the two operators run back to back, in
alternating order) and given as medians over `--repeat` pairs.

With --profile DIR, py-spy (`pip install py-spy`) samples the operator during
each measured window and the top functions (self and cumulative) are written
next to the raw stacks.

Usage: python benchmarks/operator_scale.py [-n 500] [--baseline] [--modes paced,cold] [--rate 50]
                                           [--repeat 3] [--no-lifecycle] [--profile DIR]
Prints a table; writes benchmarks/results/operator_scale.json.
Not part of the test run; about a minute per repeat and mode pair on 2 cores, plus a minute or two of lifecycle.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import datetime
import json
import multiprocessing
import os
import pathlib
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil

from tests.support.kube import (
    KUBECONFIG_TOKEN,
    RunningEmulator,
    running_emulator,
    wait_for,
)
from tests.support.kube_client import KubeClient
from tests.support.operator_process import KOPF_RUN, OperatorProcess, operator_process

API = "sftjob.dev/v1alpha1"
NAMESPACE = "bench"
RESULTS = ROOT / "benchmarks" / "results" / "operator_scale.json"
MODES = ("paced", "cold", "burst")
# This process: it serves the emulator (and watches Jobs); the client that creates SFTJobs runs in one of its own.
EMULATOR = psutil.Process()


# The reference point: the least an operator can do on the create path (create
# a Job, write a phase), in kopf's recommended async style.
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


@dataclass
class Side:
    """One operator under test: how to start it."""

    name: str
    command: tuple[str, ...]
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)

    @contextlib.contextmanager
    def running(self, kube: RunningEmulator) -> Iterator[OperatorProcess]:
        with operator_process(kube.kubeconfig, self.args, self.env, command=self.command) as op:
            yield op


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
    """Records when each Job is first seen on a watch stream (opened before the SFTJobs arrive)."""

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


class Profiler:
    """py-spy sampling one process until stopped; raw (collapsed) stacks aggregated by function."""

    def __init__(self, pid: int, path: pathlib.Path | None) -> None:
        self.path = path
        self._proc: subprocess.Popen[bytes] | None = None
        if path is not None:
            spy = shutil.which("py-spy") or str(pathlib.Path(sys.executable).with_name("py-spy"))
            path.parent.mkdir(parents=True, exist_ok=True)
            self._proc = subprocess.Popen(
                [spy, "record", "--pid", str(pid), "--rate", "200", "--nonblocking", "--function",
                 "--format", "raw", "--output", str(path)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        if self.path is not None and self.path.exists():
            self.path.with_suffix(".top.txt").write_text(top_functions(self.path), encoding="utf-8")


def top_functions(path: pathlib.Path, most: int = 25) -> str:
    """The functions with the most samples, on top of the stack (self) and anywhere in it (cumulative)."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        n = int(count)
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    out = [f"{samples} samples ({path.name})", "", "self:"]
    out += [f"  {100 * n / samples:5.1f}%  {frame}" for frame, n in own.most_common(most)]
    out += ["", "cumulative:"]
    out += [f"  {100 * n / samples:5.1f}%  {frame}" for frame, n in total.most_common(most)]
    return "\n".join(out) + "\n"


def operator_requests(kube: RunningEmulator) -> collections.Counter[str]:
    """Requests sent by the operator so far (not by this benchmark), by kind, watches excluded."""
    requests = kube.call(lambda: list(kube.emulator))
    counts: collections.Counter[str] = collections.Counter()
    for r in requests:
        agent = (r.headers or {}).get("User-Agent", "")
        if not agent.startswith(("kopf", "sftjob-operator")):
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


def cpu_seconds(proc: psutil.Process) -> float:
    return sum(proc.cpu_times()[:2])


def _post_on_schedule(url: str, names: list[str], workers: int, rate: float | None, conn: Any) -> None:
    """(In a process of its own.) POST the SFTJobs, all at once or one every 1/rate s; send back when."""
    client = KubeClient(url, token=KUBECONFIG_TOKEN)
    sent: dict[str, float] = {}
    lag = [0.0]
    start = time.monotonic() + 0.1

    def create(item: tuple[int, str]) -> None:
        i, name = item
        due = start + i / rate if rate else start
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        lag[0] = max(lag[0], time.monotonic() - due)
        sent[name] = time.monotonic()
        client.create(manifest(name))

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(create, enumerate(names)))
    conn.send((start, sent, lag[0]))
    conn.close()


def create_all(kube: RunningEmulator, names: list[str], workers: int, rate: float | None) -> tuple[float, dict[str, float], float]:
    """POST the SFTJobs; return the start of the schedule, when each was sent and the worst lag behind it.

    The client runs in a process of its own: the emulator runs in this one,
    and sharing its interpreter lock made the client's pace depend on how
    busy each operator kept the emulator (the same schedule took 5 s against
    one operator and 14 s against the other).
    """
    mp = multiprocessing.get_context("spawn")
    receive, send = mp.Pipe(duplex=False)
    client = mp.Process(target=_post_on_schedule, args=(kube.url, names, workers, rate, send), daemon=True)
    client.start()
    send.close()
    start, sent, lag = receive.recv()
    client.join(60)
    return start, sent, lag


def wait_created(kube: RunningEmulator, watch: JobWatch, names: list[str]) -> None:
    """Until every SFTJob has its Job and shows phase Pending, and the operator has sent nothing for a second.

    The quiet second counts what trails the create path (Events queued
    behind it) into the create path's requests and CPU.
    """
    wait_for(lambda: all(f"{n}-sft" in watch.seen for n in names), timeout=600)
    wait_for(lambda: sum(o.get("status", {}).get("phase") == "Pending"
                         for o in kube.client.list(API, "sftjobs", NAMESPACE)) >= len(names), timeout=600, interval=0.5)
    before, after = -1, sum(operator_requests(kube).values())
    while after != before:
        time.sleep(1.0)
        before, after = after, sum(operator_requests(kube).values())


def record(result: dict[str, Any], kube: RunningEmulator, proc: psutil.Process, watch: JobWatch, names: list[str],
           sent: dict[str, float], started: float, cpu_before: tuple[float, float],
           requests_before: collections.Counter[str]) -> None:
    emulator_cpu = (cpu_seconds(EMULATOR) - cpu_before[1]) / len(names) * 1000
    latencies = [watch.seen[f"{n}-sft"] - sent[n] for n in names]
    result.update(
        p50=percentile(latencies, 50), p90=percentile(latencies, 90), p99=percentile(latencies, 99),
        max=max(latencies), mean=statistics.fmean(latencies),
        first_job_seconds=min(watch.seen[f"{n}-sft"] for n in names) - started,
        last_job_seconds=max(watch.seen[f"{n}-sft"] for n in names) - started,
        cpu_ms_per_sftjob=(cpu_seconds(proc) - cpu_before[0]) / len(names) * 1000,
        emulator_cpu_ms_per_sftjob=emulator_cpu,
        rss_after_mib=proc.memory_info().rss / 2**20,
        jobs_created=sum(1 for j in kube.client.list("batch/v1", "jobs", NAMESPACE) if j["metadata"]["name"] != "warmup-sft"),
    )
    created = operator_requests(kube) - requests_before
    result["requests_per_sftjob"] = sum(created.values()) / len(names)
    result["requests_by_kind"] = {k: round(v / len(names), 3) for k, v in sorted(created.items())}


def run_live(kube: RunningEmulator, op: OperatorProcess, names: list[str], workers: int, rate: float | None,
             profile: pathlib.Path | None) -> dict[str, Any]:
    """SFTJobs arriving while the operator runs (paced or all at once)."""
    client = kube.client
    client.create(manifest("warmup"))  # the operator is up and has finished its initial listing
    wait_for(lambda: client.get(API, "sftjobs", NAMESPACE, "warmup").get("status", {}).get("phase"), timeout=60)
    proc = psutil.Process(op.pid)
    result: dict[str, Any] = {"rss_idle_mib": proc.memory_info().rss / 2**20}
    requests_before = operator_requests(kube)
    watch = JobWatch(kube.url)
    time.sleep(0.2)
    cpu_before = cpu_seconds(proc), cpu_seconds(EMULATOR)
    profiler = Profiler(op.pid, profile)
    try:
        started, sent, lag = create_all(kube, names, workers, rate)
        result.update(created_seconds=max(sent.values()) - started, schedule_lag_max=lag)
        wait_created(kube, watch, names)
    finally:
        profiler.stop()
    record(result, kube, proc, watch, names, sent, started, cpu_before, requests_before)
    return result


def run_cold(kube: RunningEmulator, side: Side, names: list[str], workers: int, profile: pathlib.Path | None) -> dict[str, Any]:
    """All SFTJobs stored first; timed from the operator's start."""
    _, sent, _ = create_all(kube, names, workers, None)
    watch = JobWatch(kube.url)
    time.sleep(0.2)
    emulator_before = cpu_seconds(EMULATOR)
    started = time.monotonic()
    with side.running(kube) as op:
        proc = psutil.Process(op.pid)
        profiler = Profiler(op.pid, profile)
        try:
            wait_created(kube, watch, names)
        finally:
            profiler.stop()
        result: dict[str, Any] = {"created_seconds": max(sent.values()) - min(sent.values())}
        record(result, kube, proc, watch, names, dict.fromkeys(names, started), started, (0.0, emulator_before),
               collections.Counter())
    return result


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


def lifecycle(kube: RunningEmulator, op: OperatorProcess, names: list[str], workers: int) -> dict[str, Any]:
    """The rest of every SFTJob's life after Pending: requests per SFTJob, time, RSS at the end."""
    client = kube.client
    before = operator_requests(kube)
    started = time.monotonic()
    play_lifecycle(kube, names, workers)
    wait_for(lambda: sum(o.get("status", {}).get("phase") == "Succeeded"
                         for o in client.list(API, "sftjobs", NAMESPACE)) >= len(names), timeout=900, interval=0.5)
    time.sleep(1.0)
    rest = operator_requests(kube) - before
    proc = psutil.Process(op.pid)
    return {
        "seconds": time.monotonic() - started,
        "requests_per_sftjob": sum(rest.values()) / len(names),
        "requests_by_kind": {k: round(v / len(names), 3) for k, v in sorted(rest.items())},
        "rss_end_mib": proc.memory_info().rss / 2**20,
        "operator_cpu_seconds": cpu_seconds(proc),
    }


# What the ratios compare (sftjob / baseline): lower is better for all of them.
RATIOS = {"cpu": "cpu_ms_per_sftjob", "last_job": "last_job_seconds", "p99": "p99", "p50": "p50",
          "emulator_cpu": "emulator_cpu_ms_per_sftjob"}


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in keys}
    out["requests_by_kind"] = runs[0].get("requests_by_kind")
    return out


def run_mode(mode: str, sides: list[Side], names: list[str], args: argparse.Namespace, pair: int,
             want_lifecycle: bool) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    results: dict[str, dict[str, Any]] = {}
    life = None
    rate = args.rate if mode == "paced" else None
    for side in (sides if pair % 2 == 0 else sides[::-1]):  # alternate who goes first
        profile = args.profile / f"{mode}-{side.name}-{pair}.raw" if args.profile else None
        with running_emulator() as kube:
            if mode == "cold":
                results[side.name] = run_cold(kube, side, names, args.workers, profile)
            else:
                with side.running(kube) as op:
                    results[side.name] = run_live(kube, op, names, args.workers, rate, profile)
                    if want_lifecycle and side.name == "sftjob":
                        life = lifecycle(kube, op, names, args.workers)
        print(f"  {mode} #{pair + 1} {side.name}: p99 {results[side.name]['p99']:.3f} s, last Job "
              f"{results[side.name]['last_job_seconds']:.2f} s, {results[side.name]['cpu_ms_per_sftjob']:.1f} ms CPU/SFTJob",
              flush=True)
    return results, life


def table(result: dict[str, Any]) -> str:
    header = ("mode", "operator", "arrivals (span)", "p50 s", "p99 s", "last Job s", "CPU ms/SFTJob",
              "emulator ms/SFTJob", "requests/SFTJob", "RSS MiB")
    rows = [header]
    for mode, data in result["modes"].items():
        arrivals = {"paced": f"{result['rate']:g}/s", "cold": "stored", "burst": "at once"}[mode]
        for side in ("sftjob", "baseline"):
            if side not in data:
                continue
            m = data[side]
            rows.append((mode, side, f"{arrivals} ({m['created_seconds']:.2f} s)", f"{m['p50']:.3f}", f"{m['p99']:.3f}",
                         f"{m['last_job_seconds']:.2f}", f"{m['cpu_ms_per_sftjob']:.2f}",
                         f"{m['emulator_cpu_ms_per_sftjob']:.2f}", f"{m['requests_per_sftjob']:.2f}", f"{m['rss_after_mib']:.0f}"))
        if "ratios" in data:
            r = data["ratios"]
            rows.append((mode, "ratio", "", f"{r['p50']:.2f}x", f"{r['p99']:.2f}x", f"{r['last_job']:.2f}x",
                         f"{r['cpu']:.2f}x", f"{r['emulator_cpu']:.2f}x", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=500, help="SFTJobs per run (default 500)")
    parser.add_argument("--modes", default="paced,cold", help=f"comma-separated, of {', '.join(MODES)} (default paced,cold)")
    parser.add_argument("--rate", type=float, default=50.0, help="SFTJobs per second in paced mode (default 50)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each mode (pairs with --baseline); medians reported")
    parser.add_argument("--workers", type=int, default=16, help="client threads creating SFTJobs (default 16)")
    parser.add_argument("--no-lifecycle", action="store_true", help="measure the create path only")
    parser.add_argument("--baseline", action="store_true", help="run each mode against a minimal kopf operator too")
    parser.add_argument("--profile", type=pathlib.Path, help="py-spy stacks of each measured window into this folder")
    parser.add_argument("--output", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes: choose from {', '.join(MODES)}")
    names = [f"job-{i:04d}" for i in range(args.n)]
    with socket.socket() as s:  # a closed port: progress polls fail fast, as for a pod that serves none
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    sides = [Side("sftjob", (sys.executable, "-m", "sftjob_operator"), ["--bind-address", "127.0.0.1"], {
        "SFTJOB_OPERATOR_DISABLE_SCANNING": "true",
        "SFTJOB_OPERATOR_METRICS_PORT": "0",
        "SFTJOB_OPERATOR_HEALTH_PORT": "0",
        "SFTJOB_OPERATOR_PROGRESS_PORT": str(dead_port),
        "SFTJOB_OPERATOR_PROGRESS_POLL_SECONDS": "5",
        "SFTJOB_OPERATOR_LOG_FORMAT": "json",
    })]
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="sftjob-bench-"))
    if args.baseline:
        (tmp / "baseline_operator.py").write_text(BASELINE_OPERATOR, encoding="utf-8")
        sides.append(Side("baseline", KOPF_RUN, ["--all-namespaces", str(tmp / "baseline_operator.py")]))

    result: dict[str, Any] = {"n": args.n, "rate": args.rate, "repeat": args.repeat, "modes": {},
                              "load_average_before": os.getloadavg()}
    runs: dict[str, list[dict[str, dict[str, Any]]]] = {m: [] for m in modes}
    try:
        for pair in range(args.repeat):
            for mode in modes:
                want_lifecycle = not args.no_lifecycle and pair == 0 and mode != "cold" and "lifecycle" not in result
                pair_result, life = run_mode(mode, sides, names, args, pair, want_lifecycle)
                runs[mode].append(pair_result)
                if life is not None:
                    result["lifecycle"] = life
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for mode in modes:
        data: dict[str, Any] = {"runs": runs[mode]}
        for side in sides:
            data[side.name] = medians([r[side.name] for r in runs[mode]])
        if args.baseline:
            data["ratios"] = {name: statistics.median(r["sftjob"][key] / r["baseline"][key] for r in runs[mode])
                              for name, key in RATIOS.items()}
            data["ratios_per_pair"] = [{name: r["sftjob"][key] / r["baseline"][key] for name, key in RATIOS.items()}
                                       for r in runs[mode]]
        result["modes"][mode] = data
    result["load_average_after"] = os.getloadavg()
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    result["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    print(f"\n{args.n} SFTJobs per run, medians of {args.repeat} (ratio: sftjob / baseline, median of pairs); "
          f"load average {result['load_average_before'][0]:.2f} before, {result['load_average_after'][0]:.2f} after")
    print(table(result))
    for run in result["modes"].get("paced", {}).get("runs", []):
        for side, m in run.items():
            if m["created_seconds"] > 1.1 * (args.n - 1) / args.rate + 0.5:
                print(f"warning: the paced schedule was not held against {side} ({args.n} arrivals took "
                      f"{m['created_seconds']:.1f} s, not {(args.n - 1) / args.rate:.1f} s): try a lower --rate")
    for mode in modes:
        print(f"{mode} requests by kind (sftjob): " + ", ".join(
            f"{k} {v:.2f}" for k, v in (result["modes"][mode]["sftjob"]["requests_by_kind"] or {}).items()))
    if "lifecycle" in result:
        life = result["lifecycle"]
        print(f"rest of the lifecycle (sftjob): {life['requests_per_sftjob']:.2f} requests per SFTJob ("
              + ", ".join(f"{k} {v:.2f}" for k, v in life["requests_by_kind"].items())
              + f"), {life['seconds']:.1f} s, RSS at the end {life['rss_end_mib']:.0f} MiB")
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
