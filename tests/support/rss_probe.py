"""Measure the peak RSS growth of a few CPU training steps, for calibrating `sftjob plan`.

Run as a subprocess, one measurement per process (a fresh heap, so one run's
freed-but-cached memory never hides in the next one's number):

    python -m tests.support.rss_probe '{"config": {...LlamaConfig kwargs...}, "batch": 2, "seq": 128, ...}'

It prints one JSON object: parameters, baseline and peak RSS, `measured_bytes`.

What is measured: the kernel's own high-water mark of this process's RSS
(VmHWM in /proc/self/status), reset (`echo 5 > /proc/self/clear_refs`) once the
model is built, minus the RSS just before the model is built. The high-water
mark misses no short-lived peak (a thread sampling RSS every few ms would miss
the logits' transients), and unlike `getrusage`'s max RSS it can be reset, so
the import-time peak of torch/transformers does not leak into the number.
The reset comes after the model is built so a loader's transient copies are
not counted, while the weights themselves are (they stay resident). The
training loop is the runtime's on one CPU: the model in the run's dtype,
LoRA wrapped as `trainer.load_model` wraps it, torch's fused AdamW (the
Trainer's default `adamw_torch_fused`), zero_grad(set_to_none=True), the
model's own loss (the CPU path of `trainer.make_trainer_class`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def build_model(spec: dict):
    """The model `spec` describes: a random Llama from `config` kwargs, or the weights in `model_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    dtype = getattr(torch, spec.get("dtype", "float32"))
    attention = spec.get("attention", "sdpa")
    if spec.get("model_dir"):
        model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=dtype, attn_implementation=attention)
    else:
        torch.manual_seed(0)
        config = LlamaConfig(**spec["config"])
        config._attn_implementation = attention
        model = LlamaForCausalLM(config).to(dtype)
    lora = spec.get("lora")
    if lora:
        from peft import LoraConfig, get_peft_model

        targets = lora.get("targetModules", ["all-linear"])
        model = get_peft_model(model, LoraConfig(r=lora.get("r", 16), lora_alpha=lora.get("alpha", 32),
                                                 lora_dropout=lora.get("dropout", 0.05),
                                                 target_modules=targets[0] if targets == ["all-linear"] else targets,
                                                 task_type="CAUSAL_LM"))
    if spec.get("checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora:
            model.enable_input_require_grads()
    return model


def measure(spec: dict) -> dict:
    """Train `spec["steps"]` steps; the peak RSS growth over the RSS before the model existed."""
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(int(spec.get("threads", 1)))
    vocab = spec["config"]["vocab_size"] if "config" in spec else spec["vocab_size"]
    batch, seq = int(spec["batch"]), int(spec["seq"])
    inputs = torch.randint(0, vocab, (batch, seq))
    # Import everything and warm the autograd engine, the kernels and the optimizer on a throwaway model, so
    # their one-off setup (library code, thread pools) is in the baseline, not in the growth.
    import transformers  # noqa: F401
    from transformers import LlamaForCausalLM  # noqa: F401

    if spec.get("lora"):
        import peft  # noqa: F401
    warm = torch.nn.Linear(16, 16)
    warm_opt = torch.optim.AdamW(warm.parameters(), fused=True)
    torch.nn.functional.cross_entropy(warm(torch.ones(4, 16)), torch.zeros(4, dtype=torch.long)).backward()
    warm_opt.step()
    del warm, warm_opt
    baseline = _status_kib("VmRSS") * 1024
    model = build_model(spec)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.01, fused=True)
    after_load = _status_kib("VmRSS") * 1024
    _reset_peak()
    for _ in range(int(spec.get("steps", 3))):
        out = model(input_ids=inputs, labels=inputs, use_cache=False)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    peak = _status_kib("VmHWM") * 1024
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return {"parameters": params, "trainable": sum(p.numel() for p in trainable), "baseline_bytes": baseline,
            "after_load_bytes": after_load, "peak_bytes": peak, "measured_bytes": peak - baseline}


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
