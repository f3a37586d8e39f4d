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
untimed), so export_checkpoint never skips a file.

Methods, interleaved (the order rotates every repetition), medians reported:

* `put_object loop` — for each file, one `put_object(Body=open(file))`,
  sequentially: what a hand-written exporter does. No manifest, no hashing
  of its own (botocore still adds its default CRC32).
* `export_checkpoint` — the runtime's exporter with its default
  TransferSettings: SHA-256 of every file, checksummed uploads, the manifest
  written last. End to end, hashing included.
* `export: <variant>` — the same exporter with other transfer settings
  (on unless `--no-variants`), e.g. the weights file in multipart, to see
  whether the defaults are the right ones on this machine.

Client and (for a moto subprocess) server CPU seconds per run are recorded
too: they say which side is the bottleneck.

    python benchmarks/export_throughput.py [--size-mb 512] [--reps 3] [--no-variants]
                                           [--in-process | --endpoint URL --bucket NAME]

Prints a table and writes benchmarks/results/export_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20
GiB = 2**30


def make_checkpoint(root: Path, size_mb: int) -> Path:
    """A checkpoint-like directory with a random weights file of size_mb MiB."""
    src = root / "checkpoint-best"
    src.mkdir(parents=True)
    with (src / "model.safetensors").open("wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(MiB))
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


def put_object_loop(client, src: Path, bucket: str, prefix: str) -> None:
    """The baseline: one put_object per file, one after another."""
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        with path.open("rb") as body:
            client.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(src).as_posix()}", Body=body)


def methods(args, endpoint: str):
    """(name, settings or None, function(client, src, bucket, prefix)) for every method measured."""
    from sftjob_runtime.export import TransferSettings, export_checkpoint

    def exporter(settings):
        def run(client, src, bucket, prefix):
            export_checkpoint(src, f"s3://{bucket}/{prefix}", endpoint=endpoint, region="us-east-1",
                              transfer=settings)
        return run

    out = [("put_object loop", None, put_object_loop), ("export_checkpoint", TransferSettings(),
                                                        exporter(TransferSettings()))]
    if args.variants:
        for name, settings in [
            ("export: multipart >=64 MiB, 64 MiB x8", TransferSettings(64 * MiB, 64 * MiB, 8)),
            ("export: multipart >=16 MiB, 16 MiB x8", TransferSettings(16 * MiB, 16 * MiB, 8)),
            ("export: multipart >=64 MiB, 128 MiB x4", TransferSettings(64 * MiB, 128 * MiB, 4)),
        ]:
            out.append((name, settings, exporter(settings)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=512, help="size of model.safetensors in MiB")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions of every method")
    parser.add_argument("--no-variants", dest="variants", action="store_false",
                        help="measure only the loop and export_checkpoint's defaults")
    parser.add_argument("--in-process", action="store_true", help="run moto in a thread of this process")
    parser.add_argument("--endpoint", help="measure this S3 endpoint instead of moto (credentials from the environment)")
    parser.add_argument("--bucket", help="an existing bucket on --endpoint")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "export_throughput.json")
    args = parser.parse_args()
    if bool(args.endpoint) != bool(args.bucket):
        parser.error("--endpoint and --bucket go together")

    import boto3

    moto_version = None
    if not args.endpoint:
        import moto

        moto_version = moto.__version__
    if not args.endpoint:
        # moto accepts any credentials; these keep boto3 away from real profiles and the metadata service.
        os.environ.update(AWS_ACCESS_KEY_ID="benchmark", AWS_SECRET_ACCESS_KEY="benchmark",
                          AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
        src = make_checkpoint(Path(tmp), args.size_mb)
        sizes = {p.relative_to(src).as_posix(): p.stat().st_size for p in src.rglob("*") if p.is_file()}
        total = sum(sizes.values())
        server = Endpoint(args.in_process, args.endpoint)
        try:
            client = boto3.client("s3", endpoint_url=server.url, region_name=os.environ.get("AWS_DEFAULT_REGION"))
            measured = methods(args, server.url)
            runs: dict[str, list[dict]] = {name: [] for name, _, _ in measured}
            for rep in range(args.reps):
                shift = rep % len(measured)
                for name, _, run in measured[shift:] + measured[:shift]:
                    bucket, prefix = server.fresh(client, rep, args.bucket)
                    cpu, server_cpu, start = _own_cpu(), server.server_cpu(), time.perf_counter()
                    run(client, src, bucket, prefix)
                    wall = time.perf_counter() - start
                    runs[name].append({"seconds": round(wall, 3), "clientCpuSeconds": round(_own_cpu() - cpu, 2),
                                       "serverCpuSeconds": None if server_cpu is None
                                       else round(server.server_cpu() - server_cpu, 2)})
                    # Untimed check that the weights really landed whole.
                    head = client.head_object(Bucket=bucket, Key=f"{prefix}/model.safetensors")
                    assert head["ContentLength"] == sizes["model.safetensors"], name
                    server.clean(client, bucket, prefix)
                    print(f"  rep {rep + 1}/{args.reps} {name:<40} {wall:6.2f} s", flush=True)
        finally:
            server.close()

    def median(name: str, field: str) -> float | None:
        values = [r[field] for r in runs[name] if r[field] is not None]
        return statistics.median(values) if values else None

    base = median("put_object loop", "seconds")
    rows = []
    for name, settings, _ in measured:
        med = median(name, "seconds")
        rows.append({
            "method": name,
            "settings": None if settings is None else {"multipartThreshold": settings.multipart_threshold,
                                                       "partSize": settings.part_size,
                                                       "concurrency": settings.concurrency},
            "runs": runs[name],
            "medianSeconds": round(med, 3),
            "medianMBps": round(total / 1e6 / med, 1),
            "vsLoop": round(base / med, 3),
            "medianClientCpuSeconds": median(name, "clientCpuSeconds"),
            "medianServerCpuSeconds": median(name, "serverCpuSeconds"),
        })
    print(f"\n{len(sizes)} files, {total / 1e6:.0f} MB, {server.kind} endpoint {server.url}, "
          f"{args.reps} interleaved reps, medians")
    print(f"{'method':<40} {'s':>7} {'MB/s':>7} {'vs loop':>8} {'client CPU s':>13} {'server CPU s':>13}")
    for r in rows:
        server_cpu = "-" if r["medianServerCpuSeconds"] is None else f"{r['medianServerCpuSeconds']:.2f}"
        print(f"{r['method']:<40} {r['medianSeconds']:>7.2f} {r['medianMBps']:>7.1f} {r['vsLoop']:>7.2f}x "
              f"{r['medianClientCpuSeconds']:>13.2f} {server_cpu:>13}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "export_throughput",
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "cpu": _cpu_model(), "loadavg1": round(os.getloadavg()[0], 2)},
        "endpoint": {"kind": server.kind, "moto": moto_version,
                     "boto3": boto3.__version__},
        "files": sizes, "totalBytes": total, "reps": args.reps, "results": rows,
    }, indent=2) + "\n")
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


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
