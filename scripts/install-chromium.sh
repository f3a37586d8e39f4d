#!/usr/bin/env bash
# Headless Chromium for the tests that open report.html in a real browser (tests/support/browser.py).
# Debian's `chromium` package, installed with apt when this runs as root; anywhere else those tests
# are skipped with a reason. Exit 0 when chromium is on PATH afterwards.
set -uo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-chromium.sh: not root or no apt-get; install Debian's chromium to run the browser tests" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
install() { apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; }
# Package lists may be missing or stale on a fresh machine: refresh them once if the first try fails.
install || { apt-get update -q >/dev/null 2>&1 && install; }
command -v chromium >/dev/null 2>&1
