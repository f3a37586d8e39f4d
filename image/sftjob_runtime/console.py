"""What `sftjob run` and `sftjob sanity` print for people: the resolved settings, the sanity verdict, the summary."""

from __future__ import annotations

import json
from pathlib import Path

from sftjob.report import SanityResult
from sftjob_runtime.errors import one_line


def sanity_json(result: SanityResult) -> None:
    """The sanity report as JSON on stdout (`sftjob sanity --json`)."""
    print(json.dumps(result.model_dump(mode="json", exclude_none=True), indent=2))


def print_sanity(result: SanityResult) -> None:
    """The sanity verdict in a few lines."""
    verdict = "PASSED" if result.passed else f"FAILED ({result.reason})"
    print(f"sanity check {verdict}: {result.message}")
    if result.rows is not None:
        print(f"  rows {result.rows}, fully masked {result.maskedRows}, truncated {result.truncatedRows}")
    if result.sample:
        print(f"  trained-on text of the first row: {result.sample!r}")


def print_resolved(prep) -> None:
    """Model, data and hyperparameters as resolved, before the first step."""
    r = prep.resolved
    print(f"model: {prep.cfg.model.source} ({r.parameters / 1e6:.1f}M parameters, size class {r.sizeClass}) on "
          f"{prep.hardware.device_name}, {r.dtype}, attention {r.attention}")
    print(f"data: {len(prep.train.examples)} train / {len(prep.val.examples)} validation rows, "
          f"{prep.train.truncated} truncated, {len(prep.train.all_masked)} fully masked")
    print(f"hyperparameters: lr {r.learningRate:g}, epochs {r.epochs:g}, batch {r.perDeviceBatchSize} x {r.devices} device(s) "
          f"x {r.gradientAccumulationSteps} accumulation = {r.effectiveBatchSize}, warmup {r.warmupRatio:g}, "
          f"{r.lrScheduler}, {r.totalSteps} steps, eval every {r.evalSteps}")
    defaults = sorted(k for k, v in r.origin.items() if v != "spec")
    if defaults:
        print(f"  chosen by model size / defaults: {', '.join(defaults)}")


def _sample_line(text: str | None) -> str:
    """A generation squeezed onto one summary line."""
    return "n/a (resumed run)" if text is None else one_line(text, limit=160)


def print_summary(res, dest: str, tidied: dict, html: Path | None = None) -> None:
    """The closing summary of a finished run."""
    def fmt(x):
        return "n/a" if x is None else f"{x:.4f}"

    prompt = next((m["content"] for m in reversed(res.sample_prompt or []) if m["role"] == "user"), "")
    lines = [
        "",
        "=" * 72,
        f"SFTJob {res.name}: done in {res.duration_seconds:.0f} s, {res.steps} steps, {res.tokens_seen} tokens",
        f"eval loss      before {fmt(res.eval_loss_before)}  ->  after {fmt(res.eval_loss_after)}",
        f"best checkpoint step {res.best_step}, eval loss {fmt(res.best_eval_loss)}",
        f"  exported: {dest}" if tidied.get("bestDir") else f"  local:    {res.best_dir}\n  exported: {dest}",
        "checkpoints: pruned after the export (spec.output.keepCheckpoints: true keeps them)"
        if tidied["checkpoints"] == "pruned" else f"checkpoints: kept in {tidied['checkpointsDir']}",
        f"sample prompt: {prompt}",
        f"  before: {_sample_line(res.sample_before)}",
        f"  after:  {_sample_line(res.sample_after)}",
    ]
    if res.warnings:
        lines.append(f"warnings ({len(res.warnings)}):")
        lines.extend(f"  - {w}" for w in res.warnings)
    if html is not None:
        lines.append(f"report: {html} (open it in a browser; `sftjob report {dest}` renders the exported copy)")
    lines.append("=" * 72)
    print("\n".join(lines))
