"""Where a training step's time goes: torch.profiler over bench.py's timed training steps (warm-up excluded).

    python scripts/profile_train.py config/gf_mh_8m.py --T=256 --tokens_per_step=16384 --steps=10 --warmup=15
    python scripts/profile_train.py config/gpt_8m.py --T=256 --name=profile_gpt_8m --compile_mode=default

Runs bench.measure_train (train.py's step loop, the config's compile / dtype / fused AdamW) with the profiler
recording only the timed steps, then writes results/<UTC date>_<name>.json: per step the wall time (median), the
summed GPU kernel time and the number of kernel launches; the GPU time per kernel family (inductor-fused Triton,
matmul, attention, WKV, Mamba SSD, optimizer, NCCL, copies, other) and the top kernels; the top CPU ops by self time.
GPU busy / wall far below 1 means the step is bound by the host (launches, Python), not by the kernels. With CUDA
graphs (compile_mode reduce-overhead) the profiler sees the replayed kernels; launches are then graph replays.
"""
import argparse
import os
import re
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bench  # noqa: E402
from metrics import provenance  # noqa: E402

FAMILIES = [  # first match wins; patterns on the kernel name, lower-cased
    ("nccl", r"nccl"),
    ("wkv", r"wkv|^_(scan(_fwd|_bwd|_carry|_fix)?|out_(fwd|bwd))_kernel"),   # wkv6.cu; wkv6_triton's split schedule
    ("mamba_ssd", r"chunk_scan|chunk_state|state_passing|bmm_chunk|chunk_cumsum|layer_norm_fwd|layer_norm_bwd|"
                  r"_layer_norm|selective|ssd"),
    ("attention", r"flash|fmha|attention|sdpa"),
    ("matmul", r"gemm|cutlass|sm90_|nvjet|cublas|xmma|matmul|wgmma"),
    ("optimizer", r"adam|multi_tensor|foreach"),
    ("inductor_triton", r"^triton_"),
    ("copy_fill", r"copy|memcpy|memset|fill|cat_|elementwise_kernel"),
]


def family(name):
    n = name.lower()
    return next((f for f, pat in FAMILIES if re.search(pat, n)), "other")


def op_shapes(prof, steps, cuda, n=25):
    """--shapes=1: the ops (aten calls, extern kernels) by the GPU time of the kernels launched under them (on a CPU
    run, by CPU time), per input shape: which tensors a copy or a cuDNN call works on. Nested ops overlap
    (aten::conv1d contains aten::convolution); without CUDA graphs only (a graph replay launches no ops)."""
    t = (lambda e: e.device_time_total) if cuda else (lambda e: e.cpu_time_total)
    ops = [e for e in prof.key_averages(group_by_input_shape=True)
           if e.device_type == torch.autograd.DeviceType.CPU and t(e) > 0 and e.input_shapes]
    return [dict(name=e.key[:120], input_shapes=str(e.input_shapes)[:240], ms_per_step=t(e) / 1000 / steps,
                 calls_per_step=e.count / steps) for e in sorted(ops, key=lambda e: -t(e))[:n]]


def summarize(prof, steps, step_s):
    events = prof.key_averages()
    # GPU-side user annotations (e.g. "Optimizer.step#AdamW.step", a range spanning the optimizer's kernels) are not
    # kernels: counting them would count those kernels twice
    cuda = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA and not getattr(e, "is_user_annotation", False)]
    cpu = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
    gpu_us = sum(e.self_device_time_total for e in cuda)
    fams = {}
    for e in cuda:
        f = fams.setdefault(family(e.key), dict(ms_per_step=0.0, launches_per_step=0.0))
        f["ms_per_step"] += e.self_device_time_total / 1000 / steps
        f["launches_per_step"] += e.count / steps
    for f in fams.values():
        f["share"] = f["ms_per_step"] * 1000 * steps / gpu_us if gpu_us else None
    top = sorted(cuda, key=lambda e: -e.self_device_time_total)[:25]
    top_cpu = sorted(cpu, key=lambda e: -e.self_cpu_time_total)[:15]
    wall_ms = statistics.median(step_s) * 1000
    gpu_ms = gpu_us / 1000 / steps
    return dict(
        steps=steps, wall_ms_per_step_median=wall_ms, gpu_kernel_ms_per_step=gpu_ms,
        gpu_busy_fraction=gpu_ms / wall_ms if wall_ms else None,
        kernel_launches_per_step=sum(e.count for e in cuda) / steps,
        families=dict(sorted(fams.items(), key=lambda kv: -kv[1]["ms_per_step"])),
        top_kernels=[dict(name=e.key[:160], family=family(e.key), ms_per_step=e.self_device_time_total / 1000 / steps,
                          calls_per_step=e.count / steps) for e in top],
        top_cpu_ops=[dict(name=e.key[:120], self_cpu_ms_per_step=e.self_cpu_time_total / 1000 / steps,
                          calls_per_step=e.count / steps) for e in top_cpu])


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--T", type=int, default=256)
    p.add_argument("--tokens_per_step", type=int, default=16384)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None)
    p.add_argument("--out", default="results")
    p.add_argument("--shapes", type=int, default=0, help="1: also the ops by GPU time per input shape (op_shapes)")
    args, rest = p.parse_known_args(argv)
    files = [a for a in rest if not a.startswith("-")]
    if len(files) != 1:
        raise SystemExit("error: give exactly one config file, e.g. config/gf_mh_8m.py")
    if args.tokens_per_step % args.T:
        raise SystemExit(f"error: --tokens_per_step={args.tokens_per_step} is not a multiple of --T={args.T}")
    cfg = bench.load_config(rest)
    device_type = "cuda" if str(cfg["device"]).startswith("cuda") else "cpu"
    data = bench.Data(cfg["data_dir"], cfg["dataset"], cfg["device"])
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device_type == "cuda" else [])
    prof = torch.profiler.profile(activities=acts, record_shapes=bool(args.shapes))
    r = bench.measure_train(cfg, data, args.T, args.tokens_per_step // args.T, 1, args.steps, args.warmup, args.seed,
                            profiler=prof)
    summary = summarize(prof, args.steps, r["step_s"])
    if args.shapes:
        summary["op_shapes"] = op_shapes(prof, args.steps, device_type == "cuda")
    prov = provenance(cfg["device"])
    name = args.name or "profile_" + os.path.basename(files[0])[:-3]
    summary.update(device_name=prov["device_name"], config=files[0], T=args.T, batch_size=r["batch_size"],
                   tok_s_median=statistics.median(r["tok_s"]), backends=r["backends"],
                   compiled_graphs=r["compiled_graphs"], graph_breaks=r["graph_breaks"],
                   graph_break_reasons=r["graph_break_reasons"])
    path = bench.write_results(args.out, name, "profile", cfg["device"], [args.seed], {files[0]: cfg},
                               dict(step_s=r["step_s"]), summary,
                               ["the profiler records only the timed steps (after warm-up: compile and autotuning "
                                "excluded); its own overhead slows the host side, so wall time here is a little above "
                                "bench.py's"], prov=prov, argv=argv, script="scripts/profile_train.py")
    print(f"[profile] {name} on {prov['device_name']}: wall {summary['wall_ms_per_step_median']:.2f} ms/step, GPU kernels "
          f"{summary['gpu_kernel_ms_per_step']:.2f} ms/step, {summary['kernel_launches_per_step']:.0f} launches/step, "
          f"{summary['compiled_graphs']} compiled graphs, {summary['graph_breaks']} graph breaks")
    for reason, n in list(summary["graph_break_reasons"].items())[:8]:
        print(f"[profile]   graph break x{n}: {reason}")
    for f, v in summary["families"].items():
        print(f"[profile]   {f:<16} {v['ms_per_step']:8.3f} ms/step  {v['launches_per_step']:7.1f} launches/step")
    for k in summary["top_kernels"][:12]:
        print(f"[profile]   {k['ms_per_step']:8.3f} ms x{k['calls_per_step']:.0f} {k['name'][:100]}")
    for o in summary.get("op_shapes", [])[:15]:
        print(f"[profile]   op {o['ms_per_step']:8.3f} ms x{o['calls_per_step']:.0f} {o['name'][:40]} {o['input_shapes'][:90]}")
    return path


if __name__ == "__main__":
    main(sys.argv[1:])
