"""Registers, spills and instruction counts of the Triton WKV-6 chunk kernels for sm_90, without a GPU.

    python scripts/wkv6_ptxas.py [--warps=8] [--bk=64] [--bv=64] [--bt=16] [--maxnreg=R] [--only=chunk_bwd,...]

Compiles the four chunk kernels (fused forward/backward, chunk-parallel forward/backward) for each intra form
(columns, levels), and the split schedule's state scans (wkv6_scan.py: grouped forward and backward, one pass
backward, the carry and fix-up kernels; BV=16 as at B*H <= 4) once, with triton.compile for an sm_90 target, assembles the PTX with the ptxas that ships in Triton's
wheel (`-v`: registers, spill bytes) and counts the SASS instructions and barriers with its cuobjdump. Static counts,
not timings: they say whether tiles stay in registers and how much code a chunk runs, not how fast it is. bf16
inputs (tf32 dots), N=64, BK=BV=64 unless given; --bt applies to the levels form (the column form is always 16-token chunks);
--maxnreg caps the registers per thread as a triton.Config(maxnreg=) does (the chunk kernels only).
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

# compiled kernels, not the CPU interpreter's: triton reads TRITON_INTERPRET when its own jit functions are defined
# (at import), so it must be gone before the first triton import (a test run under the interpreter inherits it)
os.environ.pop("TRITON_INTERPRET", None)
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import wkv6_scan as S  # noqa: E402
import wkv6_triton as W  # noqa: E402

BF16 = {"r", "k", "v", "gy", "y", "dr", "dk", "dv", "a", "b"}   # 16-bit tensors; every other pointer is fp32
SCALARS = {"T", "y_pstride", "kv_pstride", "v_pstride", "NT", "NG", "WAVES"}
KERNELS = [("fused_fwd", W._wkv6_fwd_kernel, dict(SAVE=True, NTI=0)), ("fused_bwd", W._wkv6_bwd_kernel, dict(NTI=0)),
           ("chunk_fwd", W._out_fwd_kernel, {}), ("chunk_bwd", W._out_bwd_kernel, {})]
SCANS = [("scan_fwd", S._scan_kernel, dict(H=4, N=64, BT=16, BK=64, BV=16, PREC="tf32", NTI=0, G=32, REV=False)),
         ("scan_bwd", S._scan_kernel, dict(H=4, N=64, BT=16, BK=64, BV=16, PREC="tf32", NTI=0, G=32, REV=True)),
         ("scan_1pass", S._scan_kernel, dict(H=4, N=64, BT=16, BK=64, BV=16, PREC="tf32", NTI=0, G=0, REV=True)),
         ("scan_carry", S._scan_carry_kernel, dict(N=64, BK=64, BV=16, REV=True, NGI=0)),
         ("scan_fix", S._scan_fix_kernel, dict(N=64, BK=64, G=32))]
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def jit_fn(kernel):
    while not hasattr(kernel, "params"):   # unwrap the autotuner
        kernel = kernel.fn
    return kernel


def report(kernel, constexprs, warps, tmp, maxnreg=None):
    fn = jit_fn(kernel)
    sig = {p.name: "constexpr" if p.is_constexpr else ("i32" if p.name in SCALARS else
                                                       "*bf16" if p.name in BF16 else "*fp32") for p in fn.params}
    compiled = triton.compile(ASTSource(fn, signature=sig, constexprs=constexprs),
                              target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=1, maxnreg=maxnreg))
    ptx, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
    with open(ptx, "w") as f:
        f.write(compiled.asm["ptx"])
    res = subprocess.run([os.path.join(BIN, "ptxas"), "-arch=sm_90a", "-v", ptx, "-o", cubin],
                         capture_output=True, text=True, check=True).stderr
    sass = subprocess.run([os.path.join(BIN, "cuobjdump"), "--dump-sass", cubin],
                          capture_output=True, text=True, check=True).stdout
    return dict(regs=int(re.search(r"Used (\d+) registers", res).group(1)),
                spill=int(re.search(r"(\d+) bytes spill stores", res).group(1)),
                sass=sum(1 for ln in sass.splitlines() if ln.strip().startswith("/*") and "*/" in ln),
                barriers=sass.count("BAR.SYNC"))


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--warps", type=int, default=8)
    ap.add_argument("--bk", type=int, default=64)
    ap.add_argument("--bv", type=int, default=64)
    ap.add_argument("--bt", type=int, default=16, help="chunk length of the levels form (16, 32, 64)")
    ap.add_argument("--maxnreg", type=int, default=None, help="register cap per thread for the chunk kernels")
    ap.add_argument("--only", default="", help="comma-separated kernel names (default: all)")
    a = ap.parse_args(argv)
    print(f"sm_90, {a.warps} warps, N=64, BK={a.bk}, BV={a.bv}, bf16 (tf32 dots), maxnreg {a.maxnreg}; "
          f"triton {triton.__version__}")
    print(f"{'kernel':<10} {'intra':<8} {'BT':>3} {'regs':>5} {'spill B':>8} {'SASS':>7} {'barriers':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for intra, bt in ((0, W.BT_DEFAULT), (1, a.bt)):
            for name, kern, extra in KERNELS:
                if a.only and name not in a.only.split(","):
                    continue
                c = dict(H=4, N=64, BT=bt, BK=a.bk, BV=a.bv, PREC="tf32", INTRA=intra, **extra)
                r = report(kern, c, a.warps, tmp, a.maxnreg)
                print(f"{name:<10} {('columns', 'levels')[intra]:<8} {bt:>3} {r['regs']:>5} {r['spill']:>8} "
                      f"{r['sass']:>7} {r['barriers']:>9}", flush=True)
        for name, kern, c in SCANS:
            if a.only and name not in a.only.split(","):
                continue
            r = report(kern, c, 4, tmp)   # the scans' first autotune config: 4 warps
            print(f"{name:<10} {'-':<8} {c.get('BT', '-'):>3} {r['regs']:>5} {r['spill']:>8} {r['sass']:>7} "
                  f"{r['barriers']:>9}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
