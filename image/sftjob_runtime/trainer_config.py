"""The trainer's arguments: sftjob's stable spec names mapped onto the installed TRL/transformers ones.

One table (`TRAINING_ARGUMENTS`) says where each `spec.training` field goes,
as resolved (`hparams.Resolved`: the spec's value, or the default chosen by
model size); `build_sft_config` adds how sftjob runs the trainer. A test
fails when a spec field reaches neither the table nor `NOT_TRAINER_ARGUMENTS`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftjob.runconfig import RunConfig
from sftjob_runtime.hparams import Resolved


@dataclass
class RunPaths:
    """Where a run keeps its files under its work directory."""

    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def best(self) -> Path:
        return self.root / "best"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def resolved(self) -> Path:
        return self.root / "resolved.json"


# Where each spec.training field reaches the trainer: (spec field, SFTConfig argument, value from the
# resolved hyperparameters, which hold every field with its default chosen where the spec left it out).
# tests/test_trainer_args.py fails when a spec field is in neither this table nor NOT_TRAINER_ARGUMENTS.
TRAINING_ARGUMENTS: tuple[tuple[str, str, Callable[[Resolved], Any]], ...] = (
    ("epochs", "num_train_epochs", lambda r: r.epochs),
    ("maxSteps", "max_steps", lambda r: r.maxSteps or -1),
    ("learningRate", "learning_rate", lambda r: r.learningRate),
    ("perDeviceBatchSize", "per_device_train_batch_size", lambda r: r.perDeviceBatchSize),
    ("perDeviceBatchSize", "per_device_eval_batch_size", lambda r: r.perDeviceBatchSize),
    ("effectiveBatchSize", "gradient_accumulation_steps", lambda r: r.gradientAccumulationSteps),
    ("warmupRatio", "warmup_steps", lambda r: r.warmupRatio),  # < 1 is a fraction of the steps in transformers 5
    ("weightDecay", "weight_decay", lambda r: r.weightDecay),
    ("maxGradNorm", "max_grad_norm", lambda r: r.maxGradNorm),
    ("lrScheduler", "lr_scheduler_type", lambda r: r.lrScheduler),
    ("maxSeqLength", "max_length", lambda r: r.maxSeqLength),
    ("packing", "packing", lambda r: r.packing),
    ("gradientCheckpointing", "activation_checkpointing", lambda r: bool(r.gradientCheckpointing)),
    ("gradientCheckpointing", "activation_checkpointing_kwargs",
     lambda r: {"use_reentrant": False} if r.gradientCheckpointing else None),
    ("evalSteps", "eval_steps", lambda r: r.evalSteps),
    ("saveSteps", "save_steps", lambda r: r.saveSteps),
    ("saveTotalLimit", "save_total_limit", lambda r: r.saveTotalLimit),
    ("loggingSteps", "logging_steps", lambda r: r.loggingSteps),
    ("seed", "seed", lambda r: r.seed),
    ("seed", "data_seed", lambda r: r.seed),
)
# spec.training fields that are not trainer arguments, and where they go instead.
NOT_TRAINER_ARGUMENTS = {
    "lora": "a PEFT LoraConfig around the model (trainer.load_model)",
}


def build_sft_config(cfg: RunConfig, r: Resolved, paths: RunPaths, *, has_eval: bool, max_steps: int | None = None,
                     sanity_steps: int | None = None):
    """Map our stable spec names onto the installed TRL/transformers argument names.

    The hyperparameters come from `TRAINING_ARGUMENTS`; the rest is how sftjob
    runs the trainer. `sanity_steps` builds the sanity check's throwaway run
    instead: that many full-batch steps (no accumulation: a small set is
    enough to see the loss move) at a constant rate without warmup, a log
    line per step, no saves, no metric sink, no just-in-time checkpoint.
    Writes nothing: `configure_metric_sinks` sets what TensorBoard and W&B
    read from the environment.
    """
    from trl import SFTConfig

    sanity = sanity_steps is not None
    keep_best = has_eval and cfg.output.keep == "best" and not sanity
    report_to = ([] if sanity else list(cfg.monitoring.reportTo)) or ["none"]
    cuda = _cuda_available()
    arguments: dict[str, Any] = {name: value(r) for _, name, value in TRAINING_ARGUMENTS}
    if max_steps is not None:
        arguments["max_steps"] = max_steps
    arguments.update(
        output_dir=str(paths.checkpoints),
        run_name=cfg.name,
        packing_strategy="bfd",  # best-fit decreasing, padding-free
        bf16=r.dtype == "bfloat16",
        fp16=r.dtype == "float16",
        # transformers refuses bf16 without a bf16 GPU unless told it runs on the CPU.
        use_cpu=not cuda,
        eval_strategy="steps" if has_eval else "no",
        save_strategy="steps",
        load_best_model_at_end=keep_best,
        metric_for_best_model="eval_loss" if keep_best else None,
        greater_is_better=False if keep_best else None,
        logging_first_step=True,
        report_to=report_to,
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,  # pinning without a GPU only warns
        remove_unused_columns=True,
        # Each node of a multi-node job has a work volume of its own, and every node needs the
        # checkpoint to resume from: each node's first process saves a copy.
        save_on_each_node=cfg.nodes > 1,
        disable_tqdm=False,
        dataset_num_proc=None,
    )
    if "enable_jit_checkpoint" in SFTConfig.__dataclass_fields__:
        # transformers' just-in-time checkpoint: on SIGTERM (preemption, a drain) it saves at the next step
        # boundary and stops, so the next pod resumes where this one was stopped.
        arguments["enable_jit_checkpoint"] = not sanity
    if sanity:
        arguments.update(max_steps=sanity_steps, gradient_accumulation_steps=1, warmup_steps=0.0, eval_steps=sanity_steps,
                         logging_steps=1, save_strategy="no", lr_scheduler_type="constant")
    return SFTConfig(**arguments)


def configure_metric_sinks(cfg: RunConfig, paths: RunPaths) -> None:
    """What TensorBoard and W&B read from the environment: where this run's files go, and the W&B project."""
    report_to = cfg.monitoring.reportTo
    if "tensorboard" in report_to:
        # transformers 5 has no logging_dir: TensorBoard reads this variable.
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(paths.tensorboard)
    if "wandb" in report_to:
        os.environ.setdefault("WANDB_MODE", "offline" if not os.environ.get("WANDB_API_KEY") else "online")
        # This run's files go under this run's directory (set, not defaulted: one process may run several).
        os.environ["WANDB_DIR"] = str(paths.root)
        if cfg.monitoring.wandbProject:
            os.environ.setdefault("WANDB_PROJECT", cfg.monitoring.wandbProject)
        if cfg.monitoring.wandbEntity:
            os.environ.setdefault("WANDB_ENTITY", cfg.monitoring.wandbEntity)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
