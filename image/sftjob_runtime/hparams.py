"""Resolve every hyperparameter: the user's value, else a starting point by model size.

The size table is the recipe's (DESIGN.md section 1); a value picked here
is recorded with its origin ("spec" or "default:<size class>") in the
resolved config, which is printed, saved next to the output and shown in
status.resolved.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from sftjob.spec import TrainingSpec, nearest_multiples
from sftjob.vocabulary import ExitCode, Reason
from sftjob_runtime.errors import RuntimeFailure

# Starting points per size class: the middle of the recipe's ranges, with the
# rule of thumb "2e-5 for 7B+, 5e-5 for smaller" (1e-4 below 1B parameters).
SIZE_CLASSES = [
    # (upper bound in parameters, name, defaults)
    (1.0e9, "<1B", dict(learningRate=1e-4, effectiveBatchSize=16, epochs=3, warmupRatio=0.1, weightDecay=0.01, perDeviceBatchSize=4)),
    (4.0e9, "1B-3B", dict(learningRate=5e-5, effectiveBatchSize=16, epochs=3, warmupRatio=0.1, weightDecay=0.01, perDeviceBatchSize=4)),
    (2.0e10, "7B-13B", dict(learningRate=2e-5, effectiveBatchSize=32, epochs=2, warmupRatio=0.05, weightDecay=0.01, perDeviceBatchSize=2)),
    (math.inf, "30B-70B", dict(learningRate=1e-5, effectiveBatchSize=64, epochs=1, warmupRatio=0.03, weightDecay=0.01, perDeviceBatchSize=1)),
]
COMMON_DEFAULTS = dict(maxGradNorm=1.0, lrScheduler="cosine")


@dataclass
class Resolved:
    """The hyperparameters a run uses, and where each came from."""

    parameters: int
    sizeClass: str
    learningRate: float
    epochs: float
    perDeviceBatchSize: int
    gradientAccumulationSteps: int
    devices: int
    effectiveBatchSize: int
    warmupRatio: float
    weightDecay: float
    maxGradNorm: float
    lrScheduler: str
    maxSeqLength: int
    packing: bool
    seed: int
    maxSteps: int | None = None
    saveTotalLimit: int = 2
    loggingSteps: int = 10
    evalSteps: int | None = None
    saveSteps: int | None = None
    totalSteps: int | None = None
    dtype: str | None = None
    attention: str | None = None
    gradientCheckpointing: bool | None = None
    origin: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def size_class(parameters: int) -> tuple[str, dict]:
    """The size class name and its defaults for a parameter count."""
    for bound, name, defaults in SIZE_CLASSES:
        if parameters < bound:
            return name, {**COMMON_DEFAULTS, **defaults}
    raise AssertionError("unreachable: the last bound is infinite")


def resolve(training: TrainingSpec, parameters: int, devices: int) -> Resolved:
    """Fill unset values from the size table and derive gradient accumulation.

    effectiveBatchSize = perDeviceBatchSize x devices x gradientAccumulationSteps.
    A user-given effective batch that does not divide is an error naming the
    fields; a default one is rounded up to the next multiple (and recorded).
    """
    name, defaults = size_class(parameters)
    origin: dict[str, str] = {}

    def pick(key: str):
        value = getattr(training, key)
        if value is None:
            origin[key] = f"default:{name}"
            return defaults[key]
        origin[key] = "spec"
        return value

    lr, epochs = pick("learningRate"), pick("epochs")
    warmup, wd = pick("warmupRatio"), pick("weightDecay")
    grad_norm, sched = pick("maxGradNorm"), pick("lrScheduler")
    per_device = pick("perDeviceBatchSize")
    effective = pick("effectiveBatchSize")
    per_step = per_device * devices
    if effective % per_step:
        if origin["effectiveBatchSize"] == "spec":
            raise RuntimeFailure(
                Reason.INVALID_SPEC,
                f"spec.training.effectiveBatchSize: {effective} is not a multiple of perDeviceBatchSize x devices "
                f"= {per_device} x {devices} = {per_step}; use {' or '.join(map(str, nearest_multiples(effective, per_step)))}",
                ExitCode.INVALID_CONFIG,
            )
        effective = math.ceil(effective / per_step) * per_step
        origin["effectiveBatchSize"] = f"default:{name} (rounded to a multiple of {per_step})"
    if effective < per_step:
        effective = per_step
    return Resolved(
        parameters=parameters,
        sizeClass=name,
        learningRate=float(lr),
        epochs=float(epochs),
        perDeviceBatchSize=int(per_device),
        gradientAccumulationSteps=effective // per_step,
        devices=devices,
        effectiveBatchSize=effective,
        warmupRatio=float(warmup),
        weightDecay=float(wd),
        maxGradNorm=float(grad_norm),
        lrScheduler=sched,
        maxSeqLength=training.maxSeqLength,
        packing=training.packing,
        seed=training.seed,
        maxSteps=training.maxSteps,
        saveTotalLimit=training.saveTotalLimit,
        loggingSteps=training.loggingSteps,
        gradientCheckpointing=training.gradientCheckpointing,  # None: chosen by the hardware (prepare_run)
        origin=origin,
    )


def plan_steps(resolved: Resolved, training: TrainingSpec, train_rows: int) -> Resolved:
    """Total optimizer steps and the eval/save cadence (about 10 evaluations when unset)."""
    if resolved.maxSteps:
        total = resolved.maxSteps
    else:
        total = max(1, math.ceil(math.ceil(train_rows / resolved.effectiveBatchSize) * resolved.epochs))
    resolved.totalSteps = total
    if training.evalSteps is not None:
        resolved.evalSteps, resolved.origin["evalSteps"] = training.evalSteps, "spec"
    elif training.saveSteps is not None:
        # Evaluate where checkpoints are saved, so the best one by eval loss is always on disk.
        resolved.evalSteps, resolved.origin["evalSteps"] = training.saveSteps, "default:saveSteps"
    else:
        resolved.evalSteps, resolved.origin["evalSteps"] = max(1, total // 10), "default:~10 evaluations"
    if training.saveSteps is not None:
        resolved.saveSteps, resolved.origin["saveSteps"] = training.saveSteps, "spec"
    else:
        resolved.saveSteps, resolved.origin["saveSteps"] = resolved.evalSteps, "default:evalSteps"
    if resolved.loggingSteps > resolved.evalSteps:
        # Train loss is logged at least once per evaluation: the warning signs compare the two.
        resolved.loggingSteps = resolved.evalSteps
        resolved.origin["loggingSteps"] = "spec, capped at evalSteps (train loss logged at least once per evaluation)"
    if resolved.saveSteps % resolved.evalSteps:
        raise RuntimeFailure(
            Reason.INVALID_SPEC,
            f"spec.training.saveSteps: {resolved.saveSteps} must be a multiple of evalSteps ({resolved.evalSteps})",
            ExitCode.INVALID_CONFIG,
        )
    return resolved


def count_parameters(model_dir_or_id: str, *, revision: str = "main", trust_remote_code: bool = False, token: str | None = None) -> int:
    """Parameters of a model from its config alone: the model is built on the meta device, no weights are read."""
    from transformers import AutoConfig

    from sftjob_runtime.plan import arch_from_config

    config = AutoConfig.from_pretrained(model_dir_or_id, revision=revision, trust_remote_code=trust_remote_code, token=token)
    return arch_from_config(config, trust_remote_code=trust_remote_code).parameters  # tied embeddings counted once


# Bytes per trained parameter in a checkpoint: 2 of weights plus 12 of AdamW state and fp32 master copy;
# and a write rate a network volume sustains: a conservative estimate.
CHECKPOINT_BYTES_PER_PARAMETER = 2 + 12
CHECKPOINT_WRITE_RATE = 200e6


def checkpoint_write_seconds(parameters: int, *, lora: bool) -> float:
    """How long writing one checkpoint may take. A LoRA checkpoint holds only the adapters (~1 % of the parameters)."""
    trained = parameters // 100 if lora else parameters
    return trained * CHECKPOINT_BYTES_PER_PARAMETER / CHECKPOINT_WRITE_RATE
