"""
WKV-6 as chunked Triton kernels (forward + backward, initial state in, final state out).

Design (see wkv6.py for the operator's contract):
- One program per (key block, value block, batch*head) walks the sequence in chunks of BT=16
  tokens, carrying an fp32 state tile S[BK, BV] in registers. Per chunk:
      gi = inclusive cumsum of w (log-decay, fp32), ge = gi - w (exclusive), glast = sum of w
      y  = (r*exp(ge)) @ S  +  A @ v  +  (sum_j r u k) * v               (inter + intra + bonus)
      A[t,s] = sum_j r_t k_s exp(ge_t - gi_s)   for s < t  (elementwise [BT,BT,BK], fp32)
      S  = exp(glast) * S + (k * exp(glast - gi))^T @ v
  Every exponent is a within-chunk partial sum of w over a range, so it is <= 0: strong decays
  underflow to 0, nothing overflows. The cumsums only span 16 tokens, so precision does not
  degrade with T.
- Work splits over key blocks (NK) and value blocks (NV) when B*H is small (B=1, long T):
  everything above is additive over key blocks (y partials summed on the host) and independent
  over value blocks.
- The forward optionally saves the chunk-start states (fp32 [B,H,NT,N,N]); the backward walks
  the chunks in reverse carrying dS (the state gradient), recomputes the chunk's intra terms and
  emits dr, dk, dv, dw, du, dS0. The chunk-local identity
      dw_tau = sum_{t>tau} r_t*dq_t - sum_{s>=tau} k_s*dk_s + rowsum(S_end * dS_end)
  (dq, dk = the state parts of dr, dk; notes §1) would need no per-token state, but it cancels
  O(1) terms when the true dw is ~exp(-30); so the kernel sums the same pairs directly instead,
  each with its own decay factor (triangular-mask dots + one [BT, BT*BT] mask contraction).
- tl.dot runs with input_precision 'ieee' for fp32 inputs, 'tf32' for 16-bit inputs.

`python wkv6_triton.py --bench [--out=DIR]` times torch-chunked / Triton / CUDA / fla (when
importable) and writes a results JSON (see bench()).
"""
import math
import os
import sys

import torch
import triton
import triton.language as tl

BT_DEFAULT = 16


def _configs():
    # WKV6_TRITON_AUTOTUNE=0 keeps one config (fast compiles in tests); the conftest patch does the
    # same under the CPU interpreter.
    cfgs = [triton.Config({}, num_warps=nw, num_stages=ns) for nw in (4, 8) for ns in (2, 1)]
    return cfgs[:1] if os.environ.get('WKV6_TRITON_AUTOTUNE', '1') == '0' else cfgs


@triton.autotune(configs=_configs(), key=['N', 'BK', 'BV', 'SAVE', 'PREC'])
@triton.jit(do_not_specialize=['T', 'y_pstride'])
def _wkv6_fwd_kernel(r, k, v, w, u, s0, y, sT, hbuf, T, y_pstride,
                     H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                     BV: tl.constexpr, SAVE: tl.constexpr, PREC: tl.constexpr):
    i_k = tl.program_id(0)
    i_v = tl.program_id(1)
    i_bh = tl.program_id(2).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    NT = tl.cdiv(T, BT)
    o_t = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    base = (i_b * T * H + i_h) * N                      # element (b, t=0, h, 0), int64
    st_off = (i_bh * N + o_k[:, None]) * N + o_v[None, :]
    lower = o_t[:, None] > o_t[None, :]                 # [t, s]: s < t

    b_u = tl.load(u + i_h * N + o_k).to(tl.float32)
    b_S = tl.load(s0 + st_off)                          # [BK, BV] fp32
    for c in range(0, NT):
        cc = tl.cast(c, tl.int64)
        if SAVE:
            tl.store(hbuf + (i_bh * NT + cc) * N * N + (o_k[:, None] * N + o_v[None, :]), b_S)
        ot = cc * BT + o_t
        mt = ot < T
        row = base + ot * (H * N)
        p_k = row[:, None] + o_k[None, :]
        p_v = row[:, None] + o_v[None, :]
        b_r = tl.load(r + p_k, mask=mt[:, None], other=0.).to(tl.float32)
        b_k = tl.load(k + p_k, mask=mt[:, None], other=0.).to(tl.float32)
        b_w = tl.load(w + p_k, mask=mt[:, None], other=0.).to(tl.float32)
        b_v = tl.load(v + p_v, mask=mt[:, None], other=0.).to(tl.float32)
        gi = tl.cumsum(b_w, axis=0)
        ge = gi - b_w
        glast = tl.sum(b_w, axis=0)
        e = tl.exp(tl.where(lower[:, :, None], ge[:, None, :] - gi[None, :, :], float('-inf')))
        A = tl.sum(b_r[:, None, :] * b_k[None, :, :] * e, axis=2)             # [BT, BT]
        b_y = tl.dot(b_r * tl.exp(ge), b_S, input_precision=PREC)
        b_y += tl.dot(A, b_v, input_precision=PREC)
        b_y += tl.sum(b_r * b_u[None, :] * b_k, axis=1)[:, None] * b_v
        tl.store(y + i_k * y_pstride + p_v, b_y, mask=mt[:, None])
        b_kd = b_k * tl.exp(glast[None, :] - gi)
        b_S = b_S * tl.exp(glast)[:, None] + tl.dot(tl.trans(b_kd), b_v, input_precision=PREC)
    tl.store(sT + st_off, b_S)


@triton.autotune(configs=_configs(), key=['N', 'BK', 'BV', 'PREC'])
@triton.jit(do_not_specialize=['T', 'kv_pstride', 'v_pstride'])
def _wkv6_bwd_kernel(r, k, v, w, u, hbuf, gy, gsT, dr, dk, dv, dw, du, ds0, T, kv_pstride, v_pstride,
                     H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                     BV: tl.constexpr, PREC: tl.constexpr):
    i_k = tl.program_id(0)
    i_v = tl.program_id(1)
    i_bh = tl.program_id(2).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    NT = tl.cdiv(T, BT)
    o_t = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    base = (i_b * T * H + i_h) * N
    st_off = (i_bh * N + o_k[:, None]) * N + o_v[None, :]
    lower = o_t[:, None] > o_t[None, :]
    up = tl.where(o_t[None, :] > o_t[:, None], 1., 0.)                  # [tau, t]: t > tau
    lo = tl.where(o_t[None, :] < o_t[:, None], 1., 0.)                  # [tau, s]: s < tau
    o_p = tl.arange(0, BT * BT)                                         # pair index t*BT + s
    p_t = o_p // BT
    p_s = o_p % BT
    span = tl.where((p_s[None, :] < o_t[:, None]) & (o_t[:, None] < p_t[None, :]), 1., 0.)  # [tau, pair]

    b_u = tl.load(u + i_h * N + o_k).to(tl.float32)
    b_G = tl.load(gsT + st_off)                          # dL/dS at the end of the current chunk
    b_du = tl.zeros([BK], dtype=tl.float32)
    for c2 in range(0, NT):
        cc = tl.cast(NT - 1 - c2, tl.int64)
        b_S = tl.load(hbuf + (i_bh * NT + cc) * N * N + (o_k[:, None] * N + o_v[None, :]))
        ot = cc * BT + o_t
        mt = ot < T
        row = base + ot * (H * N)
        p_k = row[:, None] + o_k[None, :]
        p_v = row[:, None] + o_v[None, :]
        b_r = tl.load(r + p_k, mask=mt[:, None], other=0.).to(tl.float32)
        b_k = tl.load(k + p_k, mask=mt[:, None], other=0.).to(tl.float32)
        b_w = tl.load(w + p_k, mask=mt[:, None], other=0.).to(tl.float32)
        b_v = tl.load(v + p_v, mask=mt[:, None], other=0.).to(tl.float32)
        b_gy = tl.load(gy + p_v, mask=mt[:, None], other=0.).to(tl.float32)
        gi = tl.cumsum(b_w, axis=0)
        ge = gi - b_w
        glast = tl.sum(b_w, axis=0)
        eg = tl.exp(ge)                                                      # [BT, BK]
        ekl = tl.exp(glast[None, :] - gi)                                    # [BT, BK]
        e = tl.exp(tl.where(lower[:, :, None], ge[:, None, :] - gi[None, :, :], float('-inf')))
        A = tl.sum(b_r[:, None, :] * b_k[None, :, :] * e, axis=2)           # [BT(t), BT(s)]
        dA = tl.where(lower, tl.dot(b_gy, tl.trans(b_v), input_precision=PREC), 0.)
        q = dA[:, :, None] * e
        dqx = tl.dot(b_gy, tl.trans(b_S), input_precision=PREC) * eg        # inter parts, kept apart
        dkx = tl.dot(b_v, tl.trans(b_G), input_precision=PREC) * ekl        # for dw below
        dq = tl.sum(q * b_k[None, :, :], axis=1) + dqx                      # state part of dr
        dks = tl.sum(q * b_r[:, None, :], axis=0) + dkx                     # state part of dk
        vg = tl.sum(b_v * b_gy, axis=1)                                      # [BT]
        tl.store(dr + i_v * kv_pstride + p_k, dq + b_u[None, :] * b_k * vg[:, None], mask=mt[:, None])
        tl.store(dk + i_v * kv_pstride + p_k, dks + b_u[None, :] * b_r * vg[:, None], mask=mt[:, None])
        b_du += tl.sum(b_r * b_k * vg[:, None], axis=0)
        b_kd = b_k * ekl
        b_dv = tl.dot(b_kd, b_G, input_precision=PREC)
        b_dv += tl.dot(tl.trans(A), b_gy, input_precision=PREC)
        b_dv += tl.sum(b_r * b_u[None, :] * b_k, axis=1)[:, None] * b_gy
        tl.store(dv + i_k * v_pstride + p_v, b_dv, mask=mt[:, None])
        # dw_tau = sum over every (source, reader) pair whose decay spans tau, each term carrying its
        # own decay factor (no difference of large sums, so strong decays keep relative accuracy):
        #   readers t>tau of the chunk-start state, sources s<tau into the chunk-end state,
        #   start->end (exp(glast) <S, dS>), and intra pairs s < tau < t (masked contraction).
        b_dw = tl.dot(up, b_r * dqx, input_precision=PREC)
        b_dw += tl.dot(lo, b_k * dkx, input_precision=PREC)
        b_dw += (tl.exp(glast) * tl.sum(b_S * b_G, axis=1))[None, :]
        m = tl.reshape(q * b_r[:, None, :] * b_k[None, :, :], (BT * BT, BK))
        b_dw += tl.dot(span, m, input_precision=PREC)
        tl.store(dw + i_v * kv_pstride + p_k, b_dw, mask=mt[:, None])
        b_G = b_G * tl.exp(glast)[:, None] + tl.dot(tl.trans(b_r * eg), b_gy, input_precision=PREC)
    tl.store(ds0 + st_off, b_G)
    tl.store(du + ((i_v * (tl.num_programs(2) // H) + i_b) * H + i_h) * N + o_k, b_du)


# ----------------------------------------------------------------------------------------------
# launch helpers

def _blocks(B, H, N):
    """(BK, BV): key blocks of <= 64 keep the [16,16,BK] intra tile in registers; when B*H*NK
    programs would leave most SMs idle (B=1 long-context), split the value dim too."""
    if os.environ.get('WKV6_TRITON_BLOCKS'):
        bk, bv = (int(x) for x in os.environ['WKV6_TRITON_BLOCKS'].split(','))
        return min(bk, N), min(bv, N)
    BK = min(N, 64)
    BV = N
    while B * H * (N // BK) * (N // BV) < 128 and BV > 16:
        BV //= 2
    return BK, BV


def _prec(dtype):
    return 'ieee' if dtype == torch.float32 else 'tf32'


def _fwd_impl(r, k, v, w, u, s0, save):
    B, T, H, N = r.shape
    BK, BV = _blocks(B, H, N)
    NK, NV = N // BK, N // BV
    NT = triton.cdiv(T, BT_DEFAULT)
    y = torch.empty_like(r) if NK == 1 else r.new_empty((NK, B, T, H, N), dtype=torch.float32)
    sT = torch.empty_like(s0)
    hbuf = s0.new_empty((B, H, NT, N, N)) if save else s0.new_empty((0,))
    _wkv6_fwd_kernel[(NK, NV, B * H)](r, k, v, w, u, s0, y, sT, hbuf, T, 0 if NK == 1 else B * T * H * N,
                                      H=H, N=N, BT=BT_DEFAULT, BK=BK, BV=BV, SAVE=save, PREC=_prec(r.dtype))
    if NK > 1:
        y = y.sum(0).to(r.dtype)
    return y, sT, hbuf


def _bwd_impl(r, k, v, w, u, hbuf, gy, gsT):
    B, T, H, N = r.shape
    BK, BV = _blocks(B, H, N)
    NK, NV = N // BK, N // BV
    f32 = torch.float32
    dr = torch.empty_like(r) if NV == 1 else r.new_empty((NV, B, T, H, N), dtype=f32)
    dk = torch.empty_like(r) if NV == 1 else r.new_empty((NV, B, T, H, N), dtype=f32)
    dw = torch.empty_like(w) if NV == 1 else r.new_empty((NV, B, T, H, N), dtype=f32)
    dv = torch.empty_like(r) if NK == 1 else r.new_empty((NK, B, T, H, N), dtype=f32)
    du = r.new_empty((NV, B, H, N), dtype=f32)
    ds0 = torch.empty_like(gsT)
    _wkv6_bwd_kernel[(NK, NV, B * H)](r, k, v, w, u, hbuf, gy, gsT, dr, dk, dv, dw, du, ds0, T,
                                      0 if NV == 1 else B * T * H * N, 0 if NK == 1 else B * T * H * N,
                                      H=H, N=N, BT=BT_DEFAULT, BK=BK, BV=BV, PREC=_prec(r.dtype))
    if NV > 1:
        dr, dk, dw = dr.sum(0).to(r.dtype), dk.sum(0).to(r.dtype), dw.sum(0)
    if NK > 1:
        dv = dv.sum(0).to(r.dtype)
    return dr, dk, dv, dw, du.sum((0, 1)), ds0


# torch.library ops so torch.compile traces around the kernels (CPU/interpreter launches are
# opaque to the compiler too, see deps.md §1 pitfall 6).
@torch.library.custom_op("wkv6::triton_fwd", mutates_args=())
def _tri_fwd(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, u: torch.Tensor,
             s0: torch.Tensor, save: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _fwd_impl(r, k, v, w, u, s0, save)


@_tri_fwd.register_fake
def _(r, k, v, w, u, s0, save):
    B, T, H, N = r.shape
    NT = triton.cdiv(T, BT_DEFAULT)
    return (torch.empty_like(r), torch.empty_like(s0),
            s0.new_empty((B, H, NT, N, N)) if save else s0.new_empty((0,)))


@torch.library.custom_op("wkv6::triton_bwd", mutates_args=())
def _tri_bwd(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, u: torch.Tensor,
             hbuf: torch.Tensor, gy: torch.Tensor, gsT: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _bwd_impl(r, k, v, w, u, hbuf, gy, gsT)


@_tri_bwd.register_fake
def _(r, k, v, w, u, hbuf, gy, gsT):
    return (torch.empty_like(r), torch.empty_like(r), torch.empty_like(r), torch.empty_like(w),
            torch.empty_like(u), torch.empty_like(gsT))


def _tri_setup(ctx, inputs, output):
    r, k, v, w, u, s0, save = inputs
    if not save:
        raise RuntimeError("wkv6_triton: forward ran without saving states but a backward was requested")
    ctx.save_for_backward(r, k, v, w, u, output[2])


def _tri_backward(ctx, gy, gsT, _ghbuf):
    r, k, v, w, u, hbuf = ctx.saved_tensors
    B, T, H, N = r.shape
    gy = torch.zeros_like(r) if gy is None else gy.to(r.dtype).contiguous()
    gsT = r.new_zeros((B, H, N, N), dtype=torch.float32) if gsT is None else gsT.float().contiguous()
    dr, dk, dv, dw, du, ds0 = _tri_bwd(r, k, v, w, u, hbuf, gy, gsT)
    return dr, dk, dv, dw, du, ds0, None


_tri_fwd.register_autograd(_tri_backward, setup_context=_tri_setup)


def wkv6_triton(r, k, v, w, u, state=None):
    """Triton WKV-6; same contract as wkv6.wkv6 (y in r.dtype, fp32 final state)."""
    from wkv6 import _check_inputs, _prep_fast
    _check_inputs(r, k, v, w, u, state)
    N = r.shape[-1]
    if N < 16 or N > 128 or N & (N - 1):
        raise ValueError(f"wkv6_triton: head size must be 16, 32, 64 or 128, got {N}")
    if r.shape[1] < 1:
        raise ValueError("wkv6_triton: T must be >= 1")
    args = _prep_fast(r, k, v, w, u, state)
    save = torch.is_grad_enabled() and any(x.requires_grad for x in (r, k, v, w, u) + ((state,) if state is not None else ()))
    y, sT, _ = _tri_fwd(*args, save)
    return y, sT


if __name__ == '__main__' and '--bench' in sys.argv:
    from wkv6_bench import main as _bench_main
    _bench_main(sys.argv[1:])
