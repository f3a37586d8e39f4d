"""Reading back what a W&B run recorded, from its `.wandb` file (offline runs, no server).

wandb 0.31 no longer ships a Python reader for its transaction log (the
`wandb.sdk.internal.datastore` module of earlier releases is gone; the Go
core reads it), so this follows the documented format: a 7-byte file header
(":W&B", magic, version), then LevelDB-log records in 32 KiB blocks, each a
7-byte header (crc32, length, type) and a chunk of a serialized
`wandb.proto.wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

_BLOCK = 32768
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _payloads(data: bytes) -> list[bytes]:
    out, pending, pos = [], b"", _HEADER  # skip the file header
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # the block's tail is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        chunk = data[pos + _HEADER:pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 0 and length == 0:
            pos += _BLOCK - pos % _BLOCK if pos % _BLOCK else 0
            continue
        if kind == _FULL:
            out.append(chunk)
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            out.append(pending + chunk)
            pending = b""
    return out


def history(run_file: Path) -> list[dict[str, Any]]:
    """Every history row (`run.log` call) of a run, as {metric: value}."""
    from wandb.proto import wandb_internal_pb2

    rows = []
    for payload in _payloads(Path(run_file).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "history":
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            rows.append(row)
    return rows


def run_files(root: Path) -> list[Path]:
    """The `.wandb` files of the offline runs under `root`."""
    return sorted(Path(root).glob("wandb/offline-run-*/run-*.wandb"))
