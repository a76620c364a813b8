#!/usr/bin/env bash
# The browser test tier: `stepdpo view` pages checked in a real headless Chromium (Debian's `chromium` package).
#
#   scripts/test-browser.sh            # install chromium if missing (apt), then run `pytest -m browser`
#   scripts/test-browser.sh -k pairs   # extra args go to pytest
#   CHROMIUM=/path/to/chrome scripts/test-browser.sh   # use another browser binary
#
# Installing takes ~15 s on a Debian machine with apt mirrors reachable; without apt (or as non-root without
# sudo) the tier is skipped with a message, never failed: the default suite does not depend on it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"

find_browser() {
    for name in "${CHROMIUM:-}" chromium chromium-browser google-chrome; do
        if [ -n "$name" ] && command -v "$name" >/dev/null 2>&1; then command -v "$name"; return 0; fi
    done
    return 1
}

if ! BROWSER="$(find_browser)"; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
            echo "test-browser: skipped: chromium is not installed and apt needs root (install it: apt-get install chromium)" >&2
            exit 0
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "test-browser: skipped: chromium is not installed and there is no apt-get here" >&2
        exit 0
    fi
    echo "test-browser: installing Debian's chromium (apt-get)" >&2
    start=$(date +%s)
    if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
            --no-install-recommends chromium >/dev/null; }; then
        echo "test-browser: skipped: apt could not install chromium (no network to the Debian mirrors?)" >&2
        exit 0
    fi
    echo "test-browser: chromium installed in $(( $(date +%s) - start )) s" >&2
    BROWSER="$(find_browser)"
fi
echo "test-browser: $("$BROWSER" --version 2>/dev/null | tail -1)" >&2

cd "$ROOT"
# `-o addopts=` drops the default "not browser" filter.
CHROMIUM="$BROWSER" "$PY" -m pytest -m browser tests/test_view_browser.py -o addopts="" -q "$@"
