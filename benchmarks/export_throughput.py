"""Export throughput: export_checkpoint vs a sequential put_object-per-file loop, same files, same endpoint, one run.

The files look like a best checkpoint of the demo model: one
`model.safetensors` of random bytes (`--size-mb`, default 512, about the
demo model's 517 MB), a ~2 MB tokenizer.json and a handful of small json
files. The endpoint is moto's S3 server on 127.0.0.1, in its own process
(so the server does not share a GIL with the client under test);
`--in-process` runs it in a thread of this process instead, and
`--endpoint URL --bucket NAME` measures a real S3/MinIO (credentials from
the environment; every run writes under a fresh prefix, deleted after it).
On moto every run gets a fresh bucket (the server is reset in between,
untimed), so export_checkpoint never skips a file. Checkpoint mirroring
during training goes through export_checkpoint too, so these numbers are
its numbers.

Two links to moto, both measured by default (`--link bare|wan|both`):

* `bare` — straight to 127.0.0.1. The CPUs are the limit (moto's server
  above all), so this says what the client and server cost, not what the
  network does.
* `wan` — through benchmarks/latency_proxy.py, a user-space TCP proxy (in
  its own process) that adds `--rtt-ms` (default 20) to every round trip
  and caps each connection at `--rate-mbps` MB/s (default 25) per
  direction: what a pod sees of S3 in another zone or region, where one
  connection cannot fill the pipe and parallel ones can. Transfer
  settings are tuned here. moto's server closes the connection after
  every response, so there each request also pays a TCP handshake (one
  more RTT; the JSON's `medianHeadBucketMs` per link shows it): a few
  tenths of a second a run over the serial requests, for the loop and
  the exporter alike.

Methods, interleaved (the order rotates every repetition, the links
alternate within it), medians reported:

* `put_object loop` — for each file, one `put_object(Body=open(file))`,
  sequentially: what a hand-written exporter does. No manifest, no hashing
  of its own (botocore still adds its default CRC32).
* `export_checkpoint` — the runtime's exporter with its default
  TransferSettings: SHA-256 of every file, checksummed uploads, the manifest
  written last. End to end, hashing and client creation included.
* `export: <variant>` — the same exporter with other transfer settings
  (on unless `--no-variants`; `--transfer THRESHOLD,PART,CONCURRENCY` in
  MiB adds more), e.g. the weights file in multipart.

`--sweep` measures, on the wan link unless `--link` says otherwise, the
loop, the defaults and every part size x concurrency in `--sweep-parts` x
`--sweep-concurrency` with multipart from `--sweep-threshold` (low enough
that the weights file goes up in parts), and names the fastest.

Client, server (moto subprocess) and proxy CPU seconds per run are
recorded too: they say which side is the bottleneck; so are the CPU
seconds the rest of the machine used meanwhile and the load average
before and after, since other work on the machine shows up as noise.
Every S3 request is counted and timed through botocore's event hooks
(nothing patched): the JSON has the requests per operation, and the table
the seconds spent in CompleteMultipartUpload, a serial step that moto
answers by assembling the whole object in Python.

    python benchmarks/export_throughput.py [--size-mb 512] [--mirror] [--reps 3] [--no-variants] [--transfer 64,16,8]
                                           [--link bare|wan|both] [--rtt-ms 20] [--rate-mbps 25]
                                           [--sweep [--sweep-parts 8,16,32,64] [--sweep-concurrency 4,8,16]]
                                           [--in-process | --endpoint URL --bucket NAME]

Prints a table and writes benchmarks/results/export_throughput.json
(`_sweep` and/or `_mirror` added to the name with those flags).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# A sibling script (benchmarks/ is not a package): run as a script, its directory is on sys.path.
from latency_proxy import ProxyProcess

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20
GiB = 2**30
LOOP = "put_object loop"
DEFAULTS = "export_checkpoint"


def make_checkpoint(root: Path, size_mb: int, mirror: bool = False) -> Path:
    """A checkpoint-like directory with a random weights file of size_mb MiB.

    With mirror, what checkpoint mirroring sends during training instead of
    the final export: the trainer's state too, Adam's two moments in an
    `optimizer.pt` twice the weights' size, the scheduler and RNG states.
    """
    src = root / ("checkpoint-40" if mirror else "checkpoint-best")
    src.mkdir(parents=True)
    _random_file(src / "model.safetensors", size_mb)
    if mirror:
        _random_file(src / "optimizer.pt", 2 * size_mb)
        (src / "scheduler.pt").write_bytes(os.urandom(1500))
        (src / "rng_state.pth").write_bytes(os.urandom(15 * 1024))
    (src / "tokenizer.json").write_bytes(os.urandom(2 * MiB))
    small = {
        "config.json": {"architectures": ["LlamaForCausalLM"], "hidden_size": 576, "num_hidden_layers": 30},
        "generation_config.json": {"bos_token_id": 1, "eos_token_id": 2},
        "tokenizer_config.json": {"model_max_length": 8192, "chat_template": "{% for m in messages %}...{% endfor %}"},
        "special_tokens_map.json": {"eos_token": "<|im_end|>", "pad_token": "<|im_end|>"},
        "trainer_state.json": {"best_global_step": 40, "log_history": [{"loss": 1.0 / (i + 1)} for i in range(200)]},
    }
    for name, body in small.items():
        (src / name).write_text(json.dumps(body, indent=2))
    (src / "training_args.bin").write_bytes(os.urandom(5 * 1024))
    return src


def _random_file(path: Path, size_mb: int) -> None:
    with path.open("wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(MiB))


class Endpoint:
    """Where the bytes go: moto's S3 server on 127.0.0.1 (a subprocess or a thread), or a given S3 endpoint."""

    def __init__(self, in_process: bool, url: str | None = None) -> None:
        self.kind = "external" if url else "in-process" if in_process else "subprocess"
        self._proc = self._server = None
        if url:
            self.url = url
            return
        if in_process:
            from moto.server import ThreadedMotoServer

            self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            self._server.start()
            host, port = self._server.get_host_and_port()
        else:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                host, port = s.getsockname()
            self._proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://{host}:{port}"
        self._wait()

    def _wait(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto server at {self.url} did not start") from None
                time.sleep(0.2)

    def fresh(self, client, rep: int, given_bucket: str | None) -> tuple[str, str]:
        """An empty (bucket, prefix) for the next run."""
        if self.kind == "external":
            return given_bucket, f"sftjob-export-bench/{time.time_ns()}"
        req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
        client.create_bucket(Bucket=f"bench-{rep}")
        return f"bench-{rep}", "jobs/bench/best"

    def clean(self, client, bucket: str, prefix: str) -> None:
        """Delete what a run wrote on a real endpoint (moto is reset before the next run instead)."""
        if self.kind != "external":
            return
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys})

    def server_cpu(self) -> float | None:
        """CPU seconds the moto subprocess has used so far (None when it is not a subprocess)."""
        if self._proc is None:
            return None
        fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=30)


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _machine_busy() -> float:
    """CPU seconds all cores of the machine have been busy since boot (from /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def put_object_loop(client, src: Path, bucket: str, prefix: str) -> None:
    """The baseline: one put_object per file, one after another."""
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        with path.open("rb") as body:
            client.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(src).as_posix()}", Body=body)


class RequestLog:
    """Count and time the S3 requests of every client made from boto3's default session, export_checkpoint's too.

    Event hooks only (botocore's before-call/after-call), nothing patched:
    they say how many requests each method makes, and how long the one
    serial step of a multipart upload (CompleteMultipartUpload, which moto
    answers by assembling the object in Python) kept the run waiting
    (summed over the run's multipart files, which may overlap).
    """

    def __init__(self) -> None:
        import boto3

        boto3.setup_default_session()
        boto3.DEFAULT_SESSION.events.register("before-call.s3", self._before)
        boto3.DEFAULT_SESSION.events.register("after-call.s3", self._after)
        self._lock = threading.Lock()
        self._ops: dict[str, list] = {}

    def _before(self, context, **_) -> None:
        context["benchmarkStarted"] = time.perf_counter()

    def _after(self, model, context, **_) -> None:
        seconds = time.perf_counter() - context.get("benchmarkStarted", time.perf_counter())
        with self._lock:
            entry = self._ops.setdefault(model.name, [0, 0.0])
            entry[0] += 1
            entry[1] += seconds

    def take(self) -> dict[str, list]:
        """{operation: [requests, seconds]} since the last take."""
        with self._lock:
            ops, self._ops = self._ops, {}
        return ops


@dataclass(frozen=True)
class Method:
    """One way of sending the files: the loop (settings None) or export_checkpoint with these TransferSettings."""

    name: str
    settings: object | None = None

    def run(self, client, url: str, src: Path, bucket: str, prefix: str) -> None:
        if self.settings is None:
            put_object_loop(client, src, bucket, prefix)
            return
        from sftjob_runtime.export import export_checkpoint

        export_checkpoint(src, f"s3://{bucket}/{prefix}", endpoint=url,
                          region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"), transfer=self.settings)


def _variant(settings) -> Method:
    threshold = settings.multipart_threshold
    when = f"multipart >={threshold // MiB} MiB" if threshold < GiB or threshold % GiB else \
        f"multipart >={threshold // GiB} GiB"
    return Method(f"export: {when}, {settings.part_size // MiB} MiB x{settings.concurrency}", settings)


def methods(args) -> list[Method]:
    """Every method measured: the loop, the defaults, then the variants or the sweep, then --transfer ones."""
    from sftjob_runtime.export import TransferSettings

    defaults = TransferSettings()
    extra = []
    if args.sweep:
        extra = [TransferSettings(args.sweep_threshold * MiB, part * MiB, n)
                 for part in args.sweep_parts for n in args.sweep_concurrency]
    elif args.variants:
        # The earlier defaults (one PUT per file below 1 GiB; before that 64 MiB parts x8); 8 MiB parts
        # (AWS's own tools' size), which split medium files finer. The defaults are 32 MiB / 16 MiB x16.
        extra = [TransferSettings(GiB, 16 * MiB, 8), TransferSettings(64 * MiB, 64 * MiB, 8),
                 TransferSettings(16 * MiB, 8 * MiB, 16)]
    extra += [TransferSettings(t * MiB, p * MiB, n) for t, p, n in args.transfer]
    out, seen = [Method(LOOP), Method(DEFAULTS, defaults)], {defaults}
    for settings in extra:
        if settings not in seen:
            seen.add(settings)
            out.append(_variant(settings))
    return out


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 8,16,32") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers")
    return values


def _transfer(text: str) -> tuple[int, int, int]:
    values = _ints(text)
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: expected THRESHOLD_MIB,PART_MIB,CONCURRENCY, e.g. 64,16,8")
    if values[1] < 5:
        raise argparse.ArgumentTypeError(f"{text!r}: S3 parts are at least 5 MiB")
    return values[0], values[1], values[2]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=512, help="size of model.safetensors in MiB")
    parser.add_argument("--mirror", action="store_true",
                        help="send a checkpoint as mirroring does (weights + optimizer.pt of twice their size + "
                             "trainer state) instead of the final export's")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions of every method on every link")
    parser.add_argument("--no-variants", dest="variants", action="store_false",
                        help="measure only the loop, export_checkpoint's defaults and any --transfer")
    parser.add_argument("--transfer", type=_transfer, action="append", default=[], metavar="T,P,C",
                        help="also measure export_checkpoint with multipart from T MiB, P MiB parts, C at a time "
                             "(repeatable)")
    parser.add_argument("--link", choices=["bare", "wan", "both"],
                        help="straight to moto, through the simulated WAN link, or both (default: both; wan for "
                             "--sweep; bare for --endpoint)")
    parser.add_argument("--rtt-ms", type=float, default=20.0, help="round-trip time the wan link adds, milliseconds")
    parser.add_argument("--rate-mbps", type=float, default=25.0,
                        help="the wan link's cap per connection and direction, in MB/s (10^6 bytes/s; "
                             "25 MB/s = 200 Mbit/s); 0: no cap")
    parser.add_argument("--sweep", action="store_true",
                        help="measure every --sweep-parts x --sweep-concurrency instead of the variants")
    parser.add_argument("--sweep-parts", type=_ints, default=[8, 16, 32, 64], metavar="MIB,...",
                        help="part sizes for --sweep, MiB")
    parser.add_argument("--sweep-concurrency", type=_ints, default=[4, 8, 16], metavar="N,...",
                        help="concurrencies for --sweep")
    parser.add_argument("--sweep-threshold", type=int, default=64, metavar="MIB",
                        help="multipart threshold for --sweep, MiB (below the weights file's size)")
    parser.add_argument("--in-process", action="store_true", help="run moto in a thread of this process")
    parser.add_argument("--endpoint", help="measure this S3 endpoint instead of moto (credentials from the environment)")
    parser.add_argument("--bucket", help="an existing bucket on --endpoint")
    parser.add_argument("--out", type=Path, help="where the JSON goes (default: benchmarks/results/"
                                                 "export_throughput[_sweep][_mirror].json)")
    args = parser.parse_args(argv)
    if bool(args.endpoint) != bool(args.bucket):
        parser.error("--endpoint and --bucket go together")
    if args.link is None:
        args.link = "bare" if args.endpoint else "wan" if args.sweep else "both"
    if args.endpoint and args.link != "bare":
        parser.error("--link wan/both needs moto: a real --endpoint has a real link already")
    if min(args.sweep_parts) < 5:
        parser.error("--sweep-parts: S3 parts are at least 5 MiB")
    if args.out is None:
        name = "export_throughput" + ("_sweep" if args.sweep else "") + ("_mirror" if args.mirror else "")
        args.out = ROOT / "benchmarks" / "results" / f"{name}.json"
    return args


class Bench:
    """The endpoint, the links to it and a client per link: everything one timed run needs."""

    def __init__(self, args, src: Path, link_names: list[str]) -> None:
        import boto3

        self.src, self.given_bucket = src, args.bucket
        self.sizes = {p.relative_to(src).as_posix(): p.stat().st_size for p in src.rglob("*") if p.is_file()}
        self.server = Endpoint(args.in_process, args.endpoint)
        self.proxy = None
        try:
            if "wan" in link_names:
                self.proxy = ProxyProcess(self.server.url, args.rtt_ms, args.rate_mbps)
            self.urls = {"bare": self.server.url, "wan": self.proxy.url if self.proxy else None}
            self.log = RequestLog()  # before any client exists, so that every client reports to it
            region = os.environ.get("AWS_DEFAULT_REGION")
            self.setup = boto3.client("s3", endpoint_url=self.server.url, region_name=region)  # untimed work
            self.clients = {link: boto3.client("s3", endpoint_url=self.urls[link], region_name=region)
                            for link in link_names}
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
        self.server.close()

    def warm_up(self, measured: list[Method], tmp: Path) -> None:
        """One untimed pass of the loop and the exporter over a tiny checkpoint: imports and connections paid."""
        tiny = tmp / "warm-up"
        tiny.mkdir()
        (tiny / "config.json").write_text("{}")
        for link, client in self.clients.items():
            for method in measured[:2]:
                bucket, prefix = self.server.fresh(self.setup, 0, self.given_bucket)
                method.run(client, self.urls[link], tiny, bucket, prefix)
                self.server.clean(self.setup, bucket, prefix)

    def request_ms(self) -> dict[str, float]:
        """Median milliseconds of one small request (HeadBucket) on each link: what the link adds, checked."""
        bucket, _ = self.server.fresh(self.setup, 0, self.given_bucket)
        out = {}
        for link, client in self.clients.items():
            times = []
            for _ in range(15):
                start = time.perf_counter()
                client.head_bucket(Bucket=bucket)
                times.append((time.perf_counter() - start) * 1000)
            out[link] = round(statistics.median(times), 1)
        return out

    def measure(self, method: Method, link: str, rep: int) -> dict:
        """One timed run of method on link into an empty bucket, checked afterwards: seconds, CPU, requests."""
        bucket, prefix = self.server.fresh(self.setup, rep, self.given_bucket)
        before = self._counters()
        self.log.take()
        start = time.perf_counter()
        method.run(self.clients[link], self.urls[link], self.src, bucket, prefix)
        wall = time.perf_counter() - start
        ops = self.log.take()
        after = self._counters()
        run = {"rep": rep, "seconds": round(wall, 3)}
        for field, value in before.items():
            run[field] = None if value is None else round(after[field] - value, 2)
        run["requests"] = {op: n for op, (n, _) in sorted(ops.items())}
        run["requestSeconds"] = {op: round(t, 3) for op, (_, t) in sorted(ops.items())}
        complete = ops.get("CompleteMultipartUpload")
        run["completeMultipartSeconds"] = None if complete is None else round(complete[1], 2)
        # Untimed check that every file really landed whole (the manifest aside).
        listed = self.setup.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/").get("Contents", [])
        landed = {o["Key"][len(prefix) + 1:]: o["Size"] for o in listed}
        landed.pop("sftjob-manifest.json", None)
        assert landed == self.sizes, f"{method.name} on {link}: {landed} != {self.sizes}"
        self.server.clean(self.setup, bucket, prefix)
        return run

    def _counters(self) -> dict[str, float | None]:
        own, server = _own_cpu(), self.server.server_cpu()
        proxy, machine = self.proxy.cpu() if self.proxy else None, _machine_busy()
        return {"clientCpuSeconds": own, "serverCpuSeconds": server, "proxyCpuSeconds": proxy,
                "machineCpuSeconds": machine, "otherCpuSeconds": machine - own - (server or 0) - (proxy or 0)}


def main() -> int:
    args = parse_args()

    import boto3

    moto_version = None
    if not args.endpoint:
        import moto

        moto_version = moto.__version__
        # moto accepts any credentials; these keep boto3 away from real profiles and the metadata service.
        os.environ.update(AWS_ACCESS_KEY_ID="benchmark", AWS_SECRET_ACCESS_KEY="benchmark",
                          AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    link_names = ["bare", "wan"] if args.link == "both" else [args.link]
    measured = methods(args)
    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc)
    runs: dict[tuple[str, str], list[dict]] = {(link, m.name): [] for link in link_names for m in measured}
    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
        src = make_checkpoint(Path(tmp), args.size_mb, args.mirror)
        bench = Bench(args, src, link_names)
        try:
            bench.warm_up(measured, Path(tmp))
            request_ms = bench.request_ms()
            for rep in range(args.reps):
                shift = rep % len(measured)
                for link in link_names if rep % 2 == 0 else link_names[::-1]:
                    for method in measured[shift:] + measured[:shift]:
                        run = bench.measure(method, link, rep)
                        runs[(link, method.name)].append(run)
                        print(f"  rep {rep + 1}/{args.reps} {link:<4} {method.name:<40} {run['seconds']:6.2f} s "
                              f"{sum(bench.sizes.values()) / 1e6 / run['seconds']:6.1f} MB/s", flush=True)
        finally:
            bench.close()
    load_after = os.getloadavg()

    sizes, total, server = bench.sizes, sum(bench.sizes.values()), bench.server
    rows = summarise(runs, link_names, measured, total)
    links = {"bare": {"description": f"straight to {server.kind} endpoint {server.url}"},
             "wan": {"description": "through benchmarks/latency_proxy.py on 127.0.0.1",
                     "rttMs": args.rtt_ms, "ratePerConnectionMBps": args.rate_mbps,
                     "proxyNice": bench.proxy.nice if bench.proxy else None}}
    for link, ms in request_ms.items():
        links[link]["medianHeadBucketMs"] = ms
    print(f"\n{len(sizes)} files, {total / 1e6:.0f} MB, {server.kind} endpoint, {args.reps} interleaved reps, "
          f"medians; wan = +{args.rtt_ms:g} ms RTT, {args.rate_mbps:g} MB/s per connection; one small request "
          + ", ".join(f"{ms:.1f} ms {link}" for link, ms in request_ms.items()))
    print_table(rows)
    best = report_best(rows, link_names)
    all_runs = [r for link_runs in runs.values() for r in link_runs]
    print(f"\nload average (1/5/15 min) before {_fmt_load(load_before)}, after {_fmt_load(load_after)}; during "
          f"timed runs the machine's {os.cpu_count()} CPUs were busy "
          f"{statistics.median(r['machineCpuSeconds'] / r['seconds'] for r in all_runs):.2f} cores, other "
          f"processes used {statistics.median(r['otherCpuSeconds'] / r['seconds'] for r in all_runs):.2f} (medians)")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "export_throughput_sweep" if args.sweep else "export_throughput",
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/export_throughput.py", *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "cpu": _cpu_model(), "loadavgBefore": [round(x, 2) for x in load_before],
                    "loadavgAfter": [round(x, 2) for x in load_after]},
        "endpoint": {"kind": server.kind, "moto": moto_version, "boto3": boto3.__version__},
        "links": {name: links[name] for name in link_names},
        "checkpoint": "mirror" if args.mirror else "best", "files": sizes, "totalBytes": total,
        "reps": args.reps, "results": rows, "fastest": best,
    }, indent=2) + "\n")
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


def summarise(runs: dict, link_names: list[str], measured: list[Method], total: int) -> list[dict]:
    """One row per link and method: medians, the ratio to the loop on the same link, per-rep ratios."""
    rows = []
    for link in link_names:
        loop = {r["rep"]: r["seconds"] for r in runs[(link, LOOP)]}
        base = statistics.median(loop.values())
        for method in measured:
            mine = runs[(link, method.name)]
            med = statistics.median(r["seconds"] for r in mine)
            settings = method.settings
            rows.append({
                "link": link,
                "method": method.name,
                "settings": None if settings is None else {"multipartThreshold": settings.multipart_threshold,
                                                           "partSize": settings.part_size,
                                                           "concurrency": settings.concurrency},
                "runs": mine,
                "medianSeconds": round(med, 3),
                "medianMBps": round(total / 1e6 / med, 1),
                "runsMBps": sorted(round(total / 1e6 / r["seconds"], 1) for r in mine),
                "vsLoop": round(base / med, 3),
                "perRepVsLoop": sorted(round(loop[r["rep"]] / r["seconds"], 2) for r in mine),
                **{f"median{k[0].upper()}{k[1:]}": _median(mine, k)
                   for k in ("clientCpuSeconds", "serverCpuSeconds", "proxyCpuSeconds", "otherCpuSeconds",
                             "completeMultipartSeconds")},
                "requests": mine[0]["requests"],
            })
    return rows


def _median(runs: list[dict], field: str) -> float | None:
    values = [r[field] for r in runs if r[field] is not None]
    return round(statistics.median(values), 2) if values else None


def print_table(rows: list[dict]) -> None:
    print(f"{'link':<5} {'method':<40} {'s':>6} {'MB/s':>6} {'runs MB/s':>17} {'vs loop':>8} {'per rep':>16} "
          f"{'CPU s: client':>13} {'server':>6} {'proxy':>6} {'others':>6} {'complete s':>10}")

    def cpu(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    for r in rows:
        spread = "/".join(f"{x:.0f}" for x in r["runsMBps"])
        per_rep = "/".join(f"{x:.2f}" for x in r["perRepVsLoop"])
        print(f"{r['link']:<5} {r['method']:<40} {r['medianSeconds']:>6.2f} {r['medianMBps']:>6.1f} {spread:>17} "
              f"{r['vsLoop']:>7.2f}x {per_rep:>16} {cpu(r['medianClientCpuSeconds']):>13} "
              f"{cpu(r['medianServerCpuSeconds']):>6} {cpu(r['medianProxyCpuSeconds']):>6} "
              f"{cpu(r['medianOtherCpuSeconds']):>6} {cpu(r['medianCompleteMultipartSeconds']):>10}")


def report_best(rows: list[dict], link_names: list[str]) -> dict | None:
    """The fastest export settings on the wan link (else bare), with how they did on the other link."""
    link = "wan" if "wan" in link_names else link_names[0]
    exports = [r for r in rows if r["link"] == link and r["settings"] is not None]
    if not exports:
        return None
    best = max(exports, key=lambda r: r["medianMBps"])
    other = next((r for r in rows if r["link"] != link and r["method"] == best["method"]), None)
    print(f"\nfastest export on {link}: {best['method']} — {best['medianMBps']:.1f} MB/s, {best['vsLoop']:.2f}x the loop"
          + (f"; on {other['link']}: {other['vsLoop']:.2f}x the loop" if other else ""))
    out = {"link": link, "method": best["method"], "settings": best["settings"], "vsLoop": best["vsLoop"]}
    if other:
        out[f"vsLoopOn{other['link'].capitalize()}"] = other["vsLoop"]
    return out


def _fmt_load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.2f}" for x in load)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
