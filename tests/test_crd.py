"""The generated CRD: drift, structure, examples against it, and its CEL rules.

Kubernetes itself is not here, so the checks an API server would make are
made with real parts: the CRD object against the official apiextensions
schema (kubernetes-validate), every example against the CRD's own
openAPIV3Schema (jsonschema, after the defaulting the API server applies),
and every CEL rule evaluated by a CEL implementation (`cel`) on valid and
invalid objects, agreeing with the Python check `sftjob validate` uses.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterator

import cel
import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from sftjob import crd as gen
from sftjob.manifest import load_sftjobs
from sftjob.spec import CROSS_FIELD_RULES, SFTJobSpec

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
K8S_VERSIONS = ("1.32", "1.33", "1.34")


@pytest.fixture(scope="module")
def crd() -> dict:
    return yaml.safe_load((REPO / gen.CRD_FILE).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def schema(crd) -> dict:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


# ---- helpers: what the API server does, done here --------------------------


def walk(node: dict, path: str = "") -> Iterator[tuple[str, dict]]:
    """Every schema node with its field path (`spec.model.source`, `spec.resources.tolerations[]`)."""
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}" if path else name)
    if "items" in node:
        yield from walk(node["items"], path + "[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], path + "{}")


def to_json_schema(node: dict) -> dict:
    """A Kubernetes structural schema as JSON Schema 2020-12, with strict unknown-field checks.

    Objects with properties reject unknown fields (kubectl's default strict
    field validation); `x-kubernetes-preserve-unknown-fields` objects accept
    anything; boolean exclusive bounds become numeric ones.
    """
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("description", "default", "format"):
            continue
        if key == "properties":
            out[key] = {k: to_json_schema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = to_json_schema(value)
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            continue
        else:
            out[key] = value
    for bound in ("Minimum", "Maximum"):
        if node.get("exclusive" + bound):
            out["exclusive" + bound] = out.pop(bound.lower())
    if node.get("type") == "object" and "properties" in node:
        out["additionalProperties"] = False
    return out


def apply_defaults(node: dict, value: Any) -> Any:
    """Structural defaulting as the API server does it: top-down, then into defaulted values."""
    if isinstance(value, dict) and "properties" in node:
        for name, sub in node["properties"].items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
    elif isinstance(value, list) and "items" in node:
        return [apply_defaults(node["items"], v) for v in value]
    return value


def cel_ok(rule: str, **context: Any) -> bool:
    """Evaluate one CEL rule; a runtime error counts as a rejection, as in the API server."""
    try:
        result = cel.evaluate(rule, context)
    except (KeyError, RuntimeError, TypeError, ZeroDivisionError):
        return False
    assert isinstance(result, bool), f"{rule!r} gave {result!r}"
    return result


def example_docs() -> list[tuple[str, dict]]:
    docs = []
    for path in EXAMPLES:
        for i, doc in enumerate(d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d):
            docs.append((f"{path.name}#{i}", doc))
    return docs


# ---- drift -------------------------------------------------------------------


def test_committed_files_match_the_generator():
    for path, text in gen.generated_files(REPO).items():
        assert path.exists(), f"{path} missing: run `python -m sftjob.crd`"
        assert path.read_text(encoding="utf-8") == text, f"{path} is stale: run `python -m sftjob.crd`"


def test_generation_is_deterministic():
    assert gen.crd_yaml() == gen.crd_yaml()
    assert gen.reference_markdown() == gen.reference_markdown()


def test_check_mode_reports_missing_and_stale_files(tmp_path, capsys):
    assert gen.main(["--root", str(tmp_path), "--check"]) == 1
    assert gen.main(["--root", str(tmp_path)]) == 0
    assert gen.main(["--root", str(tmp_path), "--check"]) == 0
    crd_file = tmp_path / gen.CRD_FILE
    crd_file.write_text(crd_file.read_text().replace("sft\n", "sfj\n"))
    assert gen.main(["--root", str(tmp_path), "--check"]) == 1
    assert "stale" in capsys.readouterr().err


def test_crd_file_holds_what_build_crd_returns(crd):
    assert crd == gen.build_crd()


# ---- the CRD as an object ----------------------------------------------------


def test_names_and_version(crd):
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "sftjobs.sftjob.dev"
    assert spec["group"] == "sftjob.dev" and spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "SFTJob", "listKind": "SFTJobList", "plural": "sftjobs", "singular": "sftjob",
        "shortNames": ["sft"], "categories": ["ml"],
    }
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_printer_columns(crd):
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    cols = {c["name"]: c["jsonPath"] for c in columns}
    assert cols == {
        "Phase": ".status.phase", "Ready": '.status.conditions[?(@.type=="Ready")].status', "Model": ".spec.model.source",
        "Step": ".status.progress.step", "Loss": ".status.progress.loss", "Eval-Loss": ".status.progress.evalLoss",
        "Best": ".status.bestCheckpoint.evalLoss", "Age": ".metadata.creationTimestamp",
    }
    # `kubectl get sftjobs` keeps its columns; READY shows with -o wide.
    assert [c["name"] for c in columns if not c.get("priority")] == ["Phase", "Model", "Step", "Loss", "Eval-Loss", "Best", "Age"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_crd_validates_against_the_apiextensions_schema(crd, version):
    kubernetes_validate.validate(crd, version, strict=True)


def test_every_field_has_a_description(schema):
    # metadata is the exception: the API server forbids describing it.
    missing = [path for path, node in walk(schema) if path and not path.endswith(("[]", "{}"))
               and not path.startswith("metadata") and not node.get("description", "").strip()]
    # Object items (tolerations[], conditions[]) describe themselves too.
    missing += [path for path, node in walk(schema) if path.endswith("[]") and node.get("type") == "object"
                and not node.get("description", "").strip()]
    assert not missing, f"fields without a description: {missing}"


def test_schema_is_structural(schema):
    """The rules kube-apiserver applies to a CRD schema before it accepts it."""
    for path, node in walk(schema):
        where = path or "<root>"
        for junctor in ("anyOf", "oneOf", "allOf", "not", "$ref", "nullable", "title", "const", "uniqueItems"):
            assert junctor not in node, f"{where}: {junctor} is not used in a structural schema"
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            assert node.get("type") in ("object", "array", "string", "integer", "number", "boolean"), where
        if "properties" in node:
            assert "additionalProperties" not in node, f"{where}: properties and additionalProperties exclude each other"
        assert not isinstance(node.get("additionalProperties"), bool), f"{where}: additionalProperties must be a schema"
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            if bound in node:
                assert node[bound] is True and bound.replace("exclusiveM", "m") in node, where
        if node.get("x-kubernetes-list-type") == "map":
            keys = node["x-kubernetes-list-map-keys"]
            assert set(keys) <= set(node["items"].get("required", [])), where
    # Anything more on metadata (a description is enough) and a real API server refuses the CRD.
    assert schema["properties"]["metadata"] == {"type": "object", "properties": {"name": {"type": "string"}}}
    free_form = sorted(p for p, n in walk(schema) if n.get("x-kubernetes-preserve-unknown-fields"))
    assert free_form == ["spec.resources.affinity", "status.resolved"]


def test_defaults_are_valid_and_pruned(schema):
    for path, node in walk(schema):
        if "default" in node:
            jsonschema.Draft202012Validator(to_json_schema(node)).validate(node["default"])


def test_spec_schema_carries_the_model_constraints(schema):
    spec = schema["properties"]["spec"]
    training = spec["properties"]["training"]["properties"]
    assert training["learningRate"] == {
        "type": "number", "description": "Peak learning rate.", "minimum": 0, "exclusiveMinimum": True, "maximum": 1,
    }
    assert spec["properties"]["model"]["properties"]["dtype"]["enum"] == ["auto", "bfloat16", "float16", "float32"]
    assert spec["properties"]["resources"]["properties"]["cpu"]["pattern"]
    assert spec["properties"]["resources"]["properties"]["nodeSelector"]["additionalProperties"]["type"] == "string"
    lora = training["lora"]["properties"]
    assert lora["targetModules"]["type"] == "array" and lora["targetModules"]["default"] == ["all-linear"]
    assert spec["required"] == ["model", "dataset", "output"]
    assert spec["properties"]["training"]["default"] == {}
    assert spec["properties"]["monitoring"]["properties"]["reportTo"]["default"] == ["tensorboard"]


def test_status_schema_is_described(schema):
    status = schema["properties"]["status"]["properties"]
    assert status["phase"]["enum"] == [
        "Pending", "Queued", "SanityChecking", "Training", "Exporting", "Succeeded", "Failed", "Suspended",
    ]
    cond = status["conditions"]["items"]["properties"]
    assert set(cond) == {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"}
    assert {"Ready", "Reconciling", "Stalled"} <= set(cond["type"]["enum"])  # what kubectl wait and kstatus read
    for name in ("progress", "sanityCheck", "bestCheckpoint", "jobName", "observedGeneration", "startTime",
                 "completionTime", "resolved"):
        assert name in status
    assert {"step", "loss", "evalLoss", "eta", "etaSeconds"} <= set(status["progress"]["properties"])


# ---- examples against the schema --------------------------------------------


def test_there_are_examples():
    names = {p.name for p in EXAMPLES}
    assert {"llama-8b-recipe.yaml", "lora.yaml", "multi-gpu.yaml", "kueue.yaml"} <= names


@pytest.mark.parametrize("where,doc", example_docs(), ids=[w for w, _ in example_docs()])
def test_example_validates_against_the_crd(schema, where, doc):
    defaulted = apply_defaults(schema, copy.deepcopy(doc))
    whole = to_json_schema(schema)
    whole["properties"]["metadata"]["additionalProperties"] = True  # ObjectMeta is the server's own, not the CRD's
    jsonschema.Draft202012Validator(whole).validate(defaulted)
    for rule in schema["x-kubernetes-validations"]:
        if "oldSelf" not in rule["rule"]:
            assert cel_ok(rule["rule"], self=defaulted), f"{where}: {rule['message']}"
    for rule in schema["properties"]["spec"]["x-kubernetes-validations"]:
        assert cel_ok(rule["rule"], self=defaulted["spec"]), f"{where}: {rule['message']}"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_parses_with_the_manifest_loader(path):
    jobs = load_sftjobs(path)
    assert jobs and all(j.spec.output.uri for j in jobs)


BASE_SPEC = {
    "model": {"source": "org/model"},
    "dataset": {"train": "s3://b/train.jsonl", "validation": "s3://b/val.jsonl"},
    "output": {"uri": "s3://b/out"},
}


def with_change(path: str, value: Any) -> dict:
    spec = copy.deepcopy(BASE_SPEC)
    *parents, leaf = path.split(".")
    node = spec
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return spec


SCHEMA_CASES = [
    ("valid", BASE_SPEC, True),
    ("unknown field", with_change("training.learningrate", 1e-5), False),
    ("unknown top-level field", with_change("gpus", 1), False),
    ("zero learning rate", with_change("training.learningRate", 0), False),
    ("learning rate at the maximum", with_change("training.learningRate", 1), True),
    ("bad dtype", with_change("model.dtype", "bf16"), False),
    ("targetModules as a string", with_change("training.lora", {"targetModules": "all-linear"}), False),
    ("targetModules as a list", with_change("training.lora", {"targetModules": ["q_proj", "v_proj"]}), True),
    ("empty targetModules", with_change("training.lora", {"targetModules": []}), False),
    ("too many GPUs", with_change("resources.gpus", 17), False),
    ("bad quantity", with_change("resources.memory", "64 GB"), False),
    ("good quantity", with_change("resources.memory", "500Mi"), True),
    ("validationSplit too big", with_change("dataset.validationSplit", 0.6), False),
    ("nodeSelector value not a string", with_change("resources.nodeSelector", {"a": 1}), False),
    ("toleration with unknown field", with_change("resources.tolerations", [{"key": "k", "opertor": "Exists"}]), False),
    ("affinity is free-form", with_change("resources.affinity", {"nodeAffinity": {"x": [1]}}), True),
    ("sanity steps below 2", with_change("sanityCheck.steps", 1), False),
    ("reportTo unknown sink", with_change("monitoring.reportTo", ["mlflow"]), False),
    ("secret ref without key", with_change("model.tokenSecretRef", {"name": "hf"}), False),
]


@pytest.mark.parametrize("name,spec,valid", SCHEMA_CASES, ids=[c[0] for c in SCHEMA_CASES])
def test_crd_schema_and_pydantic_model_agree(schema, name, spec, valid):
    spec_schema = to_json_schema(schema["properties"]["spec"])
    errors = list(jsonschema.Draft202012Validator(spec_schema).iter_errors(apply_defaults(
        schema["properties"]["spec"], copy.deepcopy(spec))))
    assert (not errors) is valid, f"CRD schema: {[e.message for e in errors]}"
    try:
        SFTJobSpec.model_validate(spec)
        pydantic_valid = True
    except ValidationError:
        pydantic_valid = False
    assert pydantic_valid is valid


def test_missing_required_section_is_rejected(schema):
    spec = copy.deepcopy(BASE_SPEC)
    del spec["output"]
    validator = jsonschema.Draft202012Validator(to_json_schema(schema["properties"]["spec"]))
    assert any("'output' is a required property" in e.message for e in validator.iter_errors(spec))


# ---- CEL: cross-field rules ------------------------------------------------------

# (case, spec, fields of the rules expected to fail)
CEL_CASES = [
    ("valid", BASE_SPEC, set()),
    ("saveSteps a multiple of evalSteps",
     with_change("training", {"evalSteps": 50, "saveSteps": 200}), set()),
    ("saveSteps not a multiple", with_change("training", {"evalSteps": 100, "saveSteps": 150}),
     {"spec.training.saveSteps"}),
    ("saveSteps without evalSteps", with_change("training", {"saveSteps": 150}), set()),
    ("4bit without lora", with_change("model.quantization", "4bit"), {"spec.model.quantization"}),
    ("8bit with lora", {**with_change("model.quantization", "8bit"), "training": {"lora": {}}}, set()),
    ("quantization none explicitly", with_change("model.quantization", "none"), set()),
    ("best checkpoint without validation",
     {**BASE_SPEC, "dataset": {"train": "s3://b/t.jsonl"}}, {"spec.dataset"}),
    ("last checkpoint without validation",
     {**BASE_SPEC, "dataset": {"train": "s3://b/t.jsonl"}, "output": {"uri": "s3://b/o", "keep": "last"}}, set()),
    ("validationSplit alone", {**BASE_SPEC, "dataset": {"train": "s3://b/t.jsonl", "validationSplit": 0.1}}, set()),
    ("validation and validationSplit",
     with_change("dataset.validationSplit", 0.1), {"spec.dataset.validationSplit"}),
    ("effective batch divides (1 GPU by default)",
     with_change("training", {"perDeviceBatchSize": 4, "effectiveBatchSize": 32}), set()),
    ("effective batch does not divide",
     with_change("training", {"perDeviceBatchSize": 4, "effectiveBatchSize": 30}), {"spec.training.effectiveBatchSize"}),
    ("effective batch across 8 GPUs",
     {**with_change("training", {"perDeviceBatchSize": 4, "effectiveBatchSize": 64}), "resources": {"gpus": 8}}, set()),
    ("effective batch not divisible by 8 GPUs",
     {**with_change("training", {"perDeviceBatchSize": 4, "effectiveBatchSize": 48}), "resources": {"gpus": 8}},
     {"spec.training.effectiveBatchSize"}),
    ("CPU counts as one device",
     {**with_change("training", {"perDeviceBatchSize": 4, "effectiveBatchSize": 12}), "resources": {"gpus": 0}}, set()),
    ("one node with a work volume claim", {**BASE_SPEC, "resources": {"workVolumeClaim": "scratch"}}, set()),
    ("two nodes with their own scratch volumes", {**BASE_SPEC, "resources": {"nodes": 2}}, set()),
    ("two nodes sharing a work volume claim", {**BASE_SPEC, "resources": {"nodes": 2, "workVolumeClaim": "scratch"}},
     {"spec.resources.workVolumeClaim"}),
    ("fsdp over 8 GPUs", {**BASE_SPEC, "resources": {"gpus": 8, "strategy": "fsdp"}}, set()),
    ("fsdp over 2 nodes of one GPU", {**BASE_SPEC, "resources": {"nodes": 2, "strategy": "fsdp"}}, set()),
    ("fsdp on one GPU", {**BASE_SPEC, "resources": {"strategy": "fsdp"}}, {"spec.resources.strategy"}),
    ("fsdp on the CPU", {**BASE_SPEC, "resources": {"gpus": 0, "strategy": "fsdp"}}, {"spec.resources.strategy"}),
    ("ddp on one GPU", {**BASE_SPEC, "resources": {"strategy": "ddp", "gpuMemory": "24Gi"}}, set()),
    ("output on S3", with_change("output.uri", "s3://b/out"), set()),
    ("output on a PVC", with_change("output.uri", "pvc://claim/out"), set()),
    ("output as a local path", with_change("output.uri", "./out"), set()),
    ("output over ftp", with_change("output.uri", "ftp://host/out"), {"spec.output.uri"}),
    ("output with no scheme or path", with_change("output.uri", "bucket/out"), {"spec.output.uri"}),
    ("model from the hub", with_change("model.source", "meta-llama/Llama-3.1-8B-Instruct"), set()),
    ("model over https", with_change("model.source", "https://example.com/m"), {"spec.model.source"}),
    ("data from GCS", with_change("dataset.train", "gs://b/t.jsonl"), {"spec.dataset.train"}),
    ("validation over http", with_change("dataset.validation", "http://h/v.jsonl"), {"spec.dataset.validation"}),
    ("several rules at once",
     {**with_change("model.quantization", "4bit"), "dataset": {"train": "t", "validation": "v", "validationSplit": 0.1},
      "training": {"evalSteps": 3, "saveSteps": 4}},
     {"spec.model.quantization", "spec.dataset.validationSplit", "spec.training.saveSteps"}),
]


@pytest.mark.parametrize("name,spec,failing", CEL_CASES, ids=[c[0] for c in CEL_CASES])
def test_cross_field_cel_rules_and_python_checks_agree(schema, name, spec, failing):
    spec_node = schema["properties"]["spec"]
    defaulted = apply_defaults(spec_node, copy.deepcopy(spec))
    model = SFTJobSpec.model_validate(spec)
    by_field = {r.field: r for r in CROSS_FIELD_RULES}
    cel_failing, python_failing = set(), set()
    for rule in spec_node["x-kubernetes-validations"]:
        field = "spec" + rule["fieldPath"]
        if not cel_ok(rule["rule"], self=defaulted):
            cel_failing.add(field)
        if not by_field[field].check(model):
            python_failing.add(field)
    assert cel_failing == failing
    assert python_failing == failing


def test_cel_rules_hold_without_defaulting():
    """Rules guard absent optional sections (objects stored before a default existed)."""
    for rule in CROSS_FIELD_RULES:
        assert cel_ok(rule.cel, self=copy.deepcopy(BASE_SPEC)), rule.field


def test_every_cross_field_rule_is_in_the_crd(schema):
    rules = schema["properties"]["spec"]["x-kubernetes-validations"]
    assert [(r["rule"], r["message"], "spec" + r["fieldPath"]) for r in rules] == [
        (r.cel, r.message, r.field) for r in CROSS_FIELD_RULES
    ]


# ---- CEL: rules on the whole object ----------------------------------------------


def sftjob(name: str = "llama", spec: dict | None = None, status: dict | None = None) -> dict:
    obj = {"apiVersion": "sftjob.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": name, "namespace": "a"},
           "spec": copy.deepcopy(spec or BASE_SPEC)}
    if status is not None:
        obj["status"] = status
    return obj


def root_rule(schema: dict, uses_old_self: bool) -> str:
    [rule] = [r["rule"] for r in schema["x-kubernetes-validations"] if ("oldSelf" in r["rule"]) == uses_old_self]
    return rule


@pytest.mark.parametrize("name,ok", [
    ("a" * 52, True), ("a" * 53, False), ("llama-8b", True), ("llama.8b", False), ("Llama", False), ("x-", False),
])
def test_name_rule(schema, name, ok):
    assert cel_ok(root_rule(schema, False), self=sftjob(name)) is ok


STARTED = {"phase": "Training", "jobName": "llama-sft"}


def changed(path: str, value: Any) -> dict:
    obj = sftjob(status=STARTED)
    node = obj
    *parents, leaf = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return obj


@pytest.mark.parametrize("what,new,allowed", [
    ("model source", changed("spec.model.source", "org/other"), False),
    ("dataset", changed("spec.dataset.train", "s3://b/other.jsonl"), False),
    ("learning rate", changed("spec.training.learningRate", 1e-4), False),
    ("lora added", changed("spec.training.lora", {"r": 8}), False),
    ("output", changed("spec.output.uri", "s3://b/elsewhere"), False),
    ("gpus", changed("spec.resources.gpus", 2), False),
    ("suspend", changed("spec.suspend", True), True),
    ("monitoring", changed("spec.monitoring.reportTo", ["wandb"]), True),
    ("sanity check", changed("spec.sanityCheck.steps", 20), True),
    ("status only", changed("status.phase", "Exporting"), True),
    ("nothing", sftjob(status=STARTED), True),
])
def test_immutability_once_the_job_exists(schema, what, new, allowed):
    old = apply_defaults(schema, sftjob(status=STARTED))
    new = apply_defaults(schema, new)
    assert cel_ok(root_rule(schema, True), self=new, oldSelf=old) is allowed


@pytest.mark.parametrize("old_status", [None, {}, {"phase": "Pending"}])
def test_spec_may_change_before_the_job_exists(schema, old_status):
    old = apply_defaults(schema, sftjob(status=old_status))
    new = apply_defaults(schema, sftjob(spec=with_change("model.source", "org/other"), status=old_status))
    new["spec"]["resources"]["gpus"] = 4
    assert cel_ok(root_rule(schema, True), self=new, oldSelf=old)


def test_immutability_rule_tolerates_absent_optional_sections(schema):
    """An object stored without training/resources (no defaulting) compares by presence."""
    old, same = sftjob(status=STARTED), sftjob(status=STARTED)
    assert cel_ok(root_rule(schema, True), self=same, oldSelf=old)
    added = sftjob(spec=with_change("training.epochs", 2), status=STARTED)
    assert not cel_ok(root_rule(schema, True), self=added, oldSelf=old)


def test_immutability_rule_names_the_frozen_sections(schema):
    [rule] = [r for r in schema["x-kubernetes-validations"] if "oldSelf" in r["rule"]]
    for section in ("model", "dataset", "training", "output", "resources"):
        assert f"self.spec.{section} == oldSelf.spec.{section}" in rule["rule"]
        assert f"spec.{section}" in rule["message"]
    assert "suspend" not in rule["rule"] and rule["fieldPath"] == ".spec"


# ---- the reference doc --------------------------------------------------------------


def test_reference_lists_every_field(schema):
    text = (REPO / gen.REFERENCE_FILE).read_text(encoding="utf-8")
    for path, node in walk(schema["properties"]["spec"], "spec"):
        if path != "spec" and not path.endswith(("{}", "[]")):
            assert f"| `{path}` |" in text, path
    assert "`[\"all-linear\"]`" in text
    for rule in CROSS_FIELD_RULES:
        assert rule.message in text
