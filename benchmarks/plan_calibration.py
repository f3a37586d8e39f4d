"""Calibration of `sftjob plan`'s memory estimate against measured peak RSS growth of CPU training.

For tiny and small random Llamas (built like tests/support/models.py's
`make_tiny_model`: the demo tokenizer's 49152-token vocabulary, tied
embeddings) and the demo model SmolLM2-135M (when `sftjob demo-model` has
prepared it), full and LoRA, fp32: a few training steps in a fresh
subprocess (`tests/support/rss_probe.py`, which says what it measures and
why), and the plan's estimate for the same job on the CPU.

    nice -n 10 python benchmarks/plan_calibration.py [--steps 3] [--batch 2] [--seq 128]

Prints a table and writes benchmarks/results/plan_calibration.json. The
estimator's activation constants (sftjob_runtime/plan.py) name the run they
came from; the issue's bar is every ratio within 0.75-1.25.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

VOCAB = 49152
SIZES = {  # name: LlamaConfig kwargs besides the vocabulary
    "tiny-h64-l2": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "small-h256-l4": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4),
    "small-h512-l8": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4),
}
LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "targetModules": ["all-linear"]}


def cases(batch: int, seq: int, steps: int) -> list[tuple[str, dict]]:
    """(model name, probe spec) for every model and mode."""
    base = dict(batch=batch, seq=seq, steps=steps, dtype="float32", attention="sdpa")
    out = []
    for name, kw in SIZES.items():
        config = dict(vocab_size=VOCAB, tie_word_embeddings=True, max_position_embeddings=2048, **kw)
        out += [(name, {**base, "config": config}), (name, {**base, "config": config, "lora": LORA})]
    # Two checks beyond the fp32 grid: gradient checkpointing, and bf16 (native on CPUs with avx512_bf16/AMX).
    big = dict(vocab_size=VOCAB, tie_word_embeddings=True, max_position_embeddings=2048, **SIZES["small-h512-l8"])
    out += [("small-h512-l8", {**base, "config": big, "checkpointing": True}),
            ("small-h512-l8", {**base, "config": big, "dtype": "bfloat16"})]
    from sftjob_runtime.demo_model import cache_root

    demo = cache_root() / "demo-model"
    if (demo / "config.json").exists():
        vocab = json.loads((demo / "config.json").read_text())["vocab_size"]
        spec = {**base, "model_dir": str(demo), "vocab_size": vocab}
        out += [("SmolLM2-135M", spec), ("SmolLM2-135M", {**spec, "lora": LORA})]
    return out


def estimate(spec: dict) -> tuple[int, int]:
    """(parameters, estimated peak bytes) of the plan for the probe's job on one CPU."""
    from transformers import AutoConfig, LlamaConfig

    from sftjob_runtime import plan

    config = AutoConfig.from_pretrained(spec["model_dir"]) if spec.get("model_dir") else LlamaConfig(**spec["config"])
    arch = plan.arch_from_config(config)
    lora = spec.get("lora")
    setup = plan.Setup(device="cpu", gpus=0, dtype=spec["dtype"], attention=spec["attention"],
                       checkpointing=bool(spec.get("checkpointing")),
                       batch=spec["batch"], seq=spec["seq"], lora_r=lora["r"] if lora else None,
                       lora_targets=tuple(lora["targetModules"]) if lora else ("all-linear",))
    return arch.parameters, plan.memory(arch, setup, "ddp").peak


def probe(spec: dict) -> dict:
    """One measurement in a fresh process (its own heap)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "image")])}
    out = subprocess.run([sys.executable, "-m", "tests.support.rss_probe", json.dumps(spec)], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    return {"cpus": os.cpu_count(), "model": name, "avx512_bf16": "avx512_bf16" in cpuinfo, "python": platform.python_version()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--only", help="run only models whose name contains this")
    args = ap.parse_args()
    rows = []
    print(f"{'model':<16}{'params':>12}  {'mode':<8}{'dtype':<9}{'estimated':>12}{'measured':>12}{'ratio':>7}")
    for name, spec in cases(args.batch, args.seq, args.steps):
        if args.only and args.only not in name:
            continue
        params, est = estimate(spec)
        got = probe(spec)
        mode = ("lora" if spec.get("lora") else "full") + ("+gc" if spec.get("checkpointing") else "")
        ratio = est / got["measured_bytes"]
        rows.append({"model": name, "parameters": params, "mode": mode, "dtype": spec["dtype"], "batch": spec["batch"],
                     "seq": spec["seq"], "steps": spec["steps"], "estimated_bytes": est,
                     "measured_bytes": got["measured_bytes"], "ratio": round(ratio, 3)})
        print(f"{name:<16}{params:>12,}  {mode:<8}{spec['dtype']:<9}{est / 2**20:>9.0f} MiB{got['measured_bytes'] / 2**20:>8.0f} MiB{ratio:>7.2f}",
              flush=True)
    result = {"benchmark": "plan_calibration", "machine": machine(),
              "measured": "peak RSS growth: VmHWM (reset after the model is built) minus RSS before it (tests/support/rss_probe.py)",
              "rows": rows, "within_25_percent": all(0.75 <= r["ratio"] <= 1.25 for r in rows)}
    out = ROOT / "benchmarks" / "results" / "plan_calibration.json"
    if not args.only:
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
