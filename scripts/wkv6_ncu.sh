#!/usr/bin/env bash
# Hardware counters of the fused Triton WKV-6 kernels at one bench shape (Nsight Compute, on a Firecracker GPU box):
#   bash scripts/wkv6_ncu.sh OUT_DIR [B T H]            (default 8 4096 32, N=64, bf16: the shape 4 ms is targeted at)
# One forward and one backward launch, default config only (WKV6_TRITON_AUTOTUNE=0: no autotune launches), clocks left
# alone (--clock-control none). Writes OUT_DIR/ncu_B_T_H.txt: speed of light, occupancy, launch stats, warp stall
# reasons and scheduler stats per kernel, which say whether a chunk step waits on memory, on shared-memory layout
# conversions (MIO / short scoreboard) or on the dot units.
set -u
out=${1:?usage: bash scripts/wkv6_ncu.sh OUT_DIR [B T H]}
B=${2:-8}; T=${3:-4096}; H=${4:-32}
cd "$(dirname "$0")/.."
mkdir -p "$out"
CASE="
import torch, wkv6_triton
g = torch.Generator(device='cuda').manual_seed(1234)
r, k, v = (torch.randn($B, $T, $H, 64, device='cuda', generator=g).to(torch.bfloat16).requires_grad_() for _ in range(3))
w = (-torch.exp(-1 + 0.5 * torch.randn($B, $T, $H, 64, device='cuda', generator=g))).requires_grad_()
u = torch.randn($H, 64, device='cuda', generator=g).requires_grad_()
s0 = torch.randn($B, $H, 64, 64, device='cuda', generator=g).requires_grad_()
y, s = wkv6_triton.wkv6_triton(r, k, v, w, u, s0)
(y.float().sum() + s.sum()).backward()
torch.cuda.synchronize()
print('ran', tuple(y.shape))
"
WKV6_TRITON_AUTOTUNE=0 timeout "${NCU_TIMEOUT:-240}" ncu --clock-control none --target-processes all \
  -k "regex:_wkv6_(fwd|bwd)_kernel" --launch-count 2 \
  --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
  --section SchedulerStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
  --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
  python3 -c "$CASE" > "$out/ncu_${B}_${T}_${H}.txt" 2>&1
echo "ncu rc=$?"
grep -E "_wkv6_|Duration|Registers Per|Achieved Occupancy|Theoretical Occupancy|Stall|Warp Cycles Per Issued|Issued Warp|No Eligible|Compute \(SM\) Throughput|Memory Throughput|stalled|Local|Dynamic Shared|Static Shared" "$out/ncu_${B}_${T}_${H}.txt" | head -80
