"""The e2e tier's hands on a real cluster: kubectl, the chart installed with helm, the operator with its own token.

Everything goes through the real tools a user runs (`kubectl`, `helm`) and
the real API server. The operator runs here as a process (the chart's
Deployment is held off every node, so no second operator runs in the
cluster) with the token of the chart's ServiceAccount, not an admin's:
RBAC is what the chart grants. Where no kubelet runs, the tests play it by
patching Pod status (tests/support/playback.py); on a cluster with nodes the
Job controller's pods are played the same way before any node runs them.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.helm import Helm, find_helm
from tests.support.operator_process import OperatorProcess
from tests.support.playback import ProgressServer, free_port

REPO = Path(__file__).resolve().parents[2]
ENV = "SFTJOB_E2E_KUBECONFIG"
RELEASE = "sftjob-e2e"
# Holds the chart's operator Deployment off every node: the operator under test is the process here.
HOLD = {"nodeSelector": {"sftjob.dev/e2e-hold": "no-node-has-this"}}


class Kubectl:
    """kubectl against the e2e cluster, with JSON in and out."""

    def __init__(self, kubeconfig: str) -> None:
        self.kubeconfig = kubeconfig

    def run(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["kubectl", "--kubeconfig", self.kubeconfig, *args], input=input, capture_output=True,
                              text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        ns = ["-n", namespace] if namespace else []
        done = self.run("get", kind, name, *ns, "-o", "json", check=False)
        if done.returncode != 0:
            if "NotFound" in done.stderr or "not found" in done.stderr:
                return None
            raise AssertionError(done.stderr)
        return json.loads(done.stdout)

    def list(self, kind: str, namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
        extra = ["-l", selector] if selector else []
        return json.loads(self.run("get", kind, "-n", namespace, *extra, "-o", "json").stdout)["items"]

    def apply(self, obj: dict[str, Any] | str, *extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        text = obj if isinstance(obj, str) else json.dumps(obj)
        return self.run("apply", "--server-side", "--field-manager=e2e", "-f", "-", *extra, input=text, check=check)

    def create(self, obj: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("create", "-f", "-", input=json.dumps(obj), check=check)

    def patch_status(self, kind: str, name: str, namespace: str, status: dict[str, Any]) -> None:
        self.run("patch", kind, name, "-n", namespace, "--subresource=status", "--type=merge",
                 "-p", json.dumps({"status": status}))

    def wait_for(self, ref: str, namespace: str, condition: str, timeout: int) -> subprocess.CompletedProcess[str]:
        """`kubectl wait --for=condition=<condition> <ref>` as a user or a CI script runs it (not raising)."""
        return self.run("wait", f"--for=condition={condition}", ref, "-n", namespace, f"--timeout={timeout}s",
                        check=False, timeout=timeout + 30)

    def delete(self, kind: str, name: str, namespace: str | None = None, *extra: str) -> None:
        ns = ["-n", namespace] if namespace else []
        self.run("delete", kind, name, *ns, "--ignore-not-found", *extra, timeout=120)

    def namespace(self, prefix: str = "e2e") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.run("create", "namespace", name)
        return name


def wait(what: str, predicate: Callable[[], Any], timeout: float = 60, log: Callable[[], str] | None = None) -> Any:
    """Poll until `predicate()` is truthy; its value is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}" + (f"\n--- operator log ---\n{log()}" if log else ""))
        time.sleep(0.25)


def _healthy(port: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def token_kubeconfig(kubectl: Kubectl, namespace: str, service_account: str, path: Path) -> Path:
    """A kubeconfig for the same server that authenticates as the ServiceAccount (a TokenRequest token)."""
    config = json.loads(kubectl.run("config", "view", "--raw", "--minify", "-o", "json").stdout)
    cluster = config["clusters"][0]["cluster"]
    token = kubectl.run("create", "token", service_account, "-n", namespace, "--duration=2h").stdout.strip()
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": cluster}],
        "users": [{"name": service_account, "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": service_account}}],
        "current-context": "e2e",
    }))
    return path


@pytest.fixture(scope="module")
def kubectl() -> Kubectl:
    kubeconfig = os.environ.get(ENV)
    if not kubeconfig:
        pytest.skip(f"{ENV} is not set: the e2e tier needs a real cluster (see README, 'End-to-end tests')")
    return Kubectl(kubeconfig)


@pytest.fixture(scope="module")
def helm_release(kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Helm]:
    """The chart installed (CRD included) into namespace RELEASE, as a user installs it."""
    binary = find_helm()
    if binary is None:
        pytest.skip("helm not found: run `bash scripts/install-helm.sh`")
    helm = Helm(binary, tmp_path_factory.mktemp("helm"))
    helm.env["KUBECONFIG"] = kubectl.kubeconfig
    helm.run("uninstall", RELEASE, "-n", RELEASE, "--wait", check=False)  # a previous run's leftovers
    helm.run("install", RELEASE, str(REPO / "charts" / "sftjob"), "-n", RELEASE, "--create-namespace",
             "-f", helm.values_file(HOLD))
    yield helm
    helm.run("uninstall", RELEASE, "-n", RELEASE, check=False)


@pytest.fixture(scope="module")
def progress() -> Iterator[ProgressServer]:
    server = ProgressServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def operator(kubectl: Kubectl, helm_release: Helm, progress: ProgressServer,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """`sftjob operator` as the chart's ServiceAccount (its RBAC, no more)."""
    import sys

    tmp = tmp_path_factory.mktemp("operator")
    kubeconfig = token_kubeconfig(kubectl, RELEASE, RELEASE, tmp / "kubeconfig")
    env = {
        "SFTJOB_OPERATOR_PROGRESS_PORT": str(progress.port),
        "SFTJOB_OPERATOR_PROGRESS_POLL_SECONDS": "0.5",
        "SFTJOB_OPERATOR_METRICS_PORT": str(free_port()),
        "SFTJOB_OPERATOR_HEALTH_PORT": str(free_port()),
        "SFTJOB_OPERATOR_LOG_FORMAT": "json",
    }
    process = OperatorProcess(kubeconfig, ["--bind-address", "127.0.0.1"], env,
                              command=(sys.executable, "-m", "sftjob.cli", "operator"), log_path=tmp / "operator.log")
    process.start()
    try:
        wait("the operator's health endpoint", lambda: _healthy(env["SFTJOB_OPERATOR_HEALTH_PORT"]) or not process.alive,
             timeout=60, log=process.log_tail)
        assert process.alive, process.log_tail()
        yield process
    finally:
        process.stop()
    # The chart's RBAC was enough: the API server never refused the operator itself.
    denied = [line for line in process.log_text().splitlines() if f'User "system:serviceaccount:{RELEASE}:' in line]
    assert not denied, "\n".join(denied[:5])
