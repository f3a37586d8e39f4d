"""The sanity gate: a few real steps before the full run, judged on the same rows before and after."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sftjob.report import Outcome
from sftjob_runtime.sanity import garbled
from tests.support.models import cpu_precision, demo_model_dir, tiny_model_dir  # noqa: F401 (fixtures)
from tests.test_train import write_job


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


def test_loss_that_does_not_fall_fails_the_gate_with_its_reason(tiny_model_dir, tmp_path, cpu_precision):  # noqa: F811
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


def test_demo_model_passes_the_gate(demo_model_dir, tmp_path):  # noqa: F811
    job = write_job(tmp_path, demo_model_dir, training={"learningRate": 1e-4, "maxSeqLength": 256},
                    sanity={"steps": 3, "samples": 8})
    term = tmp_path / "term"
    r = sanity_cli(job, term)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["passed"] is True and report["finalLoss"] < 0.98 * report["initialLoss"]
    assert report["sample"].endswith("<|im_end|>")  # the trained-on text of the first row, decoded
    assert Outcome.from_termination_message(term.read_text()).sanity.passed
