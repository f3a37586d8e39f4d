"""Inputs from S3 (moto over HTTP) and model sources: hub ids pass through, paths resolve, s3:// downloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftjob.runconfig import RunConfig, RunModel, RunOutput
from sftjob.spec import DatasetSpec
from sftjob_runtime.errors import RuntimeFailure
from sftjob_runtime.prepare import load_splits, localize_model

ROOT = Path(__file__).resolve().parents[1]


def cfg(source="m", train="t.jsonl", validation=None, endpoint=None) -> RunConfig:
    return RunConfig(name="x", model=RunModel(source=source), dataset=DatasetSpec(train=train, validation=validation),
                     output=RunOutput(uri="/o", endpoint=endpoint))


def test_model_source_kinds(tmp_path):
    (tmp_path / "models" / "m").mkdir(parents=True)
    assert localize_model(cfg("meta-llama/Llama-3.1-8B-Instruct"), tmp_path) == "meta-llama/Llama-3.1-8B-Instruct"
    assert localize_model(cfg("models/m"), tmp_path) == str(tmp_path / "models" / "m")
    (tmp_path / "abs").mkdir()
    assert localize_model(cfg(f"file://{tmp_path / 'abs'}"), tmp_path) == str(tmp_path / "abs")
    with pytest.raises(RuntimeFailure, match=f"spec.model.source: no model directory at {tmp_path / 'missing'}$"):
        localize_model(cfg("./missing"), tmp_path)
    with pytest.raises(RuntimeFailure, match="run `sftjob demo-model`"):
        localize_model(cfg("~/nowhere/demo-model"), tmp_path)


@pytest.mark.slow
def test_data_and_model_come_from_s3(s3_server, s3_env, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SFTJOB_CACHE_DIR", str(tmp_path / "cache"))
    bucket = s3_server.bucket("inputs")
    client = s3_server.client()
    data = ROOT / "examples" / "data"
    client.upload_file(str(data / "quickstart-train.jsonl"), bucket, "d/train.jsonl")
    client.upload_file(str(data / "quickstart-val.jsonl"), bucket, "d/val.jsonl")
    for f in Path(tiny_model_dir).iterdir():
        client.upload_file(str(f), bucket, f"models/tiny/{f.name}")
    c = cfg(f"s3://{bucket}/models/tiny", f"s3://{bucket}/d/train.jsonl", f"s3://{bucket}/d/val.jsonl", s3_server.endpoint)
    train, val = load_splits(c)
    assert (len(train), len(val)) == (300, 40)
    assert train[0].source.endswith("d/train.jsonl:1")
    local = Path(localize_model(c, None))
    assert {p.name for p in local.iterdir()} == {p.name for p in Path(tiny_model_dir).iterdir()}
    assert (local / "model.safetensors").read_bytes() == (Path(tiny_model_dir) / "model.safetensors").read_bytes()


def test_missing_s3_object_is_one_line_naming_the_field(s3_server, s3_env, tmp_path, monkeypatch):
    monkeypatch.setenv("SFTJOB_CACHE_DIR", str(tmp_path / "cache"))
    bucket = s3_server.bucket("inputs")
    with pytest.raises(RuntimeFailure) as e:
        load_splits(cfg(train=f"s3://{bucket}/nope.jsonl", endpoint=s3_server.endpoint))
    msg = str(e.value)
    assert msg.startswith(f"spec.dataset.train: cannot read s3://{bucket}/nope.jsonl") and "\n" not in msg
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in msg
    with pytest.raises(RuntimeFailure, match="spec.model.source: no objects under"):
        localize_model(cfg(f"s3://{bucket}/no-model", endpoint=s3_server.endpoint), None)


@pytest.mark.slow
def test_run_reads_from_and_exports_to_s3(s3_server, s3_env, tiny_model_dir, tmp_path, monkeypatch):
    """The whole local run against S3: data in, best checkpoint out, manifest last."""
    import yaml

    from sftjob_runtime.entrypoint import run

    monkeypatch.setenv("SFTJOB_CACHE_DIR", str(tmp_path / "cache"))
    bucket = s3_server.bucket("sft")
    client = s3_server.client()
    data = ROOT / "examples" / "data"
    lines = (data / "quickstart-train.jsonl").read_text().splitlines()[:24]
    client.put_object(Bucket=bucket, Key="d/train.jsonl", Body="\n".join(lines).encode())
    client.upload_file(str(data / "quickstart-val.jsonl"), bucket, "d/val.jsonl")
    job = {
        "apiVersion": "sftjob.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": "s3-run"},
        "spec": {
            "model": {"source": str(tiny_model_dir)},
            "dataset": {"train": f"s3://{bucket}/d/train.jsonl", "validation": f"s3://{bucket}/d/val.jsonl"},
            "training": {"maxSteps": 4, "perDeviceBatchSize": 4, "effectiveBatchSize": 4, "evalSteps": 2, "learningRate": 1e-3},
            "sanityCheck": {"enabled": False}, "resources": {"gpus": 0},
            "output": {"uri": f"s3://{bucket}/out/s3-run", "endpoint": s3_server.endpoint},
            "monitoring": {"reportTo": []},
        },
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    assert run(str(path), output_dir=str(tmp_path / "work")) == 0
    manifest = json.loads(client.get_object(Bucket=bucket, Key="out/s3-run/sftjob-manifest.json")["Body"].read())
    weights = client.get_object(Bucket=bucket, Key="out/s3-run/model.safetensors")["Body"].read()
    assert weights == (tmp_path / "work" / "best" / "model.safetensors").read_bytes()
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= {f["path"] for f in manifest["files"]}
    assert manifest["name"] == "s3-run"


def test_missing_local_data_file_names_the_field(tmp_path):
    with pytest.raises(RuntimeFailure) as e:
        load_splits(cfg(train="nope.jsonl"), tmp_path)
    assert str(e.value) == f"spec.dataset.train: {tmp_path / 'nope.jsonl'}: file not found — check the dataset path"
    assert e.value.reason.value == "DatasetNotFound"


@pytest.mark.slow
def test_preempted_run_resumes_from_checkpoints_mirrored_on_s3(s3_server, s3_env, tiny_model_dir, tmp_path, monkeypatch, cpu_precision):
    """No persistent volume: the first pod dies after its saves; the next starts empty and resumes from S3."""
    import shutil

    import yaml

    from sftjob.runconfig import load_run_config
    from sftjob_runtime.entrypoint import run
    from sftjob_runtime.prepare import prepare_run
    from sftjob_runtime.train import train

    monkeypatch.setenv("SFTJOB_CACHE_DIR", str(tmp_path / "cache"))
    bucket = s3_server.bucket("sft")
    client = s3_server.client()
    data = ROOT / "examples" / "data"
    (tmp_path / "train.jsonl").write_text("\n".join((data / "quickstart-train.jsonl").read_text().splitlines()[:24]) + "\n")
    (tmp_path / "val.jsonl").write_text("\n".join((data / "quickstart-val.jsonl").read_text().splitlines()[:8]) + "\n")

    def job(max_steps):
        path = tmp_path / f"job-{max_steps}.yaml"
        path.write_text(yaml.safe_dump({
            "apiVersion": "sftjob.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": "pre"},
            "spec": {
                "model": {"source": str(tiny_model_dir)},
                "dataset": {"train": "train.jsonl", "validation": "val.jsonl"},
                "training": {"maxSteps": max_steps, "perDeviceBatchSize": 4, "effectiveBatchSize": 4, "evalSteps": 2,
                             "saveSteps": 2, "saveTotalLimit": 2, "learningRate": 1e-3},
                "sanityCheck": {"enabled": False}, "resources": {"gpus": 0},
                "output": {"uri": f"s3://{bucket}/out/pre", "endpoint": s3_server.endpoint},
                "monitoring": {"reportTo": []},
            },
        }))
        return path

    import sftjob_runtime.train as train_mod

    class Preempted(train_mod.MonitorCallback):
        """Pod 1 is stopped after step 4 (its checkpoint saved), before it can export."""

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 4:
                control.should_training_stop = True

    work = tmp_path / "work"
    path = job(6)
    monkeypatch.setattr(train_mod, "MonitorCallback", Preempted)
    train(prepare_run(load_run_config(path), tmp_path), work)
    monkeypatch.undo()
    mirrored = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="out/pre.checkpoints/")["Contents"]}
    assert "out/pre.checkpoints/checkpoint-4/sftjob-manifest.json" in mirrored
    assert "out/pre.checkpoints/checkpoint-4/optimizer.pt" in mirrored
    shutil.rmtree(work)  # pod 2 gets a fresh, empty volume

    monkeypatch.setenv("SFTJOB_CACHE_DIR", str(tmp_path / "cache"))
    assert run(str(path), output_dir=str(work)) == 0
    report = json.loads((work / "report.json").read_text())
    assert report["resumed_from"].endswith("checkpoint-4") and report["steps"] == 6
    assert report["resolved"]["dtype"] == cpu_precision
    assert client.get_object(Bucket=bucket, Key="out/pre/sftjob-manifest.json")
    # The model is exported, so the resume copies are gone.
    assert "Contents" not in client.list_objects_v2(Bucket=bucket, Prefix="out/pre.checkpoints/")


def test_only_complete_checkpoints_of_the_same_config_are_resumed_from(s3_server, s3_env, tmp_path):
    from sftjob_runtime.checkpoint_sync import config_digest, restore_checkpoints
    from sftjob_runtime.export import export_checkpoint

    bucket = s3_server.bucket("sft")
    c = RunConfig(name="x", model=RunModel(source="m"), dataset=DatasetSpec(train="t.jsonl"),
                  output=RunOutput(uri=f"s3://{bucket}/o", endpoint=s3_server.endpoint))
    src = tmp_path / "checkpoint-2"
    src.mkdir()
    (src / "trainer_state.json").write_text('{"global_step": 2}')
    export_checkpoint(src, f"s3://{bucket}/o.checkpoints/checkpoint-2", endpoint=s3_server.endpoint,
                      extra={"step": 2, "config": config_digest(c)})
    # checkpoint-4's upload died before its manifest: it must be ignored.
    s3_server.client().put_object(Bucket=bucket, Key="o.checkpoints/checkpoint-4/model.safetensors", Body=b"partial")
    # checkpoint-6 is complete but from a run with other settings: never resumed.
    export_checkpoint(src, f"s3://{bucket}/o.checkpoints/checkpoint-6", endpoint=s3_server.endpoint,
                      extra={"step": 6, "config": "another-run"})
    assert restore_checkpoints(c, tmp_path / "local") == ["checkpoint-2"]
    assert (tmp_path / "local" / "checkpoint-2" / "trainer_state.json").read_text() == '{"global_step": 2}'
    assert not (tmp_path / "local" / "checkpoint-4").exists() and not (tmp_path / "local" / "checkpoint-6").exists()


def test_mirror_trouble_is_one_line_naming_the_output(s3_server, s3_env, tmp_path):
    from sftjob_runtime.checkpoint_sync import restore_checkpoints

    c = RunConfig(name="x", model=RunModel(source="m"), dataset=DatasetSpec(train="t.jsonl"),
                  output=RunOutput(uri="s3://no-such-bucket-here/o", endpoint=s3_server.endpoint))
    with pytest.raises(RuntimeFailure) as e:
        restore_checkpoints(c, tmp_path)
    assert str(e.value).startswith("spec.output.uri: checkpoint mirror: NoSuchBucket") and "\n" not in str(e.value)


def test_a_cached_input_replaced_by_one_of_the_same_size_is_downloaded_again(s3_server, s3_env, tmp_path, monkeypatch):
    """The S3 input cache compares ETags, not sizes only."""
    monkeypatch.setenv("SFTJOB_CACHE_DIR", str(tmp_path / "cache"))
    bucket = s3_server.bucket("inputs")
    client = s3_server.client()
    row = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
    client.put_object(Bucket=bucket, Key="d/t.jsonl", Body=(json.dumps(row) + "\n").encode())
    c = cfg(train=f"s3://{bucket}/d/t.jsonl", endpoint=s3_server.endpoint)
    (first,), _ = load_splits(c)
    changed = {**row, "messages": [row["messages"][0], {"role": "assistant", "content": "5"}]}  # same size
    client.put_object(Bucket=bucket, Key="d/t.jsonl", Body=(json.dumps(changed) + "\n").encode())
    (second,), _ = load_splits(c)
    assert (first.messages[-1]["content"], second.messages[-1]["content"]) == ("4", "5")


def test_a_restored_file_is_checked_against_its_manifest(s3_server, s3_env, tmp_path, capsys):
    """Same size, other bytes: a stale local copy is downloaded again; a corrupt mirrored object is refused, naming its key."""
    from sftjob_runtime.checkpoint_sync import config_digest, restore_checkpoints
    from sftjob_runtime.export import export_checkpoint

    bucket = s3_server.bucket("sft")
    client = s3_server.client()
    c = RunConfig(name="x", model=RunModel(source="m"), dataset=DatasetSpec(train="t.jsonl"),
                  output=RunOutput(uri=f"s3://{bucket}/o", endpoint=s3_server.endpoint))
    for step in (2, 4):
        src = tmp_path / f"checkpoint-{step}"
        src.mkdir()
        (src / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
        (src / "model.safetensors").write_bytes(bytes(range(256)) * 4)
        export_checkpoint(src, f"s3://{bucket}/o.checkpoints/checkpoint-{step}", endpoint=s3_server.endpoint,
                          extra={"step": step, "config": config_digest(c)})
    local = tmp_path / "local"
    # A stale local file of the right size is not trusted: it is downloaded again and then matches.
    (local / "checkpoint-2").mkdir(parents=True)
    (local / "checkpoint-2" / "model.safetensors").write_bytes(b"\0" * 1024)
    # The mirror's copy of checkpoint-4 is corrupt: bytes changed, same size.
    client.put_object(Bucket=bucket, Key="o.checkpoints/checkpoint-4/model.safetensors", Body=b"\1" * 1024)
    assert restore_checkpoints(c, local) == ["checkpoint-2"]
    assert (local / "checkpoint-2" / "model.safetensors").read_bytes() == bytes(range(256)) * 4
    assert not (local / "checkpoint-4").exists()
    refused = [line for line in capsys.readouterr().err.splitlines() if "checkpoint_not_restored" in line]
    assert len(refused) == 1 and f"s3://{bucket}/o.checkpoints/checkpoint-4/model.safetensors: its sha256 differs" in refused[0]
