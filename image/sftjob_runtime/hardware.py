"""Pick precision, attention kernel and checkpointing from the hardware actually present.

On a CPU without native bf16, autocast made a training step ~10x slower;
on one with AMX/avx512_bf16 it was ~2x faster. So: detect, never assume.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from sftjob.vocabulary import ExitCode, Reason
from sftjob_runtime.errors import RuntimeFailure
from sftjob_runtime.events import emit

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# Forces CPU precision detection: 1 = native bf16, 0 = none (documented in the README).
ENV_CPU_BF16 = "SFTJOB_CPU_BF16"


@dataclass(frozen=True)
class Hardware:
    """What the training process will run on."""

    device: str  # "cuda" or "cpu"
    device_name: str
    device_count: int
    bf16: bool  # native bf16 support
    cpu_flags: tuple[str, ...] = ()
    cuda_capability: tuple[int, int] | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _cpu_flags() -> tuple[str, ...]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    for line in text.splitlines():
        if line.startswith("flags"):
            return tuple(sorted(set(line.split(":", 1)[1].split()) & set(BF16_CPU_FLAGS)))
    return ()


def world_size() -> int:
    """Data-parallel processes of this run (torchrun sets WORLD_SIZE; a plain run is 1)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 does the run's side effects: export, report, progress endpoint, termination message."""
    return int(os.environ.get("RANK", "0")) == 0


def is_node_main() -> bool:
    """The first process on this node (torchrun's LOCAL_RANK 0): it prepares what the node's processes share."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def detect_hardware() -> Hardware:
    """Inspect torch/CUDA and /proc/cpuinfo."""
    import torch

    if torch.cuda.is_available():
        cap = torch.cuda.get_device_capability(0)
        return Hardware(
            device="cuda",
            device_name=torch.cuda.get_device_name(0),
            device_count=torch.cuda.device_count(),
            bf16=bool(torch.cuda.is_bf16_supported()) and cap >= (8, 0),
            cuda_capability=cap,
        )
    flags = _cpu_flags()
    # SFTJOB_CPU_BF16=0/1 overrides detection: a hypervisor that hides flags, or
    # tests that must run both precision paths whatever the host has.
    override = os.environ.get(ENV_CPU_BF16, "").strip()
    if override not in ("", "0", "1"):
        raise RuntimeFailure(Reason.INVALID_SPEC, f"{ENV_CPU_BF16}={override!r}: use 1 (bf16), 0 (float32) or leave it unset "
                             "(detect from the CPU flags)", ExitCode.INVALID_CONFIG)
    bf16 = bool(flags) if not override else override == "1"
    return Hardware(device="cpu", device_name="cpu", device_count=1, bf16=bf16, cpu_flags=flags)


def choose_dtype(requested: str, hw: Hardware) -> str:
    """`auto` → bfloat16 where native, else float32 (float16 only when asked, and only on CUDA).

    An explicit bfloat16 on a CPU without native support still runs (torch
    emulates it), only slower: the user asked for it, so warn, don't refuse.
    A CUDA GPU without bf16 (pre-Ampere) cannot train in it at all.
    """
    if requested == "auto":
        return "bfloat16" if hw.bf16 else "float32"
    if requested == "bfloat16" and not hw.bf16:
        if hw.device == "cuda":
            raise RuntimeFailure(
                Reason.INVALID_SPEC,
                f"spec.model.dtype: bfloat16 needs an Ampere or newer GPU, {hw.device_name} has none; use auto or float32",
                ExitCode.INVALID_CONFIG,
            )
        emit("bf16_emulated", level="warning",
             message="spec.model.dtype: bfloat16 on a CPU without native bf16 (no avx512_bf16/amx_bf16) is emulated "
                     "and can be several times slower than float32; use dtype auto to let sftjob choose")
    if requested == "float16" and hw.device != "cuda":
        raise RuntimeFailure(
            Reason.INVALID_SPEC, "spec.model.dtype: float16 training needs a CUDA GPU; use auto", ExitCode.INVALID_CONFIG
        )
    return requested


def flash_attention_available(hw: Hardware) -> bool:
    """flash_attention_2 needs the flash_attn package and an Ampere+ GPU."""
    return hw.device == "cuda" and (hw.cuda_capability or (0, 0)) >= (8, 0) and importlib.util.find_spec("flash_attn") is not None


def choose_attention(requested: str, hw: Hardware, dtype: str) -> str:
    """`auto` → flash_attention_2 when installed and supported (and half precision), else sdpa."""
    if requested == "auto":
        return "flash_attention_2" if flash_attention_available(hw) and dtype in ("bfloat16", "float16") else "sdpa"
    if requested == "flash_attention_2" and not flash_attention_available(hw):
        raise RuntimeFailure(
            Reason.INVALID_SPEC,
            "spec.model.attention: flash_attention_2 needs the flash-attn package and an Ampere or newer GPU; use auto",
            ExitCode.INVALID_CONFIG,
        )
    return requested


def check_quantization(requested: str, hw: Hardware) -> None:
    """4-/8-bit loading (QLoRA) needs bitsandbytes and a CUDA GPU: say so up front, not deep in loading."""
    if requested == "none":
        return
    if hw.device != "cuda":
        raise RuntimeFailure(
            Reason.INVALID_SPEC,
            f"spec.model.quantization: {requested} loading needs a CUDA GPU; use quantization: none on {hw.device_name}",
            ExitCode.INVALID_CONFIG,
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeFailure(
            Reason.INVALID_SPEC,
            f"spec.model.quantization: {requested} loading needs the bitsandbytes package in the training image "
            "(pip install 'sftjob[qlora]')",
            ExitCode.INVALID_CONFIG,
        )


def choose_checkpointing(requested: bool | None, hw: Hardware) -> bool:
    """Default: on for GPUs (memory is the limit), off on CPU (time is)."""
    return (hw.device == "cuda") if requested is None else requested
