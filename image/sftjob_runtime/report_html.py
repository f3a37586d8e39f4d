"""report.html: one self-contained page per run, from its report.json.

Charts are pygal's (pure Python, SVG out, ~1 MB installed: matplotlib would
add ~50 MB of dependencies to the training image for the same five line
charts); the page is a Jinja2 template with autoescaping, because training
examples and generations are arbitrary text. Nothing on the page loads from
the network, and it runs no script: pygal's inline config script (only its
optional tooltips read it) is left out.
"""

from __future__ import annotations

import datetime
import math
import re
from functools import cache

from sftjob_runtime.warning_signs import GRAD_NORM_HIGH, GRAD_NORM_LOW

SANITY_CHART = "sanity-loss"  # drawn in the sanity section, not with the training curves
_SCRIPT = re.compile(r"<script\b.*?</script>", re.S)
# Resolved fields that are facts of the run rather than hyperparameters.
_NOT_HYPERPARAMETERS = {"origin", "parameters", "sizeClass", "devices", "dtype", "attention"}
# Resolved values no spec field sets directly, and what they follow from.
_DERIVED = {
    "gradientAccumulationSteps": "derived: effectiveBatchSize / (perDeviceBatchSize x devices)",
    "totalSteps": "derived: training rows, effective batch and epochs (or maxSteps)",
}


@cache
def _environment():
    from jinja2 import Environment, PackageLoader, select_autoescape

    # Missing keys render empty (a failed run's report has no best checkpoint); `num` shows them as n/a.
    env = Environment(loader=PackageLoader("sftjob_runtime", "templates"), autoescape=select_autoescape(["jinja"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    env.filters["mem"] = _mem
    return env


def _num(value, digits: int = 4) -> str:
    from jinja2 import Undefined

    if value is None or isinstance(value, Undefined):
        return "n/a"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}"
    return str(value)


def _mem(n) -> str:
    if not isinstance(n, (int, float)):
        return "n/a"
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _style():
    from pygal.style import Style

    # Sizes are in the chart's own units (a 560-wide viewBox scaled to the page): readable on a phone too.
    return Style(background="white", plot_background="white", font_family="system-ui, sans-serif",
                 colors=("#1f5fa8", "#e07b00", "#2a9d3a", "#c62828", "#7b4bb7"),
                 label_font_size=14, major_label_font_size=14, legend_font_size=15, title_font_size=17)


def _chart(title: str, y_title: str, series: list[tuple[str, list[tuple[float, float]], dict]], **options) -> str:
    """One XY line chart as inline SVG (no script, scales to the page width)."""
    import pygal

    settings = dict(title=title, x_title="step", y_title=y_title, style=_style(), js=[], disable_xml_declaration=True,
                    explicit_size=False, width=560, height=330, dots_size=2, legend_at_bottom=True, truncate_legend=-1,
                    show_x_guides=False, print_values=False, x_labels_major_count=6, show_minor_x_labels=False,
                    y_labels_major_count=6, show_minor_y_labels=False)
    chart = pygal.XY(**{**settings, **options})
    for name, points, look in series:
        chart.add(name, points, **look)
    return _SCRIPT.sub("", chart.render(is_unicode=True))


def _finite(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _points(history: list[dict], key: str) -> list[tuple[float, float]]:
    """(step, value) of every record holding a finite `key` (a NaN loss cannot be drawn; its warning says so)."""
    return [(e["step"], v) for e in history if (v := _finite(e.get(key))) is not None]


def _train_logs(history: list[dict]) -> list[dict]:
    # Train records carry "loss"; eval records "eval_loss"; the trainer's closing record "train_loss".
    return [e for e in history if "loss" in e and "step" in e]


def charts(data: dict) -> dict[str, str]:
    """SVG per chart id: loss, learning rate, grad norm, tokens/s and, where logged, GPU memory."""
    history = data.get("log_history") or []
    train = _train_logs(history)
    out: dict[str, str] = {}
    loss = _points(train, "loss")
    evals = _points(history, "eval_loss")
    before = _finite(data.get("eval_loss_before"))
    if before is not None and not any(step == 0 for step, _ in evals):
        evals.insert(0, (0, before))  # measured before the first step (not in the trainer's log)
    if loss or evals:
        series = [("train loss", loss, {}), ("eval loss", evals, {"dots_size": 3})]
        best = _finite(data.get("best_eval_loss"))
        if data.get("best_step") is not None and best is not None:
            series.append((f"best checkpoint (step {data['best_step']})", [(data["best_step"], best)],
                           {"stroke": False, "dots_size": 7}))
        marks = _warning_marks(data.get("warning_events") or [], loss)
        if marks:
            series.append(("warning", marks, {"stroke": False, "dots_size": 5}))
        out["loss"] = _chart("Loss", "loss", series)
    lr = _points(train, "learning_rate")
    if lr:
        out["learning-rate"] = _chart("Learning rate", "learning rate", [("learning rate", lr, {"show_dots": False})])
    grad = [(s, math.log10(g)) for s, g in _points(train, "grad_norm") if g > 0]
    if grad:
        # pygal's logarithmic option would make the step axis logarithmic too: plot log10 on a linear axis instead.
        ends = (grad[0][0], grad[-1][0])
        high, low = math.log10(GRAD_NORM_HIGH), math.log10(GRAD_NORM_LOW)
        decades = range(math.floor(min(low, *(g for _, g in grad))), math.ceil(max(high, *(g for _, g in grad))) + 1)
        out["grad-norm"] = _chart("Gradient norm (log scale)", "grad norm", [
            ("grad norm", grad, {}),
            (f"warn above {GRAD_NORM_HIGH:g}", [(ends[0], high), (ends[1], high)], {"show_dots": False}),
            (f"warn below {GRAD_NORM_LOW:g}", [(ends[0], low), (ends[1], low)], {"show_dots": False}),
        ], y_labels=[{"label": f"{10.0 ** k:g}", "value": k} for k in decades], show_minor_y_labels=True)
    tps = _points(train, "tokens_per_second")
    if tps:
        out["throughput"] = _chart("Throughput", "tokens/s", [("tokens/s", tps, {})])
    gpu = _points(train, "gpu_memory_gb")
    if gpu:
        out["gpu-memory"] = _chart("Peak GPU memory", "GiB", [("max allocated", gpu, {})])
    sanity = data.get("sanity") or {}
    steps = _points(_train_logs(sanity.get("log_history") or []), "loss")
    if steps:
        series = [("each step", steps, {})]
        first, last = _finite(sanity.get("initialLoss")), _finite(sanity.get("finalLoss"))
        if first is not None and last is not None:
            series.append(("sampled rows, before / after", [(0, first), (steps[-1][0], last)], {"dots_size": 4}))
        out[SANITY_CHART] = _chart("Sanity check steps", "loss", series)
    return out


def _warning_marks(warnings: list[dict], loss: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Each training warning placed on the loss curve at its step (the nearest logged loss)."""
    if not loss:
        return []
    marks = []
    for w in warnings:
        step = w.get("step")
        if isinstance(step, int) and w.get("stage") in (None, "training"):
            marks.append((step, min(loss, key=lambda p: abs(p[0] - step))[1]))
    return marks


def _origin(value: str | None, size_class: str | None, in_spec: bool | None) -> str:
    """Where a resolved value came from, in words: the spec, the size table's default, or derived from something."""
    if value is None:
        # Fields the size table does not set: the spec's value, or the field's own default when left out.
        return "spec" if in_spec in (True, None) else "default (the field's own, see docs/sftjob-reference.md)"
    if value.startswith("default:"):
        rest = value.removeprefix("default:")
        if size_class and rest.startswith(size_class):
            return f"size default ({rest})"
        return f"derived ({rest})"
    return value


def _settings(data: dict) -> list[dict]:
    resolved = data.get("resolved") or {}
    origin = resolved.get("origin") or {}
    given = data.get("specFields")  # spec.training fields the manifest set (absent in older reports)
    return [{"name": k, "value": v, "origin": _DERIVED.get(k) or _origin(origin.get(k), resolved.get("sizeClass"),
                                                                        None if given is None else k in given)}
            for k, v in resolved.items() if k not in _NOT_HYPERPARAMETERS]


def _outcome(data: dict) -> dict:
    if isinstance(data.get("outcome"), dict):
        return data["outcome"]
    if data.get("best_step") is not None:  # a report.json from before outcomes were recorded: it finished
        return {"ok": True, "reason": "Completed", "message": f"best checkpoint at step {data['best_step']}"}
    return {"ok": False, "reason": "Unknown", "message": "this report.json records no outcome"}


def render_report(data: dict) -> str:
    """The whole page for one report.json."""
    resolved = data.get("resolved") or {}
    prompt = next((m["content"] for m in reversed(data.get("sample_prompt") or []) if m.get("role") == "user"), None)
    started = data.get("started")
    drawn = charts(data)
    return _environment().get_template("report.html.jinja").render(
        r=data, resolved=resolved, outcome=_outcome(data), settings=_settings(data),
        charts={k: v for k, v in drawn.items() if k != SANITY_CHART}, sanity_chart=drawn.get(SANITY_CHART),
        prompt=prompt, hardware=data.get("hardware") or {}, sanity=data.get("sanity"),
        examples=data.get("examples") or [], warnings=data.get("warning_events") or [], plan=data.get("plan"),
        started=datetime.datetime.fromtimestamp(started, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        if isinstance(started, (int, float)) else None,
        logged_steps=len(_train_logs(data.get("log_history") or [])),
    )
