"""Hyperparameter resolution: size-table defaults, gradient accumulation, and where each value came from."""

from __future__ import annotations

import pytest

from sftjob.spec import TrainingSpec
from sftjob_runtime.errors import RuntimeFailure
from sftjob_runtime.hardware import Hardware, choose_attention, choose_checkpointing, choose_dtype
from sftjob_runtime.hparams import plan_steps, resolve

CPU = Hardware(device="cpu", device_name="cpu", device_count=1, bf16=False)
CPU_BF16 = Hardware(device="cpu", device_name="cpu", device_count=1, bf16=True, cpu_flags=("amx_bf16",))
A100 = Hardware(device="cuda", device_name="A100", device_count=8, bf16=True, cuda_capability=(8, 0))
T4 = Hardware(device="cuda", device_name="T4", device_count=1, bf16=False, cuda_capability=(7, 5))


@pytest.mark.parametrize(
    ("params", "size", "lr", "effective"),
    [(135e6, "<1B", 1e-4, 16), (3e9, "1B-3B", 5e-5, 16), (8e9, "7B-13B", 2e-5, 32), (70e9, "30B-70B", 1e-5, 64)],
)
def test_defaults_follow_the_size_table(params, size, lr, effective):
    r = resolve(TrainingSpec(), int(params), devices=1)
    assert (r.sizeClass, r.learningRate, r.effectiveBatchSize) == (size, lr, effective)
    assert r.lrScheduler == "cosine" and r.maxGradNorm == 1.0
    assert r.origin["learningRate"] == f"default:{size}"
    assert r.effectiveBatchSize == r.perDeviceBatchSize * r.devices * r.gradientAccumulationSteps


def test_user_values_win_and_are_marked_as_spec():
    r = resolve(TrainingSpec(learningRate=3e-5, perDeviceBatchSize=4, effectiveBatchSize=64), int(8e9), devices=8)
    assert r.learningRate == 3e-5 and r.origin["learningRate"] == "spec"
    assert r.gradientAccumulationSteps == 2  # 64 / (4 x 8)


def test_effective_batch_that_does_not_divide_names_the_field():
    with pytest.raises(RuntimeFailure) as e:
        resolve(TrainingSpec(perDeviceBatchSize=4, effectiveBatchSize=30), int(1e9), devices=2)
    msg = str(e.value)
    assert msg.startswith("spec.training.effectiveBatchSize: 30 is not a multiple")
    assert "use 24 or 32" in msg


def test_default_effective_batch_is_rounded_up_and_recorded():
    r = resolve(TrainingSpec(perDeviceBatchSize=3), int(1e9), devices=1)
    assert r.effectiveBatchSize == 18 and r.gradientAccumulationSteps == 6
    assert "rounded" in r.origin["effectiveBatchSize"]


def test_step_plan_gives_about_ten_evaluations():
    t = TrainingSpec(perDeviceBatchSize=4, effectiveBatchSize=8, epochs=1)
    r = plan_steps(resolve(t, int(135e6), 1), t, train_rows=300)
    assert r.totalSteps == 38 and r.evalSteps == 3 and r.saveSteps == 3


def test_precision_follows_the_hardware(capsys):
    assert choose_dtype("auto", CPU) == "float32"
    assert choose_dtype("auto", CPU_BF16) == "bfloat16"
    assert choose_dtype("auto", A100) == "bfloat16"
    assert choose_dtype("auto", T4) == "float32"
    # Asked for explicitly on a CPU without native bf16: emulated (slow), with a warning, never refused.
    assert choose_dtype("bfloat16", CPU) == "bfloat16"
    assert "emulated" in capsys.readouterr().err
    with pytest.raises(RuntimeFailure, match="spec.model.dtype: bfloat16 needs an Ampere or newer GPU"):
        choose_dtype("bfloat16", T4)


@pytest.mark.parametrize(("flag", "bf16"), [("1", True), ("0", False)])
def test_cpu_precision_detection_can_be_forced(monkeypatch, flag, bf16):
    from sftjob_runtime.hardware import detect_hardware

    monkeypatch.setenv("SFTJOB_CPU_BF16", flag)
    assert detect_hardware().bf16 is bf16


def test_a_bad_precision_override_is_one_line_naming_it(monkeypatch):
    from sftjob_runtime.hardware import detect_hardware

    monkeypatch.setenv("SFTJOB_CPU_BF16", "yes")
    with pytest.raises(RuntimeFailure, match="SFTJOB_CPU_BF16='yes': use 1"):
        detect_hardware()


def test_attention_and_checkpointing_defaults():
    assert choose_attention("auto", CPU, "float32") == "sdpa"
    with pytest.raises(RuntimeFailure, match="spec.model.attention: flash_attention_2 needs"):
        choose_attention("flash_attention_2", CPU, "float32")
    assert choose_checkpointing(None, CPU) is False
    assert choose_checkpointing(None, A100) is True
    assert choose_checkpointing(False, A100) is False



def test_quantized_loading_needs_a_cuda_gpu():
    from sftjob_runtime.hardware import check_quantization

    check_quantization("none", CPU)
    with pytest.raises(RuntimeFailure, match="spec.model.quantization: 4bit loading needs a CUDA GPU"):
        check_quantization("4bit", CPU)


def test_save_steps_alone_sets_the_eval_cadence():
    t = TrainingSpec(perDeviceBatchSize=4, effectiveBatchSize=8, epochs=1, saveSteps=7)
    r = plan_steps(resolve(t, int(135e6), 1), t, train_rows=300)
    assert (r.evalSteps, r.saveSteps) == (7, 7) and r.origin["evalSteps"] == "default:saveSteps"


@pytest.mark.parametrize(("params", "lora", "grace", "warned"), [
    (int(8e9), False, 120, True),     # a full 8B checkpoint (~112 GB with AdamW, ~9 min) is not written in 2 minutes
    (int(8e9), False, 900, False),    # ... but in the GPU default of 15
    (int(70e9), False, 900, True),    # a full 70B one (~80 min) needs a longer grace period
    (int(70e9), True, 900, False),    # its LoRA checkpoint (weights + 1 % trained) does not
    (int(135e6), False, 120, False),  # the demo model's in seconds
])
def test_a_grace_period_too_short_for_the_checkpoint_is_a_status_warning(params, lora, grace, warned, monkeypatch):
    from sftjob.runconfig import RunConfig, RunModel, RunOutput
    from sftjob.spec import DatasetSpec, LoraSpec
    from sftjob.vocabulary import ENV_GRACE_SECONDS
    from sftjob_runtime.progress_server import ProgressState
    from sftjob_runtime.train import warn_if_grace_is_short

    training = TrainingSpec(lora=LoraSpec() if lora else None)
    cfg = RunConfig(name="g", model=RunModel(source="m"), dataset=DatasetSpec(train="t.jsonl"), training=training,
                    output=RunOutput(uri="/o"))
    r = resolve(training, params, devices=1)
    state = ProgressState()
    monkeypatch.setenv(ENV_GRACE_SECONDS, str(grace))
    message = warn_if_grace_is_short(r, cfg, state)
    assert (message is not None) == warned
    if warned:
        assert message.endswith(f"terminationGracePeriodSeconds ({grace} s) allows; raise "
                                "spec.resources.terminationGracePeriodSeconds")
        assert state.snapshot().warnings == [f"grace_period_short: {message}"]
    monkeypatch.delenv(ENV_GRACE_SECONDS)
    assert warn_if_grace_is_short(r, cfg, ProgressState()) is None  # outside a pod nothing is known of a grace period
