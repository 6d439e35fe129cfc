"""The hybrid's fast paths: Hybrid.step (the lean one-token recurrence used for decoding) against the parallel forward
in float64, that it never enters the chunked scans / conv1d / WKV dispatch, that it leaves the caller's state alone,
and that torch.compile traces the training forward and the decode step as ONE graph (no graph breaks)."""
import pytest
import torch

import hybrid
import mamba2
import wkv6
from test_hybrid import rel, tiny   # the tiny perturbed model (no zero init hides a wrong path), relative error


@pytest.mark.parametrize("fusion,ffn", [("GF-MH", "cmix"), ("HGF", "swiglu"), ("WS", "cmix"), ("RWKV", "gelu"),
                                        ("MAMBA", "cmix")])
def test_step_equals_parallel_forward_fp64(fusion, ffn):
    m = tiny(fusion, seed=5, ffn=ffn).double()
    idx = torch.randint(0, 23, (2, 13), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        full, _, s_full = m(idx, return_state=True)
        st, steps = None, []                      # state None = zeros, as forward
        for t in range(idx.size(1)):
            lo, st = m.step(idx[:, t:t + 1], st)
            steps.append(lo)
    assert rel(torch.cat(steps, 1), full) < 1e-11
    for a, b in zip(st, s_full):
        assert set(a) == set(b)
        for k in a:
            assert a[k].shape == b[k].shape and rel(a[k], b[k]) < 1e-11, k


def test_step_takes_no_sequence_path_and_keeps_the_input_state(monkeypatch):
    m = tiny("GF-MH", seed=2)
    idx = torch.randint(0, 23, (3, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, _, st = m(idx, return_state=True)
        want, _ = m(idx[:, -1:], state=st)

        def forbidden(*a, **k):
            raise AssertionError("Hybrid.step ran a sequence (chunked / conv1d / WKV-dispatch) path")
        for mod, name in ((hybrid, "wkv6"), (mamba2, "ssd_chunked"), (mamba2.F, "conv1d")):
            monkeypatch.setattr(mod, name, forbidden)
        before = [{k: v.clone() for k, v in s.items()} for s in st]
        got, st2 = m.step(idx[:, -1:], st)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for a, b, c in zip(st, before, st2):
        for k in a:
            assert torch.equal(a[k], b[k]), f"step modified the caller's state[{k!r}]"
            assert c[k] is not a[k]


@pytest.mark.parametrize("wkv_backend,mamba_conv", [("auto", "conv1d"), ("torch", "conv1d"), ("torch", "shift")])
def test_training_forward_traces_without_graph_breaks(wkv_backend, mamba_conv, monkeypatch):
    # a fresh "printed once" set: the wkv6 'using backend' line must not be printed from inside the traced graph
    # (print() is a graph break, and it would stay in the compiled code as one break per layer)
    monkeypatch.setattr(wkv6, "_printed", set())
    monkeypatch.setattr(mamba2, "_PRINTED", set())
    m = tiny("GF-MH", wkv_backend=wkv_backend, dropout=0.1, mamba_conv=mamba_conv).train()
    idx = torch.randint(0, 23, (2, 16), generator=torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    ex = torch._dynamo.explain(lambda x, y: m(x, y)[1])(idx, idx)
    torch._dynamo.reset()
    assert ex.graph_break_count == 0 and ex.graph_count == 1, [b.reason for b in ex.break_reasons]


def test_decode_step_traces_as_one_graph():
    """So `torch.compile(model.step, mode='reduce-overhead')` can capture a whole decode step in one CUDA graph."""
    m = tiny("GF-MH")
    st = m.init_state(2, "cpu")
    torch._dynamo.reset()
    with torch.no_grad():
        ex = torch._dynamo.explain(m.step)(torch.zeros(2, 1, dtype=torch.long), st)
    torch._dynamo.reset()
    assert ex.graph_break_count == 0 and ex.graph_count == 1, [b.reason for b in ex.break_reasons]


def test_step_under_bf16_autocast_tracks_forward():
    """The fp32 regions of the step (WKV and SSM state updates) are also entered under autocast; states stay fp32."""
    m = tiny("GF-MH", seed=7)
    idx = torch.randint(0, 23, (2, 6), generator=torch.Generator().manual_seed(8))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        full, _ = m(idx)
        st, steps = None, []
        for t in range(idx.size(1)):
            lo, st = m.step(idx[:, t:t + 1], st)
            steps.append(lo)
    assert rel(torch.cat(steps, 1).float(), full.float()) < 3e-2
    assert all(v.dtype == torch.float32 for s in st for v in s.values())


def test_generate_with_nonfinite_logits_is_an_error():
    """sample_next no longer validates (torch.multinomial did, with two host syncs per token): generate checks the
    logits once, after the loop, as the GPT's does."""
    m = tiny("GF-MH", seed=3)
    with torch.no_grad():
        m.head.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="nan/inf logits"):
        m.generate(torch.zeros(1, 2, dtype=torch.long), 3)


@pytest.mark.gpu
@pytest.mark.parametrize("wkv_backend,mamba_backend", [("auto", "auto"), ("cuda", "torch"), ("triton", "torch"),
                                                       ("triton", "auto"), ("triton", "mamba_ssm")])
def test_training_forward_traces_without_graph_breaks_on_cuda(wkv_backend, mamba_backend, monkeypatch):
    """The CPU test above cannot see the CUDA-only code: the WKV kernels' dispatch, mamba-ssm's ops, bf16 autocast on
    CUDA. An H200 profile of gf_mh_8m (results/2026-11-23_profile_gf_mh_8m_h200_graphs.json) showed ~6 compiled
    graphs per layer per step, so something there breaks the graph; the reasons are printed here."""
    monkeypatch.setattr(wkv6, "_printed", set())
    if mamba_backend == "mamba_ssm" and not mamba2._load_mamba_lib():
        pytest.fail("mamba-ssm is not importable on this CUDA machine: carry its wheel (README, Optional GPU packages)")
    m = tiny("GF-MH", wkv_backend=wkv_backend, mamba_backend=mamba_backend, dropout=0.1, n_embd=64, rwkv_head_size=32,
             ssd_chunk=16).cuda().train()  # head size 32: the CUDA kernel's smallest
    idx = torch.randint(0, 23, (2, 64), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    torch._dynamo.reset()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ex = torch._dynamo.explain(lambda x, y: m(x, y)[1])(idx, idx)
    torch._dynamo.reset()
    assert ex.graph_break_count == 0 and ex.graph_count == 1, [(b.reason, str(b.user_stack[-1:])) for b in ex.break_reasons]


def test_auto_wkv_backend_is_decided_once(monkeypatch):
    """'auto' is resolved once per (device type, head size) and then read from a table: the availability checks
    (building/loading the CUDA extension, catching its errors) never run inside a compiled forward."""
    m = tiny("GF-MH", wkv_backend="auto")
    idx = torch.randint(0, 23, (2, 16), generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(wkv6, "_AUTO", {})
    with torch.no_grad():
        want, _ = m(idx, idx)
    assert wkv6._AUTO == {("cpu", 16): "torch"}

    def forbidden(*a, **k):
        raise AssertionError("wkv6_backend ran again after 'auto' was decided")
    monkeypatch.setattr(wkv6, "wkv6_backend", forbidden)
    with torch.no_grad():
        got, _ = m(idx, idx)
    assert torch.equal(got, want)


def test_cuda_paths_are_decided_when_the_model_is_built(monkeypatch):
    """On a CUDA machine the model decides its WKV and Mamba paths at construction, outside any torch.compile trace
    (a first mamba-ssm import inside the trace is a graph break baked into every layer's compiled code). Simulated
    on CPU: with CUDA reported available, building the model fills the 'auto' table and loads (or rules out) the
    mamba-ssm ops before any forward."""
    monkeypatch.setattr(wkv6, "_AUTO", {})
    monkeypatch.setattr(mamba2, "_LIB", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(wkv6, "_cuda_state", {"err": "simulated: no CUDA kernel"})
    tiny("GF-MH", wkv_backend="auto")
    assert ("cuda", 16) in wkv6._AUTO and mamba2._LIB is not None


def test_auto_mamba_path_is_the_built_in_ssd_under_compile(monkeypatch):
    """mamba-ssm's ops are graph breaks for dynamo (4 per step in gf_mh_8m on an H200: 154,104 vs 494,228 tok/s for
    the compiled built-in SSD, results/2026-12-02_gf_mh_8m_T256_triton_*_h200.json), so 'auto' takes them only in
    eager mode; an explicit 'mamba_ssm' is kept, and the logged backend says which path a compiled run uses."""
    def boom(*a, **k):
        raise AssertionError("mamba-ssm op called")
    monkeypatch.setattr(mamba2, "_LIB", dict(fwd=boom, bwd=boom, norm=boom, conv=None))   # as if importable
    cuda = torch.device("cuda")
    assert mamba2.resolve_backend("auto", cuda) == "mamba_ssm"
    assert mamba2.resolve_backend("auto", cuda, compiling=True) == "torch"
    assert mamba2.resolve_backend("mamba_ssm", cuda, compiling=True) == "mamba_ssm"
    assert mamba2.resolve_backend("auto", torch.device("cpu")) == "torch"
    m = tiny("GF-MH", wkv_backend="torch")
    assert m.backends("cuda")["mamba"].startswith("mamba_ssm")
    assert m.backends("cuda", compiled=True)["mamba"] == "torch (built-in chunked SSD) + shift-add conv"


def test_cuda_graph_decoding_off_cuda_is_one_clear_error():
    """generate(cuda_graph=True) and DecodeGraph on a CPU model: a ValueError that names the switch, before any work."""
    m = tiny("GF-MH", seed=1)
    idx = torch.randint(0, 23, (2, 4), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="cuda_graph decoding needs the model on a CUDA device"):
        m.generate(idx, 3, cuda_graph=True)
    with torch.no_grad():
        _, _, st = m(idx, return_state=True)
    with pytest.raises(ValueError, match="pass cuda_graph=False"):
        hybrid.DecodeGraph(m, st)


@pytest.mark.parametrize("fusion,ffn", [("GF-MH", "cmix"), ("HGF", "swiglu"), ("MAMBA", "gelu"), ("RWKV", "cmix")])
def test_decode_graph_body_carries_the_state_in_its_buffers_fp64(fusion, ffn):
    """DecodeGraph's body (what the CUDA graph replays; capture=False runs it eagerly on a CPU): one step from its own
    state buffers, then the new state copied over them. Over 12 tokens its logits and final state equal eager step()'s
    in float64, and the caller's state is left alone."""
    m = tiny(fusion, seed=6, ffn=ffn).double()
    idx = torch.randint(0, 23, (2, 7), generator=torch.Generator().manual_seed(1))
    toks = torch.randint(0, 23, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, _, st = m(idx, return_state=True)
        before = [{k: v.clone() for k, v in s.items()} for s in st]
        g = hybrid.DecodeGraph(m, st, capture=False)
        est, want, got = st, [], []
        for t in range(toks.size(1)):
            lo, est = m.step(toks[:, t:t + 1], est)
            want.append(lo)
            got.append(g(toks[:, t:t + 1]).clone())
    assert rel(torch.cat(got, 1), torch.cat(want, 1)) < 1e-13
    for a, b, c, d in zip(g.state, est, st, before):
        for k in a:
            assert rel(a[k], b[k]) < 1e-13 and torch.equal(c[k], d[k]), k


@pytest.mark.gpu
@pytest.mark.parametrize("fusion,ffn,autocast", [("GF-MH", "cmix", False), ("GF-MH", "cmix", True),
                                                 ("HGF", "swiglu", False), ("MAMBA", "cmix", True)])
def test_cuda_graph_decode_equals_eager_step(fusion, ffn, autocast):
    """DecodeGraph replays step() with the state carried in its own buffers: over 12 tokens its logits and final state
    equal eager step()'s (same kernels: fp32 and bf16 autocast alike), and generate(cuda_graph=True) draws the same
    tokens as generate() from the same generator seed."""
    m = tiny(fusion, seed=3, ffn=ffn).cuda()
    idx = torch.randint(0, 23, (3, 9), device="cuda", generator=torch.Generator("cuda").manual_seed(4))
    toks = torch.randint(0, 23, (3, 12), device="cuda", generator=torch.Generator("cuda").manual_seed(5))
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if autocast else torch.autocast("cuda", enabled=False)
    with torch.no_grad(), ctx:
        _, _, st = m(idx, return_state=True)
        g = hybrid.DecodeGraph(m, st)
        want, got, est = [], [], st
        for t in range(toks.size(1)):
            lo, est = m.step(toks[:, t:t + 1], est)
            want.append(lo.float())
            got.append(g(toks[:, t:t + 1]).float().clone())   # clone: the next replay overwrites the buffer
        tol = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.cat(got, 1), torch.cat(want, 1), **tol)
        for a, b in zip(g.state, est):
            for k in a:
                torch.testing.assert_close(a[k].float(), b[k].float(), **tol)
        gens = [torch.Generator("cuda").manual_seed(7) for _ in range(2)]
        plain = m.generate(idx, 10, temperature=0.8, top_k=5, generator=gens[0], cuda_graph=False)
        graphed = m.generate(idx, 10, temperature=0.8, top_k=5, generator=gens[1], cuda_graph=True)
    assert torch.equal(plain, graphed)


# ---- mamba-ssm's SSD as custom ops (mamba2::ssd_fwd / ssd_bwd): the plumbing, with a stand-in for the library ----

def _lib_math(x, dt, A, B, C, D, dt_bias, s0):
    """What mamba-ssm's _mamba_chunk_scan_combined_fwd computes (z=None, dt_softplus=True, ngroups=1), in float64."""
    dtv = torch.nn.functional.softplus(dt + dt_bias)
    y, s = mamba2.ssd_naive(x, dtv, A, B[:, :, 0], C[:, :, 0], s0)
    return y + D[:, None] * x, s


def _stand_in_fwd(x, dt, A, B, C, chunk, D=None, z=None, dt_bias=None, initial_states=None, dt_softplus=False):
    assert z is None and dt_softplus and B.shape[2] == C.shape[2] == 1 and x.shape[1] == dt.shape[1]
    f64 = [t.double() for t in (x, dt, A, B, C, D, dt_bias)] + [None if initial_states is None else initial_states.double()]
    y, s = _lib_math(*f64)
    return y.to(x.dtype), None, None, None, None, s   # (out, out_x, dt, dA_cumsum, states, final_states)


def _stand_in_bwd(dout, x, dt, A, B, C, out, chunk, D=None, z=None, dt_bias=None, initial_states=None,
                  dfinal_states=None, dt_softplus=False):
    # torch.func.vjp: inside a custom op's implementation autograd records nothing, functorch's transforms still work
    ins = [t.double() for t in (x, dt, A, B, C, D, dt_bias)]
    if initial_states is None:
        _, vjp = torch.func.vjp(lambda *a: _lib_math(*a, None), *ins)
    else:
        _, vjp = torch.func.vjp(_lib_math, *ins, initial_states.double())
    g = vjp((dout.double(), dfinal_states.double()))
    dx, ddt, dA, dB, dC, dD, ddt_bias = g[:7]
    return dx, ddt, dA, dB, dC, dD, None, ddt_bias, (g[7] if initial_states is not None else None)


@pytest.fixture
def lib_stand_in(monkeypatch):
    def norm(y, weight, bias, z=None, eps=mamba2.NORM_EPS, group_size=None, norm_before_gate=False):
        assert bias is None and not norm_before_gate and group_size == y.shape[-1]   # what the mixer asks for
        return mamba2.gated_rmsnorm(y, z, weight, eps)
    monkeypatch.setattr(mamba2, "_LIB", dict(fwd=_stand_in_fwd, bwd=_stand_in_bwd, norm=norm, conv=None))
    monkeypatch.setattr(mamba2, "resolve_backend", lambda backend, device, compiling=False: "mamba_ssm")


@pytest.mark.parametrize("with_state", [False, True])
def test_mamba_ssm_ssd_ops_match_the_built_in_ssd_fp64(lib_stand_in, with_state, monkeypatch):
    """The mixer's mamba_ssm path through the custom ops (the library stood in for by its own math) equals the
    built-in SSD in float64: output, final state and every parameter gradient, with and without an initial state.
    Checks the plumbing: which gradient goes to which input, D, dt_bias, the ngroups axis, the state in and out."""
    torch.manual_seed(0)
    mx = mamba2.Mamba2Mixer(d_model=32, d_inner=64, d_state=16, d_conv=4, headdim=16, chunk=8).double()
    with torch.no_grad():
        for p in mx.parameters():
            p.add_(0.05 * torch.randn_like(p))
    u = torch.randn(2, 13, 32, dtype=torch.float64)
    st = {"ssm": 0.3 * torch.randn(2, 4, 16, 16, dtype=torch.float64),
          "conv": torch.randn(2, 64 + 32, 3, dtype=torch.float64)} if with_state else None
    res = {}
    for path in ("mamba_ssm", "torch"):
        mx.backend = path
        mx.zero_grad()
        ss = None if st is None else {k: v.clone().requires_grad_() for k, v in st.items()}
        if path == "torch":   # the stand-in resolves everything to mamba_ssm; pin the built-in path directly
            monkeypatch.setattr(mamba2, "resolve_backend", lambda backend, device, compiling=False: "torch")
        out, s1 = mx(u, ss)
        (out.square().sum() + 0.5 * s1["ssm"].square().sum()).backward()
        res[path] = [out, s1["ssm"]] + [p.grad for p in mx.parameters()] + ([ss["ssm"].grad] if ss else [])
    for a, b in zip(res["mamba_ssm"], res["torch"]):
        assert rel(a, b) < 1e-12


def test_mamba_ssm_path_compiles_without_graph_breaks(lib_stand_in):
    """Under torch.compile the mamba_ssm path is one graph: its SSD is the custom ops (dynamo cannot trace into
    mamba-ssm's autograd Function, 4 breaks per gf_mh_8m step on an H200), the norm and conv the built-in ones; and
    the compiled forward and backward equal eager."""
    torch.manual_seed(1)
    mx = mamba2.Mamba2Mixer(d_model=32, d_inner=64, d_state=16, d_conv=4, headdim=16, chunk=8)
    mx.backend = "mamba_ssm"
    u = torch.randn(2, 16, 32, requires_grad=True)

    def loss(u):
        out, s1 = mx(u)
        return out.square().sum() + s1["ssm"].square().sum()
    torch._dynamo.reset()
    ex = torch._dynamo.explain(loss)(u)
    assert ex.graph_break_count == 0 and ex.graph_count == 1, [b.reason for b in ex.break_reasons]
    want = torch.autograd.grad(loss(u), [u] + list(mx.parameters()))
    got = torch.autograd.grad(torch.compile(loss)(u), [u] + list(mx.parameters()))
    torch._dynamo.reset()
    for a, b in zip(got, want):
        assert rel(a, b) < 1e-5


@pytest.mark.parametrize("with_state", [False, True])
def test_mamba_ssm_ssd_ops_pass_opcheck(lib_stand_in, with_state):
    """torch.library.opcheck on the forward op (fake vs real outputs: shapes, dtypes, strides; autograd registration;
    AOT dispatch) and the same fake-vs-real comparison for the backward op, at bf16 activations with an fp32 state, as training calls them. A fake that
    disagreed with the real op in one dtype made compiled gradients 100x off while eager was right."""
    g = torch.Generator().manual_seed(2)
    rn = lambda *s, dt=torch.float32: torch.randn(*s, generator=g).to(dt)   # noqa: E731
    Bsz, T, H, P, N = 2, 12, 3, 16, 16
    x, dt = rn(Bsz, T, H, P, dt=torch.bfloat16), rn(Bsz, T, H, dt=torch.bfloat16)
    A, D, dt_bias = -rn(H).abs(), rn(H), rn(H)
    B, C = rn(Bsz, T, 1, N, dt=torch.bfloat16), rn(Bsz, T, 1, N, dt=torch.bfloat16)
    s0 = rn(Bsz, H, P, N) if with_state else None
    args = [x, dt, A, B, C, D, dt_bias, s0, 8]
    for t in args[:8]:
        if t is not None:
            t.requires_grad_()
    checks = ("test_faketensor", "test_autograd_registration", "test_aot_dispatch_dynamic")
    torch.library.opcheck(mamba2._ssd_fwd, args, test_utils=checks)
    out, final = mamba2._ssd_fwd(*args)
    assert out.dtype == torch.bfloat16 and final.dtype == torch.float32
    bargs = [rn(Bsz, T, H, P, dt=torch.bfloat16), *[a.detach() if a is not None else None for a in args[:8]],
             rn(Bsz, H, P, N), out.detach(), 8]
    # the backward op by hand (opcheck's fake-tensor pass cannot run the stand-in's torch.func.vjp): the real outputs
    # have exactly the shapes, dtypes and (contiguous) strides its fake declares
    real = mamba2._ssd_bwd(*bargs)
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode:
        fake = mamba2._ssd_bwd(*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in bargs])
    for r_, f_ in zip(real, fake):
        assert (r_.shape, r_.dtype, r_.stride()) == (f_.shape, f_.dtype, f_.stride())
