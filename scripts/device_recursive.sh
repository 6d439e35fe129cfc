#!/usr/bin/env bash
# Issue 7's experiments in one command on one GPU (budgeted for <= 9.5 minutes on an H100):
#   (1) Sudoku 9x9 from puzzles.py (CLUES clues, held-out test puzzles disjoint from train on the canonical key):
#       exact-solve rate of the recursive model (config/sudoku_trm.py), the same network without recursion
#       (--rec_n=1 --rec_T=1 --halt_max_steps=1 --rec_act=False) and a GPT of equal parameters
#       (config/sudoku_gpt.py), seeds SEEDS; each also scored at several test-time depths.
#   (2) tiny-shakespeare char: config/trm_8m.py beside config/gpt_8m.py at equal tokens (LM_ITERS steps each),
#       best val, and the trm's val loss against test-time depth.
# Every training run goes concurrently (small models leave an H100 mostly idle; each process is one CPU thread)
# under `timeout -s TERM BUDGET`: train.py saves on SIGTERM, so a run cut short still has weights, and its end
# reason ("signal") and token count say so in results.json.
#
#   bash scripts/device_recursive.sh            # GPU; writes $OUT/results.json (+ per-run metrics, evals, logs)
#   bash scripts/device_recursive.sh --smoke    # CPU, tiny everything, < 30 s on a free 2-core machine
# Environment: OUT (results; default out-recursive-results), PYTHON, DATA_DIR (default data), SEEDS ("0 1 2"),
# LM_SEEDS (seeds of the trm_8m / gpt_8m pair; default SEEDS: 6 LM runs beside the 9 Sudoku runs),
# CLUES (50), SUD_ITERS (1200), LM_ITERS (2500), BUDGET (seconds per training run, 400),
# SHAKESPEARE_TXT (tinyshakespeare input.txt when data/shakespeare_char is not prepared; no network needed),
# EXTRA_ARGS (appended to every train.py command), DEVICE (cuda; for a CPU dry run of the full-size branch).
set -euo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
PY=${PYTHON:-python}
OUT=${OUT:-out-recursive-results}
WORK=${WORK:-out-recursive-work}   # checkpoints stay here (too big to ship); $OUT gets the small files
DATA=${DATA_DIR:-data}
T0=$(date +%s)
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
rm -rf "$WORK"
mkdir -p "$WORK" "$OUT"
stamp() { echo "[$(( $(date +%s) - T0 ))s] $*"; }

if [ $SMOKE = 1 ]; then
    DEVICE=cpu; SEEDS=${SEEDS-0}; CLUES=60; NTRAIN=6; NAUG=2; NVAL=4; NTEST=6; WORKERS=1
    SUD_ITERS=3; LM_ITERS=3; BUDGET=120; DEPTHS=1,2
    SYS="--device=cpu --dtype=float32 --compile=False --plot=False --log_interval=1 --eval_iters=1"
    SUD_X="$SYS --n_embd=32 --n_head=2 --batch_size=4 --rec_n=1 --halt_max_steps=2 --eval_interval=3"
    LM_X="$SYS --n_embd=32 --n_head=2 --block_size=32 --batch_size=4 --eval_interval=3 --dataset=stdlib_char"
    [ -f "$DATA/stdlib_char/meta.json" ] || $PY prepare.py --data_dir="$DATA" --max_bytes=100000 > "$WORK/prepare.log"
    LM_DEPTHS=1,2
else
    DEVICE=${DEVICE:-cuda}; SEEDS=${SEEDS-"0 1 2"}; CLUES=${CLUES:-50}; NTRAIN=${NTRAIN:-2000}; NAUG=${NAUG:-32}
    NVAL=256; NTEST=${NTEST:-1000}; WORKERS=$(nproc)
    SUD_ITERS=${SUD_ITERS:-1200}; LM_ITERS=${LM_ITERS:-2500}; BUDGET=${BUDGET:-400}; DEPTHS=1,2,4,8,16
    SUD_X=""
    LM_X="--eval_iters=50 --compile=False --dataset=shakespeare_char"
    LM_DEPTHS=1,2,3,4,6,8,12
    nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
    if [ ! -f "$DATA/shakespeare_char/meta.json" ]; then
        TXT=${SHAKESPEARE_TXT:-}
        for c in shared/data/tinyshakespeare.txt ../shared/data/tinyshakespeare.txt "$DATA/shakespeare_input.txt"; do
            [ -z "$TXT" ] && [ -f "$c" ] && TXT=$c
        done
        $PY prepare.py --source=shakespeare --data_dir="$DATA" ${TXT:+--input="$TXT"} > "$WORK/prepare.log" 2>&1 \
            || { echo "tinyshakespeare unavailable (see $WORK/prepare.log); set SHAKESPEARE_TXT"; LM_ITERS=0; }
    fi
fi

# ---- Sudoku data (a pure function of the arguments: reused when already there)
DS=sudoku${CLUES}_${NTRAIN}x${NAUG}
if [ -n "$SEEDS" ] && [ ! -f "$DATA/$DS/meta.json" ]; then
    stamp "generating $DS"
    $PY puzzles.py --task=sudoku --clues=$CLUES --n_train=$NTRAIN --n_aug=$NAUG --n_val=$NVAL --n_test=$NTEST \
        --seed=0 --workers=$WORKERS --data_dir="$DATA" --dataset=$DS
fi

# ---- training, all concurrently
train() {  # name, args...
    local name=$1; shift
    ( set +e; timeout -s TERM -k 60 $BUDGET $PY train.py "$@" ${EXTRA_ARGS:-} --data_dir="$DATA" \
        --out_dir="$WORK/$name" > "$WORK/$name.log" 2>&1; echo $? > "$WORK/$name.rc" ) &
}
LM_SEEDS=${LM_SEEDS-$SEEDS}  # the LM pair's seeds (default: SEEDS); SEEDS="" LM_SEEDS="1 2" runs only LM seeds
SUD="--dataset=$DS --max_iters=$SUD_ITERS --lr_decay_iters=$SUD_ITERS"
for s in $SEEDS; do
    train sudoku-trm-s$s config/sudoku_trm.py $SUD --seed=$s $SUD_X
    train sudoku-norec-s$s config/sudoku_trm.py $SUD --seed=$s $SUD_X \
        --rec_n=1 --rec_T=1 --halt_max_steps=1 --rec_act=False
    train sudoku-gpt-s$s config/sudoku_gpt.py $SUD --seed=$s $SUD_X
done
if [ "$LM_ITERS" != 0 ]; then
    LM="--max_iters=$LM_ITERS --lr_decay_iters=$LM_ITERS"
    for s in $LM_SEEDS; do
        train lm-gpt-s$s config/gpt_8m.py $LM $LM_X --seed=$s
        train lm-trm-s$s config/trm_8m.py $LM $LM_X --seed=$s
    done
fi
stamp "training started ($(jobs -p | wc -l) runs, budget ${BUDGET}s each)"
wait
stamp "training done"

# ---- evaluation at several test-time depths (EMA weights when the run kept them)
$PY scripts/recursive_eval.py all "$WORK" --data_dir="$DATA" --device=$DEVICE --puzzle_depths=$DEPTHS \
    --lm_depths=$LM_DEPTHS > "$WORK/eval.log" 2>&1 || echo "evaluation failed: see $OUT/logs/eval.log"
stamp "evaluation done"

# ---- results: small files only
for d in "$WORK"/*/; do
    name=$(basename "$d")
    mkdir -p "$OUT/$name"
    cp "$d"/metrics.jsonl "$d"/eval.json "$OUT/$name/" 2>/dev/null || true
done
mkdir -p "$OUT/logs"
cp "$WORK"/*.log "$WORK"/*.rc "$OUT/logs/" 2>/dev/null || true
FMT='{"script": {"smoke": %s, "seeds": "%s", "lm_seeds": "%s", "clues": %s, "dataset": "%s", "sudoku_iters": %s, "lm_iters": %s, '
FMT+='"budget_s": %s, "wall_s": %s}}'
EXTRA=$(printf "$FMT" $([ $SMOKE = 1 ] && echo true || echo false) "$SEEDS" "$LM_SEEDS" $CLUES "$DS" $SUD_ITERS $LM_ITERS $BUDGET \
    $(( $(date +%s) - T0 )))
$PY scripts/recursive_eval.py summarize "$OUT" --device=$DEVICE --extra="$EXTRA" | tee "$OUT/summary.txt"
# the device tool brings back 8 files at most: the per-run folders and logs travel as one archive
(cd "$OUT" && dirs=$(ls -d */ 2>/dev/null) && [ -n "$dirs" ] && tar czf runs.tar.gz $dirs && rm -rf $dirs)
stamp "wrote $OUT/results.json"
