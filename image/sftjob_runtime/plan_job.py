"""`sftjob plan FILE`: the pre-flight plan of one SFTJob, before any GPU is asked for.

From the manifest and the model's config.json alone (no weights, never a
download of data): the memory per device under each strategy (`plan.py`),
the strategy `auto` would pick and whether it fits the GPU, the optimizer
steps and tokens per epoch, and time and cost when given a throughput and a
price. Exit 0: it fits; 1: it does not; 2/3/4 (ExitCode): bad input, data
or model, with one line on stderr.

The GPU's memory comes from `--gpu-memory`, else `spec.resources.gpuMemory`, else from a node-selector label
value naming a known GPU (`nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3`,
or GPU feature discovery's `nvidia.com/gpu.memory` in MiB), else 80 GB,
said as an assumption.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import replace
from pathlib import Path

from sftjob.manifest import ManifestError
from sftjob.report import PlanSummary
from sftjob.vocabulary import ExitCode, Reason
from sftjob_runtime import plan as est
from sftjob_runtime.errors import RuntimeFailure, one_line

PLAN_VERSION = "sftjob.dev/plan/v1"
MiB = 1024**2
# (pattern matched in a node-selector label value, lower-cased; name; memory in MiB as nvidia-smi reports it).
KNOWN_GPUS = (
    (r"h200", "H200 141 GB", 143771),
    (r"h100.*(94|nvl)", "H100 NVL 94 GB", 95830),
    (r"h100", "H100 80 GB", 81559),
    (r"a100.*40", "A100 40 GB", 40960),
    (r"a100", "A100 80 GB", 81920),
    (r"l40s", "L40S 48 GB", 46068),
    (r"a10g", "A10G 24 GB", 23028),
    (r"(^|[^a-z0-9])l4($|[^a-z0-9])|nvidia-l4", "L4 24 GB", 23034),
    (r"t4", "T4 16 GB", 15360),
)
ASSUMED_GPU = ("80 GB (assumed: no --gpu-memory and no known GPU in spec.resources.nodeSelector)", 80 * 10**9)
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40,
          "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


def parse_bytes(text: str, field: str = "--gpu-memory") -> int:
    """'80Gi', '80GB', '81559Mi', '64Gi' -> bytes; a bad value names the option."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise RuntimeFailure(Reason.INVALID_SPEC, f"{field}: {text!r} is not a memory size (e.g. 80Gi, 80GB, 24576Mi)",
                             ExitCode.INVALID_CONFIG)
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def gpu_capacity(node_selector: dict[str, str], override: str | None, spec_memory: str | None = None) -> tuple[str, int, str]:
    """(name, bytes, where it came from) of one GPU of the job: --gpu-memory, spec.resources.gpuMemory, a known label."""
    for given, source in ((override, "--gpu-memory"), (spec_memory, "spec.resources.gpuMemory")):
        if given:
            size = parse_bytes(given, source)
            return f"{size / 2**30:.0f} GB", size, source
    for key, value in node_selector.items():
        if key.endswith("gpu.memory") and value.isdigit():
            return f"{int(value) / 1024:.0f} GB", int(value) * MiB, f"nodeSelector {key}={value} (MiB)"
    for key, value in node_selector.items():
        for pattern, name, mib in KNOWN_GPUS:
            if re.search(pattern, value.lower()):
                return name, mib * MiB, f"nodeSelector {key}={value}"
    return ASSUMED_GPU[0], ASSUMED_GPU[1], "assumed"


def load_arch(cfg, base: Path | None, model_dir: str | None = None) -> est.Arch:
    """Shapes from config.json only: a local directory, or a hub id through the hub cache (config.json alone).

    `model_dir`: the model already fetched (a run's own plan, for its report).
    """
    from transformers import AutoConfig

    from sftjob_runtime.prepare import hf_token, resolve_path

    if model_dir is not None:
        return est.arch_from_config(AutoConfig.from_pretrained(model_dir, trust_remote_code=cfg.model.trustRemoteCode),
                                    trust_remote_code=cfg.model.trustRemoteCode)
    src = cfg.model.source
    if src.startswith(("s3://", "pvc://")):
        raise RuntimeFailure(Reason.MODEL_NOT_FOUND, f"spec.model.source: {src}: plan reads the model config from a local "
                             "directory or a hub id; point it at a local copy of the model's config.json", ExitCode.MODEL)
    local = resolve_path(src, base)
    where = local if Path(local).exists() else src
    if not Path(local).exists() and src.startswith(("/", ".", "~", "file://")):
        raise RuntimeFailure(Reason.MODEL_NOT_FOUND, f"spec.model.source: no model directory at {local}", ExitCode.MODEL)
    try:
        config = AutoConfig.from_pretrained(where, revision=cfg.model.revision, token=hf_token(),
                                            trust_remote_code=cfg.model.trustRemoteCode)
    except (OSError, ValueError) as e:
        raise RuntimeFailure(Reason.MODEL_NOT_FOUND, one_line(
            f"spec.model.source: cannot read the config of {src!r} ({str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__}); "
            "offline, the hub cache must hold it (HF_HUB_OFFLINE), or point the source at a local directory"), ExitCode.MODEL) from None
    return est.arch_from_config(config, trust_remote_code=cfg.model.trustRemoteCode)


def _setup(cfg, capacity_name: str) -> est.Setup:
    """The device-side facts of the job, with `auto` resolved as the runtime would on that device."""
    cuda = cfg.gpus > 0
    lora = cfg.training.lora
    if cuda:
        no_bf16 = any(g in capacity_name for g in ("T4",))  # pre-Ampere: no bf16 (hardware.choose_dtype)
        dtype = cfg.model.dtype if cfg.model.dtype != "auto" else ("float32" if no_bf16 else "bfloat16")
    else:
        from sftjob_runtime import hardware

        dtype = hardware.choose_dtype(cfg.model.dtype, hardware.detect_hardware())
    # auto: flash_attention_2 where installed, else sdpa; neither materialises seq x seq scores.
    attention = "sdpa" if cfg.model.attention in ("auto", "flash_attention_2") else cfg.model.attention
    checkpointing = cuda if cfg.training.gradientCheckpointing is None else cfg.training.gradientCheckpointing
    return est.Setup(device="cuda" if cuda else "cpu", gpus=cfg.gpus, nodes=cfg.nodes, dtype=dtype, attention=attention,
                     checkpointing=checkpointing, seq=cfg.training.maxSeqLength, packing=cfg.training.packing,
                     lora_r=lora.r if lora else None, lora_targets=tuple(lora.targetModules) if lora else ("all-linear",),
                     lora_dropout=lora.dropout if lora else 0.0, quantization=cfg.model.quantization)


def tokenized_counts(rows) -> dict:
    """Rows and tokens of one epoch from tokenized training rows (those with a token to train on: what TRL keeps)."""
    kept = [r for r in rows if r.num_trained_tokens > 0]
    return {"trainRows": len(kept), "tokensPerEpoch": sum(r.num_tokens for r in kept), "tokensExact": True,
            "note": "tokenized as training does"}


def data_counts(cfg, base: Path | None, model_dir: str | None, train_rows: int | None) -> dict:
    """Rows and tokens of one epoch: tokenized as training does when data (and tokenizer) are local."""
    seq = cfg.training.maxSeqLength
    if cfg.dataset.train.startswith(("s3://", "pvc://")):
        if train_rows is None:
            return {"trainRows": None, "tokensPerEpoch": None, "tokensExact": False,
                    "note": f"{cfg.dataset.train} is not local (plan downloads no data): give --train-rows N to estimate"}
        return {"trainRows": train_rows, "tokensPerEpoch": train_rows * seq, "tokensExact": False,
                "note": "upper bound: --train-rows x maxSeqLength"}
    from sftjob_runtime.prepare import load_splits, load_tokenizer, tokenize_split

    train, _ = load_splits(cfg, base)
    try:
        if model_dir is None:
            raise RuntimeFailure(Reason.MODEL_NOT_FOUND, "no local tokenizer")
        _, masker = load_tokenizer(cfg, model_dir)
    except RuntimeFailure:
        return {"trainRows": len(train), "tokensPerEpoch": len(train) * seq, "tokensExact": False,
                "note": "upper bound: rows x maxSeqLength (no tokenizer beside the model config)"}
    return tokenized_counts(tokenize_split(masker, train, seq).rows)


def build_plan(file: str, *, gpu_memory: str | None = None, tokens_per_second: float | None = None,
               price_per_gpu_hour: float | None = None, train_rows: int | None = None, model_dir: str | None = None,
               data: dict | None = None) -> dict:
    """The whole plan of one SFTJob manifest (or run config) as a JSON-ready dict (shape: docs/design-notes.md).

    A run planning itself for its report passes the model it fetched (`model_dir`) and the data counts it
    tokenized (`data`), so nothing is read twice.
    """
    from sftjob.manifest import load_sftjob
    from sftjob.runconfig import RunConfig, load_run_config
    from sftjob_runtime.hparams import plan_steps, resolve
    from sftjob_runtime.prepare import resolve_path

    base = Path(file).resolve().parent
    if Path(file).suffix == ".json":
        cfg, selector, memory = load_run_config(file), {}, None
    else:
        job = load_sftjob(file)
        cfg, selector, memory = RunConfig.from_sftjob(job), job.spec.resources.nodeSelector, job.spec.resources.memory
    arch = load_arch(cfg, base, model_dir)
    if cfg.gpus > 0:
        cap_name, capacity, cap_source = gpu_capacity(selector, gpu_memory, cfg.gpuMemory)
    else:
        capacity = parse_bytes(gpu_memory or memory or "64Gi", "--gpu-memory" if gpu_memory else "spec.resources.memory")
        cap_name, cap_source = f"{capacity / 2**30:.0f} GiB of memory", "--gpu-memory" if gpu_memory else "spec.resources.memory"
    setup = _setup(cfg, cap_name)
    resolved = resolve(cfg.training, arch.parameters, cfg.devices)
    setup = replace(setup, batch=resolved.perDeviceBatchSize)
    host = parse_bytes(memory, "spec.resources.memory") if memory and setup.device == "cuda" else None
    strategies = est.all_strategies(arch, setup, capacity, host)
    chosen = est.choose(strategies, cfg.strategy)
    fixes = est.suggestions(arch, setup, capacity, host) if not strategies["ddp"].fits else []
    if data is None:
        local_dir = model_dir or resolve_path(cfg.model.source, base)
        data = data_counts(cfg, base, local_dir if Path(local_dir).is_dir() else None, train_rows)
    steps = epoch_steps = None
    if data["tokensPerEpoch"] is not None:
        sequences = math.ceil(data["tokensPerEpoch"] / setup.seq) if setup.packing else data["trainRows"]
        epoch_steps = max(1, math.ceil(sequences / resolved.effectiveBatchSize))
        steps = plan_steps(resolved, cfg.training, sequences).totalSteps
    elif resolved.maxSteps:
        steps = resolved.maxSteps
    tokens_total = None
    if data["tokensPerEpoch"] is not None and not resolved.maxSteps:
        tokens_total = int(data["tokensPerEpoch"] * resolved.epochs)
    elif steps:
        tokens_total = steps * resolved.effectiveBatchSize * setup.seq  # an upper bound: full sequences
    seconds = tokens_total / (tokens_per_second * setup.devices) if tokens_total and tokens_per_second else None
    cost = seconds / 3600 * setup.devices * price_per_gpu_hour if seconds is not None and price_per_gpu_hour else None
    assumptions = [
        f"GPU memory: {cap_name} from {cap_source}" if setup.device == "cuda" else f"CPU: {cap_name} from {cap_source}",
        f"usable: capacity less {est.CUDA_CONTEXT / 2**30:.0f} GiB CUDA context, then less "
        f"{est.GPU_FRAGMENTATION:.0%} for allocator fragmentation" if setup.device == "cuda" else "usable: all of it",
        f"activations for full sequences: {setup.batch} x {setup.seq} tokens per micro-batch",
    ]
    return {
        "version": PLAN_VERSION, "name": cfg.name,
        "model": {"source": cfg.model.source, "parameters": arch.parameters,
                  "trainableParameters": est.trainable_parameters(arch, setup), "mode": setup.mode},
        "setup": {"device": setup.device, "gpus": setup.gpus, "nodes": setup.nodes, "devices": setup.devices,
                  "dtype": setup.dtype, "attention": setup.attention, "gradientCheckpointing": setup.checkpointing,
                  "perDeviceBatchSize": setup.batch, "gradientAccumulationSteps": resolved.gradientAccumulationSteps,
                  "effectiveBatchSize": resolved.effectiveBatchSize, "maxSeqLength": setup.seq, "packing": setup.packing,
                  "quantization": setup.quantization},
        "memory": {"name": cap_name, "bytes": capacity, "usableBytes": est.usable(capacity, setup.device), "source": cap_source,
                   "hostBytesPerNode": host},
        "strategies": {k: v.as_dict() for k, v in strategies.items()},
        "strategyRequested": cfg.strategy, "strategy": chosen, "fits": chosen is not None,
        "message": est.describe(chosen, strategies, setup, cap_name, fixes, cfg.strategy),
        "suggestions": fixes,
        "data": data,
        "steps": {"perEpoch": epoch_steps, "total": steps, "epochs": resolved.epochs},
        "tokensTotal": tokens_total,
        "time": None if seconds is None else {"tokensPerSecondPerGpu": tokens_per_second, "seconds": round(seconds)},
        "cost": None if cost is None else {"pricePerGpuHour": price_per_gpu_hour, "total": round(cost, 2)},
        "assumptions": assumptions,
    }


def summary(plan: dict | None) -> PlanSummary | None:
    """What status.plan shows of a whole plan (None when the run could not plan itself)."""
    if not plan:
        return None
    ddp = (plan.get("strategies") or {}).get("ddp") or {}
    memory = plan.get("memory") or {}
    return PlanSummary(
        strategy=plan.get("strategy"), fits=bool(plan.get("fits")), devices=(plan.get("setup") or {}).get("devices"),
        memory=f"{memory.get('name')} ({memory.get('source')})" if memory.get("name") else None,
        usableBytes=memory.get("usableBytes"), ddpPeakBytes=ddp.get("peak"), message=plan.get("message"),
    )


def _g(n: int) -> str:
    return f"{n / 2**30:.1f}"


def print_plan(p: dict) -> None:
    m, s = p["model"], p["setup"]
    print(f"{p['name']}: {m['source']}, {m['parameters'] / 1e9:.2f}B parameters, {m['mode']} "
          f"({m['trainableParameters'] / 1e6:,.1f}M trainable), {s['dtype']}, {s['attention']}, "
          f"checkpointing {'on' if s['gradientCheckpointing'] else 'off'}")
    print(f"  {s['devices']} x {p['memory']['name']} ({p['memory']['source']}); {_g(p['memory']['usableBytes'])} GiB usable")
    print(f"  batch {s['perDeviceBatchSize']} x {s['devices']} device(s) x {s['gradientAccumulationSteps']} accumulation "
          f"= {s['effectiveBatchSize']}, {s['maxSeqLength']} tokens per sequence")
    print(f"  {'GiB/device':<14}{'weights':>9}{'grads':>8}{'optim':>8}{'activ':>8}{'buffers':>9}{'peak':>8}  fits")
    for name, r in p["strategies"].items():
        host = f"  (+{_g(r['host'])} GiB host per node)" if r["host"] else ""
        print(f"  {name:<14}{_g(r['weights']):>9}{_g(r['gradients']):>8}{_g(r['optimizer']):>8}{_g(r['activations']):>8}"
              f"{_g(r['buffers']):>9}{_g(r['peak']):>8}  {'yes' if r['fits'] else 'no'}{host}")
    d, st = p["data"], p["steps"]
    tokens = f"{d['tokensPerEpoch']:,}" if d["tokensPerEpoch"] is not None else "unknown"
    print(f"  data: {d['trainRows'] if d['trainRows'] is not None else 'unknown'} rows, {tokens} tokens per epoch ({d['note']})")
    if st["total"]:
        print(f"  steps: {st['perEpoch'] or '?'} per epoch, {st['total']} in all")
    if p["time"]:
        sec = p["time"]["seconds"]
        took = f"~{sec / 3600:.1f} h" if sec >= 3600 else f"~{max(sec / 60, 1):.0f} min"
        cost = f", {p['cost']['total']:,.2f} at {p['cost']['pricePerGpuHour']}/GPU-hour" if p["cost"] else ""
        print(f"  time: {took} at {p['time']['tokensPerSecondPerGpu']:,.0f} tokens/s per device{cost}")
    print(f"  strategy ({p.get('strategyRequested', 'auto')}): {p['strategy'] or 'none'}: {p['message']}")


def plan_command(file: str, as_json: bool = False, **options) -> int:
    """`sftjob plan`: print the plan; exit 0 when it fits, 1 when not, ExitCode 2-4 with one line for bad input."""
    from sftjob_runtime.data import DatasetError

    try:
        p = build_plan(file, **options)
    except ManifestError as e:
        for line in e.errors:
            print(f"error: {line}", file=sys.stderr)
        return int(ExitCode.INVALID_CONFIG)
    except RuntimeFailure as e:
        print(f"error: {e}", file=sys.stderr)
        return int(e.exit_code)
    except DatasetError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return int(ExitCode.DATASET)
    if as_json:
        print(json.dumps(p, indent=2))
    else:
        print_plan(p)
    return 0 if p["fits"] else 1
