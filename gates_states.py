"""State and dynamics gates (S0-S4, D1-D4) on a stateful checkpoint: every state is the real recurrent state of the
checkpoint's own weights (introspect / forward with return_state), never an untrained copy's. Split from gates.py
by concern (file size); thresholds, Ctx and helpers live there (gates.THRESHOLDS), the registry finds these gates.
"""
import math

import numpy as np
import torch

from gates import TH, ablation, flat_state, grade, has_branches, long_forward, na, rel, row


# ---- S / D: states of the real weights ---------------------------------------------------------------------------
@torch.no_grad()
def states(c):
    if "states" not in c.cache:
        T = min(c.T, 256)
        xa, _ = c.windows("val", 16, T, "S-a")
        xb, _ = c.windows("val", 16, T, "S-b")
        run = lambda x: {k: v.float().clone() for k, v in flat_state(c.model(x, return_state=True)[2]).items()}  # noqa: E731
        c.cache["states"] = dict(a=run(xa), a2=run(xa), b=run(xb), half=run(xa[:, :T // 2]),
                                 init=flat_state(c.model.init_state(16, c.dev)))
    return c.cache["states"]


@torch.no_grad()
def long_states(c):
    """State RMS per component along one long real input (carried state in 64-token segments)."""
    if "long" not in c.cache:
        L = min(int(c.opts["long_len"]), len(c.val) - 2)
        x, _ = c.windows("val", 2, L, "long")
        marks = {p: None for p in [64 * 2 ** i for i in range(20) if 64 * 2 ** i <= L]}
        traj = {}

        def note(pos, st):
            if pos in marks:
                for k, v in flat_state(st).items():
                    traj.setdefault(k, []).append((pos, v.float().pow(2).mean().sqrt().item()))
        long_forward(c.model, c, x, 64, note)
        c.cache["long"] = traj
        c.curves["D1"] = {k: v for k, v in traj.items()}
    return c.cache["long"]


def stateful_only(fn):
    def wrapped(c):
        if not c.stateful:
            return [na(fn.__name__[5:], f"{type(c.model).__name__} has no recurrent state (init_state)")]
        return fn(c)
    wrapped.__name__ = fn.__name__
    return wrapped


@stateful_only
def gate_S0(c):
    s = states(c)
    same = set(s["a"]) == set(s["init"]) == set(s["half"]) and all(
        s["a"][k].shape == s["init"][k].shape == s["half"][k].shape for k in s["a"])
    nbytes = sum(v.numel() * 4 for v in s["a"].values()) // 16
    return [row("S0", f"{len(s['a'])} tensors, {nbytes / 1024:.1f} KiB/sequence", "PASS" if same else "FAIL",
                "shapes = init_state's, independent of T", "states of the real weights on val text")]


@stateful_only
def gate_S1(c):
    traj = long_states(c)
    mx = max(r for v in traj.values() for _, r in v)
    L = max(p for v in traj.values() for p, _ in v)
    st = "PASS" if math.isfinite(mx) and mx <= TH["s1_rms_max"] else "FAIL"
    return [row("S1", f"max RMS {mx:.3g} over {L} tokens", st, f"finite, RMS <= {TH['s1_rms_max']:g}",
                "carried state, real val text")]


@stateful_only
def gate_S2(c):
    s = states(c)
    d = {k: ((s["a"][k] - s["b"][k]).norm() / (s["a"][k].norm() + s["b"][k].norm()).clamp_min(1e-30)).item()
         for k in s["a"]}
    k = min(d, key=d.get)
    return [row("S2", f"min rel diff {d[k]:.2g} ({k})", grade(d[k], TH["s2_rel_diff_pass"], TH["s2_rel_diff_fail"]),
                f">= {TH['s2_rel_diff_pass']:g} (FAIL < {TH['s2_rel_diff_fail']:g})", "two sets of val windows")]


@stateful_only
def gate_S3(c):
    s = states(c)
    e = max(rel(s["a2"][k], s["a"][k]) if s["a"][k].norm() > 0 else s["a2"][k].abs().max().item() for k in s["a"])
    return [row("S3", f"max rel diff {e:.1e}", "PASS" if e <= TH["s3_rel_tol"] else "FAIL",
                f"<= {TH['s3_rel_tol']:g}", "same input twice")]


@stateful_only
def gate_S4(c):
    s = states(c)["a"]
    groups = {}
    for k, v in s.items():
        groups.setdefault(k.split(".")[-1], []).append(v.pow(2).mean().item())
    rms = {g: math.sqrt(np.mean(v)) for g, v in groups.items()}
    dead = [g for g, r in rms.items() if not (math.isfinite(r) and r > 0)]
    return [row("S4", " ".join(f"{g} {r:.3g}" for g, r in rms.items()), "FAIL" if dead else "PASS",
                "every component finite and non-zero", "RMS per state component, side by side"
                + (f"; dead: {dead}" if dead else ""))]


@stateful_only
def gate_D1(c):
    if c.fresh:
        return [na("D1", "needs trained weights")]
    traj = long_states(c)
    worst_k, worst_r, growth = None, 0.0, 0.0
    for k, v in traj.items():
        if len(v) < 2 or v[0][1] <= 0:
            continue
        r = v[-1][1] / max(v[-2][1], 1e-30)
        growth = max(growth, v[-1][1] / v[0][1])
        if r > worst_r:
            worst_k, worst_r = k, r
    if worst_k is None:
        return [na("D1", "input too short for two doublings from 64 tokens")]
    return [row("D1", f"last doubling x{worst_r:.2f} ({worst_k}), 64->{v[-1][0]} x{growth:.2f}",
                grade(worst_r, TH["d1_doubling_warn"], TH["d1_doubling_fail"], higher_better=False),
                f"<= {TH['d1_doubling_warn']} per doubling (FAIL > {TH['d1_doubling_fail']})", "state RMS growth")]


@stateful_only
def gate_D2(c):
    if c.fresh:
        return [na("D2", "needs trained weights")]
    s = states(c)["a"]
    spread = {k: (v.std(0).mean() / v.pow(2).mean().sqrt().clamp_min(1e-30)).item() for k, v in s.items()}
    k = min(spread, key=spread.get)
    return [row("D2", f"min spread {spread[k]:.2g} ({k})", grade(spread[k], TH["d2_spread_pass"], TH["d2_spread_fail"]),
                f">= {TH['d2_spread_pass']:g} (FAIL < {TH['d2_spread_fail']:g})", "per-dim std across 16 inputs / RMS")]


def gate_D3(c):
    if not has_branches(c.model):
        return [na("D3", "not a two-branch hybrid")]
    if c.fresh:
        return [na("D3", "needs trained weights")]
    a = ablation(c)
    dr, dm = max(a["rwkv"] - a["base"], 0.0), max(a["mamba"] - a["base"], 0.0)
    share = min(dr, dm) / (dr + dm) if dr + dm > 0 else 0.0
    return [row("D3", f"RWKV {dr / max(dr + dm, 1e-30):.0%} / Mamba {dm / max(dr + dm, 1e-30):.0%} of ablation damage",
                grade(share, TH["d3_share_pass"], TH["d3_share_fail"]),
                f"weaker >= {TH['d3_share_pass']:.0%} (FAIL < {TH['d3_share_fail']:.0%})", "ablation share, not norm share")]


@torch.no_grad()
def gate_D4(c):
    if c.fresh:
        return [na("D4", "needs trained weights")]
    L = min(int(c.opts["long_len"]), c.horizon - 1, len(c.val) - 3)
    x, _ = c.windows("val", 4, L + 1, "D4")
    shift = torch.as_tensor(c.gen("D4-tok").integers(1, c.V, 4), device=c.dev)
    ds = [d for d in [2 ** i for i in range(20)] if d <= L]
    sens = {}
    for d in ds:  # one fixed context of L+1 tokens; the token d positions before the last one is changed
        xp = x.clone()
        xp[:, L - d] = (xp[:, L - d] + shift) % c.V
        lg = _fp32_last_logits(c, torch.cat([x, xp]))
        a, b = lg[:4], lg[4:]
        sens[d] = ((a - b).norm(dim=-1) / a.norm(dim=-1).clamp_min(1e-30)).mean().item()
    c.curves["D4"] = sens
    reach = max([d for d, s in sens.items() if s >= TH["d4_reach"]] or [0])
    return [row("D4", f"d=1: {sens[1]:.3g}, reach {reach} (max d {ds[-1]})", "PASS" if sens[1] >= TH["d4_d1_min"] else "FAIL",
                f"d=1 >= {TH['d4_d1_min']:g}; reach: >= {TH['d4_reach']:g}", "rel change of final logits, fp32")]


def _fp32_last_logits(c, x):
    if x.size(1) <= c.horizon and (not c.stateful or x.size(1) <= 4 * c.T):
        return c.model(x)[0][:, -1].float()
    return long_forward(c.model, c, x, c.T, fn=lambda *_: None, amp=False)[:, -1]
