"""Trainer callbacks: live progress and the recipe's warning signs.

Warning signs (DESIGN.md section 1): loss spikes or NaN, eval diverging
from train, eval loss rising (overfitting: lower the learning rate 2-3x),
grad norm > 10 or < 1e-6, sudden tokens/s drops, and GPU memory on GPUs.
Each becomes a structured event and a line in `Progress.warnings`.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

from transformers import TrainerCallback

from sftjob_runtime.events import emit
from sftjob_runtime.progress_server import ProgressState
from sftjob_runtime.warning_signs import GRAD_NORM_HIGH, GRAD_NORM_LOW, SPIKE_FACTOR, TOKENS_DROP


class TokenCounter:
    """Tokens the trainer has processed (incremented by the trainer per micro-batch)."""

    def __init__(self) -> None:
        self.tokens = 0


class MonitorCallback(TrainerCallback):
    """Publishes progress and warns on the recipe's warning signs."""

    def __init__(self, state: ProgressState, tokens: TokenCounter, *, stage: str = "training") -> None:
        self.progress = state
        self.tokens = tokens
        self.stage = stage
        self.train_losses: list[float] = []
        self.eval_losses: list[float] = []
        self.tps_history: list[float] = []
        self.diverged: str | None = None
        # The trainer's log history (restored with a checkpoint on resume), for the run report; set when training begins.
        self.history: list[dict] = []
        self.warmup_steps = 0
        self._t0 = None
        self._last = None

    def _warn(self, kind: str, message: str, **fields) -> None:
        emit("training_warning", level="warning", kind=kind, message=message, **fields)
        self.progress.warn(f"{kind}: {message}", step=fields.get("step"))

    def on_train_begin(self, args, state, control, **kw):
        self._t0 = self._last = (time.monotonic(), self.tokens.tokens)
        self.warmup_steps = args.get_warmup_steps(state.max_steps) if state.max_steps else 0
        self.progress.update(stage=self.stage, totalSteps=state.max_steps, step=state.global_step)
        self.history = state.log_history  # the same list the trainer appends to and saves in each checkpoint

    def on_log(self, args, state, control, logs=None, **kw):
        logs = logs if logs is not None else {}
        step = state.global_step
        if "loss" in logs:
            self._on_train_log(step, logs, state, control)
        if "eval_loss" in logs:
            self._on_eval(step, float(logs["eval_loss"]), state)

    def _on_train_log(self, step, logs, state, control) -> None:
        loss = float(logs["loss"])
        now, tokens = time.monotonic(), self.tokens.tokens
        t_prev, tok_prev = self._last or (now, tokens)
        tps = (tokens - tok_prev) / (now - t_prev) if now > t_prev else None
        self._last = (now, tokens)
        elapsed = now - self._t0[0] if self._t0 else 0.0
        eta = None
        if step and state.max_steps:
            eta = int(elapsed / step * (state.max_steps - step))
        grad_norm = logs.get("grad_norm")
        update = dict(step=step, totalSteps=state.max_steps, epoch=round(float(logs.get("epoch", state.epoch or 0)), 4),
                      loss=loss, learningRate=logs.get("learning_rate"), etaSeconds=eta)
        if grad_norm is not None:
            update["gradNorm"] = float(grad_norm)
        if tps:
            update["tokensPerSecond"] = round(tps, 1)
        self.progress.update(**update)
        event = {"step": step, "loss": loss, "grad_norm": grad_norm, "learning_rate": logs.get("learning_rate"),
                 "tokens_per_second": round(tps, 1) if tps else None}
        try:
            import torch

            if torch.cuda.is_available():
                event["gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        except ImportError:  # pragma: no cover - torch is always there in the runtime
            pass
        emit("train_log", **event)
        # Into the trainer's own log record too: this callback runs first (train.py puts it
        # there), so TensorBoard and W&B chart them beside loss and grad norm.
        # The trainer appended its own copy of the record to log_history before calling back: that copy
        # (saved in every checkpoint, so a resumed run keeps it) gets them as well, for the run report.
        record = state.log_history[-1] if state.log_history and state.log_history[-1].get("step") == step else {}
        for key in ("tokens_per_second", "gpu_memory_gb"):
            if event.get(key) is not None:
                logs[key] = record[key] = event[key]

        if not math.isfinite(loss):
            self.diverged = f"loss became {loss} at step {step}"
            self._warn("non_finite_loss", f"{self.diverged}; lower the learning rate or check the data", step=step)
            control.should_training_stop = True
            return
        if len(self.train_losses) >= 3:
            mean = statistics.fmean(self.train_losses[-5:])
            if loss > SPIKE_FACTOR * mean:
                self._warn("loss_spike", f"loss {loss:.4g} at step {step} is {loss / mean:.1f}x the recent mean {mean:.4g}", step=step)
        self.train_losses.append(loss)
        if grad_norm is not None:
            g = float(grad_norm)
            # Early steps routinely exceed the threshold while the learning rate warms up: only warn after warmup.
            if not math.isfinite(g) or (g > GRAD_NORM_HIGH and step > self.warmup_steps):
                self._warn("grad_norm_high", f"grad norm {g:.4g} > {GRAD_NORM_HIGH} at step {step}: lower the learning rate", step=step)
            elif g < GRAD_NORM_LOW:
                self._warn("grad_norm_low", f"grad norm {g:.3g} < {GRAD_NORM_LOW} at step {step}: nothing is learning (check masking and the learning rate)", step=step)
        if tps:
            if len(self.tps_history) >= 3 and tps < TOKENS_DROP * statistics.median(self.tps_history):
                self._warn("throughput_drop", f"tokens/s fell to {tps:.0f} (median {statistics.median(self.tps_history):.0f}) at step {step}", step=step)
            self.tps_history.append(tps)

    def _on_eval(self, step: int, eval_loss: float, state) -> None:
        best = state.best_metric if state.best_metric is not None else eval_loss
        self.progress.update(evalLoss=eval_loss, bestEvalLoss=min(best, eval_loss),
                             bestStep=_best_step(state, eval_loss, step))
        emit("eval", step=step, eval_loss=eval_loss)
        if self.eval_losses and eval_loss > self.eval_losses[-1] and len(self.eval_losses) >= 2 and self.eval_losses[-1] > self.eval_losses[-2]:
            self._warn("eval_loss_rising", f"eval loss rose twice in a row to {eval_loss:.4g} at step {step}: overfitting; "
                       "the best checkpoint is kept, consider fewer epochs or a 2-3x lower learning rate", step=step)
        if self.train_losses:
            train = statistics.fmean(self.train_losses[-3:])
            if eval_loss > 1.5 * train and eval_loss - train > 0.5:
                self._warn("train_eval_gap", f"eval loss {eval_loss:.4g} is far above train loss {train:.4g} at step {step}: "
                           "the model is memorising; fewer epochs or more data", step=step)
        self.eval_losses.append(eval_loss)


def _best_step(state, eval_loss: float, step: int) -> int | None:
    """The step of the best checkpoint so far (the current one when it is the best)."""
    if state.best_metric is None or eval_loss <= state.best_metric:
        return step
    ckpt = state.best_model_checkpoint
    if ckpt and "-" in ckpt:
        try:
            return int(ckpt.rsplit("-", 1)[1])
        except ValueError:
            return None
    return None


class NodeCopyCallback(TrainerCallback):
    """Completes every node's own copy of a checkpoint in a multi-node run (`save_on_each_node`).

    transformers 5 writes the optimizer, scheduler and RNG states, the trainer
    state and the tokenizer on each node's first process, but the model's
    weights and config only where torch.distributed's rank is 0
    (`PreTrainedModel.save_pretrained` checks the rank itself), so another
    node's copy had nothing to resume the model from. The first process of
    every other node writes them, the same files the trainer writes (a PEFT
    adapter is saved on every node already).
    """

    def on_save(self, args, state, control, model=None, **kwargs):
        if not args.save_on_each_node or args.process_index == 0 or args.local_process_index != 0 or model is None:
            return
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not checkpoint.is_dir() or any((checkpoint / name).exists() for name in _WEIGHT_FILES):
            return
        from safetensors.torch import save_file

        model.config.save_pretrained(checkpoint)
        if getattr(model, "generation_config", None) is not None and model.can_generate():
            model.generation_config.save_pretrained(checkpoint)
        # A tensor shared by several names (tied embeddings) is stored once, under its first name, as
        # save_pretrained stores it; loading ties the others to it again.
        weights, seen = {}, set()
        for name, tensor in model.state_dict().items():
            if tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                weights[name] = tensor.detach().contiguous()
        save_file(weights, str(checkpoint / "model.safetensors"), metadata={"format": "pt"})
        if not (checkpoint / "trainer_state.json").exists():
            state.save_to_json(str(checkpoint / "trainer_state.json"))


_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
