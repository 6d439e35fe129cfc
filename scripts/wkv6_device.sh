#!/usr/bin/env bash
# One-command GPU run for the WKV-6 kernels (wkv6.py / wkv6.cu / wkv6_triton.py / wkv6_scan.py), from the repo root:
#   bash scripts/wkv6_device.sh
# Steps, each time-boxed so the whole run ends inside WKV6_DEVICE_BUDGET_S (default 540 s):
#   0. env.txt: nvidia-smi, versions;  fla-core installed from .whl/ when carried (bench reference)
#   1. cpu_tests.log: tests/test_wkv6.py under this box's triton (interpreter, CPU tensors)
#   2. gpu_tests.log: tests/test_wkv6_gpu.py (CUDA + Triton vs float64, fp32/bf16/fp16)
#   3. sanitizer.log: compute-sanitizer memcheck (+ racecheck if WKV6_RACECHECK=1) on small CUDA cases
#   4. bench.log + wkv6_bench.json: python wkv6_bench.py --profile=1 (uses what time is left; per-kernel times)
# Everything lands in $OUT (the device tool's folder) or ./out_wkv6; at most 6 files.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/out_wkv6}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export WKV6_BUILD_DIR="${WKV6_BUILD_DIR:-/tmp/wkv6_build}"
BUDGET="${WKV6_DEVICE_BUDGET_S:-540}"
T0=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }

if ls .whl/fla_core-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/fla_core-*.whl \
    && export PYTHONPATH=/tmp/site
fi
{
  nvidia-smi
  python3 -c "import sys, torch, triton, numpy; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__); print('device', torch.cuda.get_device_name())"
  nvcc --version | tail -2
  python3 -c "import fla; print('fla', fla.__version__)" 2>&1 | tail -1
} > "$OUT/env.txt" 2>&1
grep -E "device|torch|fla" "$OUT/env.txt"

# optional knobs: WKV6_SKIP_CPU=1, WKV6_SKIP_SANITIZER=1, WKV6_GPU_TEST_K=<pytest -k expr>,
# WKV6_BENCH_ARGS="--impls=cuda,triton --shapes=0,1,2" (see bench() in wkv6_bench.py)
if [ "${WKV6_SKIP_CPU:-0}" != 1 ]; then
echo "== 1. CPU kernel tests (TRITON_INTERPRET) under this box's triton  [$(left)s left]"
timeout 150 python3 -m pytest tests/test_wkv6.py -q -p no:cacheprovider > "$OUT/cpu_tests.log" 2>&1
echo "rc=$?"; tail -4 "$OUT/cpu_tests.log"
fi

echo "== 2. GPU tests  [$(left)s left]"
WKV_TEST_GPU=1 WKV6_TRITON_AUTOTUNE=0 timeout "${WKV6_GPU_TEST_TIMEOUT:-330}" python3 -m pytest tests/test_wkv6_gpu.py -q -s \
  -p no:cacheprovider -o console_output_style=classic -k "${WKV6_GPU_TEST_K:-}" > "$OUT/gpu_tests.log" 2>&1
echo "rc=$?"; grep -E "passed|failed|error" "$OUT/gpu_tests.log" | tail -12

if [ "${WKV6_SKIP_SANITIZER:-0}" != 1 ]; then
echo "== 3. compute-sanitizer  [$(left)s left]"
CASE='
import torch, wkv6
for dt, N, T in [(torch.bfloat16, 64, 37), (torch.float32, 32, 5), (torch.float16, 128, 19)]:
    g = torch.Generator(device="cuda").manual_seed(N)
    r, k, v = (torch.randn(2, T, 2, N, device="cuda", generator=g).to(dt).requires_grad_() for _ in range(3))
    w = (-torch.exp(torch.randn(2, T, 2, N, device="cuda", generator=g) - 1)).requires_grad_()
    u = torch.randn(2, N, device="cuda", generator=g).requires_grad_()
    s0 = torch.randn(2, 2, N, N, device="cuda", generator=g).requires_grad_()
    y, s = wkv6.wkv6_cuda(r, k, v, w, u, s0)
    (y.float().square().sum() + s.sum()).backward()
    yr, sr = wkv6.wkv6_naive(*(x.detach().double() for x in (r, k, v, w, u, s0)))
    print(dt, N, T, "y rel err", ((y.double() - yr).norm() / yr.norm()).item(), "grads finite",
          all(torch.isfinite(x.grad).all().item() for x in (r, k, v, w, u, s0)))
torch.cuda.synchronize()
'
{
  timeout 120 compute-sanitizer --tool memcheck --error-exitcode 9 python3 -c "$CASE"; echo "memcheck rc=$?"
  if [ "${WKV6_RACECHECK:-0}" = 1 ]; then
    timeout 120 compute-sanitizer --tool racecheck --error-exitcode 9 python3 -c "$CASE"; echo "racecheck rc=$?"
  fi
} > "$OUT/sanitizer.log" 2>&1
grep -E "rc=|ERROR SUMMARY|rel err" "$OUT/sanitizer.log" | tail -8
fi

echo "== 4. bench  [$(left)s left]"
DL=$(( $(left) - 25 ))
if [ "$DL" -gt 30 ]; then
  timeout $(( DL + 20 )) python3 wkv6_bench.py --out="$OUT" --deadline_s="$DL" --profile=1 ${WKV6_BENCH_ARGS:-} > "$OUT/bench.log" 2>&1
  echo "rc=$?"; sed -n '/^summary/,$p' "$OUT/bench.log"; grep -E "ERROR" "$OUT/bench.log" | head -5
else
  echo "skipped: no time left"
fi
echo "total $(( $(date +%s) - T0 ))s"
