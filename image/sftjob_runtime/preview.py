"""`sftjob preview`: the first N training examples exactly as the trainer sees them.

The recipe's "check that tokenized examples decode correctly", made a
command: the rendered text, token counts, truncation, and each maximal
run of trained-on tokens decoded from the labels. It uses the same code
path as training (prepare.tokenize_split), so what is shown is what is
trained on. It loads the tokenizer only, never the weights.
"""

from __future__ import annotations

import json

from sftjob.runconfig import load_run_config
from sftjob_runtime.prepare import load_splits, load_tokenizer, localize_model, tokenize_split


def preview_rows(file: str, n: int = 3) -> list[dict]:
    """One dict per example: index, source, num_tokens, num_trained_tokens, truncated, text, trained_text."""
    from pathlib import Path

    from sftjob_runtime.masking import trained_spans

    cfg = load_run_config(file)
    base = Path(file).resolve().parent
    tokenizer, masker = load_tokenizer(cfg, localize_model(cfg, base))
    train, _ = load_splits(cfg, base)
    split = tokenize_split(masker, train[: max(n, 0)], cfg.training.maxSeqLength)
    out = []
    for i, (ex, row) in enumerate(zip(split.examples, split.rows)):
        out.append({
            "index": i,
            "source": ex.source,
            "num_tokens": row.num_tokens,
            "num_trained_tokens": row.num_trained_tokens,
            "truncated": row.truncated,
            "text": tokenizer.decode(row.input_ids),
            "trained_text": trained_spans(tokenizer, row.input_ids, row.labels),
        })
    return out


def preview(file: str, n: int = 3, as_json: bool = False) -> int:
    """Print the preview; exit code 0."""
    rows = preview_rows(file, n)
    if as_json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    for r in rows:
        flag = "  TRUNCATED" if r["truncated"] else ""
        print(f"── example {r['index']} ({r['source']}): {r['num_tokens']} tokens, {r['num_trained_tokens']} trained{flag}")
        print(r["text"])
        print("── trained on:")
        for span in r["trained_text"]:
            print(f"   ▶ {span!r}")
        print()
    return 0
