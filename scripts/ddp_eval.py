"""Compare a torchrun (DDP) run with one-GPU runs of the same config: loss-curve match and scaling efficiency.

    python scripts/ddp_eval.py --name=ddp_gpt2_124m --world=2 --same_batch=M.jsonl#one --multi=M.jsonl#ddp2 \
        --per_gpu=M.jsonl#one_b --tok_window=50,200 [--match_tol=0.01] [--eff_target=0.95] [--out=results]

Three train.py runs of one config (metrics.jsonl files, or FILE#RUN lines of a merged JSONL as bench.py reads them):
  same_batch  one GPU with the N-GPU run's global batch (batch_size = N x the per-rank batch, gradient accumulation
              1): train.py draws the same windows for it as the N ranks draw together (prepare.window_offsets is
              keyed by the global batch and each rank takes its slice), so with dropout 0 both runs see the same
              tokens at every step and differ only by the order of floating-point sums -> the loss-curve check;
  multi       torchrun --nproc_per_node=N with the per-rank batch, gradient accumulation 1 per rank;
  per_gpu     one GPU with the per-rank batch -> the denominator of the scaling efficiency
              N-GPU tok/s / (N x one-GPU tok/s), i.e. how much of N independent GPUs' throughput DDP keeps.
tok/s = the median of the logged per-step tok/s with iter in --tok_window (train.py's tok_s counts every rank's
tokens). The loss match: at every iteration both runs logged, |train loss difference|; at every common eval,
|val loss difference| / val loss. "match" holds when every eval's relative difference and the mean train-loss
difference over the last half of the common iterations (relative to the mean loss there) are <= --match_tol.
--control=A,B (optional): one-GPU runs of the per-rank batch that ran AT THE SAME TIME, one per GPU, without DDP
(device_ddp.sh RUNS=pair): their tok/s against per_gpu's says how much two busy processes cost each other on the
host, apart from DDP's communication (control_vs_per_gpu; ddp_vs_control = multi per GPU / control).
Peak memory is rank 0's torch.cuda.max_memory_allocated (train.py logs rank 0 only; the ranks are symmetric).
Writes results/<UTC date>_<name>.json through bench.write_results (what="ddp"); scripts/make_tables.py renders it.
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bench  # noqa: E402


def describe(spec, window):
    """bench.py's run summary plus what this comparison needs: world size, per-rank batch, train losses, memory."""
    s = bench.summarize_run(spec, float("-inf"), window)
    recs = bench.read_run(spec)
    head = next(r for r in recs if r["kind"] == "run")
    trains = [r for r in recs if r["kind"] == "train"]
    cfg = head.get("config") or {}
    mems = [r["mem_peak_mb"] for r in trains if r.get("mem_peak_mb") is not None]
    return dict(spec=spec, world_size=head.get("world_size", 1), batch_size=cfg.get("batch_size"),
                grad_accum=cfg.get("gradient_accumulation_steps"), block_size=cfg.get("block_size"),
                tokens_per_iter=s["tokens_per_iter"], backends=s["backends"], device_name=s["device_name"],
                seed=s["seed"], git=s["git"], tok_s_median=s["tok_s_median"], tok_s_lines=s["tok_s_lines"],
                mem_peak_mb=max(mems) if mems else None, end_reason=s["end_reason"], final_iter=s["final_iter"],
                train_losses={r["iter"]: r["loss"] for r in trains}, evals=s["evals"],
                config={k: v for k, v in cfg.items() if k not in ("out_dir", "wandb_run_name")},
                _summary=s)


def compare_losses(a, b, tol):
    """a: the one-GPU same-batch run, b: the DDP run."""
    common = sorted(set(a["train_losses"]) & set(b["train_losses"]))
    if not common:
        raise SystemExit("error: the two runs logged no common iteration; give them the same log_interval")
    diffs = {i: abs(a["train_losses"][i] - b["train_losses"][i]) for i in common}
    late = common[len(common) // 2:]
    late_diff = statistics.mean(diffs[i] for i in late)
    late_loss = statistics.mean(a["train_losses"][i] for i in late)
    ea = {e["iter"]: e["val_loss"] for e in a["evals"]}
    eb = {e["iter"]: e["val_loss"] for e in b["evals"]}
    evals = [dict(iter=i, val_one=ea[i], val_multi=eb[i], rel_diff=abs(ea[i] - eb[i]) / ea[i])
             for i in sorted(set(ea) & set(eb))]
    match = all(e["rel_diff"] <= tol for e in evals) and late_diff / late_loss <= tol
    worst = max(common, key=diffs.get)
    return dict(common_iters=len(common), first_iter=common[0], last_iter=common[-1],
                train_max_abs_diff=diffs[worst], train_max_abs_diff_iter=worst,
                train_late_mean_abs_diff=late_diff, train_late_mean_loss=late_loss,
                train_late_rel_diff=late_diff / late_loss, evals=evals,
                final_train_loss=dict(one=a["train_losses"][common[-1]], multi=b["train_losses"][common[-1]]),
                match_tol=tol, match=match)


def evaluate(args):
    window = bench.int_list(args.tok_window, "tok_window")
    runs = {role: describe(spec, window) for role, spec in
            (("same_batch", args.same_batch), ("multi", args.multi), ("per_gpu", args.per_gpu))}
    one, multi, per = runs["same_batch"], runs["multi"], runs["per_gpu"]
    n = args.world
    problems = []
    if multi["world_size"] != n:
        problems.append(f"--multi ran with world_size {multi['world_size']}, not --world={n}")
    if one["world_size"] != 1 or per["world_size"] != 1:
        problems.append("--same_batch and --per_gpu must be one-process runs")
    if one["tokens_per_iter"] != multi["tokens_per_iter"]:
        problems.append(f"--same_batch has {one['tokens_per_iter']} tokens per step but --multi {multi['tokens_per_iter']}: "
                        f"give the one-GPU run batch_size = {n} x the per-rank batch_size")
    if per["tokens_per_iter"] * n != multi["tokens_per_iter"]:
        problems.append(f"--per_gpu has {per['tokens_per_iter']} tokens per step; it must be the per-rank batch "
                        f"({multi['tokens_per_iter'] // n})")
    if any(r["grad_accum"] != 1 for r in runs.values()):
        problems.append("every run must use gradient_accumulation_steps=1 (per rank)")
    devices = sorted({str(r["device_name"]) for r in runs.values()})
    if len(devices) != 1:
        problems.append(f"the runs were measured on different devices {devices}")
    if problems:
        raise SystemExit("error: " + "; ".join(problems))
    if any(r["tok_s_median"] is None for r in runs.values()):
        raise SystemExit(f"error: a run logged no step with iter in --tok_window={args.tok_window}")
    eff = multi["tok_s_median"] / (n * per["tok_s_median"])
    control = None
    if args.control:
        ctl = [describe(spec, window) for spec in args.control.split(",") if spec]
        if any(c["tokens_per_iter"] != per["tokens_per_iter"] or c["world_size"] != 1 for c in ctl):
            raise SystemExit("error: --control runs must be one-process runs of the per-rank batch")
        if any(c["tok_s_median"] is None for c in ctl):
            raise SystemExit(f"error: a --control run logged no step with iter in --tok_window={args.tok_window}")
        mean = statistics.mean(c["tok_s_median"] for c in ctl)
        control = dict(runs=[c["spec"] for c in ctl], tok_s=[c["tok_s_median"] for c in ctl], tok_s_mean=mean,
                       control_vs_per_gpu=mean / per["tok_s_median"], ddp_vs_control=multi["tok_s_median"] / n / mean,
                       devices=sorted({str(c["device_name"]) for c in ctl}))
    summary = dict(
        device_name=devices[0], world=n, model_type=multi["config"].get("model_type"),
        per_rank_batch=f"{multi['batch_size']} x {multi['block_size']}", tokens_per_step=multi["tokens_per_iter"],
        tok_window=window,
        tok_s=dict(per_gpu_one=per["tok_s_median"], multi=multi["tok_s_median"], multi_per_gpu=multi["tok_s_median"] / n,
                   same_batch_one=one["tok_s_median"]),
        scaling_efficiency=eff, strong_speedup=multi["tok_s_median"] / one["tok_s_median"],
        eff_target=args.eff_target, eff_target_met=None if args.eff_target is None else eff >= args.eff_target,
        mem_peak_mb=dict(per_gpu_one=per["mem_peak_mb"], multi_rank0=multi["mem_peak_mb"],
                         same_batch_one=one["mem_peak_mb"]),
        compile=dict((k, r["backends"].get("compile") if r["backends"] else None) for k, r in runs.items()),
        loss=compare_losses(one, multi, args.match_tol),
        end_reasons={k: r["end_reason"] for k, r in runs.items()}, control=control)
    notes = ["scaling_efficiency = multi tok/s / (world x per_gpu_one tok/s), each the median of the logged steps "
             f"with {window[0]} <= iter <= {window[1]}; strong_speedup = multi / same_batch_one (same global batch)",
             "train.py compiles without CUDA graphs under DDP (mode default); the one-GPU runs' compile mode is in "
             "summary.compile: compare like with like",
             "mem_peak_mb: torch.cuda.max_memory_allocated of rank 0 (multi) / the process (one-GPU runs)"]
    raw = {k: {kk: vv for kk, vv in r.items() if kk != "_summary"} for k, r in runs.items()}
    return raw, summary, notes, [r["_summary"] for r in runs.values()]


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--name", required=True)
    p.add_argument("--world", type=int, required=True)
    p.add_argument("--same_batch", required=True)
    p.add_argument("--multi", required=True)
    p.add_argument("--per_gpu", required=True)
    p.add_argument("--tok_window", default="50,200")
    p.add_argument("--match_tol", type=float, default=0.01)
    p.add_argument("--eff_target", type=float, default=None)
    p.add_argument("--control", default=None, help="FILE#RUN,FILE#RUN: concurrent independent one-GPU runs")
    p.add_argument("--note", action="append", default=[], help="a note recorded in the results file (repeatable)")
    p.add_argument("--out", default="results")
    args = p.parse_args(argv)
    for spec in (args.same_batch, args.multi, args.per_gpu):
        if not os.path.exists(spec.partition("#")[0]):
            raise SystemExit(f"error: metrics file {spec.partition('#')[0]} not found")
    raw, summary, notes, per_run = evaluate(args)
    # device, driver and versions from the runs' metrics headers; git: the runs' (the measured code), not this script's
    prov = {**bench.runs_provenance(per_run), "git": raw["multi"]["git"]}
    path = bench.write_results(args.out, args.name, "ddp", None, sorted({r["seed"] for r in raw.values()}, key=str), {},
                               raw, summary, notes + args.note, prov=prov, argv=argv, script="scripts/ddp_eval.py")
    lo = summary["loss"]
    print(f"[ddp] {args.name} on {summary['device_name']}: {summary['tok_s']['multi']:,.0f} tok/s on {args.world} "
          f"GPUs vs {summary['tok_s']['per_gpu_one']:,.0f} on one -> efficiency {summary['scaling_efficiency']:.3f}; "
          f"loss match {'yes' if lo['match'] else 'NO'} (late train |diff| {lo['train_late_mean_abs_diff']:.4f}, "
          f"evals {[round(e['rel_diff'], 5) for e in lo['evals']]}) -> {path}")
    return path


if __name__ == "__main__":
    main(sys.argv[1:])
