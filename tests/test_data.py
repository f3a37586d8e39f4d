"""Loading training data: formats, normalization, errors with file:line, splits."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from sftjob_runtime.data import (
    MAX_ERRORS,
    DatasetError,
    Example,
    dataset_stats,
    load_examples,
    split_validation,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLES_DATA = REPO / "examples" / "data"

SYS = {"role": "system", "content": "Be terse."}
USER = {"role": "user", "content": "Hi"}
ASSISTANT = {"role": "assistant", "content": "Hello"}
GOOD = {"messages": [USER, ASSISTANT]}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    # Relative paths, as a user types them, so messages read "train.jsonl:3: ...".
    monkeypatch.chdir(tmp_path)


def write_jsonl(name: str, rows: list) -> str:
    """Write rows (dicts, or raw strings written verbatim) one per line."""
    lines = [row if isinstance(row, str) else json.dumps(row, ensure_ascii=False) for row in rows]
    Path(name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return name


def load_error(path: str, **kwargs) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        load_examples(path, **kwargs)
    assert "\n" not in str(info.value)
    return info.value


# --- formats ---------------------------------------------------------------


def test_messages_with_system_and_multi_turn_are_kept_in_order():
    conversation = [SYS, USER, ASSISTANT, {"role": "user", "content": "More"},
                    {"role": "assistant", "content": "Sure"}]
    path = write_jsonl("train.jsonl", [GOOD, {"messages": conversation}])

    examples = load_examples(path)

    assert examples == [
        Example(messages=[USER, ASSISTANT], source="train.jsonl:1"),
        Example(messages=conversation, source="train.jsonl:2"),
    ]


def test_extra_keys_are_ignored_and_message_keys_reduced_to_role_and_content():
    row = {"id": 7, "lang": "en",
           "messages": [{"role": "user", "content": "Hi", "name": "ana"},
                        {"role": "assistant", "content": "Hello", "weight": 1.0}]}
    [example] = load_examples(write_jsonl("train.jsonl", [row]))
    assert example.messages == [USER, ASSISTANT]


def test_consecutive_same_roles_and_trailing_user_turn_are_allowed():
    messages = [USER, USER, ASSISTANT, ASSISTANT, USER]
    [example] = load_examples(write_jsonl("train.jsonl", [{"messages": messages}]))
    assert [m["role"] for m in example.messages] == ["user", "user", "assistant", "assistant", "user"]


def test_prompt_completion_strings_become_user_and_assistant_turns():
    path = write_jsonl("train.jsonl", [
        {"prompt": "2+2?", "completion": "4"},
        {"system": "Be terse.", "prompt": "2+3?", "completion": "5"},
        {"system": None, "prompt": "2+4?", "completion": "6"},
    ])

    examples = load_examples(path)

    assert [e.messages for e in examples] == [
        [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
        [SYS, {"role": "user", "content": "2+3?"}, {"role": "assistant", "content": "5"}],
        [{"role": "user", "content": "2+4?"}, {"role": "assistant", "content": "6"}],
    ]


def test_conversational_prompt_completion_is_concatenated():
    row = {"prompt": [SYS, USER], "completion": [ASSISTANT]}
    [example] = load_examples(write_jsonl("train.jsonl", [row]))
    assert example.messages == [SYS, USER, ASSISTANT]


def test_auto_detects_the_format_per_file():
    messages_file = write_jsonl("a.jsonl", [GOOD])
    pc_file = write_jsonl("b.jsonl", [{"prompt": "Hi", "completion": "Hello"}])
    assert load_examples(messages_file)[0].messages == [USER, ASSISTANT]
    assert load_examples(pc_file)[0].messages == [USER, ASSISTANT]


def test_messages_wins_over_a_metadata_prompt_column_in_auto_mode():
    # UltraChat-style rows carry the first prompt next to the conversation.
    row = {"prompt": "Hi", "prompt_id": "x1", "messages": [USER, ASSISTANT]}
    [example] = load_examples(write_jsonl("train.jsonl", [row]))
    assert example.messages == [USER, ASSISTANT]


def test_explicit_format_selects_the_columns():
    row = {"prompt": "Q", "completion": "A", "messages": [USER, ASSISTANT]}
    path = write_jsonl("train.jsonl", [row])
    [example] = load_examples(path, format="prompt-completion")
    assert example.messages == [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]

    error = load_error(write_jsonl("pc.jsonl", [{"prompt": "Q", "completion": "A"}]), format="messages")
    assert str(error) == 'pc.jsonl:1: row has no "messages" (dataset format is messages)'


def test_mixed_formats_in_one_file_are_an_error_naming_both_rows():
    path = write_jsonl("train.jsonl", [GOOD, "", {"prompt": "Q", "completion": "A"}])
    error = load_error(path)
    assert str(error) == (
        "train.jsonl:3: row is in prompt-completion format but train.jsonl:1 is in "
        "messages format — use one format per file"
    )


def test_blank_lines_are_skipped_and_line_numbers_stay_physical():
    Path("train.jsonl").write_text(
        "\n" + json.dumps(GOOD) + "\n   \n\n" + json.dumps(GOOD) + "\n\n", encoding="utf-8"
    )
    assert [e.source for e in load_examples("train.jsonl")] == ["train.jsonl:2", "train.jsonl:5"]


def test_crlf_line_endings_and_bom_are_accepted():
    Path("train.jsonl").write_bytes(
        b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\r\n" + json.dumps(GOOD).encode() + b"\r\n"
    )
    assert len(load_examples("train.jsonl")) == 2


def test_unicode_round_trips_exactly():
    # U+2028 is legal unescaped inside a JSON string but is a line break to
    # str.splitlines(): the loader must not split on it.
    text = "São Paulo, Kraków, 東京 🚀 line\u2028sep\u00a0nbsp"
    path = write_jsonl("train.jsonl", [
        {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": text}]}
    ])
    assert "\u2028" in Path(path).read_text(encoding="utf-8")
    [example] = load_examples(path)
    assert example.messages[0]["content"] == text
    assert example.messages[1]["content"] == text


# --- JSON and Parquet --------------------------------------------------------


def test_json_array_rows_are_indexed_from_zero():
    Path("train.json").write_text(json.dumps([GOOD, GOOD], indent=2), encoding="utf-8")
    examples = load_examples("train.json")
    assert [e.source for e in examples] == ["train.json:#0", "train.json:#1"]
    assert examples[0].messages == [USER, ASSISTANT]


def test_json_array_errors_name_the_index():
    Path("train.json").write_text(json.dumps([GOOD, {"messages": [USER]}]), encoding="utf-8")
    error = load_error("train.json")
    assert str(error).startswith("train.json:#1: no assistant turn")


def test_json_file_with_json_lines_content():
    write_jsonl("train.json", [GOOD, GOOD, GOOD])
    assert [e.source for e in load_examples("train.json")] == [
        "train.json:1", "train.json:2", "train.json:3"]


def test_json_file_with_one_pretty_printed_row():
    Path("train.json").write_text("\n" + json.dumps(GOOD, indent=2), encoding="utf-8")
    [example] = load_examples("train.json")
    assert example.source == "train.json:2"


def test_json_file_with_a_non_row_top_level_object():
    Path("train.json").write_text(json.dumps({"data": [GOOD]}, indent=2), encoding="utf-8")
    error = load_error("train.json")
    assert str(error) == (
        "train.json:1: the top-level JSON object is not a row — a .json file must hold "
        "an array of rows or one row per line"
    )


def test_json_array_syntax_error_names_the_line():
    Path("train.json").write_text('[\n  {"messages": []},\n  {"messages" []}\n]\n', encoding="utf-8")
    error = load_error("train.json")
    assert str(error) == "train.json:3: invalid JSON (Expecting ':' delimiter at column 15)"


def test_parquet_messages_and_prompt_completion():
    import pyarrow as pa
    import pyarrow.parquet as pq

    # A struct column gets every key of every message: "name" is null where absent.
    pq.write_table(pa.Table.from_pylist([
        {"messages": [{"role": "system", "content": "Be terse.", "name": None}, USER | {"name": "ana"},
                      ASSISTANT | {"name": None}]},
        {"messages": [USER | {"name": None}, ASSISTANT | {"name": None}]},
    ]), "chat.parquet")
    pq.write_table(pa.Table.from_pylist([
        {"prompt": "2+2?", "completion": "4", "system": None},
        {"prompt": "2+3?", "completion": "5", "system": "Be terse."},
    ]), "pc.parquet")

    chat = load_examples("chat.parquet")
    pc = load_examples("pc.parquet")

    assert [e.messages for e in chat] == [[SYS, USER, ASSISTANT], [USER, ASSISTANT]]
    assert [e.source for e in chat] == ["chat.parquet:#0", "chat.parquet:#1"]
    assert pc[0].messages == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert pc[1].messages[0] == SYS


def test_parquet_row_errors_name_the_index():
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([
        {"messages": [USER, ASSISTANT]},
        {"messages": [USER, {"role": "assistant", "content": None}]},
    ]), "chat.parquet")
    error = load_error("chat.parquet")
    assert str(error) == "chat.parquet:#1: messages[1].content must be a string (got null)"


def test_unreadable_parquet_file():
    Path("chat.parquet").write_text("not parquet", encoding="utf-8")
    error = load_error("chat.parquet")
    assert str(error).startswith("chat.parquet: not a readable Parquet file (")


# --- row errors: one line each, with file:line ----------------------------------


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ('{"messages" [1]}', "invalid JSON (Expecting ':' delimiter at column 13)"),
        ({"messages": [USER]},
         'no assistant turn — each conversation needs at least one message with role "assistant"'),
        ({"messages": [USER, ASSISTANT, {"role": "bot", "content": "x"}]},
         'unknown role "bot" in messages[2] (expected system, user, assistant)'),
        ({"messages": []}, "empty conversation"),
        ({"messages": [USER, {"role": "assistant", "content": ["x"]}]},
         "messages[1].content must be a string (got a list)"),
        ({"messages": [USER, {"role": "assistant"}]}, "messages[1].content must be a string (it is missing)"),
        ({"messages": [{"content": "x"}, ASSISTANT]}, 'messages[0] has no "role"'),
        ({"messages": ["hi", ASSISTANT]},
         'messages[0] must be an object with "role" and "content", got a string'),
        ({"messages": "hi"}, '"messages" must be a list of {"role", "content"} objects, got a string'),
        ({"text": "hi", "label": 1},
         'row has neither "messages" nor "prompt"/"completion" (its keys: label, text)'),
        ([1, 2], "row must be a JSON object, got a list"),
        ({"prompt": "Q"}, 'row has no "completion" (dataset format is prompt-completion)'),
        ({"prompt": "Q", "completion": [ASSISTANT]},
         '"prompt" and "completion" must both be strings or both be lists of messages '
         "(got a string and a list)"),
        ({"prompt": [USER], "completion": [ASSISTANT], "system": "S"},
         '"system" is only used with string prompt/completion — put the system message inside "prompt"'),
        ({"prompt": "Q", "completion": "A", "system": 3}, '"system" must be a string, got a number'),
        ({"prompt": [USER], "completion": [{"role": "critic", "content": "x"}]},
         'unknown role "critic" in completion[0] (expected system, user, assistant)'),
    ],
)
def test_each_bad_row_is_one_line_naming_file_and_line(row, message):
    # A good first row fixes the format where it matters; the bad row is line 2.
    first = {"prompt": "Q", "completion": "A"} if isinstance(row, dict) and "prompt" in row else GOOD
    path = write_jsonl("train.jsonl", [first, row])
    error = load_error(path)
    assert str(error) == f"train.jsonl:2: {message}"
    assert error.errors == [f"train.jsonl:2: {message}"]
    assert error.total == 1


def test_invalid_utf8_names_the_line():
    Path("train.jsonl").write_bytes(json.dumps(GOOD).encode() + b'\n{"messages": "\xff"}\n')
    error = load_error("train.jsonl")
    assert str(error) == "train.jsonl:2: not valid UTF-8 (byte 15) — save the file as UTF-8"


def test_all_errors_are_collected_and_summarized_on_one_line():
    rows = [GOOD, {"messages": [USER]}, "{oops", {"messages": []}, GOOD, {"messages": "x"}]
    error = load_error(write_jsonl("train.jsonl", rows))

    assert error.total == 4
    assert [e.split(": ", 1)[0] for e in error.errors] == [
        "train.jsonl:2", "train.jsonl:3", "train.jsonl:4", "train.jsonl:6"]
    summary = str(error)
    assert summary.startswith("4 problems in the training data: train.jsonl:2: no assistant turn")
    assert "; train.jsonl:3: invalid JSON (" in summary
    assert "; train.jsonl:4: empty conversation" in summary
    assert summary.endswith(" (and 1 more)")


def test_error_list_is_capped_but_everything_is_counted():
    rows = [{"messages": [USER]}] * (MAX_ERRORS + 5)
    error = load_error(write_jsonl("train.jsonl", rows))
    assert len(error.errors) == MAX_ERRORS
    assert error.total == MAX_ERRORS + 5
    assert str(error).startswith(f"{MAX_ERRORS + 5} problems in the training data: ")
    assert str(error).endswith(f" (and {MAX_ERRORS + 2} more)")


def test_dataset_error_survives_pickling():
    error = load_error(write_jsonl("train.jsonl", [{"messages": []}, {"messages": []}]))
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.errors, copy.total, str(copy)) == (error.errors, error.total, str(error))


# --- file errors -----------------------------------------------------------------


def test_missing_file():
    assert str(load_error("data/train.jsonl")) == "data/train.jsonl: file not found — check the dataset path"


def test_unsupported_extension():
    Path("train.csv").write_text("a,b\n", encoding="utf-8")
    assert str(load_error("train.csv")) == (
        'train.csv: unsupported file type ".csv" — use a .jsonl, .json or .parquet file')


def test_directory_instead_of_file():
    Path("data").mkdir()
    assert str(load_error("data")) == "data: is a directory — point to a .jsonl, .json or .parquet file"


def test_file_with_no_rows():
    Path("train.jsonl").write_text("\n\n", encoding="utf-8")
    assert str(load_error("train.jsonl")) == "train.jsonl: no rows — the file holds no training examples"


def test_unknown_format_argument():
    path = write_jsonl("train.jsonl", [GOOD])
    assert str(load_error(path, format="sharegpt")) == (
        "unknown dataset format 'sharegpt': use one of auto, messages, prompt-completion")


# --- split and stats ---------------------------------------------------------------


def _examples(n: int) -> list[Example]:
    return [Example(messages=[{"role": "user", "content": str(i)}, ASSISTANT], source=f"t.jsonl:{i + 1}")
            for i in range(n)]


def test_split_is_deterministic_disjoint_and_complete():
    examples = _examples(100)
    train, val = split_validation(examples, 0.1, seed=42)
    again = split_validation(examples, 0.1, seed=42)
    other = split_validation(examples, 0.1, seed=43)

    assert (train, val) == again
    assert len(val) == 10 and len(train) == 90
    assert sorted(e.source for e in train + val) == sorted(e.source for e in examples)
    assert {e.source for e in val} != {e.source for e in other[1]}
    # Both parts keep the file's order.
    assert train == [e for e in examples if e in train]
    assert val == [e for e in examples if e in val]


def test_split_keeps_at_least_one_example_on_each_side():
    assert [len(part) for part in split_validation(_examples(5), 0.01, seed=0)] == [4, 1]
    assert [len(part) for part in split_validation(_examples(3), 0.99, seed=0)] == [1, 2]


def test_split_of_a_too_small_dataset_says_what_to_do():
    with pytest.raises(DatasetError) as info:
        split_validation(_examples(1), 0.1, seed=0)
    assert str(info.value) == (
        "the dataset has 1 example; splitting off a validation set needs at least 2 — "
        "add examples or give a separate validation file")


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_a_fraction_outside_zero_one(fraction):
    with pytest.raises(ValueError, match="between 0 and 1"):
        split_validation(_examples(10), fraction, seed=0)


def test_dataset_stats():
    examples = [
        Example(messages=[SYS, USER, ASSISTANT], source="a:1"),
        Example(messages=[USER, ASSISTANT, USER, ASSISTANT], source="a:2"),
    ]
    assert dataset_stats(examples) == {
        "examples": 2, "messages": 7, "assistant_turns": 3, "multi_turn": 1, "with_system": 1,
        "mean_chars": 15.0, "max_chars": 16,  # 9+2+5 and 2+5+2+5
    }
    assert dataset_stats([])["examples"] == 0


# --- the quickstart dataset -----------------------------------------------------------

KEYS = ["order_id", "quantity", "item", "city", "date"]


def test_quickstart_files_load_cleanly_with_the_strict_answer_format():
    train = load_examples(EXAMPLES_DATA / "quickstart-train.jsonl")
    val = load_examples(EXAMPLES_DATA / "quickstart-val.jsonl")

    assert (len(train), len(val)) == (300, 40)
    for example in train + val:
        answers = [m["content"] for m in example.messages if m["role"] == "assistant"]
        assert example.messages[-1]["role"] == "assistant"
        for answer in answers:
            assert list(json.loads(answer)) == KEYS
    stats = dataset_stats(train)
    assert stats["with_system"] > 0.8 * len(train)
    assert 10 <= stats["multi_turn"] <= 60
    assert stats["max_chars"] < 600  # short rows keep CPU steps fast


def test_quickstart_validation_does_not_repeat_training_rows():
    def user_turns(examples):
        return {m["content"] for e in examples for m in e.messages if m["role"] == "user"}

    train = load_examples(EXAMPLES_DATA / "quickstart-train.jsonl")
    val = load_examples(EXAMPLES_DATA / "quickstart-val.jsonl")
    assert not user_turns(train) & user_turns(val)
    assert len(user_turns(train + val)) == sum(
        m["role"] == "user" for e in train + val for m in e.messages)


def test_quickstart_generator_reproduces_the_committed_files(tmp_path):
    subprocess.run([sys.executable, str(EXAMPLES_DATA / "make_quickstart.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    for name in ("quickstart-train.jsonl", "quickstart-val.jsonl"):
        assert (tmp_path / name).read_bytes() == (EXAMPLES_DATA / name).read_bytes(), name


def test_loading_data_imports_no_torch_or_transformers():
    code = ("import sys, sftjob_runtime.data; "
            "print(sorted(m for m in ('torch', 'transformers', 'trl', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"
