"""Models for tests: the real demo model (cached) and tiny random Llama models.

Test modules import the fixtures by name:
    from tests.support.models import demo_model_dir, tiny_model_dir

Both CPU precision paths run on every machine: `PRECISIONS` forces the
runtime's bf16 detection with SFTJOB_CPU_BF16, so a CPU without native bf16
still executes the bf16 path (slowly, which is why only tiny models use it)
and one with it still executes float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sftjob_runtime.demo_model import cache_root, prepare_demo_model


# (SFTJOB_CPU_BF16 value, the dtype the runtime must then choose for `dtype: auto`), by test id.
PRECISIONS = {"fp32": ("0", "float32"), "bf16": ("1", "bfloat16")}


@contextlib.contextmanager
def forced_precision(which: str) -> Iterator[str]:
    """Force the CPU precision path ("fp32" or "bf16") for the block; yields the dtype expected."""
    flag, dtype = PRECISIONS[which]
    mp = pytest.MonkeyPatch()
    mp.setenv("SFTJOB_CPU_BF16", flag)
    try:
        yield dtype
    finally:
        mp.undo()


@pytest.fixture(params=sorted(PRECISIONS))
def cpu_precision(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs the test once per CPU precision path; yields the dtype `dtype: auto` resolves to."""
    with forced_precision(request.param) as dtype:
        yield dtype


def make_tiny_model(target: Path, tokenizer_dir: Path) -> Path:
    """Save a randomly initialised 2-layer Llama (hidden size 64) with the tokenizer of `tokenizer_dir`.

    Same vocabulary, special tokens and chat template as the demo model, so data and
    masking behave exactly as with the real model while a training step takes
    milliseconds. Weights are seeded: the same call saves the same model.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    target = Path(target)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    """The prepared demo model, cached under `$SFTJOB_CACHE_DIR` or `~/.cache/sftjob` across runs."""
    root = cache_root()
    return prepare_demo_model(root / "demo-model", cache_dir=root / "wheels")


@pytest.fixture(scope="session")
def tiny_model_dir(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama sharing the demo model's tokenizer, built once per session."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"), demo_model_dir)
