"""The run report: what one run did, gathered as it goes and written at its end, however it ends.

`RunRecord` collects the resolved settings, the pre-flight plan, two training
examples as the trainer sees them, the sanity check, the trainer's log history and every
warning with its step. At the end (a finished run, a failed sanity check, a
crash) it is written as `report.json` and rendered as `report.html`
(`report_html`) in the work directory. A successful run ships both inside
the exported model, so they are in its manifest; a failed one publishes
them to `spec.output.uri` when it can, so the report of a pod whose volume
is gone can still be read with `sftjob report OUTPUT_URI`.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from sftjob_runtime.errors import Terminated
from sftjob_runtime.events import emit

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
# What the sanity init container leaves for the train container (same work volume).
SANITY_JSON = "sanity.json"
# A failed run's report beside a model exported earlier to the same place: that model's report stays.
FAILED_PREFIX = "failed-run-"
EXAMPLES_SHOWN = 2


class RunRecord:
    """Everything report.html shows; each part is filled in when the run gets there."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = time.time()
        self.outcome: dict = {"ok": False, "reason": "InternalError", "message": "the run did not finish"}
        self.setup: dict = {}  # model, resolved (with origins), hardware, data counts
        self.examples: list[dict] = []
        self.sanity: dict | None = None
        self.plan: dict | None = None  # plan_job.build_plan's
        self.history: list[dict] = []
        self.history_of = None  # a callback whose `history` is the trainer's log, while training runs
        self.warnings: list[dict] = []
        self.earlier_warnings: list[dict] = []  # raised in the init container (sanity.json)
        self.result: dict = {}  # train.TrainResult, once training finished

    def prepared(self, prep) -> None:
        """What was decided before the first step, and the first training examples as tokenized."""
        from sftjob_runtime.masking import labelled_segments

        with _only_warns("report_incomplete"):
            spec_fields = sorted(prep.cfg.training.model_fields_set)
            self.setup = {"model": prep.cfg.model.source, "resolved": prep.resolved.as_dict(), "specFields": spec_fields,
                          "hardware": prep.hardware.as_dict(), "data": prep.data_counts()}
            self.examples = [
                {"source": ex.source, "num_tokens": row.num_tokens, "num_trained_tokens": row.num_trained_tokens,
                 "truncated": row.truncated, "segments": labelled_segments(prep.tokenizer, row.input_ids, row.labels)}
                for ex, row in list(zip(prep.train.examples, prep.train.rows))[:EXAMPLES_SHOWN]
            ]

    def planned(self, file: str, prep) -> None:
        """The pre-flight plan (`sftjob plan`) of this run, from the model and data it already loaded."""
        from sftjob_runtime.plan_job import build_plan, tokenized_counts

        with _only_warns("report_incomplete"):
            gpu = None
            if prep.hardware.device == "cuda":  # in the pod: the card it got, not a guess from labels
                import torch

                gpu = f"{torch.cuda.get_device_properties(0).total_memory // 2**20}Mi"
            self.plan = build_plan(file, model_dir=prep.model_path, data=tokenized_counts(prep.train.rows), gpu_memory=gpu)

    def sanity_done(self, result, generation: str | None = None, history: list[dict] | None = None) -> None:
        """The sanity check's findings (a `SanityResult`), the text generated after its steps and its log."""
        self.sanity = {**result.model_dump(mode="json", exclude_none=True), "generation": generation,
                       "log_history": list(history or [])}

    def load_sanity(self, work_dir: Path) -> None:
        """The sanity check the init container ran in this pod (its `sanity.json`), when there is one."""
        path = Path(work_dir) / SANITY_JSON
        if self.sanity is None and path.is_file():
            with _only_warns("report_incomplete"):
                saved = json.loads(path.read_text())
                self.sanity, self.earlier_warnings = saved.get("sanity"), saved.get("warnings") or []

    def save_sanity(self, work_dir: Path, state=None) -> None:
        """Leave the sanity findings and the warnings so far on the work volume for the train container's report."""
        if self.sanity is None:
            return
        with _only_warns("report_incomplete"):
            Path(work_dir).mkdir(parents=True, exist_ok=True)
            saved = {"sanity": self.sanity, "warnings": state.logged_warnings() if state is not None else []}
            (Path(work_dir) / SANITY_JSON).write_text(json.dumps(saved, indent=2, default=str))

    def finish(self, ok: bool, reason: str, message: str, state=None) -> None:
        """The outcome, and every warning raised so far (`state`: the run's ProgressState)."""
        self.outcome = {"ok": ok, "reason": reason, "message": message}
        if state is not None:
            self.warnings = state.logged_warnings()

    def to_dict(self) -> dict:
        """report.json: the train result's keys (as before) plus what the HTML report needs."""
        history = self.history_of.history if self.history_of is not None else self.history
        elapsed = round(time.time() - self.started, 1)
        # duration_seconds: until it ended, unless training finished (then TrainResult's: training alone).
        base = {"name": self.name, "duration_seconds": elapsed, **self.setup}
        return {**base, **self.result, "outcome": self.outcome, "started": self.started, "run_seconds": elapsed,
                "examples": self.examples,
                "sanity": self.sanity, "plan": self.plan, "log_history": [dict(e) for e in history],
                "warning_events": self.earlier_warnings + self.warnings}


@contextlib.contextmanager
def _only_warns(event: str, **fields):
    """Trouble with the report is a warning (`event`, with `fields`): the run's own outcome stands. SIGTERM still ends it."""
    from sftjob_runtime import s3

    try:
        yield
    except Terminated:
        raise
    except Exception as e:  # noqa: BLE001 - a report must never change the outcome of the run it describes
        emit(event, level="warning", **fields, error=s3.describe(e)[:300])


def write_report(record: RunRecord, directory: Path) -> Path | None:
    """Write report.json and report.html into directory; returns the HTML's path (None when it could not be made).

    A report must never change the outcome of the run it describes: a failure here is a warning.
    """
    from sftjob_runtime.report_html import render_report

    directory = Path(directory)
    with _only_warns("report_not_written", directory=str(directory)):
        data = record.to_dict()
        directory.mkdir(parents=True, exist_ok=True)
        (directory / REPORT_JSON).write_text(json.dumps(data, indent=2, default=str))
        html = directory / REPORT_HTML
        html.write_text(render_report(data), encoding="utf-8")
        return html
    return None


def publish_failure_report(directory: Path, uri: str, *, endpoint: str | None, region: str | None) -> str | None:
    """Copy a failed run's report.json/html to spec.output.uri (an S3 prefix or a directory); returns where.

    The training pod's volume goes with the pod: this is where a failed run's
    report survives. Only the two report files are written (no manifest: there
    is no model); where a model was exported before, they are `failed-run-report.*`,
    so that model's own report stays. A storage error is a warning.
    """
    from sftjob_runtime import s3
    from sftjob_runtime.export import MANIFEST

    files = [Path(directory) / n for n in (REPORT_HTML, REPORT_JSON) if (Path(directory) / n).is_file()]
    if not files or ("://" in uri and not uri.startswith(("s3://", "file://"))):
        return None  # another scheme (pvc:// outside a pod) is not somewhere this process can write
    with _only_warns("report_not_published", uri=uri):
        if uri.startswith("s3://"):
            bucket, prefix = s3.split(uri)
            client = s3.client(endpoint, region)

            def key(name: str) -> str:
                return f"{prefix.strip('/')}/{name}".lstrip("/")

            # A model exported there earlier keeps its own report (its manifest vouches for it).
            names = _names(s3.exists(client, bucket, key(MANIFEST)))
            for f in files:
                kind = "text/html; charset=utf-8" if f.suffix == ".html" else "application/json"
                s3.put_bytes(client, bucket, key(names[f.name]), f.read_bytes(), content_type=kind)
            return f"{uri.rstrip('/')}/{names[REPORT_HTML]}"
        dest = Path(uri.removeprefix("file://")).expanduser()
        if dest.resolve() == Path(directory).resolve():
            return str(dest / REPORT_HTML)
        names = _names((dest / MANIFEST).is_file())
        dest.mkdir(parents=True, exist_ok=True)
        for f in files:
            (dest / names[f.name]).write_bytes(f.read_bytes())
        return str(dest / names[REPORT_HTML])
    return None


def _names(exported: bool) -> dict[str, str]:
    """The names a failed run's report files get at the output: beside an exported model, names of their own."""
    return {n: (FAILED_PREFIX + n if exported else n) for n in (REPORT_HTML, REPORT_JSON)}


def read_report(location: str, *, endpoint: str | None = None, region: str | None = None) -> dict:
    """report.json of a run directory, an exported model directory or an output URI (s3://, file://, a path)."""
    from sftjob_runtime import s3

    if location.startswith("s3://"):
        bucket, prefix = s3.split(location)
        key = f"{prefix.strip('/')}/{REPORT_JSON}".lstrip("/")
        body = s3.client(endpoint, region).get_object(Bucket=bucket, Key=key)["Body"].read()
        return json.loads(body)
    path = Path(location.removeprefix("file://")).expanduser()
    return json.loads((path / REPORT_JSON if path.is_dir() else path).read_text())
