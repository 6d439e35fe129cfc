"""Gates on the run's log and data (frozen val, val/train leak) and on what a checkpoint does with text: sample diversity, context use (LRD, useful context window,
retrieval of a planted span, state persistence), adaptive depth (ACT), the head-to-head with a baseline, and the
report PNG. Split from gates.py by concern (file size); thresholds, Ctx and helpers live there (gates.THRESHOLDS).
"""
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from checkpoint import load_checkpoint
from gates import TH, grade, long_forward, na, row, seed_of, token_losses
from metrics import read_metrics


# ---- the run's log and data ----------------------------------------------------------------------------------------
def gate_Frozen(c):
    if c.metrics is None:
        return [na("Frozen", "no metrics.jsonl next to the checkpoint")]
    vals = [r["val_loss"] for r in c.metrics if r["kind"] == "eval"]
    if len(vals) < 2:
        return [row("Frozen", f"{len(vals)} eval(s)", "WARN", "", "fewer than 2 evals: cannot tell")]
    same = sum(abs(a - b) <= TH["frozen_min_delta"] for a, b in zip(vals, vals[1:]))
    st = "FAIL" if same == len(vals) - 1 else ("WARN" if same else "PASS")
    return [row("Frozen", f"{len(vals)} evals, {vals[0]:.4f}->{vals[-1]:.4f}, {same} unchanged step(s)", st,
                f"consecutive evals differ by > {TH['frozen_min_delta']:g}", "from metrics.jsonl")]


def ngram_hashes(a, n):
    a = np.asarray(a, dtype=np.uint64)
    m = len(a) - n + 1
    if m <= 0:
        return np.zeros(0, dtype=np.uint64)
    h = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            h = h * np.uint64(1000003) + a[j:j + m] + np.uint64(1)
    return h


def gate_Leak(c):
    n = 64 if c.V <= 512 else 32
    if len(c.val) < n + 1:
        return [na("Leak", f"val split shorter than {n} tokens")]
    starts = c.gen("leak").integers(0, len(c.val) - n + 1, 1000)
    vh = ngram_hashes(c.val, n)[starts]
    hit = np.zeros(len(vh), dtype=bool)
    chunk = 10_000_000
    for s in range(0, min(len(c.train), 400_000_000), chunk):
        hit |= np.isin(vh, ngram_hashes(c.train[s:s + chunk + n - 1], n))
    frac = float(hit.mean())
    st = grade(frac, TH["leak_warn"], TH["leak_fail"], higher_better=False)
    return [row("Leak", f"{frac:.1%} of val {n}-grams in train", st, f"< {TH['leak_warn']:.0%} (FAIL >= {TH['leak_fail']:.0%})",
                "1000 random val n-grams vs every train n-gram (hash)")]


# ---- samples ------------------------------------------------------------------------------------------------------
def _longest_repeat(s):
    lo, hi = 0, len(s) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        seen, found = set(), False
        for i in range(len(s) - mid + 1):
            t = tuple(s[i:i + mid])
            if t in seen:
                found = True
                break
            seen.add(t)
        lo, hi = (mid, hi) if found else (lo, mid - 1)
    return lo


def text_stats(seqs):
    d1 = np.mean([len(set(s)) / len(s) for s in seqs])
    d2 = np.mean([len(set(zip(s, s[1:]))) / (len(s) - 1) for s in seqs])
    top = np.mean([np.bincount(s).max() / len(s) for s in seqs])
    return dict(distinct1=float(d1), distinct2=float(d2), top_share=float(top),
                longest_repeat=max(_longest_repeat(list(s)) for s in seqs))


@torch.no_grad()
def gate_Diversity(c):
    n_new, P = int(c.opts["div_tokens"]), 16
    x, _ = c.windows("val", 4, P, "div")
    g = torch.Generator(device=c.dev).manual_seed(seed_of(c.seed, "div") % 2 ** 62)
    with c.amp():
        out = c.model.generate(x, n_new, temperature=1.0, generator=g)
    samples = [r[P:].cpu().numpy() for r in out]
    ref = [w.cpu().numpy() for w in c.windows("val", 4, n_new, "div-ref")[0]]
    s, r = text_stats(samples), text_stats(ref)
    c.cache["diversity"] = dict(samples=s, data=r)
    top_limit = max(TH["div_top_fail"], 2 * r["top_share"])
    d2r = s["distinct2"] / max(r["distinct2"], 1e-9)
    st = "FAIL" if s["top_share"] > top_limit else grade(d2r, TH["div_distinct2_warn"], TH["div_distinct2_fail"])
    return [row("Diversity", f"d1 {s['distinct1']:.2f} d2 {s['distinct2']:.2f} top {s['top_share']:.2f} rep "
                f"{s['longest_repeat']} (text: {r['distinct1']:.2f}/{r['distinct2']:.2f}/{r['top_share']:.2f}/"
                f"{r['longest_repeat']})", st, f"top <= {top_limit:.2f}, d2 >= {TH['div_distinct2_warn']:.0%} of text's",
                f"4 samples x {n_new} tokens, temperature 1, vs real val text")]


# ---- context use ---------------------------------------------------------------------------------------------------
@torch.no_grad()
def gate_LRD(c):
    if c.fresh:
        return [na("LRD", "needs trained weights")]
    T = c.T
    ctxs = sorted({*[8 * 2 ** i for i in range(12) if 8 * 2 ** i < T], T})
    if T < 16:
        return [na("LRD", f"block_size {T} < 16")]
    x, y = c.windows("val", int(c.opts["lrd_windows"]), T, "lrd")
    curve = {}
    for ctx in ctxs:
        tot = 0.0
        for i in range(0, len(x), 64):
            tl = token_losses(c.model, c, x[i:i + 64, T - ctx:], y[i:i + 64, T - ctx:])
            tot += tl[:, -4:].sum().item()
        curve[ctx] = tot / (4 * len(x))
    c.curves["LRD"] = curve
    ben = (curve[ctxs[0]] - curve[T]) / curve[ctxs[0]] * 100
    c.numbers["lrd_benefit_pct"] = ben
    return [row("LRD", f"{curve[ctxs[0]]:.3f}@8 -> {curve[T]:.3f}@{T}: {ben:+.1f}%",
                grade(ben, TH["lrd_benefit_pass"], TH["lrd_benefit_fail"]),
                f">= {TH['lrd_benefit_pass']}% (FAIL < {TH['lrd_benefit_fail']}%)", "same targets, last ctx tokens")]


@torch.no_grad()
def gate_UCW(c):
    if c.fresh:
        return [na("UCW", "needs trained weights")]
    if not c.stateful:
        return [na("UCW", f"sees at most block_size={c.T} tokens: 1x by construction")]
    T = c.T
    k = max([m for m in (1, 2, 4, 8) if m * T + 2 <= len(c.val)])
    x, y = c.windows("val", int(c.opts["ucw_seqs"]), k * T, "ucw")
    lg = long_forward(c.model, c, x, T, fn=lambda *_: None)
    tl = F.cross_entropy(lg.reshape(-1, c.V), y.reshape(-1), reduction="none").view(y.shape)
    buckets = {1: tl[:, T // 2:T].mean().item()}
    for m in (2, 4, 8):
        if m <= k:
            buckets[m] = tl[:, (m // 2) * T:m * T].mean().item()
    c.curves["UCW"] = dict(buckets=buckets, per_pos=tl.mean(0).cpu().tolist())
    ucw = 1
    for m in (2, 4, 8):
        if m in buckets and buckets[m] <= buckets[1] * TH["ucw_tol"]:
            ucw = m
        else:
            break
    bad = any(not math.isfinite(v) or v > math.log(c.V) for v in buckets.values())
    st = "FAIL" if bad else ("PASS" if ucw == max(buckets) else "WARN")
    return [row("UCW", f"{ucw}x  (" + ", ".join(f"{m}x {v:.3f}" for m, v in buckets.items()) + ")", st,
                f"loss <= {TH['ucw_tol']}x the 1x loss (FAIL: worse than uniform)", "carried state, chunks of block_size")]


@torch.no_grad()
def retrieval(c):
    if "retrieval" in c.cache:
        return c.cache["retrieval"]
    P, L = 32, 32
    maxd = min(int(c.opts["long_len"]), c.horizon - P - L, len(c.val) - P - L - 2)
    ds = [d for d in [64 * 2 ** i for i in range(10)] if d <= maxd]
    counts = np.bincount(c.val, minlength=c.V).astype(np.float64)
    counts /= counts.sum()
    res = {}
    for d in ds:
        n = int(c.opts["retrieval_trials"])
        gen = c.gen("retr", d)
        span = torch.as_tensor(gen.choice(c.V, size=(n, L), p=counts), device=c.dev)
        x, _ = c.windows("val", n, P + d + L, f"retr{d}")
        x = x.clone()
        x[:, P:P + L] = span
        x[:, P + d:P + d + L] = span
        lg = long_forward(c.model, c, x, c.T, fn=(lambda *_: None) if x.size(1) > 4 * c.T else None)
        lp = lg.log_softmax(-1)
        first = -lp[:, P + 1:P + L - 1].gather(-1, x[:, P + 2:P + L, None]).mean().item()
        second = -lp[:, P + d + 1:P + d + L - 1].gather(-1, x[:, P + d + 2:P + d + L, None]).mean().item()
        res[d] = dict(first=first, second=second, gain=1 - second / first)
    c.cache["retrieval"] = res
    c.curves["Retrieval"] = {d: v["gain"] for d, v in res.items()}
    return res


def gate_Retrieval(c):
    if c.fresh:
        return [na("Retrieval", "needs trained weights")]
    res = retrieval(c)
    if not res:
        return [na("Retrieval", f"the model sees {c.horizon} tokens: too few for a 64-token distance")]
    d0 = min(res)
    g = res[d0]["gain"]
    c.numbers["retrieval_gain"] = {d: v["gain"] for d, v in res.items()}
    return [row("Retrieval", " ".join(f"{d}:{v['gain']:.2f}" for d, v in res.items()),
                grade(g, TH["retr_gain_pass"], TH["retr_gain_fail"]),
                f"gain@{d0} >= {TH['retr_gain_pass']} (FAIL < {TH['retr_gain_fail']})",
                "gain = 1 - loss(2nd occurrence)/loss(1st) of a random 32-token span in real text")]


def gate_SPS(c):
    if c.fresh:
        return [na("SPS", "needs trained weights")]
    res = retrieval(c)
    if not res:
        return [na("SPS", "no feasible retrieval distance")]
    ok = [d for d, v in res.items() if v["gain"] >= TH["sps_margin"]]
    c.numbers["sps_tokens"] = max(ok) if ok else 0
    limit = "" if c.stateful else f" (limited by block_size {c.T})"
    return [row("SPS", f"{max(ok) if ok else 0} tokens{limit}", "PASS" if ok else "FAIL",
                f"gain >= {TH['sps_margin']} at the largest distance", f"tested up to {max(res)}")]


@torch.no_grad()
def gate_ACT(c):
    if not hasattr(c.model, "halting_steps"):
        return [na("ACT", "no adaptive depth (model has no halting_steps)")]
    x, _ = c.windows("val", 8, c.T, "act")
    steps = c.model.halting_steps(x).flatten().long().cpu()
    share = np.bincount(steps.numpy()).max() / len(steps)
    return [row("ACT", f"mode share {share:.2f}, mean depth {steps.float().mean():.2f}",
                "FAIL" if share >= TH["act_mode_max"] else "PASS", f"< {TH['act_mode_max']}", "halting steps per token")]


def _interp_time(evs, target):
    """Training time at which the val loss first reaches `target` (linear between evals), or None."""
    for a, b in zip(evs, evs[1:]):
        if b["val_loss"] <= target:
            if a["val_loss"] <= target:
                return a["train_time_s"]
            f = (a["val_loss"] - target) / (a["val_loss"] - b["val_loss"])
            return a["train_time_s"] + f * (b["train_time_s"] - a["train_time_s"])
    return evs[0]["train_time_s"] if evs and evs[0]["val_loss"] <= target else None


def gate_H2H(c):
    if not c.baseline:
        return [na("H2H", "no --baseline")]
    if c.metrics is None:
        return [na("H2H", "no metrics.jsonl next to the checkpoint")]
    bck = load_checkpoint(c.baseline)
    bmet = read_metrics(os.path.join(os.path.dirname(os.path.abspath(c.baseline)), "metrics.jsonl"))
    if c.ckpt is not None and bck["data"]["meta_sha256"] != c.ckpt["data"]["meta_sha256"]:
        return [row("H2H", "different data", "FAIL", "same meta_sha256", "the baseline was trained on other data")]
    me, be = ([r for r in recs if r["kind"] == "eval"] for recs in (c.metrics, bmet))
    tok = min(me[-1]["tokens"], be[-1]["tokens"])
    at = lambda evs: float(np.interp(tok, [e["tokens"] for e in evs], [e["val_loss"] for e in evs]))  # noqa: E731
    lm, lb = at(me), at(be)
    ratio = lm / lb
    rows = [row("H2H loss", f"{lm:.4f} vs {lb:.4f} at {tok:,} tokens (x{ratio:.3f})",
                grade(ratio, TH["h2h_loss_pass"], TH["h2h_loss_fail"], higher_better=False),
                f"<= {TH['h2h_loss_pass']} (FAIL > {TH['h2h_loss_fail']})", "val loss from both metrics logs")]
    med = lambda recs, k: float(np.median([r[k] for r in recs if r["kind"] == "train" and r.get(k) is not None] or [np.nan]))  # noqa: E731
    ts, tb = med(c.metrics, "tok_s"), med(bmet, "tok_s")
    rows.append(row("H2H tok/s", f"{ts:,.0f} vs {tb:,.0f} (x{ts / tb:.2f})", "INFO", "", "median of logged steps"))
    mm = lambda recs: max([r["mem_peak_mb"] for r in recs if r["kind"] == "train" and r.get("mem_peak_mb")] or [np.nan])  # noqa: E731
    rows.append(row("H2H peak mem", f"{mm(c.metrics):.0f} vs {mm(bmet):.0f} MiB", "INFO", "", "max mem_peak_mb (CUDA)"))
    target = min(e["val_loss"] for e in be)
    tb_t, tm_t = _interp_time(be, target), _interp_time(me, target)
    cer = "never reached" if tm_t is None else f"{tb_t / max(tm_t, 1e-9):.2f}"
    c.numbers.update(h2h_loss_ratio=ratio, h2h_tok_s_ratio=ts / tb, h2h_cer=None if tm_t is None else tb_t / max(tm_t, 1e-9),
                     h2h_tokens=tok)
    rows.append(row("H2H CER", cer, "INFO", "> 1 better", f"baseline time to its best val {target:.4f} / model's"))
    return rows



def report_png(path, c, rows, baseline_metrics=None):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(2, 3, figsize=(15, 8))
    ax = ax.flatten()
    for recs, tag, ls in ((c.metrics, "model", "-"), (baseline_metrics, "baseline", "--")):
        if recs:
            tr = [r for r in recs if r["kind"] == "train"]
            ev = [r for r in recs if r["kind"] == "eval"]
            ax[0].plot([r["tokens"] for r in tr], [r["loss"] for r in tr], ls, lw=0.6, label=f"{tag} train")
            ax[0].plot([r["tokens"] for r in ev], [r["val_loss"] for r in ev], "o" + ls, ms=3, label=f"{tag} val")
    ax[0].set(title="loss (metrics.jsonl)", xlabel="tokens", ylabel="nats/token")
    if ax[0].lines:
        ax[0].legend(fontsize=8)
    if "LRD" in c.curves:
        k = list(c.curves["LRD"])
        ax[1].plot(k, list(c.curves["LRD"].values()), "o-")
        ax[1].set_xscale("log", base=2)
    ax[1].set(title="LRD: loss vs context (same targets)", xlabel="context tokens")
    if "D4" in c.curves:
        k = list(c.curves["D4"])
        ax[2].loglog(k, [max(v, 1e-12) for v in c.curves["D4"].values()], "o-")
    ax[2].set(title="D4: final-logit change vs distance", xlabel="tokens back")
    if "Retrieval" in c.curves:
        k = list(c.curves["Retrieval"])
        ax[3].plot(k, list(c.curves["Retrieval"].values()), "o-")
        ax[3].set_xscale("log", base=2)
        ax[3].axhline(TH["retr_gain_pass"], ls=":", c="g")
        ax[3].axhline(TH["retr_gain_fail"], ls=":", c="r")
    ax[3].set(title="retrieval gain vs distance", xlabel="tokens between occurrences")
    for k, v in (c.curves.get("D1") or {}).items():
        if k.split(".")[-1] in ("wkv", "ssm"):
            ax[4].loglog([p for p, _ in v], [r for _, r in v], lw=0.8)
    ax[4].set(title="D1: state RMS vs tokens (wkv, ssm)", xlabel="tokens")
    if "UCW" in c.curves:
        pp = np.array(c.curves["UCW"]["per_pos"])
        k = max(1, len(pp) // 64)  # moving average over k positions, one point per k
        ax[5].plot(np.arange(len(pp))[k // 2::k][:len(pp) // k], pp[:len(pp) // k * k].reshape(-1, k).mean(1))
        for m in (1, 2, 4):
            ax[5].axvline(m * c.T, ls=":", c="gray")
    ax[5].set(title="UCW: loss per position (carried state)", xlabel="position")
    fails = [r["gate"] for r in rows if r["status"] == "FAIL"]
    fig.suptitle(f"{c.ckpt_path or 'fresh ' + c.args['model_type']}: " + (f"FAIL {', '.join(fails)}" if fails else "no FAIL"))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def summarize(paths):
    """Markdown tables from several gates.json (e.g. seeds 0/1/2 of two models): per model, each gate's statuses
    over its runs, and each headline number as mean ± spread (half the range) over runs."""
    import json
    runs = {}
    for p in paths:
        r = json.load(open(p))
        a = r["model_args"]
        runs.setdefault(a["model_type"] + (f"/{a['fusion']}" if a.get("fusion") else ""), []).append(r)
    names = list(runs)
    lines = ["| gate | " + " | ".join(f"{n} ({len(runs[n])} runs)" for n in names) + " |",
             "|---" * (len(names) + 1) + "|"]
    gates = list(dict.fromkeys(row["gate"] for rs in runs.values() for r in rs for row in r["rows"]))
    for g in gates:
        cells = []
        for n in names:
            st = [row["status"] for r in runs[n] for row in r["rows"] if row["gate"] == g]
            cells.append(", ".join(f"{k} {st.count(k)}/{len(runs[n])}" for k in dict.fromkeys(st)) or "-")
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    keys = list(dict.fromkeys(k for rs in runs.values() for r in rs for k, v in r.get("numbers", {}).items()
                              if isinstance(v, (int, float)) and v is not None))
    lines += ["", "| number | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for k in keys:
        cells = []
        for n in names:
            v = [r["numbers"][k] for r in runs[n] if isinstance(r.get("numbers", {}).get(k), (int, float))]
            cells.append(f"{np.mean(v):.4g} ± {(max(v) - min(v)) / 2:.2g}" if v else "-")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
