"""One training run: run config in, best checkpoint and a run report out.

The flow follows TRL's `scripts/sft.py`: config → model + tokenizer →
SFTTrainer → train → save, with what the recipe adds around it: eval
before and after, a sample generation before and after, the best
checkpoint by eval loss (load_best_model_at_end), resume from the latest
checkpoint in the work directory (or mirrored on S3), and warnings on the recipe's warning
signs. Everything hardware-dependent is chosen in `hardware`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
import os
from pathlib import Path

from sftjob.runconfig import RunConfig
from sftjob.vocabulary import ExitCode, Reason
from sftjob_runtime import hardware as hw_mod
from sftjob_runtime.callbacks import MonitorCallback, TokenCounter
from sftjob_runtime.checkpoint_sync import CheckpointMirror, mirror_uri, restore_checkpoints
from sftjob_runtime.errors import RuntimeFailure
from sftjob_runtime.events import emit
from sftjob_runtime.hparams import Resolved, count_parameters, plan_steps, resolve
from sftjob_runtime.prepare import PreparedSplit, hf_token, load_splits, load_tokenizer, localize_model, model_error, tokenize_split
from sftjob_runtime.progress_server import ProgressState
from sftjob_runtime.trainer_config import RunPaths, build_sft_config

SAMPLE_MAX_NEW_TOKENS = 64


@dataclass
class TrainResult:
    """What a run produced (also written as report.json)."""

    name: str
    best_dir: str
    best_step: int | None
    best_eval_loss: float | None
    eval_loss_before: float | None
    eval_loss_after: float | None
    train_loss: float | None
    steps: int
    tokens_seen: int
    duration_seconds: float
    resolved: dict
    hardware: dict
    data: dict
    sample_prompt: list | None = None
    sample_before: str | None = None
    sample_after: str | None = None
    warnings: list[str] = field(default_factory=list)
    resumed_from: str | None = None

    def as_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def make_trainer_class():
    """SFTTrainer with token counting and, where it is faster, the plain transformers loss.

    TRL's fused LM head saves memory on GPUs, but on CPUs without Triton it
    runs full-vocabulary fp32 ops and recomputes logits in backward (~0.7x
    the tokens/s of a plain loop in bf16, DESIGN.md section 9). So on CPU
    the loss comes from the model's own forward (same value to ~1e-6).
    """
    from transformers import Trainer
    from trl import SFTTrainer

    class SFTJobTrainer(SFTTrainer):
        def __init__(self, *args, token_counter: TokenCounter, fused_head: bool, **kwargs):
            super().__init__(*args, **kwargs)
            self.token_counter = token_counter
            self.fused_head = fused_head

        def create_model_card(self, *args, **kwargs):
            # TRL's hub model card lands in the checkpoint folder, not in the exported model, and
            # asks the W&B run for its URL, which an offline run warns it lacks at every save.
            return None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                if "attention_mask" in inputs:
                    self.token_counter.tokens += int(inputs["attention_mask"].sum())
                elif "position_ids" in inputs:
                    self.token_counter.tokens += int(inputs["position_ids"].numel())
            if self.fused_head:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # Packed (padding-free) batches must not use the KV cache, or sequences attend to each other.
            inputs["use_cache"] = False
            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    return SFTJobTrainer


def _load_model(cfg: RunConfig, model_path: str, dtype: str, attention: str):
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = dict(
        revision=cfg.model.revision,
        trust_remote_code=cfg.model.trustRemoteCode,
        token=hf_token(),
        dtype=getattr(torch, dtype),
        attn_implementation=attention,
    )
    if cfg.model.quantization != "none":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=cfg.model.quantization == "4bit",
            load_in_8bit=cfg.model.quantization == "8bit",
            bnb_4bit_compute_dtype=getattr(torch, dtype),
            bnb_4bit_quant_type="nf4",
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    except OSError as e:
        raise model_error(cfg.model.source, e) from None
    lora = cfg.training.lora
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        # PEFT recognises the "all-linear" shorthand only as a plain string.
        targets = list(lora.targetModules)
        target_modules = targets[0] if targets == ["all-linear"] else targets
        model = get_peft_model(
            model,
            LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                       target_modules=target_modules, task_type="CAUSAL_LM"),
        )
    return model


def generate_sample(model, tokenizer, messages: list[dict]) -> str:
    """Greedy completion of one prompt (the conversation up to its last assistant turn)."""
    import torch

    prompt = messages
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "assistant":
            prompt = messages[:i]
            break
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model.generate(
            input_ids=ids["input_ids"].to(device),
            attention_mask=ids["attention_mask"].to(device),
            max_new_tokens=SAMPLE_MAX_NEW_TOKENS,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        )
    if was_training:
        model.train()
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


@dataclass
class Prepared:
    """Everything decided before the first step."""

    cfg: RunConfig
    model_path: str
    tokenizer: object
    train: PreparedSplit
    val: PreparedSplit
    resolved: Resolved
    hardware: hw_mod.Hardware
    end_of_turn: str | None = None  # the text that ends an assistant turn, where the masker knows it


def prepare_run(cfg: RunConfig, base: Path | None = None) -> Prepared:
    """Hardware, tokenizer, data, masking and hyperparameters: all checks that need no weights."""
    hw = hw_mod.detect_hardware()
    dtype = hw_mod.choose_dtype(cfg.model.dtype, hw)
    attention = hw_mod.choose_attention(cfg.model.attention, hw, dtype)
    hw_mod.check_quantization(cfg.model.quantization, hw)
    model_path = localize_model(cfg, base)
    tokenizer, masker = load_tokenizer(cfg, model_path)
    train_ex, val_ex = load_splits(cfg, base)
    train = tokenize_split(masker, train_ex, cfg.training.maxSeqLength)
    val = tokenize_split(masker, val_ex, cfg.training.maxSeqLength)
    if not train.records():
        # Nothing left to train on: say why (every answer truncated away, empty answers, ...), with the counts.
        from sftjob_runtime.sanity import data_findings, failure

        raise failure(data_findings(cfg, train, tokenizer, masker.end_of_turn))
    if val_ex and not val.records():
        raise RuntimeFailure(Reason.DATASET_SCHEMA, "no validation row has a token to train on", ExitCode.DATASET)
    try:
        params = count_parameters(model_path, revision=cfg.model.revision, trust_remote_code=cfg.model.trustRemoteCode, token=hf_token())
    except OSError as e:
        raise model_error(cfg.model.source, e) from None
    # The processes actually running (torchrun's WORLD_SIZE), so a manifest written for
    # 8 GPUs run locally on one device keeps its effective batch through accumulation.
    r = resolve(cfg.training, params, hw_mod.world_size())
    r.dtype, r.attention = dtype, attention
    r.gradientCheckpointing = hw_mod.choose_checkpointing(cfg.training.gradientCheckpointing, hw)
    plan_steps(r, cfg.training, len(train.records()))
    for name, split in (("train", train), ("validation", val)):
        if split.truncated:
            emit("data_truncated", level="warning", split=name, rows=split.truncated, max_seq_length=cfg.training.maxSeqLength)
        if split.all_masked:
            emit("data_all_masked", level="warning", split=name, rows=len(split.all_masked), examples=split.all_masked[:5],
                 message="these rows have no assistant token within maxSeqLength and are not trained on")
    return Prepared(cfg, model_path, tokenizer, train, val, r, hw, masker.end_of_turn)


def train(prep: Prepared, work_dir: Path, state: ProgressState | None = None) -> TrainResult:
    """Train, evaluate before/after, keep the best checkpoint in work_dir/best and write report.json."""
    from datasets import Dataset
    from transformers.trainer_utils import get_last_checkpoint

    cfg, r = prep.cfg, prep.resolved
    paths = RunPaths(work_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    state = state or ProgressState()
    t0 = time.monotonic()
    main = hw_mod.is_main_process()
    if main:
        paths.resolved.write_text(json.dumps(r.as_dict(), indent=2))
        emit("resolved", **{k: v for k, v in r.as_dict().items() if k != "origin"})

    state.update(stage="loading")
    model = _load_model(cfg, prep.model_path, r.dtype, r.attention)
    train_ds = Dataset.from_list(prep.train.records())
    val_records = prep.val.records()
    eval_ds = Dataset.from_list(val_records) if val_records else None
    counter = TokenCounter()
    monitor = MonitorCallback(state, counter)
    callbacks = [monitor]
    # Building the arguments sets up the process group when torchrun started several processes.
    args = build_sft_config(cfg, r, paths, has_eval=eval_ds is not None)
    mirror = CheckpointMirror(cfg) if mirror_uri(cfg) and main else None
    if main:
        _warn_if_grace_is_short(r, cfg, state)
    if mirror_uri(cfg):
        if main:
            callbacks.append(mirror)
            # A new pod on an empty volume picks up where the last one stopped.
            if not any(paths.checkpoints.glob("checkpoint-*")):
                restore_checkpoints(cfg, paths.checkpoints)
        _wait_for_everyone()  # every rank must see the restored checkpoints before it looks for them
    Trainer = make_trainer_class()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=prep.tokenizer,
        callbacks=callbacks,
        token_counter=counter,
        fused_head=prep.hardware.device == "cuda",
    )
    # First in line, so the tokens/s (and GPU memory) it adds to each log reach TensorBoard and W&B too.
    trainer.callback_handler.callbacks.remove(monitor)
    trainer.callback_handler.callbacks.insert(0, monitor)
    sample_msgs = prep.val.examples[0].messages if prep.val.examples else prep.train.examples[0].messages
    last = get_last_checkpoint(str(paths.checkpoints)) if paths.checkpoints.is_dir() else None
    before = None
    sample_before = None
    if last is None:
        if eval_ds is not None:
            state.update(stage="evaluating")
            before = float(trainer.evaluate()["eval_loss"])
        if main:
            sample_before = generate_sample(trainer.model, prep.tokenizer, sample_msgs)
    else:
        emit("resume", checkpoint=last)
    state.update(stage="training")
    sigterm = _note_sigterm()
    out = trainer.train(resume_from_checkpoint=last)
    planned = trainer.state.max_steps
    jit = get_last_checkpoint(str(paths.checkpoints)) if paths.checkpoints.is_dir() else None
    if sigterm and planned and trainer.state.global_step < planned and jit is not None:
        # Stopped early by SIGTERM: transformers wrote a just-in-time checkpoint (before the step it interrupted).
        step = _step_of(jit)
        if mirror is not None:
            mirror.upload(args, step)
        raise RuntimeFailure(Reason.PREEMPTED, f"stopped by SIGTERM at step {step} of {planned}: checkpoint-{step} is saved "
                             "and the next pod resumes from it", ExitCode.INTERRUPTED)
    if monitor.diverged:
        raise RuntimeFailure(Reason.TRAINING_DIVERGED, f"training diverged: {monitor.diverged}; lower spec.training.learningRate",
                             ExitCode.DIVERGED)
    after = None
    if eval_ds is not None:
        state.update(stage="evaluating")
        after = float(trainer.evaluate()["eval_loss"])
    sample_after = generate_sample(trainer.model, prep.tokenizer, sample_msgs) if main else None
    best_step = _step_of(trainer.state.best_model_checkpoint) if trainer.state.best_model_checkpoint else trainer.state.global_step
    trainer.save_model(str(paths.best))  # every rank calls it; only the main process writes
    if main:
        prep.tokenizer.save_pretrained(str(paths.best))
    result = TrainResult(
        name=cfg.name,
        best_dir=str(paths.best),
        best_step=best_step,
        best_eval_loss=float(trainer.state.best_metric) if trainer.state.best_metric is not None else after,
        eval_loss_before=before,
        eval_loss_after=after,
        train_loss=float(out.training_loss) if out.training_loss is not None and math.isfinite(out.training_loss) else None,
        steps=trainer.state.global_step,
        tokens_seen=counter.tokens,
        duration_seconds=round(time.monotonic() - t0, 1),
        resolved=r.as_dict(),
        hardware=prep.hardware.as_dict(),
        data={
            "trainRows": len(prep.train.examples), "validationRows": len(prep.val.examples),
            "trainTokens": prep.train.tokens, "truncatedRows": prep.train.truncated + prep.val.truncated,
            "fullyMaskedRows": len(prep.train.all_masked) + len(prep.val.all_masked),
        },
        sample_prompt=sample_msgs,
        sample_before=sample_before,
        sample_after=sample_after,
        warnings=list(state.snapshot().warnings),
        resumed_from=last,
    )
    if main:
        paths.report.write_text(json.dumps(result.as_dict(), indent=2, default=str))
    state.update(stage="exporting", bestEvalLoss=result.best_eval_loss, bestStep=best_step)
    return result


# Bytes per trained parameter of a checkpoint's optimizer state plus fp32 master copy (AdamW), on top of
# 2 bytes per parameter of weights, and a write rate a network volume sustains: a conservative estimate.
CHECKPOINT_BYTES_PER_PARAMETER = 12
CHECKPOINT_WRITE_RATE = 200e6


def _warn_if_grace_is_short(r: Resolved, cfg: RunConfig, state: ProgressState) -> None:
    """A warning (log and status) when the pod's grace period looks too short for its checkpoint."""
    from sftjob.vocabulary import ENV_GRACE_SECONDS

    grace = os.environ.get(ENV_GRACE_SECONDS)
    if not grace:
        return
    trained = r.parameters if cfg.training.lora is None else r.parameters // 100  # adapters: ~1 %
    seconds = (r.parameters * 2 + trained * CHECKPOINT_BYTES_PER_PARAMETER) / CHECKPOINT_WRITE_RATE
    if seconds > 0.8 * float(grace):
        message = (f"the just-in-time checkpoint may need ~{seconds:.0f} s to write, more than the pod's "
                   f"terminationGracePeriodSeconds ({grace} s) allows; raise spec.resources.terminationGracePeriodSeconds")
        emit("training_warning", level="warning", kind="grace_period_short", message=message)
        state.warn(f"grace_period_short: {message}")


def _note_sigterm() -> list[int]:
    """A list that gets an entry when SIGTERM arrives, chained in front of the handler in place (the trainer's
    just-in-time checkpoint), so an early stop is known to be a preemption, not inferred."""
    import signal
    import threading

    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        return received
    previous = signal.getsignal(signal.SIGTERM)

    def noted(signum, frame):
        received.append(signum)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, noted)
    return received


def _wait_for_everyone() -> None:
    from accelerate import PartialState

    PartialState().wait_for_everyone()


def _step_of(checkpoint: str) -> int | None:
    try:
        return int(Path(checkpoint).name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return None
