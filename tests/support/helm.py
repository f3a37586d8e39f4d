"""The real helm binary for chart tests: find it, run it, parse what it renders.

    from tests.support.helm import helm, helm_bin  # noqa: F401  (fixtures)

    def test_something(helm):
        objects = helm.template({"watchNamespaces": ["team-a"]})

helm is looked up as `.venv/bin/helm` (where `scripts/install-helm.sh` puts
it), then `$SFTJOB_HELM`, then on PATH. Without it the `helm_bin` fixture,
and every test using it, is skipped with the command that installs it.

Each run is isolated: helm's config/cache/data homes point into a temporary
directory, and KUBECONFIG at a file that does not exist, so a test can never
read a developer's repositories or reach a real cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "sftjob"
INSTALL_HINT = "helm not found (.venv/bin/helm, $SFTJOB_HELM or PATH): run `bash scripts/install-helm.sh`"

RELEASE = "sftjob"
NAMESPACE = "sftjob-system"


class HelmError(Exception):
    """helm exited non-zero; `stderr` holds its message."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"helm {' '.join(args)} exited {returncode}: {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


def find_helm() -> str | None:
    """Path of a helm binary that runs, or None."""
    candidates = [str(REPO / ".venv" / "bin" / "helm"), os.environ.get("SFTJOB_HELM") or "", shutil.which("helm") or ""]
    for candidate in candidates:
        if not candidate or not os.access(candidate, os.X_OK):
            continue
        try:
            done = subprocess.run([candidate, "version", "--short"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return candidate
    return None


class Helm:
    """A helm binary run in an isolated environment against the chart in charts/sftjob."""

    def __init__(self, binary: str, home: Path) -> None:
        self.binary = binary
        self.home = home
        self._values_files = 0
        self.env = {
            **os.environ,
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_DATA_HOME": str(home / "data"),
            "KUBECONFIG": str(home / "no-kubeconfig"),
        }

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `helm ARGS...`; raise HelmError on a non-zero exit when `check`."""
        done = subprocess.run([self.binary, *args], capture_output=True, text=True, env=self.env, timeout=120)
        if check and done.returncode != 0:
            raise HelmError(args, done.returncode, done.stderr)
        return done

    def version(self) -> str:
        """helm's short version string, e.g. v4.2.3+g43e8b7f."""
        return self.run("version", "--short").stdout.strip()

    def values_file(self, values: Mapping[str, Any]) -> str:
        """Write values to a file of their own (JSON is YAML) and return its path."""
        self._values_files += 1
        path = self.home / f"values-{self._values_files}.yaml"
        path.write_text(json.dumps(values), encoding="utf-8")
        return str(path)

    def _values_args(self, values: Mapping[str, Any] | None, sets: Sequence[str]) -> list[str]:
        args = ["-f", self.values_file(values)] if values else []
        for item in sets:
            args += ["--set", item]
        return args

    def template_text(
        self,
        values: Mapping[str, Any] | None = None,
        *,
        sets: Sequence[str] = (),
        release: str = RELEASE,
        namespace: str = NAMESPACE,
        chart: Path = CHART_DIR,
    ) -> str:
        """`helm template` output, as text."""
        args = ["template", release, str(chart), "--namespace", namespace, *self._values_args(values, sets)]
        return self.run(*args).stdout

    def template(self, values: Mapping[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
        """`helm template`, parsed: one dict per rendered object (empty documents dropped)."""
        return [doc for doc in yaml.safe_load_all(self.template_text(values, **kwargs)) if doc]

    def lint(self, values: Mapping[str, Any] | None = None, *, strict: bool = True, chart: Path = CHART_DIR) -> str:
        """`helm lint [--strict]`; its output (raises HelmError when the chart fails)."""
        args = ["lint", str(chart), *(["--strict"] if strict else []), *self._values_args(values, ())]
        return self.run(*args).stdout

    def notes(
        self, values: Mapping[str, Any] | None = None, *, release: str = RELEASE, namespace: str = NAMESPACE
    ) -> str:
        """The release notes (NOTES.txt) as `helm install` would print them; client-side only, no cluster."""
        args = ["install", release, str(CHART_DIR), "--namespace", namespace, "--dry-run=client",
                *self._values_args(values, ())]
        out = self.run(*args).stdout
        marker = "\nNOTES:\n"
        if marker not in out:
            raise AssertionError(f"helm install --dry-run printed no NOTES section:\n{out[-2000:]}")
        return out.split(marker, 1)[1]


@pytest.fixture(scope="session")
def helm_bin() -> str:
    """Path of the helm binary; skips the test when there is none."""
    path = find_helm()
    if path is None:
        pytest.skip(INSTALL_HINT)
    return path


@pytest.fixture(scope="session")
def helm(helm_bin: str) -> Iterator[Helm]:
    """A Helm runner with isolated homes (session-wide: rendering is side-effect free)."""
    with tempfile.TemporaryDirectory(prefix="sftjob-helm-") as home:
        yield Helm(helm_bin, Path(home))
