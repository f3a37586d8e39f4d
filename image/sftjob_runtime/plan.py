"""The pre-flight memory estimate behind `sftjob plan`: bytes per device by strategy, from the model config alone.

Pure arithmetic over an `Arch` (shapes read from the model config on the
meta device: no weights are read) and a `Setup` (what the job asks for).
What each byte is, as the runtime trains today (checked against torch 2.13,
transformers 5.24, accelerate, PEFT):

- DDP, the runtime's path: the model is loaded in the run's dtype
  (`trainer.load_model`: `dtype=bfloat16` under bf16) and the Trainer keeps
  no fp32 master copy; gradients are in the parameter dtype, and torch's
  AdamW (`adamw_torch_fused`) keeps two states, exp_avg and exp_avg_sq,
  `zeros_like(param)`, so in the parameter dtype too. Full fine-tuning is
  therefore 2+2+4 = 8 bytes per parameter in bf16, 4+4+8 = 16 in fp32. With
  more than one process DDP adds its gradient buckets (one more gradient's
  worth: `gradient_as_bucket_view` is off).
- FSDP full shard (accelerate's FSDP2): under mixed precision accelerate
  upcasts the trainable parameters to fp32 before sharding ("FSDP upcast of
  low precision parameters to fp32"), so each device holds 1/n of fp32
  parameters, fp32 gradients and two fp32 AdamW states (16 bytes per
  parameter / n), plus the unsharded compute copies of two decoder layers
  (the one running and the prefetched one) and of the root module
  (embeddings, head), and one layer's fp32 gradients before reduce-scatter.
- FSDP with CPU offload: the shards live in host memory; the device keeps
  only the unsharded layers and the activations.
- LoRA: the frozen base in the run's dtype (QLoRA: 4-bit NF4 linear layers,
  0.5 byte plus one fp32 absmax per 64 weights; 8-bit: 1 byte), the
  adapters in fp32 (PEFT's `autocast_adapter_dtype` upcasts them), with
  fp32 gradients and fp32 AdamW states: 16 bytes per adapter parameter.
- Activations per micro-batch of N = perDeviceBatchSize x maxSeqLength tokens
  (a packed or padded batch holds at most that many): per decoder layer
  ACT_HIDDEN x hidden + ACT_ATTN x (q + k + v widths) + ACT_MLP x intermediate
  values per token in the compute dtype; with gradient checkpointing only
  each layer's input plus one layer recomputed. Eager attention also
  materialises the batch x heads x seq x seq scores (sdpa and flash do not).
  On CPU the runtime takes the model's own loss, which materialises the
  logits and their fp32 log-softmax (LOGIT_COPIES x N x vocab x 4 bytes);
  on a GPU TRL's fused head scores the vocabulary in tiles, never whole.
- Peak = weights + gradients + optimizer state + activations + buffers.
  Backward frees activations as it creates gradients, but the allocator
  (CUDA's caching allocator; glibc's heap on CPU) reuses the freed blocks
  only partly: on CPU the sum matched measured RSS, taking the larger of
  activations and gradients instead fell ~20 % short on the larger models.
- LoRA dropout (spec.training.lora.dropout > 0) keeps a dropped-out copy of
  every adapted layer's input, and its mask, for backward.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
STRATEGIES = ("ddp", "fsdp", "fsdp_offload")

# Activation constants (values saved for backward, per token and decoder layer, in units of each width),
# counted from the Llama decoder's autograd graph. Checked by benchmarks/plan_calibration.py, 2026-12-02
# (2-core Xeon with avx512_bf16; tiny/small random Llamas and SmolLM2-135M, full, LoRA, checkpointing, bf16):
# estimate / measured 0.84-1.17 (benchmarks/results/plan_calibration.json). That run changed the peak from
# max(activations, gradients) to their sum and set CPU_OVERHEAD; these counts were left as derived.
ACT_HIDDEN = 10   # two RMSNorms (input, fp32 internals, output), the residual stream, o_proj input
ACT_ATTN = 3      # q/k/v projections, their rotary outputs, the attention output
ACT_MLP = 4       # gate and up outputs, SiLU(gate), their product (down_proj's input)
EAGER_SCORES = 3  # eager attention: scores, fp32 softmax, dropout output, each batch x heads x seq x seq
LOGIT_COPIES = 3  # CPU loss path: logits, fp32 log-softmax and its gradient, each N x vocab x 4 bytes
# Memory a process takes beyond its tensors: the CUDA context and NCCL on a GPU (subtracted from the
# card's capacity with GPU_FRAGMENTATION, the share lost to allocator fragmentation); on CPU, the
# allocator's and kernels' working memory the first steps add: the intercept of the tiny model's growth
# at 128 and 256 tokens per batch (~120 MiB) less its weights, gradients and AdamW state (~40 MiB).
CUDA_CONTEXT = 1 * 1024**3
GPU_FRAGMENTATION = 0.10
CPU_OVERHEAD = 80 * 1024**2
QLORA_4BIT_BYTES = 0.5 + 4 / 64  # NF4 weight + one fp32 absmax per block of 64 (no double quantization)


@dataclass(frozen=True)
class Arch:
    """The shapes of a causal LM that memory depends on."""

    parameters: int
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    root_parameters: int  # outside the decoder layers: embeddings, final norm, an untied head
    linears: tuple[tuple[str, int, int], ...]  # (module name, in_features, out_features) of every nn.Linear

    @property
    def layer_parameters(self) -> int:
        return (self.parameters - self.root_parameters) // max(self.layers, 1)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("linears")
        return d


def arch_from_config(config, *, trust_remote_code: bool = False) -> Arch:
    """Build the model on the meta device (no memory, no weights) and read its shapes."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    unique = {id(p): (n, p) for n, p in model.named_parameters(remove_duplicate=True)}.values()
    total = sum(p.numel() for _, p in unique)
    in_layers = sum(p.numel() for n, p in unique if ".layers." in f".{n}")
    linears = tuple((n, m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear))
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    return Arch(
        parameters=total, layers=text.num_hidden_layers, hidden=text.hidden_size, intermediate=text.intermediate_size,
        heads=heads, kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads, vocab=text.vocab_size,
        tied=bool(getattr(text, "tie_word_embeddings", False)), root_parameters=total - in_layers, linears=linears,
    )


def _is_head(name: str) -> bool:
    return name.split(".")[-1] in ("lm_head", "embed_out", "output") or name == "lm_head"


def _targeted(arch: Arch, targets: tuple[str, ...]) -> list[tuple[str, int, int]]:
    """The linear layers PEFT adapts: `all-linear` = every linear but the output head; else names matched by suffix."""
    if list(targets) == ["all-linear"]:
        return [m for m in arch.linears if not _is_head(m[0])]
    return [m for m in arch.linears if any(m[0] == t or m[0].endswith("." + t) for t in targets)]


def lora_parameters(arch: Arch, r: int, targets: tuple[str, ...]) -> int:
    """LoRA adds A (r x in) and B (out x r) to each targeted linear layer."""
    return sum(r * (i + o) for _, i, o in _targeted(arch, targets))


@dataclass(frozen=True)
class Setup:
    """What the job asks of each device."""

    device: str = "cuda"  # cuda | cpu
    gpus: int = 1  # per node (the CPU counts as one device)
    nodes: int = 1
    dtype: str = "bfloat16"
    attention: str = "sdpa"
    checkpointing: bool = True
    batch: int = 1
    seq: int = 2048
    packing: bool = False
    lora_r: int | None = None
    lora_targets: tuple[str, ...] = ("all-linear",)
    lora_dropout: float = 0.05
    quantization: str = "none"  # none | 4bit | 8bit

    @property
    def devices(self) -> int:
        return max(self.gpus, 1) * self.nodes

    @property
    def mode(self) -> str:
        return "full" if self.lora_r is None else ("lora" if self.quantization == "none" else "qlora")


@dataclass
class Memory:
    """Bytes on one device under one strategy (host: bytes in each node's memory for offloaded shards)."""

    strategy: str
    weights: int
    gradients: int
    optimizer: int
    activations: int
    buffers: int
    peak: int
    host: int = 0
    fits: bool | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def trainable_parameters(arch: Arch, setup: Setup) -> int:
    return arch.parameters if setup.lora_r is None else lora_parameters(arch, setup.lora_r, setup.lora_targets)


def _base_weight_bytes(arch: Arch, setup: Setup) -> int:
    """The model's own weights as loaded: the run's dtype, or quantized linear layers (QLoRA)."""
    e = DTYPE_BYTES[setup.dtype]
    if setup.quantization == "none":
        return arch.parameters * e
    quantized = sum(i * o for n, i, o in arch.linears if not _is_head(n))
    per = QLORA_4BIT_BYTES if setup.quantization == "4bit" else 1.0
    return int(quantized * per + (arch.parameters - quantized) * e)


def activation_bytes(arch: Arch, setup: Setup) -> int:
    """Values kept for backward in one micro-batch (see the module docstring), plus the logits on CPU."""
    e = DTYPE_BYTES[setup.dtype]
    tokens = setup.batch * setup.seq
    attn_width = (arch.heads + 2 * arch.kv_heads) * arch.head_dim
    per_layer = tokens * e * (ACT_HIDDEN * arch.hidden + ACT_ATTN * attn_width + ACT_MLP * arch.intermediate)
    if setup.lora_r is not None and setup.lora_dropout > 0:
        adapted = [m for m in _targeted(arch, setup.lora_targets) if ".layers." in f".{m[0]}"]
        per_layer += tokens * (e + 1) * sum(i for _, i, _ in adapted) // max(arch.layers, 1)
    if setup.attention == "eager":
        # Padding-free packing hands eager one row of all the batch's tokens.
        rows, length = (1, tokens) if setup.packing else (setup.batch, setup.seq)
        per_layer += rows * arch.heads * length * length * e * EAGER_SCORES
    if setup.checkpointing:
        layers = arch.layers * tokens * arch.hidden * e + per_layer  # each layer's input, one layer recomputed
    else:
        layers = arch.layers * per_layer
    embeddings = 2 * tokens * arch.hidden * e  # embedding output and final norm
    logits = LOGIT_COPIES * tokens * arch.vocab * 4 if setup.device == "cpu" else 2 * tokens * arch.hidden * 4
    return int(layers + embeddings + logits)


def memory(arch: Arch, setup: Setup, strategy: str) -> Memory:
    """Bytes per device for `setup` under `strategy` (ddp | fsdp | fsdp_offload)."""
    e = DTYPE_BYTES[setup.dtype]
    n = setup.devices
    trainable = trainable_parameters(arch, setup)
    full = setup.lora_r is None
    acts = activation_bytes(arch, setup)
    if strategy == "ddp":
        weights = _base_weight_bytes(arch, setup) + (0 if full else trainable * 4)
        state_bytes = e if full else 4  # gradients and each AdamW state: the trainable parameter's dtype
        grads, optim = trainable * state_bytes, 2 * trainable * state_bytes
        buffers, host = (grads if n > 1 else 0), 0
    elif strategy in ("fsdp", "fsdp_offload"):
        frozen = 0 if full else _base_weight_bytes(arch, setup)
        shard_w, grads, optim = (frozen + trainable * 4) // n, trainable * 4 // n, trainable * 8 // n
        layer, root = arch.layer_parameters, arch.root_parameters
        gathered = 2 * layer * e + root * e  # two decoder layers (running + prefetched) and the root module
        buffers = gathered + (layer + root) * 4 if full else gathered
        weights = shard_w
        host = 0
        if strategy == "fsdp_offload":
            # Each process's shards in its node's memory (gpus processes per node).
            host = (shard_w + grads + optim) * max(setup.gpus, 1)
            weights = grads = optim = 0
    else:
        raise ValueError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    overhead = CPU_OVERHEAD if setup.device == "cpu" else 0
    peak = weights + grads + optim + acts + buffers + overhead
    return Memory(strategy, int(weights), int(grads), int(optim), int(acts), int(buffers), int(peak), int(host))


def usable(capacity: int, device: str) -> int:
    """What a device of `capacity` bytes leaves for tensors: less the CUDA context, less fragmentation."""
    if device == "cpu":
        return capacity
    return int((capacity - CUDA_CONTEXT) * (1 - GPU_FRAGMENTATION))


def all_strategies(arch: Arch, setup: Setup, capacity: int, host_capacity: int | None = None) -> dict[str, Memory]:
    """Every strategy's memory and whether it fits `capacity` (FSDP over one device shards nothing).

    Offloaded shards must also fit the node's memory (`host_capacity`: the pod's memory limit) when known.
    """
    out = {}
    for s in STRATEGIES:
        if setup.device == "cpu" and s != "ddp":
            continue  # one process on the CPU: nothing to shard or offload to
        if s == "fsdp" and setup.devices == 1:
            continue
        m = memory(arch, setup, s)
        m.fits = m.peak <= usable(capacity, setup.device) and (host_capacity is None or m.host <= host_capacity)
        out[s] = m
    return out


def choose(strategies: dict[str, Memory], wanted: str = "auto") -> str | None:
    """The strategy to run, or None when none fits.

    `auto`: DDP when it fits (least communication), else FSDP, else FSDP with
    CPU offload. `ddp`: DDP only. `fsdp` (spec.resources.strategy): FSDP, with
    CPU offload when only that fits.
    """
    allowed = {"auto": STRATEGIES, "ddp": ("ddp",), "fsdp": ("fsdp", "fsdp_offload")}[wanted]
    for s in allowed:
        if s in strategies and strategies[s].fits:
            return s
    return None


def gb(n: float) -> str:
    return f"~{n / 2**30:.0f} GiB" if n >= 10 * 2**30 else f"~{n / 2**30:.1f} GiB"


def suggestions(arch: Arch, setup: Setup, capacity: int, host_capacity: int | None = None, max_gpus: int = 8) -> list[dict]:
    """Changes that would make the job fit, each checked by re-running the estimate on the changed job."""
    candidates: list[tuple[str, str, Setup]] = []
    if setup.lora_r is None:
        candidates.append(("train LoRA adapters", "spec.training.lora", replace(setup, lora_r=16)))
        if setup.device == "cuda":
            candidates.append(("train QLoRA adapters on a 4-bit base", "spec.model.quantization: 4bit + spec.training.lora",
                               replace(setup, lora_r=16, quantization="4bit")))
    if setup.device == "cuda" and setup.nodes == 1:
        for gpus in (2, 4, 8, 16):
            if setup.gpus < gpus <= max_gpus:
                candidates.append((f"FSDP over {gpus} GPUs", f"spec.resources.gpus: {gpus}", replace(setup, gpus=gpus)))
        per_node = max(setup.gpus, max_gpus)
        for nodes in (2, 4, 8, 16):
            candidates.append((f"FSDP over {nodes} nodes x {per_node} GPUs, once FSDP lands",
                               f"spec.resources.nodes: {nodes}", replace(setup, gpus=per_node, nodes=nodes)))
    if not setup.checkpointing:
        candidates.append(("gradient checkpointing", "spec.training.gradientCheckpointing: true",
                           replace(setup, checkpointing=True)))
    seq = setup.seq // 2
    while seq >= 256:
        candidates.append((f"a maxSeqLength of {seq}", f"spec.training.maxSeqLength: {seq}", replace(setup, seq=seq)))
        seq //= 2
    batch = setup.batch // 2
    while batch >= 1:
        candidates.append((f"a perDeviceBatchSize of {batch}", f"spec.training.perDeviceBatchSize: {batch}",
                           replace(setup, batch=batch)))
        batch //= 2
    out, kinds = [], set()
    for change, field, changed in candidates:
        kind = field.split(":")[0]
        if kind in kinds:
            continue  # the smallest change of each kind: the first that fits
        strategies = all_strategies(arch, changed, capacity, host_capacity)
        chosen = choose(strategies)
        if chosen:
            kinds.add(kind)
            out.append({"change": change, "field": field, "strategy": chosen, "peakBytes": strategies[chosen].peak})
    return out


def describe(chosen: str | None, strategies: dict[str, Memory], setup: Setup, capacity_name: str,
             fixes: list[dict], wanted: str = "auto") -> str:
    """One sentence: fits under what, or why not and what to change (`wanted`: spec.resources.strategy)."""
    names = {"ddp": "DDP", "fsdp": f"FSDP full shard over {setup.devices} GPUs", "fsdp_offload": "FSDP with CPU offload"}
    where = (f"{setup.devices} x {capacity_name} GPUs" if setup.devices > 1 else f"one {capacity_name} GPU") \
        if setup.device == "cuda" else f"the CPU's {capacity_name}"
    ddp = strategies["ddp"]
    if chosen == "ddp":
        return f"fits {where} under DDP ({gb(ddp.peak)} per device)"
    head = f"does not fit {where} under DDP (needs {gb(ddp.peak)})"
    if wanted == "ddp":
        other = choose(strategies)
        if other:
            return (f"{head}, and spec.resources.strategy asks for DDP; it fits under {names[other]} "
                    f"({gb(strategies[other].peak)} per GPU): set strategy: auto or fsdp")
    elif wanted == "fsdp" and chosen:
        return f"fits {where} under {names[chosen]} ({gb(strategies[chosen].peak)} per GPU), as spec.resources.strategy asks"
    options = "; or ".join(
        f"{f['change']} ({f['field']}), {gb(f['peakBytes'])}"
        + ("" if f["strategy"] == "ddp" else f" per GPU under {names[f['strategy']].split(' over')[0]}")
        for f in fixes[:3])
    if chosen:
        tail = f"; other options: {options}" if options else ""
        return f"{head}; fits under {names[chosen]} ({gb(strategies[chosen].peak)} per GPU){tail}"
    if not options:
        return f"{head}, nor sharded or offloaded; no single change found that fits"
    return f"{head}, nor sharded or offloaded: {options}"


__all__ = ["Arch", "Setup", "Memory", "arch_from_config", "lora_parameters", "memory", "all_strategies", "choose",
           "suggestions", "describe", "usable", "activation_bytes"]
