"""The recipe's warning signs become structured warnings; the progress endpoint serves live numbers."""

from __future__ import annotations

import json
import urllib.request
from types import SimpleNamespace

import pytest

from sftjob.report import Progress
from sftjob_runtime.callbacks import MonitorCallback, TokenCounter
from sftjob_runtime.progress_server import ProgressServer, ProgressState


@pytest.fixture(autouse=True)
def _real_clock_afterwards():
    import time

    import sftjob_runtime.callbacks as callbacks

    yield
    callbacks.time = time


class Args(SimpleNamespace):
    def get_warmup_steps(self, total):
        return int(total * self.warmup)


def feed(logs_by_step, warmup=0.0, max_steps=100, seconds_per_log=None):
    """Play logs into the callback on a fake clock: 1 s and 1000 tokens per log unless told otherwise."""
    import sftjob_runtime.callbacks as callbacks

    clock = [0.0]
    callbacks.time = SimpleNamespace(monotonic=lambda: clock[0])
    seconds = seconds_per_log or {}
    state = ProgressState()
    cb = MonitorCallback(state, TokenCounter())
    trainer_state = SimpleNamespace(max_steps=max_steps, global_step=0, epoch=0.0, best_metric=None, best_model_checkpoint=None,
                                    log_history=[])
    control = SimpleNamespace(should_training_stop=False)
    args = Args(warmup=warmup)
    cb.on_train_begin(args, trainer_state, control)
    for step, logs in logs_by_step:
        trainer_state.global_step = step
        clock[0] += seconds.get(step, 1.0)
        cb.tokens.tokens += 1000
        trainer_state.log_history.append({**logs, "step": step})  # as Trainer.log does, before the callbacks
        cb.on_log(args, trainer_state, control, logs=logs)
        if "eval_loss" in logs:
            best = trainer_state.best_metric
            trainer_state.best_metric = logs["eval_loss"] if best is None else min(best, logs["eval_loss"])
    cb.trainer_state = trainer_state
    return state.snapshot(), control, cb


def kinds(progress: Progress) -> list[str]:
    return [w.split(":")[0] for w in progress.warnings]


def test_healthy_run_has_no_warnings(capsys):
    p, control, _ = feed([(s, {"loss": 2.0 - 0.1 * s, "grad_norm": 1.0, "learning_rate": 1e-4, "epoch": s / 10}) for s in range(1, 10)])
    assert p.warnings == [] and not control.should_training_stop
    assert p.step == 9 and p.loss == pytest.approx(1.1) and p.totalSteps == 100
    events = [json.loads(line.split(" ", 1)[1]) for line in capsys.readouterr().err.splitlines() if line.startswith("sftjob-event ")]
    assert events[-1]["event"] == "train_log" and events[-1]["step"] == 9


def test_nan_loss_stops_training():
    p, control, cb = feed([(1, {"loss": 2.0, "grad_norm": 1.0}), (2, {"loss": float("nan"), "grad_norm": 1.0})])
    assert control.should_training_stop and cb.diverged.startswith("loss became nan at step 2")
    assert kinds(p) == ["non_finite_loss"]


def test_spike_and_grad_norm_signs():
    logs = [(s, {"loss": 1.0, "grad_norm": 1.0}) for s in range(1, 6)]
    logs += [(6, {"loss": 5.0, "grad_norm": 50.0}), (7, {"loss": 1.0, "grad_norm": 1e-8})]
    p, _, _ = feed(logs)
    assert kinds(p) == ["loss_spike", "grad_norm_high", "grad_norm_low"]


def test_throughput_drop_is_a_warning():
    logs = [(s, {"loss": 1.0, "grad_norm": 1.0}) for s in range(1, 7)]
    p, _, _ = feed(logs, seconds_per_log={6: 4.0})
    assert kinds(p) == ["throughput_drop"] and p.tokensPerSecond == 250.0


def test_high_grad_norm_during_warmup_is_not_a_warning():
    p, _, _ = feed([(1, {"loss": 2.0, "grad_norm": 30.0}), (2, {"loss": 1.9, "grad_norm": 12.0})], warmup=0.1)
    assert p.warnings == []


def test_overfitting_signals():
    logs = [(s, {"loss": 0.2, "grad_norm": 1.0}) for s in range(1, 4)]
    logs += [(4, {"eval_loss": 1.0}), (5, {"eval_loss": 1.1}), (6, {"eval_loss": 1.3})]
    p, _, _ = feed(logs)
    assert "eval_loss_rising" in kinds(p) and "train_eval_gap" in kinds(p)
    assert p.evalLoss == 1.3 and p.bestEvalLoss == 1.0


def test_progress_endpoint_serves_the_snapshot():
    state = ProgressState()
    server = ProgressServer(state, port=0, host="127.0.0.1").start()
    try:
        state.update(stage="training", step=7, totalSteps=20, loss=0.5, tokensPerSecond=123.4)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/progress", timeout=5) as r:
            body = json.loads(r.read())
        assert body == {"stage": "training", "step": 7, "totalSteps": 20, "loss": 0.5, "tokensPerSecond": 123.4, "warnings": []}
        assert Progress.model_validate(body).step == 7
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/other", timeout=5)
    finally:
        server.stop()


def test_warnings_and_throughput_are_kept_for_the_run_report_at_their_step():
    logs = [(s, {"loss": 2.0, "grad_norm": 1.0, "learning_rate": 1e-4}) for s in range(1, 6)] + [(6, {"loss": 9.0})]
    _, _, cb = feed(logs)
    logged = cb.progress.logged_warnings()
    assert [(w["step"], w["stage"], w["kind"]) for w in logged] == [(6, "training", "loss_spike")]
    # The trainer's own history (saved in checkpoints, read by the report) carries tokens/s too.
    assert [e.get("tokens_per_second") for e in cb.trainer_state.log_history] == [1000.0] * 6
    assert [e["step"] for e in cb.history] == [1, 2, 3, 4, 5, 6]
