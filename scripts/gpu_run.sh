#!/usr/bin/env bash
# Issue 26's GPU run, exactly as the device tool's `run` executes it (repo root, $OUT set, no network).
#
# Before it, in the checkout that the device tool sends (the calling session's own: merge this first):
# `bash scripts/gpu_wheels.sh` (wheels into .whl/) and `python data/fetch.py` (the real call in
# data/real, which git ignores; named file by file below, since in a helper's worktree data/real is
# a link, and a link travels only as a link). Then call the device tool with
#     command: bash scripts/gpu_run.sh
#     carry:   [".whl", "data/real/sample.wav", "data/real/sample.rttm", "data/real/sample.stm"]
#     timeout_s: 390
# It installs the wheels into /tmp/site, runs `csmlab bench gpu --device cuda --size real` (random
# weights at real size built on the GPU), and leaves in $OUT the five gpu_*.json, log.txt and
# nvidia_smi.csv (7 files; the tool brings back 8 at most). The bench stops itself after BENCH_S
# seconds, so that what it wrote comes back even then; each figure set writes its file when done.
# A rerun of the failed sets only: GPU_BENCH_ARGS="--only csm pipeline" bash scripts/gpu_run.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_out}
BENCH_S=${BENCH_S:-330}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CSMLAB_OFFLINE=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,temperature.gpu --format=csv \
    > "$OUT/nvidia_smi.csv" 2>&1
{
    python3 -c "import sys, torch, transformers, huggingface_hub, moshi, numpy
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device'
print('python', sys.version.split()[0], '| torch', torch.__version__, 'cuda', torch.version.cuda, gpu,
      '| transformers', transformers.__version__, '| hub', huggingface_hub.__version__, '| numpy', numpy.__version__)"
    # shellcheck disable=SC2086
    timeout -k 10 "$BENCH_S" python3 -m csmlab.cli bench gpu --device cuda --size real --out "$OUT" ${GPU_BENCH_ARGS:-}
    echo "exit status $?"
} 2>&1 | tee "$OUT/log.txt"
