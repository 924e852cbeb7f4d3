#!/usr/bin/env bash
# Download the wheels that `csmlab bench gpu` needs on the lent GPU machine into .whl/ (git-ignored).
#
# That machine (see the device tool's KINDS.md) has Python 3.12, torch 2.11 + CUDA, transformers 5.x,
# huggingface-hub 1.x and tokenizers 0.23.2, and no network. csmlab needs transformers 4.57.x, whose
# import-time check wants huggingface-hub < 1.0 and tokenizers <= 0.23.0, moshi 0.2.13 (installed
# without its torch<2.10 pin, as scripts/install.sh does), and the audio packages csmlab imports at
# start (soxr, soundfile + cffi, librosa). Everything else it imports is already there; the list
# was worked out from the modules a dry run imports (`sys.modules` after `csmlab bench gpu`).
# The wheels travel with the working tree, whose limit is 64 MiB in all: this prints their total.
#
#   bash scripts/gpu_wheels.sh            # then pass scripts/gpu_run.sh's command to the device tool
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
    transformers==4.57.6   # the machine's 5.x lacks the 4.57 API csmlab pins (CsmForConditionalGeneration as used here)
    huggingface-hub==0.36.2  # transformers 4.57 refuses hub >= 1.0; moshi forbids it too
    tokenizers==0.22.2     # transformers 4.57 refuses the machine's 0.23.2 (<= 0.23.0)
    moshi==0.2.13          # Kyutai's Moshi and Mimi
    soxr==1.1.0            # csmlab.audio's resampler
    soundfile==0.14.0      # csmlab.data reads the real call
    cffi==2.1.1            # soundfile's binding
    librosa==0.11.0        # imported by csmlab's noise vocoder
)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)

mkdir -p .whl
rm -f .whl/*.whl
args=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d .whl)
for p in "${PLATFORMS[@]}"; do args+=(--platform "$p"); done
PIP_CONSTRAINT= python3 -m pip download -q "${args[@]}" "${WHEELS[@]}" 2> >(grep -v "is ignored: it is neither" >&2)

ls -l .whl/*.whl | awk '{printf "%9.2f MiB  %s\n", $5 / 1048576, $NF}'
wheels=$(du -cb .whl/*.whl | tail -1 | cut -f1)
call=$(du -cbL data/real/sample.* 2>/dev/null | tail -1 | cut -f1)
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
awk -v w="$wheels" -v c="${call:-0}" -v t="$tree" 'BEGIN { printf "wheels %.1f MiB + data/real %.1f MiB + working tree %.1f MiB = %.1f of the 64 MiB that may travel\n", w / 1048576, c / 1048576, t / 1048576, (w + c + t) / 1048576 }'
