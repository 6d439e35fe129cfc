"""hybrid.py / mamba2.py: SSD against a float64 scan, published inits, every fusion's initial values, stateful
equivalences (segments, step-by-step, introspect), ablation, causality, optimizer groups, preset sizes.
CPU tests use tiny shapes; the GPU test compares mamba-ssm's ops with the built-in SSD on the same weights."""
import math
import os

import pytest
import torch

import hybrid
import mamba2
from hybrid import FUSIONS, Hybrid
from mamba2 import Mamba2Mixer, segsum, ssd_chunked, ssd_naive
from model import COMMON_CONFIG, all_family_configs, build_model, model_args_from

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HYBRIDS = [f for f in FUSIONS if f not in ("RWKV", "MAMBA")]
TINY = dict(model_type="hybrid", vocab_size=23, block_size=64, n_layer=2, n_embd=32, dropout=0.0,
            rwkv_head_size=16, rwkv_mix_lora=8, rwkv_decay_lora=16, d_state=8, mamba_headdim=16, ssd_chunk=8,
            ffn_mult=2.0)


def tiny(fusion="GF-MH", seed=0, perturb=True, **kw):
    """A tiny model; perturb=True adds noise to every parameter so no path hides behind a zero init
    (zero output projections, zero LoRAs, zero gates would make many equivalences trivially true)."""
    torch.manual_seed(seed)
    m = build_model({**TINY, "fusion": fusion, **kw})
    if perturb:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return m.eval()


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


# ------------------------------------------------------------------------------------------------ SSD

def test_segsum_definition():
    x = torch.randn(2, 6, dtype=torch.float64)
    s = segsum(x)
    for i in range(6):
        for j in range(6):
            want = x[:, j + 1:i + 1].sum(-1) if i >= j else torch.full((2,), float("-inf"), dtype=x.dtype)
            assert torch.equal(s[:, i, j], want) or torch.allclose(s[:, i, j], want, atol=1e-14)


@pytest.mark.parametrize("loop_max", [16, 0])   # the inter-chunk recurrence as a loop (c <= 16) and as a matmul
@pytest.mark.parametrize("l,with_state", [(37, True), (37, False), (16, True), (5, True)])
def test_ssd_chunked_matches_naive_scan_fp64(l, with_state, loop_max, monkeypatch):
    import mamba2
    monkeypatch.setattr(mamba2, "SCAN_LOOP_MAX_CHUNKS", loop_max)
    g = torch.Generator().manual_seed(l)
    b, h, p, n, chunk = 2, 3, 4, 5, 8
    x = torch.randn(b, l, h, p, dtype=torch.float64, generator=g).requires_grad_()
    dt = torch.nn.functional.softplus(torch.randn(b, l, h, dtype=torch.float64, generator=g)).requires_grad_()
    A = (-torch.rand(h, dtype=torch.float64, generator=g) * 4 - 0.1).requires_grad_()
    B = torch.randn(b, l, n, dtype=torch.float64, generator=g).requires_grad_()
    C = torch.randn(b, l, n, dtype=torch.float64, generator=g).requires_grad_()
    s0 = torch.randn(b, h, p, n, dtype=torch.float64, generator=g).requires_grad_() if with_state else None
    gy = torch.randn(b, l, h, p, dtype=torch.float64, generator=g)
    gs = torch.randn(b, h, p, n, dtype=torch.float64, generator=g)
    ins = [x, dt, A, B, C] + ([s0] if with_state else [])
    outs = {}
    for name, fn in (("chunked", lambda: ssd_chunked(x, dt, A, B, C, chunk, s0)),
                     ("naive", lambda: ssd_naive(x, dt, A, B, C, s0))):
        y, s = fn()
        grads = torch.autograd.grad((y * gy).sum() + (s * gs).sum(), ins)
        outs[name] = (y, s, grads)
    yc, sc, gc = outs["chunked"]
    yn, sn, gn = outs["naive"]
    assert yc.shape == (b, l, h, p) and sc.shape == (b, h, p, n)
    assert rel(yc, yn) < 1e-12 and rel(sc, sn) < 1e-12
    for a_, b_ in zip(gc, gn):
        assert rel(a_, b_) < 1e-10


def test_ssd_gradients_stay_fp32_under_compile_and_autocast():
    """ssd_chunked runs its scan in fp32 with autocast off; torch.compile must keep the backward in fp32 too (by
    default it traces the backward under the ambient bf16 autocast: 3e-3 gradient error; mamba2 sets
    backward_pass_autocast='off'). Compiled under CPU bf16 autocast (aot_eager: the backward graph is AOTAutograd's,
    the same one inductor compiles), every gradient is within fp32 rounding of the float64 naive scan; with the
    default setting the same check fails at 3.8e-3."""
    import torch._functorch.config as fc
    assert fc.backward_pass_autocast == "off"
    g = torch.Generator().manual_seed(11)
    b, l, h, p, n = 1, 64, 2, 8, 8
    x = torch.randn(b, l, h, p, generator=g).requires_grad_()
    dt = torch.nn.functional.softplus(torch.randn(b, l, h, generator=g)).requires_grad_()
    A = (-torch.rand(h, generator=g) * 4 - 0.1).requires_grad_()
    B, C = (torch.randn(b, l, n, generator=g).requires_grad_() for _ in range(2))
    gy, gs = torch.randn(b, l, h, p, generator=g), torch.randn(b, h, p, n, generator=g)
    ins = (x, dt, A, B, C)
    yn, sn = ssd_naive(*(t.double() for t in ins))
    want = torch.autograd.grad((yn * gy.double()).sum() + (sn * gs.double()).sum(), ins)
    torch._dynamo.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, s = torch.compile(ssd_chunked, backend="aot_eager")(*ins, 16)   # AOTAutograd traces the backward
    got = torch.autograd.grad((y * gy).sum() + (s * gs).sum(), ins)
    assert y.dtype == torch.float32 and rel(y.double(), yn) < 1e-5
    for a_, b_ in zip(got, want):
        assert rel(a_.double(), b_) < 1e-5


def test_ssd_strong_decay_is_finite():
    # dt*A down to -200 per step: the chunked form must not form positive exponents (no inf/nan)
    b, l, h, p, n = 1, 24, 2, 3, 4
    x, B, C = torch.randn(b, l, h, p), torch.randn(b, l, n), torch.randn(b, l, n)
    dt = torch.full((b, l, h), 20.0)
    A = torch.tensor([-10.0, -0.01])
    y, s = ssd_chunked(x, dt, A, B, C, 8)
    yn, sn = ssd_naive(x.double(), dt.double(), A.double(), B.double(), C.double())
    assert torch.isfinite(y).all() and rel(y.double(), yn) < 1e-5 and rel(s.double(), sn) < 1e-5


# ------------------------------------------------------------------------------------------ initialisation

def _fusion_expect(kind, d, gate_init):
    eye = torch.eye(d)
    if kind in ("CP", "RF", "RWKV", "MAMBA"):
        return {"CP": {"proj.weight": torch.cat([0.5 * eye, 0.5 * eye], 1)}, "RF": {"proj_m.weight": 0.5 * eye},
                "RWKV": {}, "MAMBA": {}}[kind]
    logit = math.log(gate_init / (1 - gate_init))
    return {
        "HY": {"rwkv_gain": torch.full((d,), gate_init), "mamba_gain": torch.full((d,), 1 - gate_init)},
        "GF": {"gate.weight": torch.zeros(1, 2 * d), "gate.bias": torch.full((1,), logit)},
        "GF-MH": {"gate.weight": torch.zeros(1, 2 * d), "gate.bias": torch.full((1,), logit)},
        "GF-RH": {"gate.weight": torch.zeros(1, 2 * d), "gate.bias": torch.full((1,), logit)},
        "HGF": {"gate.weight": torch.zeros(d, 2 * d), "gate.bias": torch.full((d,), logit)},
        "WS": {"theta": torch.full((1,), logit)},
    }[kind]


@pytest.mark.parametrize("fusion", FUSIONS)
def test_fusion_initial_values_through_build_and_optimizer(fusion):
    """Build as train.py does (model_args_from -> build_model -> .to -> configure_optimizers) and check every
    fusion parameter's initial value exactly (no later init may overwrite it)."""
    g = {**COMMON_CONFIG, **all_family_configs(), **TINY, "fusion": fusion}
    torch.manual_seed(0)
    m = build_model(model_args_from(g, TINY["vocab_size"], TINY["block_size"])).to("cpu")
    m.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    default = {"HY": 0.5, "GF": 0.5, "GF-MH": 0.3, "GF-RH": 0.7, "HGF": 0.5, "WS": 0.5}.get(fusion)
    want = _fusion_expect(fusion, TINY["n_embd"], default)
    for blk in m.blocks:
        got = dict(blk.fusion.named_parameters())
        assert set(got) == set(want)
        for name, val in want.items():
            assert torch.allclose(got[name].detach(), val, atol=1e-7), (fusion, name)
        assert (blk.rwkv is None) == (fusion == "MAMBA") and (blk.mamba is None) == (fusion == "RWKV")
    if fusion in ("GF", "HGF", "WS", "HY"):  # an explicit gate_init reaches the parameter
        m2 = build_model({**TINY, "fusion": fusion, "gate_init": 0.2})
        want2 = _fusion_expect(fusion, TINY["n_embd"], 0.2)
        for name, val in want2.items():
            assert torch.allclose(dict(m2.blocks[1].fusion.named_parameters())[name].detach(), val, atol=1e-7)


def test_rwkv_published_init():
    L, C = 3, 64
    torch.manual_seed(0)
    m = build_model({**TINY, "n_layer": L, "n_embd": C, "rwkv_head_size": 16, "fusion": "GF"})
    A = m.dim_att
    ddd = torch.arange(C) / C
    n = torch.arange(A) / (A - 1)
    for i, blk in enumerate(m.blocks):
        r, r01, r1a0 = blk.rwkv, i / (L - 1), 1 - i / L
        assert torch.allclose(r.time_maa_x, 1 - ddd ** r1a0) and torch.allclose(r.time_maa_k, 1 - ddd ** r1a0)
        assert torch.allclose(r.time_maa_v, 1 - (ddd ** r1a0 + 0.3 * r01))
        assert torch.allclose(r.time_maa_g, 1 - ddd ** (0.5 * r1a0))
        assert torch.allclose(r.time_decay, -6 + 5 * n ** (0.7 + 1.3 * r01), atol=1e-6)
        assert abs(r.time_decay[0].item() + 6) < 1e-6 and abs(r.time_decay[-1].item() + 1) < 1e-6
        zig = ((torch.arange(A) + 1) % 3 - 1) * 0.1
        assert torch.allclose(r.time_faaaa.flatten(), r01 * (1 - n) + zig, atol=1e-6)
        for z in (r.time_maa_w1, r.time_decay_w1, r.output.weight, blk.ffn.value.weight, blk.ffn.receptance.weight):
            assert torch.count_nonzero(z) == 0
        for u in (r.time_maa_w2, r.time_decay_w2):
            assert u.abs().max() <= 0.01 and u.abs().max() > 0.005
        for lin, gain in ((r.receptance, 1.0), (r.key, 0.1), (r.value, 1.0), (r.gate, 0.1), (blk.ffn.key, 1.0)):
            W = lin.weight.detach()
            G = W @ W.T if W.shape[0] <= W.shape[1] else W.T @ W
            assert torch.allclose(G, gain ** 2 * torch.eye(G.shape[0]), atol=1e-5)
        assert torch.allclose(r.ln_x.weight, torch.full((A,), ((1 + i) / L) ** 0.7))
        assert torch.allclose(blk.ffn.time_maa_k, 1 - ddd ** r1a0)
    assert m.emb.weight.abs().max() <= 1e-4
    W = m.head.weight.detach()  # orthogonal, gain 0.5 (V < C)
    assert torch.allclose(W @ W.T, 0.25 * torch.eye(W.shape[0]), atol=1e-5)
    # one layer: RWKV-LM's layer_id/(n_layer-1) would divide by zero; we take ratio_0_to_1 = 0
    one = build_model({**TINY, "n_layer": 1})
    assert all(torch.isfinite(p).all() for p in one.parameters())
    assert torch.allclose(one.blocks[0].rwkv.time_decay, -6 + 5 * (torch.arange(32) / 31) ** 0.7, atol=1e-6)


def test_mamba_published_init():
    torch.manual_seed(0)
    mx = Mamba2Mixer(d_model=16, d_inner=2048, d_state=8, d_conv=4, headdim=4, chunk=8)  # 512 heads: statistics
    A = torch.exp(mx.A_log.detach())
    dt = torch.nn.functional.softplus(mx.dt_bias.detach())
    assert A.min() >= 1 and A.max() <= 16 and abs(A.mean().item() - 8.5) < 0.6
    assert dt.min() >= mamba2.DT_MIN * 0.999 and dt.max() <= mamba2.DT_MAX * 1.001
    mid = (math.log(mamba2.DT_MIN) + math.log(mamba2.DT_MAX)) / 2   # log-uniform dt
    assert abs(dt.log().mean().item() - mid) < 0.25
    assert torch.equal(mx.D.detach(), torch.ones(512)) and torch.equal(mx.norm.weight.detach(), torch.ones(2048))
    assert mx.in_proj.weight.shape == (2 * 2048 + 2 * 8 + 512, 16) and mx.conv1d.weight.shape == (2048 + 16, 1, 4)
    for W, fan_in in ((mx.in_proj.weight, 16), (mx.out_proj.weight, 2048), (mx.conv1d.weight, 4), (mx.conv1d.bias, 4)):
        bound = 1 / math.sqrt(fan_in)   # PyTorch's default kaiming-uniform(a=sqrt 5) = U(-1/sqrt(fan_in), ..)
        assert W.abs().max() <= bound and W.abs().max() > 0.9 * bound
    assert sum(p.numel() for p in mx.parameters()) == Mamba2Mixer.count_params(16, 2048, 8, 4, 4)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_param_counts_match_formulas(fusion):
    m = build_model({**TINY, "fusion": fusion})
    blk, C = m.blocks[0], TINY["n_embd"]
    if blk.rwkv is not None:
        assert sum(p.numel() for p in blk.rwkv.parameters()) == hybrid.RWKVTimeMix.count_params(C, m.dim_att, 8, 16)
    assert sum(p.numel() for p in blk.fusion.parameters()) == hybrid.Fusion.count_params(fusion, C)
    text = m.param_breakdown()
    assert f"non-embedding {m.num_params():,}" in text and len(text.splitlines()) == 2 + TINY["n_layer"] + 1


# -------------------------------------------------------------- branches vs independent float64 references

def _rwkv_reference(tm, x):
    """RWKV-LM RWKV_Tmix_x060.forward, transcribed (ZeroPad time shift, 5-way LoRA, wkv6_naive), float64."""
    from wkv6 import wkv6_naive
    B, T, C = x.shape
    xx = torch.nn.ZeroPad2d((0, 0, 1, -1))(x) - x
    xxx = x + xx * tm.time_maa_x
    xxx = torch.tanh(xxx @ tm.time_maa_w1).view(B * T, 5, -1).transpose(0, 1)
    xxx = torch.bmm(xxx, tm.time_maa_w2).view(5, B, T, C)
    mw, mk, mv, mr, mg = xxx.unbind(dim=0)
    xw, xk, xv = x + xx * (tm.time_maa_w + mw), x + xx * (tm.time_maa_k + mk), x + xx * (tm.time_maa_v + mv)
    xr, xg = x + xx * (tm.time_maa_r + mr), x + xx * (tm.time_maa_g + mg)
    r, k, v = tm.receptance(xr), tm.key(xk), tm.value(xv)
    g = torch.nn.functional.silu(tm.gate(xg))
    w = tm.time_decay + torch.tanh(xw @ tm.time_decay_w1) @ tm.time_decay_w2
    H, N = tm.H, tm.N
    y, _ = wkv6_naive(*(t.view(B, T, H, N) for t in (r, k, v)), -torch.exp(w).view(B, T, H, N), tm.time_faaaa)
    y = tm.ln_x(y.reshape(B * T, -1)).view(B, T, -1)
    return tm.output(y * g)


def _mamba_reference(mx, u):
    """mamba-ssm Mamba2 forward (use_mem_eff_path=False, no causal_conv1d) transcribed, float64, sequential scan."""
    F_ = torch.nn.functional
    B, T, _ = u.shape
    z, xBC, dt = mx.in_proj(u).split([mx.d_inner, mx.d_inner + 2 * mx.d_state, mx.nheads], dim=-1)
    xBC = F_.silu(F_.conv1d(xBC.transpose(1, 2), mx.conv1d.weight, mx.conv1d.bias, padding=mx.d_conv - 1,
                            groups=xBC.size(-1))[..., :T].transpose(1, 2))
    x, Bm, Cm = xBC.split([mx.d_inner, mx.d_state, mx.d_state], dim=-1)
    dt = F_.softplus(dt + mx.dt_bias)
    x = x.reshape(B, T, mx.nheads, mx.headdim)
    y, _ = ssd_naive(x, dt, -torch.exp(mx.A_log), Bm, Cm)
    y = (y + mx.D[:, None] * x).reshape(B, T, -1)
    y = y * F_.silu(z)
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-5) * mx.norm.weight
    return mx.out_proj(y)


@pytest.mark.parametrize("mamba_conv", ["conv1d", "shift"])
def test_branches_match_transcribed_references_fp64(mamba_conv):
    m = tiny("GF", seed=3, mamba_conv=mamba_conv).double()
    x = torch.randn(2, 19, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        for blk in m.blocks:
            a, _ = blk.rwkv(x)
            assert rel(a, _rwkv_reference(blk.rwkv, x)) < 1e-10
            b, _ = blk.mamba(x)
            assert rel(b, _mamba_reference(blk.mamba, x)) < 1e-10


def test_shift_conv_equals_conv1d_with_state_and_grads_fp64():
    """mamba_conv='shift' (K shifted multiply-adds) is F.conv1d's correlation: the same outputs, carried conv
    windows and parameter / input gradients in float64, over two segments (the second starts from the first's
    state, T = 7 and 12: shorter and longer than the window)."""
    x = torch.randn(2, 19, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    outs = []
    for conv in ("conv1d", "shift"):
        mx = tiny("GF", seed=8, mamba_conv=conv).double().blocks[0].mamba
        xi = x.clone().requires_grad_()
        a, st = mx(xi[:, :7])
        b, st2 = mx(xi[:, 7:], st)
        (a.square().sum() + b.sin().sum() + st2["conv"].sum() + st2["ssm"].sum()).backward()
        outs.append((torch.cat([a, b], 1), st2["conv"], st2["ssm"], xi.grad, mx.conv1d.weight.grad, mx.conv1d.bias.grad))
    for u, v in zip(*outs):
        assert rel(u, v) < 1e-12
    with pytest.raises(ValueError, match="mamba_conv='fft': use conv1d or shift"):
        tiny("GF", mamba_conv="fft")


def test_whole_model_step_equals_forward_fp64():
    m = tiny("HGF", seed=4).double()
    idx = torch.randint(0, 23, (2, 17), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full, _ = m(idx)
        st, steps = None, []
        for t in range(17):
            lo, _, st = m(idx[:, t:t + 1], state=st, return_state=True)
            steps.append(lo)
    assert rel(torch.cat(steps, 1), full) < 1e-11


# ------------------------------------------------------------------------------------------ stateful use

def _states_close(sa, sb, **tol):
    assert len(sa) == len(sb)
    for a_, b_ in zip(sa, sb):
        assert set(a_) == set(b_)
        for k in a_:
            torch.testing.assert_close(a_[k].float(), b_[k].float(), **tol)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_segments_with_carried_state_equal_whole(fusion):
    m = tiny(fusion)
    idx = torch.randint(0, 23, (2, 29), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full, _, s_full = m(idx, return_state=True)
        parts, st = [], None
        for a, b in ((0, 11), (11, 12), (12, 29)):   # includes a 1-token segment (the recurrent path)
            lo, _, st = m(idx[:, a:b], state=st, return_state=True)
            parts.append(lo)
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-4, atol=2e-5)
    _states_close(st, s_full, rtol=1e-4, atol=2e-5)
    _states_close(m.init_state(2, "cpu"), [{k: torch.zeros_like(v) for k, v in s.items()} for s in s_full])


@pytest.mark.parametrize("fusion", FUSIONS)
def test_step_by_step_equals_parallel_forward(fusion):
    m = tiny(fusion, seed=1)
    idx = torch.randint(0, 23, (3, 20), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full, _ = m(idx)
        st, steps = m.init_state(3, "cpu"), []
        for t in range(idx.size(1)):
            lo, st = m.step(idx[:, t:t + 1], st)
            steps.append(lo)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=2e-5)


def test_state_size_independent_of_T():
    m = tiny("GF-MH")
    sizes = set()
    with torch.no_grad():
        for T in (1, 7, 33):
            _, _, st = m(torch.zeros(2, T, dtype=torch.long), return_state=True)
            sizes.add(tuple((k, tuple(v.shape)) for s in st for k, v in sorted(s.items())))
    assert len(sizes) == 1
    shapes = dict(next(iter(sizes))[:5])
    assert shapes["wkv"] == (2, 2, 16, 16) and shapes["ssm"] == (2, 4, 16, 8) and shapes["conv"] == (2, 64 + 16, 3)


def test_state_gradient_flows_through_carried_state():
    """Truncated BPTT needs the carried-in state to be differentiable (train.py detaches it between windows)."""
    m = tiny("GF")
    idx = torch.randint(0, 23, (2, 9))
    st = [{k: v.clone().requires_grad_() for k, v in s.items()} for s in m.init_state(2, "cpu")]
    _, loss = m(idx, idx, state=st)
    loss.backward()
    for s in st:
        for k, v in s.items():
            assert v.grad is not None and torch.isfinite(v.grad).all(), k


@pytest.mark.parametrize("fusion", ["GF-MH", "HGF", "WS", "HY", "RWKV"])
def test_introspect_returns_the_real_state(fusion):
    m = tiny(fusion)
    idx = torch.randint(0, 23, (2, 13))
    with torch.no_grad():
        logits, _, st = m(idx, return_state=True)
    out = m.introspect(idx)
    torch.testing.assert_close(out["logits"], logits, rtol=0, atol=0)
    _states_close(out["state"], st, rtol=0, atol=0)
    for lay, s in zip(out["layers"], st):
        if "wkv" in s:
            assert torch.equal(lay["rwkv_wkv"], s["wkv"]) and lay["rwkv_wkv"].shape == (2, m.dim_att // 16, 16, 16)
            assert lay["rwkv_rms"].shape == (2, 13) and (lay["rwkv_rms"] > 0).all()
        if "ssm" in s:
            assert torch.equal(lay["mamba_ssm"], s["ssm"]) and torch.equal(lay["mamba_conv"], s["conv"])
        if fusion in ("GF-MH", "HGF"):
            g = lay["gate"]
            assert g.shape == ((2, 13) if fusion == "GF-MH" else (2, 13, 32)) and ((g > 0) & (g < 1)).all()
        if fusion == "WS":
            assert lay["gate"].shape == (1,)


@pytest.mark.parametrize("fusion", HYBRIDS)
def test_ablate_zeroes_one_branch_only(fusion):
    m = tiny(fusion)
    idx = torch.randint(0, 23, (2, 11))
    base = m.introspect(idx)
    for branch, other in (("rwkv", "mamba"), ("mamba", "rwkv")):
        with m.ablate(branch):
            abl = m.introspect(idx)
        assert not torch.allclose(abl["logits"], base["logits"])
        l0a, l0b = abl["layers"][0], base["layers"][0]
        assert torch.count_nonzero(l0a[f"{branch}_rms"]) == 0
        torch.testing.assert_close(l0a[f"{other}_rms"], l0b[f"{other}_rms"], rtol=0, atol=0)  # same input h
    torch.testing.assert_close(m.introspect(idx)["logits"], base["logits"], rtol=0, atol=0)   # restored
    with pytest.raises(ValueError, match="branch must be"):
        with m.ablate("attn"):
            pass


def test_ablate_single_branch():
    m = tiny("RWKV")
    with pytest.raises(ValueError, match="no mamba branch"):
        with m.ablate("mamba"):
            pass
    idx = torch.randint(0, 23, (1, 8))
    with m.ablate("rwkv"):
        assert torch.count_nonzero(m.introspect(idx)["layers"][1]["rwkv_rms"]) == 0


@pytest.mark.parametrize("fusion", FUSIONS)
def test_causality(fusion):
    m = tiny(fusion, seed=2)
    idx = torch.randint(0, 23, (2, 24), generator=torch.Generator().manual_seed(5))
    idx2 = idx.clone()
    idx2[:, 13] = (idx2[:, 13] + 7) % 23
    with torch.no_grad():
        a, _ = m(idx)
        b, _ = m(idx2)
    torch.testing.assert_close(a[:, :13], b[:, :13], rtol=0, atol=0)
    assert not torch.allclose(a[:, 13:], b[:, 13:])


def test_generate_greedy_matches_full_forward():
    import model
    m = tiny("GF-MH", seed=5)
    prompt = torch.randint(0, 23, (2, 6))
    out = m.generate(prompt, 9, temperature=0)
    ref = prompt
    with torch.no_grad():
        for _ in range(9):
            ref = torch.cat([ref, model.sample_next(m(ref)[0][:, -1], 0)], 1)
    assert torch.equal(out, ref)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(m.generate(prompt, 5, top_k=5, generator=g1), m.generate(prompt, 5, top_k=5, generator=g2))


# ------------------------------------------------------------------------------------------- optimizer

def test_optimizer_groups_by_membership():
    m = tiny("GF-MH", perturb=False, rwkv_lr_mult=0.5, mamba_lr_mult=2.0)
    opt = m.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    names = {id(p): n for n, p in m.named_parameters()}
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(names) and len(seen) == len(set(seen))   # every parameter exactly once
    decayed = set()
    for g in opt.param_groups:
        for p in g["params"]:
            n = names[id(p)]
            want_mult = 0.5 if ".rwkv." in n else 2.0 if ".mamba." in n else 1.0
            assert g["lr_mult"] == want_mult, n
            if g["weight_decay"] > 0:
                decayed.add(n)
            else:
                assert g["weight_decay"] == 0.0
    want = {"emb.weight", "head.weight"}
    for i in range(TINY["n_layer"]):
        want |= {f"blocks.{i}.rwkv.{k}.weight" for k in ("receptance", "key", "value", "gate", "output")}
        want |= {f"blocks.{i}.mamba.{k}.weight" for k in ("in_proj", "conv1d", "out_proj")}
        want |= {f"blocks.{i}.ffn.{k}.weight" for k in ("key", "receptance", "value")}
    assert decayed == want   # no decay: maa/decay/bonus vectors + LoRAs, ln_x, A_log, D, dt_bias, norms, gates


# --------------------------------------------------------------------------------------------- presets

def _preset_model(name, vocab_size=65):
    g = {**COMMON_CONFIG, **all_family_configs()}
    scope = dict(g)
    exec(compile(open(os.path.join(ROOT, "config", name)).read(), name, "exec"), scope)
    g.update({k: scope[k] for k in g if k in scope})
    torch.manual_seed(0)
    return build_model(model_args_from(g, vocab_size, scope["block_size"]))


def test_presets_match_parameter_counts():
    hyb = _preset_model("gf_mh_8m.py")
    n = hyb.num_params()
    assert 8.1e6 < n < 8.3e6 and hyb.a["dropout"] == 0.1
    for name in ("gpt_8m.py", "rwkv_8m.py", "mamba_8m.py"):
        other = _preset_model(name)
        assert abs(other.num_params() / n - 1) < 0.05, (name, other.num_params(), n)
        assert other.model_args["dropout"] == 0.1
    assert _preset_model("gpt_8m.py").model_args["pos_emb"] == "rope"
    assert _preset_model("hybrid_tiny.py").num_params() < 5e5


def test_tiny_model_learns():
    torch.manual_seed(0)
    m = build_model({**TINY, "fusion": "GF-MH"})
    opt = m.configure_optimizers(0.0, 3e-3, (0.9, 0.99), "cpu")
    seq = torch.arange(33).remainder(7)[None].repeat(2, 1)  # a periodic sequence: learnable in a few steps
    first = None
    for _ in range(20):
        _, loss = m(seq[:, :-1], seq[:, 1:])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_flops_per_token():
    m = tiny("GF-MH", perturb=False)
    f = m.flops_per_token(64)
    assert f > 6 * (m.num_params() - sum(p.numel() for n, p in m.named_parameters() if p.dim() < 2)) * 0.9
    assert f == m.flops_per_token(4096)   # recurrent: no T term


def test_bad_config_errors():
    with pytest.raises(ValueError, match="fusion='XX'"):
        build_model({**TINY, "fusion": "XX"})
    with pytest.raises(ValueError, match="gate_init"):
        build_model({**TINY, "fusion": "CP", "gate_init": 0.3})
    with pytest.raises(ValueError, match="rwkv_head_size"):
        build_model({**TINY, "rwkv_dim_att": 40})
    with pytest.raises(ValueError, match="mamba_headdim"):
        build_model({**TINY, "mamba_d_inner": 40})
    with pytest.raises(ValueError, match="ffn"):
        build_model({**TINY, "ffn": "relu"})
    m = tiny()
    with pytest.raises(ValueError, match="state batch"):
        m(torch.zeros(3, 4, dtype=torch.long), state=m.init_state(2, "cpu"))


@pytest.mark.parametrize("ffn", ["gelu", "swiglu"])
def test_mlp_ffn_variants_are_stateful_consistent(ffn):
    m = tiny("GF", ffn=ffn)
    idx = torch.randint(0, 23, (2, 10))
    with torch.no_grad():
        full, _ = m(idx)
        st, steps = None, []
        for t in range(10):
            lo, _, st = m(idx[:, t:t + 1], state=st, return_state=True)
            steps.append(lo)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=2e-5)


# ------------------------------------------------------------------------------------------------- GPU

GPU_DIMS = dict(n_embd=64, rwkv_head_size=32, d_state=16, mamba_headdim=32, ssd_chunk=16)  # Triton dots need >= 16


@pytest.mark.gpu
def test_mamba_ssm_library_path_matches_builtin():
    if not mamba2._load_mamba_lib():
        pytest.skip("mamba-ssm is not importable on this CUDA machine (pip install mamba-ssm)")
    torch.manual_seed(0)
    dev = "cuda"
    mx = Mamba2Mixer(d_model=96, d_inner=192, d_state=32, d_conv=4, headdim=32, chunk=64).to(dev)
    u = torch.randn(2, 200, 96, device=dev)  # T not a multiple of the chunk
    s0 = {"ssm": torch.randn(2, 6, 32, 32, device=dev) * 0.1, "conv": torch.randn(2, 192 + 64, 3, device=dev)}
    results = {}
    for backend in ("mamba_ssm", "torch"):
        mx.backend = backend
        for with_state in (False, True):
            mx.zero_grad()
            out, st = mx(u, s0 if with_state else None)
            (out.square().sum() + st["ssm"].square().sum()).backward()
            results[backend, with_state] = (out.detach(), st["ssm"].detach(), st["conv"].detach(),
                                            [p.grad.clone() for p in mx.parameters()])
    for with_state in (False, True):
        lib, ref = results["mamba_ssm", with_state], results["torch", with_state]
        assert rel(lib[0], ref[0]) < 1e-3 and rel(lib[1], ref[1]) < 1e-3 and torch.equal(lib[2], ref[2])
        for gl, gr in zip(lib[3], ref[3]):
            assert rel(gl, gr) < 1e-2
    # the whole model: auto (library on CUDA) vs the built-in SSD, one state_dict
    m = tiny("GF-MH", **GPU_DIMS).to(dev)
    idx = torch.randint(0, 23, (2, 77), device=dev)
    with torch.no_grad():
        a, _ = m(idx)
        for blk in m.blocks:
            blk.mamba.backend = "torch"
        b, _ = m(idx)
    assert rel(a, b) < 1e-3


@pytest.mark.gpu
def test_cuda_bf16_autocast_training_and_carried_state():
    """The training configuration on CUDA (auto backends, bf16 autocast): finite, learns, and segments with a carried
    state match the whole sequence to bf16 accuracy."""
    torch.manual_seed(0)
    dev = "cuda"
    m = build_model({**TINY, **GPU_DIMS, "fusion": "GF-MH"}).to(dev)
    opt = m.configure_optimizers(0.1, 3e-3, (0.9, 0.99), dev)
    seq = torch.arange(65, device=dev).remainder(7)[None].repeat(4, 1)
    losses = []
    for _ in range(30):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = m(seq[:, :-1], seq[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses) and losses[-1] < 0.5 * losses[0]
    m.eval()
    idx = torch.randint(0, 23, (2, 50), device=dev)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        full, _, s_full = m(idx, return_state=True)
        a, _, st = m(idx[:, :20], return_state=True)
        b, _, st = m(idx[:, 20:], state=st, return_state=True)
    assert rel(torch.cat([a, b], 1).float(), full.float()) < 3e-2
    for x, y in zip(st, s_full):
        for k in x:
            assert x[k].dtype == torch.float32 and rel(x[k], y[k]) < 3e-2, k
