"""The three rooms stay apart: operator → contract ← runtime, and light commands stay light."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "trl", "datasets", "peft")
KUBE = ("kopf", "kmock", "kubernetes", "aiohttp")


def loaded_after(imports: str) -> set[str]:
    code = f"import sys, json\n{imports}\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return set(json.loads(r.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("module", ["sftjob.cli", "sftjob.spec", "sftjob.runconfig", "sftjob.report", "sftjob.crd"])
def test_contract_imports_neither_side(module):
    mods = loaded_after(f"import {module}")
    assert not mods & {*HEAVY, *KUBE, "sftjob_operator", "sftjob_runtime"}


def test_operator_never_loads_the_training_stack():
    mods = loaded_after("import sftjob_operator.handlers, sftjob_operator.main, sftjob_operator.render")
    assert not mods & set(HEAVY)
    assert "sftjob_runtime" not in mods


def test_runtime_never_loads_kubernetes_code():
    mods = loaded_after("import sftjob_runtime.entrypoint, sftjob_runtime.train, sftjob_runtime.masking, sftjob_runtime.export")
    assert not mods & set(KUBE)
    assert "sftjob_operator" not in mods
