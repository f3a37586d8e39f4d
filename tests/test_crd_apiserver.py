"""The CRD against kube-apiserver's own rules for structural schemas, checked offline.

A CRD that kmock and kubernetes-validate accepted was refused by a real API
server (a description on `metadata`; a fieldPath into an undeclared
property), so `helm install` failed. `tests/support/apiserver_rules.py`
holds the server's published rules that need no server; the e2e tier
(`tests/e2e/`) applies the CRD to a real one.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from sftjob import crd as gen
from tests.support.apiserver_rules import resolve_field_path, violations

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("path", [gen.CRD_FILE, gen.CHART_CRD_FILE], ids=["crds", "chart"])
def test_committed_crd_meets_the_apiserver_rules(path):
    crd = yaml.safe_load((REPO / path).read_text(encoding="utf-8"))
    assert violations(crd) == []


def _root(crd: dict) -> dict:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def broken(change) -> list[str]:
    crd = copy.deepcopy(gen.build_crd())
    change(_root(crd))
    return violations(crd)


def test_a_description_on_metadata_is_refused():
    found = broken(lambda root: root["properties"]["metadata"].update(description="Standard object metadata."))
    assert found == ["spec.versions[0].schema.openAPIV3Schema.properties[metadata]: must not specify ['description'] "
                     "(only restrictions of name and generateName are allowed)"]


def test_declaring_other_metadata_fields_is_refused():
    found = broken(lambda root: root["properties"]["metadata"]["properties"].update(labels={"type": "object"}))
    assert any("must not declare ['labels']" in line for line in found)


def test_a_field_path_into_an_undeclared_property_is_refused():
    # The CRD as it was: metadata declared nothing, the name rule pointed at .metadata.name.
    found = broken(lambda root: root["properties"]["metadata"].pop("properties"))
    assert any(line.endswith("x-kubernetes-validations[0].fieldPath: fieldPath must be a valid path: "
                             "'.metadata.name': 'name' is not a declared property") for line in found)


def test_a_rule_selecting_an_undeclared_field_is_refused():
    def change(root):
        root["properties"]["spec"]["x-kubernetes-validations"].append(
            {"rule": "self.training.learningRat > 0", "message": "typo"})
    assert any("undefined field 'training.learningRat'" in line for line in broken(change))


def test_a_rule_that_does_not_parse_is_refused():
    def change(root):
        root["properties"]["spec"]["x-kubernetes-validations"].append({"rule": "self.model.source ==", "message": "x"})
    assert any("does not compile" in line for line in broken(change))


def test_list_map_keys_must_be_required_scalars():
    def change(root):
        items = root["properties"]["status"]["properties"]["conditions"]["items"]
        items["required"] = ["status"]
    assert any("map key 'type' must be required or have a default" in line for line in broken(change))


def test_list_type_only_on_arrays_and_preserve_unknown_only_true():
    def change(root):
        root["properties"]["spec"]["properties"]["model"]["x-kubernetes-list-type"] = "atomic"
        root["properties"]["spec"]["properties"]["image"]["x-kubernetes-preserve-unknown-fields"] = False
    found = broken(change)
    assert any("x-kubernetes-list-type is only allowed on arrays" in line for line in found)
    assert any("x-kubernetes-preserve-unknown-fields must be true or absent" in line for line in found)


def test_untyped_and_non_structural_nodes_are_refused():
    def change(root):
        del root["properties"]["spec"]["properties"]["image"]["type"]
        root["properties"]["spec"]["properties"]["model"]["additionalProperties"] = {"type": "string"}
    found = broken(change)
    assert any(".properties.image: type must be one of" in line for line in found)
    assert any(".properties.model: properties and additionalProperties are mutually exclusive" in line for line in found)


@pytest.mark.parametrize(("path", "ok"), [
    (".spec.model.source", True), (".spec.resources.nodeSelector['x']", True), (".spec.resources.tolerations[0].key", True),
    (".spec.resources.affinity.anything.below", True), (".spec.nope", False), (".spec.model.source.x", False), ("spec", False),
])
def test_field_paths_resolve_like_the_apiserver(path, ok):
    assert (resolve_field_path(_root(gen.build_crd()), path) is None) is ok
