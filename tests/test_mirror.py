"""Checkpoints mirrored to S3 in the background (moto over HTTP, behind a slow link where speed matters).

What users care about: the GPUs do not wait for an upload (steps go on
while a checkpoint travels), nothing half-uploaded is ever resumed from,
the bytes uploaded are the bytes saved even if the trainer rotates the
checkpoint away meanwhile, a failing upload is a warning with a retry and
not a crash, and the final export holds the whole best model.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml

from sftjob.runconfig import RunConfig, RunModel, RunOutput
from sftjob.spec import DatasetSpec
from sftjob_runtime.checkpoint_sync import CheckpointMirror, restore_checkpoints
from sftjob_runtime.progress_server import ProgressState
from tests.support.slow_link import slow_link

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20


def config(bucket: str, endpoint: str) -> RunConfig:
    return RunConfig(name="m", model=RunModel(source="m"), dataset=DatasetSpec(train="t.jsonl"),
                     output=RunOutput(uri=f"s3://{bucket}/out/m", endpoint=endpoint))


def checkpoint(local: Path, step: int, size: int = 1024) -> Path:
    path = local / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (path / "model.safetensors").write_bytes(bytes([step % 256]) * size)
    return path


def events(err: str, name: str) -> list[dict]:
    """The structured events called `name` (a progress bar may share their line: they start after its text)."""
    return [json.loads(line.split("sftjob-event ", 1)[1]) for line in err.splitlines()
            if "sftjob-event " in line and f'"event": "{name}"' in line]


def remote(s3_server, bucket: str) -> set[str]:
    listing = s3_server.client().list_objects_v2(Bucket=bucket, Prefix="out/m.checkpoints/")
    return {o["Key"].removeprefix("out/m.checkpoints/") for o in listing.get("Contents", [])}


def test_a_save_returns_before_its_upload_and_the_bytes_survive_rotation(s3_server, s3_env, tmp_path, capsys):
    """Through a 2 MB/s link a 4 MiB checkpoint takes ~2 s; queuing it takes a moment, and deleting it locally
    (the trainer's rotation) while it uploads changes nothing in what arrives."""
    bucket = s3_server.bucket("mirror")
    local = tmp_path / "checkpoints"
    saved = checkpoint(local, 10, size=4 * MiB)
    with slow_link(s3_server.endpoint, rate=2 * MiB) as link:
        mirror = CheckpointMirror(config(bucket, link.endpoint))
        t0 = time.monotonic()
        mirror.submit(local, 10)
        queued = time.monotonic() - t0
        shutil.rmtree(saved)  # rotated away locally while its upload runs
        mirror.close()
        uploaded = time.monotonic() - t0
    assert queued < 0.5 < 1.5 < uploaded, (queued, uploaded)
    assert remote(s3_server, bucket) == {"checkpoint-10/sftjob-manifest.json", "checkpoint-10/trainer_state.json",
                                         "checkpoint-10/model.safetensors"}
    body = s3_server.client().get_object(Bucket=bucket, Key="out/m.checkpoints/checkpoint-10/model.safetensors")["Body"]
    assert body.read() == bytes([10]) * (4 * MiB)
    assert not (local / ".mirror-staging" / "checkpoint-10").exists()  # the staged links are gone once uploaded
    assert [e["step"] for e in events(capsys.readouterr().err, "checkpoint_mirrored")] == [10]


def test_remote_checkpoints_follow_the_local_rotation_and_the_newest_upload_stays(s3_server, s3_env, tmp_path):
    bucket = s3_server.bucket("mirror")
    local = tmp_path / "checkpoints"
    mirror = CheckpointMirror(config(bucket, s3_server.endpoint))
    for step in (2, 4, 6):
        checkpoint(local, step)
        if step == 6:
            shutil.rmtree(local / "checkpoint-2")  # saveTotalLimit 2: the trainer rotates before its on_save
        mirror.submit(local, step)
    mirror.close()
    assert {key.split("/")[0] for key in remote(s3_server, bucket)} == {"checkpoint-4", "checkpoint-6"}
    shutil.rmtree(local)
    assert restore_checkpoints(config(bucket, s3_server.endpoint), local) == ["checkpoint-4", "checkpoint-6"]


def test_a_failed_upload_is_retried_and_training_is_never_stopped_by_it(s3_server, s3_env, tmp_path, capsys):
    """The bucket appears only after the first attempt failed: the retry mirrors the checkpoint."""
    bucket = f"late-{time.monotonic_ns()}"
    local = tmp_path / "checkpoints"
    checkpoint(local, 2)
    mirror = CheckpointMirror(config(bucket, s3_server.endpoint), retries=2, backoff=2.0)
    mirror.submit(local, 2)
    err = ""
    deadline = time.monotonic() + 30
    while not events(err, "checkpoint_mirror_retry"):
        assert time.monotonic() < deadline, err
        time.sleep(0.05)
        err += capsys.readouterr().err
    s3_server.client().create_bucket(Bucket=bucket)
    mirror.close()
    err += capsys.readouterr().err
    retry, = events(err, "checkpoint_mirror_retry")
    assert retry["level"] == "warning" and "NoSuchBucket" in retry["error"] and "\n" not in retry["error"]
    assert [e["step"] for e in events(err, "checkpoint_mirrored")] == [2]
    assert "checkpoint-2/sftjob-manifest.json" in remote(s3_server, bucket)


def test_an_upload_that_keeps_failing_is_a_warning_in_status(s3_server, s3_env, tmp_path, capsys):
    local = tmp_path / "checkpoints"
    checkpoint(local, 2)
    state = ProgressState()
    mirror = CheckpointMirror(config("no-such-bucket-here", s3_server.endpoint), state, retries=1, backoff=0.05)
    mirror.submit(local, 2)
    mirror.close()  # returns: the run goes on, and the final export decides the outcome
    err = capsys.readouterr().err
    assert len(events(err, "checkpoint_mirror_retry")) == 1
    gave_up, = events(err, "checkpoint_not_mirrored")
    assert gave_up["level"] == "warning" and "NoSuchBucket" in gave_up["message"]
    warning, = state.snapshot().warnings
    assert warning.startswith("checkpoint_not_mirrored: checkpoint-2 was not mirrored (spec.output.uri: ")


@pytest.mark.slow
def test_training_goes_on_while_a_checkpoint_uploads_and_the_export_has_everything(
        s3_server, s3_env, tiny_model_dir, tmp_path, monkeypatch, capsys):
    """A real run whose S3 endpoint is a 2 MiB/s link: steps keep completing while a checkpoint uploads.

    Uploaded inside the save, no step could complete between its start and its end.
    """
    from sftjob_runtime.entrypoint import run

    monkeypatch.setenv("SFTJOB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SFTJOB_EVENTS", "all")
    bucket = s3_server.bucket("bg")
    data = ROOT / "examples" / "data"
    (tmp_path / "train.jsonl").write_text("\n".join((data / "quickstart-train.jsonl").read_text().splitlines()[:48]) + "\n")
    (tmp_path / "val.jsonl").write_text("\n".join((data / "quickstart-val.jsonl").read_text().splitlines()[:8]) + "\n")
    with slow_link(s3_server.endpoint, rate=2 * MiB) as link:
        job = tmp_path / "job.yaml"
        job.write_text(yaml.safe_dump({
            "apiVersion": "sftjob.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": "bg"},
            "spec": {
                "model": {"source": str(tiny_model_dir)},
                "dataset": {"train": "train.jsonl", "validation": "val.jsonl"},
                "training": {"maxSteps": 40, "perDeviceBatchSize": 4, "effectiveBatchSize": 4, "evalSteps": 20,
                             "saveSteps": 20, "saveTotalLimit": 2, "loggingSteps": 1, "learningRate": 1e-3},
                "sanityCheck": {"enabled": False}, "resources": {"gpus": 0},
                "output": {"uri": f"s3://{bucket}/out/bg", "endpoint": link.endpoint},
                "monitoring": {"reportTo": []},
            },
        }))
        assert run(str(job), output_dir=str(tmp_path / "work")) == 0
    err = capsys.readouterr().err
    started = {e["step"]: e["ts"] for e in events(err, "checkpoint_mirror_started")}
    done = {e["step"]: e["ts"] for e in events(err, "checkpoint_mirrored")}
    steps = {e["step"]: e["ts"] for e in events(err, "train_log")}
    assert set(started) == set(done) == {20, 40}
    during = [s for s, ts in steps.items() if started[20] < ts < done[20]]
    assert len(during) >= 2 and min(during) > 20, (started[20], done[20], during)  # the steps after the save
    # The export is whole: every file its manifest lists is there with its size, the weights among them.
    client = s3_server.client()
    manifest = json.loads(client.get_object(Bucket=bucket, Key="out/bg/sftjob-manifest.json")["Body"].read())
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {f["path"] for f in manifest["files"]}
    for f in manifest["files"]:
        assert client.head_object(Bucket=bucket, Key=f"out/bg/{f['path']}")["ContentLength"] == f["size"]
    assert "Contents" not in client.list_objects_v2(Bucket=bucket, Prefix="out/bg.checkpoints/")  # no longer needed
