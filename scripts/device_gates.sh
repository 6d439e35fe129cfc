#!/usr/bin/env bash
# Issue 6 on one GPU, one command (< 10 minutes on an H100; stateless box, no network): checkpoints rarely leave
# the box, so the trained models' gates run where they are trained.
#   1. train config/gf_mh_8m.py and config/gpt_8m.py for every seed in SEEDS, all at once
#      (scripts/device_hybrid.sh --quality: the same ITERS for both = the same token budget; its bench.py --what=runs
#      summaries per model come back too, so the two models' quality numbers for issue 4 are these runs);
#   2. gates.py --ckpt=... --device=DEVICE on every checkpoint, all at once, the hybrid with --baseline= the GPT of
#      the same seed (head-to-head, CER);
#   3. gates.py --summarize over every gates.json (statuses per gate, headline numbers mean ± spread over seeds).
# Writes ONLY JSON, JSONL and PNG to OUT_DIR, 8 files at most, flat: <date>_gates.json (every run's gates.json
# under "runs", the --summarize markdown, each gates run's exit code and log tail), the quality files of step 1,
# and report PNGs (the hybrid's and the GPT's of the first seed first).
#
#   bash scripts/device_gates.sh CORPUS [OUT_DIR]                 (OUT_DIR defaults to $OUT)
#   bash scripts/device_gates.sh --smoke CORPUS OUT_DIR           (CPU, tiny models, cheap gate sizes: tests it)
# Environment: PYTHON (python3); SEEDS (0,1,2); TOTAL_BUDGET (s, 560): the whole command's deadline; GATES_TIME
# (s, 200) kept for the gates out of it (training gets TOTAL_BUDGET - GATES_TIME, see device_hybrid.sh for its
# ITERS / EVAL_* / COMPILE / STAGGER); GATES (all, or a list like G1,G4,Reeval); GATE_ARGS (extra gates.py
# options, e.g. "--long_len=2048 --overfit_steps=150" when the gates do not fit); DEVICE (cuda).
# Exit 0 when every step ran (gate FAILs are results: counted in the JSON and printed); 1 when a step broke (the
# files are written either way).
set -uo pipefail

smoke=0
if [ "${1:-}" = "--smoke" ]; then smoke=1; shift; fi
corpus=${1:?usage: bash scripts/device_gates.sh [--smoke] CORPUS [OUT_DIR]}
out=${2:-${OUT:-}}
[ -n "$out" ] || { echo "error: give OUT_DIR (or set OUT)" >&2; exit 2; }
[ -f "$corpus" ] || { echo "error: corpus $corpus not found; pass the path of tinyshakespeare.txt" >&2; exit 2; }
corpus=$(cd "$(dirname "$corpus")" && pwd)/$(basename "$corpus")
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
repo=$(pwd)
PY=${PYTHON:-python3}
SEEDS=${SEEDS:-0,1,2}
TOTAL_BUDGET=${TOTAL_BUDGET:-560}
GATES_TIME=${GATES_TIME:-200}
GATES=${GATES:-all}
DEVICE=${DEVICE:-cuda}
day=$(date -u +%F)
work=$(mktemp -d)
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
if [ $smoke = 1 ]; then
  DEVICE=cpu; name=gates_smoke
  gate_args=(--g3_steps=5 --overfit_steps=5 --n_val_windows=4 --lrd_windows=8 --long_len=64 --ucw_seqs=1
             --retrieval_trials=1 --div_tokens=16 --dtype=float32)
else
  name=gates; gate_args=()
fi
gate_args+=(${GATE_ARGS:-})

collect() {  # the gates file and the quality JSON/JSONL first, then PNGs (first seed first), 8 files; flat
  local n=0 f
  for f in "$work"/g/*.json "$work"/q/*.json "$work"/q/*.jsonl "$work"/g/*.png "$work"/q/*.png; do
    [ -f "$f" ] || continue
    [ $n -ge 8 ] && { echo "[gates] not copied (8-file limit): $(basename "$f")" >&2; continue; }
    cp "$f" "$out"/ && n=$((n + 1))
  done
  rm -rf "$work"
  echo "[gates] $(ls "$out" | wc -l) files in $out after ${SECONDS}s:"; ls -l "$out"
}
trap collect EXIT
mkdir -p "$work/g" "$work/q" "$work/gates"  # g: this script's results, q: the training's

# ---- 1. train both models, every seed (checkpoints stay in $work/runs)
WORK="$work" TOTAL_BUDGET=$((TOTAL_BUDGET - GATES_TIME)) bash scripts/device_hybrid.sh \
    $([ $smoke = 1 ] && echo --smoke) --quality "$SEEDS" gf_mh_8m,gpt_8m "$corpus" "$work/q"
train_rc=$?
echo "[gates] training + quality summaries: rc $train_rc at ${SECONDS}s"
cd "$work"  # gates.py reads data/ (prepared by step 1) relative to here

# ---- 2. gates on every checkpoint, concurrently, until the deadline
limit=$(( TOTAL_BUDGET - 20 - SECONDS ))
[ $limit -lt 30 ] && limit=30
ids=()
for s in ${SEEDS//,/ }; do
  for m in gpt_8m gf_mh_8m; do
    ck=runs/${m}_s$s/ckpt.pt
    if [ ! -f "$ck" ]; then
      echo "[gates] ${m}_s$s has no checkpoint" >&2; printf '%s_s%s\tno checkpoint\n' $m $s >> gates/rc.tsv; continue
    fi
    base=()
    [ $m = gf_mh_8m ] && [ -f runs/gpt_8m_s$s/ckpt.pt ] && base=(--baseline=runs/gpt_8m_s$s/ckpt.pt)
    ids+=("${m}_s$s")
    ( timeout -s TERM -k 20 $limit $PY "$repo/gates.py" --ckpt=$ck "${base[@]}" --device=$DEVICE --gates=$GATES \
        --out=gates/${m}_s$s "${gate_args[@]}" > gates/${m}_s$s.log 2>&1
      printf '%s_s%s\t%s\n' $m $s $? >> gates/rc.tsv ) &
  done
done
echo "[gates] ${#ids[@]} gates runs started at ${SECONDS}s (limit ${limit}s each)"
wait
cat gates/rc.tsv
for i in "${ids[@]}"; do
  grep -E "FAIL|WARN|^[0-9]+ FAIL" gates/$i.log | sed "s/^/[gates] $i: /" | tail -n 12
done

# ---- 3. summary over runs, then one JSON with everything
md=$($PY "$repo/gates.py" --summarize="gates/*/gates.json" 2> gates/summarize.log) || md=""
echo "$md"
cmd="bash scripts/device_gates.sh$([ $smoke = 1 ] && echo ' --smoke') CORPUS OUT_DIR"
$PY - "g/${day}_${name}.json" "$cmd" "$SEEDS" "$md" "${ids[@]}" <<'EOF'
import json, os, sys
path, cmd, seeds, md, ids = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
rcs = {}
if os.path.exists("gates/rc.tsv"):
    rcs = dict(l.rstrip("\n").split("\t") for l in open("gates/rc.tsv") if l.strip())
runs, outcome = {}, {}
for i in ids:
    f = f"gates/{i}/gates.json"
    if os.path.exists(f):
        runs[i] = json.load(open(f))
    log = f"gates/{i}.log"
    tail = open(log, errors="replace").read().splitlines()[-25:] if os.path.exists(log) else []
    rc = rcs.get(i, "missing")
    outcome[i] = dict(rc=rc, gates_json=i in runs, n_fail=runs[i]["n_fail"] if i in runs else None,
                      outcome={"0": "no FAIL", "1": "some gate FAILed", "124": "hit its time limit (SIGTERM)"}.get(
                          rc, f"exit code {rc}"), log_tail=[] if rc in ("0", "1") else tail)
for k, v in rcs.items():  # runs that never started (no checkpoint)
    outcome.setdefault(k, dict(rc=v, gates_json=False, n_fail=None, outcome=v, log_tail=[]))
doc = dict(what="gates", command=cmd, seeds=[int(s) for s in seeds.split(",") if s.strip()], summary_markdown=md,
           outcome=outcome, runs=runs,
           notes=["runs[<model>_s<seed>] is that checkpoint's gates.json as gates.py wrote it; split them back into "
                  "files to re-run gates.py --summarize, or read summary_markdown (made on the box from the same "
                  "files)",
                  "the hybrid's head-to-head (H2H) baseline is the gpt_8m of the same seed; training budget and end "
                  "reasons: the *_quality_*.json files beside this one"])
with open(path, "w") as f:
    json.dump(doc, f, indent=1)
    f.write("\n")
for i, o in sorted(outcome.items()):
    print(f"[gates] {i:<14} {o['outcome']}" + (f" ({o['n_fail']} FAIL)" if o["n_fail"] else ""))
EOF
merge_rc=$?
for i in "${ids[@]}"; do  # report PNGs: first seed of both models first (names sort by seed)
  s=${i##*_s}; [ -f gates/$i/gates.png ] && cp gates/$i/gates.png "g/${day}_${name}_s${s}_${i%_s*}.png"
done
# a FAIL is a result (it is in the JSON); a broken step is not: exit 1 when training, a gates run (crash, time
# limit, no checkpoint), the summary or the merge broke
broken=$(awk -F'\t' '$2 != "0" && $2 != "1"' gates/rc.tsv 2>/dev/null | wc -l)
[ $train_rc = 0 ] && [ $merge_rc = 0 ] && [ "$broken" = 0 ] && [ -n "$md" ]
