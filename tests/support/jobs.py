"""SFTJob manifests for short local runs on a slice of the quickstart data (the training and sanity tests)."""

from __future__ import annotations

from pathlib import Path

import yaml

DATA = Path(__file__).resolve().parents[2] / "examples" / "data"


def write_job(tmp: Path, model: Path, *, name="tiny", train_rows=48, val_rows=12, training=None, sanity=False, extra=None,
              keep_checkpoints=True) -> Path:
    """A manifest for a short local run on a slice of the quickstart data."""
    train = (DATA / "quickstart-train.jsonl").read_text().splitlines()[:train_rows]
    val = (DATA / "quickstart-val.jsonl").read_text().splitlines()[:val_rows]
    (tmp / "train.jsonl").write_text("\n".join(train) + "\n")
    (tmp / "val.jsonl").write_text("\n".join(val) + "\n")
    spec = {
        "model": {"source": str(model)},
        "dataset": {"train": "train.jsonl", "validation": "val.jsonl"},
        "training": {"maxSteps": 12, "learningRate": 3e-3, "perDeviceBatchSize": 4, "effectiveBatchSize": 4,
                     "evalSteps": 2, "saveSteps": 2, "saveTotalLimit": 2, "loggingSteps": 1, "maxSeqLength": 256,
                     **(training or {})},
        "sanityCheck": {"enabled": bool(sanity), "steps": 4, "samples": 16, **(sanity if isinstance(sanity, dict) else {})},
        "resources": {"gpus": 0},
        # Kept by default here: most tests read the eval history from the checkpoints.
        "output": {"uri": str(tmp / "export"), "keepCheckpoints": keep_checkpoints},
        "monitoring": {"reportTo": ["tensorboard"]},
        **(extra or {}),
    }
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "sftjob.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": name}, "spec": spec}))
    return path
