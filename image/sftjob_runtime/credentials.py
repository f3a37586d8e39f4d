"""Credentials from the files the operator mounts, into this process's environment.

The pod spec carries no secret values, not even as `secretKeyRef`
environment variables: a projected Secret volume puts each credential in
`vocabulary.SECRETS_DIR`, and the runtime sets HF_TOKEN, AWS_* and
WANDB_API_KEY for itself, where huggingface_hub, boto3 and wandb look. The
volume is optional, so a missing Secret or key does not leave the pod stuck
in ContainerCreating: the runtime fails at once naming the spec field.
Local runs (no SFTJOB_SECRETS_DIR) use the environment as it is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sftjob.vocabulary import ENV_SECRET_FILES, ENV_SECRETS_DIR, SECRET_FILES, ExitCode, Reason
from sftjob_runtime.errors import RuntimeFailure


def load_credentials() -> list[str]:
    """Set the environment from the mounted credential files; returns the variables set.

    Raises RuntimeFailure(InvalidSpec) naming the spec field of every
    expected credential that is missing or empty.
    """
    root = os.environ.get(ENV_SECRETS_DIR)
    if not root:
        return []
    expected: dict[str, str] = json.loads(os.environ.get(ENV_SECRET_FILES) or "{}")
    loaded, missing = [], []
    for variable, file_name in SECRET_FILES.items():
        if file_name not in expected:
            continue
        try:
            value = (Path(root) / file_name).read_text(encoding="utf-8").strip()
        except OSError:
            value = ""
        if not value:
            missing.append(expected[file_name])
            continue
        os.environ[variable] = value
        loaded.append(variable)
    if missing:
        raise RuntimeFailure(
            Reason.INVALID_SPEC,
            f"{'; '.join(dict.fromkeys(missing))}: no such Secret or key in this namespace (or it is empty); "
            "create it (kubectl create secret generic ...), then delete and re-create the SFTJob",
            ExitCode.INVALID_CONFIG,
        )
    return loaded
