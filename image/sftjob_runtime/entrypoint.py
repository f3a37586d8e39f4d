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
import os
import shutil
import sys
import traceback
from pathlib import Path

from sftjob.manifest import ManifestError
from sftjob.report import BestCheckpoint, Outcome, SanityResult
from sftjob.runconfig import RunConfig, load_run_config
from sftjob.spec import unavailable_errors
from sftjob.vocabulary import ENV_TERMINATION_LOG, TERMINATION_LOG, ExitCode, Reason, memory_hint
from sftjob_runtime import console
from sftjob_runtime.errors import RuntimeFailure, Terminated
from sftjob_runtime.events import emit
from sftjob_runtime.plan_job import summary as plan_summary
from sftjob_runtime.progress_server import ProgressState, serve_from_env
from sftjob_runtime.run_report import REPORT_HTML, REPORT_JSON, RunRecord, publish_failure_report, write_report


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
    unavailable = unavailable_errors(strategy=cfg.strategy)
    if unavailable:
        # Refused here, before anything is fetched, by `run` and by the sanity init container alike (the
        # operator refuses the same before it creates a Job): e.g. strategy fsdp, as this runtime trains
        # data-parallel (`auto` runs DDP, and status.plan says when only FSDP would fit).
        raise RuntimeFailure(Reason.INVALID_SPEC, "; ".join(unavailable), ExitCode.INVALID_CONFIG)
    # Relative paths in a manifest are relative to the manifest's folder.
    return cfg, Path(file).resolve().parent


def _fail(reason: Reason | str, message: str, code: int, **extra) -> int:
    print(f"error: {message}", file=sys.stderr)
    write_outcome(Outcome(ok=False, reason=str(getattr(reason, "value", reason)), message=message, **extra))
    return int(code)


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def _outcome_of(e: BaseException) -> tuple[str, str, int]:
    """(reason, one-line message, exit code) of the exception that ended a command: for the exit, the
    termination message and the run report alike."""
    if isinstance(e, Terminated):
        return (Reason.PREEMPTED.value, "stopped by SIGTERM outside training (loading, the sanity check or the export), "
                "where there is nothing to checkpoint; the next pod runs this stage again", ExitCode.INTERRUPTED)
    if isinstance(e, ManifestError):
        return Reason.INVALID_SPEC.value, e.errors[0], ExitCode.INVALID_CONFIG
    if isinstance(e, RuntimeFailure):
        reason = str(getattr(e.reason, "value", e.reason))
        return reason, (f"sanity check failed: {e}" if e.sanity is not None else str(e)), e.exit_code
    if isinstance(e, KeyboardInterrupt):
        return "Interrupted", "stopped by Ctrl-C", 130
    if _is_oom(e):  # before the run's settings were known (see _out_of_memory for the usual case)
        return Reason.OUT_OF_MEMORY.value, f"out of memory: {memory_hint(None, False)}", ExitCode.INTERNAL
    return Reason.INTERNAL_ERROR.value, f"internal error: {type(e).__name__}: {e}", ExitCode.INTERNAL


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
        except KeyboardInterrupt:
            return 130
        except Exception as e:
            if isinstance(e, ManifestError):
                for line in e.errors[1:]:
                    print(f"error: {line}", file=sys.stderr)
            elif not isinstance(e, (Terminated, RuntimeFailure)) and not _is_oom(e):
                traceback.print_exc()  # a bug or an environment failure: keep the trace in the log
            reason, message, code = _outcome_of(e)
            sanity = e.sanity if isinstance(e, RuntimeFailure) else None
            return _fail(reason, message, code, **({"sanity": sanity} if sanity is not None else {}))

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


# How long another node waits for node 0's check (model download included); the Job's
# activeDeadlineSeconds, and node 0's own failure, end the wait sooner.
LEADER_WAIT_SECONDS = 24 * 3600


@_guarded
def sanity(file: str, as_json: bool = False, output_dir: str | None = None) -> int:
    """Run the sanity check alone; exit 0 when it passes, SANITY_FAILED when it does not.

    With `output_dir` (the training pod's work volume) its findings stay there
    for the train container's report, and a failure writes the run report.
    """
    from sftjob_runtime import nodes

    endpoint = nodes.leader_endpoint()
    if endpoint is not None and nodes.node_index() != 0:
        # A multi-node job checks once, on node 0; this node waits for node 0 to start training.
        waited = nodes.wait_for_leader(endpoint, LEADER_WAIT_SECONDS)
        message = f"node {nodes.node_index()}: node 0 ran the sanity check and started training (waited {waited:.0f} s)"
        print(message)
        write_outcome(Outcome(ok=True, reason="Passed", message=message))
        return 0
    _quiet_libraries()
    from sftjob_runtime.sanity import failure as sanity_failure, run_sanity
    from sftjob_runtime.prepare import prepare_run

    state = ProgressState()
    server = serve_from_env(state)
    cfg = base = None
    record = RunRecord(Path(file).stem)
    try:
        # Library chatter (the Trainer's log lines) goes to stderr: stdout carries only the report.
        with contextlib.redirect_stdout(sys.stderr), _reporting(record, output_dir, state, lambda: (cfg, base)):
            cfg, base = _load(file)
            record.name = cfg.name
            prep = prepare_run(cfg, base)
            record.prepared(prep)
            record.planned(file, prep)
            with _out_of_memory(prep, "sanity check"):
                result = run_sanity(prep, state, record)
            if output_dir:
                record.save_sanity(Path(output_dir), state)
            if not result.passed:
                raise sanity_failure(result)
    except (RuntimeFailure, ManifestError) as e:
        # A failure while preparing (config, data, template, model, memory) is a failed check too:
        # the report goes to stdout, the termination message and status.sanityCheck like any other.
        if isinstance(e, ManifestError):
            e = RuntimeFailure(Reason.INVALID_SPEC, "; ".join(e.errors), ExitCode.INVALID_CONFIG)
        result = e.sanity or SanityResult(passed=False, reason=str(getattr(e.reason, "value", e.reason)), message=str(e))
        (console.sanity_json if as_json else console.print_sanity)(result)
        message = f"sanity check failed: {result.message}" if e.sanity is not None else str(e)
        return _fail(result.reason, message, e.exit_code, sanity=result, plan=plan_summary(record.plan))
    finally:
        if server:
            server.stop()
    (console.sanity_json if as_json else console.print_sanity)(result)
    write_outcome(Outcome(ok=True, reason="Passed", message=result.message, sanity=result, plan=plan_summary(record.plan)))
    return 0


def report(location: str, out: str | None = None, *, endpoint: str | None = None, region: str | None = None) -> int:
    """`sftjob report`: report.html from a run directory, an exported model or an output URI; exit 0, or 1 with one line."""
    from sftjob_runtime import s3
    from sftjob_runtime.report_html import render_report
    from sftjob_runtime.run_report import read_report

    try:
        data = read_report(location, endpoint=endpoint, region=region)
    except FileNotFoundError:
        print(f"error: {location}: no {REPORT_JSON} there; give a run directory (runs/<name>), an exported model "
              "or the job's spec.output.uri", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"error: {location}: {REPORT_JSON} is not valid JSON ({e})", file=sys.stderr)
        return 1
    except s3.storage_errors() as e:
        print(f"error: {location}: {s3.describe(e, field=location)}", file=sys.stderr)
        return 1
    if not isinstance(data, dict) or "name" not in data:
        print(f"error: {location}: {REPORT_JSON} is not an sftjob run report", file=sys.stderr)
        return 1
    target = Path(out) if out else Path.cwd() / REPORT_HTML
    try:
        target.write_text(render_report(data), encoding="utf-8")
    except OSError as e:
        print(f"error: -o {target}: cannot write ({e.strerror or e})", file=sys.stderr)
        return 1
    print(f"{target} ({target.stat().st_size / 1024:.0f} KiB): open it in a browser")
    return 0


@_guarded
def run(file: str, output_dir: str | None = None, report_json: str | None = None, skip_sanity: bool = False) -> int:
    """The whole job: prepare → sanity (when enabled and not already passed) → train → export → summary."""
    _quiet_libraries()
    from sftjob_runtime.export import destination, export_checkpoint
    from sftjob_runtime.hardware import is_main_process
    from sftjob_runtime.sanity import failure as sanity_failure, run_sanity
    from sftjob_runtime.prepare import prepare_run
    from sftjob_runtime.train import train

    cfg, base = _load(file)
    work = Path(output_dir) if output_dir else Path.cwd() / "runs" / cfg.name
    state = ProgressState()
    main = is_main_process()  # under torchrun only rank 0 reports and exports
    server = serve_from_env(state) if main else None
    record = RunRecord(cfg.name)
    try:
        with _reporting(record, work if main else None, state, lambda: (cfg, base)):
            prep = prepare_run(cfg, base)
            record.prepared(prep)
            if main:
                record.planned(file, prep)
                console.print_resolved(prep)
            # In a pod the init container has already run the check (and passed, or this would not start).
            if cfg.sanityCheck.enabled and not skip_sanity:
                print(f"sanity check: {cfg.sanityCheck.steps} steps on {min(cfg.sanityCheck.samples, len(prep.train.rows))} rows ...")
                with _out_of_memory(prep, "sanity check"):
                    result = run_sanity(prep, state, record)
                console.print_sanity(result)
                if not result.passed:
                    raise sanity_failure(result)
            elif cfg.sanityCheck.enabled:
                record.load_sanity(work)  # what the init container found (a stale file of a disabled check is ignored)
            with _out_of_memory(prep, "training"):
                res = train(prep, work, state, record)
            if not main:
                return 0
            location = _output_location(cfg.output.uri, base)
            done = f"best checkpoint at step {res.best_step} exported"
            # The report travels inside the exported model (and so in its manifest).
            record.result = {**res.as_dict(), "exportedTo": destination(location)}
            record.finish(True, Reason.COMPLETED.value, done, state)
            write_report(record, Path(res.best_dir))
            state.update(stage="exporting")
            try:
                dest = export_checkpoint(Path(res.best_dir), location, endpoint=cfg.output.endpoint, region=cfg.output.region,
                                         extra={"name": cfg.name, "step": res.best_step, "evalLoss": res.best_eval_loss})
            except BaseException:
                for name in (REPORT_HTML, REPORT_JSON):  # the local best is kept; a report saying "exported" is not
                    (Path(res.best_dir) / name).unlink(missing_ok=True)
                record.result.pop("exportedTo", None)
                raise
            state.update(stage="done")
            _drop_mirror(cfg)
    finally:
        if server:
            server.stop()
    tidied = _tidy(work, Path(res.best_dir), dest, cfg.output.keepCheckpoints)
    if tidied.get("bestDir"):
        res.best_dir = tidied["bestDir"]
    record.result = {**res.as_dict(), "exportedTo": dest, "workDir": tidied}
    record.finish(True, Reason.COMPLETED.value, done, state)  # again: the export's warnings too
    html = write_report(record, work)
    if report_json:
        Path(report_json).write_text(json.dumps(record.to_dict(), indent=2, default=str))
    console.print_summary(res, dest, tidied, html)
    write_outcome(Outcome(
        ok=True, reason=Reason.COMPLETED.value, message=done,
        bestCheckpoint=BestCheckpoint(uri=dest, step=res.best_step, evalLoss=res.best_eval_loss),
        evalLossBefore=res.eval_loss_before, evalLossAfter=res.eval_loss_after,
        resolved={k: v for k, v in res.resolved.items() if k != "origin"},
        plan=plan_summary(record.plan),
    ))
    return 0


@contextlib.contextmanager
def _reporting(record: RunRecord, work: str | Path | None, state: ProgressState, job):
    """However the block ends in failure, the run report is written to `work` and published to spec.output.uri.

    `job` returns (run config, manifest folder) once they are loaded. A
    preemption (or Ctrl-C) writes the report only locally: the next pod carries on.
    """
    try:
        yield
    except BaseException as e:
        if work is not None:
            reason, message, _ = _outcome_of(e)
            record.finish(False, reason, message, state)
            html = write_report(record, Path(work))
            cfg, base = job()
            if html is not None and cfg is not None and reason not in (Reason.PREEMPTED.value, "Interrupted"):
                where = publish_failure_report(Path(work), _output_location(cfg.output.uri, base),
                                               endpoint=cfg.output.endpoint, region=cfg.output.region)
                print(f"run report: {html}" + (f" (also at {where})" if where and where != str(html) else ""),
                      file=sys.stderr)
        raise


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
