"""Test doubles for tests/test_gates.py: small models that implement the model protocol with a KNOWN property,
so a gate can be shown to pass on one and fail on the other. Registered as families with monkeypatch in the tests
(model.FAMILIES["gates_unigram"] = ("gates_doubles", "UNIGRAM_CONFIG", "Unigram")), so build_model, checkpoints
and model_from_checkpoint work on them exactly as on the real families.
"""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from model import COMMON_CONFIG, make_adamw, sample_next

UNIGRAM_CONFIG = dict(
    init_peak=0.0,       # > 0: the init puts this logit on token 0 (a saturated init, G2 must FAIL)
    random_buffer=False, # a non-persistent random buffer added to the logits: lost by save/load (Resume must FAIL)
    halting="none",      # none | constant | varied: halting_steps() for the ACT gate
)
ORACLE_CONFIG = dict(oracle_match=3, oracle_confidence=8.0)


class _Base(nn.Module):
    def _setup(self, model_args, defaults):
        a = {**COMMON_CONFIG, **defaults, **model_args}
        self.model_args = {k: a[k] for k in ("model_type", "vocab_size", "block_size", *COMMON_CONFIG, *defaults)}
        self.a = a
        self.bias = nn.Parameter(torch.zeros(a["vocab_size"]))

    def _out(self, logits, targets, state, return_state):
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return (logits, loss, state) if return_state else (logits, loss)

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        return make_adamw([{"params": [self.bias], "weight_decay": 0.0}], learning_rate, betas, device_type)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None):
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.a["block_size"]:])[0][:, -1]
            idx = torch.cat([idx, sample_next(logits, temperature, top_k, top_p, generator)], 1)
        return idx

    def num_params(self, non_embedding=True):
        return self.bias.numel()

    def flops_per_token(self, T):
        return None

    def fit_unigram(self, tokens):
        """Set the bias to the add-1/2 log unigram of `tokens` (the 'trained' context-blind model)."""
        counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=self.a["vocab_size"]) + 0.5
        with torch.no_grad():
            self.bias.copy_(torch.as_tensor(np.log(counts / counts.sum()), dtype=torch.float32))
        return self


class Unigram(_Base):
    """Context-blind: the same distribution at every position, whatever came before."""

    def __init__(self, model_args):
        super().__init__()
        self._setup(model_args, UNIGRAM_CONFIG)
        with torch.no_grad():
            self.bias[0] = self.a["init_peak"]
        if self.a["random_buffer"]:
            self.register_buffer("noise", torch.randn(self.a["vocab_size"]), persistent=False)

    def forward(self, idx, targets=None, *, state=None, return_state=False):
        logits = self.bias.expand(*idx.shape, -1)
        if self.a["random_buffer"]:
            logits = logits + self.noise
        return self._out(logits, targets, state, return_state)

    def halting_steps(self, idx):
        if self.a["halting"] == "constant":
            return torch.full(idx.shape, 3)
        return (idx % 4) + 1


class CopyOracle(_Base):
    """Perfect copier (an induction head): where the last `oracle_match` tokens occurred before, predict the token
    that followed their most recent occurrence with logit +confidence over the unigram bias."""

    def __init__(self, model_args):
        super().__init__()
        self._setup(model_args, ORACLE_CONFIG)

    def forward(self, idx, targets=None, *, state=None, return_state=False):
        B, T = idx.shape
        k = self.a["oracle_match"]
        eq = idx[:, :, None] == idx[:, None, :]                      # [B, t, j]
        match = torch.ones_like(eq)
        for s in range(k):                                            # idx[t-s] == idx[j-s] for s < k
            shifted = torch.zeros_like(eq)
            shifted[:, s:, s:] = eq[:, :T - s, :T - s]
            match &= shifted
        match &= torch.ones(T, T, dtype=torch.bool, device=idx.device).tril(-1)
        score = match * torch.arange(1, T + 1, device=idx.device)
        best = score.max(-1)
        nxt = idx.gather(1, (best.indices + 1).clamp(max=T - 1))
        logits = self.bias.expand(B, T, -1).clone()
        logits.scatter_add_(-1, nxt[..., None], (best.values > 0).float()[..., None] * self.a["oracle_confidence"])
        return self._out(logits, targets, state, return_state)


def log_v(v):
    return math.log(v)
