"""The SFTJob spec: one pydantic model, the single source of truth.

The CRD's openAPIV3Schema is generated from these classes (`sftjob.crd`),
`sftjob validate` checks manifests with them, the operator renders from
them and the run config is derived from them. Field names are the CRD's
camelCase names; descriptions become the CRD's descriptions and the
generated reference in docs/.

Rules that span several fields are written once, as CEL, in
`CROSS_FIELD_RULES` and mirrored in Python validators here, so the API
server (CEL) and `sftjob validate` (Python) reject the same objects.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

API_GROUP = "sftjob.dev"
API_VERSION = "v1alpha1"
KIND = "SFTJob"
PLURAL = "sftjobs"

# Kubernetes quantity, e.g. "8", "500m", "64Gi", "1.5".
QUANTITY_PATTERN = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
URI_SCHEMES = ("s3://", "file://", "pvc://")
# A location with any other scheme (ftp://, gs://, https://) is refused by the
# API server (CEL) and `sftjob validate` alike, not by the pod hours later.
_SCHEME_CEL = "^(s3|pvc|file)://"


class _Model(BaseModel):
    """Base: camelCase names on the wire, unknown keys rejected."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        validate_default=False,
    )


class SecretKeyRef(_Model):
    """A key in a Secret in the SFTJob's namespace."""

    name: str = Field(min_length=1, max_length=253, description="Name of the Secret in the SFTJob's namespace.")
    key: str = Field(min_length=1, max_length=253, description="Key inside the Secret whose value is used.")


class S3CredentialsRef(_Model):
    """A Secret holding S3 credentials as two keys."""

    name: str = Field(min_length=1, max_length=253, description="Name of the Secret in the SFTJob's namespace.")
    accessKeyIdKey: str = Field(
        default="AWS_ACCESS_KEY_ID", min_length=1, max_length=253, description="Key holding the access key id."
    )
    secretAccessKeyKey: str = Field(
        default="AWS_SECRET_ACCESS_KEY", min_length=1, max_length=253, description="Key holding the secret access key."
    )


class ModelSettings(_Model):
    """The base model to fine-tune, without credentials (what the run config carries)."""

    source: str = Field(
        min_length=1,
        max_length=1024,
        description=(
            "Where the base model comes from: a Hugging Face hub id (org/name), an s3:// prefix, "
            "pvc://claim/path, or a local directory (local runs only)."
        ),
    )
    revision: str = Field(default="main", max_length=255, description="Hub revision (branch, tag or commit) of the model.")
    chatTemplate: str | None = Field(
        default=None,
        max_length=65536,
        description=(
            "Chat template override: a preset name (chatml, llama3, mistral, gemma) or inline Jinja. "
            "Needed for base models that ship without a template."
        ),
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto",
        description="Training precision. auto picks bfloat16 where the hardware supports it natively, else float32.",
    )
    attention: Literal["auto", "flash_attention_2", "sdpa", "eager"] = Field(
        default="auto",
        description="Attention kernel. auto picks flash_attention_2 when installed and supported, else sdpa.",
    )
    quantization: Literal["none", "4bit", "8bit"] = Field(
        default="none",
        description="Load the base model quantized (QLoRA). Requires spec.training.lora.",
    )
    trustRemoteCode: bool = Field(default=False, description="Allow model repositories to run their own Python code.")


class ModelSpec(ModelSettings):
    """The base model to fine-tune."""

    tokenSecretRef: SecretKeyRef | None = Field(
        default=None, description="Secret key holding a Hugging Face token, for gated or private models."
    )


class DatasetSpec(_Model):
    """Training and validation data."""

    train: str = Field(
        min_length=1,
        max_length=1024,
        description="Training data: .jsonl, .json or .parquet; s3://, pvc://claim/path or a local path (local runs).",
    )
    validation: str | None = Field(
        default=None, max_length=1024, description="Validation data, same formats as train. Or use validationSplit."
    )
    validationSplit: float | None = Field(
        default=None,
        gt=0,
        le=0.5,
        description="Fraction of train held out for validation when no validation file is given.",
    )
    format: Literal["auto", "messages", "prompt-completion"] = Field(
        default="auto",
        description="Row format: messages ({messages: [{role, content}]}), prompt-completion, or auto-detect.",
    )
    trainOn: Literal["all-assistant", "last-assistant"] = Field(
        default="all-assistant",
        description=(
            "Which assistant turns are trained. all-assistant: every assistant turn of a messages row, and the "
            "completion of a prompt-completion row (its prompt, assistant turns included, is context, as in TRL). "
            "last-assistant: only each row's last assistant turn."
        ),
    )


class LoraSpec(_Model):
    """Low-rank adaptation instead of full fine-tuning."""

    r: int = Field(default=16, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(default=32, ge=1, le=4096, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the LoRA layers.")
    # A list only (not "string or list"): a structural CRD schema cannot
    # say "string or array", and one shape keeps the API server and
    # `sftjob validate` in agreement.
    targetModules: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(
        default_factory=lambda: ["all-linear"],
        min_length=1,
        max_length=64,
        description=(
            "Modules to adapt: [all-linear] (every linear layer except the output head), "
            "or module names such as [q_proj, k_proj, v_proj, o_proj]."
        ),
    )


class TrainingSpec(_Model):
    """Hyperparameters. Every field is optional: unset values are chosen by model size and recorded in status.resolved."""

    epochs: float | None = Field(default=None, gt=0, le=100, description="Passes over the training data.")
    maxSteps: int | None = Field(default=None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    learningRate: float | None = Field(default=None, gt=0, le=1, description="Peak learning rate.")
    perDeviceBatchSize: int | None = Field(default=None, ge=1, le=4096, description="Sequences per device per forward pass.")
    effectiveBatchSize: int | None = Field(
        default=None,
        ge=1,
        le=65536,
        description=(
            "Sequences per optimizer step across all devices. Gradient accumulation = "
            "effectiveBatchSize / (perDeviceBatchSize x GPUs x nodes); it must divide."
        ),
    )
    warmupRatio: float | None = Field(default=None, ge=0, le=0.5, description="Fraction of steps spent warming up the learning rate.")
    weightDecay: float | None = Field(default=None, ge=0, le=1, description="AdamW weight decay.")
    maxGradNorm: float | None = Field(default=None, gt=0, description="Gradient clipping norm.")
    lrScheduler: Literal["cosine", "linear", "constant", "constant_with_warmup", "cosine_with_min_lr"] | None = Field(
        default=None, description="Learning-rate schedule after warmup."
    )
    maxSeqLength: int = Field(default=2048, ge=16, le=1048576, description="Tokens per sequence; longer rows are truncated and counted.")
    packing: bool = Field(default=False, description="Pack rows into sequences without padding (padding-free best-fit packing).")
    gradientCheckpointing: bool | None = Field(
        default=None, description="Recompute activations in backward to save memory. Default: on for GPUs, off on CPU."
    )
    evalSteps: int | None = Field(default=None, ge=1, description="Evaluate every N optimizer steps. Default: about 10 evaluations per run.")
    saveSteps: int | None = Field(default=None, ge=1, description="Checkpoint every N steps; must be a multiple of evalSteps. Default: evalSteps.")
    saveTotalLimit: int = Field(default=2, ge=1, le=100, description="Checkpoints kept on disk (the best one is always kept).")
    loggingSteps: int = Field(default=10, ge=1, description="Log train metrics every N steps.")
    seed: int = Field(default=42, ge=0, description="Random seed for data order and initialisation.")
    lora: LoraSpec | None = Field(default=None, description="Train LoRA adapters instead of all weights.")


class SanityCheckSpec(_Model):
    """A short real training run on a subset before the full run."""

    enabled: bool = Field(default=True, description="Run the sanity check before training (recommended).")
    steps: int = Field(default=10, ge=2, le=200, description="Optimizer steps in the sanity run.")
    samples: int = Field(default=64, ge=4, le=10000, description="Training rows used by the sanity run.")
    maxTruncatedShare: float = Field(
        default=0.1, ge=0, le=1,
        description="Fail (SanityTruncated) when more than this share of training rows lose answer tokens to maxSeqLength.",
    )
    maxEmptyAnswerShare: float = Field(
        default=0.0, ge=0, le=1,
        description="Fail (SanityEmptyAnswers) when more than this share of training rows have a trained answer that is "
                    "empty after stripping whitespace (0: any such row).",
    )
    divergenceFactor: float = Field(
        default=1.5, gt=1, le=100,
        description="Fail (SanityDiverged) when the loss on the sanity rows ends above this multiple of where it began, "
                    "or a gradient norm exceeds 10x this multiple of the first one.",
    )


class Toleration(_Model):
    """A Kubernetes toleration (core/v1 Toleration)."""

    key: str | None = Field(default=None, max_length=317, description="Taint key.")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal.")
    value: str | None = Field(default=None, max_length=63, description="Taint value (with Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(default=None, description="Taint effect.")
    tolerationSeconds: int | None = Field(default=None, description="How long a NoExecute taint is tolerated.")


Quantity = Annotated[str, Field(pattern=QUANTITY_PATTERN, max_length=64)]


class ResourcesSpec(_Model):
    """What the training pod needs and where it may run."""

    gpus: int = Field(default=1, ge=0, le=16, description="GPUs per node (0 trains on CPU).")
    nodes: int = Field(
        default=1, ge=1, le=16,
        description=(
            "Nodes (pods), each with `gpus` GPUs. Above 1 the job is an Indexed Job with a headless Service: every pod "
            "runs torchrun with the c10d rendezvous on pod 0, which alone runs the sanity check, reports and exports."
        ),
    )
    strategy: Literal["auto", "ddp", "fsdp"] = Field(
        default="auto",
        description=(
            "How the GPUs share the work. ddp: every GPU holds the whole model, its gradients and optimizer state. "
            "fsdp: shard them across the job's GPUs; the pre-flight plan (`sftjob plan`, status.plan) sizes it; "
            "until FSDP training lands, the operator fails such a job as InvalidSpec before it creates a Job, and "
            "`sftjob run` before it loads anything. auto: DDP; the plan says when only FSDP (or FSDP with CPU "
            "offload) would fit."
        ),
    )
    gpuMemory: Quantity | None = Field(
        default=None,
        description=(
            "Memory of one GPU (e.g. 80Gi) for the pre-flight plan. Default: read from a known GPU named in "
            "nodeSelector (nvidia.com/gpu.product, nvidia.com/gpu.memory), else 80 GB; in the pod, the card's own."
        ),
    )
    terminationGracePeriodSeconds: int | None = Field(
        default=None, ge=30, le=86400,
        description=(
            "Seconds a pod gets after SIGTERM (preemption, a drain) to write its just-in-time checkpoint; the next pod "
            "resumes at that step. Default: 900 with GPUs, 120 on CPU. The runtime warns when its checkpoint "
            "(weights and optimizer state) may take longer to write."
        ),
    )
    gpuResource: str = Field(default="nvidia.com/gpu", max_length=253, description="Extended resource name of the GPU.")
    cpu: Quantity = Field(default="8", description="CPU request and limit.")
    memory: Quantity = Field(default="64Gi", description="Memory request and limit.")
    shmSize: Quantity = Field(default="16Gi", description="Size of /dev/shm (memory-backed) for data loaders and NCCL.")
    workVolumeSize: Quantity = Field(default="100Gi", description="Size limit of the scratch volume for the model and checkpoints.")
    workVolumeClaim: str | None = Field(
        default=None, max_length=253, description="Existing PersistentVolumeClaim to use as the scratch volume (enables resume across pods)."
    )
    # Bounded sizes keep the CRD's CEL cost estimate (the immutability rule
    # compares whole sections) far below the API server's limit.
    nodeSelector: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict, max_length=64, description="Node labels the pod must match."
    )
    tolerations: list[Toleration] = Field(default_factory=list, max_length=64, description="Taints the pod tolerates.")
    affinity: dict[str, Any] | None = Field(default=None, description="core/v1 Affinity for the training pod.")
    priorityClassName: str | None = Field(default=None, max_length=253, description="PriorityClass of the training pod.")


class OutputSettings(_Model):
    """Where the best checkpoint goes, without credentials (what the run config carries)."""

    uri: str = Field(
        min_length=1,
        max_length=1024,
        description="Destination of the best checkpoint: s3://bucket/prefix, pvc://claim/path, or file:// (local runs).",
    )
    endpoint: str | None = Field(
        default=None, max_length=1024,
        description="S3-compatible endpoint URL (MinIO, Ceph, ...), used for every s3:// location of the job (model, data, output).",
    )
    region: str | None = Field(default=None, max_length=64, description="S3 region, used for every s3:// location of the job.")
    keep: Literal["best", "last"] = Field(
        default="best", description="Export the checkpoint with the lowest eval loss (best) or the final one (last)."
    )
    keepCheckpoints: bool = Field(
        default=False,
        description="Keep the training checkpoints in the work directory after a successful export (default: pruned).",
    )


class OutputSpec(OutputSettings):
    """Where the best checkpoint goes."""

    credentialsSecretRef: S3CredentialsRef | None = Field(
        default=None, description="Secret with S3 credentials. Omit to use the service account's identity (IRSA, workload identity)."
    )


class WandbSpec(_Model):
    """Weights & Biases settings."""

    project: str = Field(default="sftjob", max_length=128, description="W&B project.")
    entity: str | None = Field(default=None, max_length=128, description="W&B entity (team or user).")
    apiKeySecretRef: SecretKeyRef | None = Field(default=None, description="Secret key holding the W&B API key.")


class MonitoringSpec(_Model):
    """Where training metrics go."""

    reportTo: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=lambda: ["tensorboard"], max_length=2, description="Metric sinks: tensorboard, wandb (empty: none)."
    )
    wandb: WandbSpec | None = Field(default=None, description="W&B settings, used when reportTo has wandb.")


class SFTJobSpec(_Model):
    """Desired state of a supervised fine-tuning job."""

    model: ModelSpec = Field(description="The base model to fine-tune.")
    dataset: DatasetSpec = Field(description="Training and validation data.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Hyperparameters; unset values are chosen by model size.")
    sanityCheck: SanityCheckSpec = Field(default_factory=SanityCheckSpec, description="The sanity check that gates training.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Compute and placement of the training pod.")
    output: OutputSpec = Field(description="Where the best checkpoint is exported.")
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec, description="Metric sinks.")
    image: str | None = Field(default=None, max_length=1024, description="Training image override (default: the operator's configured image).")
    serviceAccountName: str | None = Field(default=None, max_length=253, description="Service account of the training pod.")
    queueName: str | None = Field(
        default=None, max_length=63, description="Kueue LocalQueue: the Job is created suspended with the queue label."
    )
    suspend: bool = Field(default=False, description="Suspend the job (the pod is stopped; resuming continues from the latest checkpoint).")
    activeDeadlineSeconds: int = Field(default=86400, ge=60, description="Fail the job after this many seconds.")
    backoffLimit: int = Field(default=3, ge=0, le=20, description="Retries after pod failures (disruptions such as preemption do not count).")
    ttlSecondsAfterFinished: int | None = Field(
        default=None, ge=0, description="Delete the finished Job (not the SFTJob) after this many seconds."
    )


def cross_field_errors(spec: SFTJobSpec) -> list[str]:
    """Field-path messages for every cross-field rule that `spec` breaks."""
    return [f"{rule.field}: {rule.describe(spec)}" for rule in CROSS_FIELD_RULES if not rule.check(spec)]


def unavailable_errors(*, strategy: str) -> list[str]:
    """Valid settings this release cannot run yet, one field-path message each (empty: it can run them).

    The schema accepts them, so manifests written for a later release stay
    valid; the operator refuses them before it requests any GPU and the
    runtime before it fetches anything, with the same words.
    """
    if strategy == "fsdp":
        return ["spec.resources.strategy: fsdp is not available in this release yet (it trains data-parallel, every "
                "GPU holding the whole model); use ddp or auto, or fit the job with spec.training.lora"]
    return []


class CrossFieldRule:
    """One rule, in CEL for the API server and in Python for `sftjob validate`.

    `explain`, when given, words the Python-side message for the spec at
    hand (e.g. the nearest valid values); the CEL message is fixed text.
    """

    def __init__(self, field: str, cel: str, message: str, check, explain=None) -> None:
        self.field = field
        self.cel = cel
        self.message = message
        self.check = check
        self.explain = explain

    def describe(self, spec: SFTJobSpec) -> str:
        return self.explain(spec) if self.explain else self.message


def nearest_multiples(value: int, step: int) -> tuple[int, int]:
    """The valid values on either side of `value` (multiples of `step`, at least `step`)."""
    low = max(step, value // step * step)
    return low, (value // step + 1) * step if low <= value else low + step


def _devices(spec: SFTJobSpec) -> int:
    return max(spec.resources.gpus, 1) * spec.resources.nodes


def _batch_message(spec: SFTJobSpec) -> str:
    t = spec.training
    step = t.perDeviceBatchSize * _devices(spec)
    low, high = nearest_multiples(t.effectiveBatchSize, step)
    return (f"{t.effectiveBatchSize} is not a multiple of perDeviceBatchSize x GPUs x nodes = {t.perDeviceBatchSize} x "
            f"{max(spec.resources.gpus, 1)} x {spec.resources.nodes} = {step} (gradient accumulation must be a whole "
            f"number); use {low} or {high}")


def _scheme_rule(field: str, optional: bool, local: str) -> CrossFieldRule:
    """`field` must have no scheme (a hub id or a path) or one the runtime reads."""
    cel_path = "self" + field[len("spec"):]
    cel = f"!{cel_path}.contains('://') || {cel_path}.matches('{_SCHEME_CEL}')"
    if optional:
        cel = f"!has({cel_path}) || {cel}"
    section, _, attr = field[len("spec."):].partition(".")

    def check(spec: SFTJobSpec) -> bool:
        value = getattr(getattr(spec, section), attr)
        return value is None or "://" not in value or value.startswith(URI_SCHEMES)

    return CrossFieldRule(field, cel, f"must be {local}, an s3:// or pvc:// location (or file:// for local runs); "
                                      "no other scheme is supported", check)


def _divides(spec: SFTJobSpec) -> bool:
    t = spec.training
    if t.effectiveBatchSize is None or t.perDeviceBatchSize is None:
        return True
    return t.effectiveBatchSize % (t.perDeviceBatchSize * _devices(spec)) == 0


# Rules on spec as a whole (the CEL `self` is spec). The immutability rule
# (a transition rule that reads status) sits at the CRD's root, written by
# the CRD generator (`sftjob.crd.immutability_rule`).
CROSS_FIELD_RULES: list[CrossFieldRule] = [
    CrossFieldRule(
        "spec.training.saveSteps",
        "!has(self.training) || !has(self.training.saveSteps) || !has(self.training.evalSteps) || "
        "self.training.saveSteps % self.training.evalSteps == 0",
        "must be a multiple of evalSteps, so the checkpoint with the best eval loss is on disk to keep",
        lambda s: s.training.saveSteps is None or s.training.evalSteps is None or s.training.saveSteps % s.training.evalSteps == 0,
    ),
    CrossFieldRule(
        "spec.model.quantization",
        "!has(self.model.quantization) || self.model.quantization == 'none' || has(self.training) && has(self.training.lora)",
        "quantized loading (QLoRA) requires spec.training.lora",
        lambda s: s.model.quantization == "none" or s.training.lora is not None,
    ),
    CrossFieldRule(
        "spec.dataset",
        "(has(self.output.keep) && self.output.keep == 'last') || has(self.dataset.validation) || has(self.dataset.validationSplit)",
        "keeping the best checkpoint ranks by eval loss: set dataset.validation or dataset.validationSplit (or output.keep: last)",
        lambda s: s.output.keep == "last" or s.dataset.validation is not None or s.dataset.validationSplit is not None,
    ),
    CrossFieldRule(
        "spec.dataset.validationSplit",
        "!(has(self.dataset.validation) && has(self.dataset.validationSplit))",
        "set either dataset.validation or dataset.validationSplit, not both",
        lambda s: not (s.dataset.validation is not None and s.dataset.validationSplit is not None),
    ),
    CrossFieldRule(
        "spec.training.effectiveBatchSize",
        "!has(self.training) || !has(self.training.effectiveBatchSize) || !has(self.training.perDeviceBatchSize) || "
        "self.training.effectiveBatchSize % (self.training.perDeviceBatchSize * "
        "((has(self.resources) && has(self.resources.gpus) && self.resources.gpus > 0) ? self.resources.gpus : 1) * "
        "((has(self.resources) && has(self.resources.nodes)) ? self.resources.nodes : 1)) == 0",
        "must be a multiple of perDeviceBatchSize x GPUs x nodes (gradient accumulation must be a whole number)",
        _divides,
        _batch_message,
    ),
    _scheme_rule("spec.model.source", False, "a Hugging Face hub id (org/name), a local path"),
    _scheme_rule("spec.dataset.train", False, "a path"),
    _scheme_rule("spec.dataset.validation", True, "a path"),
    CrossFieldRule(
        "spec.resources.workVolumeClaim",
        "!has(self.resources) || !has(self.resources.nodes) || self.resources.nodes == 1 || !has(self.resources.workVolumeClaim)",
        "a multi-node job gives each node's pod a scratch volume of its own (workVolumeSize); one claim cannot be "
        "mounted by every node: leave workVolumeClaim unset (the S3 mirror keeps checkpoints across pods)",
        lambda s: s.resources.nodes == 1 or s.resources.workVolumeClaim is None,
    ),
    CrossFieldRule(
        "spec.resources.strategy",
        "!has(self.resources) || !has(self.resources.strategy) || self.resources.strategy != 'fsdp' || "
        "(has(self.resources.gpus) && self.resources.gpus > 1) || (has(self.resources.nodes) && self.resources.nodes > 1)",
        "fsdp shards the model across the job's GPUs and needs more than one: set resources.gpus or resources.nodes "
        "above 1, or strategy: ddp (or auto)",
        lambda s: s.resources.strategy != "fsdp" or s.resources.gpus > 1 or s.resources.nodes > 1,
    ),
    CrossFieldRule(
        "spec.output.uri",
        "self.output.uri.matches('^(s3://|pvc://|file://|/|[.])')",
        "must start with s3:// or pvc:// (or, for local runs, file://, / or .); no other scheme is supported",
        lambda s: s.output.uri.startswith((*URI_SCHEMES, "/", ".")),
    ),
]

NAME_RE = re.compile(DNS_LABEL_PATTERN)
