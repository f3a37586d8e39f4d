"""Reading SFTJob manifests: YAML in, a validated `SFTJob` or one-line errors out.

Every error names where it is: `file:line` for YAML problems and the field
path (`spec.training.learningRate: ...`) for schema problems. Callers
print `ManifestError.errors` one per line; nothing here raises anything
else for bad input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sftjob.spec import API_GROUP, API_VERSION, KIND, NAME_RE, SFTJobSpec, cross_field_errors

API_VERSION_FULL = f"{API_GROUP}/{API_VERSION}"


class ManifestError(ValueError):
    """Bad input: `errors` holds one-line messages naming the file/line or field path."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("; ".join(errors))


@dataclass
class SFTJob:
    """A validated SFTJob: its metadata as given and its spec as the model."""

    name: str
    namespace: str | None
    spec: SFTJobSpec
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def uid(self) -> str | None:
        return self.metadata.get("uid")


def _loc_to_path(loc: tuple) -> str:
    out = "spec"
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}"
    return out


def format_validation_error(err: ValidationError) -> list[str]:
    """One line per pydantic error, e.g. `spec.training.learningRate: must be > 0 (got -1)`."""
    lines = []
    for e in err.errors(include_url=False):
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith(("function-after", "literal["))))
        # Unions of a scalar and a list report every branch; the first is enough.
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; unknown fields are rejected)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        got = e.get("input")
        if e["type"] not in ("missing", "extra_forbidden") and not isinstance(got, (dict, list)):
            msg += f" (got {got!r})"
        lines.append(f"{_loc_to_path(loc)}: {msg}")
    # Deduplicate while keeping order (union branches repeat the same field).
    return list(dict.fromkeys(lines))


def _field_lines(node: yaml.Node, path: str, out: dict[str, int]) -> dict[str, int]:
    """Field path (`spec.training.effectiveBatchSize`, `spec.resources.tolerations[0]`) -> 1-based line."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = f"{path}.{key.value}" if path else str(key.value)
            out[child] = key.start_mark.line + 1
            _field_lines(value, child, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[f"{path}[{i}]"] = item.start_mark.line + 1
            _field_lines(item, f"{path}[{i}]", out)
    return out


def _at_field(source: str, lines: dict[str, int] | None, error: str) -> str:
    """`file:line: error`, the line being that of the field the error names (or its nearest ancestor)."""
    if not source:
        return error
    if not lines:
        return f"{source}: {error}"
    path = error.split(":", 1)[0]
    while path and path not in lines:
        path = path[: max(path.rfind("."), path.rfind("["), 0)]
    file = source.rsplit(":", 1)[0]
    return f"{file}:{lines[path]}: {error}" if path else f"{source}: {error}"


def parse_sftjob(obj: Any, source: str = "<input>", lines: dict[str, int] | None = None) -> SFTJob:
    """Validate one decoded manifest; raise ManifestError naming every problem.

    With `lines` (field path -> line, from `load_documents`), each error
    points at the line of the field it names instead of the document's start.
    """
    prefix = f"{source}: " if source else ""
    if not isinstance(obj, dict):
        raise ManifestError([f"{prefix}expected a mapping (an SFTJob manifest), got {type(obj).__name__}"])
    errors = []
    if obj.get("apiVersion") != API_VERSION_FULL:
        errors.append(f"apiVersion: must be {API_VERSION_FULL} (got {obj.get('apiVersion')!r})")
    if obj.get("kind") != KIND:
        errors.append(f"kind: must be {KIND} (got {obj.get('kind')!r})")
    metadata = obj.get("metadata")
    name = None
    if not isinstance(metadata, dict):
        errors.append("metadata: required mapping with a name")
        metadata = {}
    else:
        name = metadata.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name) or len(name) > 52:
            errors.append(
                f"metadata.name: must be a DNS label of at most 52 characters "
                f"(lowercase letters, digits, '-'), got {name!r}"
            )
    spec_obj = obj.get("spec")
    spec = None
    if not isinstance(spec_obj, dict):
        errors.append("spec: required mapping")
    else:
        try:
            spec = SFTJobSpec.model_validate(spec_obj)
        except ValidationError as e:
            errors.extend(format_validation_error(e))
        else:
            errors.extend(cross_field_errors(spec))
    if errors:
        raise ManifestError([_at_field(source, lines, e) for e in errors])
    return SFTJob(name=name, namespace=metadata.get("namespace"), spec=spec, metadata=metadata, source=source)


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line each top-level document starts on."""


def load_documents(path: str | Path, with_lines: bool = False) -> list[tuple[Any, str]] | list[tuple[Any, str, dict[str, int]]]:
    """Decode every YAML document of a file as (object, "file:line"), plus its field lines if asked."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError([f"{p}: file not found"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError([f"{p}: cannot read ({e})"]) from None
    docs = []
    try:
        loader = _LineLoader(text)
        try:
            while loader.check_node():
                node = loader.get_node()
                line = node.start_mark.line + 1
                docs.append((loader.construct_document(node), f"{p}:{line}", _field_lines(node, "", {})))
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ManifestError([f"{where}: invalid YAML: {problem}"]) from None
    docs = [(d, src, lines) for d, src, lines in docs if d is not None]
    if not docs:
        raise ManifestError([f"{p}: no YAML documents found"])
    return docs if with_lines else [(d, src) for d, src, _ in docs]


def load_sftjobs(path: str | Path) -> list[SFTJob]:
    """All SFTJobs in a file; errors from every document are collected."""
    jobs, errors = [], []
    for obj, src, lines in load_documents(path, with_lines=True):
        try:
            jobs.append(parse_sftjob(obj, src, lines))
        except ManifestError as e:
            errors.extend(e.errors)
    if errors:
        raise ManifestError(errors)
    return jobs


def load_sftjob(path: str | Path) -> SFTJob:
    """The single SFTJob in a file."""
    jobs = load_sftjobs(path)
    if len(jobs) != 1:
        raise ManifestError([f"{path}: expected exactly one SFTJob, found {len(jobs)}"])
    return jobs[0]
