"""GPT decoding: the preallocated KV cache, the cached RoPE tables and the sync-free sampler against references
(generate_uncached, torch.multinomial, the uncached forward)."""
import pytest
import torch
import torch.nn.functional as F

import model as M

V = 29


def tiny(**kw):
    torch.manual_seed(0)
    args = {**M.COMMON_CONFIG, **M.GPT_CONFIG, "model_type": "gpt", "vocab_size": V, "block_size": 24,
            "n_layer": 2, "n_embd": 32, "n_head": 4, "dropout": 0.0, **kw}
    return M.build_model(args).eval()


def sample_multinomial(logits, temperature, top_k, top_p, generator):
    """The reference sampler: the same filtering, then torch.multinomial (which syncs; sample_next must not)."""
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    if top_p is not None:
        sorted_p, order = torch.sort(probs, descending=True)
        sorted_p = sorted_p.masked_fill((sorted_p.cumsum(-1) - sorted_p) >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    return torch.multinomial(probs, 1, generator=generator)


@pytest.mark.parametrize("kw", [dict(), dict(temperature=0.7), dict(top_k=5), dict(top_p=0.8),
                                dict(top_k=7, top_p=0.6, temperature=1.3), dict(top_k=V + 3)])
def test_sample_next_draws_what_multinomial_draws(kw):
    kw = {"temperature": 1.0, "top_k": None, "top_p": None, **kw}
    logits = torch.randn(4, V, generator=torch.Generator().manual_seed(0)) * 2
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = torch.cat([M.sample_next(logits, generator=g1, **kw) for _ in range(50)], 1)
    b = torch.cat([sample_multinomial(logits, generator=g2, **kw) for _ in range(50)], 1)
    assert a.shape == (4, 50) and torch.equal(a, b)
    assert len(a.unique()) > 1  # it samples, it is not argmax
    if kw["top_k"] is not None and kw["top_k"] < V:  # only the top-k tokens of each row are ever drawn
        allowed = torch.topk(logits, kw["top_k"]).indices
        assert all(set(a[r].tolist()) <= set(allowed[r].tolist()) for r in range(4))


@pytest.mark.parametrize("pos_emb", ["rope", "learned"])
def test_generate_equals_uncached(pos_emb):
    m = tiny(pos_emb=pos_emb)
    idx = torch.randint(0, V, (3, 5), generator=torch.Generator().manual_seed(1))
    cases = [(idx, 12, dict(temperature=0)),                                  # greedy, batch 3
             (idx, 12, dict(temperature=0.8, top_k=6, top_p=0.9)),           # top-k and top-p together
             (idx[:, :1].repeat(1, 24 - 7), 7, dict(temperature=1.0)),       # prompt = block_size - new tokens
             (idx[:1], 26, dict(temperature=1.0, top_p=0.95))]               # 31 > block_size: the window slides
    for prompt, n, kw in cases:
        a = m.generate(prompt, n, generator=torch.Generator().manual_seed(2), **kw)
        b = m.generate_uncached(prompt, n, generator=torch.Generator().manual_seed(2), **kw)
        assert a.shape == (prompt.size(0), prompt.size(1) + n) and torch.equal(a, b), (pos_emb, kw)


@pytest.mark.parametrize("pos_emb", ["rope", "learned"])
def test_cache_written_in_place_and_matches_forward(pos_emb):
    m = tiny(pos_emb=pos_emb)
    idx = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(3))
    full, _ = m(idx)
    cache = m.new_cache()
    logits, _, cache = m(idx[:, :6], state=cache, return_state=True)     # prefill
    layer = cache["layers"][0]
    assert layer["k"].shape == (2, 4, 24, 8) and layer["n"] == 6 and cache["pos"] == 6
    ptrs = [(c["k"].data_ptr(), c["v"].data_ptr()) for c in cache["layers"]]
    outs = [logits]
    for t in range(6, 20):                                                # decode one token at a time
        logits, _, cache = m(idx[:, t:t + 1], state=cache, return_state=True)
        outs.append(logits)
    assert [(c["k"].data_ptr(), c["v"].data_ptr()) for c in cache["layers"]] == ptrs  # no re-allocation
    assert cache["pos"] == 20 and layer["n"] == 20
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-5, atol=1e-5)
    # the cached RoPE tables are the uncached ones, bit for bit
    if pos_emb == "rope":
        cos, sin = M.rope_tables(8, 24, m.a["rope_base"], "cpu")
        assert torch.equal(cache["rope"][0][:, 0, :4], cos) and torch.equal(cache["rope"][1][:, 0, 4:], sin)
        q = torch.randn(2, 3, 4, 8, dtype=torch.float64).float()
        ref = M.apply_rope(q.transpose(1, 2), cos[5:8], sin[5:8]).transpose(1, 2)
        assert torch.equal(M.apply_rope_cached(q, cache["rope"][0][5:8], cache["rope"][1][5:8]), ref)
    M.GPT.reset_cache(cache)                                              # slide: same buffers, refilled
    again, _, cache = m(idx[:, 10:], state=cache, return_state=True)
    assert [(c["k"].data_ptr(), c["v"].data_ptr()) for c in cache["layers"]] == ptrs
    torch.testing.assert_close(again, m(idx[:, 10:])[0], rtol=0, atol=0)


def test_cache_misuse_and_nonfinite_logits_are_errors():
    m = tiny(pos_emb="rope")
    cache = m.new_cache()
    m(torch.zeros(2, 3, dtype=torch.long), state=cache, return_state=True)
    with pytest.raises(ValueError, match="new_cache"):  # a different batch cannot continue this cache
        m(torch.zeros(3, 1, dtype=torch.long), state=cache, return_state=True)
    with torch.no_grad():
        m.lm_head.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="nan/inf logits"):
        m.generate(torch.zeros(1, 2, dtype=torch.long), 3)


@pytest.mark.gpu
def test_decode_has_no_host_sync_on_cuda():
    m = tiny(pos_emb="rope").cuda()
    idx = torch.randint(0, V, (2, 5), device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    cache = m.new_cache()
    with torch.no_grad():
        logits, _, cache = m(idx, state=cache, return_state=True)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # any device->host sync below raises
        try:
            for _ in range(4):
                nxt = M.sample_next(logits[:, -1, :], 0.9, 5, 0.9, g)
                logits, _, cache = m(nxt, state=cache, return_state=True)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert cache["pos"] == 9
