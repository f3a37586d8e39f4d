"""Exporting the best checkpoint: bytes, checksums, the manifest as completion marker, idempotent re-runs.

S3 is moto's server on 127.0.0.1 (real HTTP); what export_checkpoint sends is
observed through botocore events registered on boto3's default session, from
which the exporter's client inherits them. Nothing in the package knows it
is being watched.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import traceback
import uuid
from pathlib import Path

import pytest
from sftjob_runtime.errors import RuntimeFailure
from sftjob_runtime.export import MANIFEST, TransferSettings, export_checkpoint

from sftjob.vocabulary import ExitCode, Reason

MiB = 2**20
# The S3 minimum part size, so the 6 MiB weights file goes up in two parts.
SMALL_PARTS = TransferSettings(multipart_threshold=5 * MiB, part_size=5 * MiB, concurrency=4)
BIG = "model.safetensors"
EXTRA = {"name": "demo", "step": 40, "evalLoss": 0.25}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A checkpoint-like directory: small json files, a nested file and 6 MiB + 123 bytes of weights."""
    src = tmp_path_factory.mktemp("ckpt") / "checkpoint-40"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    (src / "generation_config.json").write_text(json.dumps({"eos_token_id": 2}))
    (src / "tokenizer.json").write_bytes(os.urandom(4096))
    (src / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    (src / "nested").mkdir()
    (src / "nested" / "trainer_state.json").write_text(json.dumps({"best_step": 40}))
    (src / BIG).write_bytes(os.urandom(6 * MiB + 123))
    return src


def source_files(src: Path) -> dict[str, bytes]:
    return {p.relative_to(src).as_posix(): p.read_bytes() for p in sorted(src.rglob("*")) if p.is_file()}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def expected_manifest_files(src: Path) -> list[dict]:
    return [{"path": rel, "size": len(data), "sha256": sha256_hex(data)} for rel, data in source_files(src).items()]


class Wire:
    """Records (and can sabotage) the S3 calls made by every boto3 client created after it is installed."""

    def __init__(self, session) -> None:
        self.events: list[tuple[str, str, str]] = []  # (phase, operation, key) in the order they happened
        self.fail: tuple[str, int] | None = None      # (operation, n): raise on the n-th call of it
        self.counts: dict[str, int] = {}
        self.authorization: list[str] = []
        session.events.register("before-parameter-build.s3", self._before)
        session.events.register("after-call.s3", self._after)
        session.events.register("before-send.s3", self._send)

    def _before(self, params, model, context, **_):
        key = params.get("Key", "")
        context["wire_key"] = key
        self.counts[model.name] = self.counts.get(model.name, 0) + 1
        self.events.append(("start", model.name, key))
        if self.fail and self.fail[0] == model.name and self.counts[model.name] == self.fail[1]:
            raise ConnectionResetError(f"simulated outage during {model.name} of {key}")

    def _after(self, model, context, http_response, **_):
        if http_response.status_code < 300:
            self.events.append(("done", model.name, context.get("wire_key", "")))

    def _send(self, request, **_):
        auth = request.headers.get("Authorization", b"")
        self.authorization.append(auth.decode() if isinstance(auth, bytes) else auth)

    def uploaded(self) -> list[str]:
        """Keys whose upload completed (a single PUT or a completed multipart upload), in completion order."""
        return [k for phase, op, k in self.events if phase == "done" and op in {"PutObject", "CompleteMultipartUpload"}]

    def calls(self, operation: str) -> list[str]:
        return [k for phase, op, k in self.events if phase == "start" and op == operation]

    def clear(self) -> None:
        self.events.clear()
        self.counts.clear()
        self.fail = None


@pytest.fixture
def wire(monkeypatch, s3_env):
    """A fresh boto3 default session (so credentials come from this test's environment) with a Wire on it."""
    import boto3

    session = boto3.Session()
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", session)
    return Wire(session)


def objects(client, bucket: str, prefix: str) -> dict[str, bytes]:
    listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])
    return {o["Key"][len(prefix) + 1:]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listing}


def export_s3(checkpoint: Path, s3_server, bucket: str, prefix: str = "jobs/demo/best") -> str:
    return export_checkpoint(checkpoint, f"s3://{bucket}/{prefix}", endpoint=s3_server.endpoint, region="us-east-1",
                             extra=EXTRA, transfer=SMALL_PARTS)


# --- S3 ------------------------------------------------------------------------------

def test_s3_export_lands_every_byte_with_checksums_and_the_manifest_last(checkpoint, s3_server, wire):
    bucket, prefix = s3_server.bucket(), "jobs/demo/best"
    client = s3_server.client()

    assert export_s3(checkpoint, s3_server, bucket, prefix) == f"s3://{bucket}/{prefix}"

    src = source_files(checkpoint)
    stored = objects(client, bucket, prefix)
    assert set(stored) == set(src) | {MANIFEST}
    for rel, data in src.items():
        assert stored[rel] == data, rel
    manifest = json.loads(stored[MANIFEST])
    assert manifest["files"] == expected_manifest_files(checkpoint)
    assert {k: manifest[k] for k in EXTRA} == EXTRA

    # The manifest is sent only after every file has landed, and is the last thing written.
    manifest_key = f"{prefix}/{MANIFEST}"
    assert wire.uploaded()[-1] == manifest_key and wire.uploaded().count(manifest_key) == 1
    started = wire.events.index(("start", "PutObject", manifest_key))
    done_files = [i for i, (phase, _, key) in enumerate(wire.events) if phase == "done" and key != manifest_key
                  and key.startswith(prefix)]
    assert len(done_files) >= len(src) and max(done_files) < started

    # Multipart for the big file only, in 5 MiB parts.
    assert wire.calls("CreateMultipartUpload") == [f"{prefix}/{BIG}"]
    assert len(wire.calls("UploadPart")) == 2
    assert sorted(wire.uploaded()[:-1]) == sorted(f"{prefix}/{rel}" for rel in src)

    # Checksums really were sent: the whole-object SHA-256 of a single PUT, the composite of a multipart one.
    for rel, data in src.items():
        head = client.head_object(Bucket=bucket, Key=f"{prefix}/{rel}", ChecksumMode="ENABLED")
        assert head["Metadata"]["sha256"] == sha256_hex(data)
        if rel == BIG:
            parts = [data[i:i + 5 * MiB] for i in range(0, len(data), 5 * MiB)]
            composite = base64.b64encode(hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts)).digest())
            assert head["ChecksumSHA256"].split("-")[0] == composite.decode()
            assert head["ETag"].strip('"').endswith("-2")
        else:
            assert head["ChecksumSHA256"] == b64_sha256(data), rel
    assert client.head_object(Bucket=bucket, Key=manifest_key, ChecksumMode="ENABLED")["ChecksumSHA256"] == \
        b64_sha256(stored[MANIFEST])


def test_credentials_come_from_the_environment_and_never_leak(checkpoint, s3_server, wire, monkeypatch, caplog):
    access_key = "AKIAENV" + uuid.uuid4().hex[:13].upper()
    secret = "env-secret-" + uuid.uuid4().hex
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    caplog.set_level(logging.DEBUG)
    uri = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/jobs/demo"

    with pytest.raises(RuntimeFailure) as failed:
        export_checkpoint(checkpoint, uri, endpoint=s3_server.endpoint, region="us-east-1", transfer=SMALL_PARTS)

    e = failed.value
    message = str(e)
    assert e.reason == Reason.EXPORT_FAILED and e.exit_code == ExitCode.EXPORT_FAILED
    assert message.startswith("spec.output.uri:") and uri in message and "NoSuchBucket" in message
    assert "create the bucket" in message
    assert "\n" not in message
    everything = message + "".join(traceback.format_exception(e)) + caplog.text
    assert secret not in everything
    # The requests were signed with the environment's key (moto does not check it, so look at the wire).
    assert wire.authorization and all(f"Credential={access_key}/" in a for a in wire.authorization)


def test_a_secret_that_reaches_an_error_message_is_blanked(checkpoint, s3_server, wire, monkeypatch):
    secret = "env-secret-" + uuid.uuid4().hex
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # nothing listens there: don't wait out the retries
    # An endpoint that echoes the secret (e.g. pasted into the URL by mistake) must not carry it into the message.
    with pytest.raises(RuntimeFailure) as failed:
        export_checkpoint(checkpoint, "s3://bucket-x/p", endpoint=f"http://127.0.0.1:9/{secret}", transfer=SMALL_PARTS)
    assert secret not in str(failed.value) and "***" in str(failed.value)
    assert "\n" not in str(failed.value) and failed.value.reason == Reason.EXPORT_FAILED


@pytest.mark.parametrize("operation", ["PutObject", "UploadPart"], ids=["small-file", "multipart-part"])
def test_interrupted_s3_export_leaves_no_marker_and_a_rerun_sends_only_what_is_missing(
        operation, checkpoint, s3_server, wire):
    bucket, prefix = s3_server.bucket(), "jobs/demo/best"
    client = s3_server.client()
    all_keys = {f"{prefix}/{rel}" for rel in source_files(checkpoint)}
    wire.fail = (operation, 2 if operation == "UploadPart" else 3)

    with pytest.raises(RuntimeFailure) as failed:
        export_s3(checkpoint, s3_server, bucket, prefix)
    assert failed.value.reason == Reason.EXPORT_FAILED and "simulated outage" in str(failed.value)
    present = {o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert f"{prefix}/{MANIFEST}" not in present  # no completion marker
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")  # the broken upload was aborted
    if operation == "PutObject":
        assert len(present) >= 2  # the two PUTs before the failed one landed
    else:
        assert f"{prefix}/{BIG}" not in present
    assert present < all_keys

    wire.clear()
    export_s3(checkpoint, s3_server, bucket, prefix)
    assert set(wire.uploaded()[:-1]) == all_keys - present
    assert len(wire.uploaded()) == len(all_keys - present) + 1
    stored = objects(client, bucket, prefix)
    assert {rel: data for rel, data in stored.items() if rel != MANIFEST} == source_files(checkpoint)
    assert json.loads(stored[MANIFEST])["files"] == expected_manifest_files(checkpoint)


def test_s3_rerun_skips_intact_files_and_resends_corrupted_ones(checkpoint, s3_server, wire):
    from boto3.s3.transfer import TransferConfig

    bucket, prefix = s3_server.bucket(), "jobs/demo/best"
    client = s3_server.client()
    src = source_files(checkpoint)
    export_s3(checkpoint, s3_server, bucket, prefix)

    # Nothing changed: nothing but the manifest is sent again (the multipart file is recognised by its composite).
    wire.clear()
    export_s3(checkpoint, s3_server, bucket, prefix)
    assert wire.calls("DeleteObject") == [f"{prefix}/{MANIFEST}"]
    assert wire.uploaded() == [f"{prefix}/{MANIFEST}"]

    # Same sizes, other bytes; two of them even claim the right sha256 in their metadata.
    def flipped(data: bytes) -> bytes:
        return bytes([data[0] ^ 0xFF]) + data[1:]

    client.put_object(Bucket=bucket, Key=f"{prefix}/config.json", Body=flipped(src["config.json"]),
                      Metadata={"sha256": sha256_hex(src["config.json"])}, ChecksumAlgorithm="SHA256")
    client.put_object(Bucket=bucket, Key=f"{prefix}/tokenizer.json", Body=flipped(src["tokenizer.json"]))
    bad_big = checkpoint.parent / "bad.bin"
    bad_big.write_bytes(src[BIG][:-1] + bytes([src[BIG][-1] ^ 0xFF]))
    client.upload_file(str(bad_big), bucket, f"{prefix}/{BIG}",
                       ExtraArgs={"Metadata": {"sha256": sha256_hex(src[BIG])}, "ChecksumAlgorithm": "SHA256"},
                       Config=TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB))
    client.delete_object(Bucket=bucket, Key=f"{prefix}/nested/trainer_state.json")

    wire.clear()
    export_s3(checkpoint, s3_server, bucket, prefix)
    resent = {f"{prefix}/{rel}" for rel in ("config.json", "tokenizer.json", BIG, "nested/trainer_state.json")}
    assert set(wire.uploaded()[:-1]) == resent and len(wire.uploaded()) == len(resent) + 1
    stored = objects(client, bucket, prefix)
    assert {rel: stored[rel] for rel in src} == src


def test_bucket_root_destination(checkpoint, s3_server, wire):
    bucket = s3_server.bucket()
    assert export_checkpoint(checkpoint, f"s3://{bucket}", endpoint=s3_server.endpoint,
                             transfer=SMALL_PARTS) == f"s3://{bucket}"
    client = s3_server.client()
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == set(source_files(checkpoint)) | {MANIFEST}


# --- a directory ---------------------------------------------------------------------

class Copies:
    """Counts shutil.copyfile calls and can fail the n-th one halfway through, as a full disk would."""

    def __init__(self, monkeypatch) -> None:
        self.sources: list[str] = []
        self.fail_at: int | None = None
        real = shutil.copyfile

        def copyfile(source, target, *args, **kwargs):
            self.sources.append(Path(source).name)
            if self.fail_at == len(self.sources):
                data = Path(source).read_bytes()
                Path(target).write_bytes(data[: len(data) // 2])
                raise OSError(28, "No space left on device")
            return real(source, target, *args, **kwargs)

        monkeypatch.setattr(shutil, "copyfile", copyfile)


def assert_directory_export(dest: Path, checkpoint: Path) -> None:
    assert source_files(dest) == {**source_files(checkpoint), MANIFEST: (dest / MANIFEST).read_bytes()}
    manifest = json.loads((dest / MANIFEST).read_text())
    assert manifest["files"] == expected_manifest_files(checkpoint)
    assert {k: manifest[k] for k in EXTRA} == EXTRA
    assert not list(dest.rglob("*.partial"))


@pytest.mark.parametrize("form", ["file-uri", "path"])
def test_directory_export_copies_bytes_writes_the_manifest_and_is_idempotent(form, checkpoint, tmp_path, monkeypatch):
    dest = tmp_path / "out" / "best"
    uri = f"file://{dest}" if form == "file-uri" else str(dest)
    copies = Copies(monkeypatch)

    assert export_checkpoint(checkpoint, uri, extra=EXTRA) == f"file://{dest.resolve()}"
    assert_directory_export(dest, checkpoint)
    assert len(copies.sources) == len(source_files(checkpoint))

    copies.sources.clear()
    export_checkpoint(checkpoint, uri, extra=EXTRA)
    assert copies.sources == []
    assert_directory_export(dest, checkpoint)


def test_interrupted_directory_export_leaves_no_marker_no_partial_and_recovers(checkpoint, tmp_path, monkeypatch):
    dest = tmp_path / "best"
    copies = Copies(monkeypatch)
    copies.fail_at = 3

    with pytest.raises(RuntimeFailure) as failed:
        export_checkpoint(checkpoint, str(dest), extra=EXTRA)
    assert failed.value.reason == Reason.EXPORT_FAILED
    assert "No space left on device" in str(failed.value) and str(dest) in str(failed.value)
    assert not (dest / MANIFEST).exists()
    assert not list(dest.rglob("*.partial"))
    landed = set(source_files(dest))
    assert len(landed) == 2

    # A run killed outright (no cleanup) leaves a temp file, here beside an intact file that will not be
    # copied again; and another landed file gets corrupted.
    intact, victim = sorted(landed)
    (dest / f"{intact}.partial").write_bytes(b"half")
    data = (dest / victim).read_bytes()
    (dest / victim).write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])

    copies.sources.clear()
    copies.fail_at = None
    export_checkpoint(checkpoint, str(dest), extra=EXTRA)
    expected = (set(source_files(checkpoint)) - landed) | {victim}
    assert sorted(copies.sources) == sorted(Path(rel).name for rel in expected)
    assert_directory_export(dest, checkpoint)


def test_export_in_place_writes_only_the_marker(checkpoint, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint, ckpt)
    assert export_checkpoint(ckpt, f"file://{ckpt}", extra=EXTRA) == f"file://{ckpt.resolve()}"
    assert_directory_export(ckpt, checkpoint)
    export_checkpoint(ckpt, str(ckpt), extra=EXTRA)  # a second time: the old marker is not listed as a file
    assert_directory_export(ckpt, checkpoint)


@pytest.mark.parametrize("uri, says", [
    ("{src}/inner", "inside the checkpoint directory"),
    ("gs://bucket/x", "neither s3://, file:// nor a path"),
    ("s3:///prefix-without-bucket", "names no bucket"),
])
def test_unusable_destinations_fail_with_a_message_naming_the_field(uri, says, checkpoint):
    with pytest.raises(RuntimeFailure) as failed:
        export_checkpoint(checkpoint, uri.format(src=checkpoint))
    message = str(failed.value)
    assert failed.value.reason == Reason.EXPORT_FAILED and message.startswith("spec.output.uri:") and says in message


def test_empty_or_missing_checkpoint_fails(tmp_path):
    (tmp_path / "empty").mkdir()
    for src in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(RuntimeFailure) as failed:
            export_checkpoint(src, str(tmp_path / "out"))
        assert failed.value.reason == Reason.EXPORT_FAILED and "nothing to export" in str(failed.value)
