"""report.html: written by every run, however it ends, and opened in a real headless Chromium.

What a reader cares about: the page opens with no error and loads nothing
from the network; every section is there; the loss curve has a point per
logged step; a failed run says why; the report travels with the exported
model (and its manifest) and `sftjob report` renders it from a run
directory, an exported model or S3.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sftjob.vocabulary import ExitCode
from tests.support.browser import open_page
from tests.support.jobs import DATA, write_job
from tests.support.models import forced_precision

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ["summary", "curves", "warnings", "sanity", "examples", "settings", "plan", "samples"]


def _loss_steps(report: dict) -> list[int]:
    return [e["step"] for e in report["log_history"] if "loss" in e]


def _cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sftjob.cli", *args], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, cwd=cwd)


def _assert_clean(page) -> None:
    assert page.errors == [], page.errors
    assert [u for u in page.requests if not u.startswith("file://")] == [], page.requests  # nothing from the network
    assert len(page.requests) == 1  # the page itself: no image, font or script beside it
    assert page.scroll_width <= page.viewport_width, "the page scrolls sideways on a phone"


def _quickstart_sized(tmp: Path, model: Path) -> Path:
    """examples/quickstart.yaml as shipped (data, schedule, sanity check) on the tiny random model."""
    job = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    spec = job["spec"]
    spec["model"]["source"] = str(model)
    spec["dataset"].update(train=str(DATA / "quickstart-train.jsonl"), validation=str(DATA / "quickstart-val.jsonl"))
    spec["training"]["learningRate"] = 3e-3  # a random tiny model learns visibly in 8 sanity steps only this fast
    spec["output"] = {"uri": str(tmp / "export")}
    path = tmp / "quickstart.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


@pytest.mark.slow
def test_a_quickstart_sized_run_writes_a_report_that_opens_cleanly_in_chromium(tiny_model_dir, tmp_path, browser):
    from sftjob_runtime.entrypoint import run

    # The precision is forced (fp32 here, bf16 in the failure test below) whatever this CPU would pick.
    with forced_precision("fp32") as dtype:
        assert run(str(_quickstart_sized(tmp_path, tiny_model_dir)), output_dir=str(tmp_path / "work")) == 0
    work, export = tmp_path / "work", tmp_path / "export"
    report = json.loads((work / "report.json").read_text())
    logged = _loss_steps(report)
    assert report["outcome"]["ok"] and len(logged) >= report["steps"] // 5  # quickstart logs every 5 steps
    assert report["resolved"]["dtype"] == dtype

    shot = tmp_path / "report-phone.png"
    page = open_page(browser, work / "report.html", screenshot=shot)
    _assert_clean(page)
    assert page.sections == SECTIONS
    assert page.loss_points == len(logged)
    for expected in ("Succeeded", f"step {report['best_step']}", "Sanity check", "Passed", "Learning rate",
                     "Gradient norm", "Throughput", "Effective batch: 4 per device", "size default (<1B)",
                     "attention implementation", "Before training:", "After training:", "Pre-flight plan",
                     "DDP: fits the CPU's"):
        assert expected in page.text, expected
    assert "highlighted" in page.text.lower() and len(report["examples"]) == 2
    print(f"\nreport.html {(work / 'report.html').stat().st_size / 1024:.0f} KiB; phone screenshot {shot}")

    # The exported model carries the report, and its manifest vouches for it.
    manifest = json.loads((export / "sftjob-manifest.json").read_text())
    listed = {f["path"] for f in manifest["files"]}
    assert {"report.html", "report.json"} <= listed
    # `sftjob report` renders the exported copy again, the same page.
    r = _cli("report", str(export), "-o", str(tmp_path / "again.html"))
    assert r.returncode == 0, r.stderr
    again = open_page(browser, tmp_path / "again.html")
    _assert_clean(again)
    assert again.sections == SECTIONS and again.loss_points == len(logged)


@pytest.mark.slow
def test_a_failed_sanity_check_leaves_a_report_that_says_why_and_publishes_it_to_s3(tiny_model_dir, tmp_path, browser,
                                                                                      s3_server, s3_env):
    bucket = s3_server.bucket()
    job = write_job(tmp_path, tiny_model_dir, training={"learningRate": 1e-12}, sanity=True,
                    extra={"output": {"uri": f"s3://{bucket}/runs/failed", "endpoint": s3_server.endpoint}})
    with forced_precision("bf16") as dtype:
        r = _cli("run", str(job), "--output", str(tmp_path / "work"))
    assert r.returncode == ExitCode.SANITY_FAILED, r.stderr
    assert json.loads((tmp_path / "work" / "report.json").read_text())["resolved"]["dtype"] == dtype
    assert "Traceback" not in r.stderr and "run report:" in r.stderr

    page = open_page(browser, tmp_path / "work" / "report.html")
    _assert_clean(page)
    assert page.sections == SECTIONS
    assert "Failed: SanityLossNotDecreasing" in page.text and "raise spec.training.learningRate" in page.text
    assert "loss on the sampled rows" in page.text and "Training did not finish" in page.text

    # The pod's volume goes with the pod: the report is on S3, without a manifest (there is no model).
    keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert keys == {"runs/failed/report.html", "runs/failed/report.json"}
    r = _cli("report", f"s3://{bucket}/runs/failed", "--endpoint", s3_server.endpoint, "-o", str(tmp_path / "s3.html"))
    assert r.returncode == 0, r.stderr
    assert "Failed: SanityLossNotDecreasing" in open_page(browser, tmp_path / "s3.html").text
    # From the run directory, into the current directory by default.
    (tmp_path / "here").mkdir()
    r = _cli("report", str(tmp_path / "work"), cwd=tmp_path / "here")
    def same(path: Path) -> str:  # pygal names each chart with a fresh UUID
        return re.sub(r"chart-[0-9a-f-]{36}", "chart", path.read_text())

    assert r.returncode == 0, r.stderr
    assert same(tmp_path / "here" / "report.html") == same(tmp_path / "work" / "report.html")


@pytest.mark.slow
def test_in_a_pod_the_init_containers_sanity_findings_reach_the_train_containers_report(tiny_model_dir, tmp_path):
    # The pod's two commands, as jobspec renders them: sanity --output W, then run --skip-sanity --output W.
    job = write_job(tmp_path, tiny_model_dir, sanity=True, keep_checkpoints=False)
    work = tmp_path / "workspace"
    r = _cli("sanity", str(job), "--output", str(work), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads((work / "sanity.json").read_text())["sanity"]["passed"] is True
    r = _cli("run", str(job), "--output", str(work), "--skip-sanity")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "export" / "report.json").read_text())
    assert report["sanity"]["passed"] is True and report["sanity"]["initialLoss"] > report["sanity"]["finalLoss"]
    assert report["sanity"]["generation"] is not None


# --- the page itself, from a report.json (no training) ------------------------------------------


def _history(steps: int, *, gpu: bool = False) -> list[dict]:
    out = []
    for s in range(1, steps + 1):
        out.append({"step": s, "loss": 3.0 - s * 0.1, "learning_rate": 1e-4 * min(1, s / 3), "grad_norm": 2.0 / s,
                    "tokens_per_second": 900.0 + s, **({"gpu_memory_gb": 10.0 + s} if gpu else {})})
        if s % 2 == 0:
            out.append({"step": s, "eval_loss": 3.1 - s * 0.1})
    return out


def test_training_text_is_shown_as_text_never_run_as_markup():
    from sftjob_runtime.report_html import render_report

    html = render_report({"name": "x", "outcome": {"ok": False, "reason": "InternalError", "message": "<b>boom</b>"},
                          "examples": [{"source": "t.jsonl:1", "num_tokens": 3, "num_trained_tokens": 1, "truncated": False,
                                        "segments": [["<script>alert(1)</script>", False], ["</pre><img src=x>", True]]}]})
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img src=x>" not in html and "<mark>&lt;/pre&gt;&lt;img src=x&gt;</mark>" in html
    assert "<b>boom</b>" not in html and "<script" not in html  # no script at all, pygal's included


def test_charts_follow_what_was_logged():
    from sftjob_runtime.report_html import charts

    cpu = charts({"log_history": _history(6), "best_step": 6, "best_eval_loss": 2.5})
    assert sorted(cpu) == ["grad-norm", "learning-rate", "loss", "throughput"]
    assert "best checkpoint (step 6)" in cpu["loss"] and "warn above 10" in cpu["grad-norm"]
    assert "warn below 1e-06" in cpu["grad-norm"]
    assert "gpu-memory" in charts({"log_history": _history(6, gpu=True)})
    assert charts({"log_history": []}) == {}


def test_each_setting_says_where_its_value_came_from():
    from sftjob_runtime.report_html import _settings

    rows = {s["name"]: s["origin"] for s in _settings({"specFields": ["epochs", "maxSeqLength"], "resolved": {
        "sizeClass": "<1B", "learningRate": 1e-4, "epochs": 3.0, "evalSteps": 10, "gradientAccumulationSteps": 2,
        "maxSeqLength": 256, "seed": 42,
        "origin": {"learningRate": "default:<1B", "epochs": "spec", "evalSteps": "default:~10 evaluations"}}})}
    assert rows == {"learningRate": "size default (<1B)", "epochs": "spec", "evalSteps": "derived (~10 evaluations)",
                    "gradientAccumulationSteps": "derived: effectiveBatchSize / (perDeviceBatchSize x devices)",
                    "maxSeqLength": "spec", "seed": "default (the field's own, see docs/sftjob-reference.md)"}


def test_sftjob_report_names_what_is_missing_in_one_line(tmp_path):
    r = _cli("report", str(tmp_path))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "no report.json there" in r.stderr
    (tmp_path / "report.json").write_text("{not json")
    r = _cli("report", str(tmp_path))
    assert r.returncode == 1 and "not valid JSON" in r.stderr and "Traceback" not in r.stderr


def _failed_run_dir(tmp: Path) -> Path:
    work = tmp / "work"
    work.mkdir()
    (work / "report.html").write_text("<html>failed</html>")
    (work / "report.json").write_text(json.dumps({"name": "x", "outcome": {"ok": False}}))
    return work


def test_a_failed_runs_report_never_replaces_the_report_of_a_model_exported_there(tmp_path, s3_server, s3_env, monkeypatch):
    from sftjob_runtime.run_report import publish_failure_report

    work = _failed_run_dir(tmp_path)
    fresh, exported = tmp_path / "fresh", tmp_path / "exported"
    assert publish_failure_report(work, str(fresh), endpoint=None, region=None) == str(fresh / "report.html")
    assert sorted(p.name for p in fresh.iterdir()) == ["report.html", "report.json"]
    exported.mkdir()
    for name, text in (("sftjob-manifest.json", "{}"), ("report.html", "<html>good</html>")):
        (exported / name).write_text(text)
    assert publish_failure_report(work, f"file://{exported}", endpoint=None, region=None).endswith("failed-run-report.html")
    assert (exported / "report.html").read_text() == "<html>good</html>"
    assert (exported / "failed-run-report.json").is_file()

    bucket = s3_server.bucket()
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="m/sftjob-manifest.json", Body=b"{}")
    assert publish_failure_report(work, f"s3://{bucket}/m", endpoint=s3_server.endpoint,
                                  region=None) == f"s3://{bucket}/m/failed-run-report.html"
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {"m/sftjob-manifest.json", "m/failed-run-report.html", "m/failed-run-report.json"}

    # A scheme this process cannot write (pvc:// outside a pod) is left alone: nothing appears in the cwd.
    monkeypatch.chdir(tmp_path)
    assert publish_failure_report(work, "pvc://claim/models", endpoint=None, region=None) is None
    assert not (tmp_path / "pvc:").exists()


def test_a_report_that_cannot_be_written_is_a_warning_not_a_new_outcome(tmp_path, capsys):
    from sftjob_runtime.run_report import RunRecord, write_report

    blocked = tmp_path / "file"
    blocked.write_text("")
    record = RunRecord("x")
    record.save_sanity(blocked)  # nothing to save yet: no error either
    record.sanity = {"passed": True}
    record.save_sanity(blocked / "sub")  # a file where the directory should be
    assert write_report(record, blocked / "sub") is None
    err = capsys.readouterr().err
    assert '"event": "report_incomplete"' in err and '"event": "report_not_written"' in err
