"""mamba2.ssd_chunked's inter-chunk recurrence, loop vs segsum matmul, fwd+bwd side by side on one GPU.

    python scripts/ssd_bench.py [--b=64] [--l=256] [--h=6] [--p=64] [--n=64] [--chunk=64] [--compile=1] [--device=cuda] [--out=results]

The built-in SSD (mamba2.py) passes the chunk states with a short loop of elementwise steps up to
SCAN_LOOP_MAX_CHUNKS chunks and with one batched matmul over the c+1 states beyond. Both forms are timed here at one
shape (default: gf_mh_8m at T=256, 64 rows: 4 chunks), fwd+bwd with gradients to every input, the whole
ssd_chunked call under torch.compile as the hybrid runs it, CUDA-event medians. Writes
OUT/<UTC date>_ssd_recurrence_bench.json.
"""
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mamba2  # noqa: E402
from bench import write_json  # noqa: E402
from metrics import provenance  # noqa: E402
from wkv6_bench import _host_ms, _time_ms  # noqa: E402


def main(argv):
    o = dict(a[2:].split('=', 1) for a in argv if a.startswith('--') and '=' in a)
    b, l, h, p, n, chunk = (int(o.get(k, d)) for k, d in (('b', 64), ('l', 256), ('h', 6), ('p', 64), ('n', 64),
                                                           ('chunk', 64)))
    compiled, reps, out_dir = o.get('compile', '1') == '1', int(o.get('reps', 50)), o.get('out', 'results')
    dev = o.get('device', 'cuda')
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(b, l, h, p, device=dev, generator=g).requires_grad_()
    dt = torch.nn.functional.softplus(torch.randn(b, l, h, device=dev, generator=g)).requires_grad_()
    A = (-torch.rand(h, device=dev, generator=g) * 4 - 0.1).requires_grad_()
    B, C = (torch.randn(b, l, n, device=dev, generator=g).requires_grad_() for _ in range(2))
    gy = torch.randn(b, l, h, p, device=dev, generator=g)
    gs = torch.randn(b, h, p, n, device=dev, generator=g)
    ins = (x, dt, A, B, C)
    rows, ref, saved = [], None, mamba2.SCAN_LOOP_MAX_CHUNKS
    try:
        for form, loop_max in (('loop', 1 << 30), ('matmul', 0)):
            mamba2.SCAN_LOOP_MAX_CHUNKS = loop_max
            torch._dynamo.reset()
            fn = torch.compile(mamba2.ssd_chunked) if compiled else mamba2.ssd_chunked

            def call():
                y, s = fn(x, dt, A, B, C, chunk)
                return (y, s) + torch.autograd.grad((y * gy).sum() + (s * gs).sum(), ins)
            got = call()
            ref = got if ref is None else ref
            err = max(((a - r).norm() / r.norm()).item() for a, r in zip(got, ref))
            if dev == 'cuda':
                ts = _time_ms(call, reps, warmup=5)
            else:   # a CPU smoke run (--device=cpu): perf_counter per call
                for _ in range(5):
                    call()
                ts = _host_ms(call, reps, sync=lambda: None)
            rows.append(dict(form=form, fwdbwd_median_ms=statistics.median(ts), fwdbwd_min_ms=min(ts),
                             max_rel_err_vs_loop=err))
            print(f"{form:>7}: fwd+bwd {rows[-1]['fwdbwd_median_ms']:.3f} ms (min {min(ts):.3f}), "
                  f"max rel err vs loop {err:.1e}")
    finally:
        mamba2.SCAN_LOOP_MAX_CHUNKS = saved
    res = dict(what='ssd_recurrence_bench', shape=dict(b=b, l=l, h=h, p=p, n=n, chunk=chunk, chunks=-(-l // chunk)),
               compiled=compiled, dtype='float32 (ssd_chunked runs outside autocast)', reps=reps, seeds=[0],
               created_utc=time.strftime('%Y-%m-%dT%H:%M:%S+00:00', time.gmtime()), results=rows,
               ratio_loop_over_matmul=rows[0]['fwdbwd_median_ms'] / rows[1]['fwdbwd_median_ms'],
               **provenance(torch.device(dev)))
    print('wrote', write_json(out_dir, 'ssd_recurrence_bench', res))


if __name__ == '__main__':
    main(sys.argv[1:])
