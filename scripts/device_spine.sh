#!/usr/bin/env bash
# The spine's headline numbers in one command of < 10 minutes on one CUDA GPU (stateless box, no network):
#   prepare shakespeare_char from CORPUS -> train config/shakespeare_char.py (unchanged; bf16 + compile, the CUDA
#   defaults) for seeds 0 1 2 -> bench.py --what=runs (best val, wall time to val 1.47, median tok/s over iters
#   100-300) -> bench.py --what=generate (GPT prefill/decode speed; a fresh model of the config: speed only).
# Writes ONLY results JSON, metrics JSONL and loss PNGs to OUT_DIR (8 files, flat), also when a step fails.
#
#   bash scripts/device_spine.sh path/to/tinyshakespeare.txt OUT_DIR          (OUT_DIR defaults to $OUT)
#   bash scripts/device_spine.sh --smoke CORPUS OUT_DIR                       (CPU, tiny model, 20 iters: tests it)
# Env: PYTHON (default python3); SEEDS (default "0 1 2"); TOTAL_BUDGET (s, default 560) and RESERVE (s kept for
# the bench.py steps, default 45): each run gets an equal share of what is left, at most RUN_TIMEOUT (default 165);
# at its limit it gets SIGTERM, train.py stops cleanly and its metrics are summarised as they stand (end reason
# "signal"); GATE (default "tok_s>=1.4e6,best_val<=1.47"), checked only when the device is exactly GATE_DEVICE
# (default "NVIDIA H100 80GB HBM3").
set -uo pipefail

smoke=0
if [ "${1:-}" = "--smoke" ]; then smoke=1; shift; fi
corpus=${1:?usage: bash scripts/device_spine.sh [--smoke] CORPUS OUT_DIR}
out=${2:-${OUT:-}}
[ -n "$out" ] || { echo "error: give OUT_DIR (or set OUT)" >&2; exit 2; }
[ -f "$corpus" ] || { echo "error: corpus $corpus not found; pass the path of tinyshakespeare.txt" >&2; exit 2; }
# both made absolute before leaving the caller's directory
corpus=$(cd "$(dirname "$corpus")" && pwd)/$(basename "$corpus")
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RUN_TIMEOUT=${RUN_TIMEOUT:-165}
TOTAL_BUDGET=${TOTAL_BUDGET:-560}
RESERVE=${RESERVE:-45}
SEEDS=${SEEDS:-0 1 2}
GATE=${GATE-tok_s>=1.4e6,best_val<=1.47}
GATE_DEVICE=${GATE_DEVICE:-NVIDIA H100 80GB HBM3}
mkdir -p "$out"
repo=$(pwd)
work=$(mktemp -d)
# bench.py runs inside $work with relative paths (config -> the repo's config/, data/, results/), so the commands
# the results files record are the ones to type in the repository root after copying the files into results/
ln -s "$repo/config" "$work/config"
mkdir -p "$work/results"
day=$(date -u +%F)
export PYTHONUNBUFFERED=1

if [ $smoke = 1 ]; then
  # a tiny model on the CPU; same pipeline, same commands otherwise
  tiny=(--device=cpu --compile=False --dtype=float32 --n_layer=1 --n_head=2 --n_embd=32 --block_size=32 --batch_size=4)
  train_extra=("${tiny[@]}" --max_iters=20 --eval_interval=10 --eval_iters=2 --log_interval=1 --warmup_iters=2 --lr_decay_iters=20)
  gen_extra=("${tiny[@]}" --ctx=8 --gen_tokens=8 --gen_batch=1,2 --gen_repeats=1)
  window=0,20; target=4.0; name=shakespeare_char_smoke
else
  train_extra=()
  gen_extra=(--ctx=128 --gen_tokens=128 --gen_batch=1,16,64 --gen_repeats=5)
  window=100,300; target=1.47; name=shakespeare_char
fi

collect() {  # whatever exists, flat, into $out: 2 JSON + 3 JSONL + 3 PNG = 8 files at most
  cp "$work"/results/*.json "$work"/results/*.jsonl "$work"/results/*.png "$out"/ 2>/dev/null
  rm -rf "$work"
  echo "[spine] $(ls "$out" | wc -l) files in $out after ${SECONDS}s:"; ls -l "$out"
}
trap collect EXIT

echo "[spine] $(date -u +%FT%TZ) git $(git rev-parse --short HEAD 2>/dev/null || echo none); $(nvidia-smi -L 2>/dev/null | head -n 1 || echo no nvidia-smi)"
$PY prepare.py --source=shakespeare --input="$corpus" --data_dir="$work/data" || { echo "[spine] prepare failed" >&2; exit 1; }

metrics=()
left=$(echo $SEEDS | wc -w)
for s in $SEEDS; do
  # an equal share of what is left, keeping RESERVE seconds for the two bench.py steps after the runs
  limit=$(( (TOTAL_BUDGET - RESERVE - SECONDS) / left ))
  [ $limit -gt "$RUN_TIMEOUT" ] && limit=$RUN_TIMEOUT
  left=$((left - 1))
  if [ $limit -lt 30 ]; then
    echo "[spine] seed $s skipped: ${SECONDS}s used of TOTAL_BUDGET=${TOTAL_BUDGET}s" >&2
    continue
  fi
  t=$SECONDS
  timeout -s TERM -k 30 "$limit" $PY train.py config/shakespeare_char.py --seed=$s --out_dir="$work/s$s" \
      --data_dir="$work/data" "${train_extra[@]}" > "$work/train_s$s.log" 2>&1
  rc=$?
  [ $rc = 124 ] && echo "[spine] seed $s hit its ${limit}s limit: stopped by SIGTERM, summarised as it stands" >&2
  grep -E "^(model|global batch|eval|done|error)" "$work/train_s$s.log" | tail -n 4
  echo "[spine] seed $s: rc $rc, $((SECONDS - t))s (limit ${limit}s)"
  [ $rc != 0 ] && [ $rc != 124 ] && tail -n 30 "$work/train_s$s.log" >&2
  if [ -f "$work/s$s/metrics.jsonl" ]; then
    cp "$work/s$s/metrics.jsonl" "$work/results/${day}_${name}_metrics_s$s.jsonl"
    [ -f "$work/s$s/loss.png" ] && cp "$work/s$s/loss.png" "$work/results/${day}_${name}_loss_s$s.png"
    metrics+=("results/${day}_${name}_metrics_s$s.jsonl")
  fi
done

status=0
cd "$work"
if [ ${#metrics[@]} -gt 0 ]; then
  $PY "$repo/bench.py" --what=runs --metrics="$(IFS=,; echo "${metrics[*]}")" --target=$target --tok_window=$window \
      --gate="$GATE" --gate_device="$GATE_DEVICE" --name=$name || status=1
else
  echo "[spine] no metrics to summarise" >&2; status=1
fi
timeout -s TERM $((RESERVE - 5)) $PY "$repo/bench.py" config/shakespeare_char.py --what=generate "${gen_extra[@]}" \
    --name=${name}_generate 2>&1 | grep -v "^Overriding" || status=1
cd "$repo"
[ ${#metrics[@]} = $(echo $SEEDS | wc -w) ] || status=1
exit $status
