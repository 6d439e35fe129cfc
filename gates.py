"""Validation gates: every number computed on the checkpoint it names (its real weights and states), from a seed.

    python gates.py --ckpt=out/ckpt.pt [--gates=all|G1,S2,...] [--baseline=out-gpt/ckpt.pt] [--seed=0] [--device=cuda]
    python gates.py config/gf_mh_8m.py [--key=value ...]      # fresh weights: the gates that need no training
    python gates.py --summarize="out-*/gates.json"            # markdown tables over runs (e.g. seeds 0/1/2)

Prints a table (gate, value, status, threshold), writes gates.json (provenance, checkpoint + iter + data identity,
seed, every row and curve) and gates.png (loss curves from the run's metrics.jsonl, LRD, D4, retrieval, state
growth) next to the checkpoint or into --out, and exits 1 on any FAIL (2 on bad input). Gates that do not apply
to a family say "n/a (why)". Every threshold is in THRESHOLDS below, with why. Statuses: PASS / WARN / FAIL,
n/a, and INFO for pure measurements (head-to-head speed, memory, CER) that have nothing to pass.
This file: thresholds, CLI, the model-side gates (G, overfit, baselines, re-eval, resume); gates_states.py: the
state and dynamics gates (S, D); gates_context.py: the log/data gates (frozen val, leak), the text-side gates
(diversity, LRD, UCW, retrieval, SPS, ACT, head-to-head), the report PNG and --summarize.
"""
import ast
import copy
import hashlib
import json
import math
import os
import sys
import tempfile
import time
import traceback
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

import prepare
from checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint, FORMAT_VERSION
from configurator import ConfigError, configure
from metrics import provenance, read_metrics
from model import COMMON_CONFIG, all_family_configs, build_model, model_args_from

# ---- every threshold, one line each on why -------------------------------------------------------------------
THRESHOLDS = dict(
    kernel_rel_err=1e-3,      # fp32 kernel vs float64 reference on random input: reordered fp32 sums stay <= 1e-5 (1e-7 on CPU); a bug is O(1)
    g2_entropy_pass=0.9,      # fresh model: mean next-token entropy / ln V near 1 = no token favoured before training
    g2_entropy_fail=0.5,      # below half of ln V the init already commits to few tokens (saturated logits)
    g3_drop_pass=0.10,        # short train: loss must fall >= 10% from its start (ln V) in g3_steps steps on real data
    g3_drop_fail=0.02,        # < 2%: not learning (lr 0, frozen params, detached graph)
    g3_grad_band=(1e-3, 1e3), # median pre-clip grad norm (clipped at grad_clip) outside = vanishing / a scale bug; fresh hybrids sit ~10-100
    spike_ratio=2.0,          # a loss > 2x its running mean (previous 10 steps) is a spike (groundthink's red line)
    g4_ablate_fail=0.005,     # zeroing a branch must raise val loss by >= 0.5% (relative): below, the branch is dead
    g4_ablate_pass=0.02,      # >= 2% relative: the branch clearly matters
    g4_grad_band=(0.1, 10.0), # RWKV/Mamba grad-norm ratio outside: WARN only (a gradient ratio is not a contribution)
    gate_saturation=0.02,     # a fusion gate whose mean is within 2% of 0 or 1 has switched a branch off: WARN
    s1_rms_max=1e4,           # state RMS over a long real input above this = unbounded accumulation
    s2_rel_diff_fail=1e-3,    # two different real inputs must give states differing by >= 0.1% (relative)
    s2_rel_diff_pass=1e-2,
    s3_rel_tol=1e-5,          # same input twice: states equal up to non-deterministic GPU reductions
    d1_doubling_fail=2.0,     # decays <= 1 allow at most linear growth (x2 per doubling of length); more = diverging
    d1_doubling_warn=1.5,     # between sqrt (random-walk, 1.41x) and linear growth per doubling: WARN
    d2_spread_fail=1e-3,      # per-dim std of states across 16 inputs / state RMS: below = collapsed state
    d2_spread_pass=1e-2,
    d3_share_fail=0.02,       # ablation share of the weaker branch: < 2% of the total damage = one branch does it all
    d3_share_pass=0.10,
    d4_d1_min=1e-3,           # perturbing the previous token must move the final logits by >= 0.1% (any LM uses it)
    d4_reach=1e-4,            # "reach" = largest distance whose perturbation still moves the logits by >= 1e-4 (report)
    overfit_loss=0.5,         # a healthy model memorises 10 fixed sequences below 0.5 nats/token
    overfit_warn_frac=0.5,    # not below 0.5 but under half the initial loss: WARN (slow), else FAIL
    reeval_rel_tol_fp32=1e-4, # recomputed val loss vs the checkpoint's, same windows, fp32: summation order only
    reeval_rel_tol_lowp=3e-3, # bf16/fp16 autocast (and torch.compile in the run) round differently: 0.3%
    resume_rel_tol=1e-5,      # reloaded logits / next step vs in-memory: exact on CPU; GPU atomics reorder sums
    frozen_min_delta=1e-7,    # two evals of different weights with val loss equal to 1e-7 = a frozen / stale val
    leak_fail=0.5,            # >= 50% of sampled val n-grams found verbatim in train = val copied from train
    leak_warn=0.2,            # code repeats boilerplate: 64-char (char) / 32-token (BPE) n-grams reuse well below 20%
    div_top_fail=0.5,         # samples: one token above max(50%, 2x its share in real val text) = mode collapse
    div_distinct2_fail=0.25,  # distinct bigrams below 25% of real text's (same length) = looping
    div_distinct2_warn=0.5,
    lrd_benefit_fail=1.0,     # % loss drop from 8 tokens of context to block_size on the SAME targets: < 1% = context unused
    lrd_benefit_pass=3.0,     # 3% = a weak but measurable use of context beyond 8 tokens (groundthink's char HY: ppl -21..43% from 8 to 64)
    ucw_tol=1.02,             # a window k x block is "useful" while its loss stays within 2% of the last half of 1x
    retr_gain_fail=0.1,       # 2nd occurrence of a planted random span must remove >= 10% of the 1st's loss
    retr_gain_pass=0.5,       # "far better": half the loss gone
    sps_margin=0.1,           # state persistence = largest distance whose retrieval gain is still >= 10%
    h2h_loss_pass=1.05,       # loss ratio vs baseline at equal tokens: within 5% = promising (groundthink V5)
    h2h_loss_fail=1.30,       # > 1.3x the baseline's loss is groundthink's red line
    act_mode_max=0.95,        # recursive model: one halting depth for >= 95% of tokens = halting is degenerate
)
TH = THRESHOLDS

# ---- gates.py's own keys (train.py's keys and every family's are accepted too, so config files work) ----------
GATE_KEYS = dict(
    ckpt="",               # trained checkpoint; empty = fresh-weights gates from the config
    summarize="",          # comma list or glob of gates.json files: print markdown tables (mean ± spread), run nothing
    gates="all",           # all | comma list of gate names (see ORDER)
    baseline="",           # baseline checkpoint for the head-to-head (its metrics.jsonl must sit next to it)
    out="",                # output folder (default: the checkpoint's folder, or out_dir for fresh runs)
    g3_steps=100,          # G3 short-train steps
    overfit_steps=300,     # Overfit: at most this many full-batch steps
    overfit_lr=3e-3,
    n_val_windows=128,     # windows of block_size for G4 ablations / Baselines model loss
    lrd_windows=256,       # LRD: windows (4 scored targets each)
    long_len=4096,         # S1/D1/D4/retrieval: the long horizon (stateful families)
    ucw_seqs=16,           # UCW: sequences of 8 x block_size
    retrieval_trials=8,    # planted spans per distance
    div_tokens=256,        # Diversity: tokens sampled per sample (4 samples)
)
ORDER = ["G0", "G1", "G2", "G3", "G4", "S0", "S1", "S2", "S3", "S4", "D1", "D2", "D3", "D4", "Overfit", "Baselines",
         "Reeval", "Resume", "Frozen", "Leak", "Diversity", "LRD", "UCW", "Retrieval", "SPS", "ACT", "H2H"]
TEXT_GATES = {"LRD", "UCW", "Retrieval", "SPS", "D4", "Diversity", "Leak", "Baselines", "D1", "S1"}
FRESH = {"G0", "G1", "G2", "G3", "G4", "S0", "S1", "S2", "S3", "S4", "Overfit", "Baselines", "Resume", "Leak", "ACT"}


def train_defaults():
    """train.py's config keys and defaults, read from its source (it cannot be imported: it runs)."""
    src = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")).read()
    tree = ast.parse(src)
    first_def = min(n.lineno for n in tree.body if isinstance(n, ast.FunctionDef))
    out = {}
    for n in tree.body:
        if isinstance(n, ast.Assign) and n.lineno < first_def and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name):
            try:
                out[n.targets[0].id] = ast.literal_eval(n.value)
            except ValueError:
                pass
    cuda = torch.cuda.is_available()
    out.update(device="cuda" if cuda else "cpu", compile=False,
               dtype="bfloat16" if cuda and torch.cuda.is_bf16_supported() else "float32")
    return out


# ---- helpers ---------------------------------------------------------------------------------------------------
def row(gate, value, status, threshold="", note=""):
    return dict(gate=gate, value=value, status=status, threshold=threshold, note=note)


def na(gate, why):
    return row(gate, "-", "n/a", "", why)


def grade(x, pass_at, fail_at, higher_better=True):
    if not math.isfinite(x):
        return "FAIL"
    if higher_better:
        return "PASS" if x >= pass_at else ("WARN" if x >= fail_at else "FAIL")
    return "PASS" if x <= pass_at else ("WARN" if x <= fail_at else "FAIL")


def worst(*s):
    for k in ("FAIL", "WARN", "PASS"):
        if k in s:
            return k
    return s[0] if s else "n/a"


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def seed_of(*parts):
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def flat_state(st, prefix=""):
    """Any nested list/dict of tensors -> {path: tensor} (a family's state is opaque to the gates)."""
    out = {}
    if torch.is_tensor(st):
        out[prefix or "state"] = st
    elif isinstance(st, dict):
        for k, v in st.items():
            out.update(flat_state(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(st, (list, tuple)):
        for i, v in enumerate(st):
            out.update(flat_state(v, f"{prefix}.L{i}" if prefix else f"L{i}"))
    return out


class Ctx:
    """Everything a gate reads: the model (eval mode) and how it was made, the data, the run's records."""

    def __init__(self, model, args, cfg, train, val, meta, device="cpu", dtype="float32", seed=0, fresh=False,
                 ckpt=None, ckpt_path=None, metrics=None, baseline="", opts=None, labels=None):
        self.model, self.args, self.cfg, self.meta = model.eval(), args, cfg, meta
        self.train, self.val, self.labels = np.asarray(train), np.asarray(val), labels or {}
        self.V, self.T = int(args["vocab_size"]), int(args["block_size"])
        self.dev, self.seed, self.fresh = torch.device(device), seed, fresh
        self.ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        if self.dev.type == "cpu" and self.ptdtype == torch.float16:
            self.ptdtype = torch.float32
        self.ckpt, self.ckpt_path, self.metrics, self.baseline = ckpt, ckpt_path, metrics, baseline
        self.opts = {**GATE_KEYS, **(opts or {})}
        self.stateful = hasattr(model, "init_state")
        self.horizon = 10 ** 9 if self.stateful else self.T  # tokens the model can see at once
        self.curves, self.cache, self.numbers = {}, {}, {}  # numbers: the headline values, for tables

    def amp(self, dtype=None):
        dt = dtype or self.ptdtype
        return nullcontext() if dt == torch.float32 else torch.autocast(self.dev.type, dtype=dt)

    def gen(self, *tag):
        return np.random.default_rng(seed_of(self.seed, *tag))

    def windows(self, split, n, T, tag):
        data = self.val if split == "val" else self.train
        if len(data) < T + 2:
            raise ValueError(f"the {split} split has {len(data)} tokens, fewer than a window of {T + 1}")
        offs = self.gen(split, tag, n, T).integers(0, len(data) - T - 1, n)
        x, y = prepare.get_windows(data, offs, T)
        return x.to(self.dev), y.to(self.dev)

    def fresh_model(self):
        torch.manual_seed(self.seed)
        return build_model(self.args).to(self.dev)

    def optimizer(self, m, lr=None, wd=None):
        c = self.cfg
        return m.configure_optimizers(c.get("weight_decay", 0.1) if wd is None else wd,
                                      lr or c.get("learning_rate", 1e-3),
                                      (c.get("beta1", 0.9), c.get("beta2", 0.99)), self.dev.type)


def token_losses(model, c, x, y, amp=True):
    with c.amp() if amp else nullcontext():
        logits, _ = model(x)
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=-1,
                           reduction="none").view(y.shape)


@torch.no_grad()
def mean_loss(model, c, x, y, bs=32):
    tot, n = 0.0, 0
    for i in range(0, len(x), bs):
        tl = token_losses(model, c, x[i:i + bs], y[i:i + bs])
        tot += tl.sum().double().item()
        n += (y[i:i + bs] != -1).sum().item()
    return tot / max(n, 1)


@torch.no_grad()
def long_forward(model, c, x, chunk, fn=None, amp=True):
    """Logits of a long sequence: one forward within the horizon, else segments of `chunk` with carried state.
    fn(pos_end, state) is called after each segment (stateful families)."""
    if x.size(1) <= c.horizon and fn is None:
        with c.amp():
            return model(x)[0].float()
    if not c.stateful:
        raise ValueError(f"{x.size(1)} tokens exceed what the model sees ({c.horizon})")
    out, state = [], None
    for s in range(0, x.size(1), chunk):
        with c.amp() if amp else nullcontext():
            logits, _, state = model(x[:, s:s + chunk], state=state, return_state=True)
        out.append(logits.float())
        if fn is not None:
            fn(min(s + chunk, x.size(1)), state)
    return torch.cat(out, 1)


def val_loss(c, tag="base"):
    """Mean val loss on the gates' windows, position 0 unscored (every scored token has >= 1 token of context,
    as the bigram it is compared with)."""
    key = f"val_loss/{tag}"
    if key not in c.cache:
        x, y = c.windows("val", c.opts["n_val_windows"], c.T, "val_loss")
        y = y.clone()
        y[:, 0] = -1
        c.cache[key] = mean_loss(c.model, c, x, y)
    return c.cache[key]


def has_branches(m):
    b = getattr(m, "blocks", None)
    return b is not None and len(b) and hasattr(m, "ablate") and getattr(b[0], "rwkv", None) is not None \
        and getattr(b[0], "mamba", None) is not None


# ---- G: kernels, forward, init, short train, balance -----------------------------------------------------------
def gate_G0(c):
    """Kernels in true fp32 (TF32 off for the duration): the reference comparison is of the kernel, not of TF32."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        return _kernels(c)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def _kernels(c):
    rows, m, dev, tol = [], c.model, c.dev, TH["kernel_rel_err"]
    g = torch.Generator().manual_seed(seed_of(c.seed, "G0"))
    rn = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    blocks = getattr(m, "blocks", None)
    if blocks is not None and getattr(blocks[0], "rwkv", None) is not None:
        import wkv6 as W
        N, B, T, H = blocks[0].rwkv.N, 2, 80, 2
        r, k, v = rn(B, T, H, N) * 0.5, rn(B, T, H, N) * 0.5, rn(B, T, H, N)
        w, u, s0 = -torch.exp(rn(B, T, H, N) * 0.5 - 1.0), rn(H, N) * 0.3, rn(B, H, N, N) * 0.1
        yr, sr = W.wkv6_naive(r, k, v, w, u, s0)
        names = ["torch"] + ([b for b, ok in (("cuda", W._cuda_ok), ("triton", W._triton_ok)) if ok(N)]
                             if dev.type == "cuda" else [])
        for b in names:
            y, s = W.wkv6(*(t.float().to(dev) for t in (r, k, v, w, u)), state=s0.float().to(dev), backend=b)
            e = max(rel(y.cpu(), yr), rel(s.cpu(), sr))
            rows.append(row(f"G0 wkv6/{b}", f"{e:.1e}", "PASS" if e <= tol else "FAIL", f"rel err <= {tol:g}",
                            "vs float64 wkv6_naive, y and final state"))
    if blocks is not None and getattr(blocks[0], "mamba", None) is not None:
        import mamba2
        mb = blocks[0].mamba
        b, L, Hh, P, Ns = 2, 100, mb.nheads, mb.headdim, mb.d_state
        x, dt = rn(b, L, Hh, P), F.softplus(rn(b, L, Hh) - 2)
        A, Bm, Cm, s0 = -torch.exp(rn(Hh) * 0.5), rn(b, L, Ns), rn(b, L, Ns), rn(b, Hh, P, Ns) * 0.1
        yr, sr = mamba2.ssd_naive(x, dt, A, Bm, Cm, s0)
        y, s = mamba2.ssd_chunked(*(t.float().to(dev) for t in (x, dt, A, Bm, Cm)), mb.chunk, s0.float().to(dev))
        e = max(rel(y.cpu(), yr), rel(s.cpu(), sr))
        rows.append(row("G0 ssd/torch", f"{e:.1e}", "PASS" if e <= tol else "FAIL", f"rel err <= {tol:g}",
                        "built-in chunked SSD vs float64 sequential scan"))
        if dev.type == "cuda" and mamba2.resolve_backend("auto", dev) == "mamba_ssm":
            mx = copy.deepcopy(mb).float()
            u = torch.randn(2, 200, mx.d_model, device=dev, generator=torch.Generator(dev).manual_seed(c.seed))
            with torch.no_grad():
                mx.backend = "mamba_ssm"
                a = mx(u)[0]
                mx.backend = "torch"
                bref = mx(u)[0]
            e = rel(a, bref)
            rows.append(row("G0 mamba_ssm", f"{e:.1e}", "PASS" if e <= tol else "FAIL", f"rel err <= {tol:g}",
                            "library mixer vs built-in, the model's layer-0 weights"))
        elif dev.type == "cuda":
            rows.append(na("G0 mamba_ssm", "mamba-ssm not importable here; the built-in SSD runs"))
    if getattr(m, "attention_path", None) is not None:
        q, k, v = (rn(2, 4, 64, 16).float().to(dev) for _ in range(3))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        mask = torch.ones(64, 64, dtype=torch.bool, device=dev).tril()
        ref = ((q.double() @ k.double().transpose(-2, -1)) / 4.0).masked_fill(~mask, float("-inf")).softmax(-1) @ v.double()
        e = rel(a, ref)
        rows.append(row("G0 attention/sdpa", f"{e:.1e}", "PASS" if e <= tol else "FAIL", f"rel err <= {tol:g}",
                        "causal SDPA vs float64 masked softmax"))
    return rows or [na("G0", f"{type(m).__name__} declares no custom kernels")]


@torch.no_grad()
def gate_G1(c):
    x, y = c.windows("val", 4, c.T, "G1")
    with c.amp():
        logits, loss = c.model(x, y)
    ok_shape = tuple(logits.shape) == (4, c.T, c.V)
    finite = bool(torch.isfinite(logits).all()) and loss is not None and math.isfinite(loss.item())
    st = "PASS" if ok_shape and finite else "FAIL"
    return [row("G1", f"loss {loss.item():.4f}, logits {tuple(logits.shape)}", st, "shape [B,T,V], all finite",
                "real val windows" + (" (fresh)" if c.fresh else ""))]


@torch.no_grad()
def gate_G2(c):
    m = c.fresh_model().eval()
    x, _ = c.windows("val", 8, min(c.T, 256), "G2")
    with c.amp():
        logits = m(x)[0].float()
    lp = logits.log_softmax(-1)
    ratio = (-(lp.exp() * lp).sum(-1).mean() / math.log(c.V)).item()
    return [row("G2", f"H/lnV {ratio:.3f}", grade(ratio, TH["g2_entropy_pass"], TH["g2_entropy_fail"]),
                f">= {TH['g2_entropy_pass']} (FAIL < {TH['g2_entropy_fail']})", "fresh weights, real val windows")]


def gate_G3(c):
    m = c.fresh_model().train()
    steps, lr = int(c.opts["g3_steps"]), c.cfg.get("learning_rate", 1e-3)
    opt = c.optimizer(m)
    warm = max(1, min(int(c.cfg.get("warmup_iters", 10)), steps // 5))
    clip = c.cfg.get("grad_clip", 1.0) or float("inf")
    bs, T = int(c.cfg.get("batch_size", 16)), c.T
    losses, norms = [], []
    for it in range(steps):
        for grp in opt.param_groups:
            grp["lr"] = lr * min(1.0, (it + 1) / warm) * grp.get("lr_mult", 1.0)
        offs = prepare.window_offsets(c.seed, it, 0, bs, len(c.train), T)
        x, y = (t.to(c.dev) for t in prepare.get_windows(c.train, offs, T))
        with c.amp():
            _, loss = m(x, y)
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(m.parameters(), clip).item())
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    k = max(3, steps // 10)
    first, last = float(np.mean(losses[:3])), float(np.mean(losses[-k:]))
    drop = (first - last) / first if math.isfinite(first) else float("nan")
    med = float(np.median(norms))
    spike = max([losses[t] / np.mean(losses[max(0, t - 10):t]) for t in range(5, steps)] or [1.0])
    lo, hi = TH["g3_grad_band"]
    st = worst(grade(drop, TH["g3_drop_pass"], TH["g3_drop_fail"]),
               "PASS" if all(map(math.isfinite, norms)) and lo <= med <= hi else ("FAIL" if not math.isfinite(med) else "WARN"),
               "FAIL" if not spike <= TH["spike_ratio"] else "PASS")
    c.curves["G3"] = dict(loss=losses, grad_norm=norms)
    return [row("G3", f"loss {first:.3f}->{last:.3f} ({-drop * 100:+.0f}%), |g| med {med:.2g}, max spike {spike:.2f}x",
                st, f"drop >= {TH['g3_drop_pass']:.0%}, |g| in {lo:g}..{hi:g}, spike <= {TH['spike_ratio']}x",
                f"{steps} steps from fresh weights on real train windows, lr {lr:g}")]


def ablation(c):
    """Val loss of the model, then with each branch's output zeroed (Hybrid.ablate), on the same windows."""
    if "ablation" not in c.cache:
        out = {"base": val_loss(c)}
        for br in ("rwkv", "mamba"):
            with c.model.ablate(br):
                out[br] = val_loss(c, br)
        c.cache["ablation"] = out
    return c.cache["ablation"]


def gate_G4(c):
    m = c.model
    if not has_branches(m):
        return [na("G4", "not a two-branch hybrid")]
    rows = []
    # per-branch gradient norms, one backward on a real train batch (no update)
    x, y = c.windows("train", int(c.cfg.get("batch_size", 16)), c.T, "G4")
    m.zero_grad(set_to_none=True)
    with c.amp():
        loss = m(x, y)[1]
    loss.backward()
    gn = lambda mods: math.sqrt(sum(float(p.grad.float().pow(2).sum()) for md in mods for p in md.parameters()  # noqa: E731
                                    if p.grad is not None))
    gr, gm = gn([b.rwkv for b in m.blocks]), gn([b.mamba for b in m.blocks])
    m.zero_grad(set_to_none=True)
    ratio = gr / max(gm, 1e-30)
    lo, hi = TH["g4_grad_band"]
    rows.append(row("G4 grad R/M", f"{ratio:.3g} ({gr:.2g}/{gm:.2g})", "PASS" if lo <= ratio <= hi else "WARN",
                    f"{lo:g}..{hi:g} (WARN only)", "global grad-norm ratio, one real batch"))
    if c.fresh:
        rows.append(na("G4 ablation", "fresh weights: the RWKV output projection starts at zero, ablation is trivial"))
    else:
        a = ablation(c)
        dr, dm = (a["rwkv"] - a["base"]) / a["base"], (a["mamba"] - a["base"]) / a["base"]
        c.numbers.update(ablate_rwkv_rel=dr, ablate_mamba_rel=dm)
        rows.append(row("G4 ablation", f"val {a['base']:.4f}; -RWKV {dr * 100:+.1f}%, -Mamba {dm * 100:+.1f}%",
                        grade(min(dr, dm), TH["g4_ablate_pass"], TH["g4_ablate_fail"]),
                        f"each >= +{TH['g4_ablate_pass']:.0%} (FAIL < +{TH['g4_ablate_fail']:.1%})",
                        "branch output zeroed in every layer, same val windows"))
    xv, _ = c.windows("val", 8, c.T, "gate")
    layers = m.introspect(xv)["layers"]
    stats, sat = [], False
    for d in layers:
        gt = d.get("gate")
        if gt is None:
            continue
        if isinstance(gt, tuple):  # HY gains (per channel): report the mean of each
            stats.append(f"{gt[0].float().mean().item():.2f}/{gt[1].float().mean().item():.2f}")
            continue
        mu, sd = gt.float().mean().item(), gt.float().std().item() if gt.numel() > 1 else 0.0
        sat |= mu < TH["gate_saturation"] or mu > 1 - TH["gate_saturation"]
        stats.append(f"{mu:.2f}±{sd:.2f}")
    if stats:
        rows.append(row("G4 gate", " ".join(stats), "WARN" if sat else "PASS",
                        f"mean in {TH['gate_saturation']}..{1 - TH['gate_saturation']}", "per layer, over val tokens"))
    return rows


# ---- training-side gates -----------------------------------------------------------------------------------------
def gate_Overfit(c):
    m = copy.deepcopy(c.model).eval()  # eval: no dropout; gradients flow all the same
    T = min(c.T, 64)
    x, y = c.windows("train", 10, T, "overfit")
    opt = c.optimizer(m, lr=c.opts["overfit_lr"], wd=0.0)
    first = loss_v = None
    for step in range(int(c.opts["overfit_steps"])):
        with c.amp():
            _, loss = m(x, y)
        loss_v = loss.item()
        first = loss_v if first is None else first
        if loss_v < TH["overfit_loss"] or not math.isfinite(loss_v):
            break
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    st = "PASS" if loss_v < TH["overfit_loss"] else ("WARN" if loss_v < TH["overfit_warn_frac"] * first else "FAIL")
    return [row("Overfit", f"{first:.3f}->{loss_v:.3f} in {step} steps", st, f"< {TH['overfit_loss']}",
                f"10 train windows of {T}, full batch, a copy of the model" + (" (fresh)" if c.fresh else ""))]


def gate_Baselines(c):
    base = prepare.fit_ngram_baselines(c.train[:50_000_000], c.val[:5_000_000], c.V)
    c.cache["baselines"] = base
    txt = f"uniform {base['uniform']:.3f}, unigram {base['unigram']:.3f}, bigram {base['bigram']:.3f}"
    if c.fresh:
        return [row("Baselines", txt, "n/a", "", "reference only: fresh weights are not expected to beat them")]
    lv = val_loss(c)
    c.numbers.update(val_loss_gates=lv, **{f"{k}_baseline": v for k, v in base.items()})
    st = "PASS" if lv < base["bigram"] else ("WARN" if lv < base["unigram"] else "FAIL")
    return [row("Baselines", f"model {lv:.3f}; {txt}", st, "< bigram (WARN < unigram)", "n-grams fitted on train")]


@torch.no_grad()
def gate_Reeval(c):
    if c.ckpt is None:
        return [na("Reeval", "needs a checkpoint")]
    ck, cfg = c.ckpt, c.cfg
    head = next((r for r in (c.metrics or []) if r["kind"] == "run"), None)
    problems = []
    if ck["data"]["meta_sha256"] != c.meta["meta_sha256"]:
        problems.append("the data's meta.json differs from the one the run used")
    claimed = ck.get("val_loss")
    if claimed is None:
        return [row("Reeval", "checkpoint val_loss is None", "WARN", "", "saved without an eval (signal); cannot check")]
    T, bs = int(cfg["block_size"]), int(cfg["batch_size"])
    n = head["eval_protocol"]["windows"] if head and "eval_protocol" in head else int(cfg["eval_iters"]) * bs
    rec = c.meta.get("records")
    offs = prepare.eval_offsets(cfg["seed"], n, len(c.val), T, rec["length"] if rec else None)
    dt = c.ptdtype
    if c.dev.type == "cuda":
        dt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.get("dtype", "float32")]
    tot, cnt = 0.0, 0
    for i in range(0, len(offs), bs):
        x, y = prepare.get_windows(c.val, offs[i:i + bs], T, c.labels.get("val"))
        x, y = x.to(c.dev), y.to(c.dev)
        with c.amp(dt):
            logits = c.model(x)[0]
        tot += F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1), ignore_index=-1,
                               reduction="sum").double().item()
        cnt += int((y != -1).sum())
    got = tot / cnt
    c.numbers.update(val_loss_reeval=got, val_loss_ckpt=claimed)
    tol = TH["reeval_rel_tol_fp32" if dt == torch.float32 else "reeval_rel_tol_lowp"]
    err = abs(got - claimed) / claimed
    logged = [r["val_loss"] for r in (c.metrics or []) if r["kind"] == "eval" and r["iter"] == ck["iter_num"]]
    if logged and abs(logged[-1] - claimed) > 1e-9 * max(1.0, abs(claimed)):
        problems.append(f"metrics.jsonl says {logged[-1]:.6f} at iter {ck['iter_num']}")
    if err > tol:
        problems.append("recomputed loss differs (stale weights, wrong split or a mis-logged val)")
    return [row("Reeval", f"{got:.5f} vs ckpt {claimed:.5f} (rel {err:.1e})", "FAIL" if problems else "PASS",
                f"rel <= {tol:g}", "; ".join(problems) or f"{len(offs)} run eval windows, seed {cfg['seed']}, {dt}")]


def gate_Resume(c):
    """save -> load gives identical logits and an identical next training step (fp32)."""
    ck = c.ckpt
    if ck is None:  # fresh: the checkpoint train.py would write at iter 0
        torch.manual_seed(c.seed)
        src = build_model(c.args).to(c.dev)  # on the device: a fused (CUDA) AdamW refuses CPU params
        opt0 = c.optimizer(src)
        ck = dict(format_version=FORMAT_VERSION, model_type=c.args["model_type"], model_args=c.args,
                  model=src.state_dict(), ema=None, optimizer=opt0.state_dict(), scaler=None, iter_num=0,
                  tokens_seen=0, best_val_loss=float("inf"), best_iter=-1, config=c.cfg, rng=[], sampler={"iter": 0},
                  data={"dataset": "", "meta_sha256": c.meta.get("meta_sha256", "")}, provenance={}, val_loss=None)
    models = []
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(os.path.join(d, "ckpt.pt"), ck)
        for k in (ck, load_checkpoint(os.path.join(d, "ckpt.pt"))):
            m = model_from_checkpoint(k, c.dev).float()
            opt = c.optimizer(m)
            opt.load_state_dict(k["optimizer"])
            models.append((m, opt))
    x, y = c.windows("train", 4, c.T, "resume")
    out = []
    for m, opt in models:
        m.eval()
        with torch.no_grad():
            lg = m(x)[0].float().clone()
        m.train()
        torch.manual_seed(c.seed)  # the same dropout masks for both
        loss = m(x, y)[1]
        loss.backward()
        opt.step()
        out.append((lg, loss.item(), torch.cat([p.detach().float().flatten() for p in m.parameters()])))
    e_logit, e_param = rel(out[1][0], out[0][0]), rel(out[1][2], out[0][2])
    e_loss = abs(out[1][1] - out[0][1]) / max(abs(out[0][1]), 1e-30)
    e = max(e_logit, e_param, e_loss)
    return [row("Resume", f"logits {e_logit:.1e}, step loss {e_loss:.1e}, params {e_param:.1e}",
                "PASS" if e <= TH["resume_rel_tol"] else "FAIL", f"rel <= {TH['resume_rel_tol']:g}",
                "save_checkpoint -> load_checkpoint -> model_from_checkpoint, optimizer state included")]


def registry():
    """gate name -> function (the state gates live in gates_states.py and the text-side gates in gates_context.py,
    imported here lazily: both import their helpers from this file)."""
    import gates_context as gc
    import gates_states as gs
    found = {**globals(), **vars(gs), **vars(gc)}
    return {name: found[f"gate_{name}"] for name in ORDER}


def run_gates(c, names=None):
    rows, gates = [], registry()
    for name in names or ORDER:
        if c.fresh and name not in FRESH:
            rows.append(na(name, "needs a trained checkpoint (--ckpt)"))
            continue
        if c.meta.get("records") and name in TEXT_GATES:
            rows.append(na(name, "fixed-length record dataset: no running text"))
            continue
        t0 = time.time()
        try:
            out = gates[name](c)
        except Exception as e:  # a gate that crashes is a failure with its reason, not a silent skip
            traceback.print_exc()
            out = [row(name, "error", "FAIL", "", f"{type(e).__name__}: {e}")]
        for r in out:
            r["seconds"] = round(time.time() - t0, 2)
            if c.fresh and r["status"] != "n/a":
                r["note"] = ("fresh weights; " + r["note"]).strip("; ")
        rows.extend(out)
    return rows


# ---- report ----------------------------------------------------------------------------------------------------
def print_table(rows):
    w = max(len(r["gate"]) for r in rows)
    for r in rows:
        val = r["value"] if r["status"] != "n/a" else r["note"]
        print(f"{r['gate']:<{w}}  {r['status']:<4}  {val}" + (f"   [{r['threshold']}]" if r["threshold"] else ""))


def main(argv):
    g = {**train_defaults(), **COMMON_CONFIG, **all_family_configs(), **GATE_KEYS}
    try:
        configure(g, argv)
        if g["summarize"]:
            import glob
            import gates_context
            paths = sorted(p for pat in g["summarize"].split(",") for p in glob.glob(pat))
            if not paths:
                raise ValueError(f"--summarize={g['summarize']} matches no gates.json file")
            print(gates_context.summarize(paths))
            return 0
        names = ORDER if g["gates"] == "all" else [n.strip() for n in g["gates"].split(",") if n.strip()]
        bad = [n for n in names if n not in ORDER]
        if bad:
            raise ConfigError(f"unknown gate(s) {bad}; valid: {', '.join(ORDER)}")
        dev = g["device"]
        ck, metrics = None, None
        if g["ckpt"]:
            ck = load_checkpoint(g["ckpt"])
            cfg, dataset = ck["config"], ck["data"]["dataset"]
            out = g["out"] or os.path.dirname(os.path.abspath(g["ckpt"]))
            mp = os.path.join(os.path.dirname(os.path.abspath(g["ckpt"])), "metrics.jsonl")
            metrics = read_metrics(mp) if os.path.isfile(mp) else None
        else:
            cfg, dataset = {k: g[k] for k in train_defaults()}, g["dataset"]
            out = g["out"] or g["out_dir"]
        data_path = os.path.join(g["data_dir"], dataset)
        meta = prepare.load_meta(data_path)
        train, val = (prepare.open_split(data_path, s, meta) for s in ("train", "val"))
        labels = {s: prepare.open_labels(data_path, s, meta) for s in ("train", "val")} if meta.get("records") else {}
        if ck is not None:
            model = model_from_checkpoint(ck, dev, use_ema=cfg.get("ema", 0) > 0 and ck["ema"] is not None)
            args = dict(ck["model_args"])
        else:
            args = model_args_from(g, meta["vocab_size"], g["block_size"])
            torch.manual_seed(g["seed"])
            model = build_model(args).to(dev)
    except (ConfigError, CheckpointError, prepare.DataError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # no TF32: kernel checks (G0) and the fp32 sensitivity gates (S*, D4) measure true fp32 arithmetic
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    c = Ctx(model, args, cfg, train, val, meta, device=dev, dtype=g["dtype"], seed=g["seed"], fresh=ck is None,
            ckpt=ck, ckpt_path=g["ckpt"] or None, metrics=metrics, baseline=g["baseline"],
            opts={k: g[k] for k in GATE_KEYS}, labels=labels)
    t0 = time.time()
    rows = run_gates(c, names)
    print_table(rows)
    os.makedirs(out, exist_ok=True)
    result = dict(mode="fresh" if c.fresh else "checkpoint", ckpt=os.path.abspath(g["ckpt"]) if g["ckpt"] else None,
                  iter_num=ck["iter_num"] if ck else None, tokens_seen=ck["tokens_seen"] if ck else None,
                  data={"dataset": dataset, "meta_sha256": meta["meta_sha256"]}, seed=g["seed"],
                  run_seed=cfg.get("seed"), model_args=args, baseline=g["baseline"] or None,
                  provenance=provenance(dev), seconds=round(time.time() - t0, 1), thresholds=THRESHOLDS,
                  rows=rows, numbers=c.numbers, curves=c.curves, n_fail=sum(r["status"] == "FAIL" for r in rows))
    with open(os.path.join(out, "gates.json"), "w") as f:
        json.dump(result, f, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    bm = None
    if g["baseline"]:
        bp = os.path.join(os.path.dirname(os.path.abspath(g["baseline"])), "metrics.jsonl")
        bm = read_metrics(bp) if os.path.isfile(bp) else None
    import gates_context
    gates_context.report_png(os.path.join(out, "gates.png"), c, rows, bm)
    print(f"{result['n_fail']} FAIL; wrote {os.path.join(out, 'gates.json')} and gates.png ({result['seconds']} s)")
    return 1 if result["n_fail"] else 0


if __name__ == "__main__":
    sys.modules.setdefault("gates", sys.modules["__main__"])  # gates_context imports this very module, not a copy
    sys.exit(main(sys.argv[1:]))
