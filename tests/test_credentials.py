"""Credentials reach the runtime as mounted files; a missing Secret fails at once naming its spec field."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sftjob.report import Outcome
from sftjob.vocabulary import ENV_SECRET_FILES, ENV_SECRETS_DIR
from sftjob_runtime.credentials import load_credentials
from sftjob_runtime.errors import RuntimeFailure

EXPECTED = {
    "hf-token": "spec.model.tokenSecretRef (Secret hf-token, key token)",
    "aws-access-key-id": "spec.output.credentialsSecretRef (Secret s3-creds, key AWS_ACCESS_KEY_ID)",
    "aws-secret-access-key": "spec.output.credentialsSecretRef (Secret s3-creds, key AWS_SECRET_ACCESS_KEY)",
}


@pytest.fixture
def mounted(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_SECRETS_DIR, str(tmp_path))
    monkeypatch.setenv(ENV_SECRET_FILES, json.dumps(EXPECTED))
    for name in ("HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_mounted_files_become_the_environment(mounted):
    (mounted / "hf-token").write_text("hf_abc\n")
    (mounted / "aws-access-key-id").write_text("AKIA1")
    (mounted / "aws-secret-access-key").write_text("s3cr3t")
    assert sorted(load_credentials()) == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN"]
    assert (os.environ["HF_TOKEN"], os.environ["AWS_SECRET_ACCESS_KEY"]) == ("hf_abc", "s3cr3t")


def test_a_missing_secret_names_the_field_and_no_value(mounted):
    (mounted / "hf-token").write_text("hf_abc")
    (mounted / "aws-access-key-id").write_text("")  # an empty key counts as missing
    with pytest.raises(RuntimeFailure) as e:
        load_credentials()
    message = str(e.value)
    assert message.startswith("spec.output.credentialsSecretRef (Secret s3-creds, key AWS_ACCESS_KEY_ID); "
                              "spec.output.credentialsSecretRef (Secret s3-creds, key AWS_SECRET_ACCESS_KEY): no such Secret")
    assert "hf_abc" not in message and e.value.reason.value == "InvalidSpec"


def test_local_runs_use_the_environment_as_it_is(monkeypatch):
    monkeypatch.delenv(ENV_SECRETS_DIR, raising=False)
    monkeypatch.setenv("HF_TOKEN", "from-env")
    assert load_credentials() == [] and os.environ["HF_TOKEN"] == "from-env"


def test_the_sanity_container_fails_fast_with_invalid_spec(tmp_path):
    """What the pod's first container does when the Secret is missing: exit 2, InvalidSpec in the termination message."""
    term = tmp_path / "term"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", ENV_SECRETS_DIR: str(tmp_path / "empty"),
           ENV_SECRET_FILES: json.dumps({"hf-token": EXPECTED["hf-token"]}), "SFTJOB_TERMINATION_LOG": str(term)}
    r = subprocess.run([sys.executable, "-m", "sftjob.cli", "sanity", str(tmp_path / "unused.json"), "--json"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2, r.stderr
    assert "error: spec.model.tokenSecretRef (Secret hf-token, key token): no such Secret or key" in r.stderr
    assert "Traceback" not in r.stderr
    outcome = Outcome.from_termination_message(term.read_text())
    assert (outcome.ok, outcome.reason) == (False, "InvalidSpec")
