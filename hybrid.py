"""RWKV-6 (Finch) ∥ Mamba-2 hybrids: every fusion variant and the single-branch baselines, one readable file.

Block (pre-norm, parallel, symmetric: neither branch carries its own residual):
    h = RMSNorm(x);  x = x + drop(fuse(RWKV(h), Mamba(h)));  x = x + drop(FFN(RMSNorm(x)))
Model: x = ln0(emb(idx)) -> blocks -> ln_out -> head. As in RWKV-LM: tiny embedding init (U(±1e-4)) followed by a
norm (ln0), untied head (orthogonal, gain 0.5·sqrt(V/C) if V > C else 0.5).

RWKV branch = RWKV-LM x060 time-mix (notes/rwkv6-wkv6.md §5): token shift, 5-way ddlerp LoRA (order w,k,v,r,g),
data-dependent decay LoRA, bonus u, per-head GroupNorm, SiLU gate; the WKV itself is wkv6.py's operator, called with
the log-decay w = -exp(time_decay + lora) (fp32). Mamba branch = mamba2.Mamba2Mixer (our module, mamba-ssm 2.3 init).
FFN = RWKV channel-mix (default), or a GELU / SwiGLU MLP.

Fusions (a = RWKV output, m = Mamba output, both [B,T,d]):
    HY    g_r ⊙ rms(a) + g_m ⊙ rms(m)       non-affine RMSNorm per branch, per-channel gains init gate_init, 1-gate_init
    GF    g a + (1-g) m, g = σ(W[a;m] + b)  one scalar gate per token, W = 0, b = logit(gate_init), gate_init 0.5
    GF-MH GF with gate_init 0.3 (Mamba-heavy start);  GF-RH  GF with gate_init 0.7 (RWKV-heavy start)
    CP    W[a;m]                             Linear 2d->d, no bias, W = [½I, ½I]
    WS    α a + (1-α) m, α = σ(θ)            one scalar per layer, θ = logit(gate_init) = 0
    RF    a + W_m m                          Linear d->d, no bias, W_m = ½I
    HGF   g ⊙ a + (1-g) ⊙ m, g = σ(W[a;m]+b) per-channel gate Linear 2d->d, W = 0, b = logit(gate_init)
    RWKV / MAMBA  the single branch alone, its width matched to the hybrid's mixer parameters (see _branch_widths)
ablate(branch) zeroes that branch's output before fusion, no renormalisation: HY -> the other gain·rms term; GF/HGF
-> (1-g)·m or g·a with g computed from the zeroed input; CP -> ½ of the other; WS -> α a or (1-α) m; RF -> W_m m
(RWKV ablated) or a (Mamba ablated); single-branch -> the block is FFN only.

State (forward(state=, return_state=True), init_state, step, introspect): a list with one dict per layer:
    wkv [B,H,N,N] fp32, tm_shift [B,C] (RWKV branch);  ssm [B,Hm,P,Nstate] fp32, conv [B,di+2N,d_conv-1] (Mamba);
    cm_shift [B,C] (channel-mix FFN only). Its size does not depend on T.
"""
import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from mamba2 import Mamba2Mixer, describe_backend, no_autocast, resolve_backend
from model import COMMON_CONFIG, RMSNorm, make_adamw, mlp_activation, raise_if_nonfinite, sample_next
from wkv6 import wkv6  # re-exported: hybrid.wkv6 is the operator the time-mix calls

HYBRID_CONFIG = dict(
    fusion="GF-MH",       # HY | GF | GF-MH | GF-RH | CP | WS | RF | HGF | RWKV | MAMBA
    gate_init=None,       # None -> the variant's default (GF/HGF/WS/HY 0.5, GF-MH 0.3, GF-RH 0.7); gated variants only
    rwkv_head_size=64,    # N; RWKV heads = rwkv_dim_att / N
    rwkv_dim_att=0,       # RWKV width; 0 -> n_embd (hybrids) or matched to the hybrid's parameters (fusion=RWKV)
    rwkv_mix_lora=32,     # ddlerp LoRA rank (RWKV-LM D_MIX_LORA)
    rwkv_decay_lora=64,   # decay LoRA rank (RWKV-LM D_DECAY_LORA)
    d_state=64,           # Mamba SSM state size N
    mamba_expand=2,       # Mamba d_inner = mamba_expand * n_embd ...
    mamba_d_inner=0,      # ... unless set; 0 -> as above (hybrids) or matched to the hybrid's parameters (fusion=MAMBA)
    mamba_headdim=64,     # P; Mamba heads = d_inner / P
    d_conv=4,             # Mamba depthwise causal conv width
    ssd_chunk=64,         # chunk length of the SSD scan (built-in and mamba-ssm)
    ffn="cmix",           # cmix (RWKV channel-mix, relu^2) | gelu | swiglu
    ffn_mult=3.5,         # FFN hidden width = int(ffn_mult * n_embd) // 32 * 32
    rwkv_lr_mult=1.0,     # lr multiplier for every parameter of the RWKV time-mix branch
    mamba_lr_mult=1.0,    # lr multiplier for every parameter of the Mamba branch
    wkv_backend="auto",   # passed to wkv6(): auto | cuda | triton | torch (see wkv6.py)
    mamba_backend="auto", # auto (mamba-ssm on CUDA when importable) | mamba_ssm | torch (built-in SSD)
    mamba_conv="shift",   # built-in path's depthwise causal conv: shift (K shifted multiply-adds) | conv1d (F.conv1d)
)

FUSIONS = ("HY", "GF", "GF-MH", "GF-RH", "CP", "WS", "RF", "HGF", "RWKV", "MAMBA")
GATE_DEFAULTS = {"HY": 0.5, "GF": 0.5, "GF-MH": 0.3, "GF-RH": 0.7, "WS": 0.5, "HGF": 0.5}
NORM_EPS = 1e-5


def _up(t):
    """At least fp32 (fp64 stays fp64, so the float64 reference runs of the whole model stay exact)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _no_wd(*params):
    """Mark parameters that AdamW must not decay (read by configure_optimizers; mamba-ssm uses the same flag)."""
    for p in params:
        p._no_weight_decay = True


# ------------------------------------------------------------------------------------------- RWKV-6 time-mix

class RWKVTimeMix(nn.Module):
    """RWKV-LM RWKV_Tmix_x060, with state in/out. C = n_embd, A = dim_att = H * N."""

    def __init__(self, C, A, head_size, layer_id, n_layer, mix_lora=32, decay_lora=64, backend="auto"):
        super().__init__()
        if A % head_size:
            raise ValueError(f"RWKV width {A} is not a multiple of rwkv_head_size={head_size}; "
                             f"change rwkv_dim_att, n_embd or rwkv_head_size")
        self.C, self.A, self.N, self.H, self.backend = C, A, head_size, A // head_size, backend
        self.mix_lora = mix_lora
        # RWKV-LM divides by n_layer - 1; with one layer that layer is the first, so ratio_0_to_1 = 0
        r01 = layer_id / (n_layer - 1) if n_layer > 1 else 0.0
        r1a0 = 1.0 - layer_id / n_layer
        with torch.no_grad():
            ddd = torch.arange(C, dtype=torch.float32) / C
            self.time_maa_x = nn.Parameter(1.0 - ddd.pow(r1a0))
            self.time_maa_w = nn.Parameter(1.0 - ddd.pow(r1a0))
            self.time_maa_k = nn.Parameter(1.0 - ddd.pow(r1a0))
            self.time_maa_v = nn.Parameter(1.0 - (ddd.pow(r1a0) + 0.3 * r01))
            self.time_maa_r = nn.Parameter(1.0 - ddd.pow(0.5 * r1a0))
            self.time_maa_g = nn.Parameter(1.0 - ddd.pow(0.5 * r1a0))
            self.time_maa_w1 = nn.Parameter(torch.zeros(C, 5 * mix_lora))
            self.time_maa_w2 = nn.Parameter(torch.empty(5, mix_lora, C).uniform_(-0.01, 0.01))
            n = torch.arange(A, dtype=torch.float32) / max(A - 1, 1)
            self.time_decay = nn.Parameter(-6.0 + 5.0 * n.pow(0.7 + 1.3 * r01))      # raw w in [-6, -1]
            self.time_decay_w1 = nn.Parameter(torch.zeros(C, decay_lora))
            self.time_decay_w2 = nn.Parameter(torch.empty(decay_lora, A).uniform_(-0.01, 0.01))
            zigzag = ((torch.arange(A) + 1) % 3 - 1).float() * 0.1
            self.time_faaaa = nn.Parameter((r01 * (1.0 - n) + zigzag).view(self.H, head_size))
        _no_wd(self.time_maa_x, self.time_maa_w, self.time_maa_k, self.time_maa_v, self.time_maa_r,
               self.time_maa_g, self.time_maa_w1, self.time_maa_w2, self.time_decay, self.time_decay_w1,
               self.time_decay_w2, self.time_faaaa)
        self.receptance = nn.Linear(C, A, bias=False)
        self.key = nn.Linear(C, A, bias=False)
        self.value = nn.Linear(C, A, bias=False)
        self.gate = nn.Linear(C, A, bias=False)
        self.output = nn.Linear(A, C, bias=False)
        # GroupNorm eps = 1e-5 * head_size_divisor^2 with RWKV-LM's head_size_divisor = 8
        self.ln_x = nn.GroupNorm(self.H, A, eps=64e-5)
        with torch.no_grad():  # RWKV.generate_init_weight (RWKV-LM HEAD)
            nn.init.orthogonal_(self.receptance.weight, gain=1.0)
            nn.init.orthogonal_(self.key.weight, gain=0.1)
            nn.init.orthogonal_(self.value.weight, gain=1.0)
            nn.init.orthogonal_(self.gate.weight, gain=0.1)
            nn.init.zeros_(self.output.weight)
            self.ln_x.weight.fill_(((1 + layer_id) / n_layer) ** 0.7)
        _no_wd(self.ln_x.weight, self.ln_x.bias)

    @staticmethod
    def count_params(C, A, mix_lora=32, decay_lora=64):
        return 6 * C + 10 * mix_lora * C + A + decay_lora * (C + A) + A + 5 * C * A + 2 * A

    def init_state(self, batch_size, device):
        return {"wkv": torch.zeros(batch_size, self.H, self.N, self.N, device=device),
                "tm_shift": torch.zeros(batch_size, self.C, device=device)}

    def step(self, x, state=None):
        """One token, x [B,C] -> (out [B,C], state): forward's computation at T = 1, on [B, ...] rows, with the WKV
        recurrence written out (read r·(S + u k v^T), then S = diag(exp(w)) S + k v^T, in fp32 outside autocast).
        Decoding is bound by per-op overhead (one token, tiny matrices), so: no chunked path and no kernel dispatch,
        the five ddlerp mixes as one op on a stacked [5,B,C] tensor, addcmul/matmul instead of einsum."""
        B, C = x.shape
        H, N = self.H, self.N
        xx = state["tm_shift"].to(x.dtype) - x if state is not None else -x          # x_{t-1} - x_t
        xxx = torch.tanh(torch.addcmul(x, xx, self.time_maa_x) @ self.time_maa_w1)
        m5 = torch.bmm(xxx.view(B, 5, self.mix_lora).transpose(0, 1), self.time_maa_w2)   # [5,B,C]: w,k,v,r,g
        maa = torch.stack([self.time_maa_w, self.time_maa_k, self.time_maa_v, self.time_maa_r, self.time_maa_g])
        xw, xk, xv, xr, xg = torch.addcmul(x, xx, maa[:, None] + m5).unbind(0)
        r, k, v = self.receptance(xr), self.key(xk), self.value(xv)    # under autocast in its dtype, as forward
        g = F.silu(self.gate(xg))
        w = self.time_decay + torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2
        decay = torch.exp(-torch.exp(_up(w))).view(B, H, N, 1)                     # exp(logw), per key row
        dt = torch.promote_types(r.dtype, torch.float32)
        with no_autocast(x.device.type):
            S = state["wkv"].to(dt) if state is not None else x.new_zeros(B, H, N, N, dtype=dt)
            kv = k.to(dt).view(B, H, N, 1) * v.to(dt).view(B, H, 1, N)         # k^T v [B,H,N,N]
            y = r.to(dt).view(B, H, 1, N) @ torch.addcmul(S, self.time_faaaa.to(dt)[:, :, None], kv)
            S = torch.addcmul(kv, decay.to(dt), S)
        y = self.ln_x(y.view(B, self.A).to(r.dtype).to(g.dtype))
        return self.output(y * g), {"wkv": S, "tm_shift": _up(x)}

    def forward(self, x, state=None):
        B, T, C = x.shape
        if T == 1:  # recurrent step (generation, 1-token segments): O(1)
            out, st = self.step(x[:, 0], state)
            return out[:, None], st
        H, N = self.H, self.N
        prev = state["tm_shift"].to(x.dtype)[:, None] if state is not None else x.new_zeros(B, 1, C)
        xx = torch.cat([prev, x[:, :-1]], dim=1) - x                      # x_{t-1} - x_t
        xxx = torch.tanh((x + xx * self.time_maa_x) @ self.time_maa_w1)
        xxx = torch.bmm(xxx.view(B * T, 5, self.mix_lora).transpose(0, 1), self.time_maa_w2)
        mw, mk, mv, mr, mg = xxx.view(5, B, T, C).unbind(0)
        xw = x + xx * (self.time_maa_w + mw)
        xk = x + xx * (self.time_maa_k + mk)
        xv = x + xx * (self.time_maa_v + mv)
        xr = x + xx * (self.time_maa_r + mr)
        xg = x + xx * (self.time_maa_g + mg)
        r = self.receptance(xr).view(B, T, H, N)
        k = self.key(xk).view(B, T, H, N)
        v = self.value(xv).view(B, T, H, N)
        g = F.silu(self.gate(xg))
        w = self.time_decay + torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2
        logw = -torch.exp(_up(w)).view(B, T, H, N)                      # log-decay <= 0 (fp32), what wkv6 takes
        s0 = state["wkv"] if state is not None else None
        y, s1 = wkv6(r, k, v, logw, self.time_faaaa, state=s0, backend=self.backend)
        y = self.ln_x(y.reshape(B * T, self.A).to(g.dtype)).view(B, T, self.A)
        return self.output(y * g), {"wkv": _up(s1), "tm_shift": _up(x[:, -1])}


# ---------------------------------------------------------------------------------------------------- FFNs

class ChannelMix(nn.Module):
    """RWKV-LM RWKV_CMix_x060: token-shifted relu^2 MLP with a sigmoid receptance gate."""

    def __init__(self, C, hidden, layer_id, n_layer):
        super().__init__()
        r1a0 = 1.0 - layer_id / n_layer
        with torch.no_grad():
            ddd = torch.arange(C, dtype=torch.float32) / C
            self.time_maa_k = nn.Parameter(1.0 - ddd.pow(r1a0))
            self.time_maa_r = nn.Parameter(1.0 - ddd.pow(r1a0))
        _no_wd(self.time_maa_k, self.time_maa_r)
        self.key = nn.Linear(C, hidden, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(hidden, C, bias=False)
        with torch.no_grad():
            nn.init.orthogonal_(self.key.weight, gain=1.0)
            nn.init.zeros_(self.receptance.weight)
            nn.init.zeros_(self.value.weight)

    def step(self, x, state=None):
        """One token, x [B,C] -> (out [B,C], state); forward at T = 1 without the concat/slice of the shift."""
        xx = state["cm_shift"].to(x.dtype) - x if state is not None else -x
        k = torch.relu(self.key(torch.addcmul(x, xx, self.time_maa_k))) ** 2
        out = torch.sigmoid(self.receptance(torch.addcmul(x, xx, self.time_maa_r))) * self.value(k)
        return out, {"cm_shift": _up(x)}

    def forward(self, x, state=None):
        prev = state["cm_shift"].to(x.dtype)[:, None] if state is not None else x.new_zeros(x.size(0), 1, x.size(2))
        xx = torch.cat([prev, x[:, :-1]], dim=1) - x
        k = torch.relu(self.key(x + xx * self.time_maa_k)) ** 2
        out = torch.sigmoid(self.receptance(x + xx * self.time_maa_r)) * self.value(k)
        return out, {"cm_shift": _up(x[:, -1])}


class MLP(nn.Module):
    """GELU or SwiGLU MLP (no token shift, no state). Init in RWKV-LM's spirit: orthogonal in, zero out."""

    def __init__(self, C, hidden, kind):
        super().__init__()
        self.kind = kind
        self.fc = nn.Linear(C, hidden * (2 if kind == "swiglu" else 1), bias=False)
        self.proj = nn.Linear(hidden, C, bias=False)
        with torch.no_grad():
            nn.init.orthogonal_(self.fc.weight, gain=1.0)
            nn.init.zeros_(self.proj.weight)

    def forward(self, x, state=None):
        return self.proj(mlp_activation(self.fc(x), self.kind)), {}

    def step(self, x, state=None):
        return self.forward(x)


# -------------------------------------------------------------------------------------------------- fusion

def _logit(p):
    return math.log(p / (1.0 - p))


class Fusion(nn.Module):
    """fuse(a, m) for one variant (table in the module docstring). Every parameter here is exempt from weight
    decay: gates/gains/α are mixing coefficients, and CP/RF's matrices start at a structured ½I that decay would
    pull toward 0 (i.e. toward switching the branches off) rather than toward a prior."""

    def __init__(self, kind, d, gate_init):
        super().__init__()
        self.kind = kind
        if kind == "HY":
            self.rwkv_gain = nn.Parameter(torch.full((d,), gate_init))
            self.mamba_gain = nn.Parameter(torch.full((d,), 1.0 - gate_init))
        elif kind in ("GF", "GF-MH", "GF-RH", "HGF"):
            self.gate = nn.Linear(2 * d, 1 if kind != "HGF" else d, bias=True)
            with torch.no_grad():
                self.gate.weight.zero_()
                self.gate.bias.fill_(_logit(gate_init))
        elif kind == "CP":
            self.proj = nn.Linear(2 * d, d, bias=False)
            with torch.no_grad():
                eye = torch.eye(d)
                self.proj.weight.copy_(torch.cat([0.5 * eye, 0.5 * eye], dim=1))
        elif kind == "WS":
            self.theta = nn.Parameter(torch.full((1,), _logit(gate_init)))
        elif kind == "RF":
            self.proj_m = nn.Linear(d, d, bias=False)
            with torch.no_grad():
                self.proj_m.weight.copy_(0.5 * torch.eye(d))
        _no_wd(*self.parameters())

    @staticmethod
    def count_params(kind, d):
        return {"HY": 2 * d, "GF": 2 * d + 1, "GF-MH": 2 * d + 1, "GF-RH": 2 * d + 1, "HGF": 2 * d * d + d,
                "CP": 2 * d * d, "WS": 1, "RF": d * d, "RWKV": 0, "MAMBA": 0}[kind]

    def forward(self, a, m, collect=None):
        k = self.kind
        if k == "RWKV":
            return a
        if k == "MAMBA":
            return m
        if k == "HY":
            return (self.rwkv_gain * F.rms_norm(a, (a.size(-1),), None, NORM_EPS)
                    + self.mamba_gain * F.rms_norm(m, (m.size(-1),), None, NORM_EPS))
        if k in ("GF", "GF-MH", "GF-RH", "HGF"):
            g = torch.sigmoid(self.gate(torch.cat([a, m], dim=-1)))
            if collect is not None:
                collect["gate"] = g.squeeze(-1) if k != "HGF" else g
            return torch.lerp(m, a, g)                  # g a + (1 - g) m, one op
        if k == "CP":
            return self.proj(torch.cat([a, m], dim=-1))
        if k == "WS":
            alpha = torch.sigmoid(self.theta)
            if collect is not None:
                collect["gate"] = alpha
            return torch.lerp(m, a, alpha)
        return a + self.proj_m(m)  # RF


# --------------------------------------------------------------------------------------------------- block

class Block(nn.Module):
    def __init__(self, a, layer_id, dim_att, d_inner):
        super().__init__()
        C, L, kind = a["n_embd"], a["n_layer"], a["fusion"]
        self.norm1 = RMSNorm(C, eps=NORM_EPS)
        self.rwkv = (RWKVTimeMix(C, dim_att, a["rwkv_head_size"], layer_id, L, a["rwkv_mix_lora"],
                                 a["rwkv_decay_lora"], a["wkv_backend"]) if kind != "MAMBA" else None)
        self.mamba = (Mamba2Mixer(C, d_inner, a["d_state"], a["d_conv"], a["mamba_headdim"], a["ssd_chunk"],
                                  a["mamba_backend"], a["mamba_conv"]) if kind != "RWKV" else None)
        gate_init = a["gate_init"] if a["gate_init"] is not None else GATE_DEFAULTS.get(kind)
        self.fusion = Fusion(kind, C, gate_init)
        self.norm2 = RMSNorm(C, eps=NORM_EPS)
        hidden = int(a["ffn_mult"] * C) // 32 * 32
        self.ffn = ChannelMix(C, hidden, layer_id, L) if a["ffn"] == "cmix" else MLP(C, hidden, a["ffn"])
        self.drop = nn.Dropout(a["dropout"])
        self.ablated = None  # 'rwkv' | 'mamba' | None, set by Hybrid.ablate()

    def forward(self, x, state=None, collect=None):
        """x [B,T,C], or [B,C]: one decoding token through the mixers' step methods (no sequence dimension)."""
        mix = (lambda mod, h: mod.step(h, state)) if x.dim() == 2 else (lambda mod, h: mod(h, state))  # noqa: E731
        h = self.norm1(x)
        new = {}
        a = m = None
        if self.rwkv is not None:
            a, st = mix(self.rwkv, h)
            new.update(st)
            if self.ablated == "rwkv":
                a = torch.zeros_like(a)
        if self.mamba is not None:
            m, st = mix(self.mamba, h)
            new.update(st)
            if self.ablated == "mamba":
                m = torch.zeros_like(m)
        if collect is not None:
            for name, out in (("rwkv_rms", a), ("mamba_rms", m)):
                if out is not None:
                    collect[name] = out.float().pow(2).mean(-1).sqrt()   # [B,T] per-token RMS of the branch output
        x = x + self.drop(self.fusion(a, m, collect))
        f, st = mix(self.ffn, self.norm2(x))
        new.update(st)
        return x + self.drop(f), new


# --------------------------------------------------------------------------------------------------- model

def _branch_widths(a):
    """(RWKV dim_att, Mamba d_inner). Hybrids: n_embd and mamba_expand*n_embd unless set. A single-branch baseline
    with its width left at 0 gets the width (a multiple of its head size) whose mixer parameter count is closest to
    the hybrid's whole mixer (RWKV + Mamba + a GF gate) at the same n_embd, so every model of a preset family has
    ~the same parameters per layer while depth, n_embd and FFN stay identical."""
    C = a["n_embd"]
    dim_att = a["rwkv_dim_att"] or C
    d_inner = a["mamba_d_inner"] or a["mamba_expand"] * C
    if a["fusion"] in ("RWKV", "MAMBA"):
        tm = lambda A: RWKVTimeMix.count_params(C, A, a["rwkv_mix_lora"], a["rwkv_decay_lora"])  # noqa: E731
        mb = lambda D: Mamba2Mixer.count_params(C, D, a["d_state"], a["d_conv"], a["mamba_headdim"])  # noqa: E731
        target = tm(C) + mb(a["mamba_expand"] * C) + Fusion.count_params("GF", C)
        if a["fusion"] == "RWKV" and not a["rwkv_dim_att"]:
            hs = a["rwkv_head_size"]
            dim_att = min((hs * i for i in range(1, 65)), key=lambda A: abs(tm(A) - target))
        if a["fusion"] == "MAMBA" and not a["mamba_d_inner"]:
            ph = a["mamba_headdim"]
            d_inner = min((ph * i for i in range(1, 129)), key=lambda D: abs(mb(D) - target))
    return dim_att, d_inner


def _check_args(a):
    if a["fusion"] not in FUSIONS:
        raise ValueError(f"fusion={a['fusion']!r} is not a variant; use one of {', '.join(FUSIONS)}")
    if a["gate_init"] is not None:
        if a["fusion"] not in GATE_DEFAULTS:
            raise ValueError(f"gate_init={a['gate_init']} has no meaning for fusion={a['fusion']}; "
                             f"leave gate_init=None (it applies to {', '.join(GATE_DEFAULTS)})")
        if not 0.0 < a["gate_init"] < 1.0:
            raise ValueError(f"gate_init={a['gate_init']} must lie strictly between 0 and 1")
    if a["ffn"] not in ("cmix", "gelu", "swiglu"):
        raise ValueError(f"ffn={a['ffn']!r}: use cmix, gelu or swiglu")
    for key in ("n_layer", "n_embd", "vocab_size", "rwkv_head_size", "d_state", "mamba_headdim", "ssd_chunk"):
        if int(a[key]) < 1:
            raise ValueError(f"{key}={a[key]} must be a positive integer")


class Hybrid(nn.Module):
    def __init__(self, model_args):
        super().__init__()
        a = {**COMMON_CONFIG, **HYBRID_CONFIG, **model_args}
        a["model_type"] = "hybrid"
        self.model_args = {k: a[k] for k in ("model_type", "vocab_size", "block_size", *COMMON_CONFIG,
                                             *HYBRID_CONFIG)}
        _check_args(a)
        self.a = a
        C, V = a["n_embd"], a["vocab_size"]
        self.dim_att, self.d_inner = _branch_widths(a)
        self.emb = nn.Embedding(V, C)
        self.ln0 = RMSNorm(C, eps=NORM_EPS)
        self.blocks = nn.ModuleList([Block(a, i, self.dim_att, self.d_inner) for i in range(a["n_layer"])])
        self.ln_out = RMSNorm(C, eps=NORM_EPS)
        self.head = nn.Linear(C, V, bias=False)
        with torch.no_grad():  # RWKV-LM generate_init_weight: small embedding (+ ln0), orthogonal head
            nn.init.uniform_(self.emb.weight, -1e-4, 1e-4)
            nn.init.orthogonal_(self.head.weight, gain=0.5 * math.sqrt(V / C) if V > C else 0.5)
        if torch.cuda.is_available():
            # decide the CUDA paths now, eagerly (import mamba-ssm, load/build the WKV extension): done for the first
            # time inside torch.compile's trace, that work breaks the compiled graph at every layer for good (seen in
            # an H200 profile: ~6 graphs per layer per step; reproduced on CPU with the real mamba-ssm package)
            self.backends("cuda")

    # ---- protocol
    def forward(self, idx, targets=None, *, state=None, return_state=False, _collect=None):
        B, T = idx.shape
        if state is not None:
            self._check_state(state, B)
        x = self.ln0(self.emb(idx))
        states = []
        for i, block in enumerate(self.blocks):
            x, st = block(x, state[i] if state is not None else None,
                          _collect[i] if _collect is not None else None)
            states.append(st)
        logits = self.head(self.ln_out(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return (logits, loss, states) if return_state else (logits, loss)

    def init_state(self, batch_size, device):
        """Zero state (equal to state=None). fp32; shift vectors are cast to the activation dtype when used."""
        out = []
        for blk in self.blocks:
            st = {}
            if blk.rwkv is not None:
                st.update(blk.rwkv.init_state(batch_size, device))
            if blk.mamba is not None:
                st.update(blk.mamba.init_state(batch_size, device))
            if isinstance(blk.ffn, ChannelMix):
                st["cm_shift"] = torch.zeros(batch_size, self.a["n_embd"], device=device)
            out.append(st)
        return out

    def _check_state(self, state, B):
        if len(state) != len(self.blocks):
            raise ValueError(f"state has {len(state)} layers but the model has {len(self.blocks)}; "
                             f"pass the state returned by this model (or model.init_state(B, device))")
        sb = next(iter(state[0].values())).size(0) if state[0] else B
        if sb != B:
            raise ValueError(f"state batch {sb} != input batch {B}; use init_state({B}, device)")

    def step(self, token, state):
        """One token [B,1] -> (logits [B,1,V], state); state None = zeros. O(1) and equal to forward on the same
        token: every block runs its mixers' step methods on [B,C] rows (no sequence dimension, no chunked scan, no
        kernel dispatch), because decoding one token is bound by per-op overhead, not arithmetic. The state passed
        in is not modified (a new list of new tensors comes back), so a caller may branch from an old state."""
        if token.dim() != 2 or token.size(1) != 1:
            raise ValueError(f"step takes one token per row, shape [B, 1]; got {tuple(token.shape)}")
        if state is not None:
            self._check_state(state, token.size(0))
        x = self.ln0(self.emb(token[:, 0]))
        new = []
        for i, block in enumerate(self.blocks):
            x, st = block(x, state[i] if state is not None else None)   # x [B,C]: the blocks' step path
            new.append(st)
        return self.head(self.ln_out(x))[:, None], new

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None,
                 cuda_graph=None):
        """Prefill the prompt with the parallel forward, then one O(1) step per token (no context window).
        cuda_graph: replay step() as one captured CUDA graph per token (DecodeGraph: the same kernels, one launch).
        None (default) = on CUDA: an H200 decoded gf_mh_8m at 1.9 ms per token that way against 15.9 ms eager
        (batch 1, ctx 256; results/2026-12-02_hybrid_generate_run2.json), and the GPU test finds the same logits,
        state and sampled tokens as eager. False = eager step() (bench.py times both)."""
        if cuda_graph is None:
            cuda_graph = idx.device.type == "cuda"
        if cuda_graph and idx.device.type != "cuda":
            raise ValueError(f"cuda_graph decoding needs the model on a CUDA device, it is on {idx.device}; "
                             f"pass cuda_graph=False")
        if max_new_tokens <= 0:
            return idx
        logits, _, state = self(idx, return_state=True)
        logits = logits[:, -1, :]
        graph = DecodeGraph(self, state) if cuda_graph and max_new_tokens > 1 else None
        out = [idx]
        finite = torch.ones((), dtype=torch.bool, device=idx.device)
        for i in range(max_new_tokens):
            finite &= torch.isfinite(logits).all()  # on device; read once after the loop
            nxt = sample_next(logits, temperature, top_k, top_p, generator)
            out.append(nxt)
            if i + 1 < max_new_tokens:
                if graph is not None:
                    logits = graph(nxt)   # the graph's output buffer: read before the next replay
                else:
                    logits, state = self.step(nxt, state)
                logits = logits[:, -1, :]
        raise_if_nonfinite(finite)
        return torch.cat(out, dim=1)   # one concat at the end, not a growing copy per token

    def num_params(self, non_embedding=True):
        """Parameter count; non_embedding drops the input embedding (the untied head is a real matmul, it stays,
        which is model.GPT's convention for a tied head)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.emb.weight.numel() if non_embedding else n

    def flops_per_token(self, T):
        """Training FLOPs per token (fwd + bwd = 3 x fwd), recurrent-form count, independent of T:
        6 x (every matmul weight: Linears incl. head, LoRA matrices), plus 3 x the per-token sequence-mixing work:
        WKV 5 N^2 per RWKV head (read r·(S + u k v^T) 2N^2, update d·S + k v^T 3N^2), SSD 5 P Nstate per Mamba head,
        conv 2 d_conv per conv channel. Norms and elementwise ops are not counted (as in nanoGPT's formula).
        The chunked kernels do more arithmetic than this (intra-chunk quadratic terms); this is the model's work."""
        mm = self.head.weight.numel()
        mix = 0
        for blk in self.blocks:
            mm += sum(m.weight.numel() for m in blk.modules() if isinstance(m, nn.Linear))
            if blk.rwkv is not None:
                r = blk.rwkv
                mm += sum(p.numel() for p in (r.time_maa_w1, r.time_maa_w2, r.time_decay_w1, r.time_decay_w2))
                mix += 5 * r.H * r.N * r.N
            if blk.mamba is not None:
                mb = blk.mamba
                mix += 5 * mb.nheads * mb.headdim * mb.d_state + 2 * mb.d_conv * mb.conv_dim
        return float(6 * mm + 3 * mix)

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """AdamW groups by module membership: the RWKV time-mix modules (lr x rwkv_lr_mult), the Mamba mixers
        (lr x mamba_lr_mult), everything else (lr x 1), each split into decay / no-decay. No decay for: every
        parameter flagged _no_weight_decay (RWKV maa/decay/bonus vectors and their LoRA matrices as in RWKV-LM;
        A_log, D, dt_bias as in mamba-ssm; all fusion gates/gains/maps; GroupNorm) and every < 2-D parameter
        (norm weights, biases). Decay for the remaining matrices, including the embedding and the head, as
        nanoGPT and RWKV-LM both do, so the GPT baseline and the hybrids see the same rule there."""
        rwkv_ids, mamba_ids = set(), set()
        for blk in self.blocks:
            if blk.rwkv is not None:
                rwkv_ids |= {id(p) for p in blk.rwkv.parameters()}
            if blk.mamba is not None:
                mamba_ids |= {id(p) for p in blk.mamba.parameters()}
        groups = {}
        for p in self.parameters():
            if not p.requires_grad:
                continue
            owner = "rwkv" if id(p) in rwkv_ids else "mamba" if id(p) in mamba_ids else "base"
            decay = p.dim() >= 2 and not getattr(p, "_no_weight_decay", False)
            key = (owner, decay)
            if key not in groups:
                groups[key] = {"params": [], "weight_decay": weight_decay if decay else 0.0,
                               "lr_mult": {"rwkv": self.a["rwkv_lr_mult"], "mamba": self.a["mamba_lr_mult"]}
                               .get(owner, 1.0), "name": f"{owner}/{'decay' if decay else 'no_decay'}"}
            groups[key]["params"].append(p)
        return make_adamw(list(groups.values()), learning_rate, betas, device_type)

    def param_breakdown(self):
        return param_breakdown(self)

    def crop_block_size(self, block_size):
        """No positional table: the recurrent model runs at any length; only the recorded block_size changes."""
        self.a["block_size"] = self.model_args["block_size"] = block_size

    # ---- optional capabilities
    def backends(self, device=None, compiled=False):
        """Which WKV and Mamba paths run on `device` (default: where the parameters are), for the logs; `compiled`:
        the forward runs under torch.compile (where mamba_backend 'auto' takes the built-in SSD, see mamba2.py)."""
        device = torch.device(device) if device is not None else self.head.weight.device
        out = {}
        if self.blocks[0].rwkv is not None:
            import wkv6 as _w
            b = self.a["wkv_backend"]
            out["wkv"] = _w.wkv6_backend(device, self.a["rwkv_head_size"]) if b == "auto" else b
        if self.blocks[0].mamba is not None:
            out["mamba"] = describe_backend(resolve_backend(self.a["mamba_backend"], device, compiled),
                                            self.a["mamba_conv"], compiled)
        return out

    @torch.no_grad()
    def introspect(self, idx, state=None):
        """Run the model (same weights, current train/eval mode) and return what it computed:
        {'logits', 'state' (as forward(return_state=True)), 'layers': [per layer: rwkv_wkv [B,H,N,N], rwkv_shift
        [B,C], mamba_ssm [B,H,P,N], mamba_conv [B,di+2N,d_conv-1], cmix_shift, rwkv_rms / mamba_rms [B,T] (branch
        output RMS per token, after ablation if any), gate (GF*: [B,T]; HGF: [B,T,d]; WS: [1]; HY: gains)]}."""
        collect = [{} for _ in self.blocks]
        logits, _, states = self(idx, state=state, return_state=True, _collect=collect)
        names = {"wkv": "rwkv_wkv", "tm_shift": "rwkv_shift", "ssm": "mamba_ssm", "conv": "mamba_conv",
                 "cm_shift": "cmix_shift"}
        layers = []
        for blk, c, st in zip(self.blocks, collect, states):
            d = {names[k]: v for k, v in st.items()}
            d.update(c)
            if blk.fusion.kind == "HY":
                d["gate"] = (blk.fusion.rwkv_gain.detach().clone(), blk.fusion.mamba_gain.detach().clone())
            layers.append(d)
        return {"logits": logits, "state": states, "layers": layers}

    @contextlib.contextmanager
    def ablate(self, branch):
        """Context manager: `with model.ablate('rwkv'): ...` zeroes that branch's output in every layer before the
        fusion (the branch still runs and updates its state). See the module docstring for what each fusion then
        computes. branch: 'rwkv' | 'mamba'."""
        if branch not in ("rwkv", "mamba"):
            raise ValueError(f"ablate({branch!r}): branch must be 'rwkv' or 'mamba'")
        if getattr(self.blocks[0], branch) is None:
            raise ValueError(f"fusion={self.a['fusion']} has no {branch} branch to ablate")
        for blk in self.blocks:
            blk.ablated = branch
        try:
            yield self
        finally:
            for blk in self.blocks:
                blk.ablated = None


class DecodeGraph:
    """Hybrid.step for one batch as a single CUDA graph. Decoding one token runs many small kernels in every layer
    and is bound by their launches, not their arithmetic (eager step(): 15.6-17.0 ms per token for gf_mh_8m at
    batch 1 on an H200, at any context; results/2026-12-02_hybrid_generate.json); a replay launches them all at once
    (1.9 ms per token at batch 1, 2.4 ms at batch 16, ctx 256-8192: ..._generate_run2.json).
    The graph owns static buffers: the input token, the state (a copy of the one passed in) and the logits. Each
    call copies the token in, replays, and returns the logits buffer, which the next call overwrites. Inside the
    graph, step()'s new state is copied over the state buffers after every read of them, so `self.state` is always
    the state after the last token. Captured with autocast's weight-cast cache off (`cache_enabled=False`), so the
    casts are part of the graph and nothing it reads is freed behind it; parameters are read in place, so the graph
    sees weights updated in place. generate() captures one per call (two warm-up steps + one capture)."""

    def __init__(self, model, state, capture=True):
        dev = next(model.parameters()).device
        if capture and (dev.type != "cuda" or not torch.cuda.is_available()):
            raise ValueError(f"cuda_graph decoding needs the model on a CUDA device, it is on {dev}; "
                             f"pass cuda_graph=False")
        B = next(v for st in state for v in st.values()).size(0)
        model._check_state(state, B)
        self.model, self.graph = model, None
        self.token = torch.zeros(B, 1, dtype=torch.long, device=dev)
        self.state = [{k: v.clone() for k, v in st.items()} for st in state]
        if not capture:   # the same body run eagerly per call: the tests check the buffer logic on a CPU with it
            return
        autocast = lambda: torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"),  # noqa: E731
                                          enabled=torch.is_autocast_enabled("cuda"), cache_enabled=False)
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side), autocast():  # warm-up off the capture (cuBLAS handles, workspaces)
            for _ in range(2):
                model.step(self.token, self.state)
        torch.cuda.current_stream(dev).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), autocast():
            self.logits = self._body()

    def _body(self):
        """What the graph runs: one step from the buffers, then the new state copied over them (after every read)."""
        logits, new = self.model.step(self.token, self.state)
        for buf, st in zip(self.state, new):
            for k, v in buf.items():
                v.copy_(st[k])
        return logits

    def __call__(self, token):
        self.token.copy_(token)
        if self.graph is None:
            return self._body()
        self.graph.replay()
        return self.logits


def param_breakdown(model):
    """Per-layer parameter table (train.py prints it at start)."""
    if not isinstance(model, Hybrid):
        n = sum(p.numel() for p in model.parameters())
        return f"{type(model).__name__}: {n:,} parameters ({model.num_params():,} non-embedding)"
    cnt = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0  # noqa: E731
    a = model.a
    head = [f"Hybrid fusion={a['fusion']} n_layer={a['n_layer']} n_embd={a['n_embd']} ffn={a['ffn']}"]
    if model.blocks[0].rwkv is not None:
        head.append(f"RWKV dim_att={model.dim_att} (heads {model.dim_att // a['rwkv_head_size']} x "
                    f"{a['rwkv_head_size']})")
    if model.blocks[0].mamba is not None:
        head.append(f"Mamba d_inner={model.d_inner} (heads {model.d_inner // a['mamba_headdim']} x "
                    f"{a['mamba_headdim']}, d_state {a['d_state']})")
    lines = [" | ".join(head),
             f"{'layer':>5} {'rwkv':>10} {'mamba':>10} {'fusion':>8} {'ffn':>10} {'norms':>6} {'total':>10}"]
    for i, blk in enumerate(model.blocks):
        parts = [cnt(blk.rwkv), cnt(blk.mamba), cnt(blk.fusion), cnt(blk.ffn), cnt(blk.norm1) + cnt(blk.norm2)]
        lines.append(f"{i:>5} {parts[0]:>10,} {parts[1]:>10,} {parts[2]:>8,} {parts[3]:>10,} {parts[4]:>6,} "
                     f"{cnt(blk):>10,}")
    lines.append(f"embedding {cnt(model.emb):,} | head {cnt(model.head):,} | ln0+ln_out "
                 f"{cnt(model.ln0) + cnt(model.ln_out):,} | total {model.num_params(False):,} | "
                 f"non-embedding {model.num_params():,}")
    return "\n".join(lines)
