"""Conformance of every registered model family to the model protocol (model.py's docstring)."""
import json

import pytest
import torch

import model as M

V, T = 37, 24


def tiny_args(model_type):
    args = {**M.COMMON_CONFIG, **M.family_config(model_type), "model_type": model_type, "vocab_size": V,
            "block_size": 64, "n_layer": 2, "n_embd": 64, "dropout": 0.0}
    if model_type == "gpt":
        args.update(n_head=4)
    return args


FAMILIES = list(M.FAMILIES)


@pytest.fixture(params=FAMILIES)
def family(request):
    torch.manual_seed(0)
    return request.param, M.build_model(tiny_args(request.param))


def test_forward_shapes_and_loss(family):
    name, m = family
    idx = torch.randint(0, V, (2, T))
    logits, loss = m(idx)
    assert logits.shape == (2, T, V) and loss is None
    tgt = torch.randint(0, V, (2, T))
    logits2, loss = m(idx, tgt)
    assert torch.allclose(logits, logits2)
    assert loss.ndim == 0 and torch.isfinite(loss)
    # a fresh model predicts close to uniform on unrelated targets: loss near ln V (init sanity)
    assert abs(loss.item() - torch.log(torch.tensor(float(V))).item()) < 0.5
    tgt = tgt.clone()
    tgt[:, :T // 2] = -1  # ignore_index=-1: only scored positions count
    _, l_half = m(idx, tgt)
    full = torch.nn.functional.cross_entropy(logits[:, T // 2:].reshape(-1, V), tgt[:, T // 2:].reshape(-1))
    assert torch.allclose(l_half, full, atol=1e-5)


def test_causal(family):
    _, m = family
    m.eval()
    idx = torch.randint(0, V, (1, T))
    a, _ = m(idx)
    idx2 = idx.clone()
    idx2[0, 10] = (idx2[0, 10] + 1) % V
    b, _ = m(idx2)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-5)
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_model_args_roundtrip(family):
    _, m = family
    s = json.dumps(m.model_args)
    m2 = M.build_model(json.loads(s))
    m2.load_state_dict(m.state_dict())
    idx = torch.randint(0, V, (1, T))
    m.eval(), m2.eval()
    assert torch.equal(m(idx)[0], m2(idx)[0])


def test_optimizer_covers_every_param_once(family):
    _, m = family
    opt = m.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(seen) == len(set(seen))
    assert set(seen) == {id(p) for p in m.parameters() if p.requires_grad}
    for g in opt.param_groups:  # vectors (norm gains, biases) never decay
        if any(p.dim() < 2 for p in g["params"]):
            assert g["weight_decay"] == 0.0


def test_counts(family):
    _, m = family
    total = sum(p.numel() for p in m.parameters())
    assert 0 < m.num_params(non_embedding=True) <= m.num_params(non_embedding=False) <= total
    f = m.flops_per_token(T)
    assert f is None or f >= 6 * m.num_params()


def test_generate_deterministic(family):
    _, m = family
    m.eval()
    idx = torch.randint(0, V, (2, 5))
    out1 = m.generate(idx, 12, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(3))
    out2 = m.generate(idx, 12, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(3))
    assert out1.shape == (2, 17) and torch.equal(out1, out2) and torch.equal(out1[:, :5], idx)


def test_gpt_kv_cache_equals_uncached():
    torch.manual_seed(0)
    m = M.build_model({**tiny_args("gpt"), "block_size": 20, "pos_emb": "rope"}).eval()
    idx = torch.randint(0, V, (2, 6))
    for kw in (dict(temperature=0), dict(temperature=1.0, top_p=0.9)):
        a = m.generate(idx, 30, generator=torch.Generator().manual_seed(1), **kw)  # 36 > block_size: slides
        b = m.generate_uncached(idx, 30, generator=torch.Generator().manual_seed(1), **kw)
        assert torch.equal(a, b)
    cache = m.new_cache()  # chunked prefill through the cache == one full forward
    l1, _, cache = m(idx[:, :4], state=cache, return_state=True)
    l2, _, cache = m(idx[:, 4:], state=cache, return_state=True)
    full, _ = m(idx)
    assert torch.allclose(torch.cat([l1, l2], 1), full, atol=1e-5)


@pytest.mark.parametrize("switches", [dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", tie_weights=False),
                                      dict(bias=True, attn_impl="math")])
def test_gpt_switches(switches):
    torch.manual_seed(0)
    m = M.build_model({**tiny_args("gpt"), **switches}).eval()
    idx = torch.randint(0, V, (2, T))
    logits, loss = m(idx, idx)
    assert logits.shape == (2, T, V) and torch.isfinite(loss)
    if switches.get("attn_impl") == "math":  # the explicit-mask path equals SDPA
        m2 = M.build_model({**tiny_args("gpt"), **switches, "attn_impl": "sdpa"}).eval()
        m2.load_state_dict(m.state_dict())
        assert torch.allclose(m2(idx)[0], logits, atol=1e-5)


def test_sample_next():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    assert M.sample_next(logits, temperature=0).item() == 3
    g = torch.Generator().manual_seed(0)
    draws = {M.sample_next(logits, 1.0, top_k=2, generator=g).item() for _ in range(200)}
    assert draws == {2, 3}
    # top_p: p = softmax = [.032, .087, .237, .644]; 0.7 keeps {3, 2} (3 alone is below 0.7)
    draws = {M.sample_next(logits, 1.0, top_p=0.7, generator=g).item() for _ in range(200)}
    assert draws == {2, 3}


def test_unknown_family():
    with pytest.raises(ValueError, match="model_type"):
        M.build_model({"model_type": "nope"})
