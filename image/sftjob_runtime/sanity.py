"""The sanity check: a few real optimizer steps on a small subset before the full run.

It verifies what the recipe asks before GPU hours are spent: rows are not
all masked, the loss is finite and decreases, and a generation after the
steps is not garbled. It trains a throwaway copy of the model in a scratch
directory; nothing it writes is kept.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from sftjob.report import SanityResult
from sftjob.vocabulary import Reason
from sftjob_runtime.events import emit

# The loss on the sampled rows after the steps must be below this share of
# the loss on the same rows before them (a run that learns anything drops it
# far more; with the same rows measured twice, noise cannot).
MAX_LOSS_RATIO = 0.98


def garbled(text: str) -> str | None:
    """Why a generation looks garbled, or None: empty, mostly non-printable, or one token repeated."""
    if not text.strip():
        return "the generation is empty"
    printable = sum(ch.isprintable() or ch in "\n\t" for ch in text) / len(text)
    if printable < 0.9:
        return f"only {printable:.0%} of the generated characters are printable"
    words = text.split()
    if len(words) >= 8 and len(set(words)) <= 2:
        return f"the generation repeats {words[0]!r}"
    return None


def run_sanity(prep, state=None) -> SanityResult:
    """Train `sanityCheck.steps` steps on `sanityCheck.samples` rows and judge the outcome."""
    from datasets import Dataset

    from sftjob_runtime.callbacks import MonitorCallback, TokenCounter
    from sftjob_runtime.progress_server import ProgressState
    from sftjob_runtime.train import RunPaths, _load_model, build_sft_config, generate_sample, make_trainer_class

    cfg, r = prep.cfg, prep.resolved
    sc = cfg.sanityCheck
    rows = prep.train.rows[: sc.samples]
    examples = prep.train.examples[: sc.samples]
    masked = sum(1 for x in rows if x.num_trained_tokens == 0)
    truncated = sum(1 for x in rows if x.truncated)
    sample_text = None
    if rows:
        from sftjob_runtime.masking import trained_spans

        sample_text = " | ".join(trained_spans(prep.tokenizer, rows[0].input_ids, rows[0].labels))[:400]
    base = dict(rows=len(rows), maskedRows=masked, truncatedRows=truncated, sample=sample_text)
    if masked == len(rows):
        return SanityResult(passed=False, reason=Reason.SANITY_ALL_MASKED.value,
                            message=f"all {len(rows)} sampled rows have no trained token: check the assistant turns, "
                                    "spec.model.chatTemplate and spec.training.maxSeqLength", **base)
    records = [{"input_ids": x.input_ids, "labels": x.labels} for x in rows if x.num_trained_tokens > 0]
    state = state or ProgressState()
    state.update(stage="sanity", step=0, totalSteps=sc.steps)
    losses: list[float] = []

    class _Record(MonitorCallback):
        def on_log(self, args, st, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))
            super().on_log(args, st, control, logs=logs, **kw)

    with tempfile.TemporaryDirectory(prefix="sftjob-sanity-") as tmp:
        model = _load_model(cfg, prep.model_path, r.dtype, r.attention)
        counter = TokenCounter()
        # Full-batch steps on a small set: accumulation is not needed to see the loss move.
        from copy import copy

        rs = copy(r)
        rs.gradientAccumulationSteps, rs.warmupRatio, rs.evalSteps, rs.saveSteps = 1, 0.0, sc.steps, sc.steps * 10
        args = build_sft_config(cfg, rs, RunPaths(Path(tmp)), has_eval=False, max_steps=sc.steps, report=False)
        args.logging_steps, args.save_strategy = 1, "no"
        args.lr_scheduler_type = "constant"
        Trainer = make_trainer_class()
        data = Dataset.from_list(records)
        trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data, processing_class=prep.tokenizer,
                          callbacks=[_Record(state, counter, stage="sanity")], token_counter=counter,
                          fused_head=prep.hardware.device == "cuda")
        # Judge on the same rows before and after: per-step losses come from different
        # batches and would compare unlike with unlike.
        initial = float(trainer.evaluate()["eval_loss"])
        trainer.train()
        final = float(trainer.evaluate()["eval_loss"])
        generation = generate_sample(trainer.model, prep.tokenizer, examples[0].messages)
    losses = [initial, *losses, final]
    result = dict(initialLoss=initial, finalLoss=final, **base)
    emit("sanity", initial_loss=initial, final_loss=final, masked_rows=masked, rows=len(rows))
    if not all(math.isfinite(x) for x in losses):
        return SanityResult(passed=False, reason=Reason.SANITY_NON_FINITE_LOSS.value,
                            message=f"the loss was not finite during the sanity steps ({losses[-3:]}); lower spec.training.learningRate "
                                    "or use dtype float32", **result)
    if final > initial * MAX_LOSS_RATIO:
        return SanityResult(passed=False, reason=Reason.SANITY_LOSS_NOT_DECREASING.value,
                            message=f"the loss did not decrease over {sc.steps} steps ({initial:.4f} -> {final:.4f}); raise "
                                    "spec.training.learningRate, check the data, or raise sanityCheck.steps", **result)
    why = garbled(generation)
    if why:
        return SanityResult(passed=False, reason=Reason.SANITY_GARBLED_GENERATION.value,
                            message=f"{why} after the sanity steps: check spec.model.chatTemplate and the tokenizer", **result)
    return SanityResult(passed=True, reason="Passed", message=f"loss {initial:.4f} -> {final:.4f} in {sc.steps} steps", **result)
