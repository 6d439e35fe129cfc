"""The RWKV-6 ddlerp LoRA's second matmul, three equivalent forms, fwd+bwd side by side on one GPU.

    python scripts/ddlerp_bench.py [--rows=16384] [--C=192] [--lora=32] [--out=results]

RWKV-LM x060 mixes the five token-shift lerps with one batched matmul, [5, B*T, lora] @ [5, lora, C]. Its weight
gradient is then five [lora, B*T] @ [B*T, C] products with a long reduction and a tiny output, which cuBLAS runs as
a batched magma kernel. The same numbers come from (a) that bmm, (b) one matmul of the [B*T, 5*lora] activations
with the block-diagonal [5*lora, 5*C] weight built from the same parameter (torch.block_diag, so the zero blocks get
no gradient), (c) five plain matmuls on column slices. Each form is timed fwd+bwd (gradients to the activations and
the weight) in bf16 autocast, eager and under torch.compile, CUDA-event medians; the top GPU kernels of one call
are listed per form. Writes OUT/<UTC date>_ddlerp_lora_bench.json.
"""
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import write_json  # noqa: E402
from metrics import provenance  # noqa: E402
from wkv6_bench import _time_ms  # noqa: E402


def bmm(x, w2):       # x [R, 5*L], w2 [5, L, C] -> [5, R, C]
    return torch.bmm(x.view(x.size(0), 5, -1).transpose(0, 1), w2)


def block_diag(x, w2):
    return (x @ torch.block_diag(*w2.unbind(0))).view(x.size(0), 5, -1).transpose(0, 1)


def slices(x, w2):
    L = w2.size(1)
    return torch.stack([x[:, i * L:(i + 1) * L] @ w2[i] for i in range(5)])


def main(argv):
    opts = dict(a[2:].split('=', 1) for a in argv if a.startswith('--') and '=' in a)
    R, C, L = int(opts.get('rows', 16384)), int(opts.get('C', 192)), int(opts.get('lora', 32))
    out_dir, reps = opts.get('out', 'results'), int(opts.get('reps', 50))
    dev = 'cuda'
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(R, 5 * L, device=dev, generator=g).requires_grad_()
    w2 = (torch.randn(5, L, C, device=dev, generator=g) * 0.1).requires_grad_()
    gy = torch.randn(5, R, C, device=dev, generator=g).to(torch.bfloat16)
    forms = dict(bmm=bmm, block_diag=block_diag, slices=slices)
    ref = None
    rows = []
    for name, f in forms.items():
        for compiled in (False, True):
            fn = torch.compile(f) if compiled else f

            def call():
                x.grad = w2.grad = None
                with torch.autocast('cuda', dtype=torch.bfloat16):
                    y = fn(x, w2)
                y.backward(gy)
                return y
            y = call()
            got = (y.float(), x.grad.float(), w2.grad.float())
            if ref is None:
                ref = got
            err = [((a - b).norm() / b.norm()).item() for a, b in zip(got, ref)]
            ts = _time_ms(call, reps, warmup=5)
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                call()
                torch.cuda.synchronize()
            kern = sorted(((e.self_device_time_total, e.key) for e in prof.key_averages()
                           if e.device_type == torch.autograd.DeviceType.CUDA), reverse=True)[:4]
            rows.append(dict(form=name, compiled=compiled, fwdbwd_median_ms=statistics.median(ts),
                             fwdbwd_min_ms=min(ts), rel_err_vs_bmm_eager=err,
                             top_kernels=[dict(us=round(t, 1), name=k[:120]) for t, k in kern]))
            print(f"{name:>10} compiled={compiled!s:5} {rows[-1]['fwdbwd_median_ms']:.4f} ms  err {err}")
            for k in rows[-1]['top_kernels']:
                print(f"{'':14}{k['us']:8.1f} us  {k['name']}")
    res = dict(what='ddlerp_lora_bench', shape=dict(rows=R, C=C, lora=L, mixes=5), reps=reps, dtype='bfloat16 autocast',
               seeds=[0], created_utc=time.strftime('%Y-%m-%dT%H:%M:%S+00:00', time.gmtime()), results=rows,
               **provenance(torch.device(dev)))
    print('wrote', write_json(out_dir, 'ddlerp_lora_bench', res))


if __name__ == '__main__':
    main(sys.argv[1:])
