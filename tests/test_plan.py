"""`sftjob plan`: the memory estimate on real Llama 3.1 configs, the strategy choice, the CLI, and calibration on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from sftjob.cli import main
from sftjob_runtime import plan

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "tests" / "fixtures" / "model-configs"
GiB = 2**30
H100 = 81559 * 2**20  # what GPU feature discovery's nvidia.com/gpu.memory says of an 80 GB card (MiB)


def arch(name: str) -> plan.Arch:
    from transformers import AutoConfig

    return plan.arch_from_config(AutoConfig.from_pretrained(CONFIGS / name))


@pytest.fixture(scope="module")
def llama8b() -> plan.Arch:
    return arch("llama-3.1-8b")


@pytest.fixture(scope="module")
def llama70b() -> plan.Arch:
    return arch("llama-3.1-70b")


def test_parameters_from_the_config_alone(llama8b, llama70b):
    assert llama8b.parameters == 8_030_261_248  # the published counts of Llama 3.1 8B and 70B
    assert llama70b.parameters == 70_553_706_496
    assert (llama8b.layers, llama8b.hidden, llama8b.kv_heads, llama8b.tied) == (32, 4096, 8, False)
    # LoRA r=16 on every linear but the head: r x (in + out) per projection, 7 per layer.
    per_layer = 16 * ((4096 + 4096) * 2 + (4096 + 1024) * 2 + (4096 + 14336) * 2 + (14336 + 4096))
    assert plan.lora_parameters(llama8b, 16, ("all-linear",)) == 32 * per_layer
    assert plan.lora_parameters(llama8b, 16, ("q_proj", "v_proj")) == 32 * 16 * ((4096 + 4096) + (4096 + 1024))


def test_8b_full_fine_tune_fits_one_80gb_gpu_in_pure_bf16_but_not_40gb(llama8b):
    setup = plan.Setup(device="cuda", gpus=1, dtype="bfloat16", checkpointing=True, batch=2, seq=2048, packing=True)
    ddp = plan.memory(llama8b, setup, "ddp")
    # The runtime keeps weights, gradients and both AdamW states in bf16: 8 bytes per parameter.
    assert ddp.weights + ddp.gradients + ddp.optimizer == 8 * llama8b.parameters
    assert plan.choose(plan.all_strategies(llama8b, setup, H100)) == "ddp"
    small = plan.all_strategies(llama8b, setup, 40 * GiB, host_capacity=96 * GiB)
    assert plan.choose(small) is None
    fixes = plan.suggestions(llama8b, setup, 40 * GiB, host_capacity=96 * GiB)
    assert fixes[0]["field"] == "spec.training.lora" and fixes[0]["strategy"] == "ddp"
    assert any(f["field"] == "spec.resources.gpus: 8" and f["strategy"] == "fsdp" for f in fixes)
    message = plan.describe(None, small, setup, "40 GB", fixes)
    assert message.startswith("does not fit one 40 GB GPU under DDP (needs ~62 GiB), nor sharded or offloaded: "
                              "train LoRA adapters (spec.training.lora), ~18 GiB")


def test_fp32_full_fine_tune_is_16_bytes_per_parameter_and_lora_fits(llama8b):
    fp32 = plan.Setup(device="cuda", dtype="float32", batch=2, seq=2048)
    m = plan.memory(llama8b, fp32, "ddp")
    assert m.weights + m.gradients + m.optimizer == 16 * llama8b.parameters
    lora = replace(fp32, dtype="bfloat16", lora_r=16)
    m = plan.memory(llama8b, lora, "ddp")
    assert m.fits is None and m.peak < 20 * GiB
    assert plan.choose(plan.all_strategies(llama8b, lora, H100)) == "ddp"
    qlora = plan.memory(llama8b, replace(lora, quantization="4bit"), "ddp")
    assert qlora.weights < m.weights / 2


def test_70b_full_fine_tune_on_8x80gb_is_refused_with_the_reason(llama70b):
    setup = plan.Setup(device="cuda", gpus=8, dtype="bfloat16", batch=1, seq=2048, packing=True)
    host = 96 * GiB  # the recipe's spec.resources.memory
    strategies = plan.all_strategies(llama70b, setup, H100, host)
    # FSDP's fp32 shards alone are 16 bytes x 70.6B / 8 = 141 GB per GPU; offloaded, 1.1 TB of host memory.
    assert strategies["fsdp"].gradients + strategies["fsdp"].weights + strategies["fsdp"].optimizer == 16 * llama70b.parameters // 8
    assert not strategies["fsdp"].fits and not strategies["fsdp_offload"].fits
    assert strategies["fsdp_offload"].host > 1000 * GiB
    assert plan.choose(strategies) is None
    # With the host memory to hold the offloaded shards, offload is what auto picks.
    assert plan.choose(plan.all_strategies(llama70b, setup, H100, 2048 * GiB)) == "fsdp_offload"
    fixes = {f["field"]: f for f in plan.suggestions(llama70b, setup, H100, host)}
    assert fixes["spec.training.lora"]["strategy"] == "fsdp"
    assert fixes["spec.resources.nodes: 4"]["strategy"] == "fsdp"


def test_cpu_estimate_counts_the_logits_and_eager_scores():
    from transformers import LlamaConfig

    tiny = plan.arch_from_config(LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))
    cpu = plan.Setup(device="cpu", gpus=0, dtype="float32", checkpointing=False, batch=2, seq=128)
    assert tiny.parameters == 3_219_776
    strategies = plan.all_strategies(tiny, cpu, 8 * GiB)
    assert list(strategies) == ["ddp"] and strategies["ddp"].fits
    assert plan.activation_bytes(tiny, cpu) > plan.LOGIT_COPIES * 256 * 49152 * 4
    eager = plan.activation_bytes(tiny, replace(cpu, attention="eager")) - plan.activation_bytes(tiny, cpu)
    assert eager == 2 * 2 * 4 * 128 * 128 * 4 * plan.EAGER_SCORES  # layers x batch x heads x seq^2 x 4 bytes x copies


def _manifest(tmp_path: Path, model: str, **resources) -> Path:
    doc = yaml.safe_load((ROOT / "examples" / "llama-8b-recipe.yaml").read_text())
    doc["spec"]["model"]["source"] = model
    doc["spec"]["resources"].update(resources)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_cli_plans_the_8b_recipe(tmp_path, capsys):
    job = _manifest(tmp_path, str(CONFIGS / "llama-3.1-8b"))
    assert main(["plan", str(job)]) == 0
    out = capsys.readouterr().out
    assert "fits one 80 GB GPU under DDP" in out and "nodeSelector nvidia.com/gpu.memory=81559" in out
    assert main(["plan", str(job), "--json", "--gpu-memory", "40Gi", "--train-rows", "1000",
                 "--tokens-per-second", "1000", "--price-per-gpu-hour", "2"]) == 1
    p = json.loads(capsys.readouterr().out)
    assert {"version", "model", "setup", "memory", "strategies", "strategy", "fits", "message", "suggestions", "data",
            "steps", "time", "cost", "assumptions"} <= set(p)
    assert p["fits"] is False and p["strategy"] is None and p["suggestions"][0]["field"] == "spec.training.lora"
    assert p["steps"] == {"perEpoch": 32, "total": 96, "epochs": 3.0}
    assert p["data"]["tokensPerEpoch"] == 1000 * 2048 and p["data"]["tokensExact"] is False
    assert p["time"]["seconds"] == 3 * 1000 * 2048 // 1000 and p["cost"]["total"] == round(6144 / 3600 * 2, 2)


def test_cli_70b_on_8_gpus_is_refused(tmp_path, capsys):
    job = _manifest(tmp_path, str(CONFIGS / "llama-3.1-70b"), gpus=8)
    assert main(["plan", str(job), "--json"]) == 1
    p = json.loads(capsys.readouterr().out)
    assert p["model"]["parameters"] == 70_553_706_496 and p["strategy"] is None
    assert p["message"].startswith("does not fit 8 x 80 GB GPUs under DDP")


def test_spec_gpu_memory_and_strategy_steer_the_plan(tmp_path, capsys):
    """resources.gpuMemory beats the node-selector label; strategy: ddp sizes DDP alone and names the way out."""
    job = _manifest(tmp_path, str(CONFIGS / "llama-3.1-8b"), gpus=8, gpuMemory="40Gi")
    assert main(["plan", str(job), "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["memory"]["source"] == "spec.resources.gpuMemory" and p["memory"]["bytes"] == 40 * GiB
    assert p["strategyRequested"] == "auto" and p["strategy"] == "fsdp"
    job = _manifest(tmp_path, str(CONFIGS / "llama-3.1-8b"), gpus=8, gpuMemory="40Gi", strategy="ddp")
    assert main(["plan", str(job), "--json"]) == 1
    p = json.loads(capsys.readouterr().out)
    assert p["strategy"] is None and "spec.resources.strategy asks for DDP; it fits under FSDP" in p["message"]
    assert main(["plan", str(job), "--json", "--gpu-memory", "141Gi"]) == 0  # the option still beats the spec
    assert json.loads(capsys.readouterr().out)["strategy"] == "ddp"


def test_cli_one_line_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["plan", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    job = _manifest(tmp_path, "no-such-org/no-such-model-xyz")
    assert main(["plan", str(job)]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: spec.model.source: cannot read the config of 'no-such-org/")
    job = _manifest(tmp_path, str(CONFIGS / "llama-3.1-8b"))
    assert main(["plan", str(job), "--gpu-memory", "lots"]) == 2
    assert capsys.readouterr().err.strip() == "error: --gpu-memory: 'lots' is not a memory size (e.g. 80Gi, 80GB, 24576Mi)"


def test_gpu_memory_from_node_selector_labels():
    from sftjob_runtime.plan_job import gpu_capacity

    assert gpu_capacity({"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, None)[:2] == ("H100 80 GB", 81559 * 2**20)
    assert gpu_capacity({"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"}, None)[0] == "A100 40 GB"
    assert gpu_capacity({"cloud.google.com/gke-accelerator": "nvidia-l4"}, None)[0] == "L4 24 GB"
    assert gpu_capacity({}, None)[2] == "assumed"
    assert gpu_capacity({"nvidia.com/gpu.product": "NVIDIA-L4"}, "24Gi")[1] == 24 * GiB


@pytest.mark.slow
def test_estimate_within_25_percent_of_measured_rss_growth():
    spec = {"config": {"vocab_size": 49152, "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
                       "num_attention_heads": 8, "num_key_value_heads": 4, "tie_word_embeddings": True},
            "batch": 2, "seq": 128, "steps": 3, "dtype": "float32", "attention": "sdpa"}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "image")])}
    from transformers import LlamaConfig

    tiny = plan.arch_from_config(LlamaConfig(**spec["config"]))
    for lora in (None, {"r": 16, "alpha": 32, "dropout": 0.05, "targetModules": ["all-linear"]}):
        run = subprocess.run([sys.executable, "-m", "tests.support.rss_probe", json.dumps({**spec, "lora": lora})],
                             cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=300)
        measured = json.loads(run.stdout.strip().splitlines()[-1])["measured_bytes"]
        setup = plan.Setup(device="cpu", gpus=0, dtype="float32", checkpointing=False, batch=2, seq=128,
                           lora_r=16 if lora else None)
        estimated = plan.memory(tiny, setup, "ddp").peak
        assert 0.75 <= estimated / measured <= 1.25, (lora, estimated, measured)
