"""Fixtures every test module uses by name, from tests/support.

- `demo_model_dir`, `tiny_model_dir`: the real demo model (cached) and a tiny random Llama with its tokenizer;
- `cpu_precision`: runs a test once per CPU precision path (fp32, bf16), forced whatever this CPU has;
- `s3_server`, `s3_env`: moto's S3 server over HTTP on 127.0.0.1, and credentials for it;
- `helm`, `helm_bin`: the real helm binary in an isolated home (skipped with a hint when absent);
- `browser`: a real headless Chromium driven by Playwright (skipped with a reason when absent).

Tests that train or load the demo model carry the `slow` marker (`-m "not slow"` for a quick pass).
"""

from tests.support.browser import browser  # noqa: F401
from tests.support.helm import helm, helm_bin  # noqa: F401
from tests.support.models import cpu_precision, demo_model_dir, tiny_model_dir  # noqa: F401
from tests.support.s3 import s3_env, s3_server  # noqa: F401
