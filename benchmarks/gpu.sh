#!/usr/bin/env bash
# The speed checks for a machine with a GPU, in one script that ends within 8 minutes there:
#   1. the CIFAR-10 speedrun (experiments/cifar10_speedrun.yaml as it is: bf16, 10 steps per
#      call), its wall time and its test accuracy with the test-time flips and shifts;
#   2. benchmarks/bench_train.py without PyTorch (cnnlab against the hand-written JAX loop);
#   3. benchmarks/bench_parallel.py: 8 sweep trials in one program against one after another.
#
#   benchmarks/gpu.sh [CIFAR10_JPEG_TARBALL] [OUT_DIR]
#
# The tarball defaults to ../shared/data/cifar10-jpeg.tar.gz. A GPU machine without network
# may lack packages cnnlab needs (pydantic, say): put their wheels in .whl/ (make gpu-wheels)
# and carry that folder with the data; they are installed into /tmp/site first.
# GPU_QUICK=1 shortens every part (a check that the script runs, on any machine).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=$(realpath "${1:-../shared/data/cifar10-jpeg.tar.gz}")
OUT=$(realpath -m "${2:-${OUT:-benchmarks/gpu-out}}")
mkdir -p "$OUT"
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export CNNLAB_RUNS_DIR=$OUT/runs CNNLAB_CACHE_DIR=$OUT/cache
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }

log "$(date -u +%FT%TZ) $("$PY" -c 'import jax; print(jax.__version__, jax.devices())')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
  | sed 's/^/== gpu: /' | tee -a "$OUT/summary.txt" || true

speedrun=(--set "data.path=$DATA")
bench=(--rounds 3)
parallel=(--trials 8 --steps 200 --rounds 1)
if [ "${GPU_QUICK:-0}" = 1 ]; then
  speedrun+=(--set train.steps=10 --set train.eval_every_steps=10 --set train.log_every_steps=10
             --set train.batch_size=256 --set optimizer.schedule.warmup_steps=5
             --set train.precision=float32)
  bench=(--quick --models cnn_small)
  parallel=(--trials 2 --steps 20 --rounds 1)
fi

started=$(date +%s.%N)
# train exits 1 for a run that did not learn (a quick run's few steps): still evaluate it
"$PY" -m cnnlab train experiments/cifar10_speedrun.yaml "${speedrun[@]}" > "$OUT/speedrun_train.log" 2>&1 \
  || log "speedrun: train exited $? ($(grep -m1 -o 'run cifar10_speedrun: [a-z_]*' "$OUT/speedrun_train.log"))"
"$PY" -m cnnlab eval latest > "$OUT/speedrun_eval.log" 2>&1
ended=$(date +%s.%N)
log "speedrun test (examples, top-1, top-5, loss):$(grep -m1 -E '[0-9]+ │ +[0-9.]+% │' "$OUT/speedrun_eval.log" | tr -s ' │' ' ')"
log "speedrun: $(echo "$ended - $started" | bc) s of wall time, loading, compiling and evaluation included"
"$PY" - "$CNNLAB_RUNS_DIR" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
from pathlib import Path
run = sorted(p for p in Path(sys.argv[1]).iterdir() if p.is_dir())[-1]
summary = json.loads((run / "summary.json").read_text())
keys = ("status", "steps", "train_seconds", "compile_seconds", "images_per_sec", "test_accuracy")
print("== speedrun summary:", {k: summary.get(k) for k in keys if k in summary})
PY

"$PY" benchmarks/bench_train.py --no-torch "${bench[@]}" 2>&1 | tee "$OUT/bench_train.log" | tail -12
"$PY" benchmarks/bench_parallel.py "${parallel[@]}" 2>&1 | tee "$OUT/bench_parallel.log" | tail -8
log "done $(date -u +%FT%TZ)"
