"""The sanity gate: a few real steps before the full run, judged on the same rows before and after."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from sftjob.report import Outcome
from sftjob_runtime.sanity import garbled
from tests.support.jobs import write_job

# The gate trains real steps (the data checks load a tokenizer and tokenize the data first).
pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "the generation is empty"),
        ("   \n ", "the generation is empty"),
        ("\x00\x01\x02\x03 abc", "printable"),
        ("the the the the the the the the the", "repeats 'the'"),
        ('{"order_id":8201,"quantity":1,"item":"brown wallet"}', None),
        ("Paris is the capital of France.", None),
    ],
)
def test_garbled_generation_is_recognised(text, why):
    found = garbled(text)
    assert (found is None) if why is None else (why in found)


def sanity_cli(job, term) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SFTJOB_TERMINATION_LOG": str(term)}
    return subprocess.run([sys.executable, "-m", "sftjob.cli", "sanity", str(job), "--json"],
                          capture_output=True, text=True, timeout=600, env=env)


def test_loss_that_does_not_fall_fails_the_gate_with_its_reason(tiny_model_dir, tmp_path, cpu_precision):
    # A learning rate that cannot move the weights: the same rows score the same before and after.
    job = write_job(tmp_path, tiny_model_dir, training={"learningRate": 1e-12}, sanity=True)
    term = tmp_path / "term"
    r = sanity_cli(job, term)
    assert r.returncode == 10, r.stderr
    report = json.loads(r.stdout)
    assert report["passed"] is False and report["reason"] == "SanityLossNotDecreasing"
    assert report["initialLoss"] == pytest.approx(report["finalLoss"], rel=1e-3)
    assert report["rows"] == 16 and report["maskedRows"] == 0
    assert "raise spec.training.learningRate" in r.stderr and "Traceback" not in r.stderr
    outcome = Outcome.from_termination_message(term.read_text())
    assert not outcome.ok and outcome.reason == "SanityLossNotDecreasing" and outcome.sanity.finalLoss is not None
    # status.plan: the pre-flight plan the check made with this model and data (a CPU job: the pod's memory).
    plan = outcome.plan
    assert (plan.strategy, plan.fits, plan.devices) == ("ddp", True, 1)
    assert plan.memory == "64 GiB of memory (spec.resources.memory)" and plan.usableBytes == 64 * 2**30
    assert 0 < plan.ddpPeakBytes < 2**30 and plan.message.startswith("fits the CPU's 64 GiB of memory under DDP")


def test_demo_model_passes_the_gate(demo_model_dir, tmp_path):
    job = write_job(tmp_path, demo_model_dir, training={"learningRate": 1e-4, "maxSeqLength": 256},
                    sanity={"steps": 3, "samples": 8})
    term = tmp_path / "term"
    r = sanity_cli(job, term)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["passed"] is True and report["finalLoss"] < 0.98 * report["initialLoss"]
    assert report["sample"].endswith("<|im_end|>")  # the trained-on text of the first row, decoded
    assert Outcome.from_termination_message(term.read_text()).sanity.passed


# -- broken variants of a good job: each fails with its own reason, the report on stdout ------------------


def rewrite_rows(path, change):
    """Apply `change(index, row)` to every JSONL row of a data file (returns the row to write)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    path.write_text("".join(json.dumps(change(i, row)) + "\n" for i, row in enumerate(rows)))


def failed_report(job, tmp_path, reason):
    term = tmp_path / "term"
    r = sanity_cli(job, term)
    assert r.returncode == 10, r.stderr[-2000:]
    report = json.loads(r.stdout)  # stdout holds the report, whatever failed
    assert report["passed"] is False and report["reason"] == reason, report
    assert "Traceback" not in r.stderr
    outcome = Outcome.from_termination_message(term.read_text())
    assert (outcome.ok, outcome.reason, outcome.sanity.reason) == (False, reason, reason)
    return report


def test_every_answer_truncated_names_the_length_that_fits(tiny_model_dir, tmp_path):
    job = write_job(tmp_path, tiny_model_dir, training={"maxSeqLength": 20}, sanity=True)
    report = failed_report(job, tmp_path, "SanityTruncated")
    assert report["truncatedAnswers"] == report["rows"] == report["maskedRows"] == 48
    assert report["suggestedMaxSeqLength"] % 64 == 0 and report["suggestedMaxSeqLength"] >= 64
    assert f"set spec.training.maxSeqLength to at least {report['suggestedMaxSeqLength']}" in report["message"]
    assert "48 lose the whole answer" in report["message"]


def test_a_share_of_truncated_answers_fails_above_the_threshold(tiny_model_dir, tmp_path):
    job = write_job(tmp_path, tiny_model_dir, sanity=True)
    padding = " Please double-check every field before you answer." * 30
    rewrite_rows(tmp_path / "train.jsonl", lambda i, row: {"messages": [
        {**m, "content": m["content"] + padding} if m["role"] == "user" and i % 4 == 0 else m for m in row["messages"]]})
    report = failed_report(job, tmp_path, "SanityTruncated")
    assert report["truncatedAnswers"] == 12 and report["rows"] == 48 and report["maskedRows"] < 48
    assert "12 of 48 training rows lose answer tokens to spec.training.maxSeqLength=256" in report["message"]
    assert report["suggestedMaxSeqLength"] > 256


def test_whitespace_only_answers_fail_naming_the_rows(tiny_model_dir, tmp_path):
    job = write_job(tmp_path, tiny_model_dir, sanity=True)
    rewrite_rows(tmp_path / "train.jsonl", lambda i, row: {"messages": [
        {**m, "content": "  \n "} if m["role"] == "assistant" and i in (2, 7) else m for m in row["messages"]]})
    report = failed_report(job, tmp_path, "SanityEmptyAnswers")
    assert report["emptyAnswers"] == 2
    assert "train.jsonl:3, " in report["message"] and "train.jsonl:8" in report["message"]


def test_a_template_without_an_end_marker_fails_before_any_step(tiny_model_dir, tmp_path):
    # Generation markers around the content only: the turn's end is never trained.
    plain = ("{%- for m in messages -%}{%- if m['role'] == 'assistant' -%}assistant: {% generation %}{{ m['content'] }}"
             "{% endgeneration %}\n{% else -%}{{ m['role'] }}: {{ m['content'] }}\n{% endif -%}{%- endfor -%}"
             "{%- if add_generation_prompt %}assistant: {% endif -%}")
    job = write_job(tmp_path, tiny_model_dir, sanity=True, extra={})
    spec = yaml.safe_load(job.read_text())
    spec["spec"]["model"]["chatTemplate"] = plain
    job.write_text(yaml.safe_dump(spec))
    report = failed_report(job, tmp_path, "SanityNoEndOfTurn")
    assert "would never learn to stop" in report["message"] and "initialLoss" not in report


def test_labels_that_lost_the_eos_to_pad_masking_fail(demo_model_dir):
    """pad == eos (SmolLM2): masking labels by pad id (the classic collator bug) drops the end of turn."""
    from transformers import AutoTokenizer

    from sftjob.runconfig import RunConfig, RunModel, RunOutput
    from sftjob.spec import DatasetSpec
    from sftjob_runtime.chat_templates import resolve_chat_template
    from sftjob_runtime.data import Example
    from sftjob_runtime.masking import ConversationMasker
    from sftjob_runtime.prepare import tokenize_split
    from sftjob_runtime.sanity import data_findings

    tok = AutoTokenizer.from_pretrained(demo_model_dir)
    assert tok.pad_token_id == tok.eos_token_id
    masker = ConversationMasker(tok, resolve_chat_template(tok, None))
    conversation = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    split = tokenize_split(masker, [Example(conversation, "t.jsonl:1")], 256)
    cfg = RunConfig(name="x", model=RunModel(source="m"), dataset=DatasetSpec(train="t"), output=RunOutput(uri="/o"))
    assert data_findings(cfg, split, tok, masker.end_of_turn) is None  # our labels keep <|im_end|>
    row = split.rows[0]
    row.labels[:] = [-100 if label == tok.pad_token_id else label for label in row.labels]
    found = data_findings(cfg, split, tok, masker.end_of_turn)
    assert found is not None and found.reason == "SanityNoEndOfTurn"


def test_a_diverging_loss_is_told_to_lower_the_learning_rate(tiny_model_dir, tmp_path):
    job = write_job(tmp_path, tiny_model_dir, training={"learningRate": 1.0}, sanity=True)
    report = failed_report(job, tmp_path, "SanityDiverged")
    assert "lower spec.training.learningRate 3x (to 0.333)" in report["message"]
    assert "raise" not in report["message"]


def test_a_good_prompt_completion_job_passes_with_a_preset(demo_model_dir, tmp_path):
    """A second good job, unlike the first: conversational prompt-completion rows and the chatml preset."""
    job = write_job(tmp_path, demo_model_dir, training={"learningRate": 1e-4}, sanity={"steps": 3, "samples": 8})
    for name in ("train.jsonl", "val.jsonl"):
        rewrite_rows(tmp_path / name, lambda i, row: {"prompt": row["messages"][:-1], "completion": row["messages"][-1:]})
    spec = yaml.safe_load(job.read_text())
    spec["spec"]["model"]["chatTemplate"] = "chatml"
    spec["spec"]["dataset"]["format"] = "prompt-completion"
    job.write_text(yaml.safe_dump(spec))
    r = sanity_cli(job, tmp_path / "term")
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout)
    assert report["passed"] is True and report["maskedRows"] == 0


def test_sigterm_during_the_sanity_check_ends_with_its_own_outcome(tiny_model_dir, tmp_path):
    """Nothing to checkpoint in the gate: SIGTERM ends it at once with Preempted and exit 13, never a traceback."""
    import signal
    import threading
    import time

    job = write_job(tmp_path, tiny_model_dir, sanity={"steps": 60, "samples": 16})
    term = tmp_path / "term"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SFTJOB_EVENTS": "all", "SFTJOB_TERMINATION_LOG": str(term)}
    proc = subprocess.Popen([sys.executable, "-m", "sftjob.cli", "sanity", str(job), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(proc.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    while not any('"event": "train_log"' in line for line in list(seen)):
        assert proc.poll() is None and time.monotonic() < deadline, "".join(seen)[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 13
    reader.join(timeout=5)
    assert "Traceback" not in "".join(seen)
    outcome = Outcome.from_termination_message(term.read_text())
    assert (outcome.ok, outcome.reason) == (False, "Preempted")
