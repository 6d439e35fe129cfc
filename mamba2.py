"""Mamba-2 mixer for hybrid.py: our own module and parameters, initialised as mamba-ssm 2.3's Mamba2.__init__,
with a built-in chunked SSD in PyTorch and, on CUDA, mamba-ssm's Triton ops when they import.

Why our own module instead of mamba_ssm.Mamba2: we control the init (no blanket re-init needed or allowed), the
state (the real SSM state [B,H,P,N] and conv window come out of every forward, on every path), and CPU runs with no
mamba-ssm installed. The library and the built-in path use the SAME parameters, so one state_dict works everywhere.

Per layer (ngroups = 1, norm_before_gate = False, as mamba-ssm's defaults):
    z, xBC, dt = in_proj(u)                       # [di, di + 2N, H]
    xBC = silu(depthwise causal conv(xBC))        # kernel d_conv, window of d_conv-1 past inputs is the conv state
    x, B, C = xBC                                 # [di = H*P, N, N], B and C shared by every head
    dt = softplus(dt + dt_bias);  A = -exp(A_log)
    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T ;  y_t = h_t C_t + D x_t      # SSD, h [B,H,P,N]
    out = out_proj(rmsnorm(y * silu(z)) * norm.weight)
"""
import contextlib
import importlib.util
import math
import sys
import types
from typing import Optional

import torch
import torch._functorch.config as _functorch_config
import torch.nn as nn
import torch.nn.functional as F

# mamba-ssm 2.3 Mamba2 defaults we keep fixed (the hybrid exposes d_state, expand/d_inner, headdim, d_conv, chunk)
DT_MIN, DT_MAX, DT_INIT_FLOOR = 0.001, 0.1, 1e-4
A_INIT_RANGE = (1.0, 16.0)
NORM_EPS = 1e-5


# ----------------------------------------------------------------------------------------------- SSD (PyTorch)

def _up(t):
    """At least fp32 (fp64 stays fp64 for the float64 reference checks)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


# torch.compile traces each backward graph under the forward's ambient autocast by default
# (torch._functorch.config.backward_pass_autocast = "same_as_forward"), autocast-disabled regions included: the
# gradients of ssd_chunked's fp32 region then ran as bf16 matmuls under compile, 3e-3 relative error against 1e-7 in
# eager (tests/test_hybrid.py). "off" traces backward graphs as eager autograd runs them, in the dtypes the forward
# saved; the autocast regions of a model elsewhere in the process are unchanged (their casts are in the forward).
_functorch_config.backward_pass_autocast = "off"


def no_autocast(device_type):
    """A region that runs in its inputs' dtype even under autocast. The context is entered only when autocast is on:
    the one-token step runs this twice per layer per token, and entering/leaving an autocast context costs Python
    time comparable to a small kernel launch."""
    return torch.autocast(device_type, enabled=False) if torch.is_autocast_enabled(device_type) else _NULL_CTX


_NULL_CTX = contextlib.nullcontext()


def segsum(x):
    """Stable segment sum: x [..., T] -> [..., T, T] with out[i, j] = sum_{j<k<=i} x_k for i >= j, -inf above.
    Cumulative sums of masked copies instead of differences of cumsums, so no cancellation (ssd_minimal)."""
    T = x.size(-1)
    x = x[..., None].expand(*x.shape, T)                       # [..., i, j] = x_i
    strict = torch.ones(T, T, dtype=torch.bool, device=x.device).tril(-1)
    xs = x.masked_fill(~strict, 0).cumsum(-2)
    return xs.masked_fill(~strict.logical_or(torch.eye(T, dtype=torch.bool, device=x.device)), float("-inf"))


SCAN_LOOP_MAX_CHUNKS = 16   # ssd_chunked's inter-chunk recurrence: a loop up to this many chunks, a matmul beyond


def ssd_chunked(x, dt, A, B, C, chunk, initial_state=None):
    # autocast would run the einsums below in bf16, states and decay products included; keep the scan in fp32
    # (TF32 on tensor cores where allowed), as mamba-ssm keeps its states in fp32
    with torch.autocast(x.device.type, enabled=False):
        return _ssd_chunked(x, dt, A, B, C, chunk, initial_state)


def _ssd_chunked(x, dt, A, B, C, chunk, initial_state=None):
    """Chunked SSD (Mamba-2 paper, listing 1) with padding and state in/out.

    x [b,l,h,p], dt [b,l,h] (after softplus), A [h] (negative), B, C [b,l,n]; initial_state [b,h,p,n] or None.
    Returns y [b,l,h,p] (no D term) and the final state [b,h,p,n], in fp32 (fp64 if the inputs are fp64).
    T that is not a multiple of `chunk` is zero-padded: a padded step has dt = 0, so decay 1 and no input, which
    leaves the final state exact.
    """
    b, l, h, p = x.shape
    n = B.size(-1)
    dtype = torch.promote_types(x.dtype, torch.float32)
    dt = dt.to(dtype)
    X = x.to(dtype) * dt[..., None]
    Ad = dt * A.to(dtype)                                        # per-step log-decay, <= 0
    B, C = B.to(dtype), C.to(dtype)
    pad = (-l) % chunk
    if pad:
        X = F.pad(X, (0, 0, 0, 0, 0, pad))
        Ad, B, C = F.pad(Ad, (0, 0, 0, pad)), F.pad(B, (0, 0, 0, pad)), F.pad(C, (0, 0, 0, pad))
    c = (l + pad) // chunk
    X = X.view(b, c, chunk, h, p)
    B, C = B.view(b, c, chunk, n), C.view(b, c, chunk, n)
    Ad = Ad.view(b, c, chunk, h).permute(0, 3, 1, 2)             # [b,h,c,q]
    Acs = Ad.cumsum(-1)
    # 1. within each chunk: quadratic (attention-like) form with the decay mask
    Lmask = torch.exp(segsum(Ad))                                 # [b,h,c,q,q]
    CB = torch.einsum("bcin,bcjn->bcij", C, B)
    y = torch.einsum("bcij,bhcij,bcjhp->bcihp", CB, Lmask, X)
    # 2. each chunk's state contribution, decayed to the chunk end
    decay_to_end = torch.exp(Acs[..., -1:] - Acs)                 # exponents <= 0
    states = torch.einsum("bcjn,bhcj,bcjhp->bchpn", B, decay_to_end, X)
    # 3. recurrence across chunks, starting from the initial state: S_0 = s0, S_{z+1} = exp(A_z) S_z + states_z
    s0 = (torch.zeros(b, h, p, n, dtype=dtype, device=x.device) if initial_state is None
          else initial_state.to(dtype))
    if c <= SCAN_LOOP_MAX_CHUNKS:
        # a short loop of elementwise steps (torch.compile fuses them). The segsum product below is a batched matmul
        # with K = c + 1: at gf_mh_8m's T=256 (c=4) it, its gradient and the permute copies around it took ~4.2 ms of
        # a 27.3 ms H200 step (aten::bmm [384,5,5]x[384,5,4096], results/2026-12-03_profile_gf_mh_8m_T256_gate_sum_nograph.json)
        decay = torch.exp(Acs[..., -1])                            # [b,h,c], exponents <= 0
        entering = []
        for z in range(c):
            entering.append(s0)
            s0 = torch.addcmul(states[:, z], decay[:, :, z, None, None], s0)
        states, final = torch.stack(entering, dim=1), s0
    else:   # long sequences: one matmul over the c+1 chunk states instead of c dependent steps
        states = torch.cat([s0[:, None], states], dim=1)
        decay_chunk = torch.exp(segsum(F.pad(Acs[..., -1], (1, 0))))  # [b,h,c+1,c+1]
        states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
        states, final = states[:, :-1], states[:, -1]
    # 4. the state entering each chunk, read out by C with the decay from the chunk start
    y = y + torch.einsum("bcin,bchpn,bhci->bcihp", C, states, torch.exp(Acs))
    return y.reshape(b, c * chunk, h, p)[:, :l], final


def ssd_step(x, dt, A, B, C, state):
    """One recurrent step. x [b,h,p], dt [b,h], A [h], B, C [b,n], state [b,h,p,n] -> (y [b,h,p], state).
    Plain ops, no einsum: decoding runs this once per layer per token and is bound by per-op overhead."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, dt, A, B, C, state = (t.to(dtype) for t in (x, dt, A, B, C, state))
    with no_autocast(x.device.type):
        dBx = (dt[..., None] * x)[..., None] * B[:, None, None, :]             # [b,h,p,n]
        state = torch.addcmul(dBx, torch.exp(dt * A)[..., None, None], state)  # exp(dt A) h + dt x B^T
        return (state @ C[:, None, :, None]).squeeze(-1), state


def ssd_naive(x, dt, A, B, C, initial_state=None):
    """Sequential scan, the reference every SSD path is tested against (use float64 inputs for that)."""
    b, l, h, p = x.shape
    dtype = torch.promote_types(x.dtype, torch.float32)
    s = (torch.zeros(b, h, p, B.size(-1), dtype=dtype, device=x.device) if initial_state is None
         else initial_state.to(dtype))
    ys = []
    for t in range(l):
        y, s = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], s)
        ys.append(y)
    return torch.stack(ys, 1), s


def gated_rmsnorm(y, z, weight, eps=NORM_EPS):
    """mamba-ssm RMSNormGated with norm_before_gate=False, ngroups=1: rmsnorm(y * silu(z)) * weight, in fp32.
    F.rms_norm is the same formula in one fused op (one kernel instead of five per call)."""
    dtype = torch.promote_types(y.dtype, torch.float32)
    g = y.to(dtype) * F.silu(z.to(dtype))
    return F.rms_norm(g, (g.size(-1),), weight.to(dtype), eps)


# ------------------------------------------------------------------------------------------- mamba-ssm library

_LIB = None          # None = not tried yet; False = unavailable; else dict of functions
_PRINTED = set()


def _load_mamba_lib():
    """mamba-ssm's Triton SSD + gated RMSNorm (and causal_conv1d_fn when that CUDA extension is present), or False.

    `import mamba_ssm` runs an unconditional `import selective_scan_cuda` (the Mamba-1 extension, which we never
    call); where that extension was not built we put an empty module in its place (notes/deps.md §2). We never stub
    causal_conv1d_cuda: mamba would then believe the conv extension works.
    """
    global _LIB
    if _LIB is not None:
        return _LIB
    _LIB = False
    if importlib.util.find_spec("mamba_ssm") is None:
        return _LIB
    try:
        if importlib.util.find_spec("selective_scan_cuda") is None:
            sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
        from mamba_ssm.ops.triton.ssd_combined import _mamba_chunk_scan_combined_bwd, _mamba_chunk_scan_combined_fwd
        from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn
        try:
            from causal_conv1d import causal_conv1d_fn
        except ImportError:
            causal_conv1d_fn = None
        _LIB = dict(fwd=_mamba_chunk_scan_combined_fwd, bwd=_mamba_chunk_scan_combined_bwd, norm=rmsnorm_fn,
                    conv=causal_conv1d_fn)
    except Exception as e:  # a broken install must not break the import of the model: fall back, say why once
        print(f"mamba2: mamba-ssm found but its ops do not import ({type(e).__name__}: {e}); using the built-in SSD")
    return _LIB


# mamba-ssm's SSD as two custom ops around the forward and backward that its MambaChunkScanCombinedFn calls (the
# same kernels, same arguments): dynamo cannot trace into that autograd Function (a graph break per call), but it
# traces around a custom op, as it does around the WKV-6 kernels. Outputs are made contiguous in their inputs' dtypes
# so the fake (shape-only) versions below describe them exactly. B and C carry mamba-ssm's ngroups axis (= 1).

@torch.library.custom_op("mamba2::ssd_fwd", mutates_args=())
def _ssd_fwd(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor,
             dt_bias: torch.Tensor, s0: Optional[torch.Tensor], chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    out, _, _, _, _, final = _LIB["fwd"](x, dt, A, B, C, chunk, D=D, z=None, dt_bias=dt_bias, initial_states=s0,
                                         dt_softplus=True)[:6]
    return out.to(x.dtype).contiguous(), final.to(_up(x).dtype).contiguous()   # dtypes as the fake's below


@_ssd_fwd.register_fake
def _(x, dt, A, B, C, D, dt_bias, s0, chunk):
    Bsz, _, H, P = x.shape
    return x.new_empty(x.shape), x.new_empty((Bsz, H, P, B.shape[-1]), dtype=_up(x).dtype)


@torch.library.custom_op("mamba2::ssd_bwd", mutates_args=())
def _ssd_bwd(dout: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             D: torch.Tensor, dt_bias: torch.Tensor, s0: Optional[torch.Tensor], dfinal: torch.Tensor,
             out: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                     torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, ddt, dA, dB, dC, dD, _dz, ddt_bias, ds0 = _LIB["bwd"](
        dout, x, dt, A, B, C, out, chunk, D=D, z=None, dt_bias=dt_bias, initial_states=s0, dfinal_states=dfinal,
        dt_softplus=True)
    ds0 = dfinal.new_zeros(dfinal.shape) if ds0 is None else ds0.to(s0.dtype).contiguous()
    return tuple(g.to(ref.dtype).contiguous() for g, ref in
                 ((dx, x), (ddt, dt), (dA, A), (dB, B), (dC, C), (dD, D), (ddt_bias, dt_bias))) + (ds0,)


@_ssd_bwd.register_fake
def _(dout, x, dt, A, B, C, D, dt_bias, s0, dfinal, out, chunk):
    return tuple(t.new_empty(t.shape) for t in (x, dt, A, B, C, D, dt_bias)) + (
        (dfinal if s0 is None else s0).new_empty(dfinal.shape),)


def _ssd_setup(ctx, inputs, output):
    x, dt, A, B, C, D, dt_bias, s0, chunk = inputs
    ctx.chunk, ctx.has_s0 = chunk, s0 is not None
    ctx.save_for_backward(x, dt, A, B, C, D, dt_bias, s0, output[0])


def _ssd_backward(ctx, dout, dfinal):
    x, dt, A, B, C, D, dt_bias, s0, out = ctx.saved_tensors
    Bsz, _, H, P = x.shape
    dfinal = (x.new_zeros((Bsz, H, P, B.shape[-1]), dtype=_up(x).dtype) if dfinal is None
              else dfinal.to(_up(x).dtype).contiguous())
    dout = torch.zeros_like(out) if dout is None else dout.to(out.dtype).contiguous()
    *g, ds0 = _ssd_bwd(dout, x, dt, A, B, C, D, dt_bias, s0, dfinal, out, ctx.chunk)
    return (*g, ds0 if ctx.has_s0 else None, None)


_ssd_fwd.register_autograd(_ssd_backward, setup_context=_ssd_setup)


def ssd_mamba_ssm(x, dt, A, B, C, D, dt_bias, chunk, initial_state=None):
    """mamba-ssm's chunked SSD: y = SSD(x, softplus(dt + dt_bias), A, B, C) + D x, and the final state (fp32;
    float64 stays float64, for the tests' reference checks).
    x [B,T,H,P]; dt [B,T,H] (raw, before softplus); B, C [B,T,N]; initial_state [B,H,P,N] or None."""
    s0 = None if initial_state is None else _up(initial_state).contiguous()
    return _ssd_fwd(x, dt, A, B[:, :, None], C[:, :, None], D, dt_bias, s0, chunk)


def resolve_backend(backend, device, compiling=False):
    """'auto' -> 'mamba_ssm' on CUDA when importable, else 'torch'; under torch.compile 'auto' -> 'torch': mamba-ssm's
    ops (autograd Functions launching Triton kernels) are graph breaks for dynamo (4 per step in gf_mh_8m), and the
    built-in SSD compiles into the block's graph instead: on an H200, bf16 + CUDA graphs, T=256, 16,384 tokens per
    step, side by side: 494,228 tok/s built-in vs 154,104 tok/s with mamba-ssm
    (results/2026-12-02_gf_mh_8m_T256_triton_{ssdtorch,mambassm}_h200.json). That measurement called
    mamba_chunk_scan_combined itself; its SSD now runs as the custom ops above, which dynamo traces without a break
    (CPU-tested with a stand-in for the library), but that path is not timed on a GPU yet, so 'auto' stays the
    built-in SSD under compile. An explicit 'mamba_ssm' is kept (compiled: its SSD ops, the built-in gated norm and
    conv). 'mamba_ssm' where it cannot run is an error."""
    if backend not in ("auto", "torch", "mamba_ssm"):
        raise ValueError(f"mamba_backend={backend!r}: use auto, torch or mamba_ssm")
    if backend == "torch" or (backend == "auto" and compiling):
        return "torch"
    lib_ok = device.type == "cuda" and _load_mamba_lib()
    if backend == "mamba_ssm" and not lib_ok:
        raise RuntimeError("mamba_backend='mamba_ssm' needs a CUDA tensor and an importable mamba-ssm "
                           "(pip install mamba-ssm); use mamba_backend='auto' or 'torch'")
    return "mamba_ssm" if lib_ok else "torch"


def describe_backend(path, conv="shift", compiled=False):
    if path == "mamba_ssm":
        lib_conv = _LIB and _LIB["conv"] is not None and not compiled
        used = "causal_conv1d_fn" if lib_conv else "torch conv1d" if conv == "conv1d" else "shift-add conv"
        norm = "built-in gated norm" if compiled else "rmsnorm_fn"
        return f"mamba_ssm (its chunked SSD fwd/bwd as custom ops + {norm} + {used})"
    return "torch (built-in chunked SSD)" + ("" if conv == "conv1d" else " + shift-add conv")


def _announce(path, conv="shift"):
    what = describe_backend(path, conv)   # printed in eager mode only (a print inside a trace is a graph break)
    if what not in _PRINTED:
        _PRINTED.add(what)
        print(f"mamba2: using {what}")


# ------------------------------------------------------------------------------------------------ the mixer

class GatedRMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.weight._no_weight_decay = True


class Mamba2Mixer(nn.Module):
    """Mamba-2 mixer. forward(u [B,T,d], state) -> (out [B,T,d], state); state = {'ssm': [B,H,P,N] fp32,
    'conv': [B, d_inner + 2N, d_conv - 1]} or None for zeros. T == 1 takes the recurrent step (O(1) per token)."""

    def __init__(self, d_model, d_inner, d_state=64, d_conv=4, headdim=64, chunk=64, backend="auto", conv="shift"):
        super().__init__()
        if conv not in ("conv1d", "shift"):
            raise ValueError(f"mamba_conv={conv!r}: use conv1d or shift")
        if d_inner % headdim:
            raise ValueError(f"Mamba d_inner={d_inner} is not a multiple of mamba_headdim={headdim}; "
                             f"change mamba_expand / mamba_d_inner or mamba_headdim")
        if d_conv < 1 or chunk < 1:
            raise ValueError(f"d_conv={d_conv} and ssd_chunk={chunk} must be >= 1")
        self.d_model, self.d_inner, self.d_state, self.d_conv = d_model, d_inner, d_state, d_conv
        self.headdim, self.nheads, self.chunk, self.backend = headdim, d_inner // headdim, chunk, backend
        self.conv_impl = conv
        self.conv_dim = d_inner + 2 * d_state
        self.last_path = None
        # Mamba2.__init__ (mamba-ssm 2.3): nn.Linear / nn.Conv1d keep PyTorch's default (kaiming-uniform) init
        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * d_state + self.nheads, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, bias=True)
        with torch.no_grad():
            # dt log-uniform in [dt_min, dt_max], floored; dt_bias = softplus^-1(dt)
            dt = torch.exp(torch.rand(self.nheads) * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN))
            dt = dt.clamp(min=DT_INIT_FLOOR)
            self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
            self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads).uniform_(*A_INIT_RANGE)))
            self.D = nn.Parameter(torch.ones(self.nheads))
        for p in (self.dt_bias, self.A_log, self.D, self.conv1d.bias):
            p._no_weight_decay = True
        self.norm = GatedRMSNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    @staticmethod
    def count_params(d_model, d_inner, d_state, d_conv, headdim):
        h = d_inner // headdim
        conv_dim = d_inner + 2 * d_state
        return (d_model * (2 * d_inner + 2 * d_state + h) + conv_dim * (d_conv + 1) + 3 * h + d_inner
                + d_inner * d_model)

    def init_state(self, batch_size, device):
        return {"ssm": torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device),
                "conv": torch.zeros(batch_size, self.conv_dim, self.d_conv - 1, device=device)}

    def step(self, u, state=None):
        """One token, u [B,d] -> (out [B,d], state): forward's computation at T = 1 on [B, ...] rows, as mamba-ssm's
        Mamba2.step (conv window times the kernel, then one SSM update). Decoding is bound by per-op overhead, so
        this path has no chunking, no conv1d call, no einsum and no backend dispatch; same parameters, same state."""
        Bsz = u.size(0)
        H, P, N, K = self.nheads, self.headdim, self.d_state, self.d_conv
        z, xBC, dt = self.in_proj(u).split([self.d_inner, self.conv_dim, H], dim=-1)
        prev = state["conv"].to(xBC.dtype) if state is not None else xBC.new_zeros(Bsz, self.conv_dim, K - 1)
        full = torch.cat([prev, xBC[..., None]], dim=-1)                      # [B, conv_dim, K]: window + this input
        w = self.conv1d.weight.to(full.dtype)                                  # [conv_dim, 1, K]
        conv = F.silu((full * w[:, 0]).sum(-1) + self.conv1d.bias.to(full.dtype))
        x, Bm, Cm = conv.split([self.d_inner, N, N], dim=-1)
        x = x.reshape(Bsz, H, P)
        s0 = state["ssm"] if state is not None else x.new_zeros(Bsz, H, P, N, dtype=torch.promote_types(x.dtype,
                                                                                                         torch.float32))
        dtv = F.softplus(_up(dt) + _up(self.dt_bias))
        y, s1 = ssd_step(x, dtv, -torch.exp(_up(self.A_log)), Bm, Cm, s0)
        y = torch.addcmul(y, self.D.to(y.dtype)[:, None], x.to(y.dtype))   # + D x
        y = gated_rmsnorm(y.reshape(Bsz, self.d_inner), z, self.norm.weight)
        return self.out_proj(y.to(u.dtype)), {"ssm": _up(s1), "conv": _up(full[..., 1:])}

    def forward(self, u, state=None):
        Bsz, T, _ = u.shape
        if T == 1:   # recurrent step (generation, 1-token segments): O(1), no chunk padding
            out, st = self.step(u[:, 0], state)
            return out[:, None], st
        H, P, N, K = self.nheads, self.headdim, self.d_state, self.d_conv
        path = resolve_backend(self.backend, u.device, torch.compiler.is_compiling())
        if path != self.last_path and not torch.compiler.is_compiling():
            self.last_path = path
            _announce(path, self.conv_impl)
        z, xBC, dt = self.in_proj(u).split([self.d_inner, self.conv_dim, H], dim=-1)
        # depthwise causal conv over [window of K-1 past inputs ; this segment]
        # mamba-ssm's gated norm and causal_conv1d_fn are autograd Functions (graph breaks): under torch.compile the
        # mamba_ssm path takes only its SSD (custom ops) and the built-in norm and conv, which compile into the graph
        lib_eager = path == "mamba_ssm" and not torch.compiler.is_compiling()
        lib_conv = lib_eager and _LIB["conv"] is not None and state is None
        if self.conv_impl == "shift" and not lib_conv:
            # the same correlation as K shifted multiply-adds, in the in_proj's [B, T, C] row layout throughout:
            # elementwise work that torch.compile fuses (with the SiLU), no transposes. cuDNN's depthwise conv1d and
            # the copy making its output gradient contiguous took 3.3 ms of a 27.3 ms gf_mh_8m step on an H200
            # (results/2026-12-03_profile_gf_mh_8m_T256_gate_sum_nograph.json). The earlier shift form went through
            # the [B, C, T] window and read it transposed (0.9% faster than conv1d end to end); this one is 7.6% faster
            # (results/2026-12-03_hybrid_speed_run3.json), hence the default.
            prev = (state["conv"].to(xBC.dtype).transpose(1, 2) if state is not None
                    else xBC.new_zeros(Bsz, K - 1, self.conv_dim))
            rows = torch.cat([prev, xBC], dim=1)                                # [B, T + K - 1, C]
            new_conv = rows[:, T:].transpose(1, 2)                              # the last K-1 inputs, [B, C, K-1]
            w = self.conv1d.weight[:, 0].to(rows.dtype)                         # [C, K]
            acc = self.conv1d.bias.to(rows.dtype) + rows[:, :T] * w[:, 0]
            for j in range(1, K):
                acc = torch.addcmul(acc, rows[:, j:j + T], w[:, j])
            conv = F.silu(acc)
        else:
            xBC = xBC.transpose(1, 2)
            prev = state["conv"].to(xBC.dtype) if state is not None else xBC.new_zeros(Bsz, self.conv_dim, K - 1)
            full = torch.cat([prev, xBC], dim=-1)
            new_conv = full[..., full.size(-1) - (K - 1):]
            if lib_conv:  # the state-free training call (prev is the zero window); the window is still returned
                conv = _LIB["conv"](xBC.contiguous(), self.conv1d.weight.squeeze(1), self.conv1d.bias,
                                    activation="silu").transpose(1, 2)
            else:
                conv = F.silu(F.conv1d(full, self.conv1d.weight.to(full.dtype), self.conv1d.bias.to(full.dtype),
                                       groups=self.conv_dim)).transpose(1, 2)
        x, Bm, Cm = conv.split([self.d_inner, N, N], dim=-1)                    # conv [B, T, C]
        A = -torch.exp(_up(self.A_log))
        s0 = state["ssm"] if state is not None else None
        x = x.reshape(Bsz, T, H, P)
        if path == "mamba_ssm":
            y, s1 = ssd_mamba_ssm(x, dt, A, Bm, Cm, self.D, self.dt_bias, self.chunk, s0)
        else:
            dtv = F.softplus(_up(dt) + _up(self.dt_bias))
            y, s1 = ssd_chunked(x, dtv, A, Bm, Cm, self.chunk, s0)
            y = y + self.D.to(y.dtype)[:, None] * x.to(y.dtype)
        y = y.reshape(Bsz, T, self.d_inner)
        if lib_eager:
            y = _LIB["norm"](y, self.norm.weight, None, z=z, eps=NORM_EPS, group_size=self.d_inner,
                             norm_before_gate=False)
        else:
            y = gated_rmsnorm(y, z, self.norm.weight)
        out = self.out_proj(y.to(u.dtype))  # under autocast the Linear casts anyway
        # states leave in fp32 whatever the activation dtype: carried state keeps one dtype (no recompiles) and the
        # next segment reads what this one wrote
        return out, {"ssm": _up(s1), "conv": _up(new_conv)}
