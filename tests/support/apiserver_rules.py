"""What kube-apiserver checks on a CRD before it accepts it, where that can be checked offline.

kmock accepts any CRD, and `kubernetes-validate` only checks the shape of the
CustomResourceDefinition object, so a CRD can pass both and still be refused
by a real API server (it happened: `helm install` failed). These are the
published rules for structural schemas (Kubernetes docs, "Specifying a
structural schema", "Validation rules") that need no server:

- `metadata` at the root may only restrict `name` and `generateName`: no
  description, default, validation or other property on it;
- every `x-kubernetes-validations[].fieldPath` resolves through declared
  properties from the node the rule sits on;
- every field a rule selects (`self.a.b`, `oldSelf.a.b`) is declared there
  (the server type-checks rules against the schema: "undefined field");
- every rule parses as CEL;
- `x-kubernetes-*` extensions sit where they are allowed: list types on
  arrays only, map keys required (or defaulted) scalar properties of object
  items, `set` on scalar items, preserve-unknown-fields only as `true`;
- structural: every node typed (unless it preserves unknown fields or is
  int-or-string), `properties` and `additionalProperties` never together,
  `additionalProperties: false` never written.

`violations(crd)` returns one line per broken rule, naming the schema path.
What stays for the e2e tier on a real server: the CEL cost budget, and the
Kubernetes-only CEL functions (`cel` implements the standard library only).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import cel

_TYPES = ("object", "array", "string", "integer", "number", "boolean")
_LIST_TYPES = ("atomic", "set", "map")
# `self.a.b` / `oldSelf.a` selections; a segment followed by "(" is a method call and ends the path.
_SELECTION = re.compile(r"\b(self|oldSelf)((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
_FIELD_PATH_SEGMENT = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\['([^']+)'\]|\[(\d+)\]")


def _walk(node: dict, path: str) -> Iterator[tuple[str, dict]]:
    yield path, node
    for name, sub in (node.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.properties.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}.items")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}.additionalProperties")


def _child(node: dict, name: str) -> dict | None:
    """The schema of field `name` of an object node, or None when it is not declared."""
    if name in (node.get("properties") or {}):
        return node["properties"][name]
    if isinstance(node.get("additionalProperties"), dict):
        return node["additionalProperties"]
    return None


def _open(node: dict) -> bool:
    """Fields below a node that preserves unknown fields are not declared, and need not be."""
    return bool(node.get("x-kubernetes-preserve-unknown-fields")) and "properties" not in node


def resolve_field_path(node: dict, field_path: str) -> str | None:
    """Why `field_path` does not resolve from `node`, or None when it does."""
    pos = 0
    current = node
    while pos < len(field_path):
        m = _FIELD_PATH_SEGMENT.match(field_path, pos)
        if not m:
            return f"{field_path!r} is not a valid path at {field_path[pos:]!r}"
        pos = m.end()
        name, key, index = m.groups()
        if index is not None:
            if current.get("type") != "array":
                return f"{field_path!r}: [{index}] indexes a non-array"
            current = current["items"]
            continue
        if _open(current):
            return None
        sub = _child(current, name or key)
        if sub is None:
            return f"{field_path!r}: {name or key!r} is not a declared property"
        current = sub
    return None


def _selected_paths(rule: str) -> Iterator[tuple[str, list[str]]]:
    for m in _SELECTION.finditer(rule):
        segments = m.group(2).lstrip(".").split(".")
        after = rule[m.end():m.end() + 1]
        if after == "(":  # the last segment is a method (`.size()`, `.matches(...)`)
            segments = segments[:-1]
        yield m.group(0), segments


def _undeclared(node: dict, segments: list[str], is_root: bool) -> str | None:
    current = node
    for i, name in enumerate(segments):
        if _open(current):
            return None
        if is_root and i == 0 and name == "metadata":
            # The server gives root rules metadata.name and generateName, declared or not.
            return None if segments[1:2] in ([], ["name"], ["generateName"]) else f"metadata.{segments[1]}"
        if current.get("type") != "object":
            return None  # a map value or a method result; no longer a declared-field selection
        sub = _child(current, name)
        if sub is None:
            return ".".join(segments[: i + 1])
        current = sub
    return None


def _metadata_violations(root: dict) -> list[str]:
    meta = (root.get("properties") or {}).get("metadata")
    if meta is None:
        return []
    rest = {k: v for k, v in meta.items() if k not in ("type", "properties")}
    props = meta.get("properties") or {}
    problems = []
    if meta.get("type", "object") != "object":
        problems.append("type must be object")
    if rest:
        problems.append(f"must not specify {sorted(rest)}")
    if set(props) - {"name", "generateName"}:
        problems.append(f"must not declare {sorted(set(props) - {'name', 'generateName'})}")
    return [f"openAPIV3Schema.properties[metadata]: {p} (only restrictions of name and generateName are allowed)"
            for p in problems]


def _extension_violations(path: str, node: dict) -> list[str]:
    out = []
    list_type = node.get("x-kubernetes-list-type")
    if list_type is not None:
        if node.get("type") != "array":
            out.append(f"{path}: x-kubernetes-list-type is only allowed on arrays")
        elif list_type not in _LIST_TYPES:
            out.append(f"{path}: x-kubernetes-list-type must be one of {_LIST_TYPES}")
        items = node.get("items") or {}
        if list_type == "set" and items.get("type") in ("object", "array"):
            out.append(f"{path}: a set's items must be scalars")
        if list_type == "map":
            keys = node.get("x-kubernetes-list-map-keys") or []
            if not keys or items.get("type") != "object":
                out.append(f"{path}: a map list needs x-kubernetes-list-map-keys and object items")
            for key in keys:
                sub = (items.get("properties") or {}).get(key)
                if sub is None or sub.get("type") not in ("string", "integer", "number", "boolean"):
                    out.append(f"{path}: map key {key!r} must be a scalar property of the items")
                elif key not in (items.get("required") or []) and "default" not in sub:
                    out.append(f"{path}: map key {key!r} must be required or have a default")
    elif "x-kubernetes-list-map-keys" in node:
        out.append(f"{path}: x-kubernetes-list-map-keys needs x-kubernetes-list-type: map")
    if node.get("x-kubernetes-preserve-unknown-fields") is False:
        out.append(f"{path}: x-kubernetes-preserve-unknown-fields must be true or absent")
    return out


def _structural_violations(path: str, node: dict) -> list[str]:
    out = []
    untyped_ok = node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string")
    if node.get("type") not in _TYPES and not untyped_ok:
        out.append(f"{path}: type must be one of {_TYPES}")
    if "properties" in node and "additionalProperties" in node:
        out.append(f"{path}: properties and additionalProperties are mutually exclusive")
    if node.get("additionalProperties") is False:
        out.append(f"{path}: additionalProperties: false is not allowed (unknown fields are pruned)")
    for junctor in ("$ref", "anyOf", "oneOf", "allOf", "not"):
        if junctor in node:
            out.append(f"{path}: {junctor} is not supported here")
    return out


def _rule_violations(path: str, node: dict, is_root: bool) -> list[str]:
    out = []
    for i, rule in enumerate(node.get("x-kubernetes-validations") or []):
        where = f"{path}.x-kubernetes-validations[{i}]"
        try:
            cel.compile(rule["rule"])
        except ValueError as e:
            out.append(f"{where}.rule: does not compile: {str(e).splitlines()[0]}")
        if "fieldPath" in rule:
            why = resolve_field_path(node, rule["fieldPath"])
            if why:
                out.append(f"{where}.fieldPath: fieldPath must be a valid path: {why}")
        for text, segments in _selected_paths(rule["rule"]):
            field = _undeclared(node, segments, is_root)
            if field:
                out.append(f"{where}.rule: {text}: undefined field {field!r}")
        if "oldSelf" in rule["rule"] and "messageExpression" in rule and "oldSelf" in rule["messageExpression"]:
            out.append(f"{where}.messageExpression: may not use oldSelf")
    return out


def violations(crd: dict[str, Any]) -> list[str]:
    """Every rule the CRD breaks, one line each (empty: a real API server's offline checks pass)."""
    out = []
    for v, version in enumerate(crd["spec"]["versions"]):
        root = version["schema"]["openAPIV3Schema"]
        base = f"spec.versions[{v}].schema.openAPIV3Schema"
        out += [f"spec.versions[{v}].schema.{p}" for p in _metadata_violations(root)]
        for path, node in _walk(root, base):
            out += _structural_violations(path, node)
            out += _extension_violations(path, node)
            out += _rule_violations(path, node, is_root=path == base)
    return out
