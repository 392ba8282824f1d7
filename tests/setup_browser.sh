#!/bin/sh
# Installs Debian's headless-capable Chromium for the HTML tests of `vidcc explain`/`vidcc diff`
# (tests/cli/test_explain_html.py). Idempotent: does nothing when a chromium is already on PATH.
# Usage (CI / .ci/run, as root):  sh tests/setup_browser.sh
set -eu
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if [ "$(id -u)" -ne 0 ]; then
    echo "setup_browser.sh: run as root (apt-get install -y chromium)" >&2
    exit 1
fi
apt-get update -qq >/dev/null 2>&1 || apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
command -v chromium
