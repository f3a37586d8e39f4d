"""Loss masking: which tokens of a conversation the model is trained on.

Rule: for each assistant turn, train on everything the model must generate after the
prompt that `add_generation_prompt=True` renders, through the turn's end-of-turn
marker; never on system/user text or role headers. Labels are built explicitly
(never from the pad id: SmolLM2's pad is its end-of-turn token).

Two ways to find the trained text, chosen once per tokenizer + template:

* `generation-markers` / `trl-training-template`: the template has `{% generation %}`
  markers, or TRL ships a training twin of it; transformers'
  `return_assistant_tokens_mask` is then authoritative.
* `prefix-rendering`: for any other template, render the prompt for each assistant turn
  and check that it is a prefix of the whole rendering; the turn's text starts there and
  ends after its end-of-turn marker. A template that is not prefix-stable raises
  `MaskingError` naming the template and the turn, never a silently wrong mask.

Either way the whole conversation is rendered and tokenized once; character spans map
to tokens through offsets, and a token overlapping a span edge is trained.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sftjob_runtime.chat_templates import ChatTemplate, resolve_chat_template

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100

Messages = Sequence[Mapping[str, Any]]
Span = tuple[int, int]

# Sentinel texts for probing how a template ends an assistant turn.
_PROBE_USER = ("sftjob probe question one", "sftjob probe question two")
_PROBE_ASSISTANT = ("sftjob probe answer one", "sftjob probe answer two")
_PROBE_SYSTEM = "sftjob probe system"


class MaskingError(ValueError):
    """A conversation cannot be masked correctly with this template; the message says why."""


@dataclass
class TokenizedExample:
    """One conversation as the trainer sees it.

    `labels[i]` is `input_ids[i]` where the model is trained and -100 elsewhere. `text` is
    the full rendering (before truncation); `truncated` says tokens past `max_length`
    were cut. A row can end up with no trained token at all (all answers truncated away):
    `num_trained_tokens == 0` lets callers count such rows, which TRL would drop silently.
    """

    input_ids: list[int]
    labels: list[int]
    text: str
    truncated: bool
    full_length: int = 0  # tokens before truncation
    cut_trained: int = 0  # trained tokens lost to truncation (an answer cut short, or cut away)

    @property
    def num_tokens(self) -> int:
        """Number of tokens after truncation."""
        return len(self.input_ids)

    @property
    def num_trained_tokens(self) -> int:
        """Number of tokens with a label (after truncation)."""
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    def trained_runs(self) -> list[Span]:
        """Half-open token ranges of consecutive trained tokens."""
        return trained_runs(self.labels)


def trained_runs(labels: Sequence[int]) -> list[Span]:
    """Half-open token ranges `(start, end)` of each maximal run of trained labels."""
    runs: list[Span] = []
    start = None
    for index, label in enumerate(labels):
        if label != IGNORE_INDEX and start is None:
            start = index
        elif label == IGNORE_INDEX and start is not None:
            runs.append((start, index))
            start = None
    if start is not None:
        runs.append((start, len(labels)))
    return runs


def labelled_segments(tokenizer: PreTrainedTokenizerBase, input_ids: Sequence[int], labels: Sequence[int]) -> list[tuple[str, bool]]:
    """The whole example decoded in consecutive pieces, each marked trained or not (special tokens kept)."""
    pieces: list[tuple[str, bool]] = []
    cursor = 0
    for start, end in [*trained_runs(labels), (len(input_ids), len(input_ids))]:
        for a, b, trained in ((cursor, start, False), (start, end, True)):
            if b > a:
                pieces.append((tokenizer.decode(list(input_ids[a:b]), skip_special_tokens=False,
                                                clean_up_tokenization_spaces=False), trained))
        cursor = end
    return pieces


def trained_spans(tokenizer: PreTrainedTokenizerBase, input_ids: Sequence[int], labels: Sequence[int]) -> list[str]:
    """Decode each maximal run of consecutive trained tokens (special tokens kept)."""
    return [text for text, trained in labelled_segments(tokenizer, input_ids, labels) if trained]


class ConversationMasker:
    """Tokenizes conversations with loss masks, for one tokenizer and chat template.

    Build it once per job: it decides how spans are found (`strategy`) and, for the
    prefix-rendering strategy, which text ends an assistant turn (`end_of_turn`).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, template: ChatTemplate) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise MaskingError(
                "loss masking needs a fast (Rust `tokenizers`) tokenizer for character offsets; "
                f"{type(tokenizer).__name__} is not one"
            )
        self.tokenizer = tokenizer
        self.template = template
        self.end_of_turn: str | None = None
        if has_generation_markers(template.source):
            self.strategy = "generation-markers"
            self.source = template.source
        elif (twin := trl_training_template(tokenizer, template.source)) is not None:
            self.strategy = "trl-training-template"
            self.source = twin
        else:
            self.strategy = "prefix-rendering"
            self.source = template.source
            self.end_of_turn = template.end_of_turn or infer_end_of_turn(tokenizer, template.source, template.name)

    def tokenize(self, messages: Messages, *, max_length: int | None = None, train_from: int = 0) -> TokenizedExample:
        """Render, tokenize once and mask one conversation; cut at `max_length`.

        Only assistant turns at message index `train_from` or later are
        trained (the completion of a prompt-completion row); earlier ones are
        context.
        """
        _check_messages(messages)
        if self.strategy == "prefix-rendering":
            assert self.end_of_turn is not None
            text, spans = prefix_assistant_spans(
                self.tokenizer, self.source, messages, self.end_of_turn, template_name=self.template.name,
                first=train_from,
            )
            encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            input_ids = list(encoding["input_ids"])
            mask = mask_from_char_spans(encoding["offset_mapping"], spans)
        else:
            text, input_ids, mask = self._library_mask(messages)
            if any(m["role"] == "assistant" for m in messages[:train_from]):
                mask = self._context_unmasked(messages, train_from, text, input_ids, mask)
        labels = [token if trained else IGNORE_INDEX for token, trained in zip(input_ids, mask, strict=True)]
        full_length = len(input_ids)
        truncated = max_length is not None and full_length > max_length
        cut = 0
        if truncated:
            cut = sum(1 for label in labels[max_length:] if label != IGNORE_INDEX)
            input_ids, labels = input_ids[:max_length], labels[:max_length]
        return TokenizedExample(input_ids=input_ids, labels=labels, text=text, truncated=truncated,
                                full_length=full_length, cut_trained=cut)

    def _context_unmasked(self, messages: Messages, train_from: int, text: str, input_ids: list[int],
                          mask: list[int]) -> list[int]:
        """`mask` with the assistant turns before message `train_from` untrained (they are context)."""
        head = _render(self.tokenizer, self.source, messages[:train_from], False, self.template.name)
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if not text.startswith(head) or list(encoding["input_ids"]) != input_ids:
            raise MaskingError(
                f"chat template {self.template.name!r} renders the prompt of a prompt-completion row differently "
                "inside the whole conversation, so its assistant turns cannot be told apart from the completion; "
                "give the prompt without assistant turns, or use messages rows"
            )
        return [0 if start < len(head) else m for m, (start, _) in zip(mask, encoding["offset_mapping"], strict=True)]

    def _library_mask(self, messages: Messages) -> tuple[str, list[int], list[int]]:
        """The mask transformers derives from `{% generation %}` markers (authoritative)."""
        text = _render(self.tokenizer, self.source, messages, False, self.template.name)
        try:
            out = self.tokenizer.apply_chat_template(
                list(messages),
                chat_template=self.source,
                tokenize=True,
                return_dict=True,
                return_assistant_tokens_mask=True,
            )
        except Exception as exc:  # template errors surface as several exception types
            raise MaskingError(f"chat template {self.template.name!r} failed on this conversation: {exc}") from exc
        input_ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
        answered = any(m.get("role") == "assistant" and str(m.get("content") or "").strip() for m in messages)
        if answered and not any(mask):
            raise MaskingError(
                f"chat template {self.template.name!r}: its {{% generation %}} markers cover none of the "
                "assistant's text; put them around each assistant message and its end-of-turn marker"
            )
        return text, input_ids, mask


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase,
    messages: Messages,
    *,
    max_length: int | None,
    chat_template: str | None = None,
) -> TokenizedExample:
    """Tokenize and mask one conversation; `chat_template` is `spec.model.chatTemplate`.

    Convenience for single examples; for a dataset build one `ConversationMasker`.
    """
    masker = ConversationMasker(tokenizer, resolve_chat_template(tokenizer, chat_template))
    return masker.tokenize(messages, max_length=max_length)


def has_generation_markers(source: str) -> bool:
    """Whether a template carries `{% generation %}` markers (as TRL detects them)."""
    from trl.chat_template_utils import has_generation_markers as trl_has_markers

    return trl_has_markers(source)


def trl_training_template(tokenizer: PreTrainedTokenizerBase, source: str) -> str | None:
    """TRL's training twin of `source` (same format plus generation markers), if it ships one."""
    from trl.chat_template_utils import get_training_chat_template

    # TRL looks at the tokenizer's own template; a shallow copy lets it look at ours
    # without touching the caller's tokenizer.
    probe = copy.copy(tokenizer)
    probe.chat_template = source
    try:
        return get_training_chat_template(probe)
    except Exception:  # noqa: BLE001  ("not supported" is a ValueError; probing odd templates can fail otherwise)
        return None


def prefix_assistant_spans(
    tokenizer: PreTrainedTokenizerBase,
    source: str,
    messages: Messages,
    end_of_turn: str,
    *,
    template_name: str = "inline",
    first: int = 0,
) -> tuple[str, list[Span]]:
    """Render the conversation and find the trained character span of each assistant turn from message `first` on.

    A span starts where the prompt rendered with `add_generation_prompt=True` ends and
    stops after the end-of-turn marker that follows the turn's content. Raises
    `MaskingError` when the template renders a prompt that is not a prefix of the
    conversation, or when the turn's content and marker are not where they must be.
    """
    _check_messages(messages)
    full = _render(tokenizer, source, messages, False, template_name)
    spans: list[Span] = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant" or index < first:
            continue
        where = f"chat template {template_name!r}, message {index + 1} (assistant)"
        if index == 0:
            raise MaskingError(f"{where}: a conversation cannot start with the assistant; it needs a prompt first")
        prompt = _render(tokenizer, source, messages[:index], True, template_name)
        through = _render(tokenizer, source, messages[: index + 1], False, template_name)
        if not full.startswith(prompt) or not through.startswith(prompt):
            raise MaskingError(
                f"{where}: the template is not prefix-stable (the prompt it renders for this turn is not "
                "how the conversation itself begins), so the answer cannot be located safely; use a "
                "template with {% generation %} markers or a preset"
            )
        start = len(prompt)
        # The turn ends where rendering it as the last message stops agreeing with the whole
        # conversation (templates such as Phi-3 append EOS only after the final message).
        limit = _common_prefix_length(through, full)
        content = str(message["content"]).strip()
        pattern = re.compile(re.escape(content) + r"\s*" + re.escape(end_of_turn))
        match = pattern.search(full, start, limit)
        if match is None:
            raise MaskingError(
                f"{where}: the turn's content followed by the end-of-turn marker {end_of_turn!r} is not "
                "where the template renders this turn; the template changes the content or ends turns "
                "differently: use a template with {% generation %} markers or a preset"
            )
        if spans and start < spans[-1][1]:
            raise MaskingError(f"{where}: the turn overlaps the previous assistant turn")
        spans.append((start, match.end()))
    return full, spans


def mask_from_char_spans(offsets: Sequence[Sequence[int]], spans: Sequence[Span]) -> list[int]:
    """1 for every token whose character range overlaps a span, else 0.

    A token straddling a span edge (a BPE merge across the marker) is trained: the model
    must produce it to produce the span.
    """
    mask = [0] * len(offsets)
    span_index = 0
    for token_index, (token_start, token_end) in enumerate(offsets):
        while span_index < len(spans) and token_start >= spans[span_index][1]:
            span_index += 1
        if span_index == len(spans):
            break
        span_start = spans[span_index][0]
        empty_token_inside = token_start == token_end and token_start >= span_start
        if token_end > span_start or empty_token_inside:
            mask[token_index] = 1
    return mask


def infer_end_of_turn(tokenizer: PreTrainedTokenizerBase, source: str, template_name: str = "inline") -> str:
    """The text a template puts after an assistant's content to end the turn.

    Probes a two-exchange conversation: the marker is what follows the first answer both
    when it is the last message and when the conversation goes on (trailing whitespace,
    which the model never generates, excluded). Raises `MaskingError` when there is none
    or the two disagree (e.g. gpt-oss: `<|return|>` last, `<|end|>` otherwise).
    """
    exchange = [
        {"role": "user", "content": _PROBE_USER[0]},
        {"role": "assistant", "content": _PROBE_ASSISTANT[0]},
    ]
    follow_up = [
        {"role": "user", "content": _PROBE_USER[1]},
        {"role": "assistant", "content": _PROBE_ASSISTANT[1]},
    ]
    try:
        single = _render(tokenizer, source, exchange, False, template_name)
        both = _render(tokenizer, source, exchange + follow_up, False, template_name)
    except MaskingError:  # some templates demand a system message first
        system = [{"role": "system", "content": _PROBE_SYSTEM}]
        single = _render(tokenizer, source, system + exchange, False, template_name)
        both = _render(tokenizer, source, system + exchange + follow_up, False, template_name)
    answer = _PROBE_ASSISTANT[0]
    if answer not in single or answer not in both or _PROBE_USER[1] not in both:
        raise MaskingError(
            f"chat template {template_name!r} does not render message content verbatim, so the assistant's "
            "text cannot be located; use a template with {% generation %} markers or a preset"
        )
    after_last = single[single.index(answer) + len(answer) :]
    cut = both.index(answer) + len(answer)
    after_middle = both[cut : both.index(_PROBE_USER[1], cut)]
    marker = after_last.strip()
    if not (marker and after_middle.lstrip().startswith(marker)):
        # Same start, different tails (Phi-3: "<|end|>\n<|endoftext|>" vs "<|end|>\n<|user|>"):
        # the marker is the shared text up to the last whitespace before they part.
        shared = os.path.commonprefix([after_last, after_middle])
        spaces = [i for i, char in enumerate(shared) if char.isspace()]
        marker = shared[: spaces[-1]].strip() if spaces else ""
    if not marker:
        raise MaskingError(
            f"cannot tell how chat template {template_name!r} ends an assistant turn (after an answer it "
            f"renders {after_last!r} at the end and {after_middle!r} mid-conversation); use a template "
            "with {% generation %} markers or a preset"
        )
    return marker


def _render(
    tokenizer: PreTrainedTokenizerBase, source: str, messages: Messages, generation_prompt: bool, name: str
) -> str:
    try:
        return tokenizer.apply_chat_template(
            list(messages), chat_template=source, tokenize=False, add_generation_prompt=generation_prompt
        )
    except Exception as exc:  # Jinja errors, raise_exception(), KeyError/TypeError in templates
        raise MaskingError(f"chat template {name!r} failed to render the conversation: {exc}") from exc


def _common_prefix_length(a: str, b: str) -> int:
    return len(os.path.commonprefix([a, b]))


def _check_messages(messages: Messages) -> None:
    if not messages:
        raise MaskingError("the conversation has no messages")
    for number, message in enumerate(messages, start=1):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise MaskingError(f"message {number}: needs a string 'role'")
        if message["role"] == "assistant" and not isinstance(message.get("content"), str):
            raise MaskingError(f"message {number}: an assistant message needs a string 'content'")
