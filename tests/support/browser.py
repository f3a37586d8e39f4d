"""A real headless Chromium (Debian's `chromium`, driven by Playwright) that opens a report the way a person would.

    def test_report(browser):
        page = open_page(browser, path)        # PageFacts: what a reader would see, and what went wrong

Skipped with a reason where chromium or Playwright is absent
(scripts/install-chromium.sh installs chromium as root on Debian).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PHONE = {"width": 412, "height": 915}


@dataclass
class PageFacts:
    """What one page load showed and did."""

    sections: list[str]
    headings: list[str]
    text: str
    loss_points: int
    scroll_width: int
    viewport_width: int
    errors: list[str] = field(default_factory=list)  # console errors and uncaught exceptions
    requests: list[str] = field(default_factory=list)  # every URL the page asked for, itself included
    screenshot: Path | None = None


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium for the session."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("Debian's chromium is not installed (scripts/install-chromium.sh installs it as root)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency: bash scripts/setup.sh")
    with sync_api.sync_playwright() as p:
        # --no-sandbox: tests run as root in CI, where Chromium's sandbox refuses to start.
        chrome = p.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        yield chrome
        chrome.close()


def open_page(browser, path: Path, *, screenshot: Path | None = None, viewport: dict | None = None) -> PageFacts:
    """Load a local HTML file at phone size and report what happened."""
    viewport = viewport or PHONE
    page = browser.new_page(viewport=viewport)
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    page.on("request", lambda r: requests.append(r.url))
    try:
        page.goto(Path(path).resolve().as_uri(), wait_until="load")
        facts = page.evaluate("""() => ({
            sections: [...document.querySelectorAll('body > header[id], body > section[id]')].map(s => s.id),
            headings: [...document.querySelectorAll('h1, h2')].map(h => h.textContent.trim()),
            text: document.body.innerText,
            loss_points: document.querySelectorAll('#chart-loss .serie-0 circle.dot').length,
            scroll_width: document.documentElement.scrollWidth,
        })""")
        if screenshot is not None:
            page.screenshot(path=str(screenshot), full_page=True)
    finally:
        page.close()
    return PageFacts(**facts, viewport_width=viewport["width"], errors=errors, requests=requests, screenshot=screenshot)
