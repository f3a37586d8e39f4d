"""Every spec.training field reaches the trainer through one table, with the value the user asked for."""

from __future__ import annotations

import enum

import pytest

from sftjob.runconfig import RunConfig, RunModel, RunOutput
from sftjob.spec import DatasetSpec, LoraSpec, ModelSpec, OutputSpec, TrainingSpec
from sftjob_runtime.hparams import plan_steps, resolve
from sftjob_runtime.trainer_config import NOT_TRAINER_ARGUMENTS, TRAINING_ARGUMENTS, RunPaths, build_sft_config

EVERY_FIELD = TrainingSpec(
    epochs=2.5, maxSteps=40, learningRate=3.3e-5, perDeviceBatchSize=3, effectiveBatchSize=12, warmupRatio=0.07,
    weightDecay=0.02, maxGradNorm=0.7, lrScheduler="linear", maxSeqLength=333, packing=True, gradientCheckpointing=True,
    evalSteps=5, saveSteps=10, saveTotalLimit=4, loggingSteps=2, seed=7, lora=LoraSpec(r=4),
)


def test_every_training_field_reaches_the_trainer_or_says_where_it_goes():
    mapped = {field for field, _, _ in TRAINING_ARGUMENTS}
    fields = set(TrainingSpec.model_fields)
    assert fields - mapped - set(NOT_TRAINER_ARGUMENTS) == set(), "spec.training fields that reach no trainer argument"
    assert (mapped | set(NOT_TRAINER_ARGUMENTS)) - fields == set(), "the table names fields the spec does not have"
    assert set(EVERY_FIELD.model_fields_set) == fields  # the value test below sets them all


def _plain(value):
    return value.value if isinstance(value, enum.Enum) else value


def test_the_trainer_gets_the_values_the_spec_gave(tmp_path):
    r = plan_steps(resolve(EVERY_FIELD, parameters=int(135e6), devices=1), EVERY_FIELD, train_rows=300)
    cfg = RunConfig(name="args", model=RunModel(source="m"), dataset=DatasetSpec(train="t", validation="v"),
                    training=EVERY_FIELD, output=RunOutput(uri="/o"), monitoring={"reportTo": []})
    args = build_sft_config(cfg, r, RunPaths(tmp_path), has_eval=True)
    for _, name, value in TRAINING_ARGUMENTS:
        assert _plain(getattr(args, name)) == _plain(value(r)), name
    expected = {
        "num_train_epochs": 2.5, "max_steps": 40, "learning_rate": 3.3e-5, "per_device_train_batch_size": 3,
        "gradient_accumulation_steps": 4, "warmup_steps": 0.07, "weight_decay": 0.02, "max_grad_norm": 0.7,
        "lr_scheduler_type": "linear", "max_length": 333, "packing": True, "activation_checkpointing": True,
        "eval_steps": 5, "save_steps": 10, "save_total_limit": 4, "logging_steps": 2, "seed": 7, "data_seed": 7,
    }
    assert {k: _plain(getattr(args, k)) for k in expected} == expected


def test_a_logging_interval_longer_than_evaluations_is_capped_and_says_so():
    t = TrainingSpec(evalSteps=5, loggingSteps=50)
    r = plan_steps(resolve(t, parameters=int(135e6), devices=1), t, train_rows=300)
    assert r.loggingSteps == 5 and r.origin["loggingSteps"].startswith("spec, capped at evalSteps")


@pytest.mark.parametrize(("spec_model", "run_model", "secret"), [
    (ModelSpec, RunModel, "tokenSecretRef"), (OutputSpec, RunOutput, "credentialsSecretRef"),
])
def test_the_run_config_carries_every_spec_field_but_the_secret_references(spec_model, run_model, secret):
    assert set(spec_model.model_fields) - set(run_model.model_fields) == {secret}
