"""Training throughput: sftjob's runtime vs a plain PyTorch loop, same model, same batches, one run.

Both sides train the same model (reloaded from disk for every run) on the
SAME micro-batches, materialised once from the runtime's own data loader
(sequential sampling). The plain side is forward + backward + fused AdamW
+ zero_grad, nothing else. Runs are interleaved (runtime, plain, runtime,
plain, ...) and the medians compared, because CPU throughput here drifts
by several per cent between runs. The first `--warmup` steps of each run
are not timed. Which side runs first alternates from pair to pair.

    python benchmarks/train_throughput.py [--model DIR] [--steps 12] [--pairs 3]

Prints a table and writes benchmarks/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build(args):
    """The runtime's prepared run for the quickstart job, with the benchmark's batch settings."""
    from sftjob.manifest import load_sftjob
    from sftjob.runconfig import RunConfig
    from sftjob_runtime.prepare import prepare_run

    job = load_sftjob(ROOT / "examples" / "quickstart.yaml")
    cfg = RunConfig.from_sftjob(job)
    if args.model:
        cfg.model.source = args.model
    cfg.training.perDeviceBatchSize = args.batch
    cfg.training.effectiveBatchSize = args.batch
    cfg.training.maxSeqLength = args.max_length
    cfg.training.packing = args.packing
    cfg.monitoring.reportTo = []
    prep = prepare_run(cfg, (ROOT / "examples").resolve())
    prep.resolved.warmupRatio = 0.0
    prep.resolved.lrScheduler = "constant"
    return prep


def make_trainer(prep, steps: int, workdir: Path):
    from datasets import Dataset

    from sftjob_runtime.callbacks import TokenCounter
    from sftjob_runtime.trainer import load_model, make_trainer_class
    from sftjob_runtime.trainer_config import RunPaths, build_sft_config

    r = prep.resolved
    r.evalSteps = r.saveSteps = steps * 10
    args = build_sft_config(prep.cfg, r, RunPaths(workdir), has_eval=False, max_steps=steps)
    args.save_strategy = "no"
    args.train_sampling_strategy = "sequential"
    args.disable_tqdm = True
    args.logging_steps = steps
    model = load_model(prep.cfg, prep.model_path, r.dtype, r.attention)
    counter = TokenCounter()
    cls = make_trainer_class()
    return cls(model=model, args=args, train_dataset=Dataset.from_list(prep.train.records()), processing_class=prep.tokenizer,
               token_counter=counter, fused_head=prep.hardware.device == "cuda")


def run_runtime(prep, steps: int, warmup: int) -> dict:
    """tokens/s of SFTJobTrainer over `steps` optimizer steps (timed after `warmup`)."""
    from transformers import TrainerCallback

    marks: list[tuple[float, int]] = []

    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(prep, steps, Path(tmp))
        counter = trainer.token_counter

        class Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                marks.append((time.perf_counter(), counter.tokens))

        trainer.add_callback(Clock())
        trainer.train()
    (t0, k0), (t1, k1) = marks[warmup - 1], marks[-1]
    return {"tokens_per_second": (k1 - k0) / (t1 - t0), "seconds": t1 - t0, "tokens": k1 - k0}


def materialise_batches(prep, steps: int) -> list[dict]:
    """The exact micro-batches the runtime's data loader yields, in order."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(prep, steps, Path(tmp))
        loader = trainer.get_train_dataloader()
        batches = []
        for batch in loader:
            batches.append({k: v for k, v in batch.items()})
            if len(batches) == steps:
                break
    return batches


def run_plain(prep, batches: list[dict], warmup: int) -> dict:
    """A plain forward + backward + AdamW loop over the same batches."""
    import torch

    from sftjob_runtime.trainer import load_model

    r = prep.resolved
    model = load_model(prep.cfg, prep.model_path, r.dtype, r.attention)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=r.learningRate, weight_decay=r.weightDecay, fused=True)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if r.dtype == "bfloat16" else None
    t0 = k0 = None
    tokens = 0
    for i, batch in enumerate(batches):
        n = int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(batch["input_ids"].numel())
        if autocast:
            with autocast:
                loss = model(**batch, use_cache=False).loss
        else:
            loss = model(**batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), r.maxGradNorm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += n
        if i == warmup - 1:
            t0, k0 = time.perf_counter(), tokens
    t1 = time.perf_counter()
    return {"tokens_per_second": (tokens - k0) / (t1 - t0), "seconds": t1 - t0, "tokens": tokens - k0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model directory (default: the demo model)")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--packing", action="store_true")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_throughput.json"))
    args = p.parse_args(argv)
    if args.model is None:
        from sftjob_runtime.demo_model import prepare_demo_model

        args.model = str(prepare_demo_model())

    prep = build(args)
    batches = materialise_batches(prep, args.steps)
    runtime, plain = [], []
    for i in range(args.pairs):
        # Alternate which side goes first, so drift on the machine does not favour one side.
        if i % 2 == 0:
            runtime.append(run_runtime(prep, args.steps, args.warmup))
            plain.append(run_plain(prep, batches, args.warmup))
        else:
            plain.append(run_plain(prep, batches, args.warmup))
            runtime.append(run_runtime(prep, args.steps, args.warmup))
        print(f"pair {i + 1}: runtime {runtime[-1]['tokens_per_second']:.0f} tok/s, plain {plain[-1]['tokens_per_second']:.0f} tok/s",
              file=sys.stderr)
    rt = statistics.median(x["tokens_per_second"] for x in runtime)
    pl = statistics.median(x["tokens_per_second"] for x in plain)
    result = {
        "benchmark": "train_throughput",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "hardware": prep.hardware.as_dict()},
        "model": args.model, "parameters": prep.resolved.parameters, "dtype": prep.resolved.dtype,
        "batch": args.batch, "max_length": args.max_length, "packing": args.packing, "steps": args.steps,
        "warmup": args.warmup, "pairs": args.pairs,
        "runtime_tokens_per_second": runtime, "plain_tokens_per_second": plain,
        "median_runtime": rt, "median_plain": pl, "ratio": rt / pl, "goal": 0.85,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\n| side | median tokens/s |\n|---|---|\n| sftjob runtime | {rt:.0f} |\n| plain PyTorch loop | {pl:.0f} |")
    print(f"\nratio runtime/plain = {rt / pl:.3f} (goal >= 0.85) on {prep.hardware.device_name}, {prep.resolved.dtype}, "
          f"{os.cpu_count()} CPUs; written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
