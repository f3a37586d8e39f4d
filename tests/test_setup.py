"""What a newcomer reads while installing: nothing from the build backend, nothing from a no-op setup."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_building_the_package_prints_no_build_backend_warnings(tmp_path):
    import shutil

    had_build = (ROOT / "build").exists()
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    if not had_build:  # setuptools builds in the checkout: leave it as it was
        shutil.rmtree(ROOT / "build", ignore_errors=True)
    assert r.returncode == 0, r.stderr[-2000:]
    text = r.stdout + r.stderr
    assert "BuildBackendWarning" not in text and "SetuptoolsDeprecationWarning" not in text, text[-3000:]
    import zipfile

    [wheel] = tmp_path.glob("sftjob-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "sftjob_runtime/templates/chatml.jinja" in names  # the presets ship


def test_setup_on_an_installed_checkout_prints_nothing():
    stamp = ROOT / ".venv" / ".sftjob-installed"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not stamp.is_file() or stamp.read_text().strip() != want:
        pytest.skip("the .venv of this checkout is not installed by scripts/setup.sh from this pyproject.toml")
    r = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0
    assert (r.stdout, r.stderr) == ("", "")


def test_a_failing_setup_step_shows_its_log(tmp_path):
    """The quiet install still tells why it failed: the step and the end of pip's output."""
    fake = tmp_path / "checkout"
    (fake / "scripts").mkdir(parents=True)
    (fake / "scripts" / "setup.sh").write_text((ROOT / "scripts" / "setup.sh").read_text())
    (fake / "pyproject.toml").write_text("[project]\nname = 'broken'\nversion = '0'\ndependencies = ['no-such-package-sftjob==0']\n")
    (fake / ".venv" / "bin").mkdir(parents=True)
    pip = fake / ".venv" / "bin" / "python"
    pip.write_text("#!/bin/sh\necho 'ERROR: No matching distribution found for no-such-package-sftjob' >&2\nexit 1\n")
    pip.chmod(0o755)
    r = subprocess.run(["bash", str(fake / "scripts" / "setup.sh")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "setup.sh: this step failed: .venv/bin/python -m pip install -q --upgrade pip" in r.stderr
    assert "No matching distribution found" in r.stderr
