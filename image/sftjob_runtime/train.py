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
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from sftjob.runconfig import RunConfig
from sftjob.vocabulary import ExitCode, Reason
from sftjob_runtime import hardware as hw_mod
from sftjob_runtime.callbacks import MonitorCallback, NodeCopyCallback, TokenCounter
from sftjob_runtime.checkpoint_sync import CheckpointMirror, mirror_uri, restore_checkpoints
from sftjob_runtime.errors import RuntimeFailure
from sftjob_runtime.events import emit
from sftjob_runtime.hparams import Resolved, checkpoint_write_seconds
from sftjob_runtime.prepare import Prepared, prepare_run
from sftjob_runtime.run_report import RunRecord
from sftjob_runtime.progress_server import ProgressState
from sftjob_runtime.trainer import build_trainer, generate_sample, load_model
from sftjob_runtime.trainer_config import RunPaths, build_sft_config, configure_metric_sinks

__all__ = ["Prepared", "TrainResult", "prepare_run", "train"]


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


def train(prep: Prepared, work_dir: Path, state: ProgressState | None = None, record: RunRecord | None = None) -> TrainResult:
    """Train, evaluate before/after and keep the best checkpoint in work_dir/best.

    `record` (the run report) gets the log history as it grows, so a run that
    fails mid-way still reports its curves.
    """
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
    model = load_model(cfg, prep.model_path, r.dtype, r.attention)
    train_ds = Dataset.from_list(prep.train.records())
    val_records = prep.val.records()
    eval_ds = Dataset.from_list(val_records) if val_records else None
    counter = TokenCounter()
    monitor = MonitorCallback(state, counter)
    if record is not None:
        record.history_of = monitor  # the trainer's own log: on a resumed run it holds the steps before the restart
    callbacks = [monitor] + ([NodeCopyCallback()] if cfg.nodes > 1 else [])
    # Building the arguments sets up the process group when torchrun started several processes.
    args = build_sft_config(cfg, r, paths, has_eval=eval_ds is not None)
    configure_metric_sinks(cfg, paths)
    mirror = CheckpointMirror(cfg, state) if mirror_uri(cfg) and main else None
    if main:
        warn_if_grace_is_short(r, cfg, state)
    if mirror_uri(cfg):
        if main:
            callbacks.append(mirror)
        if hw_mod.is_node_main():
            # A new pod on an empty volume picks up where the last one stopped (on every node: each has its volume).
            if not any(paths.checkpoints.glob("checkpoint-*")):
                restore_checkpoints(cfg, paths.checkpoints)
        _wait_for_everyone()  # every rank must see the restored checkpoints before it looks for them
    trainer = build_trainer(prep, args, model, train_ds, eval_ds, callbacks, counter)
    sample_msgs = prep.val.examples[0].messages if prep.val.examples else prep.train.examples[0].messages
    last = get_last_checkpoint(str(paths.checkpoints)) if paths.checkpoints.is_dir() else None
    sample_before = None
    if last is None:
        # The eval before the first step runs inside train() (eval_on_start), once the trainer has wrapped the
        # model: a trainer.evaluate() before train() prepares the bare model, and transformers 5 then trains it
        # unwrapped, so under torchrun every process trained alone (no gradient all-reduce) and they drifted apart.
        trainer.args.eval_on_start = eval_ds is not None
        if main:
            sample_before = generate_sample(trainer.model, prep.tokenizer, sample_msgs)
    else:
        emit("resume", checkpoint=last)
    state.update(stage="training")
    sigterm = _note_sigterm()
    try:
        out = trainer.train(resume_from_checkpoint=last)
    finally:
        if mirror is not None:
            mirror.close()  # the uploads in flight finish before anything else (the export, a JIT upload, an exit)
    before = None if last is not None else next(
        (float(e["eval_loss"]) for e in trainer.state.log_history if e.get("step") == 0 and "eval_loss" in e), None)
    planned = trainer.state.max_steps
    jit = get_last_checkpoint(str(paths.checkpoints)) if paths.checkpoints.is_dir() else None
    if sigterm and planned and trainer.state.global_step < planned and jit is not None:
        # Stopped early by SIGTERM: transformers wrote a just-in-time checkpoint (before the step it interrupted).
        step = _step_of(jit)
        if main:
            _complete_log_history(Path(jit), trainer.state.log_history, step)
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
        data=prep.data_counts(),
        sample_prompt=sample_msgs,
        sample_before=sample_before,
        sample_after=sample_after,
        warnings=list(state.snapshot().warnings),
        resumed_from=last,
    )
    state.update(stage="exporting", bestEvalLoss=result.best_eval_loss, bestStep=best_step)
    return result


def warn_if_grace_is_short(r: Resolved, cfg: RunConfig, state: ProgressState) -> str | None:
    """A warning (log and status) when the pod's grace period looks too short for its checkpoint; returns it."""
    from sftjob.vocabulary import ENV_GRACE_SECONDS

    grace = os.environ.get(ENV_GRACE_SECONDS)
    if not grace:
        return None
    seconds = checkpoint_write_seconds(r.parameters, lora=cfg.training.lora is not None)
    if seconds <= 0.8 * float(grace):
        return None
    message = (f"the just-in-time checkpoint may need ~{seconds:.0f} s to write, more than the pod's "
               f"terminationGracePeriodSeconds ({grace} s) allows; raise spec.resources.terminationGracePeriodSeconds")
    emit("training_warning", level="warning", kind="grace_period_short", message=message)
    state.warn(f"grace_period_short: {message}")
    return message


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


def _complete_log_history(checkpoint: Path, history: list[dict], step: int) -> None:
    """Give a just-in-time checkpoint the log entries of its own step.

    When SIGTERM's request is seen at the end of step N, transformers saves
    checkpoint-N before it logs step N; resumed from it, the loss curve would
    miss that step. The entries up to N, from memory, are written into it.
    """
    path = checkpoint / "trainer_state.json"
    saved = json.loads(path.read_text())
    saved["log_history"] = [entry for entry in history if entry.get("step", 0) <= step]
    path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")


def _wait_for_everyone() -> None:
    from accelerate import PartialState

    PartialState().wait_for_everyone()


def _step_of(checkpoint: str) -> int | None:
    try:
        return int(Path(checkpoint).name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return None
