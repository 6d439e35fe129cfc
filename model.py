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
    """Draw the next token from logits [B, V] -> [B, 1]. temperature 0 is greedy. Every family uses this."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    if top_p is not None and 0 < top_p < 1:
        sorted_p, order = torch.sort(probs, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the token that crosses it is kept)
        drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    return torch.multinomial(probs, 1, generator=generator)


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


class Attention(nn.Module):
    def __init__(self, a):
        super().__init__()
        assert a["n_embd"] % a["n_head"] == 0, "n_embd must be divisible by n_head"
        self.n_head, self.impl, self.dropout = a["n_head"], a["attn_impl"], a["dropout"]
        self.c_attn = nn.Linear(a["n_embd"], 3 * a["n_embd"], bias=a["bias"])
        self.c_proj = nn.Linear(a["n_embd"], a["n_embd"], bias=a["bias"])
        self.resid_dropout = nn.Dropout(a["dropout"])
        if self.impl not in ("sdpa", "math"):
            raise ValueError(f"attn_impl={self.impl!r}: use sdpa or math")

    def forward(self, x, rope, cache):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        past = 0
        if cache is not None:  # KV cache: append, attend over everything cached so far
            if cache.get("k") is not None:
                past = cache["k"].size(2)
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
            cache["k"], cache["v"] = k, v
        p = self.dropout if self.training else 0.0
        if self.impl == "sdpa" and past == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:  # explicit mask: the math path, and cached decoding where query i sits at position past + i
            S = k.size(2)
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=past)
            if self.impl == "sdpa":
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
            else:
                att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
                att = F.dropout(att.masked_fill(~mask, float("-inf")).softmax(-1), p, self.training)
                y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
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
        h = self.c_fc(x)
        if self.kind == "gelu":
            h = F.gelu(h)
        else:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        return self.dropout(self.c_proj(h))


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


class GPT(nn.Module):
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
        6 N for the matmuls plus 12 L H Q T for attention scores and values (N without the position table)."""
        a = self.a
        n = sum(p.numel() for p in self.parameters()) - (self.transformer.wpe.weight.numel() if "wpe" in self.transformer else 0)
        return 6 * n + 12 * a["n_layer"] * a["n_head"] * (a["n_embd"] // a["n_head"]) * T

    def forward(self, idx, targets=None, *, state=None, return_state=False):
        B, T = idx.shape
        past = state["pos"] if state is not None else 0
        if past + T > self.a["block_size"]:
            raise ValueError(f"sequence of {past + T} tokens exceeds block_size {self.a['block_size']}")
        x = self.transformer.wte(idx)
        rope = None
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(torch.arange(past, past + T, device=idx.device))
        else:
            cos, sin = rope_tables(self.a["n_embd"] // self.a["n_head"], past + T, self.a["rope_base"], idx.device)
            rope = (cos[past:], sin[past:])
        x = self.transformer.drop(x)
        caches = state["layers"] if state is not None else [None] * len(self.transformer.h)
        for block, cache in zip(self.transformer.h, caches):
            x = block(x, rope, cache)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        if return_state:
            if state is None:
                raise ValueError("GPT return_state needs a KV cache: pass state=model.new_cache()")
            state["pos"] = past + T
            return logits, loss, state
        return logits, loss

    def new_cache(self):
        """An empty KV cache for forward(state=..., return_state=True)."""
        return {"pos": 0, "layers": [{} for _ in self.transformer.h]}

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
        step then re-prefills the last block_size tokens (with learned positions a cache cannot slide)."""
        cache, pending = None, idx
        for _ in range(max_new_tokens):
            if cache is None or cache["pos"] + pending.size(1) > self.a["block_size"]:
                cache, pending = self.new_cache(), idx[:, -self.a["block_size"]:]
            logits, _, cache = self(pending, state=cache, return_state=True)
            nxt = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)
            idx = torch.cat((idx, nxt), dim=1)
            pending = nxt
        return idx

    @torch.no_grad()
    def generate_uncached(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None):
        """nanoGPT's generate: re-run the (cropped) prefix each token. The reference generate() is tested against."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.a["block_size"]:])
            idx = torch.cat((idx, sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)), dim=1)
        return idx
