"""Real TRL training on CPU with a tiny random Llama (the demo tokenizer and chat template).

What users care about: the checkpoint with the lowest eval loss is the one
that ends up in the output directory and reloads; TensorBoard has train
loss, eval loss, learning rate and grad norm; the report says what was
chosen; failures are one line with a typed reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sftjob.report import Outcome
from tests.support.jobs import write_job
from tests.support.models import PRECISIONS, forced_precision

ROOT = Path(__file__).resolve().parents[1]

# Every test here trains (or loads the demo model) on CPU.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=sorted(PRECISIONS))
def trained(request, tiny_model_dir, tmp_path_factory):
    """One real run per CPU precision path (forced, whatever this CPU has), shared by the assertions below."""
    from sftjob_runtime.entrypoint import run

    tmp = tmp_path_factory.mktemp(f"train-{request.param}")
    job = write_job(tmp, tiny_model_dir)
    termination = tmp / "termination-log"
    with forced_precision(request.param):
        mp = pytest.MonkeyPatch()
        mp.setenv("SFTJOB_TERMINATION_LOG", str(termination))
        try:
            rc = run(str(job), output_dir=str(tmp / "work"))
        finally:
            mp.undo()
    assert rc == 0
    # The precision is forced only for the run itself; the resume test forces it again.
    return tmp, json.loads((tmp / "work" / "report.json").read_text()), termination, request.param


def eval_history(work: Path) -> dict[int, float]:
    """step -> eval_loss from the trainer state of the newest checkpoint."""
    ckpts = sorted((work / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    state = json.loads((ckpts[-1] / "trainer_state.json").read_text())
    return {e["step"]: e["eval_loss"] for e in state["log_history"] if "eval_loss" in e}


def test_best_checkpoint_is_the_lowest_eval_loss_and_is_what_is_exported(trained):
    from safetensors.torch import load_file

    tmp, report, *_ = trained
    work = tmp / "work"
    history = eval_history(work)
    assert len(history) >= 5
    best_step = min(history, key=history.get)
    assert report["best_step"] == best_step
    assert report["best_eval_loss"] == pytest.approx(history[best_step], rel=1e-6)
    # The exported weights are those of that checkpoint (not simply the last step).
    best = load_file(str(tmp / "export" / "model.safetensors"))
    ckpt = load_file(str(work / "checkpoints" / f"checkpoint-{best_step}" / "model.safetensors"))
    assert best.keys() == ckpt.keys()
    assert all((best[k] == ckpt[k]).all() for k in best)
    # ...and the exported copy is byte-identical, with the manifest as completion marker.
    manifest = json.loads((tmp / "export" / "sftjob-manifest.json").read_text())
    names = {f["path"] for f in manifest["files"]}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= names
    # The local export is the one copy of the best model: no duplicate best/ beside it.
    assert not (work / "best").exists()
    assert report["best_dir"] == str(tmp / "export")


def test_eval_loss_improves_and_report_is_complete(trained):
    _, report, *_ = trained
    assert report["eval_loss_after"] < report["eval_loss_before"]
    assert report["resolved"]["gradientAccumulationSteps"] == 1
    assert report["resolved"]["origin"]["learningRate"] == "spec"
    assert report["resolved"]["origin"]["warmupRatio"].startswith("default:")
    dtype = PRECISIONS[trained[3]][1]
    assert report["resolved"]["dtype"] == dtype  # the forced precision path really ran
    assert report["hardware"]["bf16"] is (dtype == "bfloat16")
    assert report["data"]["trainRows"] == 48 and report["data"]["validationRows"] == 12
    assert report["tokens_seen"] > 12 * 4 * 50
    assert report["sample_after"] is not None


def test_best_model_reloads_with_its_chat_template(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp, *_ = trained
    best = tmp / "export"
    model = AutoModelForCausalLM.from_pretrained(best)
    tok = AutoTokenizer.from_pretrained(best)
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 3
    assert "<|im_start|>assistant" in tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)


def test_tensorboard_has_the_recipe_metrics(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tmp, *_ = trained
    files = list((tmp / "work" / "tensorboard").rglob("events.out.tfevents.*"))
    assert files, "no TensorBoard event file written"
    tags = set()
    for f in files:
        acc = EventAccumulator(str(f))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"train/loss", "eval/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_second"} <= tags


def test_termination_message_carries_the_outcome(trained):
    tmp, report, termination, _ = trained
    text = termination.read_text()
    assert len(text.encode()) <= 4096
    outcome = Outcome.from_termination_message(text)
    assert outcome.ok and outcome.bestCheckpoint.step == report["best_step"]
    assert outcome.bestCheckpoint.uri == f"file://{tmp / 'export'}"
    assert outcome.resolved["effectiveBatchSize"] == 4
    assert outcome.plan.fits and outcome.plan.strategy == "ddp"  # no sanity check ran: the run's own plan


def test_resume_continues_from_the_latest_checkpoint(trained, tmp_path):
    """A pod killed mid-run finds its checkpoints on the work volume and continues (here: to a higher maxSteps)."""
    import shutil

    from sftjob_runtime.entrypoint import run

    tmp, *_, precision = trained
    work = tmp_path / "work"
    shutil.copytree(tmp / "work" / "checkpoints", work / "checkpoints")
    job = write_job(tmp_path, Path(yaml.safe_load((tmp / "job.yaml").read_text())["spec"]["model"]["source"]),
                    training={"maxSteps": 14})
    with forced_precision(precision) as dtype:
        assert run(str(job), output_dir=str(work)) == 0
    report = json.loads((work / "report.json").read_text())
    assert report["resolved"]["dtype"] == dtype
    assert report["resumed_from"].endswith("checkpoint-12")
    assert report["steps"] == 14


def run_cli(*args, env_extra=None, timeout=300) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "sftjob.cli", *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_malformed_data_fails_with_file_line_and_reason(tiny_model_dir, tmp_path):
    job = write_job(tmp_path, tiny_model_dir)
    with (tmp_path / "train.jsonl").open("a") as f:
        f.write('{"messages": [{"role": "user", "content": "no answer"}]}\n{not json}\n')
    term = tmp_path / "term"
    r = run_cli("run", str(job), "--output", str(tmp_path / "work"), env_extra={"SFTJOB_TERMINATION_LOG": str(term)})
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr
    assert "train.jsonl:49: no assistant turn" in r.stderr
    assert "train.jsonl:50: invalid JSON" in r.stderr
    outcome = Outcome.from_termination_message(term.read_text())
    assert not outcome.ok and outcome.reason == "DatasetSchema"


def test_unknown_preset_is_a_chat_template_error(tiny_model_dir, tmp_path):
    job = write_job(tmp_path, tiny_model_dir, extra={})
    spec = yaml.safe_load(job.read_text())
    spec["spec"]["model"]["chatTemplate"] = "vicuna"
    job.write_text(yaml.safe_dump(spec))
    r = run_cli("preview", str(job))
    assert r.returncode == 2
    assert "spec.model.chatTemplate: unknown preset 'vicuna'" in r.stderr
    assert "Traceback" not in r.stderr


def test_preview_json_shows_trained_spans(tiny_model_dir, tmp_path):
    job = write_job(tmp_path, tiny_model_dir, training={"maxSeqLength": 60})
    r = run_cli("preview", str(job), "-n", "3", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["index"] for row in rows] == [0, 1, 2]
    first = json.loads((tmp_path / "train.jsonl").read_text().splitlines()[0])
    answer = first["messages"][-1]["content"]
    for row in rows:
        assert {"index", "num_tokens", "num_trained_tokens", "truncated", "trained_text"} <= row.keys()
        assert row["num_tokens"] <= 60
    # maxSeqLength 60 cuts these ~90-token rows inside the answer: reported, and only the kept part is trained.
    assert rows[0]["truncated"] is True
    assert len(rows[0]["trained_text"]) == 1 and answer.startswith(rows[0]["trained_text"][0])
    full = run_cli("preview", str(write_job(tmp_path, tiny_model_dir)), "-n", "1", "--json")
    assert json.loads(full.stdout)[0]["trained_text"] == [answer + "<|im_end|>"]


def test_sanity_fails_when_every_row_is_masked(tiny_model_dir, tmp_path):
    # maxSeqLength 20 ends every row before its assistant turn starts: nothing to train on.
    job = write_job(tmp_path, tiny_model_dir, training={"maxSeqLength": 20}, sanity=True)
    r = run_cli("sanity", str(job), "--json")
    assert r.returncode == 10
    assert "Traceback" not in r.stderr
    # The root cause, not the symptom: every answer was truncated away.
    assert json.loads(r.stdout)["reason"] == "SanityTruncated"
    assert "lose answer tokens to spec.training.maxSeqLength=20" in r.stderr
    run = run_cli("run", str(job), "--output", str(tmp_path / "work"))
    assert run.returncode == 10 and "SanityTruncated" not in run.stdout and "maxSeqLength=20" in run.stderr


def test_packed_rows_do_not_attend_to_each_other(tiny_model_dir):
    """Padding-free packing (packing: true) must give every row the loss it has alone.

    The collator TRL uses for packing concatenates rows and restarts position_ids; our
    CPU loss path calls the model's own forward, which must then keep rows apart.
    """
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    rows = [{"input_ids": list(range(100, 130)), "labels": [-100] * 10 + list(range(110, 130))},
            {"input_ids": list(range(500, 520)), "labels": [-100] * 5 + list(range(505, 520))}]
    packed = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(rows)
    assert packed["input_ids"].shape[0] == 1 and "position_ids" in packed
    with torch.no_grad():
        logits_packed = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits[0]
        alone = [model(input_ids=torch.tensor([r["input_ids"]]), use_cache=False).logits[0] for r in rows]
    torch.testing.assert_close(logits_packed[:30], alone[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits_packed[30:], alone[1], atol=1e-4, rtol=1e-4)


def test_data_parallel_run_under_torchrun(tiny_model_dir, tmp_path):
    """What the pod runs for gpus > 1: torchrun, one process per device (here 2 CPU processes, gloo).

    The effective batch is kept by the real world size, and only rank 0 reports and exports.
    """
    import os

    job = write_job(tmp_path, tiny_model_dir, training={"maxSteps": 4, "perDeviceBatchSize": 2, "effectiveBatchSize": 8})
    term = tmp_path / "term"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SFTJOB_TERMINATION_LOG": str(term), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "sftjob.cli", "run", str(job), "--output", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "work" / "report.json").read_text())
    assert report["resolved"]["devices"] == 2 and report["resolved"]["gradientAccumulationSteps"] == 2
    assert report["steps"] == 4
    assert r.stdout.count("SFTJob tiny: done") == 1  # one summary, from rank 0
    assert Outcome.from_termination_message(term.read_text()).ok
    assert (tmp_path / "export" / "sftjob-manifest.json").is_file()


def test_lora_run_exports_the_best_adapter(tiny_model_dir, tmp_path):
    """With spec.training.lora the base weights stay frozen and the exported checkpoint is the PEFT adapter."""
    from peft import AutoPeftModelForCausalLM

    from sftjob_runtime.entrypoint import run

    job = write_job(tmp_path, tiny_model_dir, training={"maxSteps": 4, "lora": {"r": 4, "alpha": 8}})
    assert run(str(job), output_dir=str(tmp_path / "work")) == 0
    exported = tmp_path / "export"
    assert (exported / "adapter_config.json").is_file() and (exported / "adapter_model.safetensors").is_file()
    assert not (exported / "model.safetensors").exists()
    model = AutoPeftModelForCausalLM.from_pretrained(exported)
    assert model.peft_config["default"].r == 4


def test_a_finished_run_leaves_one_copy_of_the_model_and_no_checkpoints(tiny_model_dir, tmp_path):
    """Default: the export is the only copy, checkpoints are pruned, and the summary says so."""
    job = write_job(tmp_path, tiny_model_dir, training={"maxSteps": 4}, keep_checkpoints=False)
    r = run_cli("run", str(job), "--output", str(tmp_path / "work"))
    assert r.returncode == 0, r.stderr[-2000:]
    work = tmp_path / "work"
    assert sorted(p.name for p in work.iterdir()) == ["report.html", "report.json", "resolved.json", "tensorboard"]
    assert f"report: {work / 'report.html'}" in r.stdout
    assert (tmp_path / "export" / "model.safetensors").is_file()
    assert "checkpoints: pruned after the export (spec.output.keepCheckpoints: true keeps them)" in r.stdout
    assert json.loads((work / "report.json").read_text())["workDir"] == {"checkpoints": "pruned", "bestDir": str(tmp_path / "export")}


def test_a_small_run_prints_no_library_noise(tiny_model_dir, tmp_path):
    """What a newcomer reads first: our lines, the trainer's progress, nothing a user cannot act on."""
    job = write_job(tmp_path, tiny_model_dir, training={"maxSteps": 3}, sanity={"steps": 2, "samples": 8})
    r = run_cli("run", str(job), "--output", str(tmp_path / "work"), env_extra={"WANDB_MODE": "offline"})
    assert r.returncode == 0, r.stderr[-2000:]
    text = r.stdout + r.stderr
    for noise in ("[INFO] Running in WANDB offline mode", "Warning:", "warnings.warn", "deprecated", "Traceback"):
        assert noise not in text, f"{noise!r} in the output of a plain run:\n{text[-3000:]}"


def test_wandb_example_records_an_offline_run_with_the_recipe_metrics(tiny_model_dir, tmp_path):
    """examples/wandb-offline.yaml as written (tiny model, few steps): W&B run files with what the recipe watches."""
    from tests.support.wandb_files import history, run_files

    example = yaml.safe_load((ROOT / "examples" / "wandb-offline.yaml").read_text())
    assert "wandb" in example["spec"]["monitoring"]["reportTo"]
    example["spec"]["model"]["source"] = str(tiny_model_dir)
    example["spec"]["training"].update(maxSteps=6, evalSteps=2, loggingSteps=1, learningRate=3e-3)
    example["spec"]["sanityCheck"].update(steps=2, samples=8)
    for key in ("train", "validation"):  # the example's data, from where the example lives
        example["spec"]["dataset"][key] = str(ROOT / "examples" / example["spec"]["dataset"][key])
    example["spec"]["output"]["uri"] = str(tmp_path / "export")
    job = tmp_path / "wandb.yaml"
    job.write_text(yaml.safe_dump(example))
    r = run_cli("run", str(job), "--output", str(tmp_path / "work"), env_extra={"WANDB_MODE": "offline"})
    assert r.returncode == 0, r.stderr[-3000:]
    [run_file] = run_files(tmp_path / "work")  # the training run only: the sanity check reports nowhere
    rows = history(run_file)
    seen = {k for row in rows for k in row}
    assert {"train/loss", "train/grad_norm", "train/learning_rate", "train/tokens_per_second", "eval/loss"} <= seen
    losses = [row["train/loss"] for row in rows if "train/loss" in row]
    evals = [row["eval/loss"] for row in rows if "eval/loss" in row]
    assert len(losses) >= 6 and len(evals) >= 3 and evals[-1] < evals[0]
    assert all(row["train/tokens_per_second"] > 0 for row in rows if "train/tokens_per_second" in row)
    assert "URL not available" not in r.stderr


def test_preview_shows_only_the_completion_of_prompt_completion_rows(tiny_model_dir, tmp_path):
    job = write_job(tmp_path, tiny_model_dir, train_rows=4)
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    # TRL's conversational prompt-completion form, with an earlier answer inside the prompt.
    pc = [{"prompt": [*r["messages"][:-1], {"role": "assistant", "content": "an earlier answer"},
                      {"role": "user", "content": "Again, please."}], "completion": r["messages"][-1:]} for r in rows]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pc))
    r = run_cli("preview", str(job), "-n", "2", "--json")
    assert r.returncode == 0, r.stderr
    for shown, row in zip(json.loads(r.stdout), rows):
        assert shown["trained_text"] == [row["messages"][-1]["content"] + "<|im_end|>"]
        assert "an earlier answer" in shown["text"]  # context, rendered but not trained


def _run_until_sigterm(job: Path, work: Path, term: Path, at_step: int) -> tuple[int, str]:
    """Start `sftjob run`, send SIGTERM once it logged `at_step`; returns (exit code, stderr)."""
    import os
    import signal
    import threading
    import time

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SFTJOB_EVENTS": "all", "SFTJOB_TERMINATION_LOG": str(term)}
    proc = subprocess.Popen([sys.executable, "-m", "sftjob.cli", "run", str(job), "--output", str(work)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(proc.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    while not any(f'"event": "train_log", "step": {at_step},' in line for line in list(seen)):
        assert proc.poll() is None and time.monotonic() < deadline, "".join(seen)[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    reader.join(timeout=5)
    return code, "".join(seen)


@pytest.mark.parametrize("where", ["work-volume", "s3-mirror"])
def test_sigterm_between_saves_writes_a_checkpoint_and_the_next_run_resumes_at_that_step(
        where, tiny_model_dir, tmp_path, request):
    """Preemption loses nothing: transformers' just-in-time checkpoint at the step SIGTERM arrived, then an exact resume.

    On a work volume the next pod finds the checkpoint there; without one (`s3-mirror`) the
    checkpoint is mirrored to S3 before the pod exits and the next pod, on an empty volume, restores it.
    """
    import shutil

    training = {"maxSteps": 40, "evalSteps": 20, "saveSteps": 20, "learningRate": 1e-3}
    job = write_job(tmp_path, tiny_model_dir, training=training)
    if where == "s3-mirror":
        s3_server = request.getfixturevalue("s3_server")
        request.getfixturevalue("s3_env")
        request.getfixturevalue("monkeypatch").setenv("SFTJOB_CACHE_DIR", str(tmp_path / "cache"))
        bucket = s3_server.bucket("sft")
        spec = yaml.safe_load(job.read_text())
        spec["spec"]["output"] = {"uri": f"s3://{bucket}/out/jit", "endpoint": s3_server.endpoint, "keepCheckpoints": True}
        job.write_text(yaml.safe_dump(spec))
    work, term = tmp_path / "work", tmp_path / "term"
    code, stderr = _run_until_sigterm(job, work, term, at_step=6)
    assert code == 13, stderr[-3000:]  # ExitCode.INTERRUPTED
    assert "Traceback" not in stderr
    outcome = Outcome.from_termination_message(term.read_text())
    assert (outcome.ok, outcome.reason) == (False, "Preempted")
    saved = sorted(int(p.name.split("-")[1]) for p in (work / "checkpoints").glob("checkpoint-*"))
    assert len(saved) == 1 and 6 <= saved[0] < 20, saved  # the just-in-time checkpoint, between two regular saves
    stopped_at = saved[0]
    assert f"stopped by SIGTERM at step {stopped_at} of 40" in outcome.message
    # The preempted run's report stays local: the next pod carries on, the job has not failed.
    assert json.loads((work / "report.json").read_text())["outcome"]["reason"] == "Preempted"
    if where == "s3-mirror":
        keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket, Prefix="out/jit.checkpoints/")["Contents"]}
        assert f"out/jit.checkpoints/checkpoint-{stopped_at}/sftjob-manifest.json" in keys
        assert "Contents" not in s3_server.client().list_objects_v2(Bucket=bucket, Prefix="out/jit/")
        shutil.rmtree(work)  # the next pod starts on an empty volume

    assert run_cli("run", str(job), "--output", str(work), timeout=600).returncode == 0
    report = json.loads((work / "report.json").read_text())
    assert report["resumed_from"].endswith(f"checkpoint-{stopped_at}") and report["steps"] == 40
    history = json.loads((work / "checkpoints" / "checkpoint-40" / "trainer_state.json").read_text())["log_history"]
    steps = [e["step"] for e in history if "loss" in e]
    assert steps[:stopped_at] == list(range(1, stopped_at + 1)) and steps[-1] == 40  # the curve continues, no gap
    # So does the run report's: the steps before the restart are in it.
    assert [e["step"] for e in report["log_history"] if "loss" in e] == steps


@pytest.mark.slow
def test_an_explicit_fsdp_is_refused_before_loading_never_run_as_ddp(tiny_model_dir, tmp_path):
    """Until FSDP training lands, strategy: fsdp fails in one line naming the field; nothing is trained or exported."""
    job = write_job(tmp_path, tiny_model_dir, training={"effectiveBatchSize": 8},
                    extra={"resources": {"gpus": 0, "nodes": 2, "strategy": "fsdp"}})
    r = subprocess.run([sys.executable, "-m", "sftjob.cli", "run", str(job), "--output", str(tmp_path / "work")],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if "spec.resources.strategy" in line]
    assert lines and "not available in this release" in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "work" / "checkpoints").exists()
    assert not (tmp_path / "export" / "model.safetensors").exists()
    # The sanity init container refuses it the same way, before the check loads anything onto a GPU.
    r = subprocess.run([sys.executable, "-m", "sftjob.cli", "sanity", str(job), "--output", str(tmp_path / "sanity")],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert any("spec.resources.strategy: fsdp is not available" in line for line in r.stderr.splitlines()), r.stderr[-2000:]
