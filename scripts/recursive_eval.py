"""Evaluate a checkpoint of the recursive model (or any GPT) at several test-time depths.

    python scripts/recursive_eval.py --ckpt=out-sudoku-trm/ckpt.pt --mode=puzzle --split=test --depths=1,2,4,8
    python scripts/recursive_eval.py --ckpt=out-trm-8m/ckpt.pt --mode=lm --depths=1,2,3,4,6,8

puzzle: exact-solve rate (every scored cell right) and cell accuracy on a record split, per depth.
lm: val cross-entropy on fixed windows (prepare.eval_offsets from --seed) per depth.
Depth = model.set_depth(n) repetitions; a model without set_depth (a plain GPT) is evaluated once ("fixed").
Weights: the EMA weights when the checkpoint has them (what train.py evaluated), else the live ones.
Prints one JSON object; --out also writes it.
    python scripts/recursive_eval.py all WORK_ROOT --data_dir=data   # every run dir (sudoku-*, lm-*) -> <run>/eval.json
    python scripts/recursive_eval.py merge results/DATE_recursive_h100.json A/results.json B/results.json  # pool runs
    python scripts/recursive_eval.py summarize OUT_ROOT    # every run under OUT_ROOT -> OUT_ROOT/results.json
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import prepare  # noqa: E402
from checkpoint import clean_state_dict, load_checkpoint  # noqa: E402
from model import build_model  # noqa: E402


def load_model(path, device, weights="auto"):
    """(model in eval mode, checkpoint dict, which weights were loaded). The EMA dict holds parameters only, so
    it is laid over the live state dict (tied weights and buffers come from there)."""
    ck = load_checkpoint(path)
    m = build_model(ck["model_args"])
    sd = clean_state_dict(ck["model"])
    use_ema = weights == "ema" or (weights == "auto" and ck.get("ema") is not None)
    if use_ema:
        if ck.get("ema") is None:
            raise ValueError(f"{path} has no EMA weights (trained with ema=0); use --weights=live")
        m.load_state_dict(sd)
        named = dict(m.named_parameters())
        ema = clean_state_dict(ck["ema"])
        missing = set(named) - set(ema)
        if missing:
            raise ValueError(f"{path}: EMA weights lack {sorted(missing)[:3]}; the checkpoint is inconsistent")
        with torch.no_grad():
            for k, p in named.items():
                p.copy_(ema[k])
    else:
        m.load_state_dict(sd)
    return m.to(device).eval(), ck, "ema" if use_ema else "live"


def _autocast(device):
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=device.startswith("cuda"))


def _depths(m, depths):
    return depths if hasattr(m, "set_depth") else [None]


@torch.no_grad()
def puzzle_metrics(m, data_dir, split, depths, device, batch_size=256, limit=None):
    """{depth: {exact, cell_acc, n}} on a record split; exact = all scored cells of a record right."""
    meta = prepare.load_meta(data_dir)
    L = meta["records"]["length"]
    x_all = torch.from_numpy(prepare.open_split(data_dir, split, meta).astype("int64")).view(-1, L)
    y_all = torch.from_numpy(prepare.open_labels(data_dir, split, meta).astype("int64")).view(-1, L)
    y_all[y_all == prepare.IGNORE] = -1
    if limit:
        x_all, y_all = x_all[:limit], y_all[:limit]
    out = {}
    for d in _depths(m, depths):
        if d is not None:
            m.set_depth(d)
        exact = cells = right = 0
        for i in range(0, len(x_all), batch_size):
            x, y = x_all[i:i + batch_size].to(device), y_all[i:i + batch_size].to(device)
            with _autocast(device):
                logits, _ = m(x)
            ok = (logits.argmax(-1) == y) | (y == -1)
            exact += ok.all(1).sum().item()
            right += (ok & (y != -1)).sum().item()
            cells += (y != -1).sum().item()
        out["fixed" if d is None else d] = dict(exact=exact / len(x_all), cell_acc=right / max(cells, 1), n=len(x_all))
    if hasattr(m, "set_depth"):
        m.set_depth(None)
    return out


@torch.no_grad()
def lm_depth_curve(m, data_dir, depths, device, seed=1337, n_windows=400, batch_size=64):
    """{depth: val cross-entropy} on n_windows fixed val windows of the model's block_size."""
    meta = prepare.load_meta(data_dir)
    val = prepare.open_split(data_dir, "val", meta)
    bs = m.model_args["block_size"]
    offs = prepare.eval_offsets(seed, n_windows, len(val), bs)
    out = {}
    for d in _depths(m, depths):
        if d is not None:
            m.set_depth(d)
        tot, n = 0.0, 0
        for i in range(0, len(offs), batch_size):
            x, y = prepare.get_windows(val, offs[i:i + batch_size], bs)
            x, y = x.to(device), y.to(device)
            with _autocast(device):
                logits, _ = m(x)
            tot += F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1), reduction="sum").item()
            n += y.numel()
        out["fixed" if d is None else d] = tot / n
    if hasattr(m, "set_depth"):
        m.set_depth(None)
    return out


def _spread(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    mean = sum(xs) / len(xs)
    return dict(mean=mean, min=min(xs), max=max(xs), n=len(xs), values=xs,
                std=(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0)


def summarize(root, device, extra=None):
    """Collect every run under root (root/<run>/{metrics.jsonl, eval.json}) into root/results.json: per run the
    training record (tokens, time, end reason, best val) and the depth evaluations; per Sudoku model the exact-solve
    rate over seeds at its trained depth; and whether recursion beats no recursion beyond the seed spread
    (every recursive seed above every no-recursion seed)."""
    from metrics import provenance, read_metrics
    runs = {}
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        if not os.path.isfile(os.path.join(d, "metrics.jsonl")):
            continue
        recs = read_metrics(os.path.join(d, "metrics.jsonl"))
        end = [r for r in recs if r["kind"] == "end"]
        head = recs[0]
        run = dict(model_args=head.get("model_args"), num_params=head.get("num_params"),
                   end=end[-1] if end else None, evals=[r for r in recs if r["kind"] == "eval"])
        ev = os.path.join(d, "eval.json")
        if os.path.isfile(ev):
            run["depth_eval"] = json.load(open(ev))
        runs[name] = run
    sudoku = {}
    for name, r in runs.items():
        if not name.startswith("sudoku-") or "depth_eval" not in r:
            continue
        model = name.rsplit("-s", 1)[0][len("sudoku-"):]
        res = r["depth_eval"]["results"]
        at = str(r["depth_eval"]["trained_depth"]) if r["depth_eval"]["trained_depth"] else "fixed"
        sudoku.setdefault(model, dict(exact=[], cell_acc=[], best_over_depths=[]))
        sudoku[model]["exact"].append(res[at]["exact"])
        sudoku[model]["cell_acc"].append(res[at]["cell_acc"])
        sudoku[model]["best_over_depths"].append(max(v["exact"] for v in res.values()))
    sudoku = {m: {k: _spread(v) for k, v in d.items()} for m, d in sudoku.items()}
    verdict = None
    if "trm" in sudoku and "norec" in sudoku:  # the target; cell accuracy too, for when exact is all 0
        verdict = {}
        for metric in ("exact", "cell_acc"):
            a, b = sudoku["trm"][metric], sudoku["norec"][metric]
            verdict[metric] = dict(rule=f"min over seeds of trm {metric} > max over seeds of norec",
                                   held=a["min"] > b["max"], trm=a["values"], norec=b["values"],
                                   n_seeds=min(a["n"], b["n"]), note="one seed has no spread" if a["n"] < 2 else "")
    lm = {n: dict(best_val=(r["end"] or {}).get("best", {}).get("val_loss"), tokens=(r["end"] or {}).get("tokens"),
                  train_time_s=(r["end"] or {}).get("train_time_s"), end_reason=(r["end"] or {}).get("reason"),
                  depth_curve=r.get("depth_eval", {}).get("results"))
          for n, r in runs.items() if n.startswith("lm-")}
    out = dict(provenance=provenance(device), sudoku=sudoku, recursion_beats_no_recursion=verdict, lm=lm, runs=runs,
               **(extra or {}))
    with open(os.path.join(root, "results.json"), "w") as f:
        json.dump(out, f, indent=1, default=str)
    return out


def merge(out_path, sources, default_seed, argv):
    """One results file (bench.py's layout: schema, what, command, git, device_name) from several device runs'
    results.json: Sudoku from the run that has it, the trm_8m / gpt_8m LM pair pooled over every run and seed.
    Runs named lm-<model>-s<seed> carry their seed; an unsuffixed lm-<model> ran with train.py's default seed."""
    docs = [(p, json.load(open(p))) for p in sources]
    devices = sorted({d["provenance"]["device_name"] for _, d in docs})
    if len(devices) != 1:
        raise SystemExit(f"error: the sources ran on different devices {devices}; merge only one device's runs")
    with_sudoku = [(p, d) for p, d in docs if d.get("sudoku")]
    if len(with_sudoku) > 1:
        raise SystemExit("error: more than one source has Sudoku results; merge at most one")
    lm = {}
    for p, d in docs:
        for name, r in d["lm"].items():
            model, _, seed = name[len("lm-"):].partition("-s")
            lm.setdefault(model, []).append(dict(r, run=name, seed=int(seed) if seed else default_seed, source=p))
    pooled = {}
    for model, rs in sorted(lm.items()):
        rs.sort(key=lambda r: r["seed"])
        depths = sorted({k for r in rs for k in (r["depth_curve"] or {})}, key=lambda k: (k != "fixed", int(k) if k.isdigit() else 0))
        pooled[model] = dict(runs=rs, seeds=[r["seed"] for r in rs], best_val=_spread([r["best_val"] for r in rs]),
                             tokens=sorted({r["tokens"] for r in rs}), end_reasons=sorted({r["end_reason"] for r in rs}),
                             depth_curve={k: _spread([(r["depth_curve"] or {}).get(k) for r in rs]) for k in depths})
    first = docs[0][1]["provenance"]
    sud = with_sudoku[0][1] if with_sudoku else {}
    base = os.path.basename(out_path)[:-len(".json")]
    out = dict(schema=1, what="recursive", name=base[11:] if base[:4].isdigit() else base,  # <YYYY-MM-DD>_<name>
               command="python scripts/recursive_eval.py merge " + " ".join(argv), device_name=devices[0],
               git=first["git"], versions=first["versions"],
               sources=[dict(path=p, provenance=d["provenance"], script=d.get("script")) for p, d in docs],
               sudoku=sud.get("sudoku", {}),
               sudoku_runs={n: r for n, r in sud.get("runs", {}).items() if n.startswith("sudoku-")},
               recursion_beats_no_recursion=sud.get("recursion_beats_no_recursion"), lm=pooled,
               default_seed=default_seed)
    with open(out_path, "w") as f:
        json.dump(out, f, indent=1, default=str)
        f.write("\n")
    return out


def eval_ckpt(ckpt, mode, data_dir="data", split="test", depths=(), device="cpu", weights="auto", limit=0,
              n_windows=400):
    """The JSON-able record for one checkpoint: its training facts and {depth: metrics}."""
    m, ck, used = load_model(ckpt, device, weights)
    depths = list(depths)
    if hasattr(m, "set_depth") and m.inference_reps() not in depths:  # always score the depth it was trained at
        depths.append(m.inference_reps())
    data = os.path.join(data_dir, ck["data"]["dataset"])
    if mode == "puzzle":
        res = puzzle_metrics(m, data, split, depths, device, limit=limit or None)
    else:
        res = lm_depth_curve(m, data, depths, device, n_windows=n_windows)
    return dict(ckpt=ckpt, mode=mode, split=split if mode == "puzzle" else "val", weights=used,
                iter_num=ck["iter_num"], tokens_seen=ck["tokens_seen"], val_loss=ck.get("val_loss"),
                num_params=m.num_params(), trained_depth=m.inference_reps() if hasattr(m, "set_depth") else None,
                results={str(k): v for k, v in res.items()})


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["summarize"]:
        ap = argparse.ArgumentParser(description="collect runs into results.json")
        ap.add_argument("root")
        ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        ap.add_argument("--extra", default="{}", help="JSON object merged into results.json")
        a = ap.parse_args(argv[1:])
        out = summarize(a.root, a.device, json.loads(a.extra))
        short = lambda d: None if d is None else f"{d['mean']:.4f} [{d['min']:.4f}, {d['max']:.4f}] (n={d['n']})"
        sudoku = {m: {k: short(v) for k, v in d.items()} for m, d in out["sudoku"].items()}
        print(json.dumps(dict(sudoku_test_mean_min_max=sudoku,
                              recursion_beats_no_recursion=out["recursion_beats_no_recursion"], lm=out["lm"]),
                         indent=1, default=str))
        return
    if argv[:1] == ["merge"]:
        ap = argparse.ArgumentParser(description="pool device runs' results.json into one results file")
        ap.add_argument("out")
        ap.add_argument("sources", nargs="+")
        ap.add_argument("--default_seed", type=int, default=1337, help="seed of runs named without -s<seed>")
        a = ap.parse_args(argv[1:])
        out = merge(a.out, a.sources, a.default_seed, argv[1:])
        print(json.dumps({m: dict(seeds=d["seeds"], best_val=d["best_val"]) for m, d in out["lm"].items()}, indent=1))
        return
    if argv[:1] == ["all"]:  # every run dir under root: sudoku-* as puzzles, lm-* as LM; writes <run>/eval.json
        ap = argparse.ArgumentParser(description="evaluate every run under a folder (one process)")
        ap.add_argument("root")
        ap.add_argument("--data_dir", default="data")
        ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        ap.add_argument("--puzzle_depths", default="1,2,4,8,16")
        ap.add_argument("--lm_depths", default="1,2,3,4,6,8")
        a = ap.parse_args(argv[1:])
        for name in sorted(os.listdir(a.root)):
            ck = os.path.join(a.root, name, "ckpt.pt")
            if not os.path.isfile(ck):
                continue
            puzzle = name.startswith("sudoku")
            depths = [int(d) for d in (a.puzzle_depths if puzzle else a.lm_depths).split(",") if d]
            try:
                info = eval_ckpt(ck, "puzzle" if puzzle else "lm", a.data_dir, "test", depths, a.device)
            except Exception as e:  # one broken run must not hide the others' results
                info = dict(ckpt=ck, error=f"{type(e).__name__}: {e}")
            with open(os.path.join(a.root, name, "eval.json"), "w") as f:
                json.dump(info, f)
            print(name, json.dumps(info.get("results", info.get("error"))))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--mode", choices=("puzzle", "lm"), required=True)
    ap.add_argument("--data_dir", default="data")
    ap.add_argument("--split", default="test")
    ap.add_argument("--depths", default="")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--weights", choices=("auto", "ema", "live"), default="auto")
    ap.add_argument("--limit", type=int, default=0, help="puzzle: only the first N records")
    ap.add_argument("--n_windows", type=int, default=400)
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    info = eval_ckpt(a.ckpt, a.mode, a.data_dir, a.split, [int(d) for d in a.depths.split(",") if d], a.device,
                     a.weights, a.limit, a.n_windows)
    s = json.dumps(info)
    print(s)
    if a.out:
        with open(a.out, "w") as f:
            f.write(s + "\n")


if __name__ == "__main__":
    main()
