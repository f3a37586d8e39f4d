"""Training data: load local files into normalized conversations.

Accepted files are ``.jsonl``, ``.json`` (an array of rows, or one row per
line) and ``.parquet``. Accepted rows are either

* ``{"messages": [{"role": ..., "content": ...}, ...]}``, or
* ``{"prompt": str, "completion": str}`` with an optional ``"system": str``,
  or TRL's conversational form where ``prompt`` and ``completion`` are both
  lists of messages.

Every row becomes an :class:`Example` holding a plain list of
``{"role", "content"}`` dicts. Problems are collected across the file and
raised together as one :class:`DatasetError`, each naming ``file:line`` (JSONL)
or ``file:#index`` (JSON array, Parquet; 0-based), so a user fixes them all
in one pass. Nothing is dropped silently.

This module must stay importable without torch/transformers; pyarrow is only
imported when a Parquet file is read.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from sftjob_runtime.errors import one_line

FORMATS = ("auto", "messages", "prompt-completion")
TRAIN_ON = ("all-assistant", "last-assistant")
ROLES = ("system", "user", "assistant")
SUFFIXES = (".jsonl", ".json", ".parquet")

# Enough to show a pattern (a wrong key everywhere, a bad export) without
# burying the user; the total is still counted and reported.
MAX_ERRORS = 20
# How many errors the one-line message spells out before "and N more".
SHOWN_ERRORS = 3

_MESSAGES = "messages"
_PROMPT_COMPLETION = "prompt-completion"


@dataclass(frozen=True)
class Example:
    """One training conversation.

    ``messages`` is a list of ``{"role": "system"|"user"|"assistant",
    "content": str}``; ``source`` says where it came from: ``"path:line"`` for
    JSONL, ``"path:#index"`` (0-based) for a JSON array or a Parquet row.
    """

    messages: list[dict]
    source: str
    # Index of the first message whose assistant turns are trained: the completion's first
    # message for prompt-completion rows (the prompt, its assistant turns included, is
    # context, as TRL's completion_only_loss has it); 0 trains every assistant turn.
    train_from: int = 0


class DatasetError(ValueError):
    """The training data cannot be used as it is.

    ``errors`` lists the individual problems (at most :data:`MAX_ERRORS`),
    each a single line starting with ``file:line`` or ``file:#index``;
    ``total`` counts all problems found, including those not kept. ``str()``
    is one line: the first few problems and how many there are in all.
    """

    def __init__(self, errors: Iterable[str], total: int | None = None) -> None:
        self.errors = [one_line(e) for e in errors]
        if not self.errors:
            raise ValueError("DatasetError needs at least one error")
        self.total = max(total if total is not None else 0, len(self.errors))
        super().__init__(self._summary())

    def __reduce__(self):
        # Rebuild from the parts, not from the summary, when pickled across processes.
        return (type(self), (self.errors, self.total))

    def _summary(self) -> str:
        if self.total == 1:
            return self.errors[0]
        shown = "; ".join(self.errors[:SHOWN_ERRORS])
        rest = self.total - min(SHOWN_ERRORS, len(self.errors))
        more = f" (and {rest} more)" if rest else ""
        return f"{self.total} problems in the training data: {shown}{more}"


def load_examples(path: str | Path, *, format: str = "auto", train_on: str = "all-assistant") -> list[Example]:
    """Read ``path`` (.jsonl, .json or .parquet) into a list of examples.

    ``format`` is ``"auto"`` (decided by the file's first row; a later row of
    the other format is an error), ``"messages"`` or ``"prompt-completion"``.
    ``train_on`` is ``"all-assistant"`` (every assistant turn of a messages
    row; the completion of a prompt-completion row) or ``"last-assistant"``
    (only each row's last assistant turn).
    Raises :class:`DatasetError` listing every problem found, each with its
    ``file:line``.
    """
    if format not in FORMATS:
        raise DatasetError([f"unknown dataset format {format!r}: use one of {', '.join(FORMATS)}"])
    shown = str(path)
    file = Path(path)
    if not file.exists():
        raise DatasetError([f"{shown}: file not found — check the dataset path"])
    if file.is_dir():
        raise DatasetError([f"{shown}: is a directory — point to a {_suffix_list()} file"])
    suffix = file.suffix.lower()
    if suffix not in SUFFIXES:
        raise DatasetError(
            [f'{shown}: unsupported file type "{file.suffix or "(none)"}" — use a {_suffix_list()} file']
        )

    collector = _Collector()
    if suffix == ".parquet":
        rows = _parquet_rows(file, shown, collector)
    elif suffix == ".json":
        rows = _json_rows(file, shown, collector)
    else:
        rows = _jsonl_rows(file.read_bytes(), shown, collector)

    if train_on not in TRAIN_ON:
        raise DatasetError([f"unknown trainOn {train_on!r}: use one of {', '.join(TRAIN_ON)}"])
    examples = _normalize_rows(rows, format, collector, last_only=train_on == "last-assistant")
    collector.raise_if_any()
    if not examples:
        raise DatasetError([f"{shown}: no rows — the file holds no training examples"])
    return examples


def split_validation(
    examples: list[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Split off ``fraction`` of ``examples`` for validation, reproducibly.

    The same examples, fraction and seed always give the same split; both
    parts keep the input order. Validation gets at least one example and
    training keeps at least one; a dataset of fewer than two examples raises
    :class:`DatasetError`.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be between 0 and 1 (exclusive), got {fraction}")
    count = len(examples)
    if count < 2:
        raise DatasetError(
            [
                f"the dataset has {count} example{'s' if count != 1 else ''}; splitting off a "
                "validation set needs at least 2 — add examples or give a separate validation file"
            ]
        )
    n_val = min(max(1, round(count * fraction)), count - 1)
    order = list(range(count))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    train = [e for i, e in enumerate(examples) if i not in val_idx]
    val = [e for i, e in enumerate(examples) if i in val_idx]
    return train, val


def dataset_stats(examples: list[Example]) -> dict:
    """Small summary for logs and status: counts, turns and sizes in characters."""
    n = len(examples)
    chars = [sum(len(m["content"]) for m in e.messages) for e in examples]
    assistant = [sum(m["role"] == "assistant" for m in e.messages) for e in examples]
    return {
        "examples": n,
        "messages": sum(len(e.messages) for e in examples),
        "assistant_turns": sum(assistant),
        "multi_turn": sum(a > 1 for a in assistant),
        "with_system": sum(bool(e.messages) and e.messages[0]["role"] == "system" for e in examples),
        "mean_chars": round(sum(chars) / n, 1) if n else 0.0,
        "max_chars": max(chars, default=0),
    }


# --- reading files ---------------------------------------------------------


class _Collector:
    """Keeps the first MAX_ERRORS problems and counts the rest."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.total = 0

    def add(self, message: str) -> None:
        self.total += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(message)

    def raise_if_any(self) -> None:
        if self.total:
            raise DatasetError(self.errors, total=self.total)


def _jsonl_rows(data: bytes, shown: str, collector: _Collector) -> Iterator[tuple[str, Any]]:
    """Yield ``(source, row)`` for each non-blank line.

    Splits on ``\\n`` only: ``str.splitlines`` would also break on U+2028 and
    similar characters, which JSON allows unescaped inside strings.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for number, raw in enumerate(data.split(b"\n"), start=1):
        where = f"{shown}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            collector.add(f"{where}: not valid UTF-8 (byte {exc.start + 1}) — save the file as UTF-8")
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            collector.add(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})")
            continue
        yield where, row


def _json_rows(file: Path, shown: str, collector: _Collector) -> Iterator[tuple[str, Any]]:
    """A .json file holds an array of rows, or (like datasets accepts) JSON lines."""
    data = file.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Fall back to the line reader: it says which line is not UTF-8.
        yield from _jsonl_rows(data, shown, collector)
        return
    if not text.lstrip().startswith("["):
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            # Several top-level values: JSON lines.
            yield from _jsonl_rows(data, shown, collector)
            return
        # One top-level value (possibly pretty-printed over many lines).
        line = text[: len(text) - len(text.lstrip())].count("\n") + 1
        if isinstance(whole, dict) and not ({"messages", "prompt", "completion"} & whole.keys()):
            collector.add(
                f"{shown}:{line}: the top-level JSON object is not a row — a .json file must "
                "hold an array of rows or one row per line"
            )
            return
        yield f"{shown}:{line}", whole
        return
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        collector.add(f"{shown}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})")
        return
    for index, row in enumerate(rows):
        yield f"{shown}:#{index}", row


def _parquet_rows(file: Path, shown: str, collector: _Collector) -> Iterator[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        collector.add(f"{shown}: reading Parquet needs pyarrow — pip install pyarrow, or use JSONL")
        return
    try:
        table = pq.read_table(file)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        collector.add(f"{shown}: not a readable Parquet file ({one_line(str(exc))})")
        return
    for index, row in enumerate(table.to_pylist()):
        yield f"{shown}:#{index}", row


# --- normalizing rows ------------------------------------------------------


def _normalize_rows(
    rows: Iterable[tuple[str, Any]], format: str, collector: _Collector, *, last_only: bool = False
) -> list[Example]:
    examples: list[Example] = []
    # In auto mode the first recognizable row fixes the file's format.
    fixed = None if format == "auto" else format
    fixed_at = ""
    for where, row in rows:
        try:
            if not isinstance(row, dict):
                raise _RowError(f"row must be a JSON object, got {_kind(row)}")
            kind = fixed or _detect(row)
            if fixed is None:
                fixed, fixed_at = kind, where
            elif format == "auto" and _detect(row) != fixed:
                raise _RowError(
                    f"row is in {_detect(row)} format but {fixed_at} is in {fixed} format — "
                    "use one format per file"
                )
            if kind == _MESSAGES:
                messages, train_from = _from_messages(row), 0
            else:
                messages, train_from = _from_prompt_completion(row)
            _check_conversation(messages)
        except _RowError as exc:
            collector.add(f"{where}: {exc}")
            continue
        if last_only:
            train_from = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        examples.append(Example(messages=messages, source=where, train_from=train_from))
    return examples


class _RowError(Exception):
    """One problem in one row; the caller prefixes ``file:line``."""


def _detect(row: dict) -> str:
    # "messages" wins: real datasets (e.g. UltraChat) carry a "prompt" column
    # next to their conversations.
    if "messages" in row:
        return _MESSAGES
    if "prompt" in row or "completion" in row:
        return _PROMPT_COMPLETION
    keys = ", ".join(sorted(map(str, row))) or "none"
    raise _RowError(f'row has neither "messages" nor "prompt"/"completion" (its keys: {keys})')


def _from_messages(row: dict) -> list[dict]:
    if "messages" not in row:
        raise _RowError('row has no "messages" (dataset format is messages)')
    return _message_list(row["messages"], "messages")


def _from_prompt_completion(row: dict) -> tuple[list[dict], int]:
    """The conversation, and the index where the completion (the only part trained) starts."""
    missing = [key for key in ("prompt", "completion") if row.get(key) is None]
    if missing:
        raise _RowError(f'row has no "{missing[0]}" (dataset format is prompt-completion)')
    prompt, completion, system = row["prompt"], row["completion"], row.get("system")
    if isinstance(prompt, str) and isinstance(completion, str):
        messages = []
        if system is not None:
            if not isinstance(system, str):
                raise _RowError(f'"system" must be a string, got {_kind(system)}')
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": prompt})
        messages.append({"role": "assistant", "content": completion})
        return messages, len(messages) - 1
    if isinstance(prompt, list) and isinstance(completion, list):
        if system is not None:
            raise _RowError(
                '"system" is only used with string prompt/completion — put the system '
                'message inside "prompt"'
            )
        head, tail = _message_list(prompt, "prompt"), _message_list(completion, "completion")
        if not any(m["role"] == "assistant" for m in tail):
            raise _RowError('"completion" has no assistant message: only the completion is trained')
        return head + tail, len(head)
    raise _RowError(
        '"prompt" and "completion" must both be strings or both be lists of messages '
        f"(got {_kind(prompt)} and {_kind(completion)})"
    )


def _message_list(value: Any, field: str) -> list[dict]:
    if not isinstance(value, list):
        raise _RowError(f'"{field}" must be a list of {{"role", "content"}} objects, got {_kind(value)}')
    messages = []
    for i, message in enumerate(value):
        at = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise _RowError(f'{at} must be an object with "role" and "content", got {_kind(message)}')
        role = message.get("role")
        if role is None:
            raise _RowError(f'{at} has no "role"')
        if role not in ROLES:
            shown = role if isinstance(role, str) else json.dumps(role)
            raise _RowError(f'unknown role "{shown}" in {at} (expected {", ".join(ROLES)})')
        content = message.get("content")
        if not isinstance(content, str):
            got = "it is missing" if "content" not in message else f"got {_kind(content)}"
            raise _RowError(f"{at}.content must be a string ({got})")
        # Extra keys ("name", "weight", tool metadata) are dropped on purpose:
        # the runtime renders role and content only.
        messages.append({"role": role, "content": content})
    return messages


def _check_conversation(messages: list[dict]) -> None:
    if not messages:
        raise _RowError("empty conversation")
    if not any(m["role"] == "assistant" for m in messages):
        raise _RowError(
            'no assistant turn — each conversation needs at least one message with role "assistant"'
        )


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _suffix_list() -> str:
    return ", ".join(SUFFIXES[:-1]) + " or " + SUFFIXES[-1]
