"""A platform team's security scanner on what we ship: the chart and the training Jobs the operator renders.

checkov (in its own venv: `bash scripts/install-checkov.sh`, run by
scripts/test.sh) scans `helm template` of the chart (cluster and namespaced
mode) and the rendered Job of every cluster example plus one with every
credential. Every finding is either fixed or skipped in the manifest with
checkov's skip annotation and its reason; these tests keep it so.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from sftjob.manifest import load_sftjob, parse_sftjob
from sftjob_operator.config import OperatorConfig
from sftjob_operator.render import CHECKOV_SKIPS, render

REPO = Path(__file__).resolve().parent.parent
CLUSTER_EXAMPLES = ["kueue.yaml", "llama-8b-recipe.yaml", "lora.yaml", "multi-gpu.yaml", "multi-node.yaml"]
# Decisions, not oversights: what may be skipped, and where.
CHART_SKIPS = {"CKV_K8S_43", "CKV_K8S_15", "CKV_K8S_38", "CKV2_K8S_6"}
JOB_SKIPS = {"CKV_K8S_43", "CKV_K8S_15", "CKV2_K8S_6"}
ALL_CREDENTIALS = {
    "apiVersion": "sftjob.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": "creds", "namespace": "team-a"},
    "spec": {
        "model": {"source": "org/gated", "tokenSecretRef": {"name": "hf", "key": "token"}},
        "dataset": {"train": "s3://d/t.jsonl", "validation": "s3://d/v.jsonl"},
        "output": {"uri": "s3://m/out", "credentialsSecretRef": {"name": "s3"}},
        "monitoring": {"reportTo": ["wandb"], "wandb": {"apiKeySecretRef": {"name": "wandb", "key": "k"}}},
    },
}


def _skipped_ids(annotations: dict) -> dict[str, str]:
    out = {}
    for key, value in annotations.items():
        if key.startswith("checkov.io/skip"):
            check, _, reason = value.partition("=")
            out[check] = reason
    return out


def test_the_rendered_job_carries_exactly_the_documented_skips_with_reasons():
    _, job = render(load_sftjob(REPO / "examples" / "llama-8b-recipe.yaml"), OperatorConfig())
    for where in (job["metadata"]["annotations"], job["spec"]["template"]["metadata"]["annotations"]):
        skips = _skipped_ids(where)
        assert set(skips) == JOB_SKIPS and all(len(reason) > 20 for reason in skips.values())
    assert _skipped_ids(CHECKOV_SKIPS) == _skipped_ids(job["metadata"]["annotations"])


def test_the_chart_carries_exactly_the_documented_skips_with_reasons(helm):
    [deployment] = [o for o in helm.template() if o["kind"] == "Deployment"]
    for where in (deployment["metadata"]["annotations"], deployment["spec"]["template"]["metadata"]["annotations"]):
        skips = _skipped_ids(where)
        assert set(skips) == CHART_SKIPS and all(len(reason) > 20 for reason in skips.values())
    assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]


@pytest.fixture(scope="module")
def checkov() -> str:
    found = os.environ.get("SFTJOB_CHECKOV") or str(REPO / ".venv-checkov" / "bin" / "checkov")
    if not Path(found).is_file():
        pytest.skip("checkov not installed: run `bash scripts/install-checkov.sh` (scripts/test.sh does)")
    return found


def scan(checkov: str, folder: Path) -> dict:
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "LOG_LEVEL": "WARNING"}
    r = subprocess.run([checkov, "-d", str(folder), "--framework", "kubernetes", "--skip-download", "--quiet",
                        "--compact", "-o", "json"], capture_output=True, text=True, timeout=600, env=env)
    report = json.loads(r.stdout)
    return report[0] if isinstance(report, list) else report


def test_checkov_finds_nothing_unexplained(checkov, helm, tmp_path):
    (tmp_path / "chart.yaml").write_text(helm.template_text(namespace="sftjob-system"))
    (tmp_path / "chart-namespaced.yaml").write_text(helm.template_text({"watchNamespaces": ["team-a"]}, namespace="sftjob-system"))
    jobs = [load_sftjob(REPO / "examples" / name) for name in CLUSTER_EXAMPLES] + [parse_sftjob(ALL_CREDENTIALS, "test")]
    for job in jobs:
        (tmp_path / f"{job.name}.yaml").write_text(yaml.safe_dump_all(render(job, OperatorConfig())))
    report = scan(checkov, tmp_path)
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == [], failed
    assert report["summary"]["passed"] > 150 and report["summary"]["parsing_errors"] == 0
    skipped = {(c["check_id"], c["check_result"].get("suppress_comment", "")) for c in report["results"].get("skipped_checks", [])}
    assert {check for check, _ in skipped} <= CHART_SKIPS | JOB_SKIPS
    assert all(len(reason) > 20 for _, reason in skipped)
