#!/usr/bin/env bash
# Installs headless Chromium (Debian's `chromium` package), which the HTML leaderboard's
# test loads the page in. Idempotent: does nothing when a Chromium is already on PATH.
# Prints the browser's path on success.
set -euo pipefail
for b in chromium chromium-browser; do
    if command -v "$b" >/dev/null 2>&1; then
        command -v "$b"
        exit 0
    fi
done
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ci/setup-browser.sh: no chromium on PATH and no apt-get to install it;" \
         "install Chromium (Debian/Ubuntu: apt-get install chromium) and run this again" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
        echo "ci/setup-browser.sh: installing chromium needs root (or sudo)" >&2
        exit 1
    fi
fi
# Quiet unless it fails: the output goes to stderr only then.
log=$(mktemp)
if ! { $SUDO apt-get update && \
       DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends chromium; } \
       >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "ci/setup-browser.sh: apt-get install chromium failed (output above)" >&2
    exit 1
fi
rm -f "$log"
command -v chromium
