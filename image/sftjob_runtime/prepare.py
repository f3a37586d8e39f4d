"""From a run config to tokenized, label-masked rows and resolved hyperparameters: every check that needs no weights.

Shared by `sftjob preview`, the sanity check and training, so that what a
user previews is exactly what the trainer gets. Rows are tokenized and
masked here (labels built explicitly, -100 outside the assistant's
tokens) and handed to TRL pre-tokenized: TRL then uses the labels as given.
Rows that end up with no trained token (e.g. every assistant turn beyond
maxSeqLength) would be dropped silently by TRL; they are counted here and
reported instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sftjob.runconfig import RunConfig
from sftjob.vocabulary import ENV_HF_TOKEN, ExitCode, Reason
from sftjob_runtime import hardware as hw_mod
from sftjob_runtime.data import DatasetError, Example, load_examples, split_validation
from sftjob_runtime.errors import RuntimeFailure
from sftjob_runtime.events import emit
from sftjob_runtime.hparams import Resolved, count_parameters, plan_steps, resolve


@dataclass
class PreparedSplit:
    """Tokenized rows of one split plus what happened on the way."""

    rows: list  # list[masking.TokenizedExample]
    examples: list[Example]
    truncated: int = 0
    all_masked: list[str] = field(default_factory=list)  # sources of rows with no trained token

    def records(self) -> list[dict]:
        """Rows TRL trains on: input_ids + labels, only rows with at least one trained token."""
        return [{"input_ids": r.input_ids, "labels": r.labels} for r in self.rows if r.num_trained_tokens > 0]

    @property
    def tokens(self) -> int:
        return sum(r.num_tokens for r in self.rows)


def hf_token() -> str | None:
    """The hub token from the environment (the operator sets it from a secretKeyRef)."""
    import os

    return os.environ.get(ENV_HF_TOKEN) or None


def resolve_path(uri: str, base: Path | None = None) -> str:
    """Local path of a data or model location (file:// or plain); other schemes are passed through."""
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if "://" in uri:
        return uri
    p = Path(uri).expanduser()
    if not p.is_absolute() and base is not None:
        p = base / p
    return str(p)


def load_tokenizer(cfg: RunConfig, model_path: str):
    """The model's tokenizer and the conversation masker for the chat template the job asked for.

    The resolved template is also installed on the tokenizer, so sample
    generations and the saved tokenizer use the template training used.
    """
    from transformers import AutoTokenizer

    from sftjob_runtime.chat_templates import ChatTemplateError, resolve_chat_template
    from sftjob_runtime.masking import ConversationMasker, MaskingError

    try:
        tok = AutoTokenizer.from_pretrained(
            model_path, revision=cfg.model.revision, trust_remote_code=cfg.model.trustRemoteCode, token=hf_token()
        )
    except (OSError, ValueError) as e:
        raise model_error(cfg.model.source, e) from None
    try:
        template = resolve_chat_template(tok, cfg.model.chatTemplate)
        masker = ConversationMasker(tok, template)
    except (ChatTemplateError, MaskingError) as e:
        raise RuntimeFailure(Reason.CHAT_TEMPLATE, str(e), ExitCode.INVALID_CONFIG) from None
    tok.chat_template = template.source
    return tok, masker


def model_error(source: str, e: Exception) -> RuntimeFailure:
    """Map a loading error to ModelNotFound / GatedModel with what to do."""
    text = str(e)
    if "gated" in text.lower() or "401" in text or "403" in text:
        return RuntimeFailure(
            Reason.GATED_MODEL,
            f"spec.model.source: {source} is gated or private: accept its licence on the hub and set "
            "spec.model.tokenSecretRef to a Secret holding a token with access",
            ExitCode.MODEL,
        )
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return RuntimeFailure(
        Reason.MODEL_NOT_FOUND,
        f"spec.model.source: cannot load {source!r} ({first[:300]}); check the id/path and spec.model.revision",
        ExitCode.MODEL,
    )


def _inputs_dir() -> Path:
    from sftjob_runtime.demo_model import cache_root

    return cache_root() / "inputs"


def localize_data(cfg: RunConfig, uri: str, field: str, base: Path | None) -> str:
    """A local path for a data location (s3:// objects are downloaded to the cache once)."""
    if uri.startswith("s3://"):
        from sftjob_runtime.sources import fetch_s3_file

        return fetch_s3_file(uri, _inputs_dir(), field=field, endpoint=cfg.output.endpoint, region=cfg.output.region)
    return resolve_path(uri, base)


def localize_model(cfg: RunConfig, base: Path | None) -> str:
    """A local directory or hub id for spec.model.source (s3:// prefixes are downloaded once)."""
    if cfg.model.source.startswith("s3://"):
        from sftjob_runtime.sources import fetch_s3_prefix

        return fetch_s3_prefix(cfg.model.source, _inputs_dir(), field="spec.model.source",
                               endpoint=cfg.output.endpoint, region=cfg.output.region)
    src = cfg.model.source
    local = resolve_path(src, base)
    if Path(local).exists():
        return local
    if src.startswith(("/", ".", "~", "file://")):
        hint = " (for the demo model run `sftjob demo-model`)" if "demo-model" in src else ""
        raise RuntimeFailure(Reason.MODEL_NOT_FOUND, f"spec.model.source: no model directory at {local}{hint}", ExitCode.MODEL)
    return src  # a hub id (org/name): transformers downloads it


def load_splits(cfg: RunConfig, base: Path | None = None) -> tuple[list[Example], list[Example]]:
    """Training and validation conversations (validation may be empty when output.keep is last)."""
    def load(uri: str, field: str) -> list[Example]:
        path = localize_data(cfg, uri, field, base)
        try:
            return load_examples(path, format=cfg.dataset.format, train_on=cfg.dataset.trainOn)
        except DatasetError as e:
            if e.total == 1 and e.errors[0].startswith(f"{path}: "):
                # A problem with the file itself (missing, wrong type): say which field points at it.
                raise DatasetError([f"{field}: {e.errors[0]}"]) from None
            raise

    try:
        train = load(cfg.dataset.train, "spec.dataset.train")
        if cfg.dataset.validation:
            val = load(cfg.dataset.validation, "spec.dataset.validation")
        elif cfg.dataset.validationSplit:
            train, val = split_validation(train, cfg.dataset.validationSplit, cfg.training.seed)
        else:
            val = []
    except DatasetError as e:
        reason = Reason.DATASET_NOT_FOUND if "file not found" in str(e) else Reason.DATASET_SCHEMA
        raise RuntimeFailure(reason, str(e), ExitCode.DATASET) from None
    return train, val


def tokenize_split(masker, examples: list[Example], max_length: int) -> PreparedSplit:
    """Tokenize and mask every example; count truncation and rows left with nothing to train on."""
    from sftjob_runtime.masking import MaskingError

    split = PreparedSplit(rows=[], examples=examples)
    for ex in examples:
        try:
            row = masker.tokenize(ex.messages, max_length=max_length, train_from=ex.train_from)
        except MaskingError as e:
            raise RuntimeFailure(Reason.CHAT_TEMPLATE, f"{ex.source}: {e}", ExitCode.INVALID_CONFIG) from None
        split.rows.append(row)
        split.truncated += int(row.truncated)
        if row.num_trained_tokens == 0:
            split.all_masked.append(ex.source)
    return split


@dataclass
class Prepared:
    """Everything decided before the first step."""

    cfg: RunConfig
    model_path: str
    tokenizer: object
    train: PreparedSplit
    val: PreparedSplit
    resolved: Resolved
    hardware: hw_mod.Hardware
    end_of_turn: str | None = None  # the text that ends an assistant turn, where the masker knows it

    def data_counts(self) -> dict:
        """Rows, tokens, truncated and fully masked rows of both splits, as the report shows them."""
        return {"trainRows": len(self.train.examples), "validationRows": len(self.val.examples),
                "trainTokens": self.train.tokens, "truncatedRows": self.train.truncated + self.val.truncated,
                "fullyMaskedRows": len(self.train.all_masked) + len(self.val.all_masked)}


def prepare_run(cfg: RunConfig, base: Path | None = None) -> Prepared:
    """Hardware, tokenizer, data, masking and hyperparameters: all checks that need no weights."""
    hw = hw_mod.detect_hardware()
    dtype = hw_mod.choose_dtype(cfg.model.dtype, hw)
    attention = hw_mod.choose_attention(cfg.model.attention, hw, dtype)
    hw_mod.check_quantization(cfg.model.quantization, hw)
    model_path = localize_model(cfg, base)
    tokenizer, masker = load_tokenizer(cfg, model_path)
    train_ex, val_ex = load_splits(cfg, base)
    train = tokenize_split(masker, train_ex, cfg.training.maxSeqLength)
    val = tokenize_split(masker, val_ex, cfg.training.maxSeqLength)
    if not train.records():
        # Nothing left to train on: say why (every answer truncated away, empty answers, ...), with the counts.
        from sftjob_runtime.sanity import data_findings, failure

        raise failure(data_findings(cfg, train, tokenizer, masker.end_of_turn))
    if val_ex and not val.records():
        raise RuntimeFailure(Reason.DATASET_SCHEMA, "no validation row has a token to train on", ExitCode.DATASET)
    try:
        params = count_parameters(model_path, revision=cfg.model.revision, trust_remote_code=cfg.model.trustRemoteCode, token=hf_token())
    except OSError as e:
        raise model_error(cfg.model.source, e) from None
    # The processes actually running (torchrun's WORLD_SIZE), so a manifest written for
    # 8 GPUs run locally on one device keeps its effective batch through accumulation.
    r = resolve(cfg.training, params, hw_mod.world_size())
    r.dtype, r.attention = dtype, attention
    r.gradientCheckpointing = hw_mod.choose_checkpointing(cfg.training.gradientCheckpointing, hw)
    plan_steps(r, cfg.training, len(train.records()))
    for name, split in (("train", train), ("validation", val)):
        if split.truncated:
            emit("data_truncated", level="warning", split=name, rows=split.truncated, max_seq_length=cfg.training.maxSeqLength)
        if split.all_masked:
            emit("data_all_masked", level="warning", split=name, rows=len(split.all_masked), examples=split.all_masked[:5],
                 message="these rows have no assistant token within maxSeqLength and are not trained on")
    return Prepared(cfg, model_path, tokenizer, train, val, r, hw, masker.end_of_turn)
