"""Which chat template a job trains with: the model's own, a preset, or inline Jinja.

`spec.model.chatTemplate` is resolved here once per job. The result carries the Jinja
source used to render training text and, for presets, the end-of-turn marker the
assistant must learn to emit (the masking module infers it for other templates).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_TEMPLATES_DIR = Path(__file__).parent / "templates"

# The marker written in place of the tokenizer's EOS token in a preset's end-of-turn.
EOS_TOKEN = "{eos_token}"


class ChatTemplateError(ValueError):
    """The chat template asked for cannot be used; the message says what to change."""


@dataclass(frozen=True)
class Preset:
    """A built-in chat format: its Jinja file and the marker that ends an assistant turn."""

    name: str
    description: str
    end_of_turn: str  # literal text, or EOS_TOKEN for "the tokenizer's EOS token"


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset("chatml", "ChatML: <|im_start|>role ... <|im_end|> (Qwen, SmolLM2, Hermes)", "<|im_end|>"),
        Preset("llama3", "Llama 3 Instruct: header ids, turns end with <|eot_id|>", "<|eot_id|>"),
        Preset("mistral", "Mistral Instruct v1: [INST] ... [/INST] answer</s>", EOS_TOKEN),
        Preset("gemma", "Gemma 2/3: <start_of_turn>user|model ... <end_of_turn>", "<end_of_turn>"),
    )
}


@dataclass(frozen=True)
class ChatTemplate:
    """A resolved chat template.

    `name` is `"model"` (the tokenizer's own template), a preset name, or `"inline"`.
    `end_of_turn` is the text that ends an assistant turn when it is known from the
    preset; `None` means "infer it from the template".
    """

    name: str
    source: str
    end_of_turn: str | None = None


def preset_names() -> list[str]:
    """The names `spec.model.chatTemplate` accepts as presets."""
    return sorted(PRESETS)


@cache
def preset_source(name: str) -> str:
    """The Jinja source of a preset (read from the package's `templates/` folder)."""
    return (_TEMPLATES_DIR / f"{name}.jinja").read_text(encoding="utf-8")


def is_inline_template(value: str) -> bool:
    """Whether a `chatTemplate` value is Jinja source rather than a preset name."""
    return "{%" in value or "{{" in value


def resolve_chat_template(tokenizer: PreTrainedTokenizerBase, chat_template: str | None) -> ChatTemplate:
    """Resolve `spec.model.chatTemplate` against a tokenizer.

    None -> the tokenizer's own template; a preset name -> the preset; text holding
    `{%` or `{{` -> inline Jinja. Raises `ChatTemplateError` for an unknown preset name
    or when the tokenizer has no template and none was given.
    """
    if chat_template is None or not chat_template.strip():
        own = tokenizer.chat_template
        if isinstance(own, dict):  # templates shipped as named variants
            own = own.get("default")
        if not own:
            raise ChatTemplateError(
                "the model's tokenizer has no chat template (typical of base models): set "
                f"spec.model.chatTemplate to a preset ({', '.join(preset_names())}) or to inline Jinja"
            )
        return ChatTemplate(name="model", source=own)
    if is_inline_template(chat_template):
        return ChatTemplate(name="inline", source=chat_template)
    name = chat_template.strip().lower()
    preset = PRESETS.get(name)
    if preset is None:
        raise ChatTemplateError(
            f"spec.model.chatTemplate: unknown preset {chat_template.strip()!r}; use one of "
            f"{', '.join(preset_names())}, inline Jinja, or leave it out to use the model's own template"
        )
    end_of_turn = preset.end_of_turn
    if end_of_turn == EOS_TOKEN:
        if not tokenizer.eos_token:
            raise ChatTemplateError(
                f"spec.model.chatTemplate: the {name} preset ends turns with the EOS token, "
                "but the tokenizer has none; pick another preset or inline Jinja"
            )
        end_of_turn = tokenizer.eos_token
    return ChatTemplate(name=name, source=preset_source(name), end_of_turn=end_of_turn)


def end_of_turn_warning(tokenizer: PreTrainedTokenizerBase, end_of_turn: str) -> str | None:
    """A warning when the end-of-turn marker is not one token of this tokenizer.

    The model then learns to spell the marker out as text, and generation only stops at
    it if the serving stack is told to; usually the template does not match the model.
    """
    ids = tokenizer(end_of_turn, add_special_tokens=False)["input_ids"]
    if len(ids) == 1:
        return None
    return (
        f"the end-of-turn marker {end_of_turn!r} is {len(ids)} tokens for this tokenizer, not one "
        "special token: the model will learn to write it as text and generation will not stop at it; "
        "use a chat template that matches the model's special tokens, or add the marker as a special token"
    )
