"""Loss masking on the real SmolLM2 tokenizer: exactly the assistant's answers are trained."""

from __future__ import annotations

from pathlib import Path

import pytest
from sftjob_runtime.chat_templates import (
    ChatTemplateError,
    end_of_turn_warning,
    preset_names,
    resolve_chat_template,
)
from sftjob_runtime.masking import (
    IGNORE_INDEX,
    ConversationMasker,
    MaskingError,
    infer_end_of_turn,
    mask_from_char_spans,
    prefix_assistant_spans,
    tokenize_conversation,
    trained_runs,
    trained_spans,
)


WITH_SYSTEM = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital of France."},
    {"role": "user", "content": "And of Italy? Reply briefly."},
    {"role": "assistant", "content": "Rome, on the Tiber."},
]
WITHOUT_SYSTEM = WITH_SYSTEM[1:]
# Prompt texts that must never be trained (contents plus role names).
PROMPT_TEXTS = ["You answer in one short sentence", "capital of France?", "And of Italy", "system", "user"]


def trl_template(name: str) -> str:
    """A chat template as TRL ships it (originals and their training twins)."""
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tokenizer(demo_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_model_dir)


def expected_answers(template: str | None, tokenizer, conversation) -> list[str]:
    """What each assistant turn must train: content (as the template renders it) + end-of-turn marker."""
    markers = {None: "<|im_end|>", "chatml": "<|im_end|>", "llama3": "<|eot_id|>", "gemma": "<end_of_turn>"}
    marker = tokenizer.eos_token if template == "mistral" else markers[template]
    # Mistral has no generation header: the model writes the space after [/INST] itself.
    lead = " " if template == "mistral" else ""
    return [lead + m["content"] + marker for m in conversation if m["role"] == "assistant"]


def assert_trained_exactly(example, tokenizer, expected: list[str], *, straddle: bool) -> None:
    """Each trained run covers one expected answer; nothing else is trained.

    With `straddle`, a run may extend past the answer only by the part of an edge token
    (a BPE merge across the marker) lying outside it: the extra text must be shorter than
    the run's first/last token and the run must be that exact stretch of the rendering.
    """
    runs = example.trained_runs()
    texts = trained_spans(tokenizer, example.input_ids, example.labels)
    assert len(texts) == len(expected), texts
    search_from = 0
    for (start, end), text, answer in zip(runs, texts, expected, strict=True):
        if not straddle:
            assert text == answer
            continue
        at = text.find(answer)
        assert at >= 0, (text, answer)
        before, after = text[:at], text[at + len(answer) :]
        first = tokenizer.decode([example.input_ids[start]])
        last = tokenizer.decode([example.input_ids[end - 1]])
        assert len(before) < len(first) and len(after) < len(last), (text, first, last)
        position = example.text.find(answer, search_from)
        assert example.text[position - len(before) : position + len(answer) + len(after)] == text
        search_from = position + len(answer)
    for text in texts:
        for prompt_text in PROMPT_TEXTS:
            assert prompt_text not in text


@pytest.mark.parametrize("conversation", [WITH_SYSTEM, WITHOUT_SYSTEM], ids=["system", "no-system"])
@pytest.mark.parametrize("template", [None, "chatml", "llama3", "mistral", "gemma"], ids=str)
def test_only_answers_and_their_end_of_turn_are_trained(tokenizer, template, conversation):
    example = tokenize_conversation(tokenizer, conversation, max_length=None, chat_template=template)

    # One tokenization of the whole rendering: no drift from tokenizing pieces.
    assert example.input_ids == tokenizer(example.text, add_special_tokens=False)["input_ids"]
    assert all(label in (IGNORE_INDEX, token) for label, token in zip(example.labels, example.input_ids, strict=True))
    assert not example.truncated
    # The demo tokenizer has <|im_end|> (also its EOS) as a special token, but not the
    # Llama 3 / Gemma markers, which BPE may merge with the following text.
    straddle = template in ("llama3", "gemma")
    assert_trained_exactly(example, tokenizer, expected_answers(template, tokenizer, conversation), straddle=straddle)
    assert example.num_trained_tokens == sum(end - start for start, end in example.trained_runs())


def test_model_template_inserts_default_system_turn_that_is_not_trained(tokenizer):
    example = tokenize_conversation(tokenizer, WITHOUT_SYSTEM, max_length=None)
    assert "You are a helpful AI assistant named SmolLM" in example.text
    assert trained_spans(tokenizer, example.input_ids, example.labels) == [
        "Paris is the capital of France.<|im_end|>",
        "Rome, on the Tiber.<|im_end|>",
    ]
    assert ConversationMasker(tokenizer, resolve_chat_template(tokenizer, None)).strategy == "prefix-rendering"


def test_trl_refuses_the_model_template_so_our_span_finding_is_needed(tokenizer):
    from trl.chat_template_utils import get_training_chat_template

    with pytest.raises(ValueError, match="not training-compatible"):
        get_training_chat_template(tokenizer)


def test_whitespace_inside_answers_is_kept_when_the_template_keeps_it(tokenizer):
    conversation = [
        {"role": "user", "content": "Indent this."},
        {"role": "assistant", "content": "Here:\n    indented line\n\n"},
    ]
    example = tokenize_conversation(tokenizer, conversation, max_length=None, chat_template="chatml")
    assert trained_spans(tokenizer, example.input_ids, example.labels) == ["Here:\n    indented line\n\n<|im_end|>"]
    # Llama 3 trims content: the trimmed answer is what the model learns.
    example = tokenize_conversation(tokenizer, conversation, max_length=None, chat_template="llama3")
    assert trained_spans(tokenizer, example.input_ids, example.labels)[0].startswith(
        "Here:\n    indented line<|eot_id|>"
    )


def test_token_straddling_the_start_of_an_answer_is_trained(tokenizer):
    # The prompt ends "assistant\n"; an answer starting with spaces merges with it into a
    # "\n " token. The model must produce that token, so it is trained (and the library agrees).
    conversation = [{"role": "user", "content": "List."}, {"role": "assistant", "content": "  - one\n  - two"}]
    example = tokenize_conversation(tokenizer, conversation, max_length=None, chat_template="chatml")
    assert trained_spans(tokenizer, example.input_ids, example.labels) == ["\n  - one\n  - two<|im_end|>"]
    _, theirs = library_mask(tokenizer, CHATML_WITH_GENERATION, conversation)
    assert [int(label != IGNORE_INDEX) for label in example.labels] == theirs


def test_answer_repeating_the_question_is_located_in_its_own_turn(tokenizer):
    conversation = [
        {"role": "user", "content": "Say: hello there"},
        {"role": "assistant", "content": "hello there"},
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "hello there"},
    ]
    example = tokenize_conversation(tokenizer, conversation, max_length=None, chat_template="chatml")
    runs = example.trained_runs()
    assert trained_spans(tokenizer, example.input_ids, example.labels) == ["hello there<|im_end|>"] * 2
    # The second user message says the same words and is not trained.
    user_turn = tokenizer("<|im_start|>user\nhello there<|im_end|>", add_special_tokens=False)["input_ids"]
    user_at = next(
        i for i in range(runs[0][1], len(example.input_ids)) if example.input_ids[i : i + len(user_turn)] == user_turn
    )
    assert all(label == IGNORE_INDEX for label in example.labels[user_at : user_at + len(user_turn)])


# --- agreement with transformers' return_assistant_tokens_mask ----------------------------------


def library_mask(tokenizer, template: str, conversation) -> tuple[list[int], list[int]]:
    out = tokenizer.apply_chat_template(
        conversation, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    return list(out["input_ids"]), list(out["assistant_masks"])


def own_mask(tokenizer, template: str, conversation, end_of_turn: str | None = None) -> tuple[list[int], list[int]]:
    end_of_turn = end_of_turn or infer_end_of_turn(tokenizer, template)
    text, spans = prefix_assistant_spans(tokenizer, template, conversation, end_of_turn)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(encoding["input_ids"]), mask_from_char_spans(encoding["offset_mapping"], spans)


@pytest.mark.parametrize("conversation", [WITH_SYSTEM, WITHOUT_SYSTEM], ids=["system", "no-system"])
def test_span_finding_agrees_with_trl_llama3_training_template(tokenizer, conversation):
    # TRL's copy of Meta's Llama 3 template, and its twin with {% generation %} markers.
    ours = own_mask(tokenizer, trl_template("llama3"), conversation)
    theirs = library_mask(tokenizer, trl_template("llama3_training"), conversation)
    assert ours == theirs
    assert sum(ours[1]) > 0
    # Given the original template, the masker itself switches to TRL's twin.
    masker = ConversationMasker(tokenizer, resolve_chat_template(tokenizer, trl_template("llama3")))
    assert masker.strategy == "trl-training-template"
    example = masker.tokenize(conversation)
    assert [int(label != IGNORE_INDEX) for label in example.labels] == theirs[1]


CHATML_WITH_GENERATION = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.mark.parametrize("conversation", [WITH_SYSTEM, WITHOUT_SYSTEM], ids=["system", "no-system"])
def test_chatml_preset_agrees_with_the_same_format_marked_for_generation(tokenizer, conversation):
    preset = resolve_chat_template(tokenizer, "chatml")
    ours = own_mask(tokenizer, preset.source, conversation, preset.end_of_turn)
    theirs = library_mask(tokenizer, CHATML_WITH_GENERATION, conversation)
    assert ours == theirs
    marked = ConversationMasker(tokenizer, resolve_chat_template(tokenizer, CHATML_WITH_GENERATION))
    assert marked.strategy == "generation-markers"
    example = marked.tokenize(conversation)
    assert trained_spans(tokenizer, example.input_ids, example.labels) == expected_answers(
        "chatml", tokenizer, conversation
    )


def test_gemma_preset_differs_from_trl_gemma_twin_only_by_the_newline_after_end_of_turn(tokenizer):
    # TRL's Gemma twin also trains the "\n" after <end_of_turn>, which the model never
    # generates (it stops at <end_of_turn>); everything else is identical.
    preset = resolve_chat_template(tokenizer, "gemma")
    ours_ids, ours = own_mask(tokenizer, preset.source, WITHOUT_SYSTEM, preset.end_of_turn)
    theirs_ids, theirs = library_mask(tokenizer, trl_template("gemma_training"), WITHOUT_SYSTEM)
    assert ours_ids == theirs_ids
    differing = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
    run_ends = [end for _, end in trained_runs([1 if m else IGNORE_INDEX for m in ours])]
    assert differing == run_ends
    assert all(tokenizer.decode([ours_ids[i]]) == "\n" and theirs[i] == 1 for i in differing)


# --- templates that are not prefix-stable ----------------------------------------------------------


@pytest.mark.parametrize("name", ["deepseek_r1_distill", "deepseekv3", "nemotron_3_nano", "qwen3"])
def test_non_prefix_stable_templates_fail_loudly_in_span_finding(tokenizer, name):
    template = trl_template(name)
    with pytest.raises(MaskingError) as failure:
        prefix_assistant_spans(tokenizer, template, WITH_SYSTEM, "<|im_end|>", template_name=name)
    message = str(failure.value)
    assert name in message and "message 3 (assistant)" in message


def test_gpt_oss_turn_endings_cannot_be_inferred_and_say_so(tokenizer):
    # gpt-oss ends the last turn with <|return|> and earlier ones with <|end|>.
    with pytest.raises(MaskingError, match="cannot tell how chat template 'gptoss' ends an assistant turn"):
        infer_end_of_turn(tokenizer, trl_template("gptoss"), "gptoss")


def test_phi3_eos_after_last_turn_only_is_handled(tokenizer):
    # Phi-3 appends EOS when no generation prompt follows, so a turn rendered last differs
    # from the same turn mid-conversation; the answer still ends at <|end|>.
    template = trl_template("phi3")
    assert infer_end_of_turn(tokenizer, template) == "<|end|>"
    ids, mask = own_mask(tokenizer, template, WITH_SYSTEM)
    labels = [token if m else IGNORE_INDEX for token, m in zip(ids, mask, strict=True)]
    spans = trained_spans(tokenizer, ids, labels)
    answers = ["Paris is the capital of France.<|end|>", "Rome, on the Tiber.<|end|>"]
    assert len(spans) == 2
    for span, answer in zip(spans, answers, strict=True):
        # "<|end|>" is plain BPE text for this tokenizer: a merge into the next turn's "\n<|" may straddle.
        assert span.startswith(answer) and len(span) - len(answer) < 3, span
    assert "<|endoftext|>" not in spans[1] and tokenizer.eos_token not in spans[1]


@pytest.mark.parametrize("name", ["deepseek_r1_distill", "gptoss", "nemotron_3_nano", "qwen3", "phi3"])
def test_non_prefix_stable_model_templates_train_through_trl_twins(tokenizer, name):
    masker = ConversationMasker(tokenizer, resolve_chat_template(tokenizer, trl_template(name)))
    assert masker.strategy == "trl-training-template"
    example = masker.tokenize(WITH_SYSTEM)
    spans = trained_spans(tokenizer, example.input_ids, example.labels)
    assert len(spans) == 2
    assert "Paris is the capital of France." in spans[0] and "Rome, on the Tiber." in spans[1]
    assert not any("capital of France?" in span or "one short sentence" in span for span in spans)


def test_template_that_rewrites_content_is_refused_not_mismasked(tokenizer):
    shouting = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | upper }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(MaskingError, match="does not render message content verbatim"):
        tokenize_conversation(tokenizer, WITH_SYSTEM, max_length=None, chat_template=shouting)


def test_inline_template_without_end_marker_for_one_turn_is_refused(tokenizer):
    # The end-of-turn marker is dropped after the second answer: no silent guess.
    lossy = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
        "{% if not (m['role'] == 'assistant' and 'Tiber' in m['content']) %}<|im_end|>{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(MaskingError, match=r"message 5 \(assistant\).*end-of-turn marker '<\|im_end\|>'"):
        tokenize_conversation(tokenizer, WITH_SYSTEM, max_length=None, chat_template=lossy)


# --- truncation, BOS, errors -------------------------------------------------------------------------


def test_truncation_cuts_and_reports(tokenizer):
    full = tokenize_conversation(tokenizer, WITH_SYSTEM, max_length=None)
    second_start, second_end = full.trained_runs()[1]
    cut = second_start + 3
    example = tokenize_conversation(tokenizer, WITH_SYSTEM, max_length=cut)
    assert example.truncated and example.num_tokens == cut
    assert example.input_ids == full.input_ids[:cut] and example.labels == full.labels[:cut]
    assert example.num_trained_tokens == full.num_trained_tokens - (second_end - cut)
    assert not tokenize_conversation(tokenizer, WITH_SYSTEM, max_length=full.num_tokens).truncated


def test_row_whose_answers_are_all_truncated_away_is_countable(tokenizer):
    long_question = [{"role": "user", "content": "Tell me about France. " * 80}, WITH_SYSTEM[2]]
    example = tokenize_conversation(tokenizer, long_question, max_length=64)
    assert example.truncated and example.num_tokens == 64
    assert example.num_trained_tokens == 0 and example.trained_runs() == []


def test_template_bos_is_not_doubled_by_a_tokenizer_that_adds_bos(demo_model_dir):
    from transformers import AutoTokenizer

    adds_bos = AutoTokenizer.from_pretrained(demo_model_dir, add_bos_token=True)
    assert adds_bos("hi")["input_ids"][0] == adds_bos.bos_token_id
    example = tokenize_conversation(adds_bos, WITH_SYSTEM, max_length=None, chat_template="llama3")
    assert example.text.startswith(adds_bos.bos_token)
    assert example.input_ids[0] == adds_bos.bos_token_id and example.input_ids[1] != adds_bos.bos_token_id


def test_unknown_preset_lists_the_presets(tokenizer):
    with pytest.raises(ChatTemplateError) as failure:
        resolve_chat_template(tokenizer, "vicuna")
    message = str(failure.value)
    assert "spec.model.chatTemplate" in message and "'vicuna'" in message
    assert all(name in message for name in ("chatml", "llama3", "mistral", "gemma"))
    assert set(preset_names()) >= {"chatml", "llama3", "mistral", "gemma"}
    assert resolve_chat_template(tokenizer, "ChatML").name == "chatml"


def test_tokenizer_without_template_asks_for_spec_chat_template(demo_model_dir):
    from transformers import AutoTokenizer

    base = AutoTokenizer.from_pretrained(demo_model_dir)
    base.chat_template = None
    with pytest.raises(ChatTemplateError, match="set spec.model.chatTemplate"):
        resolve_chat_template(base, None)
    assert resolve_chat_template(base, "chatml").end_of_turn == "<|im_end|>"


def test_template_errors_and_bad_conversations_are_masking_errors(tokenizer):
    with pytest.raises(MaskingError, match="gemma.*alternating"):
        tokenize_conversation(tokenizer, [WITH_SYSTEM[1], WITH_SYSTEM[1]], max_length=None, chat_template="gemma")
    with pytest.raises(MaskingError, match="cannot start with the assistant"):
        tokenize_conversation(tokenizer, WITH_SYSTEM[2:], max_length=None, chat_template="chatml")
    with pytest.raises(MaskingError, match="no messages"):
        tokenize_conversation(tokenizer, [], max_length=None)
    with pytest.raises(MaskingError, match="message 2: an assistant message needs a string 'content'"):
        tokenize_conversation(tokenizer, [WITH_SYSTEM[1], {"role": "assistant"}], max_length=None)


def test_conversation_without_answers_trains_nothing(tokenizer):
    example = tokenize_conversation(tokenizer, WITH_SYSTEM[:2], max_length=None)
    assert example.num_trained_tokens == 0 and not example.truncated


def test_end_of_turn_warning_when_marker_is_not_one_token(tokenizer):
    assert end_of_turn_warning(tokenizer, "<|im_end|>") is None
    warning = end_of_turn_warning(tokenizer, "<|eot_id|>")
    assert warning is not None and "'<|eot_id|>'" in warning


@pytest.mark.parametrize("template", [None, "chatml", "llama3", "mistral", "gemma"], ids=str)
def test_both_data_formats_from_files_train_only_the_answers(tokenizer, template, tmp_path):
    """From the data files users write, through the loader, to the labels: messages and prompt-completion rows."""
    import json

    from sftjob_runtime.data import load_examples

    (tmp_path / "messages.jsonl").write_text(json.dumps({"messages": WITH_SYSTEM}) + "\n")
    (tmp_path / "pc.jsonl").write_text(json.dumps({
        "system": "You answer in one short sentence.",
        "prompt": "What is the capital of France?",
        "completion": "Paris is the capital of France.",
    }) + "\n")
    masker = ConversationMasker(tokenizer, resolve_chat_template(tokenizer, template))
    straddle = template in ("llama3", "gemma")
    for name in ("messages.jsonl", "pc.jsonl"):
        (example,) = load_examples(tmp_path / name)
        row = masker.tokenize(example.messages, max_length=None)
        assert_trained_exactly(row, tokenizer, expected_answers(template, tokenizer, example.messages), straddle=straddle)
        assert "You answer in one short sentence." in row.text  # the system prompt is rendered, not trained


CONVERSATIONAL_PC = {
    "prompt": [
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris is the capital of France."},
        {"role": "user", "content": "And of Italy? Reply briefly."},
    ],
    "completion": [{"role": "assistant", "content": "Rome, on the Tiber."}],
}
STRING_PC = {"system": "You answer in one short sentence.", "prompt": "What is the capital of France?",
             "completion": "Paris is the capital of France."}


@pytest.mark.parametrize("template", [None, "chatml", "mistral", CHATML_WITH_GENERATION],
                         ids=["model", "chatml", "mistral", "inline-generation-markers"])
@pytest.mark.parametrize("row", [CONVERSATIONAL_PC, STRING_PC], ids=["conversational", "string"])
def test_prompt_completion_rows_train_exactly_the_completion(tokenizer, template, row, tmp_path):
    """TRL's completion_only_loss: the prompt, its assistant turns included, is context; only the completion is trained."""
    import json

    from sftjob_runtime.data import load_examples

    (tmp_path / "pc.jsonl").write_text(json.dumps(row) + "\n")
    (example,) = load_examples(tmp_path / "pc.jsonl")
    masker = ConversationMasker(tokenizer, resolve_chat_template(tokenizer, template))
    tokenized = masker.tokenize(example.messages, max_length=None, train_from=example.train_from)
    completion = row["completion"] if isinstance(row["completion"], str) else row["completion"][0]["content"]
    expected = expected_answers("mistral" if template == "mistral" else "chatml", tokenizer,
                                [{"role": "assistant", "content": completion}])
    assert trained_spans(tokenizer, tokenized.input_ids, tokenized.labels) == expected
    if row is CONVERSATIONAL_PC:
        assert "Paris is the capital of France." in tokenized.text  # rendered as context, never trained


def test_train_on_last_assistant_trains_only_the_last_turn(tokenizer, tmp_path):
    import json

    from sftjob_runtime.data import load_examples

    (tmp_path / "m.jsonl").write_text(json.dumps({"messages": WITH_SYSTEM}) + "\n")
    masker = ConversationMasker(tokenizer, resolve_chat_template(tokenizer, None))
    (every,) = load_examples(tmp_path / "m.jsonl")
    (last,) = load_examples(tmp_path / "m.jsonl", train_on="last-assistant")
    spans = lambda ex: trained_spans(tokenizer, *(lambda t: (t.input_ids, t.labels))(  # noqa: E731
        masker.tokenize(ex.messages, max_length=None, train_from=ex.train_from)))
    assert spans(every) == ["Paris is the capital of France.<|im_end|>", "Rome, on the Tiber.<|im_end|>"]
    assert spans(last) == ["Rome, on the Tiber.<|im_end|>"]


def test_a_completion_without_an_assistant_turn_is_a_data_error(tmp_path):
    import json

    from sftjob_runtime.data import DatasetError, load_examples

    bad = {"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "user", "content": "oops"}]}
    (tmp_path / "pc.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(DatasetError, match=r'pc.jsonl:1: "completion" has no assistant message'):
        load_examples(tmp_path / "pc.jsonl")
