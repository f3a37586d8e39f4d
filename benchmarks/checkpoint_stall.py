"""Checkpoint-save stall of the training loop: how long the steps wait for a save, mirror uploaded inline vs in the background.

A real run (`prepare_run` + `train`, a random Llama with the demo model's
tokenizer, no validation split so no evaluation shares the pause) with
`output.uri` on moto's S3 server behind the simulated WAN link of
`latency_proxy.py` (20 ms round trip, 25 MB/s per connection by default),
so each checkpoint is mirrored as it would be without a work volume. The
stall of a save is the time from the end of the step that saves to the
start of the next step: the local save, plus the upload when it runs inline
(how sftjob did it before, and how a mirror inside `on_save` does it). Both
modes run in this process, one after the other, on the same model and data.

    python benchmarks/checkpoint_stall.py [--hidden 256] [--steps 31] [--save-steps 10] [--rtt-ms 20] [--rate-mbps 25]

Prints a table and writes benchmarks/results/checkpoint_stall.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = ROOT / "benchmarks" / "results" / "checkpoint_stall.json"


def random_model(target: Path, hidden: int) -> Path:
    """A randomly initialised 4-layer Llama of the given width with the demo model's tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from sftjob_runtime.demo_model import prepare_demo_model

    tokenizer = AutoTokenizer.from_pretrained(prepare_demo_model())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=4,
                         num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 64),
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def write_job(tmp: Path, model: Path, endpoint: str, bucket: str, args) -> Path:
    import yaml

    data = ROOT / "examples" / "data"
    (tmp / "train.jsonl").write_text("\n".join((data / "quickstart-train.jsonl").read_text().splitlines()[:96]) + "\n")
    job = tmp / "job.yaml"
    job.write_text(yaml.safe_dump({
        "apiVersion": "sftjob.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": "stall"},
        "spec": {
            "model": {"source": str(model)},
            "dataset": {"train": "train.jsonl"},
            "training": {"maxSteps": args.steps, "perDeviceBatchSize": 2, "effectiveBatchSize": 2, "maxSeqLength": 256,
                         "saveSteps": args.save_steps, "saveTotalLimit": 2, "loggingSteps": args.save_steps,
                         "learningRate": 1e-4},
            "sanityCheck": {"enabled": False}, "resources": {"gpus": 0},
            "output": {"uri": f"s3://{bucket}/out/stall", "endpoint": endpoint, "keep": "last"},
            "monitoring": {"reportTo": []},
        },
    }))
    return job


def measure(job: Path, work: Path, inline: bool) -> dict:
    """One run; returns the stall of every save and the plain step times."""
    import sftjob_runtime.train as train_mod
    from sftjob.runconfig import load_run_config
    from sftjob_runtime.checkpoint_sync import CheckpointMirror
    from sftjob_runtime.prepare import prepare_run

    ends: dict[int, float] = {}
    begins: dict[int, float] = {}
    saves: list[int] = []

    class Timed(train_mod.MonitorCallback):
        def on_step_begin(self, args, state, control, **kw):
            begins[state.global_step] = time.monotonic()  # the step after global_step begins
            return super().on_step_begin(args, state, control, **kw)

        def on_step_end(self, args, state, control, **kw):
            ends[state.global_step] = time.monotonic()
            return super().on_step_end(args, state, control, **kw)

        def on_save(self, args, state, control, **kw):
            saves.append(state.global_step)
            return super().on_save(args, state, control, **kw)

    class Inline(CheckpointMirror):
        """The upload inside on_save: the loop waits for it, as an inline mirror makes it."""

        def on_save(self, args, state, control, **kw):
            super().on_save(args, state, control, **kw)
            self.close()

    originals = train_mod.MonitorCallback, train_mod.CheckpointMirror
    train_mod.MonitorCallback = Timed
    if inline:
        train_mod.CheckpointMirror = Inline
    try:
        started = time.monotonic()
        result = train_mod.train(prepare_run(load_run_config(job), job.parent), work)
        wall = time.monotonic() - started
    finally:
        train_mod.MonitorCallback, train_mod.CheckpointMirror = originals
    stalls = [begins[s] - ends[s] for s in saves if s in begins]
    plain = [begins[s] - ends[s] for s in ends if s in begins and s not in saves]
    size = sum(p.stat().st_size for p in (work / "checkpoints").rglob("checkpoint-*/*") if p.is_file()) / len(
        list((work / "checkpoints").glob("checkpoint-*")))
    return {"mode": "inline upload" if inline else "background upload", "saves": saves, "stalls_s": stalls,
            "stall_median_s": statistics.median(stalls) if stalls else None,
            "between_steps_median_s": statistics.median(plain), "wall_s": wall, "steps": result.steps,
            "checkpoint_mb": size / 1e6}


def main(argv=None) -> int:
    from latency_proxy import ProxyProcess
    from moto.server import ThreadedMotoServer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256, help="width of the random model (default 256)")
    parser.add_argument("--steps", type=int, default=31)
    parser.add_argument("--save-steps", type=int, default=10)
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    parser.add_argument("--rate-mbps", type=float, default=25.0, help="MB/s per connection (default 25)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    for var, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(var, value)
    os.environ.setdefault("SFTJOB_EVENTS", "warnings")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    proxy = ProxyProcess(f"http://{host}:{port}", args.rtt_ms, args.rate_mbps)
    rows = []
    try:
        import boto3

        with tempfile.TemporaryDirectory(prefix="sftjob-stall-") as tmp:
            model = random_model(Path(tmp) / "model", args.hidden)
            for inline in (False, True):
                bucket = f"stall-{int(inline)}"
                boto3.client("s3", endpoint_url=f"http://{host}:{port}").create_bucket(Bucket=bucket)
                run_dir = Path(tmp) / bucket
                run_dir.mkdir()
                job = write_job(run_dir, model, proxy.url, bucket, args)
                rows.append(measure(job, run_dir / "work", inline))
    finally:
        proxy.close()
        server.stop()

    result = {"link": {"rtt_ms": args.rtt_ms, "rate_mbps_per_connection": args.rate_mbps}, "hidden": args.hidden,
              "runs": rows, "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                        "platform": platform.platform()},
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"link: {args.rtt_ms:g} ms RTT, {args.rate_mbps:g} MB/s per connection; checkpoint "
          f"{rows[0]['checkpoint_mb']:.0f} MB; saves at steps {rows[0]['saves']}")
    print(f"{'mode':<18} {'save stall (median)':>20} {'per save':>28} {'between other steps':>20} {'wall':>8}")
    for r in rows:
        per = ", ".join(f"{s:.2f}" for s in r["stalls_s"])
        print(f"{r['mode']:<18} {r['stall_median_s']:>18.2f} s {per:>28} {r['between_steps_median_s']:>18.3f} s "
              f"{r['wall_s']:>6.0f} s")
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
