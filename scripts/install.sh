#!/usr/bin/env bash
# One-shot set-up for csmlab, called by both `make lab` and `make test`.
# Creates .venv, installs the pinned stack in the only order that works
# (torch first, moshi without its torch<2.10 pin, then everything else),
# installs the system tools the course uses, and prepares data/.
# Idempotent: a second run with nothing changed takes a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.csmlab-installed

system_packages() {
    local need=()
    for tool in espeak-ng sox ffmpeg chromium; do
        command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
    done
    [ ${#need[@]} -eq 0 ] && return 0
    if command -v apt-get >/dev/null 2>&1; then
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        echo "==> apt-get install ${need[*]}"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
    elif command -v brew >/dev/null 2>&1; then
        echo "==> brew install ${need[*]/chromium/}"
        brew install ${need[*]/chromium/} || true
    else
        echo "!! please install: ${need[*]} (the course runs without them, but data/ and the browser demo need them)"
    fi
}

hide_moshi_pins() {
    grep -v -E "^(ERROR: pip's dependency resolver does not currently take into account|moshi [^ ]+ requires )" || true
}

python_packages() {
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    local pip="$VENV/bin/python -m pip"
    local hash
    hash=$(cat pyproject.toml scripts/install.sh | "$VENV/bin/python" -c "import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])")
    if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$hash" ]; then
        return 0
    fi
    echo "==> installing Python packages into $VENV"
    local first nodeps
    first=$("$VENV/bin/python" scripts/pins.py first)
    nodeps=$("$VENV/bin/python" scripts/pins.py no-deps)
    $pip install -q --upgrade pip
    $pip install -q $first
    $pip install -q --no-deps $nodeps
    # moshi declares torch<2.10, aiohttp<3.12 and bitsandbytes; csmlab runs it on newer ones on
    # purpose, and pip would list each as "incompatible" in red after the next step. Those lines are
    # expected, so they are kept out; any other conflict still shows, and `csmlab doctor` checks
    # the installed versions against the ones csmlab is tested with.
    echo "==> installing csmlab (moshi's own pins are overridden on purpose; 'csmlab doctor' checks the stack)"
    $pip install -q -e . 2> >(hide_moshi_pins >&2)
    echo "$hash" > "$STAMP"
}

system_packages
python_packages
"$VENV/bin/python" data/fetch.py
