#!/usr/bin/env bash
# Issue 8 on one multi-GPU box, one command (< 10 minutes on 2 H200s; stateless, no network). For each config in
# MODELS (gpt2_124m on GPT-2 BPE, gf_mh_8m on shakespeare_char), three train.py runs of ITERS steps, one after the
# other so no run shares the GPUs with another (tok/s must not be perturbed):
#   per_gpu     one GPU, the per-rank batch (BATCH_<model>), compile mode default  -> scaling efficiency denominator
#   multi       torchrun --nproc_per_node=NPROC, the per-rank batch, gradient accumulation 1 per rank
#   same_batch  one GPU, batch NPROC x the per-rank batch (the same global batch and the same windows as multi)
# then scripts/ddp_eval.py per model: loss-curve match (same_batch vs multi), tokens/s per GPU, scaling efficiency,
# peak memory. Dropout 0 and one seed for all runs, so same_batch and multi differ only by floating-point order.
# The schedule is shortened to ITERS (warmup WARMUP, cosine to lr_decay_iters=ITERS) so the curves move.
# NVLink multicast stays off (NCCL_NVLS_ENABLE=0 etc.: it can take a shared host's GPUs out of service).
# Writes ONLY JSON / JSONL to OUT_DIR, flat: <date>_ddp_<model>.json per model, the runs' merged metrics JSONL,
# <date>_ddp_status.json (each run's exit code, wall time and log tail).
#
#   bash scripts/device_ddp.sh CORPUS GPT2_TIKTOKEN [OUT_DIR]       (OUT_DIR defaults to $OUT)
#   bash scripts/device_ddp.sh --smoke CORPUS - OUT_DIR             (CPU: 2 gloo processes, tiny models; tests it)
# Environment: PYTHON (python3); NPROC (default: the GPUs torch sees); MODELS (gpt2_124m,gf_mh_8m); ITERS (200);
# PER_GPU_ITERS (120: the per_gpu run only times); TOK_WINDOW (50,120); WARMUP (40); BATCH_gpt2_124m (12),
# BATCH_gf_mh_8m (64): per-rank; TOTAL_BUDGET (s, 570): each run gets at most what is left minus RESERVE (30) and
# is stopped cleanly by SIGTERM at that limit; EFF_TARGET_gpt2_124m (0.95); RUNS (per_gpu,multi,same_batch: which
# runs; ddp_eval.py needs all three) and "pair" in RUNS adds a control: two independent one-GPU runs at once (one
# per GPU, no DDP, the per-rank batch), to tell DDP's own cost from what two busy processes cost the host;
# TRAIN_ARGS: extra train.py options for every run (e.g. "--ddp_bucket_mb=100", "--ddp_bucket_view=True",
# "--ddp_grad_dtype=bfloat16"; NAME_SUFFIX names such a variant).
set -uo pipefail

smoke=0
if [ "${1:-}" = "--smoke" ]; then smoke=1; shift; fi
corpus=${1:?usage: bash scripts/device_ddp.sh [--smoke] CORPUS GPT2_TIKTOKEN [OUT_DIR]}
gpt2=${2:?usage: bash scripts/device_ddp.sh [--smoke] CORPUS GPT2_TIKTOKEN [OUT_DIR]}
out=${3:-${OUT:-}}
[ -n "$out" ] || { echo "error: give OUT_DIR (or set OUT)" >&2; exit 2; }
[ -f "$corpus" ] || { echo "error: corpus $corpus not found; pass the path of tinyshakespeare.txt" >&2; exit 2; }
corpus=$(cd "$(dirname "$corpus")" && pwd)/$(basename "$corpus")
if [ $smoke = 0 ]; then
  [ -f "$gpt2" ] || { echo "error: $gpt2 not found; pass gpt2.tiktoken (notes in prepare.py --help)" >&2; exit 2; }
  gpt2=$(cd "$(dirname "$gpt2")" && pwd)/$(basename "$gpt2")
fi
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
repo=$(pwd)
PY=${PYTHON:-python3}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
MODELS=${MODELS:-gpt2_124m,gf_mh_8m}
ITERS=${ITERS:-200}; PER_GPU_ITERS=${PER_GPU_ITERS:-120}; TOK_WINDOW=${TOK_WINDOW:-50,120}; WARMUP=${WARMUP:-40}
TOTAL_BUDGET=${TOTAL_BUDGET:-570}; RESERVE=${RESERVE:-30}; RUNS=${RUNS:-per_gpu,multi,same_batch}
day=$(date -u +%F)
work=$(mktemp -d)
mkdir -p "$work/results" "$work/runs" "$work/logs"
ln -s "$repo/config" "$work/config"
cd "$work"

if [ $smoke = 1 ]; then
  NPROC=${NPROC:-2}; name=ddp_smoke
  export OMP_NUM_THREADS=1
  common=(--device=cpu --compile=False --dtype=float32 --n_layer=1 --n_head=2 --n_embd=32 --block_size=32
          --eval_iters=2 --log_interval=1)
  ITERS=8; PER_GPU_ITERS=8; TOK_WINDOW=2,8; WARMUP=2
  declare -A BATCH=([gpt2_124m]=2 [gf_mh_8m]=2)
  declare -A EXTRA=([gpt2_124m]="--dataset=stdlib_char" [gf_mh_8m]="--rwkv_head_size=16 --d_state=8 --mamba_headdim=16 --ssd_chunk=16")
else
  NPROC=${NPROC:-$($PY -c 'import torch; print(torch.cuda.device_count())')}; name=ddp${NAME_SUFFIX:-}
  common=(--eval_iters=20 --log_interval=5)
  declare -A BATCH=([gpt2_124m]=${BATCH_gpt2_124m:-12} [gf_mh_8m]=${BATCH_gf_mh_8m:-64})
  declare -A EXTRA=([gpt2_124m]="" [gf_mh_8m]="")
fi
declare -A EFF=([gpt2_124m]=${EFF_TARGET_gpt2_124m:-0.95} [gf_mh_8m]="")
echo "[ddp] $NPROC processes; $(nvidia-smi -L 2>/dev/null | tr '\n' ';')"
[ "$NPROC" -ge 2 ] || { echo "error: needs >= 2 GPUs (torch sees $NPROC)" >&2; exit 2; }

collect() {
  local n=0 f
  for f in results/*.json results/*.jsonl; do
    [ -f "$f" ] || continue
    [ $n -ge 8 ] && { echo "[ddp] not copied (8-file limit): $f" >&2; continue; }
    cp "$f" "$out"/ && n=$((n + 1))
  done
  cd / && rm -rf "$work"
  echo "[ddp] $(ls "$out" | wc -l) files in $out after ${SECONDS}s:"; ls -l "$out"
}
trap collect EXIT

# ---- data: shakespeare_char from CORPUS; GPT-2 BPE of the stdlib corpus (config/gpt2_124m.py's dataset)
$PY "$repo/prepare.py" --source=shakespeare --input="$corpus" > logs/prepare.log 2>&1 || { cat logs/prepare.log; exit 1; }
if [ $smoke = 1 ]; then
  $PY "$repo/prepare.py" --max_bytes=300000 >> logs/prepare.log 2>&1 || { cat logs/prepare.log; exit 1; }
else
  $PY "$repo/prepare.py" --tokenizer=gpt2 --gpt2_file="$gpt2" --max_bytes=20000000 >> logs/prepare.log 2>&1 \
    || { cat logs/prepare.log; exit 1; }
fi
tail -n 4 logs/prepare.log

: > logs/status.tsv
train() {  # id nproc batch iters model: one train.py run, stopped by SIGTERM at the budget's limit
  local id=$1 np=$2 b=$3 it=$4 m=$5 limit=$(( TOTAL_BUDGET - RESERVE - SECONDS )) t0=$SECONDS rc
  if [ $limit -lt 20 ]; then echo "[ddp] $id: no time left" >&2; printf '%s\tskipped\t0\n' $id >> logs/status.tsv; return; fi
  local launch=($PY)
  [ $np -gt 1 ] && launch=($PY -m torch.distributed.run --standalone --nproc_per_node=$np)
  local cmd=("${launch[@]}" "$repo/train.py" config/$m.py "${common[@]}" ${EXTRA[$m]} --out_dir=runs/$id
             --batch_size=$b --gradient_accumulation_steps=1 --max_iters=$it --lr_decay_iters=$ITERS
             --warmup_iters=$WARMUP --eval_interval=$(( ITERS / 2 )) --dropout=0.0 --seed=1337 --plot=False
             --compile_mode=default ${TRAIN_ARGS:-})  # DDP compiles without CUDA graphs: so do the one-GPU runs
  echo "[ddp] $id (limit ${limit}s): ${cmd[*]}" | sed "s|$repo/||g"
  timeout -s TERM -k 30 $limit "${cmd[@]}" > logs/$id.log 2>&1
  rc=$?
  printf '%s\t%s\t%s\n' $id $rc $(( SECONDS - t0 )) >> logs/status.tsv
  grep -E "^iter [0-9]+0:|global batch|error|Error" logs/$id.log | tail -n 4 | sed "s/^/[ddp] $id: /"
  echo "[ddp] $id: rc $rc after $(( SECONDS - t0 ))s"
}

merged=results/${day}_${name}_metrics.jsonl
: > "$merged"
for m in ${MODELS//,/ }; do
  b=${BATCH[$m]}
  [[ ,$RUNS, == *,per_gpu,* ]] && train ${m}_per_gpu 1 $b $PER_GPU_ITERS $m
  [[ ,$RUNS, == *,multi,* ]] && train ${m}_multi $NPROC $b $ITERS $m
  [[ ,$RUNS, == *,same_batch,* ]] && train ${m}_same_batch 1 $(( NPROC * b )) $ITERS $m
  if [[ ,$RUNS, == *,pair,* ]]; then  # the control: one independent process per GPU, all at once
    for g in 0 1; do CUDA_VISIBLE_DEVICES=$g train ${m}_pair$g 1 $b $PER_GPU_ITERS $m & done
    wait
  fi
  for r in per_gpu multi same_batch pair0 pair1; do
    f=runs/${m}_$r/metrics.jsonl
    [ -f "$f" ] && sed "s/^{/{\"run\": \"${m}_$r\", /" "$f" >> "$merged"
  done
  [ -f runs/${m}_per_gpu/metrics.jsonl ] && [ -f runs/${m}_multi/metrics.jsonl ] && \
    [ -f runs/${m}_same_batch/metrics.jsonl ] || continue
  eff=(); [ -n "${EFF[$m]}" ] && eff=(--eff_target=${EFF[$m]})
  # the command recorded in the results file is the one to type in the repository root with the merged JSONL there
  (cd "$work" && $PY "$repo/scripts/ddp_eval.py" --name=${name}_$m --world=$NPROC --tok_window=$TOK_WINDOW \
      --same_batch="$merged#${m}_same_batch" --multi="$merged#${m}_multi" --per_gpu="$merged#${m}_per_gpu" \
      "${eff[@]}" --out=results) 2>&1 | tee -a logs/eval.log
done

$PY - "results/${day}_${name}_status.json" "$NPROC" "$ITERS" <<'EOF'
import json, os, sys
path, nproc, iters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
runs = {}
for line in open("logs/status.tsv"):
    rid, rc, wall = line.rstrip("\n").split("\t")
    log = f"logs/{rid}.log"
    tail = open(log, errors="replace").read().splitlines()[-30:] if os.path.exists(log) else []
    runs[rid] = dict(rc=rc, wall_s=int(wall), log_tail=tail if rc not in ("0",) else tail[-6:])
ev = open("logs/eval.log").read().splitlines() if os.path.exists("logs/eval.log") else []
doc = dict(what="ddp_status", command="bash scripts/device_ddp.sh CORPUS GPT2_TIKTOKEN OUT_DIR", nproc=nproc,
           iters=iters, env={k: os.environ.get(k) for k in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST",
                                                             "NVSHMEM_DISABLE_NVLS")},
           runs=runs, eval_log=ev)
with open(path, "w") as f:
    json.dump(doc, f, indent=1)
    f.write("\n")
EOF
bad=$(awk -F'\t' '$2 != "0"' logs/status.tsv | wc -l)
n_res=$(ls results/${day}_${name}_*.json 2>/dev/null | grep -vc _status.json)
echo "[ddp] runs not clean: $bad; ddp results files: $n_res"
[ "$bad" = 0 ] && [ "$n_res" -ge 1 ]
