"""Names shared by the operator and the runtime: reasons, exit codes, phases, labels, paths.

Both sides import this module; it imports nothing heavy. Changing a value
here changes the wire contract between a training pod and the operator.
"""

from __future__ import annotations

from enum import Enum, IntEnum


class Phase(str, Enum):
    """SFTJob.status.phase."""

    PENDING = "Pending"
    QUEUED = "Queued"
    SANITY_CHECKING = "SanityChecking"
    TRAINING = "Training"
    EXPORTING = "Exporting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED})
# The same, as the strings status.phase holds.
TERMINAL_PHASE_NAMES = frozenset(p.value for p in TERMINAL_PHASES)


class ConditionType(str, Enum):
    """SFTJob.status.conditions[].type."""

    SANITY_CHECKED = "SanityChecked"
    TRAINING = "Training"
    EXPORTED = "Exported"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    # A spec edit arrived after the Job was created (the CRD forbids it; shown if it slips through).
    SPEC_CHANGE_IGNORED = "SpecChangeIgnored"
    # The summary GitOps tools read (kubectl wait, Flux's kstatus, Argo CD): derived from the phase
    # and the conditions above, never set on their own. Ready is True only once the job succeeded;
    # Reconciling (work in progress) and Stalled (a terminal failure) are True when abnormal.
    READY = "Ready"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"


class Reason(str, Enum):
    """Typed, actionable failure (and progress) reasons."""

    INVALID_SPEC = "InvalidSpec"
    DATASET_SCHEMA = "DatasetSchema"
    DATASET_NOT_FOUND = "DatasetNotFound"
    MODEL_NOT_FOUND = "ModelNotFound"
    GATED_MODEL = "GatedModel"
    CHAT_TEMPLATE = "ChatTemplate"
    SANITY_LOSS_NOT_DECREASING = "SanityLossNotDecreasing"
    SANITY_ALL_MASKED = "SanityAllMasked"
    SANITY_GARBLED_GENERATION = "SanityGarbledGeneration"
    SANITY_NON_FINITE_LOSS = "SanityNonFiniteLoss"
    SANITY_DIVERGED = "SanityDiverged"
    SANITY_TRUNCATED = "SanityTruncated"
    SANITY_EMPTY_ANSWERS = "SanityEmptyAnswers"
    SANITY_NO_END_OF_TURN = "SanityNoEndOfTurn"
    OUT_OF_MEMORY = "OutOfMemory"
    UNSCHEDULABLE = "Unschedulable"
    IMAGE_PULL = "ImagePull"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    PREEMPTED = "Preempted"
    EXPORT_FAILED = "ExportFailed"
    TRAINING_DIVERGED = "TrainingDiverged"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    INTERNAL_ERROR = "InternalError"
    # The API server refused a child the SFTJob needs (RBAC, quota, admission), though the spec is valid.
    CREATE_FORBIDDEN = "CreateForbidden"
    CREATE_REJECTED = "CreateRejected"
    # Non-failure reasons used on progress conditions.
    CREATED = "JobCreated"
    QUEUED = "WaitingForQuota"
    RUNNING = "Running"
    PASSED = "Passed"
    COMPLETED = "Completed"
    SUSPENDED = "Suspended"
    JOB_ALREADY_CREATED = "JobAlreadyCreated"
    POD_REPLACED = "PodReplaced"


class ExitCode(IntEnum):
    """Exit codes of the runtime's commands.

    The Job's podFailurePolicy fails the Job at once on the configuration
    and sanity codes (a retry cannot help) and retries the rest.
    """

    OK = 0
    INTERNAL = 1
    INVALID_CONFIG = 2
    DATASET = 3
    MODEL = 4
    SANITY_FAILED = 10
    # Stopped by SIGTERM (preemption, a drain): the checkpoint it wrote is where the next pod resumes.
    INTERRUPTED = 13
    DIVERGED = 11
    EXPORT_FAILED = 12


# Exit codes for which retrying the pod is pointless.
PERMANENT_EXIT_CODES = (ExitCode.INVALID_CONFIG, ExitCode.DATASET, ExitCode.MODEL, ExitCode.SANITY_FAILED, ExitCode.DIVERGED)

REASON_FOR_EXIT_CODE = {
    ExitCode.INVALID_CONFIG: Reason.INVALID_SPEC,
    ExitCode.DATASET: Reason.DATASET_SCHEMA,
    ExitCode.MODEL: Reason.MODEL_NOT_FOUND,
    ExitCode.SANITY_FAILED: Reason.SANITY_LOSS_NOT_DECREASING,
    ExitCode.DIVERGED: Reason.TRAINING_DIVERGED,
    ExitCode.EXPORT_FAILED: Reason.EXPORT_FAILED,
}

# Labels and annotations on everything the operator creates.
LABEL_PREFIX = "sftjob.dev"
LABEL_JOB_NAME = f"{LABEL_PREFIX}/job-name"
LABEL_COMPONENT = f"{LABEL_PREFIX}/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
MANAGED_BY = "sftjob-operator"
ANNOTATION_SPEC_HASH = f"{LABEL_PREFIX}/spec-hash"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

# Container names and in-pod paths.
SANITY_CONTAINER = "sanity-check"
TRAIN_CONTAINER = "train"
RUN_CONFIG_KEY = "run-config.json"
RUN_CONFIG_DIR = "/etc/sftjob"
RUN_CONFIG_PATH = f"{RUN_CONFIG_DIR}/{RUN_CONFIG_KEY}"
WORK_DIR = "/workspace"
TERMINATION_LOG = "/dev/termination-log"
PROGRESS_PORT = 8321
PROGRESS_PATH = "/progress"

# Environment variables the runtime reads (set by the operator from secrets).
ENV_HF_TOKEN = "HF_TOKEN"
ENV_WANDB_API_KEY = "WANDB_API_KEY"
ENV_AWS_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
ENV_AWS_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"

# Credentials reach a training pod as files (a projected Secret volume), never as environment
# variables in the pod spec; the runtime reads them into its own process environment.
SECRETS_DIR = "/etc/sftjob/secrets"
ENV_SECRETS_DIR = "SFTJOB_SECRETS_DIR"
# JSON {file name: what names it, e.g. "spec.model.tokenSecretRef (Secret hf-token, key token)"}: the
# files the operator mounted, so the runtime can say which Secret is missing (names, never values).
ENV_SECRET_FILES = "SFTJOB_SECRET_FILES"
# Environment variable the runtime sets -> file name in SECRETS_DIR.
SECRET_FILES = {
    ENV_HF_TOKEN: "hf-token",
    ENV_AWS_ACCESS_KEY_ID: "aws-access-key-id",
    ENV_AWS_SECRET_ACCESS_KEY: "aws-secret-access-key",
    ENV_WANDB_API_KEY: "wandb-api-key",
}
ENV_TERMINATION_LOG = "SFTJOB_TERMINATION_LOG"
ENV_PROGRESS_PORT = "SFTJOB_PROGRESS_PORT"
# Multi-node jobs: which node (pod) this is, 0-based (node 0 runs the sanity check, reports and exports),
# and node 0's rendezvous endpoint (host:port), which the other nodes wait for before they start training.
ENV_NODE_INDEX = "SFTJOB_NODE_INDEX"
ENV_LEADER_ENDPOINT = "SFTJOB_LEADER_ENDPOINT"
RENDEZVOUS_PORT = 29400  # torchrun's c10d default
# The Job controller's annotation on each pod of an Indexed Job: its completion index (the node).
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
# The pod's terminationGracePeriodSeconds, so the runtime can warn when its checkpoint needs longer.
ENV_GRACE_SECONDS = "SFTJOB_TERMINATION_GRACE_SECONDS"


def memory_hint(gradient_checkpointing: bool | None, lora: bool) -> str:
    """What to change when training runs out of memory, leaving out what is already done."""
    steps = ["lower spec.training.perDeviceBatchSize (the effective batch is kept through accumulation)",
             "lower spec.training.maxSeqLength"]
    if not gradient_checkpointing:
        steps.append("enable spec.training.gradientCheckpointing")
    if not lora:
        steps.append("train LoRA adapters (spec.training.lora)")
    return ", ".join(steps[:-1]) + " or " + steps[-1]
