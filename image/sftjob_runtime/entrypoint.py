"""`sftjob run` and `sftjob sanity`: the runtime's two entry points, local or in the training pod.

Both take an SFTJob manifest (local runs) or the run config JSON the
operator mounts. Failures end as one line on stderr, a typed `Outcome` in
the termination message (when running in a pod) and an exit code from
`sftjob.vocabulary.ExitCode`; never a traceback for a problem the user
can fix.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import os
import sys
import traceback
from pathlib import Path

from sftjob.manifest import ManifestError
from sftjob.report import BestCheckpoint, Outcome, SanityResult
from sftjob.runconfig import RunConfig, load_run_config
from sftjob.vocabulary import ENV_TERMINATION_LOG, TERMINATION_LOG, ExitCode, Reason, memory_hint
from sftjob_runtime.errors import RuntimeFailure, one_line
from sftjob_runtime.events import emit
from sftjob_runtime.progress_server import ProgressState, serve_from_env


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    # Library chatter that says nothing actionable to a user of sftjob.
    warnings.filterwarnings("ignore", message=".*torch_dtype.*")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    # transformers prints "[INFO] Running in WANDB offline mode" when this module is first
    # imported under WANDB_MODE=offline, whether or not the job reports to W&B.
    with contextlib.redirect_stdout(io.StringIO()):
        import transformers.integrations.integration_utils  # noqa: F401
    hf_logging.disable_progress_bar()  # weight-loading bars; the training bar is the Trainer's own
    import datasets

    # Per-map progress bars for a few hundred rows are noise next to the training bar.
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def write_outcome(outcome: Outcome) -> None:
    """Write the termination message when running in a pod (or when SFTJOB_TERMINATION_LOG is set)."""
    from sftjob_runtime.hardware import is_main_process

    path = os.environ.get(ENV_TERMINATION_LOG) or (TERMINATION_LOG if os.path.exists(TERMINATION_LOG) else None)
    if not path or not is_main_process():  # one container, one message: rank 0's
        return
    try:
        Path(path).write_text(outcome.to_termination_message())
    except OSError as e:  # never let reporting mask the real result
        emit("termination_log_unwritable", level="warning", path=path, error=str(e))


def _load(file: str) -> tuple[RunConfig, Path]:
    from sftjob_runtime.credentials import load_credentials

    load_credentials()  # in a pod: the mounted Secret files, before anything reads the environment
    cfg = load_run_config(file)
    # Relative paths in a manifest are relative to the manifest's folder.
    return cfg, Path(file).resolve().parent


def _fail(reason: Reason | str, message: str, code: int, **extra) -> int:
    print(f"error: {message}", file=sys.stderr)
    write_outcome(Outcome(ok=False, reason=str(getattr(reason, "value", reason)), message=message, **extra))
    return int(code)


def _sanity_json(result: SanityResult) -> None:
    print(json.dumps(result.model_dump(mode="json", exclude_none=True), indent=2))


class _Terminated(Exception):
    """SIGTERM outside training (loading, the sanity check, the export), where no checkpoint can be written."""


def _on_sigterm(signum, frame) -> None:
    raise _Terminated()


def _guarded(fn):
    """Turn user-fixable failures into one line + exit code; log a traceback only for real bugs."""

    def wrapper(*args, **kwargs) -> int:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            # During training transformers' just-in-time checkpoint takes SIGTERM over (and gives it back).
            signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return fn(*args, **kwargs)
        except _Terminated:
            return _fail(Reason.PREEMPTED, "stopped by SIGTERM outside training (loading, the sanity check or the "
                         "export), where there is nothing to checkpoint; the next pod runs this stage again",
                         ExitCode.INTERRUPTED)
        except ManifestError as e:
            for line in e.errors[1:]:
                print(f"error: {line}", file=sys.stderr)
            return _fail(Reason.INVALID_SPEC, e.errors[0], ExitCode.INVALID_CONFIG)
        except RuntimeFailure as e:
            if e.sanity is not None:
                return _fail(e.reason, f"sanity check failed: {e}", e.exit_code, sanity=e.sanity)
            return _fail(e.reason, str(e), e.exit_code)
        except KeyboardInterrupt:
            return 130
        except Exception as e:  # a bug or an environment failure: keep the trace in the log
            if _is_oom(e):  # before the run's settings were known (see _out_of_memory for the usual case)
                return _fail(Reason.OUT_OF_MEMORY, f"out of memory: {memory_hint(None, False)}", ExitCode.INTERNAL)
            traceback.print_exc()
            return _fail(Reason.INTERNAL_ERROR, f"internal error: {type(e).__name__}: {e}", ExitCode.INTERNAL)

    wrapper.__doc__ = fn.__doc__
    return wrapper


def _is_oom(e: Exception) -> bool:
    return type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower()


@contextlib.contextmanager
def _out_of_memory(prep, what: str):
    """An OOM becomes OutOfMemory with a hint that leaves out what this run already does."""
    try:
        yield
    except Exception as e:
        if not _is_oom(e):
            raise
        hint = memory_hint(prep.resolved.gradientCheckpointing, prep.cfg.training.lora is not None)
        raise RuntimeFailure(Reason.OUT_OF_MEMORY, f"out of memory during the {what}: {hint}", ExitCode.INTERNAL) from e


@_guarded
def preview(file: str, n: int = 3, as_json: bool = False) -> int:
    """`sftjob preview`, with the same one-line errors as run and sanity."""
    _quiet_libraries()
    from sftjob_runtime.preview import preview as show

    return show(file, n=n, as_json=as_json)


@_guarded
def sanity(file: str, as_json: bool = False) -> int:
    """Run the sanity check alone; exit 0 when it passes, SANITY_FAILED when it does not."""
    _quiet_libraries()
    from sftjob_runtime.sanity import run_sanity
    from sftjob_runtime.prepare import prepare_run

    state = ProgressState()
    server = serve_from_env(state)
    try:
        # Library chatter (the Trainer's log lines) goes to stderr: stdout carries only the report.
        with contextlib.redirect_stdout(sys.stderr):
            cfg, base = _load(file)
            prep = prepare_run(cfg, base)
            with _out_of_memory(prep, "sanity check"):
                result = run_sanity(prep, state)
    except (RuntimeFailure, ManifestError) as e:
        # A failure while preparing (config, data, template, model, memory) is a failed check too:
        # the report goes to stdout, the termination message and status.sanityCheck like any other.
        if isinstance(e, ManifestError):
            e = RuntimeFailure(Reason.INVALID_SPEC, "; ".join(e.errors), ExitCode.INVALID_CONFIG)
        result = e.sanity or SanityResult(passed=False, reason=str(getattr(e.reason, "value", e.reason)), message=str(e))
        (_sanity_json if as_json else _print_sanity)(result)
        message = f"sanity check failed: {result.message}" if e.sanity is not None else str(e)
        return _fail(result.reason, message, e.exit_code, sanity=result)
    finally:
        if server:
            server.stop()
    (_sanity_json if as_json else _print_sanity)(result)
    if not result.passed:
        return _fail(result.reason or Reason.SANITY_LOSS_NOT_DECREASING, f"sanity check failed: {result.message}",
                     ExitCode.SANITY_FAILED, sanity=result)
    write_outcome(Outcome(ok=True, reason="Passed", message=result.message, sanity=result))
    return 0


def _print_sanity(result: SanityResult) -> None:
    verdict = "PASSED" if result.passed else f"FAILED ({result.reason})"
    print(f"sanity check {verdict}: {result.message}")
    if result.rows is not None:
        print(f"  rows {result.rows}, fully masked {result.maskedRows}, truncated {result.truncatedRows}")
    if result.sample:
        print(f"  trained-on text of the first row: {result.sample!r}")


@_guarded
def run(file: str, output_dir: str | None = None, report_json: str | None = None, skip_sanity: bool = False) -> int:
    """The whole job: prepare → sanity (when enabled and not already passed) → train → export → summary."""
    _quiet_libraries()
    from sftjob_runtime.export import export_checkpoint
    from sftjob_runtime.hardware import is_main_process
    from sftjob_runtime.sanity import run_sanity
    from sftjob_runtime.prepare import prepare_run
    from sftjob_runtime.train import train

    cfg, base = _load(file)
    work = Path(output_dir) if output_dir else Path.cwd() / "runs" / cfg.name
    state = ProgressState()
    main = is_main_process()  # under torchrun only rank 0 reports and exports
    server = serve_from_env(state) if main else None
    try:
        prep = prepare_run(cfg, base)
        if main:
            _print_resolved(prep)
        # In a pod the init container has already run the check (and passed, or this would not start).
        if cfg.sanityCheck.enabled and not skip_sanity:
            print(f"sanity check: {cfg.sanityCheck.steps} steps on {min(cfg.sanityCheck.samples, len(prep.train.rows))} rows ...")
            with _out_of_memory(prep, "sanity check"):
                result = run_sanity(prep, state)
            _print_sanity(result)
            if not result.passed:
                return _fail(result.reason, f"sanity check failed: {result.message}", ExitCode.SANITY_FAILED, sanity=result)
        with _out_of_memory(prep, "training"):
            res = train(prep, work, state)
        if not main:
            return 0
        state.update(stage="exporting")
        dest = export_checkpoint(Path(res.best_dir), _output_location(cfg.output.uri, base),
                                 endpoint=cfg.output.endpoint, region=cfg.output.region,
                                 extra={"name": cfg.name, "step": res.best_step, "evalLoss": res.best_eval_loss})
        state.update(stage="done")
        _drop_mirror(cfg)
    finally:
        if server:
            server.stop()
    tidied = _tidy(work, Path(res.best_dir), dest, cfg.output.keepCheckpoints)
    if tidied.get("bestDir"):
        res.best_dir = tidied["bestDir"]
    report = {**res.as_dict(), "exportedTo": dest, "workDir": tidied}
    (work / "report.json").write_text(json.dumps(report, indent=2, default=str))
    if report_json:
        Path(report_json).write_text(json.dumps(report, indent=2, default=str))
    _print_summary(res, dest, tidied)
    write_outcome(Outcome(
        ok=True, reason=Reason.COMPLETED.value, message=f"best checkpoint at step {res.best_step} exported",
        bestCheckpoint=BestCheckpoint(uri=dest, step=res.best_step, evalLoss=res.best_eval_loss),
        evalLossBefore=res.eval_loss_before, evalLossAfter=res.eval_loss_after,
        resolved={k: v for k, v in res.resolved.items() if k != "origin"},
    ))
    return 0


def _output_location(uri: str, base: Path) -> str:
    """s3:// as given; file:// and plain paths resolved like every other path of the manifest."""
    from sftjob_runtime.prepare import resolve_path

    return uri if uri.startswith("s3://") else resolve_path(uri, base)


def _tidy(work: Path, best: Path, dest: str, keep_checkpoints: bool) -> dict:
    """After a successful export: one copy of the best model, and no checkpoints unless asked to keep them.

    A local export (file:// or a path, e.g. a pvc:// mount) is that one copy, so
    best/ goes; with s3:// the local best/ stays. A quickstart left 4.1 GB
    behind before: best/ and the export (517 MB each) plus checkpoints (3.1 GB).
    """
    done: dict = {"checkpoints": "kept" if keep_checkpoints else "pruned"}
    local = None if dest.startswith("s3://") else Path(dest.removeprefix("file://")).resolve()
    if local is not None and local != best.resolve() and (local / "sftjob-manifest.json").is_file():
        shutil.rmtree(best, ignore_errors=True)
        done["bestDir"] = str(local)
    checkpoints = work / "checkpoints"
    if keep_checkpoints:
        done["checkpointsDir"] = str(checkpoints)
    elif checkpoints.is_dir():
        shutil.rmtree(checkpoints, ignore_errors=True)
    return done


def _drop_mirror(cfg: RunConfig) -> None:
    """The exported model is safe: the resume copies on S3 are no longer needed (a failure only warns)."""
    from sftjob_runtime.checkpoint_sync import delete_mirror

    try:
        delete_mirror(cfg)
    except Exception as e:  # storage trouble here must not fail a finished job
        emit("checkpoint_mirror_not_deleted", level="warning", error=f"{type(e).__name__}: {e}"[:300])


def _print_resolved(prep) -> None:
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


def _print_summary(res, dest: str, tidied: dict) -> None:
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
    lines.append("=" * 72)
    print("\n".join(lines))
