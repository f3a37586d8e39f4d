"""Resume after preemption without a persistent volume: checkpoints mirrored to S3, in the background.

When the output is on S3, every checkpoint the trainer saves is uploaded
to `<output.uri>.checkpoints/checkpoint-<step>/` (with its manifest written
last, so a half-uploaded checkpoint is never taken for a complete one), and
remote checkpoints that the trainer rotated away locally are deleted. A new
pod that starts with an empty work volume downloads the complete ones,
each file checked against the sha256 in its manifest, and resumes from the
latest, but only when the checkpoint was saved under the same run config
(an SFTJob re-created with other settings and the same output never resumes
someone else's state). After the best checkpoint has been exported the
mirror is deleted: the job no longer needs it.

Uploads run on a worker thread beside training, so the step after a save
starts as soon as the local save is done (an 8B full fine-tune checkpoint
with optimizer state is 50-100 GB: minutes of idle GPUs if uploaded inline).
On save the checkpoint's files are hard-linked into a staging folder, so the
bytes being uploaded stay on disk even if the trainer rotates the checkpoint
away meanwhile, at no cost in time or space. The queue holds one checkpoint
waiting beside the one uploading: a save that finds it full waits (saves
faster than the link would otherwise fill the disk), and says so. An upload
that fails is retried with backoff, then reported as a warning; training
goes on. The end of training, and a just-in-time checkpoint on SIGTERM,
wait for the uploads in flight.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import threading
import time
from pathlib import Path

from transformers import TrainerCallback

from sftjob.runconfig import RunConfig
from sftjob.vocabulary import ExitCode, Reason
from sftjob_runtime import s3
from sftjob_runtime.errors import RuntimeFailure, one_line
from sftjob_runtime.events import emit
from sftjob_runtime.export import MANIFEST, export_checkpoint, sha256_of

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
    return s3.client(cfg.output.endpoint, cfg.output.region)


def _split(uri: str) -> tuple[str, str]:
    bucket, prefix = s3.split(uri)
    return bucket, prefix.strip("/")


def _remote_checkpoints(client, bucket: str, prefix: str) -> dict[str, list[str]]:
    """checkpoint name -> keys under it."""
    found: dict[str, list[str]] = {}
    for obj in s3.objects(client, bucket, f"{prefix}/"):
        name = obj["Key"][len(prefix) + 1:].split("/", 1)[0]
        if CHECKPOINT_RE.match(name):
            found.setdefault(name, []).append(obj["Key"])
    return found


def _verified(client, bucket: str, key: str, target: Path, entry: dict) -> bool:
    """Download one mirrored file and check it against its manifest entry; one more download if it differs."""
    for attempt in range(2):
        # The first time a same-size local copy may be reused; the second always downloads.
        s3.download(client, bucket, key, target, entry["size"] if attempt == 0 else None)
        if "sha256" not in entry or sha256_of(target) == entry["sha256"]:
            return True
    target.unlink(missing_ok=True)
    return False


def _storage_errors(fn):
    """S3 trouble while mirroring or restoring becomes one line naming spec.output.uri, never a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (*s3.storage_errors(), ValueError, KeyError) as e:
            raise RuntimeFailure(Reason.EXPORT_FAILED, one_line(f"spec.output.uri: checkpoint mirror: {s3.describe(e)}"),
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


STAGING = ".mirror-staging"  # not `checkpoint-*`: neither the trainer's rotation nor its resume look at it
RETRIES = 3
BACKOFF_SECONDS = 5.0
_STOP = None


class CheckpointMirror(TrainerCallback):
    """After each save: queue the new checkpoint for upload; the worker uploads it and drops rotated remote ones.

    `state` (a ProgressState) gets a status warning when a checkpoint could
    not be mirrored; `retries` and `backoff` set how hard an upload is tried.
    """

    def __init__(self, cfg: RunConfig, state=None, *, retries: int = RETRIES, backoff: float = BACKOFF_SECONDS) -> None:
        self.cfg = cfg
        self.uri = mirror_uri(cfg)
        self.state = state
        self.retries, self.backoff = retries, backoff
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._worker: threading.Thread | None = None

    def on_save(self, args, state, control, **kw):
        if self.uri is None or not state.is_world_process_zero:
            return
        self.submit(Path(args.output_dir), state.global_step)

    def submit(self, local: Path, step: int) -> None:
        """Stage checkpoint-<step> under `local` and queue it; returns at once unless one is already waiting."""
        if self._worker is None:
            shutil.rmtree(local / STAGING, ignore_errors=True)  # left by a pod killed mid-upload: nothing is in flight
        staged = _stage(local / f"checkpoint-{step}", local / STAGING / f"checkpoint-{step}")
        if self._worker is None:
            self._worker = threading.Thread(target=self._run, name="sftjob-checkpoint-mirror", daemon=True)
            self._worker.start()
        t0 = time.monotonic()
        self._queue.put((local, step, staged))
        waited = time.monotonic() - t0
        if waited > 1.0:
            emit("checkpoint_mirror_waited", level="warning", step=step, seconds=round(waited, 1),
                 message="the save waited for the previous checkpoint's upload: the link to spec.output.uri is slower "
                         "than the saves; raise spec.training.saveSteps")

    def upload(self, args, step: int) -> None:
        """Mirror checkpoint-<step> now, after the uploads in flight (the just-in-time checkpoint on SIGTERM)."""
        self.close()
        local = Path(args.output_dir)
        # One retry at most: the pod's grace period is running.
        if not self._upload_with_retries(local, step, local / f"checkpoint-{step}", retries=1):
            raise RuntimeFailure(Reason.EXPORT_FAILED, f"spec.output.uri: checkpoint mirror: checkpoint-{step} could not "
                                 "be uploaded", ExitCode.EXPORT_FAILED)

    def close(self) -> None:
        """Wait for every queued upload to finish (or give up), then stop the worker."""
        if self._worker is not None:
            self._queue.put(_STOP)
            self._worker.join()
            self._worker = None

    def _run(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            local, step, staged = item
            try:
                self._upload_with_retries(local, step, staged)
            finally:
                shutil.rmtree(staged, ignore_errors=True)

    def _upload_with_retries(self, local: Path, step: int, source: Path, retries: int | None = None) -> bool:
        retries = self.retries if retries is None else retries
        for attempt in range(retries + 1):
            try:
                self._upload(local, step, source)
                return True
            except Exception as e:  # noqa: BLE001 - the worker must outlive any failure, or the next save waits forever
                e = one_line(e)
                if attempt == retries:
                    message = f"checkpoint-{step} was not mirrored ({e}); a preempted pod without a work volume resumes " \
                              "from the last one that was"
                    emit("checkpoint_not_mirrored", level="warning", step=step, message=message)
                    if self.state is not None:
                        self.state.warn(f"checkpoint_not_mirrored: {message}")
                    return False
                delay = self.backoff * 2**attempt
                emit("checkpoint_mirror_retry", level="warning", step=step, attempt=attempt + 1, in_seconds=delay, error=e)
                time.sleep(delay)
        return False

    @_storage_errors
    def _upload(self, local: Path, step: int, source: Path) -> None:
        name = f"checkpoint-{step}"
        emit("checkpoint_mirror_started", uri=f"{self.uri}/{name}", step=step)
        t0 = time.monotonic()
        export_checkpoint(source, f"{self.uri}/{name}", endpoint=self.cfg.output.endpoint, region=self.cfg.output.region,
                          extra={"step": step, "config": config_digest(self.cfg)})
        # Remote copies of checkpoints the trainer rotated away go, but never this one (the newest complete).
        keep = {p.name for p in local.iterdir() if CHECKPOINT_RE.match(p.name)} | {name}
        client = _client(self.cfg)
        bucket, prefix = _split(self.uri)
        for other, keys in _remote_checkpoints(client, bucket, prefix).items():
            if other not in keep and int(other.split("-")[1]) < step:
                _delete(client, bucket, keys)
        emit("checkpoint_mirrored", uri=f"{self.uri}/{name}", step=step, seconds=round(time.monotonic() - t0, 2))


def _stage(checkpoint: Path, staged: Path) -> Path:
    """Hard links to a checkpoint's files (a copy where the filesystem has none), out of the trainer's reach."""
    shutil.rmtree(staged, ignore_errors=True)
    for path in checkpoint.rglob("*"):
        target = staged / path.relative_to(checkpoint)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
    return staged
