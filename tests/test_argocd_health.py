"""The Argo CD health check, gitops/argocd/health.lua, run the way Argo CD runs it.

Argo CD evaluates a health script in Lua 5.1 (gopher-lua) with the live object
as the global `obj` and only the base, table and os libraries open; lupa's
Lua 5.1 with string, math, io, debug and coroutine taken away is that
environment, so a script that calls `string.format` fails here as it would
there. Every case of health_test.yaml (Argo CD's own test format) must give
its status and exact message. The test objects cannot drift from what the
cluster holds: each is admitted by the CRD's schema, and where it carries the
summary conditions they are exactly what the operator computes. Every phase
and reason in sftjob.vocabulary maps to a deliberate health, so a new phase
cannot slip through as Healthy. The chart's copy of the script and the
install command its NOTES print are checked too.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from sftjob.vocabulary import Phase, Reason
from sftjob_operator.announce import new_problems
from sftjob_operator.readiness import SUMMARY_TYPES, readiness_conditions, summarize
from tests.support.helm import CHART_DIR, Helm
from tests.test_crd import apply_defaults, to_json_schema

lua51 = pytest.importorskip("lupa.lua51", reason="lupa is not installed: .venv/bin/python -m pip install 'lupa>=2.8'")

REPO = Path(__file__).resolve().parent.parent
ARGOCD_DIR = REPO / "gitops" / "argocd"
SCRIPT_PATH = ARGOCD_DIR / "health.lua"
SCRIPT = SCRIPT_PATH.read_text(encoding="utf-8")
CHART_COPY = CHART_DIR / "files" / "argocd-health.lua"
SYNC_COMMAND = "cp gitops/argocd/health.lua charts/sftjob/files/argocd-health.lua"
CONFIG_KEY = "resource.customizations.health.sftjob.dev_SFTJob"
CRD = yaml.safe_load((REPO / "crds" / "sftjob.dev_sftjobs.yaml").read_text(encoding="utf-8"))
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
NOW = "2026-12-03T09:00:00Z"


class KubernetesYaml(yaml.SafeLoader):
    """YAML as Argo CD sees an object (through JSON): timestamps stay strings."""


KubernetesYaml.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load(path: Path) -> Any:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=KubernetesYaml)


CASES = load(ARGOCD_DIR / "health_test.yaml")["tests"]
TESTDATA = sorted((ARGOCD_DIR / "testdata").glob("*.yaml"))


def health(obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) that health.lua returns for `obj`, in a fresh VM shaped like Argo CD's."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=True, register_eval=False, register_builtins=False)
    # What Argo CD does not open (SkipOpenLibs, then only package, base, table and a safe os):
    # no string library, and so no string methods either.
    lua.execute('debug.setmetatable("", nil); string, math, io, debug, coroutine = nil, nil, nil, nil, nil')
    lua.globals().obj = lua.table_from(obj, recursive=True)
    hs = lua.execute(SCRIPT)
    return hs["status"], hs["message"]


def sftjob(status: dict[str, Any] | None = None, generation: int = 1) -> dict[str, Any]:
    """A minimal SFTJob with `status` (none when None)."""
    obj: dict[str, Any] = {
        "apiVersion": "sftjob.dev/v1alpha1", "kind": "SFTJob",
        "metadata": {"name": "llama-sft", "namespace": "team-a", "generation": generation},
        "spec": {"model": {"source": "org/model"}, "dataset": {"train": "s3://b/train.jsonl"}, "output": {"uri": "s3://b/out"}},
    }
    if status is not None:
        obj["status"] = status
    return obj


# ---- health_test.yaml ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[Path(c["inputPath"]).stem for c in CASES])
def test_health_test_case(case):
    expected = case["healthStatus"]
    assert health(load(ARGOCD_DIR / case["inputPath"])) == (expected["status"], expected["message"])


def test_every_testdata_file_is_a_case_and_every_outcome_is_covered():
    assert sorted(c["inputPath"] for c in CASES) == [f"testdata/{p.name}" for p in TESTDATA]
    assert {c["healthStatus"]["status"] for c in CASES} == {"Progressing", "Healthy", "Degraded", "Suspended"}


def test_the_vm_lacks_what_argo_cd_does_not_open():
    lua = lua51.LuaRuntime(unpack_returned_tuples=True, register_eval=False, register_builtins=False)
    lua.execute('debug.setmetatable("", nil); string, math, io, debug, coroutine = nil, nil, nil, nil, nil')
    assert lua.execute("return string, math") == (None, None)
    with pytest.raises(lua51.LuaError):
        lua.execute('return ("x"):upper()')


# ---- the test objects are real ones ---------------------------------------------------------------


@pytest.mark.parametrize("path", TESTDATA, ids=[p.stem for p in TESTDATA])
def test_testdata_is_admitted_by_the_crd(path):
    obj = load(path)
    assert (obj["apiVersion"], obj["kind"]) == (f"{CRD['spec']['group']}/{CRD['spec']['versions'][0]['name']}", "SFTJob")
    whole = to_json_schema(SCHEMA)
    whole["properties"]["metadata"]["additionalProperties"] = True  # ObjectMeta is the API server's, not the CRD's
    jsonschema.Draft202012Validator(whole).validate(apply_defaults(SCHEMA, copy.deepcopy(obj)))
    assert isinstance(obj["metadata"].get("generation"), int), "Argo CD compares status.observedGeneration with it"


@pytest.mark.parametrize("path", TESTDATA, ids=[p.stem for p in TESTDATA])
def test_testdata_summary_conditions_are_what_the_operator_writes(path):
    status = load(path).get("status")
    if status is None:
        return
    conditions = status.get("conditions") or []
    summary = {c["type"]: c for c in conditions if c["type"] in SUMMARY_TYPES}
    if "old-shape" in path.stem:
        assert not summary, "an older operator's status has no Ready/Reconciling/Stalled"
        return
    others = [c for c in conditions if c["type"] not in SUMMARY_TYPES]
    expected = summarize(status["phase"], others)
    assert [(summary[t]["status"], summary[t]["reason"], summary[t]["message"]) for t in SUMMARY_TYPES] == [
        tuple(s) for s in expected
    ]
    assert {c["observedGeneration"] for c in summary.values()} == {status["observedGeneration"]}


# ---- every phase and reason the operator knows ----------------------------------------------------

# A decision per phase: adding a Phase fails this test until someone says what Argo CD should show.
HEALTH_OF_PHASE = {
    Phase.PENDING: "Progressing",
    Phase.QUEUED: "Progressing",
    Phase.SANITY_CHECKING: "Progressing",
    Phase.TRAINING: "Progressing",
    Phase.EXPORTING: "Progressing",
    Phase.SUCCEEDED: "Healthy",
    Phase.FAILED: "Degraded",
    Phase.SUSPENDED: "Suspended",
}


def test_every_phase_has_a_decided_health():
    assert set(HEALTH_OF_PHASE) == set(Phase)


@pytest.mark.parametrize("shape", ["kstatus", "old"])
@pytest.mark.parametrize("phase", list(Phase), ids=[p.value for p in Phase])
def test_every_phase_maps_to_its_health(phase, shape):
    conditions = readiness_conditions(phase.value, [], 1, NOW) if shape == "kstatus" else []
    status, message = health(sftjob({"phase": phase.value, "observedGeneration": 1, "conditions": conditions}))
    assert status == HEALTH_OF_PHASE[phase]
    if status == "Progressing":
        assert message.startswith(phase.value)


@pytest.mark.parametrize("shape", ["kstatus", "old"])
@pytest.mark.parametrize("reason", list(Reason), ids=[r.value for r in Reason])
def test_a_problem_while_pending_is_named_as_the_operator_warns_of_it(reason, shape):
    stage = {"type": "Training", "status": "Unknown", "reason": reason.value, "message": "What happened.",
             "lastTransitionTime": NOW}
    conditions = readiness_conditions("Pending", [stage], 1, NOW) if shape == "kstatus" else [stage]
    problem = bool(new_problems({}, {"conditions": [stage]}))  # the reasons the operator posts a Warning for
    _, message = health(sftjob({"phase": "Pending", "observedGeneration": 1, "conditions": conditions}))
    assert message == (f"Pending ({reason.value}): What happened." if problem else "Pending: What happened.")


def test_empty_lists_and_maps_are_no_trouble():
    # lupa (like Argo CD's JSON decoding) gives [] and {} as the same empty table.
    assert health(sftjob({"phase": "Training", "conditions": [], "progress": {}})) == ("Progressing", "Training")
    assert health(sftjob({})) == ("Progressing", "Waiting for the sftjob operator to report the job's status")


def test_a_stale_generation_is_waited_for_even_when_finished():
    status = {"phase": "Succeeded", "observedGeneration": 1, "conditions": readiness_conditions("Succeeded", [], 1, NOW)}
    assert health(sftjob(status, generation=2)) == ("Progressing", "Waiting for the operator to observe generation 2")
    assert health(sftjob(status, generation=1))[0] == "Healthy"


# ---- the chart -------------------------------------------------------------------------------------


def test_chart_copy_is_the_script():
    assert CHART_COPY.read_bytes() == SCRIPT_PATH.read_bytes(), (
        f"{CHART_COPY.relative_to(REPO)} differs from {SCRIPT_PATH.relative_to(REPO)}: run `{SYNC_COMMAND}`"
    )


def test_notes_print_a_command_that_installs_the_script(helm: Helm):
    notes = helm.notes()
    assert CONFIG_KEY in notes and "gitops/argocd/health.lua" in notes and "files/argocd-health.lua" in notes
    command = re.search(r'jq -n --rawfile lua (\S+) \\\n\s*\'(.+?)\'\)"', notes)
    assert command, notes
    if shutil.which("jq") is None:
        pytest.skip("jq not found: the NOTES command's patch was not built")
    done = subprocess.run(["jq", "-n", "--rawfile", "lua", command.group(1), command.group(2)],
                          cwd=REPO, capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == {"data": {CONFIG_KEY: SCRIPT}}


def test_the_readme_shows_the_same_install_command_as_the_notes(helm: Helm):
    pattern = r'jq -n --rawfile lua (\S+) \\\n\s*\'(.+?)\'\)"'
    readme = re.search(pattern, (REPO / "README.md").read_text())
    notes = re.search(pattern, helm.notes())
    assert readme and notes and readme.groups() == notes.groups()
