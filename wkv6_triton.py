"""
WKV-6 as chunked Triton kernels (forward + backward, initial state in, final state out).

Design (see wkv6.py for the operator's contract):
- One program per (key block, value block, batch*head) walks the sequence in chunks of BT=16
  tokens, carrying an fp32 state tile S[BK, BV] in registers. Per chunk:
      gi = inclusive cumsum of w (log-decay, fp32), ge = gi - w (exclusive), glast = sum of w
      y  = (r*exp(ge)) @ S  +  A @ v  +  (sum_j r u k) * v               (inter + intra + bonus)
      A[t,s] = sum_j r_t k_s exp(ge_t - gi_s)   for s < t  (two intra forms, below)
      S  = exp(glast) * S + (k * exp(glast - gi))^T @ v
  Every exponent is a within-chunk partial sum of w over a range, so it is <= 0: strong decays
  underflow to 0, nothing overflows. The sums are one running fp32 sum over the chunk's rows, replayed
  bit for bit by both intra forms, so adjacent tokens get exactly exp(0). The cumsums only span 16
  tokens, so precision does not degrade with T.
- The intra-chunk pairs come in two forms of the same sums (_intra). Default 'levels': each pair (s, t) belongs
  to the level of the highest bit where s and t differ; there its decay factorises around the middle of its block
  into two factors with exponents <= 0, so the pairs are log2(BT) = 4 small tensor-core dots per chunk (_level).
  'columns': one source column s at a time on [BT, BK] tiles, each pair with its own elementwise factor (the
  first version built [BT, BT, BK] temporaries, which spilled: 255 registers + 1.8 KB of spills per thread in the
  chunk-parallel backward at 4 warps, ptxas for sm_90; scripts/wkv6_ptxas.py reports the current kernels).
- Work splits over key blocks (NK) and value blocks (NV) when B*H is small (B=1, long T):
  everything above is additive over key blocks (y partials summed on the host) and independent
  over value blocks.
- The forward optionally saves the chunk-start states (fp32 [B,H,NT,N,N]); the backward walks
  the chunks in reverse carrying dS (the state gradient), recomputes the chunk's intra terms and
  emits dr, dk, dv, dw, du, dS0. The chunk-local identity
      dw_tau = sum_{t>tau} r_t*dq_t - sum_{s>=tau} k_s*dk_s + rowsum(S_end * dS_end)
  (dq, dk = the state parts of dr, dk; notes §1) would need no per-token state, but it cancels
  O(1) terms when the true dw is ~exp(-30); so the kernel sums the same pairs directly instead,
  each with its own decay factor (triangular-mask dots + a running sum over source columns).
- Two schedules of the same chunk math (see _mode): 'fused' = the one sequential pass above;
  'split' = sequential *state scans only* (S at each chunk start forward, dS at each chunk end
  backward, stored fp32) + chunk-parallel kernels for y and for all gradients. Fused wins wherever
  B*H fills the GPU; split wins by far at B*H small.
- tl.dot runs with input_precision 'ieee' for fp32 inputs, 'tf32' for 16-bit inputs.

Measured, bf16, N=64, fwd+bwd median ms, on "NVIDIA H200", levels form vs columns form side by side in one run
(results/wkv6_bench_h200_run2.json, default schedule): (32,256,4) 1.21 vs 1.38, (16,1024,8) 1.78 vs 2.62,
(8,4096,32) 9.89 vs 15.5; our recurrent CUDA kernel (wkv6.cu) in the same run 1.17 / 4.65 / 26.1. The issue's
targets (on an H100: 0.5 / 1.5 / 4.0) are not met. Later on an H200, with the autotune keyed by grid waves (_waves) and
the gathers of _level_sums: 1.32 / 1.76 / 8.19 ms wall, 0.31 / 1.19 / 7.61 ms GPU time
(results/2026-12-02_wkv6_kernels_gather_h200.json). fla 0.6.0's chunk_rwkv6, each shape in one process with our
default of the commit before: 2.37 / 2.46 / 6.84 against 0.93 / 1.39 / 8.59
(results/2026-12-02_wkv6_kernels_fla_h200*.json). At long T and small B*H the split schedule's state scans run in
groups (wkv6_scan.py): (1,16384,4) 4.42 -> 1.48 ms fwd+bwd, side by side in one H200 run
(results/2026-12-03_wkv6_kernels_scan_groups_h200.json).

`python wkv6_triton.py --bench [--out=DIR]` (= `python wkv6_bench.py`) times torch-chunked / Triton / CUDA / fla
(when importable) side by side and writes a results JSON.
"""
import functools
import os
import sys

import torch
import triton
import triton.language as tl

from wkv6 import _check_inputs, _eager_route, _prep_fast, _upstream
from wkv6_scan import _cdiv, _configs, _nti, _scan

BT_DEFAULT = 16            # chunk length of the column-loop intra form (and the levels form's default)
MAX_LEVELS = tl.constexpr(7)   # INTRA=1 unrolls log2(BT) <= 7 levels (chunks of up to 128 tokens)


@triton.jit
def _decay_sums(cc, w, T, base, o_k, H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr):
    """Within-chunk log-decay sums by one running fp32 sum over the chunk's rows (the column loops below
    replay the same sum, so every pair exponent ge_t - gi_s is a difference of bit-identical partial
    sums: exactly 0 for adjacent tokens, never positive). Returns ge (sum_{tau<t}, [BT,BK]), gi
    (sum_{tau<=t}) and glast (the chunk's total, [BK])."""
    o_t = tl.arange(0, BT)
    run = tl.zeros([BK], dtype=tl.float32)
    ge = tl.zeros([BT, BK], dtype=tl.float32)
    gi = tl.zeros([BT, BK], dtype=tl.float32)
    for s in tl.static_range(BT):
        w_s = tl.load(w + base + (cc * BT + s) * (H * N) + o_k, mask=cc * BT + s < T, other=0.).to(tl.float32)
        ge = tl.where(o_t[:, None] == s, run[None, :], ge)
        run += w_s
        gi = tl.where(o_t[:, None] == s, run[None, :], gi)
    return ge, gi, run


@triton.jit
def _level_sums(b_w, BT: tl.constexpr):
    """INTRA=1: gi by tl.cumsum, ge = gi shifted down one row by tl.gather (a copy), so ge_t == gi_{t-1} bit for
    bit, as the column loops' running sums guarantee. The gathers here and in _level replaced 0/1 selection dots
    ('ieee' FMA dots: 320 of the forward loop's FFMAs); scripts/wkv6_ptxas.py, sm_90, 4 warps: fused forward
    7,904 -> 6,128 SASS instructions and 532 -> 256 spill bytes, fused backward 12,176 -> 10,768 and 1,172 -> 1,040."""
    o_t = tl.arange(0, BT)
    gi = tl.cumsum(b_w, axis=0)
    prev = tl.broadcast_to(tl.maximum(o_t - 1, 0)[:, None], gi.shape)
    ge = tl.where(o_t[:, None] > 0, tl.gather(gi, prev, 0), 0.)
    glast = tl.sum(tl.where(o_t[:, None] == BT - 1, gi, 0.), axis=0)
    return ge, gi, glast


@triton.jit
def _level(h: tl.constexpr, ge, gi, BT: tl.constexpr):
    """INTRA=1, level h: the pairs s < t whose highest differing bit is h (t in the upper half of a block of 2h
    rows, s in its lower half). With c = the block's last lower row, e(t, s) = exp(ge_t - gi_c) * exp(gi_c - gi_s)
    and both exponents are <= 0 (c is between s and t), so the pair weights factorise into tensor-core dots with
    no overflow; an underflowing factor means a weight below fp32's range anyway. Returns the row factors (upper
    rows, else 0), the column factors (lower rows, else 0), the level's [t, s] pair mask and its dw span mask
    [tau, x] = 1 where tau and x share a block and a half, and x < tau in the lower half (x = a source s) or x > tau
    in the upper half (x = a reader t)."""
    o_t = tl.arange(0, BT)
    blk = o_t // (2 * h)
    upper = (o_t % (2 * h)) >= h
    c = blk * (2 * h) + h - 1
    g_c = tl.gather(gi, tl.broadcast_to(c[:, None], gi.shape), 0)   # row t: gi[c(t)]
    qe = tl.exp(tl.where(upper[:, None], ge - g_c, float('-inf')))
    ke = tl.exp(tl.where(upper[:, None], float('-inf'), g_c - gi))
    lower = (o_t % (2 * h)) < h
    same = blk[:, None] == blk[None, :]
    m = upper[:, None] & lower[None, :] & same
    span = same & ((lower[:, None] & lower[None, :] & (o_t[None, :] < o_t[:, None])) |
                   (upper[:, None] & upper[None, :] & (o_t[None, :] > o_t[:, None])))
    return qe, ke, m, tl.where(span, 1., 0.)


@triton.jit
def _chunk_y(cc, b_S, r, k, v, w, y, T, y_pstride, i_k, i_v, base, b_u,
             H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
             PREC: tl.constexpr, INTRA: tl.constexpr):
    """y of chunk cc (int64) from its start-state tile; returns what the state update needs."""
    o_t = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    ot = cc * BT + o_t
    mt = ot < T
    row = base + ot * (H * N)
    p_k = row[:, None] + o_k[None, :]
    p_v = row[:, None] + o_v[None, :]
    b_r = tl.load(r + p_k, mask=mt[:, None], other=0.).to(tl.float32)
    b_k = tl.load(k + p_k, mask=mt[:, None], other=0.).to(tl.float32)
    b_v = tl.load(v + p_v, mask=mt[:, None], other=0.).to(tl.float32)
    if INTRA == 0:
        ge, gi, glast = _decay_sums(cc, w, T, base, o_k, H, N, BT, BK)
        # intra-chunk pair weights A[t, s] = sum_j r_t k_s exp(ge_t - gi_s), s < t, one column s at a time
        # ([BT, BK] tiles only: no [BT, BT, BK] temporaries to spill)
        A = tl.zeros([BT, BT], dtype=tl.float32)
        run = tl.zeros([BK], dtype=tl.float32)
        for s in tl.static_range(BT):
            p_s = base + (cc * BT + s) * (H * N) + o_k
            m_s = cc * BT + s < T
            run += tl.load(w + p_s, mask=m_s, other=0.).to(tl.float32)
            k_s = tl.load(k + p_s, mask=m_s, other=0.).to(tl.float32)
            e_s = tl.exp(tl.where(o_t[:, None] > s, ge - run[None, :], float('-inf')))
            col = tl.sum(b_r * k_s[None, :] * e_s, axis=1)
            A = tl.where(o_t[None, :] == s, col[:, None], A)
    else:   # the same pairs as log2(BT) levels of factorised dots (see _level)
        ge, gi, glast = _level_sums(tl.load(w + p_k, mask=mt[:, None], other=0.).to(tl.float32), BT)
        A = tl.zeros([BT, BT], dtype=tl.float32)
        for L in tl.static_range(MAX_LEVELS):
            if (BT >> (L + 1)) > 0:
                qe, ke, m, _ = _level(BT >> (L + 1), ge, gi, BT)
                A += tl.where(m, tl.dot(b_r * qe, tl.trans(b_k * ke), input_precision=PREC), 0.)
    b_y = tl.dot(b_r * tl.exp(ge), b_S, input_precision=PREC)
    b_y += tl.dot(A, b_v, input_precision=PREC)
    b_y += tl.sum(b_r * b_u[None, :] * b_k, axis=1)[:, None] * b_v
    tl.store(y + i_k * y_pstride + p_v, b_y, mask=mt[:, None])
    return b_k * tl.exp(glast[None, :] - gi), b_v, glast


@triton.jit
def _fwd_chunk(cc, NT, b_S, r, k, v, w, y, hbuf, T, y_pstride, i_k, i_bh, base, b_u,
               H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
               SAVE: tl.constexpr, PREC: tl.constexpr, INTRA: tl.constexpr):
    """One chunk of the fused forward: returns the state after the chunk."""
    i_v = tl.program_id(1)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    if SAVE:
        tl.store(hbuf + (i_bh * NT + cc) * N * N + (o_k[:, None] * N + o_v[None, :]), b_S)
    b_kd, b_v, glast = _chunk_y(cc, b_S, r, k, v, w, y, T, y_pstride, i_k, i_v, base, b_u, H, N, BT, BK, BV, PREC,
                                INTRA)
    return b_S * tl.exp(glast)[:, None] + tl.dot(tl.trans(b_kd), b_v, input_precision=PREC)


@triton.autotune(configs=_configs([(8, 2), (8, 1), (4, 2), (4, 1)]),
                 key=['N', 'BK', 'BV', 'SAVE', 'PREC', 'INTRA', 'WAVES'])
@triton.jit(do_not_specialize=['T', 'y_pstride', 'WAVES'])
def _wkv6_fwd_kernel(r, k, v, w, u, s0, y, sT, hbuf, T, y_pstride, WAVES,
                     H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                     BV: tl.constexpr, SAVE: tl.constexpr, PREC: tl.constexpr, NTI: tl.constexpr,
                     INTRA: tl.constexpr):
    i_k = tl.program_id(0)
    i_v = tl.program_id(1)
    i_bh = tl.program_id(2).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    base = (i_b * T * H + i_h) * N                      # element (b, t=0, h, 0), int64
    st_off = (i_bh * N + o_k[:, None]) * N + o_v[None, :]
    b_u = tl.load(u + i_h * N + o_k).to(tl.float32)
    b_S = tl.load(s0 + st_off)                          # [BK, BV] fp32
    if NTI > 0:   # interpreter: Python-int trip count (see _nti)
        for c in range(0, NTI):
            b_S = _fwd_chunk(tl.cast(c, tl.int64), NTI, b_S, r, k, v, w, y, hbuf, T, y_pstride, i_k, i_bh,
                             base, b_u, H, N, BT, BK, BV, SAVE, PREC, INTRA)
    else:
        NT = tl.cdiv(T, BT)
        for c in range(0, NT):
            b_S = _fwd_chunk(tl.cast(c, tl.int64), NT, b_S, r, k, v, w, y, hbuf, T, y_pstride, i_k, i_bh,
                             base, b_u, H, N, BT, BK, BV, SAVE, PREC, INTRA)
    tl.store(sT + st_off, b_S)


@triton.jit
def _chunk_grads(cc, b_S, b_G, r, k, v, w, gy, dr, dk, dv, dw, T, kv_pstride, v_pstride, i_k, i_v, base, b_u,
                 H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                 PREC: tl.constexpr, INTRA: tl.constexpr):
    """dr, dk, dv, dw of chunk cc from its start state S and the state gradient G at its end;
    returns (du contribution, r*exp(ge), gy, glast) for the reverse state-gradient update."""
    o_t = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    lower = o_t[:, None] > o_t[None, :]
    up = tl.where(o_t[None, :] > o_t[:, None], 1., 0.)                  # [tau, t]: t > tau
    lo = tl.where(o_t[None, :] < o_t[:, None], 1., 0.)                  # [tau, s]: s < tau
    ot = cc * BT + o_t
    mt = ot < T
    row = base + ot * (H * N)
    p_k = row[:, None] + o_k[None, :]
    p_v = row[:, None] + o_v[None, :]
    b_r = tl.load(r + p_k, mask=mt[:, None], other=0.).to(tl.float32)
    b_k = tl.load(k + p_k, mask=mt[:, None], other=0.).to(tl.float32)
    b_v = tl.load(v + p_v, mask=mt[:, None], other=0.).to(tl.float32)
    b_gy = tl.load(gy + p_v, mask=mt[:, None], other=0.).to(tl.float32)
    if INTRA == 0:
        ge, gi, glast = _decay_sums(cc, w, T, base, o_k, H, N, BT, BK)
    else:
        ge, gi, glast = _level_sums(tl.load(w + p_k, mask=mt[:, None], other=0.).to(tl.float32), BT)
    eg = tl.exp(ge)                                                      # [BT, BK]
    ekl = tl.exp(glast[None, :] - gi)                                    # [BT, BK]
    dA = tl.where(lower, tl.dot(b_gy, tl.trans(b_v), input_precision=PREC), 0.)   # [t, s]
    dqx = tl.dot(b_gy, tl.trans(b_S), input_precision=PREC) * eg        # inter parts, kept apart
    dkx = tl.dot(b_v, tl.trans(b_G), input_precision=PREC) * ekl        # for dw below
    # everything that needs the [BK, BV] state tiles before the loop, so they are dead inside it
    b_dv = tl.dot(b_k * ekl, b_G, input_precision=PREC)
    dw_se = tl.exp(glast) * tl.sum(b_S * b_G, axis=1)                   # start->end pairs
    A = tl.zeros([BT, BT], dtype=tl.float32)
    dq = dqx
    dks = dkx
    dwi = tl.zeros([BT, BK], dtype=tl.float32)
    if INTRA == 0:
        # intra pairs (s < t), one source column s at a time, each pair with its own decay factor e_s[t]:
        #   A[t,s] (for dv), dq[t] += dA[t,s] e_s[t] k_s, dk[s] = sum_t dA[t,s] e_s[t] r_t, and for dw every
        #   pair (s, t) counts at each tau with s < tau < t: R = sum over columns < tau of the pair terms,
        #   dw_intra[tau] = sum_{t > tau} R[t] (no difference of large sums: strong decays keep accuracy)
        R = tl.zeros([BT, BK], dtype=tl.float32)
        run = tl.zeros([BK], dtype=tl.float32)
        for s in tl.static_range(BT):
            p_s = base + (cc * BT + s) * (H * N) + o_k
            m_s = cc * BT + s < T
            run += tl.load(w + p_s, mask=m_s, other=0.).to(tl.float32)
            k_s = tl.load(k + p_s, mask=m_s, other=0.).to(tl.float32)
            e_s = tl.exp(tl.where(o_t[:, None] > s, ge - run[None, :], float('-inf')))
            is_s = o_t[:, None] == s
            dwi = tl.where(is_s, tl.sum(tl.where(o_t[:, None] > s, R, 0.), axis=0)[None, :], dwi)
            A = tl.where(o_t[None, :] == s, tl.sum(b_r * k_s[None, :] * e_s, axis=1)[:, None], A)
            E = tl.sum(tl.where(o_t[None, :] == s, dA, 0.), axis=1)[:, None] * e_s          # dA[t,s] e_s[t]
            dq += E * k_s[None, :]
            Er = E * b_r
            dks = tl.where(is_s, dks + tl.sum(Er, axis=0)[None, :], dks)
            R += Er * k_s[None, :]
    else:
        # per level (see _level): q = r*qe (upper rows), kf = k*ke (lower rows), dA_l = dA on the level's pairs;
        # dq += qe * (dA_l @ kf), dk += ke * (dA_l^T @ q). For dw, a pair (s, t) of the level spans every tau with
        # s < tau < t: a lower-half tau sees all of the block's upper t, so it sums the pair terms of the sources
        # s < tau (k * dk_l rows); an upper-half tau sums those of the readers t > tau (r * dq_l rows); one 0/1 mask
        # dot per level does both, each pair term carrying its own decay (no difference of large sums).
        for L in tl.static_range(MAX_LEVELS):
            if (BT >> (L + 1)) > 0:
                qe, ke, m, span = _level(BT >> (L + 1), ge, gi, BT)
                q = b_r * qe
                kf = b_k * ke
                A += tl.where(m, tl.dot(q, tl.trans(kf), input_precision=PREC), 0.)
                dA_l = tl.where(m, dA, 0.)
                dq_l = qe * tl.dot(dA_l, kf, input_precision=PREC)
                dk_l = ke * tl.dot(tl.trans(dA_l), q, input_precision=PREC)
                dq += dq_l
                dks += dk_l
                dwi += tl.dot(span, b_r * dq_l + b_k * dk_l, input_precision=PREC)
    vg = tl.sum(b_v * b_gy, axis=1)                                      # [BT]
    tl.store(dr + i_v * kv_pstride + p_k, dq + b_u[None, :] * b_k * vg[:, None], mask=mt[:, None])
    tl.store(dk + i_v * kv_pstride + p_k, dks + b_u[None, :] * b_r * vg[:, None], mask=mt[:, None])
    b_du = tl.sum(b_r * b_k * vg[:, None], axis=0)
    b_dv += tl.dot(tl.trans(A), b_gy, input_precision=PREC)
    b_dv += tl.sum(b_r * b_u[None, :] * b_k, axis=1)[:, None] * b_gy
    tl.store(dv + i_k * v_pstride + p_v, b_dv, mask=mt[:, None])
    # dw_tau = sum over every (source, reader) pair whose decay spans tau: readers t>tau of the
    # chunk-start state, sources s<tau into the chunk-end state, start->end (exp(glast) <S, dS>),
    # and the intra pairs above
    b_dw = tl.dot(up, b_r * dqx, input_precision=PREC)
    b_dw += tl.dot(lo, b_k * dkx, input_precision=PREC)
    b_dw += dw_se[None, :]
    b_dw += dwi
    tl.store(dw + i_v * kv_pstride + p_k, b_dw, mask=mt[:, None])
    return b_du, b_r * eg, b_gy, glast


@triton.jit
def _bwd_chunk(cc, NT, b_G, b_du, r, k, v, w, hbuf, gy, dr, dk, dv, dw, T, kv_pstride, v_pstride,
               i_k, i_bh, base, b_u,
               H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
               PREC: tl.constexpr, INTRA: tl.constexpr):
    """One chunk of the fused backward, in reverse order: takes dL/dS at the chunk end, returns it
    at the chunk start (and the running du)."""
    i_v = tl.program_id(1)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    b_S = tl.load(hbuf + (i_bh * NT + cc) * N * N + (o_k[:, None] * N + o_v[None, :]))
    du_c, b_re, b_gy, glast = _chunk_grads(cc, b_S, b_G, r, k, v, w, gy, dr, dk, dv, dw, T, kv_pstride, v_pstride,
                                           i_k, i_v, base, b_u, H, N, BT, BK, BV, PREC, INTRA)
    b_G = b_G * tl.exp(glast)[:, None] + tl.dot(tl.trans(b_re), b_gy, input_precision=PREC)
    return b_G, b_du + du_c


@triton.autotune(configs=_configs([(8, 1), (4, 1), (8, 2)]), key=['N', 'BK', 'BV', 'PREC', 'INTRA', 'WAVES'])
@triton.jit(do_not_specialize=['T', 'kv_pstride', 'v_pstride', 'WAVES'])
def _wkv6_bwd_kernel(r, k, v, w, u, hbuf, gy, gsT, dr, dk, dv, dw, du, ds0, T, kv_pstride, v_pstride, WAVES,
                     H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                     BV: tl.constexpr, PREC: tl.constexpr, NTI: tl.constexpr, INTRA: tl.constexpr):
    i_k = tl.program_id(0)
    i_v = tl.program_id(1)
    i_bh = tl.program_id(2).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    base = (i_b * T * H + i_h) * N
    st_off = (i_bh * N + o_k[:, None]) * N + o_v[None, :]
    b_u = tl.load(u + i_h * N + o_k).to(tl.float32)
    b_G = tl.load(gsT + st_off)                          # dL/dS at the end of the current chunk
    b_du = tl.zeros([BK], dtype=tl.float32)
    if NTI > 0:   # interpreter: Python-int trip count (see _nti)
        for c2 in range(0, NTI):
            b_G, b_du = _bwd_chunk(tl.cast(NTI - 1 - c2, tl.int64), NTI, b_G, b_du, r, k, v, w, hbuf, gy,
                                   dr, dk, dv, dw, T, kv_pstride, v_pstride, i_k, i_bh, base, b_u,
                                   H, N, BT, BK, BV, PREC, INTRA)
    else:
        NT = tl.cdiv(T, BT)
        for c2 in range(0, NT):
            b_G, b_du = _bwd_chunk(tl.cast(NT - 1 - c2, tl.int64), NT, b_G, b_du, r, k, v, w, hbuf, gy,
                                   dr, dk, dv, dw, T, kv_pstride, v_pstride, i_k, i_bh, base, b_u,
                                   H, N, BT, BK, BV, PREC, INTRA)
    tl.store(ds0 + st_off, b_G)
    tl.store(du + ((i_v * (tl.num_programs(2) // H) + i_b) * H + i_h) * N + o_k, b_du)


# ----------------------------------------------------------------------------------------------
# split mode: the sequential part is only the state scan (cheap per chunk; wkv6_scan.py); everything heavy
# (the [BT,BT,BK] intra terms, all outputs) runs chunk-parallel from the stored chunk states.
#   forward:  _scan (S at each chunk start -> hbuf, final state) ; _out_fwd (y, all chunks at once)
#   backward: _scan (dS at each chunk end -> dhbuf, dS0)          ; _out_bwd (dr dk dv dw du)

@triton.autotune(configs=_configs([(8, 1), (4, 1)]), key=['N', 'BK', 'BV', 'PREC', 'INTRA'])
@triton.jit(do_not_specialize=['T', 'y_pstride', 'NT'])
def _out_fwd_kernel(r, k, v, w, u, hbuf, y, T, y_pstride, NT, H: tl.constexpr, N: tl.constexpr,
                    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr, INTRA: tl.constexpr):
    cc = tl.program_id(0).to(tl.int64)
    i_k = tl.program_id(1) // (N // BV)
    i_v = tl.program_id(1) % (N // BV)
    i_bh = tl.program_id(2).to(tl.int64)
    i_h = i_bh % H
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    base = ((i_bh // H) * T * H + i_h) * N
    b_u = tl.load(u + i_h * N + o_k).to(tl.float32)
    b_S = tl.load(hbuf + (i_bh * NT + cc) * N * N + (o_k[:, None] * N + o_v[None, :]))
    _chunk_y(cc, b_S, r, k, v, w, y, T, y_pstride, i_k, i_v, base, b_u, H, N, BT, BK, BV, PREC, INTRA)


# At 8 warps and 255 registers per thread one program fills an SM's register file (8 of its 64 warp slots), and the
# split schedule's chunk-parallel backward was 6.0 of its 10.1 ms at (8,4096,32) (results/2026-12-03_wkv6_kernels_
# split_blocks_h200.json). Capped at 128 registers ptxas spills 260 B per thread at 8 warps (16 B uncapped) and two
# programs fit per SM, four at 4 warps (scripts/wkv6_ptxas.py --only=chunk_bwd --maxnreg=128). The autotuner times
# the capped configs next to the others; which one wins on a GPU is not measured yet.
OUT_BWD_CONFIGS = [(8, 1), (16, 1), (8, 1, 128), (4, 1, 128)]   # (num_warps, num_stages[, maxnreg])


@triton.autotune(configs=_configs(OUT_BWD_CONFIGS), key=['N', 'BK', 'BV', 'PREC', 'INTRA'])
@triton.jit(do_not_specialize=['T', 'kv_pstride', 'v_pstride', 'NT'])
def _out_bwd_kernel(r, k, v, w, u, hbuf, dhbuf, gy, dr, dk, dv, dw, du, T, kv_pstride, v_pstride, NT,
                    H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                    PREC: tl.constexpr, INTRA: tl.constexpr):
    cc = tl.program_id(0).to(tl.int64)
    i_k = tl.program_id(1) // (N // BV)
    i_v = tl.program_id(1) % (N // BV)
    i_bh = tl.program_id(2).to(tl.int64)
    i_h = i_bh % H
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    base = ((i_bh // H) * T * H + i_h) * N
    st = (i_bh * NT + cc) * N * N + (o_k[:, None] * N + o_v[None, :])
    b_u = tl.load(u + i_h * N + o_k).to(tl.float32)
    du_c, b_re, b_gy, glast = _chunk_grads(cc, tl.load(hbuf + st), tl.load(dhbuf + st), r, k, v, w, gy, dr, dk,
                                           dv, dw, T, kv_pstride, v_pstride, i_k, i_v, base, b_u,
                                           H, N, BT, BK, BV, PREC, INTRA)
    tl.store(du + ((i_v * tl.num_programs(2) + i_bh) * NT + cc) * N + o_k, du_c)


# ----------------------------------------------------------------------------------------------
# launch helpers

def _blocks(B, H, N, split=False):
    """(BK, BV) of the chunk kernels: key blocks of <= 64 keep the [16,16,BK] intra tile in registers. The fused
    schedule splits the value dim too when B*H*NK programs would leave most SMs idle (B=1 long-context); the split
    schedule's chunk-parallel kernels have NT times more programs and keep whole value rows. WKV6_TRITON_BLOCKS
    overrides either (e.g. '64,32'; the bench's variants)."""
    if os.environ.get('WKV6_TRITON_BLOCKS'):
        bk, bv = (int(x) for x in os.environ['WKV6_TRITON_BLOCKS'].split(','))
        return min(bk, N), min(bv, N)
    BK = min(N, 64)
    if split:
        return BK, N
    BV = N
    while B * H * (N // BK) * (N // BV) < 128 and BV > 16:
        BV //= 2
    return BK, BV


def _chunk_len():
    """Tokens per chunk: 16 for the column-loop intra form (its loops unroll per token); the levels form takes
    WKV6_TRITON_LEVELS_BT = 16 (default), 32 or 64: longer chunks mean fewer stored states and sequential scan
    steps, but with every [BT, BK] tile in registers ptxas (scripts/wkv6_ptxas.py: sm_90, 8 warps, BK=64) spills
    the chunk-parallel backward 132 B per thread at 16, 1.7 KB at 32 and 13 KB at 64, so only 16 is a candidate
    until the tiles are staged through shared memory. All three are CPU-tested."""
    if _intra() == 0:
        return BT_DEFAULT
    bt = int(os.environ.get('WKV6_TRITON_LEVELS_BT', '16'))
    if bt not in (16, 32, 64):
        raise ValueError(f"WKV6_TRITON_LEVELS_BT must be 16, 32 or 64, got {bt}")
    return bt


@functools.lru_cache(maxsize=None)
def _waves(n_prog, device):
    """Waves an 8-warp fused grid takes, 1 to 3 (3 = three or more): an autotune key only (the kernels ignore it).
    At 8 warps the fused kernels use 255 registers per thread, so one program fills an SM (ncu on an H200,
    results/wkv6_ncu_h200_run7_8_4096_32.txt: 'Block Limit Registers 1', 1.94 waves at B*H=256); 4-warp programs
    fit two per SM. Which wins depends on the grid: at (8,4096,32) (256 programs) 4 warps, 8.47 ms fwd+bwd against
    9.54 pinned to 8 warps, side by side in one H200 run (results/2026-12-02_wkv6_kernels_tune_h200.json); at
    (32,256,4) (128 programs) the two tie on GPU time (0.312 / 0.316 ms, ..._gather_h200.json). Without this key the
    first shape's winner was reused at every other shape: tuned at (32,256,4), earlier runs ran (8,4096,32) on 8."""
    if device.type != 'cuda':
        return 1
    return min(3, _cdiv(n_prog, torch.cuda.get_device_properties(device).multi_processor_count))


def _prec(dtype):
    return 'ieee' if dtype == torch.float32 else 'tf32'


def _intra():
    """How the chunk kernels form the intra-chunk pairs: 1 = log2(BT) levels of factorised tensor-core dots (_level;
    the default since it was timed side by side with the column form on an H200, results/wkv6_bench_h200_run2.json:
    bf16 fwd+bwd fused 1.21 / 1.78 / 9.89 ms vs 1.38 / 2.62 / 15.5 ms at (32,256,4) / (16,1024,8) / (8,4096,32)),
    0 = one source column at a time (the earlier default, kept as the cross-check). WKV6_TRITON_INTRA = levels |
    columns."""
    m = os.environ.get('WKV6_TRITON_INTRA', 'levels')
    if m not in ('columns', 'levels'):
        raise ValueError(f"WKV6_TRITON_INTRA must be 'columns' or 'levels', got {m!r}")
    return 0 if m == 'columns' else 1


def _mode(B, H, T):
    """'fused' (one sequential pass per (b, h, tile); fewest launches) or 'split' (sequential state
    scans + chunk-parallel output/gradient kernels). WKV6_TRITON_MODE overrides. Default from one
    H200 run timing both side by side (results/2026-12-02_wkv6_kernels_h200.json; bf16, N=64,
    fwd+bwd ms fused / split): B*H=128 at T=256 1.03 / 1.38 and T=1024 2.31 / 2.73, B*H=192 at
    T=256 1.32 / 1.74, B*H=256 at T=4096 15.5 / 17.9, but B*H=4 at T=16384 26.3 / 4.7: fused
    wherever B*H alone fills the GPU (>= 128 programs), split when it does not (between 4 and 128
    not measured). Those were the column form's; with the levels form (results/wkv6_bench_h200_run2.json)
    B*H=128 at T=256 is 1.21 / 1.17 (split 3% faster), T=1024 1.78 / 2.06, B*H=256 at T=4096 9.89 / 10.97. With the
    grouped scans (results/2026-12-03_wkv6_kernels_split_blocks_h200.json): 0.81 / 0.79, 1.40 / 1.87, 7.83 / 10.08,
    and B*H=192 at T=256 0.86 / 1.17; the split's chunk-parallel backward alone is 6.0 ms at (8,4096,32)."""
    m = os.environ.get('WKV6_TRITON_MODE')
    if m is None:
        return 'fused' if B * H >= 128 else 'split'
    if m not in ('split', 'fused'):
        raise ValueError(f"WKV6_TRITON_MODE must be 'split' or 'fused', got {m!r}")
    return m


def _fwd_impl(r, k, v, w, u, s0, save):
    B, T, H, N = r.shape
    split = _mode(B, H, T) == 'split'
    BK, BV = _blocks(B, H, N, split)
    NK, NV = N // BK, N // BV
    bt, intra = _chunk_len(), _intra()
    NT = _cdiv(T, bt)
    prec = _prec(r.dtype)
    y = torch.empty_like(r) if NK == 1 else r.new_empty((NK, B, T, H, N), dtype=torch.float32)
    sT = torch.empty_like(s0)
    pstride = 0 if NK == 1 else B * T * H * N
    if split:
        hbuf = s0.new_empty((B, H, NT, N, N))
        _scan((k, w, v), s0, sT, hbuf, T, bt, prec, rev=False)
        _out_fwd_kernel[(NT, NK * NV, B * H)](r, k, v, w, u, hbuf, y, T, pstride, NT, H=H, N=N, BT=bt,
                                              BK=BK, BV=BV, PREC=prec, INTRA=intra)
        if not save:
            hbuf = s0.new_empty((0,))
    else:
        hbuf = s0.new_empty((B, H, NT, N, N)) if save else s0.new_empty((0,))
        _wkv6_fwd_kernel[(NK, NV, B * H)](r, k, v, w, u, s0, y, sT, hbuf, T, pstride,
                                          _waves(NK * NV * B * H, r.device), H=H, N=N, BT=bt,
                                          BK=BK, BV=BV, SAVE=save, PREC=prec, NTI=_nti(T, bt), INTRA=intra)
    if NK > 1:
        y = y.sum(0).to(r.dtype)
    return y, sT, hbuf


def _bwd_impl(r, k, v, w, u, hbuf, gy, gsT):
    B, T, H, N = r.shape
    split = _mode(B, H, T) == 'split'
    BK, BV = _blocks(B, H, N, split)
    NK, NV = N // BK, N // BV
    bt, intra = _chunk_len(), _intra()
    NT = hbuf.shape[2]   # the forward's chunk count: its chunk length must still be in force
    if NT != _cdiv(T, bt):
        raise RuntimeError(f"wkv6_triton: the forward ran with {NT} chunks of T={T}, the backward would use "
                           f"{bt}-token chunks; keep WKV6_TRITON_INTRA / WKV6_TRITON_LEVELS_BT fixed between them")
    prec = _prec(r.dtype)
    f32 = torch.float32
    dr = torch.empty_like(r) if NV == 1 else r.new_empty((NV, B, T, H, N), dtype=f32)
    dk = torch.empty_like(r) if NV == 1 else r.new_empty((NV, B, T, H, N), dtype=f32)
    dw = torch.empty_like(w) if NV == 1 else r.new_empty((NV, B, T, H, N), dtype=f32)
    dv = torch.empty_like(r) if NK == 1 else r.new_empty((NK, B, T, H, N), dtype=f32)
    ds0 = torch.empty_like(gsT)
    kv_ps = 0 if NV == 1 else B * T * H * N
    v_ps = 0 if NK == 1 else B * T * H * N
    if split:
        dhbuf = torch.empty_like(hbuf)
        du = r.new_empty((NV, B * H, NT, N), dtype=f32)
        _scan((r, w, gy), gsT, ds0, dhbuf, T, bt, prec, rev=True)
        _out_bwd_kernel[(NT, NK * NV, B * H)](r, k, v, w, u, hbuf, dhbuf, gy, dr, dk, dv, dw, du, T, kv_ps, v_ps,
                                              NT, H=H, N=N, BT=bt, BK=BK, BV=BV, PREC=prec, INTRA=intra)
        du = du.view(NV, B, H, NT, N).sum((0, 1, 3))
    else:
        du = r.new_empty((NV, B, H, N), dtype=f32)
        _wkv6_bwd_kernel[(NK, NV, B * H)](r, k, v, w, u, hbuf, gy, gsT, dr, dk, dv, dw, du, ds0, T, kv_ps, v_ps,
                                          _waves(NK * NV * B * H, r.device),
                                          H=H, N=N, BT=bt, BK=BK, BV=BV, PREC=prec, NTI=_nti(T, bt),
                                          INTRA=intra)
        du = du.sum((0, 1))
    if NV > 1:
        dr, dk, dw = dr.sum(0).to(r.dtype), dk.sum(0).to(r.dtype), dw.sum(0)
    if NK > 1:
        dv = dv.sum(0).to(r.dtype)
    return dr, dk, dv, dw, du, ds0


# torch.library ops so torch.compile traces around the kernels (CPU/interpreter launches are
# opaque to the compiler too, see deps.md §1 pitfall 6).
@torch.library.custom_op("wkv6::triton_fwd", mutates_args=())
def _tri_fwd(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, u: torch.Tensor,
             s0: torch.Tensor, save: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _fwd_impl(r, k, v, w, u, s0, save)


@_tri_fwd.register_fake
def _(r, k, v, w, u, s0, save):
    B, T, H, N = r.shape
    NT = _cdiv(T, _chunk_len())
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
    # the saved states (output 2) never get a gradient: unmaterialized, autograd would fill a zero tensor of their
    # size for every backward (1.07 GB at (8,4096,32): 0.23 ms on an H200); _upstream zero-fills only y's and sT's
    ctx.mark_non_differentiable(output[2])
    ctx.set_materialize_grads(False)


def _tri_backward(ctx, gy, gsT, _ghbuf):
    r, k, v, w, u, hbuf = ctx.saved_tensors
    dr, dk, dv, dw, du, ds0 = _tri_bwd(r, k, v, w, u, hbuf, *_upstream(r, gy, gsT))
    return dr, dk, dv, dw, du, ds0, None


_tri_fwd.register_autograd(_tri_backward, setup_context=_tri_setup)


class _EagerWKV6(torch.autograd.Function):
    """Eager (not compiling) calls: the same _fwd_impl / _bwd_impl as the custom ops above, without torch.library's
    Python dispatch. Timed per call the small shapes are host-bound: at (32,256,4) an H200 ran the fwd+bwd kernels in
    0.31 ms of GPU time but the call took 1.22 ms (results/2026-12-02_wkv6_kernels_profile_h200.json); on a CPU
    with the launches stubbed out (wkv6_bench.py --host=1, results/wkv6_host_overhead_cpu.json) the custom-op route
    costs 0.723 ms of host time per fused fwd+bwd and this one 0.447 ms, against 0.266 ms for an autograd.Function
    that does nothing (tests/test_wkv6.py checks both routes give identical outputs and gradients). torch.compile
    still sees the custom ops."""

    @staticmethod
    def forward(ctx, r, k, v, w, u, s0):
        y, sT, hbuf = _fwd_impl(r, k, v, w, u, s0, True)
        ctx.save_for_backward(r, k, v, w, u, hbuf)
        return y, sT

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy, gsT):
        r, k, v, w, u, hbuf = ctx.saved_tensors
        return _bwd_impl(r, k, v, w, u, hbuf, *_upstream(r, gy, gsT))


def wkv6_triton(r, k, v, w, u, state=None):
    """Triton WKV-6; same contract as wkv6.wkv6 (y in r.dtype, fp32 final state)."""
    _check_inputs(r, k, v, w, u, state)
    N = r.shape[-1]
    if N < 16 or N > 128 or N & (N - 1):
        raise ValueError(f"wkv6_triton: head size must be 16, 32, 64 or 128, got {N}")
    if r.shape[1] < 1:
        raise ValueError("wkv6_triton: T must be >= 1")
    args = _prep_fast(r, k, v, w, u, state)
    save = torch.is_grad_enabled() and any(x.requires_grad for x in (r, k, v, w, u) + ((state,) if state is not None else ()))
    if not _eager_route():
        y, sT, _ = _tri_fwd(*args, save)   # what the compiler traces (and, with the variable, the eager A/B route)
    elif save:
        y, sT = _EagerWKV6.apply(*args)
    else:
        y, sT, _ = _fwd_impl(*args, False)
    return y, sT


if __name__ == '__main__':
    if '--bench' in sys.argv:   # the timer lives in wkv6_bench.py
        from wkv6_bench import bench
        bench([a for a in sys.argv[1:] if a != '--bench'])
    else:
        print("usage: python wkv6_triton.py --bench [--out=DIR] [--deadline_s=S] [--reps=R]  (see wkv6_bench.py)")
