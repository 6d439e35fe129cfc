"""Evaluate a checkpoint of the recursive model (or any GPT) at several test-time depths.

    python scripts/recursive_eval.py --ckpt=out-sudoku-trm/ckpt.pt --mode=puzzle --split=test --depths=1,2,4,8
    python scripts/recursive_eval.py --ckpt=out-trm-8m/ckpt.pt --mode=lm --depths=1,2,3,4,6,8

puzzle: exact-solve rate (every scored cell right) and cell accuracy on a record split, per depth.
lm: val cross-entropy on fixed windows (prepare.eval_offsets from --seed) per depth.
Depth = model.set_depth(n) repetitions; a model without set_depth (a plain GPT) is evaluated once ("fixed").
Weights: the EMA weights when the checkpoint has them (what train.py evaluated), else the live ones.
Prints one JSON object; --out also writes it.
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
            with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=device.startswith("cuda")):
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
            with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=device.startswith("cuda")):
                logits, _ = m(x)
            tot += F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1), reduction="sum").item()
            n += y.numel()
        out["fixed" if d is None else d] = tot / n
    if hasattr(m, "set_depth"):
        m.set_depth(None)
    return out


def main(argv=None):
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
    m, ck, weights = load_model(a.ckpt, a.device, a.weights)
    depths = [int(d) for d in a.depths.split(",") if d]
    data = os.path.join(a.data_dir, ck["data"]["dataset"])
    if not depths and hasattr(m, "set_depth"):
        depths = [m.inference_reps()]
    if a.mode == "puzzle":
        res = puzzle_metrics(m, data, a.split, depths, a.device, limit=a.limit or None)
    else:
        res = lm_depth_curve(m, data, depths, a.device, n_windows=a.n_windows)
    info = dict(ckpt=a.ckpt, mode=a.mode, split=a.split if a.mode == "puzzle" else "val", weights=weights,
                iter_num=ck["iter_num"], tokens_seen=ck["tokens_seen"], val_loss=ck.get("val_loss"),
                num_params=m.num_params(), trained_depth=m.inference_reps() if hasattr(m, "set_depth") else None,
                results={str(k): v for k, v in res.items()})
    s = json.dumps(info)
    print(s)
    if a.out:
        with open(a.out, "w") as f:
            f.write(s + "\n")


if __name__ == "__main__":
    main()
