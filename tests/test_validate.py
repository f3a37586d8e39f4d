"""`sftjob validate` and the spec model: bad manifests give one line per problem naming the field path."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sftjob.manifest import ManifestError, load_sftjob, parse_sftjob
from sftjob.runconfig import RunConfig

ROOT = Path(__file__).resolve().parents[1]

VALID = {
    "apiVersion": "sftjob.dev/v1alpha1",
    "kind": "SFTJob",
    "metadata": {"name": "demo", "namespace": "team-a"},
    "spec": {
        "model": {"source": "meta-llama/Llama-3.1-8B-Instruct"},
        "dataset": {"train": "s3://b/train.jsonl", "validation": "s3://b/val.jsonl"},
        "training": {"learningRate": 2e-5, "perDeviceBatchSize": 4, "effectiveBatchSize": 32},
        "output": {"uri": "s3://b/out"},
    },
}


def validate(tmp_path: Path, text: str) -> subprocess.CompletedProcess:
    f = tmp_path / "job.yaml"
    f.write_text(textwrap.dedent(text))
    return subprocess.run([sys.executable, "-m", "sftjob.cli", "validate", str(f)], capture_output=True, text=True, timeout=60)


def with_spec(**changes) -> dict:
    import copy

    obj = copy.deepcopy(VALID)
    for path, value in changes.items():
        node = obj["spec"]
        keys = path.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return obj


def errors_of(obj) -> list[str]:
    with pytest.raises(ManifestError) as e:
        parse_sftjob(obj, "")
    return e.value.errors


def test_valid_manifest_parses_and_projects_to_run_config():
    job = parse_sftjob(VALID, "x")
    cfg = RunConfig.from_sftjob(job)
    assert cfg.training.learningRate == 2e-5
    again = RunConfig.from_json(cfg.to_json())
    assert again == cfg


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"training__learningRate": -1}, "spec.training.learningRate: Input should be greater than 0 (got -1)"),
        ({"training__lerningRate": 1e-5}, "spec.training.lerningRate: unknown field"),
        ({"model__dtype": "fp8"}, "spec.model.dtype: Input should be 'auto', 'bfloat16', 'float16' or 'float32'"),
        ({"training__effectiveBatchSize": 30}, "spec.training.effectiveBatchSize: 30 is not a multiple of perDeviceBatchSize x GPUs x nodes"),
        ({"model__quantization": "4bit"}, "spec.model.quantization: quantized loading (QLoRA) requires spec.training.lora"),
        ({"dataset__validation": None}, "spec.dataset: keeping the best checkpoint ranks by eval loss"),
        ({"output__uri": "gs://bucket/x"}, "spec.output.uri: must start with s3:// or pvc://"),
        ({"output__uri": "ftp://host/x"}, "spec.output.uri: must start with s3:// or pvc://"),
        ({"model__source": "https://host/m"}, "spec.model.source: must be a Hugging Face hub id"),
        ({"resources__tolerations": [{"effect": "Sometimes"}]}, "spec.resources.tolerations[0].effect: Input should be"),
        ({"resources__nodes": 17}, "spec.resources.nodes: Input should be less than or equal to 16"),
        ({"resources__nodes": 2, "resources__workVolumeClaim": "scratch"},
         "spec.resources.workVolumeClaim: a multi-node job gives each node's pod a scratch volume of its own"),
    ],
)
def test_each_bad_field_is_named(changes, expected):
    errs = errors_of(with_spec(**changes))
    assert any(e.startswith(expected) for e in errs), errs


def test_missing_required_and_wrong_kind_are_reported_together():
    obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "Bad_Name"}, "spec": {"model": {}}}
    errs = errors_of(obj)
    joined = "\n".join(errs)
    assert "apiVersion: must be sftjob.dev/v1alpha1" in joined
    assert "kind: must be SFTJob" in joined
    assert "metadata.name: must be a DNS label" in joined
    assert "spec.model.source: required field is missing" in joined
    assert "spec.dataset: required field is missing" in joined


def test_cli_exit_codes_and_one_line_per_problem(tmp_path):
    ok = validate(tmp_path, (ROOT / "examples" / "quickstart.yaml").read_text().replace("data/", str(ROOT / "examples/data") + "/"))
    assert ok.returncode == 0, ok.stderr
    bad = validate(tmp_path, """
        apiVersion: sftjob.dev/v1alpha1
        kind: SFTJob
        metadata: {name: x}
        spec:
          model: {source: m}
          dataset: {train: t.jsonl, validationSplit: 0.9}
          training: {learningRate: 0}
          output: {uri: s3://b/p}
    """)
    assert bad.returncode == 1
    lines = bad.stderr.strip().splitlines()
    assert any("spec.dataset.validationSplit: Input should be less than or equal to 0.5" in ln for ln in lines)
    assert any("spec.training.learningRate: Input should be greater than 0" in ln for ln in lines)
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    "text",
    ["key: [unclosed", "\x00\x01 binary", "- just\n- a list", "", "apiVersion: sftjob.dev/v1alpha1\nkind: SFTJob\n"],
)
def test_cli_never_tracebacks(tmp_path, text):
    r = validate(tmp_path, text)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert r.stderr.strip(), "an error must be printed"
    assert "job.yaml" in r.stderr


def test_yaml_error_names_the_line(tmp_path):
    r = validate(tmp_path, "apiVersion: sftjob.dev/v1alpha1\nkind: SFTJob\nmetadata: {name: x\n")
    assert r.returncode == 1
    assert "job.yaml:4: invalid YAML" in r.stderr or "job.yaml:3: invalid YAML" in r.stderr


def test_missing_file_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sftjob.cli", "validate", str(tmp_path / "nope.yaml")], capture_output=True, text=True)
    assert r.returncode == 1
    assert "nope.yaml: file not found" in r.stderr


def test_quickstart_example_loads():
    job = load_sftjob(ROOT / "examples" / "quickstart.yaml")
    assert job.spec.resources.gpus == 0


def test_a_batch_that_does_not_divide_names_its_line_and_the_two_nearest_values(tmp_path):
    r = validate(tmp_path, """\
        apiVersion: sftjob.dev/v1alpha1
        kind: SFTJob
        metadata:
          name: demo
        spec:
          model:
            source: org/model
          dataset:
            train: s3://b/t.jsonl
            validation: s3://b/v.jsonl
          training:
            perDeviceBatchSize: 4
            effectiveBatchSize: 30
          resources:
            gpus: 2
          output:
            uri: ftp://host/out
        """)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    job = tmp_path / "job.yaml"
    assert f"{job}:13: spec.training.effectiveBatchSize: 30 is not a multiple of perDeviceBatchSize x GPUs x nodes = " \
           "4 x 2 x 1 = 8 (gradient accumulation must be a whole number); use 24 or 32" in lines
    assert any(line.startswith(f"{job}:17: spec.output.uri: must start with s3:// or pvc://") for line in lines)
    assert lines[2:] == ["2 problem(s) found"] and "Traceback" not in r.stderr


def test_a_missing_field_points_at_its_parent(tmp_path):
    r = validate(tmp_path, """\
        apiVersion: sftjob.dev/v1alpha1
        kind: SFTJob
        metadata: {name: demo}
        spec:
          model: {source: org/model}
          dataset:
            validation: s3://b/v.jsonl
          output: {uri: s3://b/o}
        """)
    assert r.returncode == 1
    assert f"{tmp_path / 'job.yaml'}:6: spec.dataset.train: required field is missing" in r.stderr


def test_valid_files_are_named_one_per_line():
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    r = subprocess.run([sys.executable, "-m", "sftjob.cli", "validate", *map(str, examples)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    for path in examples:
        assert any(line.startswith(f"{path}: ") and line.endswith("valid") for line in lines), (path, lines)
    assert lines[-1] == f"{len(examples)} file(s), {len(examples)} SFTJob(s): all valid"
