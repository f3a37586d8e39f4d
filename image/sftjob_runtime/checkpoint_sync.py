"""Resume after preemption without a persistent volume: checkpoints mirrored to S3.

When the output is on S3, every checkpoint the trainer saves is uploaded
to `<output.uri>.checkpoints/checkpoint-<step>/` (with its manifest written
last, so a half-uploaded checkpoint is never taken for a complete one), and
remote checkpoints that the trainer rotated away locally are deleted. A new
pod that starts with an empty work volume downloads the complete ones and
resumes from the latest, losing at most one save interval, but only when
the checkpoint was saved under the same run config (an SFTJob re-created
with other settings and the same output never resumes someone else's
state). After the best
checkpoint has been exported the mirror is deleted: the job no longer needs it.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from transformers import TrainerCallback

from sftjob.runconfig import RunConfig
from sftjob.vocabulary import ExitCode, Reason
from sftjob_runtime.errors import RuntimeFailure
from sftjob_runtime.events import emit
from sftjob_runtime.export import MANIFEST, export_checkpoint, sha256_of
from sftjob_runtime.sources import brief_error, download, s3_client, split_s3

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def config_digest(cfg: RunConfig) -> str:
    """Identity of a run: checkpoints of another configuration (same output.uri) are never resumed."""
    import hashlib

    return hashlib.sha256(cfg.to_json().encode()).hexdigest()


def mirror_uri(cfg: RunConfig) -> str | None:
    """Where checkpoints are mirrored, or None when the output is not on S3."""
    uri = cfg.output.uri
    return f"{uri.rstrip('/')}.checkpoints" if uri.startswith("s3://") else None


def _client(cfg: RunConfig):
    return s3_client(cfg.output.endpoint, cfg.output.region)


def _split(uri: str) -> tuple[str, str]:
    bucket, prefix = split_s3(uri)
    return bucket, prefix.strip("/")


def _remote_checkpoints(client, bucket: str, prefix: str) -> dict[str, list[str]]:
    """checkpoint name -> keys under it."""
    found: dict[str, list[str]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        for obj in page.get("Contents", []):
            name = obj["Key"][len(prefix) + 1:].split("/", 1)[0]
            if CHECKPOINT_RE.match(name):
                found.setdefault(name, []).append(obj["Key"])
    return found


def _verified(client, bucket: str, key: str, target: Path, entry: dict) -> bool:
    """Download one mirrored file and check it against its manifest entry; one more download if it differs."""
    for attempt in range(2):
        # The first time a same-size local copy may be reused; the second always downloads.
        download(client, bucket, key, target, entry["size"] if attempt == 0 else None)
        if "sha256" not in entry or sha256_of(target) == entry["sha256"]:
            return True
    target.unlink(missing_ok=True)
    return False


def _storage_errors(fn):
    """S3 trouble while mirroring or restoring becomes one line naming spec.output.uri, never a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except (ClientError, BotoCoreError, ValueError, KeyError) as e:
            raise RuntimeFailure(Reason.EXPORT_FAILED, f"spec.output.uri: checkpoint mirror: {brief_error(e)}",
                                 ExitCode.EXPORT_FAILED) from None

    return wrapper


@_storage_errors
def restore_checkpoints(cfg: RunConfig, local: Path) -> list[str]:
    """Download every complete mirrored checkpoint into `local`; returns their names (oldest first)."""
    uri = mirror_uri(cfg)
    if uri is None:
        return []
    client = _client(cfg)
    bucket, prefix = _split(uri)
    restored = []
    for name, keys in sorted(_remote_checkpoints(client, bucket, prefix).items(), key=lambda kv: int(kv[0].split("-")[1])):
        manifest_key = f"{prefix}/{name}/{MANIFEST}"
        if manifest_key not in keys:
            continue  # interrupted upload: not a checkpoint to resume from
        manifest = json.loads(client.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
        if manifest.get("config") != config_digest(cfg):
            emit("checkpoint_not_restored", level="warning", uri=f"{uri}/{name}",
                 message="it was saved by a run with a different configuration; starting from the base model")
            continue
        target = local / name
        bad = next((key for entry in manifest["files"]
                    if not _verified(client, bucket, key := f"{prefix}/{name}/{entry['path']}", target / entry["path"], entry)),
                   None)
        if bad is not None:
            shutil.rmtree(target, ignore_errors=True)
            emit("checkpoint_not_restored", level="warning", uri=f"{uri}/{name}",
                 message=f"s3://{bucket}/{bad}: its sha256 differs from the checkpoint's manifest, also after a second "
                         "download; this checkpoint is refused (an earlier one, or the base model, is used instead)")
            continue
        restored.append(name)
    if restored:
        emit("checkpoints_restored", uri=uri, checkpoints=restored)
    return restored


def delete_mirror(cfg: RunConfig) -> None:
    """Remove the mirrored checkpoints (after a successful export)."""
    uri = mirror_uri(cfg)
    if uri is None:
        return
    client = _client(cfg)
    bucket, prefix = _split(uri)
    for keys in _remote_checkpoints(client, bucket, prefix).values():
        _delete(client, bucket, keys)


def _delete(client, bucket: str, keys: list[str]) -> None:
    # The manifest goes first, so a checkpoint half-deleted is already "incomplete".
    ordered = sorted(keys, key=lambda k: not k.endswith(MANIFEST))
    for key in ordered:
        client.delete_object(Bucket=bucket, Key=key)


class CheckpointMirror(TrainerCallback):
    """After each save: upload the new checkpoint, drop remote ones the trainer rotated away."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.uri = mirror_uri(cfg)

    @_storage_errors
    def on_save(self, args, state, control, **kw):
        if self.uri is None or not state.is_world_process_zero:
            return
        self.upload(args, state.global_step)

    @_storage_errors
    def upload(self, args, step: int) -> None:
        """Mirror checkpoint-<step> (also the just-in-time one, which the trainer saves without on_save)."""
        local = Path(args.output_dir)
        name = f"checkpoint-{step}"
        export_checkpoint(local / name, f"{self.uri}/{name}", endpoint=self.cfg.output.endpoint,
                          region=self.cfg.output.region,
                          extra={"step": step, "config": config_digest(self.cfg)})
        keep = {p.name for p in local.iterdir() if CHECKPOINT_RE.match(p.name)}
        client = _client(self.cfg)
        bucket, prefix = _split(self.uri)
        for other, keys in _remote_checkpoints(client, bucket, prefix).items():
            if other not in keep:
                _delete(client, bucket, keys)
        emit("checkpoint_mirrored", uri=f"{self.uri}/{name}", step=step)
