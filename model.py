"""The model protocol, and the GPT baseline (nanoGPT's model with modern switches).

Protocol (every family: GPT here, the hybrids in hybrid.py):
  build_model(model_args) -> nn.Module        dispatch on model_args["model_type"] through FAMILIES
  forward(idx, targets=None, *, state=None, return_state=False) -> (logits, loss) or (logits, loss, state)
      logits are always the full [B, T, V] (measurement code needs every position); loss is the mean
      cross-entropy over targets != -1, or None.
  configure_optimizers(weight_decay, learning_rate, betas, device_type) -> AdamW (fused on CUDA); a param
      group may carry "lr_mult" (train.py sets its lr to lr * lr_mult)
  generate(idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None)
  num_params(non_embedding=True);  flops_per_token(T) -> float, or None where no honest formula exists
  model_args: a JSON-serialisable dict the model is rebuilt from.
Optional capabilities, checked with hasattr: init_state(batch_size, device), step(token[B,1], state) (O(1) per
token), introspect(idx), ablate(branch), set_depth(n).

Config keys: COMMON_CONFIG is shared by every family; each family declares its own keys and defaults in one
dict at the top of its file (GPT_CONFIG below, HYBRID_CONFIG in hybrid.py). train.py merges all of them into
its globals before the configurator runs, so family keys are type-checked like any other key.

For the GPT, `state` is the KV cache: forward(idx, state=cache, return_state=True) appends idx's keys and
values to the cache, which is how generate() decodes in O(T) per token instead of re-running the prefix.
"""
import importlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

COMMON_CONFIG = dict(
    model_type="gpt",   # gpt | hybrid  (see FAMILIES)
    n_layer=6,
    n_embd=384,
    dropout=0.0,
)

GPT_CONFIG = dict(
    n_head=6,
    bias=False,         # biases in Linear and LayerNorm (GPT-2 had them; slightly worse and slower without need)
    pos_emb="learned",  # learned | rope
    norm="layernorm",   # layernorm | rmsnorm
    mlp="gelu",         # gelu (4x) | swiglu (hidden 8/3 x, rounded to 64, so the parameter count stays ~equal)
    tie_weights=True,   # share the token embedding with the output head
    attn_impl="sdpa",   # sdpa (PyTorch picks flash / mem-efficient / math) | math (explicit masked softmax)
    rope_base=10000.0,
    causal=True,        # False: bidirectional attention (puzzles: every cell sees every clue); no KV cache, no generate
    # Recursive depth (TRM-style weight sharing; see the "Recursive depth" section below). Off by default. With
    # recursive=True the n_layer blocks are split n_prelude + n_core + n_coda (n_layer must equal their sum).
    recursive=False,
    n_prelude=0,        # blocks applied once to the embedding: x = prelude(embed(idx))
    n_core=2,           # the shared core, applied (rec_n + 1) * rec_T times per supervision step
    n_coda=0,           # blocks applied once to the answer latent y before the head
    rec_n=6,            # z-updates per repetition: z <- core(z + y + x), rec_n times, then y <- core(y + z)
    rec_T=3,            # repetitions per supervision step; the first rec_T - rec_grad_last run under no_grad
    rec_grad_last=1,    # repetitions (at the end) that carry gradient: 1 = TRM; k > 1 = truncated backprop over k
    rec_depth_sampling="fixed",  # fixed | lognormal_poisson (per-batch random repetitions with mean rec_T, LM mode)
    halt_max_steps=1,   # supervision steps per training forward (> 1: deep supervision, latents detached between)
    rec_act=False,      # ACT: a Q-head halts each sequence when it predicts "solved" (bidirectional only)
    halt_explore_prob=0.1,  # ACT exploration: with this prob. a sequence runs at least randint(2, halt_max_steps)
    loss_type="ce",     # ce | stablemax (s(x)=x+1 for x>=0, 1/(1-x) for x<0; float64). Eval in train.py is CE
    grad_checkpoint=False,  # recompute each core block in backward instead of storing its activations
)

# model_type -> (module, config dict name, class name); imported lazily so a family's optional deps stay optional
FAMILIES = {
    "gpt": ("model", "GPT_CONFIG", "GPT"),
    "hybrid": ("hybrid", "HYBRID_CONFIG", "Hybrid"),
}


def family_config(model_type):
    """The family's own config dict (keys and defaults)."""
    if model_type not in FAMILIES:
        raise ValueError(f"unknown model_type {model_type!r}; valid: {', '.join(FAMILIES)}")
    module, cfg, _ = FAMILIES[model_type]
    return getattr(importlib.import_module(module), cfg)


def all_family_configs():
    """Every family's keys merged (train.py's defaults); a family whose module cannot be imported is skipped."""
    merged = {}
    for model_type in FAMILIES:
        try:
            merged.update(family_config(model_type))
        except ImportError:
            pass
    return merged


def model_args_from(g, vocab_size, block_size):
    """The model_args dict for the model_type in globals `g`: common keys + that family's keys."""
    args = {k: g[k] for k in COMMON_CONFIG}
    args.update({k: g[k] for k in family_config(g["model_type"])})
    args.update(vocab_size=int(vocab_size), block_size=int(block_size))
    return args


def build_model(model_args):
    model_type = model_args.get("model_type", "gpt")
    if model_type not in FAMILIES:
        raise ValueError(f"unknown model_type {model_type!r}; valid: {', '.join(FAMILIES)}")
    module, _, cls = FAMILIES[model_type]
    return getattr(importlib.import_module(module), cls)(dict(model_args))


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """Draw the next token from logits [B, V] -> [B, 1]. temperature 0 is greedy. Every family uses this.
    All tensor ops, no device->host sync: decoding on a GPU never waits for the GPU to catch up."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits.float()
    if temperature != 1.0:  # x / 1.0 == x exactly, so skipping it changes no bit and saves a kernel
        logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.size(-1):
        # [:, -1:] (a view), not [:, [-1]]: a Python list index is copied host->device on every call
        kth = torch.topk(logits, top_k).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    if top_p is not None and 0 < top_p < 1:
        sorted_p, order = torch.sort(probs, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the token that crosses it is kept)
        drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    # torch.multinomial(probs, 1, generator=g) draws exactly argmax(probs / E) with E ~ Exp(1) from g (the
    # exponential race), but first validates probs with two .item() calls: two host syncs per token on CUDA.
    # Same draw, same bits, no sync (tests/test_generate_fast.py checks it against torch.multinomial);
    # each generate() checks the logits are finite once, at the end (raise_if_nonfinite).
    e = torch.empty_like(probs).exponential_(1, generator=generator)
    return (probs / e).argmax(-1, keepdim=True)


def raise_if_nonfinite(finite):
    """generate()'s one device->host sync, after the loop: `finite` is the on-device AND of
    torch.isfinite(logits).all() over the steps (sample_next does not validate, torch.multinomial did)."""
    if not finite:
        raise ValueError("generate: the model produced nan/inf logits (bad weights, or fp16/bf16 overflow: "
                         "try dtype=float32); the sampled tokens are meaningless")


def decay_groups(named_params, no_decay_ids, weight_decay):
    """AdamW groups: matrices decay, everything else (biases, norms, vectors) and `no_decay_ids` do not."""
    decay, no_decay = [], []
    for _, p in named_params:
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or id(p) in no_decay_ids else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_adamw(groups, learning_rate, betas, device_type):
    groups = [g for g in groups if g["params"]]
    fused = device_type == "cuda"  # the fused kernel is one launch for all params; CPU has no fused path
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **({"fused": True} if fused else {}))


def mlp_activation(h, kind):
    """The MLP nonlinearity shared by every family: gelu, or swiglu on h = [gate, up] (h twice as wide)."""
    if kind == "gelu":
        return F.gelu(h)
    gate, up = h.chunk(2, dim=-1)
    return F.silu(gate) * up


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5, affine=True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x):
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


def make_norm(kind, dim, bias):
    if kind == "layernorm":
        return nn.LayerNorm(dim, bias=bias)
    if kind == "rmsnorm":
        return RMSNorm(dim)
    raise ValueError(f"norm={kind!r}: use layernorm or rmsnorm")


def rope_tables(head_dim, length, base, device):
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    ang = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv)
    return ang.cos(), ang.sin()


def apply_rope(x, cos, sin):
    # x [B, H, T, D]; rotate pairs (first half, second half) of the head dimension
    d = x.size(-1) // 2
    x1, x2 = x[..., :d].float(), x[..., d:].float()
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.type_as(x)


def rope_cache_tables(head_dim, length, base, device):
    """RoPE tables for the KV-cached path, built once per cache: cos2 = [cos, cos] and sin2 = [-sin, sin], each
    [length, 1, head_dim], so that rotating is x * cos2 + swap_halves(x) * sin2 (4 kernels for q and k together,
    against apply_rope's 7 for each). Every element is the same products and sum as apply_rope's (negation is exact
    and addition commutes), so the cached path's bits match the uncached forward's."""
    cos, sin = rope_tables(head_dim, length, base, device)
    return torch.cat([cos, cos], -1).unsqueeze(1), torch.cat([-sin, sin], -1).unsqueeze(1)


def apply_rope_cached(x, cos2, sin2):
    # x [B, T, n, D] (q and k heads side by side); cos2, sin2 [T, 1, D]
    d = x.size(-1) // 2
    xf = x.float()
    return (xf * cos2 + torch.cat([xf[..., d:], xf[..., :d]], -1) * sin2).type_as(x)


class Attention(nn.Module):
    def __init__(self, a):
        super().__init__()
        assert a["n_embd"] % a["n_head"] == 0, "n_embd must be divisible by n_head"
        self.n_head, self.impl, self.dropout = a["n_head"], a["attn_impl"], a["dropout"]
        self.causal = a.get("causal", True)
        self.c_attn = nn.Linear(a["n_embd"], 3 * a["n_embd"], bias=a["bias"])
        self.c_proj = nn.Linear(a["n_embd"], a["n_embd"], bias=a["bias"])
        self.resid_dropout = nn.Dropout(a["dropout"])
        if self.impl not in ("sdpa", "math"):
            raise ValueError(f"attn_impl={self.impl!r}: use sdpa or math")

    def forward(self, x, rope, cache):
        if cache is not None:
            return self.forward_cached(x, rope, cache)
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if not self.causal:  # bidirectional: every position attends to every position (no cache: the past changes)
            p = self.dropout if self.training else 0.0
            if self.impl == "sdpa":
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
            else:
                att = F.dropout(((q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))).softmax(-1), p, self.training)
                y = att @ v
            return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)))
        y = self.attend(q, k, v, 0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def attend(self, q, k, v, past):
        """Causal attention of T queries at positions past.. over the S = past + T keys k, v [B, H, S, D]."""
        T = q.size(2)
        p = self.dropout if self.training else 0.0
        if self.impl == "sdpa" and past == 0:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        if self.impl == "sdpa" and T == 1:  # one new token attends to the whole cache: no mask to build
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        # explicit mask: the math path, and chunked cached prefill where query i sits at position past + i
        S = k.size(2)
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=past)
        if self.impl == "sdpa":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = F.dropout(att.masked_fill(~mask, float("-inf")).softmax(-1), p, self.training)
        return att @ v

    def forward_cached(self, x, rope, cache):
        """Attention through the KV cache `cache` (one layer's dict from GPT.new_cache): x's keys and values are
        written in place into preallocated [B, H, size, D] buffers at rows n..n+T (n, a Python int, is how many
        rows are filled: no device->host sync), and the queries attend over rows 0..n+T. rope is
        rope_cache_tables' (cos2, sin2) for these positions, or None (learned positions)."""
        if not self.causal:
            raise ValueError("a bidirectional model (causal=False) has no KV cache; call it without state")
        B, T, C = x.shape
        H, D = self.n_head, C // self.n_head
        qkv = self.c_attn(x)
        if rope is not None:  # rotate q and k in one go: [B, T, 2H, D]
            qk = apply_rope_cached(qkv[..., :2 * C].view(B, T, 2 * H, D), *rope)
            q, k = qk[:, :, :H].transpose(1, 2), qk[:, :, H:].transpose(1, 2)
        else:
            q, k = (qkv[..., i * C:(i + 1) * C].view(B, T, H, D).transpose(1, 2) for i in (0, 1))
        v = qkv[..., 2 * C:].view(B, T, H, D).transpose(1, 2)
        past = cache["n"]
        buf = cache.get("k")
        if buf is None or buf.shape[:2] != (B, H) or buf.dtype != k.dtype or buf.device != k.device:
            if past > 0:
                raise ValueError(f"this KV cache holds {past} tokens of batch {buf.size(0)}, {buf.dtype} on {buf.device};"
                                 f" got batch {B}, {k.dtype} on {k.device}: start a new one with model.new_cache()")
            # allocated on first use (batch, dtype and device are known only now), reused for every later token
            cache["k"], cache["v"] = (k.new_empty(B, H, cache["size"], D) for _ in range(2))
        cache["k"][:, :, past:past + T] = k
        cache["v"][:, :, past:past + T] = v
        cache["n"] = past + T
        if past > 0:  # attend over the filled prefix (views into the buffers: no copy)
            k, v = cache["k"][:, :, :past + T], cache["v"][:, :, :past + T]
        y = self.attend(q, k, v, past)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # for T = 1 already contiguous: no copy
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, a):
        super().__init__()
        d, self.kind = a["n_embd"], a["mlp"]
        if self.kind == "gelu":
            self.c_fc = nn.Linear(d, 4 * d, bias=a["bias"])
            self.c_proj = nn.Linear(4 * d, d, bias=a["bias"])
        elif self.kind == "swiglu":
            hidden = (int(8 * d / 3) + 63) // 64 * 64
            self.c_fc = nn.Linear(d, 2 * hidden, bias=a["bias"])
            self.c_proj = nn.Linear(hidden, d, bias=a["bias"])
        else:
            raise ValueError(f"mlp={self.kind!r}: use gelu or swiglu")
        self.dropout = nn.Dropout(a["dropout"])

    def forward(self, x):
        return self.dropout(self.c_proj(mlp_activation(self.c_fc(x), self.kind)))


class Block(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.ln_1 = make_norm(a["norm"], a["n_embd"], a["bias"])
        self.attn = Attention(a)
        self.ln_2 = make_norm(a["norm"], a["n_embd"], a["bias"])
        self.mlp = MLP(a)

    def forward(self, x, rope=None, cache=None):
        x = x + self.attn(self.ln_1(x), rope, cache)
        return x + self.mlp(self.ln_2(x))


# ---------------------------------------------------------------------------------------------- Recursive depth
# recursive=True turns the GPT into a TRM-style weight-shared recursion (notes: shared/notes/anchors.md §C):
#     x = rms(prelude(embed(idx)))                      once per forward
#     repeat rec_T times (the first rec_T - rec_grad_last under no_grad):
#         z = core(z + y + x)   rec_n times             latent reasoning: sees the input
#         y = core(y + z)                               answer update: does not see x
#     logits = head(ln_f(coda(y)))
# core(h) = rms(blocks(h)): the core ends in a parameter-free RMS norm. TRM keeps the latents at unit scale with
# post-norm blocks; our blocks are pre-norm, whose residual stream would grow with every application, so the
# normalisation sits at the core's output instead (and x is normalised too, so x, y, z are all O(1)).
# y and z start from two fixed random vectors (buffers, std 1) broadcast over positions, as in TRM.
#
# Training forward (targets given, model.train()): halt_max_steps supervision steps (deep supervision), the latent
# carry detached between them, each step with its own loss; loss = the mean of the steps' losses. TRM carries
# the latents across optimizer steps instead; here every supervision step of a batch runs inside one forward
# (one backward covers them all: the graphs are disjoint because the carry is detached).
# ACT (rec_act, bidirectional only): after each step a Q-head on the mean of y predicts "this sequence is solved"
# (init weight 0, bias -5); a sequence halts when q > 0 (TRM's no_ACT_continue rule), or at halt_max_steps; with
# probability halt_explore_prob it must first run randint(2, halt_max_steps) steps. Loss per (sequence, step) run =
# the sequence's mean token loss + 0.5 * BCE(q, sequence exactly right), averaged over all (sequence, step) pairs
# run; halted sequences leave the batch. A causal LM cannot halt per sequence (future tokens would choose the
# depth of earlier ones), so causal mode refuses rec_act; it uses a fixed or per-batch random depth instead.
# Inference (no targets, or model.eval()): one chain of set_depth(n) repetitions (default halt_max_steps * rec_T,
# what training ran at the cap; TRM also runs every step at eval), under the ambient grad mode.


def token_losses(logits, targets, kind):
    """Per-position loss [..., T] (0 where targets == -1): cross-entropy, or stable-max cross-entropy in float64
    (Prieto et al. 2025): s(x) = x + 1 (x >= 0), 1 / (1 - x) (x < 0); p_i = s(x_i) / sum_j s(x_j)."""
    valid = targets != -1
    tgt = targets.clamp(min=0)
    if kind == "ce":
        out = F.cross_entropy(logits.float().flatten(0, -2), tgt.flatten(), reduction="none").view(targets.shape)
    else:
        x = logits.double()
        # each branch is evaluated on its own half-line, so the unused branch never divides by zero (a where()
        # over 1/(1-x) at x = 1 would send 0 * inf = nan into the gradient)
        s = torch.where(x >= 0, x.clamp(min=0) + 1, 1 / (1 - x.clamp(max=0)))
        logp = s.log() - s.sum(-1, keepdim=True).log()
        out = -logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1).float()
    return out * valid


class Recursion:
    """The recursive-depth half of GPT (a mixin: GPT's blocks, embedding and head are reused)."""

    def init_recursion(self, a):
        parts = a["n_prelude"] + a["n_core"] + a["n_coda"]
        if a["n_layer"] != parts or a["n_core"] < 1 or min(a["n_prelude"], a["n_coda"]) < 0:
            raise ValueError(f"recursive=True: n_layer ({a['n_layer']}) must equal n_prelude + n_core + n_coda "
                             f"({a['n_prelude']} + {a['n_core']} + {a['n_coda']}) with n_core >= 1; set "
                             f"--n_layer={max(parts, 1)} or change the split")
        for k in ("rec_n", "rec_T", "rec_grad_last", "halt_max_steps"):
            if a[k] < 1:
                raise ValueError(f"{k}={a[k]} must be >= 1")
        if a["rec_depth_sampling"] not in ("fixed", "lognormal_poisson"):
            raise ValueError(f"rec_depth_sampling={a['rec_depth_sampling']!r}: use fixed or lognormal_poisson")
        if a["rec_depth_sampling"] == "lognormal_poisson" and a["rec_T"] < 2:
            raise ValueError("rec_depth_sampling=lognormal_poisson needs rec_T >= 2 (its mean depth)")
        if a["rec_act"] and a["causal"]:
            raise ValueError("rec_act=True needs causal=False: a per-sequence halt in a causal LM lets future tokens "
                             "choose the depth of earlier ones; use rec_depth_sampling for LM mode")
        C, p = a["n_embd"], a["n_prelude"]
        self.prelude = list(self.transformer.h[:p])    # views into transformer.h (plain lists: no new params)
        self.core = list(self.transformer.h[p:p + a["n_core"]])
        self.coda = list(self.transformer.h[p + a["n_core"]:])
        g = torch.Generator().manual_seed(0)  # fixed init vectors: part of the architecture, like TRM's H_init
        # not persistent: rebuilt identically from the seed, and train.py's EMA state dict holds parameters only
        self.register_buffer("y_init", torch.randn(C, generator=g).clamp(-2, 2), persistent=False)
        self.register_buffer("z_init", torch.randn(C, generator=g).clamp(-2, 2), persistent=False)
        if a["rec_act"]:
            self.q_head = nn.Linear(C, 1)
            nn.init.zeros_(self.q_head.weight)   # TRM: "(almost) zero for faster learning during bootstrapping"
            nn.init.constant_(self.q_head.bias, -5.0)
        self.eval_reps = None
        # optional protocol capabilities: only a recursive GPT has them (hasattr() is how callers check)
        self.set_depth, self.effective_depth, self.param_breakdown, self.introspect = \
            self._set_depth, self._effective_depth, self._param_breakdown, self._introspect
        self.last_reps = []  # repetitions run by each supervision step of the last training forward

    # ---- capabilities
    def _set_depth(self, n):
        """Test-time depth: inference runs n repetitions (each rec_n z-updates + 1 y-update); None = default
        (halt_max_steps * rec_T)."""
        if n is not None and (int(n) != n or n < 1):
            raise ValueError(f"set_depth({n!r}): depth must be a positive integer or None")
        self.eval_reps = None if n is None else int(n)

    @torch.no_grad()
    def _introspect(self, idx):
        """What the recursion does on idx at the inference depth: y_delta[r] = |y_r - y_(r-1)| / |y_(r-1)| per
        repetition (does the answer latent converge?); with ACT also q [steps, B] (the Q-head's halting logit after
        each supervision step of rec_T repetitions) and halt_step [B] (the first step with q > 0, else the cap:
        where a training forward would have halted it, without exploration)."""
        a = self.a
        x, rope = self.embed(idx, 0)
        for b in self.prelude:
            x = b(x, rope)
        x = F.rms_norm(x, (x.size(-1),))
        y = self.y_init.to(x.dtype).expand_as(x)
        z = self.z_init.to(x.dtype).expand_as(x)
        deltas, qs = [], []
        for r in range(self.inference_reps()):
            y_prev = y
            y, z = self.recurse(x, y, z, 1, 0, rope)
            deltas.append(((y - y_prev).norm() / y_prev.norm()).item())
            if a["rec_act"] and (r + 1) % a["rec_T"] == 0:
                qs.append(self.q_head(y.mean(1)).squeeze(-1).float())
        out = {"y_delta": torch.tensor(deltas), "reps": self.inference_reps()}
        if qs:
            q = torch.stack(qs)
            fired = torch.cat([q > 0, torch.ones_like(q[:1], dtype=torch.bool)])  # the cap always halts
            out.update(q=q, halt_step=fired.float().argmax(0).clamp(max=len(qs) - 1) + 1)
        return out

    def inference_reps(self):
        return self.eval_reps or self.a["halt_max_steps"] * self.a["rec_T"]

    def _effective_depth(self, reps=None):
        """Blocks applied, in sequence, by one inference forward (reps repetitions; default inference_reps())."""
        a = self.a
        reps = self.inference_reps() if reps is None else reps
        return a["n_prelude"] + a["n_core"] * (a["rec_n"] + 1) * reps + a["n_coda"]

    def block_applications(self):
        return self._effective_depth()

    def _param_breakdown(self):
        a = self.a
        n = lambda blocks: sum(p.numel() for b in blocks for p in b.parameters())
        train_depth = a["halt_max_steps"] * (a["n_core"] * (a["rec_n"] + 1) * a["rec_T"] + a["n_coda"]) + a["n_prelude"]
        return (f"recursive: prelude {a['n_prelude']} blocks {n(self.prelude) / 1e6:.3f}M, core {a['n_core']} blocks "
                f"{n(self.core) / 1e6:.3f}M, coda {a['n_coda']} blocks {n(self.coda) / 1e6:.3f}M; schedule "
                f"(z<-core(z+y+x) x{a['rec_n']}, y<-core(y+z)) x{a['rec_T']} ({a['rec_grad_last']} with grad, "
                f"depth sampling {a['rec_depth_sampling']}) x{a['halt_max_steps']} supervision steps"
                f"{' with ACT' if a['rec_act'] else ''}; effective depth {train_depth} blocks per training forward "
                f"({'at the ACT cap' if a['rec_act'] else 'fixed' if a['rec_depth_sampling'] == 'fixed' else 'mean'}), "
                f"{self._effective_depth()} per inference forward ({self.inference_reps()} repetitions)"
                f"; {'causal' if a['causal'] else 'bidirectional'}, loss {a['loss_type']}")

    def recursive_flops_per_token(self, T):
        """Training FLOPs per token, counted per block application: 6 N (+ 12 H Q T attention) for applications
        that carry gradient, 2 N (+ 4 H Q T) for the no_grad repetitions (forward only). Prelude once; core, coda,
        head and Q-head once per supervision step. ACT: the cap (every sequence runs halt_max_steps steps) -- an
        upper bound. lognormal_poisson depth: its mean rec_T, with rec_grad_last grad repetitions."""
        a = self.a
        n = lambda mods: sum(p.numel() for m in mods for p in m.parameters())
        att = a["n_head"] * (a["n_embd"] // a["n_head"]) * T   # per block application, per unit of 2 (fwd)
        grad_reps = min(a["rec_grad_last"], a["rec_T"])
        nograd_reps = a["rec_T"] - grad_reps
        head = n([self.transformer.ln_f]) + self.lm_head.weight.numel() + (n([self.q_head]) if a["rec_act"] else 0)
        core = (a["rec_n"] + 1) * (grad_reps * (6 * n(self.core) + 12 * att * a["n_core"])
                                   + nograd_reps * (2 * n(self.core) + 4 * att * a["n_core"]))
        step = core + 6 * n(self.coda) + 12 * att * a["n_coda"] + 6 * head
        return float(6 * n(self.prelude) + 12 * att * a["n_prelude"] + a["halt_max_steps"] * step)

    # ---- forward
    def core_step(self, h, rope, caches):
        for b in self.core:
            cache = next(caches) if caches is not None else None
            if self.a["grad_checkpoint"] and self.training and torch.is_grad_enabled() and cache is None:
                h = torch.utils.checkpoint.checkpoint(b, h, rope, None, use_reentrant=False)
            else:
                h = b(h, rope, cache)
        return F.rms_norm(h, (h.size(-1),))

    def recurse(self, x, y, z, reps, grad_reps, rope, caches=None):
        """reps repetitions of the TRM unit; only the last grad_reps build a graph."""
        grad = torch.is_grad_enabled()
        for i in range(reps):
            with torch.set_grad_enabled(grad and i >= reps - grad_reps):
                for _ in range(self.a["rec_n"]):
                    z = self.core_step(z + y + x, rope, caches)
                y = self.core_step(y + z, rope, caches)
        return y, z

    def readout(self, y, rope, caches=None):
        for b in self.coda:
            y = b(y, rope, next(caches) if caches is not None else None)
        return self.lm_head(self.transformer.ln_f(y))

    def train_reps(self):
        """Repetitions for one training supervision step: rec_T, or (LM mode) a per-batch draw from Huginn's
        sampler, 1 + Poisson(LogNormal(mu, 0.5)) with mean rec_T, capped at 3 rec_T to bound time and memory.
        Drawn from the CPU generator, so a resumed run (whose RNG state is restored) draws the same depths."""
        a = self.a
        if a["rec_depth_sampling"] == "fixed":
            return a["rec_T"]
        sigma = 0.5
        mu = math.log(a["rec_T"] - 1) - sigma ** 2 / 2
        lam = torch.exp(mu + sigma * torch.randn(()))
        return int(min(1 + torch.poisson(lam).item(), 3 * a["rec_T"]))

    def recursive_forward(self, idx, targets, state, past):
        a = self.a
        B, T = idx.shape
        if state is not None and len(state["layers"]) != self.block_applications():
            raise ValueError(f"KV cache has {len(state['layers'])} layers but this depth needs "
                             f"{self.block_applications()}; make a new one with model.new_cache() after set_depth()")
        caches = iter(state["layers"]) if state is not None else None
        x, rope = self.embed(idx, past, state)
        for b in self.prelude:
            x = b(x, rope, next(caches) if caches is not None else None)
        x = F.rms_norm(x, (x.size(-1),))
        y = self.y_init.to(x.dtype).expand(B, T, -1)
        z = self.z_init.to(x.dtype).expand(B, T, -1)
        if targets is None or not self.training:
            reps = self.inference_reps()
            y, z = self.recurse(x, y, z, reps, reps, rope, caches)
            logits = self.readout(y, rope, caches)
            return logits, None if targets is None else self.loss_fn(logits, targets)
        if state is not None:
            raise ValueError("a training forward (model.train() with targets) takes no KV cache")
        k, steps = a["rec_grad_last"], a["halt_max_steps"]
        self.last_reps = []
        if not a["rec_act"]:  # deep supervision (or one plain step): every sequence runs every step
            total = 0.0
            for s in range(steps):
                reps = self.train_reps()
                self.last_reps.append(reps)
                y, z = self.recurse(x, y.detach(), z.detach(), reps, min(k, reps), rope)
                logits = self.readout(y, rope)
                total = total + self.loss_fn(logits, targets)
            return logits, total / steps
        # ACT: per-sequence halting; halted sequences leave the batch (their logits are the halting step's)
        rows = torch.arange(B, device=idx.device)
        explore = torch.rand(B) < a["halt_explore_prob"]
        forced = torch.randint(2, steps + 1, (B,)) if steps >= 2 else torch.zeros(B, dtype=torch.long)
        min_steps = torch.where(explore, forced, 0).to(idx.device)
        out = None
        total, count = 0.0, 0
        for s in range(steps):
            reps = self.train_reps()
            self.last_reps.append(reps)
            y, z = self.recurse(x, y.detach(), z.detach(), reps, min(k, reps), rope)
            logits = self.readout(y, rope)
            valid = targets != -1
            seq_loss = token_losses(logits, targets, a["loss_type"]).sum(1) / valid.sum(1).clamp(min=1)
            with torch.no_grad():
                solved = ((logits.argmax(-1) == targets) | ~valid).all(1)
            q = self.q_head(y.mean(1)).squeeze(-1).float()
            bce = F.binary_cross_entropy_with_logits(q, solved.float(), reduction="none")
            total = total + (seq_loss + 0.5 * bce).sum()
            count += rows.numel()
            halt = ((q.detach() > 0) & (min_steps[rows] <= s + 1)) | (s == steps - 1)
            out = logits.new_zeros(B, T, logits.size(-1)) if out is None else out
            out = out.index_put((rows[halt],), logits[halt])
            keep = ~halt
            if not keep.any():
                break
            rows, x, y, z, targets = rows[keep], x[keep], y[keep], z[keep], targets[keep]
        return out, total / count


class GPT(Recursion, nn.Module):
    def __init__(self, model_args):
        super().__init__()
        a = {**COMMON_CONFIG, **GPT_CONFIG, **model_args}
        self.model_args = {k: a[k] for k in ("model_type", "vocab_size", "block_size", *COMMON_CONFIG, *GPT_CONFIG)}
        self.a = a
        if a["pos_emb"] not in ("learned", "rope"):
            raise ValueError(f"pos_emb={a['pos_emb']!r}: use learned or rope")
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(a["vocab_size"], a["n_embd"]),
            drop=nn.Dropout(a["dropout"]),
            h=nn.ModuleList([Block(a) for _ in range(a["n_layer"])]),
            ln_f=make_norm(a["norm"], a["n_embd"], a["bias"]),
        ))
        if a["pos_emb"] == "learned":
            self.transformer["wpe"] = nn.Embedding(a["block_size"], a["n_embd"])
        self.lm_head = nn.Linear(a["n_embd"], a["vocab_size"], bias=False)
        if a["tie_weights"]:
            self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer) so the residual stream's variance stays O(1)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * a["n_layer"]))
        if a["loss_type"] not in ("ce", "stablemax"):
            raise ValueError(f"loss_type={a['loss_type']!r}: use ce or stablemax")
        if a["recursive"]:
            self.init_recursion(a)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding=True):
        """Parameter count. non_embedding drops the position table and, when untied, the input embedding
        (a tied wte is the output head, a real matmul, so it stays)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if "wpe" in self.transformer:
                n -= self.transformer.wpe.weight.numel()
            if not self.a["tie_weights"]:
                n -= self.transformer.wte.weight.numel()
        return n

    def flops_per_token(self, T):
        """Training FLOPs per token (forward + backward), PaLM appendix B as in nanoGPT's estimate_mfu:
        6 N for the matmuls plus 12 L H Q T for attention scores and values (N without the position table).
        Recursive models count every block application (Recursion.recursive_flops_per_token)."""
        a = self.a
        if a["recursive"]:
            return self.recursive_flops_per_token(T)
        n = sum(p.numel() for p in self.parameters()) - (self.transformer.wpe.weight.numel() if "wpe" in self.transformer else 0)
        return 6 * n + 12 * a["n_layer"] * a["n_head"] * (a["n_embd"] // a["n_head"]) * T

    def embed(self, idx, past, state=None):
        """Token (+ learned position) embedding after dropout, and the RoPE tables (or None) for positions past..
        With a KV cache (state), the tables are rope_cache_tables' (cos2, sin2) rows, built once per cache."""
        T = idx.size(1)
        if past + T > self.a["block_size"]:
            raise ValueError(f"sequence of {past + T} tokens exceeds block_size {self.a['block_size']}")
        x = self.transformer.wte(idx)
        rope = None
        if state is not None:  # cached path: slice tables, build no index tensor
            if "wpe" in self.transformer:
                x = x + self.transformer.wpe.weight[past:past + T]
            else:
                if state.get("rope") is None or state["rope"][0].device != idx.device:
                    state["rope"] = rope_cache_tables(self.a["n_embd"] // self.a["n_head"], self.a["block_size"],
                                                      self.a["rope_base"], idx.device)
                rope = (state["rope"][0][past:past + T], state["rope"][1][past:past + T])
        elif "wpe" in self.transformer:
            x = x + self.transformer.wpe(torch.arange(past, past + T, device=idx.device))
        else:
            cos, sin = rope_tables(self.a["n_embd"] // self.a["n_head"], past + T, self.a["rope_base"], idx.device)
            rope = (cos[past:], sin[past:])
        return self.transformer.drop(x), rope

    def loss_fn(self, logits, targets):
        """Mean loss over targets != -1: cross-entropy, or stable-max cross-entropy (loss_type)."""
        if self.a["loss_type"] == "ce":
            return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return token_losses(logits, targets, "stablemax").sum() / (targets != -1).sum()

    def forward(self, idx, targets=None, *, state=None, return_state=False):
        past = state["pos"] if state is not None else 0
        if return_state and state is None:
            raise ValueError("GPT return_state needs a KV cache: pass state=model.new_cache()")
        if self.a["recursive"]:
            logits, loss = self.recursive_forward(idx, targets, state, past)
        else:
            x, rope = self.embed(idx, past, state)
            caches = state["layers"] if state is not None else [None] * len(self.transformer.h)
            for block, cache in zip(self.transformer.h, caches):
                x = block(x, rope, cache)
            logits = self.lm_head(self.transformer.ln_f(x))
            loss = None if targets is None else self.loss_fn(logits, targets)
        if return_state:
            state["pos"] = past + idx.size(1)
            return logits, loss, state
        return logits, loss

    def new_cache(self):
        """An empty KV cache for forward(state=..., return_state=True): per layer (block application) a dict whose
        [B, H, block_size, head_dim] key and value buffers are allocated by the first forward and then written in
        place; "n" (a Python int) counts the filled rows. "pos" is the tokens seen, "rope" the RoPE tables."""
        n = self.block_applications() if self.a["recursive"] else len(self.transformer.h)
        return {"pos": 0, "rope": None, "layers": [{"n": 0, "size": self.a["block_size"]} for _ in range(n)]}

    @staticmethod
    def reset_cache(cache):
        """Empty a KV cache but keep its buffers (no re-allocation)."""
        cache["pos"] = 0
        for layer in cache["layers"]:
            layer["n"] = 0
        return cache

    def crop_block_size(self, block_size):
        """Model surgery: shrink the context (e.g. load a 1024 checkpoint, train at 256)."""
        assert block_size <= self.a["block_size"]
        self.a["block_size"] = self.model_args["block_size"] = block_size
        if "wpe" in self.transformer:
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        groups = decay_groups(self.named_parameters(), set(), weight_decay)
        return make_adamw(groups, learning_rate, betas, device_type)

    def attention_path(self, device_type, dtype):
        """What attention actually runs, for the logs."""
        if self.a["attn_impl"] == "math":
            return "math (explicit masked softmax)"
        hd = self.a["n_embd"] // self.a["n_head"]
        flash_ok = (device_type == "cuda" and dtype in (torch.float16, torch.bfloat16) and hd % 8 == 0
                    and hd <= 256 and torch.backends.cuda.flash_sdp_enabled())
        return "sdpa/flash" if flash_ok else f"sdpa ({'mem-efficient or math' if device_type == 'cuda' else 'cpu'})"

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None):
        """Sample with a KV cache. Once the context exceeds block_size the window slides, as in nanoGPT: each
        step then re-prefills the last block_size tokens (with learned positions a cache cannot slide).
        No device->host sync per token: positions are Python ints, the cache and the output are preallocated and
        written in place, sampling is tensor ops (sample_next). The one sync is the finiteness check at the end."""
        if not self.a["causal"]:
            raise ValueError("generate() needs a causal model; this one was built with causal=False (puzzles)")
        bs, (B, t) = self.a["block_size"], idx.shape
        out = idx.new_empty(B, t + max_new_tokens)
        out[:, :t] = idx
        cache, pending = self.new_cache(), out[:, max(0, t - bs):t]
        finite = torch.ones((), dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            if cache["pos"] + pending.size(1) > bs:  # window full: slide, re-prefill into the same buffers
                pending = out[:, t - bs:t]
                self.reset_cache(cache)
            logits, _, cache = self(pending, state=cache, return_state=True)
            last = logits[:, -1, :]
            finite &= torch.isfinite(last).all()  # on device; read once after the loop
            out[:, t:t + 1] = sample_next(last, temperature, top_k, top_p, generator)
            pending = out[:, t:t + 1]
            t += 1
        raise_if_nonfinite(finite)
        return out

    @torch.no_grad()
    def generate_uncached(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None):
        """nanoGPT's generate: re-run the (cropped) prefix each token. The reference generate() is tested against."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.a["block_size"]:])
            idx = torch.cat((idx, sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)), dim=1)
        return idx
