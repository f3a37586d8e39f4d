"""The sanity check: a few real optimizer steps on a small subset before the full run.

It verifies what the recipe asks before GPU hours are spent, root cause
first. Before any step, from the data as tokenized (counted before TRL drops
fully masked rows): answers cut by maxSeqLength (`SanityTruncated`, with a
length that fits), answers empty after stripping (`SanityEmptyAnswers`),
rows with nothing to train (`SanityAllMasked`), labels that never hold the
end-of-turn/EOS token (`SanityNoEndOfTurn`: the model would never learn to
stop). Then real steps on a throwaway copy of the model, judged on the same
rows before and after: a loss that is not finite (`SanityNonFiniteLoss`),
that grows or whose gradient norms explode (`SanityDiverged`: lower the
learning rate), or that does not fall (`SanityLossNotDecreasing`: raise it),
and a garbled generation. Thresholds are `spec.sanityCheck` fields; nothing
the check writes is kept.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from sftjob.vocabulary import ExitCode
from sftjob_runtime.errors import RuntimeFailure

from sftjob.report import SanityResult
from sftjob.vocabulary import Reason
from sftjob_runtime.chat_templates import end_of_turn_warning
from sftjob_runtime.events import emit

# The loss on the sampled rows after the steps must be below this share of
# the loss on the same rows before them (a run that learns anything drops it
# far more; with the same rows measured twice, noise cannot).
MAX_LOSS_RATIO = 0.98
# A gradient norm this many times the first step's (times divergenceFactor / 1.5) is an explosion.
GRAD_NORM_EXPLOSION = 10.0
# Rules of thumb of the recipe: a loss that rises wants a 2-3x lower rate, a plateau a 2x higher one.
LOWER_LR_BY, RAISE_LR_BY = 3.0, 2.0
# maxSeqLength suggestions are rounded up to a multiple of this.
LENGTH_ROUNDING = 64
SHOWN_SOURCES = 3


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


def _percentile(values: list[int], share: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def _answers_empty(example) -> bool:
    trained = [m for m in example.messages[example.train_from:] if m["role"] == "assistant"]
    return bool(trained) and all(not m["content"].strip() for m in trained)


def _stop_ids(tokenizer, end_of_turn: str | None) -> set[int]:
    """EOS, and the template's end-of-turn marker when it is one special token (a newline is no stop)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    if end_of_turn and end_of_turn.strip():
        pieces = tokenizer(end_of_turn.strip(), add_special_tokens=False)["input_ids"]
        if len(pieces) == 1 and pieces[0] in special:
            ids.add(pieces[0])
    return ids


def _examples(sources: list[str]) -> str:
    return ", ".join(sources[:SHOWN_SOURCES]) + (f" and {len(sources) - SHOWN_SOURCES} more" if len(sources) > SHOWN_SOURCES else "")


def data_findings(cfg, split, tokenizer, end_of_turn: str | None) -> SanityResult | None:
    """What is wrong with the training data as the trainer would see it, root cause first; None when nothing is.

    Counts cover the whole training split, before TRL drops fully masked rows.
    """
    sc, limit = cfg.sanityCheck, cfg.training.maxSeqLength
    rows, examples = split.rows, split.examples
    n = len(rows)
    cut = [ex.source for ex, row in zip(examples, rows) if row.cut_trained]
    gone = [ex.source for ex, row in zip(examples, rows) if row.cut_trained and not row.num_trained_tokens]
    empty = [ex.source for ex in examples if _answers_empty(ex)]
    counts = dict(rows=n, maskedRows=len(split.all_masked), truncatedRows=split.truncated,
                  truncatedAnswers=len(cut), emptyAnswers=len(empty))
    if empty and len(empty) > sc.maxEmptyAnswerShare * n:
        return SanityResult(passed=False, reason=Reason.SANITY_EMPTY_ANSWERS.value, **counts, message=(
            f"{len(empty)} of {n} training rows have answers that are empty after stripping whitespace "
            f"({_examples(empty)}): the model would learn to answer with nothing; fix or drop those rows "
            f"(spec.sanityCheck.maxEmptyAnswerShare allows {sc.maxEmptyAnswerShare:.0%})"))
    if cut and (len(cut) > sc.maxTruncatedShare * n or len(split.all_masked) == n):
        fits = math.ceil(_percentile([row.full_length for row in rows], 0.95) / LENGTH_ROUNDING) * LENGTH_ROUNDING
        return SanityResult(passed=False, reason=Reason.SANITY_TRUNCATED.value, suggestedMaxSeqLength=fits, **counts, message=(
            f"{len(cut)} of {n} training rows lose answer tokens to spec.training.maxSeqLength={limit} ({len(gone)} lose the "
            f"whole answer, e.g. {_examples(gone or cut)}): answers come after the prompt, so truncation cuts what the model "
            f"should learn; set spec.training.maxSeqLength to at least {fits} (95% of the rows fit whole), or shorten "
            f"the prompts (spec.sanityCheck.maxTruncatedShare allows {sc.maxTruncatedShare:.0%})"))
    if len(split.all_masked) == n:
        return SanityResult(passed=False, reason=Reason.SANITY_ALL_MASKED.value, **counts, message=(
            f"no training row has a token to train on ({_examples(split.all_masked)}): check the assistant turns, "
            "spec.dataset.format and spec.model.chatTemplate"))
    stops = _stop_ids(tokenizer, end_of_turn)
    whole = [row for row in rows if row.num_trained_tokens and not row.cut_trained]
    if whole and not any(label in stops for row in whole for label in row.labels):
        marker = f"ends assistant turns with {end_of_turn!r}" if end_of_turn else "marks the assistant's turns"
        warning = end_of_turn_warning(tokenizer, end_of_turn) if end_of_turn and end_of_turn.strip() else None
        return SanityResult(passed=False, reason=Reason.SANITY_NO_END_OF_TURN.value, **counts, message=(
            f"no trained token is the end of turn ({tokenizer.eos_token!r} or the template's marker): the chat template "
            f"{marker}, so the model would never learn to stop; use a chat template (spec.model.chatTemplate) whose "
            "assistant turn ends with the tokenizer's EOS or a special end-of-turn token"
            + (f" ({warning})" if warning else "")))
    return None


def _loss_verdict(sc, lr: float, initial: float, final: float, grad_norms: list[float], losses: list[float]) -> tuple[str, str] | None:
    """(reason, message) when the loss says the run cannot work; None when it learns."""
    if not all(math.isfinite(x) for x in losses):
        return Reason.SANITY_NON_FINITE_LOSS.value, (
            f"the loss was not finite during the sanity steps ({losses[-3:]}); lower spec.training.learningRate "
            f"{LOWER_LR_BY:g}x (to {lr / LOWER_LR_BY:.3g}) or use dtype float32")
    explosion = GRAD_NORM_EXPLOSION * sc.divergenceFactor / 1.5
    first = grad_norms[0] if grad_norms else None
    exploded = first is not None and first > 0 and max(grad_norms[1:], default=0.0) > explosion * first
    if final > initial * sc.divergenceFactor or exploded:
        what = (f"the loss grew from {initial:.4f} to {final:.4f} ({final / initial:.1f}x) over {sc.steps} steps"
                if final > initial * sc.divergenceFactor else
                f"gradient norms exploded from {first:.3g} to {max(grad_norms[1:]):.3g}")
        return Reason.SANITY_DIVERGED.value, (
            f"{what}: the learning rate {lr:.3g} is too high for this model and data; lower spec.training.learningRate "
            f"{LOWER_LR_BY:g}x (to {lr / LOWER_LR_BY:.3g}), the recipe's rule for a rising loss")
    if final > initial * MAX_LOSS_RATIO:
        return Reason.SANITY_LOSS_NOT_DECREASING.value, (
            f"the loss did not decrease over {sc.steps} steps ({initial:.4f} -> {final:.4f}); raise "
            f"spec.training.learningRate {RAISE_LR_BY:g}x (to {lr * RAISE_LR_BY:.3g}), check the data, or raise sanityCheck.steps")
    return None


def run_sanity(prep, state=None, record=None) -> SanityResult:
    """Check the data, then train `sanityCheck.steps` steps on `sanityCheck.samples` rows and judge the outcome.

    `record` (a `run_report.RunRecord`) gets the findings, the generation and the steps' log.
    """
    result, generation, history = _check(prep, state)
    if record is not None:
        record.sanity_done(result, generation, history)
    return result


def _check(prep, state) -> tuple[SanityResult, str | None, list[dict]]:
    from datasets import Dataset

    from sftjob_runtime.callbacks import MonitorCallback, TokenCounter
    from sftjob_runtime.progress_server import ProgressState
    from sftjob_runtime.trainer import build_trainer, generate_sample, load_model
    from sftjob_runtime.trainer_config import RunPaths, build_sft_config

    cfg, r = prep.cfg, prep.resolved
    sc = cfg.sanityCheck
    found = data_findings(cfg, prep.train, prep.tokenizer, prep.end_of_turn)
    if found is not None:
        return found, None, []
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
                                    "spec.model.chatTemplate and spec.training.maxSeqLength", **base), None, []
    records = [{"input_ids": x.input_ids, "labels": x.labels} for x in rows if x.num_trained_tokens > 0]
    state = state or ProgressState()
    state.update(stage="sanity", step=0, totalSteps=sc.steps)
    losses: list[float] = []
    grad_norms: list[float] = []

    class _Record(MonitorCallback):
        def on_log(self, args, st, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))
            if logs and logs.get("grad_norm") is not None:
                grad_norms.append(float(logs["grad_norm"]))
            super().on_log(args, st, control, logs=logs, **kw)

    with tempfile.TemporaryDirectory(prefix="sftjob-sanity-") as tmp:
        model = load_model(cfg, prep.model_path, r.dtype, r.attention)
        counter = TokenCounter()
        args = build_sft_config(cfg, r, RunPaths(Path(tmp)), has_eval=False, sanity_steps=sc.steps)
        data = Dataset.from_list(records)
        recorder = _Record(state, counter, stage="sanity")
        trainer = build_trainer(prep, args, model, data, data, [recorder], counter)
        # Judge on the same rows before and after: per-step losses come from different
        # batches and would compare unlike with unlike.
        initial = float(trainer.evaluate()["eval_loss"])
        trainer.train()
        final = float(trainer.evaluate()["eval_loss"])
        generation = generate_sample(trainer.model, prep.tokenizer, examples[0].messages)
    losses = [initial, *losses, final]
    result = dict(initialLoss=initial, finalLoss=final, **base)
    emit("sanity", initial_loss=initial, final_loss=final, masked_rows=masked, rows=len(rows))
    verdict = _loss_verdict(sc, r.learningRate, initial, final, grad_norms, losses)
    if verdict is not None:
        return SanityResult(passed=False, reason=verdict[0], message=verdict[1],
                            **{k: (v if math.isfinite(v) else None) if isinstance(v, float) else v for k, v in result.items()}
                            ), generation, recorder.history
    why = garbled(generation)
    if why:
        return SanityResult(passed=False, reason=Reason.SANITY_GARBLED_GENERATION.value,
                            message=f"{why} after the sanity steps: check spec.model.chatTemplate and the tokenizer", **result
                            ), generation, recorder.history
    return (SanityResult(passed=True, reason="Passed", message=f"loss {initial:.4f} -> {final:.4f} in {sc.steps} steps", **result),
            generation, recorder.history)


def failure(result: SanityResult) -> RuntimeFailure:
    """The RuntimeFailure that carries a failed sanity report (exit SANITY_FAILED)."""
    return RuntimeFailure(Reason(result.reason), result.message or result.reason, ExitCode.SANITY_FAILED, sanity=result)
