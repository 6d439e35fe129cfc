"""
WKV-6 chunk-state scans in Triton, the sequential part of wkv6_triton.py's 'split' schedule (see its docstring for the
chunk math): S at each chunk start (forward) and dS, the gradient of each chunk's end state (backward), stored fp32
as [B, H, NT, N, N] for the chunk-parallel kernels, plus the final state / the initial state's gradient.

Per chunk of BT tokens the forward step is S <- exp(glast) * S + (k * exp(glast - gi))^T @ v and the backward step
dS <- exp(glast) * dS + (r * exp(ge))^T @ gy (gi / ge the inclusive / exclusive cumsums of the log-decay w over the
chunk, glast its sum): every exponent is <= 0. Short sequences take one sequential pass; long ones run in groups of
chunks (_scan_group; the comment above _scan_kernel): the depth falls from NT to G + NT/G.

Also the launch helpers wkv6_triton.py shares with it (_configs, _cdiv, _nti).
"""
import os

import torch
import triton
import triton.language as tl


def _configs(pairs):
    # (num_warps, num_stages[, maxnreg]). WKV6_TRITON_AUTOTUNE=0 keeps the first config (fast compiles in tests); the
    # conftest patch does the same under the CPU interpreter. First = the best guess from ptxas reports (sm_90):
    # 8 warps keep the chunk kernels' [BT, BK] tiles in registers (4 warps spill in the backward). maxnreg caps the
    # registers per thread (ptxas spills the rest) so that more programs share an SM.
    cfgs = [triton.Config({}, num_warps=p[0], num_stages=p[1], maxnreg=p[2] if len(p) > 2 else None) for p in pairs]
    return cfgs[:1] if os.environ.get('WKV6_TRITON_AUTOTUNE', '1') == '0' else cfgs


def _cdiv(a, b):
    """Host-side ceil division (triton.cdiv is a constexpr function in triton 3.6: ~15 us per host call)."""
    return -(-a // b)


def _nti(T, bt):
    """Under TRITON_INTERPRET, triton 3.6 + numpy >= 2.4 cannot range() over a runtime scalar
    (deps.md §1 pitfall 7), so the interpreter gets the chunk count as a constexpr; compiled
    kernels get 0 and compute it from the runtime T (no recompile per T)."""
    return _cdiv(T, bt) if os.environ.get('TRITON_INTERPRET') == '1' else 0


@triton.jit
def _scan_step(cc, NT, b_S, a, w, b, buf, T, i_k, i_v, i_bh, base, H: tl.constexpr, N: tl.constexpr,
               BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr, REV: tl.constexpr):
    """Store the carried tile at chunk cc and return it carried over chunk cc, with the chunk's total log-decay:
    forward (a, b = k, v): S, chunk cc's start state -> exp(glast) * S + (k * exp(glast - gi))^T @ v;
    backward (REV; a, b = r, gy): dS, the gradient of chunk cc's end state -> exp(glast) * dS + (r * exp(ge))^T @ gy.
    A chunk past the end (cc >= NT, a group's tail) stores nothing and changes nothing (its rows load as 0)."""
    o_t = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    tl.store(buf + (i_bh * NT + cc) * N * N + (o_k[:, None] * N + o_v[None, :]), b_S, mask=cc < NT)
    ot = cc * BT + o_t
    mt = ot < T
    row = base + ot * (H * N)
    b_a = tl.load(a + row[:, None] + o_k[None, :], mask=mt[:, None], other=0.).to(tl.float32)
    b_w = tl.load(w + row[:, None] + o_k[None, :], mask=mt[:, None], other=0.).to(tl.float32)
    b_b = tl.load(b + row[:, None] + o_v[None, :], mask=mt[:, None], other=0.).to(tl.float32)
    gi = tl.cumsum(b_w, axis=0)
    glast = tl.sum(b_w, axis=0)
    if REV:
        b_ad = b_a * tl.exp(gi - b_w)
    else:
        b_ad = b_a * tl.exp(glast[None, :] - gi)
    return b_S * tl.exp(glast)[:, None] + tl.dot(tl.trans(b_ad), b_b, input_precision=PREC), glast


# The scans come in two shapes (G, a constexpr: see _scan_group). G=0: one program per (tile, b*h) walks all NT
# chunks, so the sequential depth is NT (1024 steps at T=16384: the two scans took 3.6 of the 4.1 ms GPU time of a
# split fwd+bwd at (1,16384,4) on an H200, results/2026-12-03_wkv6_kernels_scan_groups_h200.json, row '/g0').
# G>0, three launches, depth G + NT/G (the default row there, G=32: scans 0.23 ms, + fix 0.07, + carry 0.02):
#   1. group-local scans, parallel over groups of G chunks: each starts from 0 (the first group from the scan's input
#      tile: s0 forward, the final state's gradient backward, where the "first" group is the last), stores its
#      chunks' local tiles, the decay from its start to each chunk (acc, [B*H, NT, N]; exponent <= 0), its local end
#      tile (gend) and its total decay (gdec);
#   2. _scan_carry_kernel: one pass over the groups, carry[next] = gend[g] + exp(gdec[g]) * carry[g], carry[first]
#      = 0; the value after the last group is the scan's output (the final state / the initial state's gradient);
#   3. _scan_fix_kernel, parallel over chunks: tile[c] += exp(acc[c]) * carry[group of c].
# The backward's dS scan is the same linear recurrence run from the end (REV), so all three are shared.
@triton.autotune(configs=_configs([(4, 2), (8, 2)]), key=['N', 'BK', 'BV', 'PREC', 'G', 'REV'])
@triton.jit(do_not_specialize=['T', 'NT'])
def _scan_kernel(a, w, b, s_in, s_out, buf, acc, gend, gdec, T, NT, H: tl.constexpr, N: tl.constexpr,
                 BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr, NTI: tl.constexpr,
                 G: tl.constexpr, REV: tl.constexpr):
    i_k = tl.program_id(0) // (N // BV)
    i_v = tl.program_id(0) % (N // BV)
    i_g = tl.program_id(1)
    i_bh = tl.program_id(2).to(tl.int64)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    base = ((i_bh // H) * T * H + i_bh % H) * N
    st_off = (i_bh * N + o_k[:, None]) * N + o_v[None, :]
    b_S = tl.load(s_in + st_off)
    if G == 0:
        n = NTI if NTI > 0 else tl.cdiv(T, BT)   # interpreter: Python-int trip count (see _nti)
        for i in range(0, n):
            c = n - 1 - i if REV else i
            b_S, _ = _scan_step(tl.cast(c, tl.int64), NT, b_S, a, w, b, buf, T, i_k, i_v, i_bh, base,
                                H, N, BT, BK, BV, PREC, REV)
        tl.store(s_out + st_off, b_S)
    else:
        ng = tl.num_programs(1)
        b_S = tl.where(i_g == (ng - 1 if REV else 0), b_S, 0.)
        b_d = tl.zeros([BK], dtype=tl.float32)
        for j in range(0, G):
            cc = tl.cast(i_g * G + (G - 1 - j if REV else j), tl.int64)
            tl.store(acc + (i_bh * NT + cc) * N + o_k, b_d, mask=(cc < NT) & (i_v == 0))
            b_S, glast = _scan_step(cc, NT, b_S, a, w, b, buf, T, i_k, i_v, i_bh, base, H, N, BT, BK, BV, PREC, REV)
            b_d += glast
        tl.store(gend + ((i_bh * ng + i_g) * N + o_k[:, None]) * N + o_v[None, :], b_S)
        tl.store(gdec + (i_bh * ng + i_g) * N + o_k, b_d, mask=i_v == 0)


@triton.jit(do_not_specialize=['NG'])
def _scan_carry_kernel(gend, gdec, carry, sT, NG, N: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                       REV: tl.constexpr, NGI: tl.constexpr):
    """Step 2 above, one program per (tile, b*h): groups in order (forward) or from the last (REV, backward)."""
    i_k = tl.program_id(0) // (N // BV)
    i_v = tl.program_id(0) % (N // BV)
    i_bh = tl.program_id(1).to(tl.int64)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    tile = o_k[:, None] * N + o_v[None, :]
    b_C = tl.zeros([BK, BV], dtype=tl.float32)
    n = NGI if NGI > 0 else NG   # interpreter: Python-int trip count (see _nti)
    for i in range(0, n):
        g = tl.cast(n - 1 - i if REV else i, tl.int64)
        tl.store(carry + (i_bh * n + g) * N * N + tile, b_C)
        b_C = tl.load(gend + (i_bh * n + g) * N * N + tile) + \
            tl.exp(tl.load(gdec + (i_bh * n + g) * N + o_k))[:, None] * b_C
    tl.store(sT + i_bh * N * N + tile, b_C)


@triton.jit(do_not_specialize=['NT', 'NG'])
def _scan_fix_kernel(hbuf, acc, carry, NT, NG, N: tl.constexpr, BK: tl.constexpr, G: tl.constexpr):
    """Step 3 above: the chunk states of group g get the carried-in part, decayed to each chunk."""
    cc = tl.program_id(0).to(tl.int64)
    i_k = tl.program_id(1) // (N // BK)
    i_v = tl.program_id(1) % (N // BK)
    i_bh = tl.program_id(2).to(tl.int64)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BK + tl.arange(0, BK)
    tile = o_k[:, None] * N + o_v[None, :]
    p = hbuf + (i_bh * NT + cc) * N * N + tile
    b_C = tl.load(carry + (i_bh * NG + cc // G) * N * N + tile)
    tl.store(p, tl.load(p) + tl.exp(tl.load(acc + (i_bh * NT + cc) * N + o_k))[:, None] * b_C)


# ----------------------------------------------------------------------------------------------
# launch helpers

def _scan_blocks(B, H, N):
    """(BK, BV) for the sequential scans: small value tiles give more programs in flight."""
    if os.environ.get('WKV6_TRITON_SCAN_BLOCKS'):
        bk, bv = (int(x) for x in os.environ['WKV6_TRITON_SCAN_BLOCKS'].split(','))
        return min(bk, N), min(bv, N)
    BK, BV = min(N, 64), N
    while B * H * (N // BK) * (N // BV) < 256 and BV > 16:
        BV //= 2
    return BK, BV


def _scan_group(NT):
    """Chunks per group of the state scans (see above _scan_kernel); 0 = one sequential pass over all NT chunks.
    Default: one pass up to 32 chunks (T <= 512 at 16-token chunks), else the power of two G in [8, 64] nearest above
    sqrt(NT), which minimises the depth G + NT/G (1024 chunks: 32 + 32 steps instead of 1024).
    WKV6_TRITON_SCAN_GROUP = 0 (one pass) or a power of two >= 2 overrides (a group of >= NT chunks is one pass).
    Timed side by side on an H200 (results/2026-12-03_wkv6_kernels_scan_groups_h200.json, bf16 N=64, fwd+bwd ms for
    G = 0 / 16 / default / 64): (1,16384,4) 4.42 / 1.51 / 1.48 (G=32) / 1.64; (1,16384,3) 4.19 / 1.64 / 1.18 (32) /
    1.41; (2,8192,3) 2.39 / 1.29 / 1.24 (32) / 1.38; (4,4096,3) 1.47 / 1.32 / 1.20 (16) / 1.47. Wall times: at these
    shapes the grouped calls are now host-bound (GPU time 0.80 ms at (1,16384,4)); under CUDA graphs they are not."""
    g = os.environ.get('WKV6_TRITON_SCAN_GROUP')
    if g is not None:
        if not g.isdigit() or (int(g) != 0 and (int(g) < 2 or int(g) & (int(g) - 1))):
            raise ValueError(f"WKV6_TRITON_SCAN_GROUP must be 0 or a power of two >= 2, got {g!r}")
        return int(g) if int(g) < NT else 0
    if NT <= 32:
        return 0
    G = 8
    while G * G < NT and G < 64:
        G *= 2
    return G


def _scan(seq, s_in, s_out, buf, T, bt, prec, rev):
    """One state scan, forward (seq = k, w, v: S at each chunk start from s_in = s0) or backward (rev; seq = r, w, gy:
    dS at each chunk end from s_in = the final state's gradient): fills buf [B, H, NT, N, N] and s_out [B, H, N, N]."""
    B, H, NT, N, _ = buf.shape
    SK, SV = _scan_blocks(B, H, N)
    tiles = (N // SK) * (N // SV)
    G = _scan_group(NT)
    if G == 0:
        e = buf.new_empty((0,))
        _scan_kernel[(tiles, 1, B * H)](*seq, s_in, s_out, buf, e, e, e, T, NT, H=H, N=N, BT=bt, BK=SK, BV=SV,
                                        PREC=prec, NTI=_nti(T, bt), G=0, REV=rev)
        return
    NG = _cdiv(NT, G)
    acc = buf.new_empty((B * H, NT, N))
    gend = buf.new_empty((B * H, NG, N, N))
    gdec = buf.new_empty((B * H, NG, N))
    carry = torch.empty_like(gend)
    _scan_kernel[(tiles, NG, B * H)](*seq, s_in, s_out, buf, acc, gend, gdec, T, NT, H=H, N=N, BT=bt, BK=SK, BV=SV,
                                     PREC=prec, NTI=0, G=G, REV=rev)
    _scan_carry_kernel[(tiles, B * H)](gend, gdec, carry, s_out, NG, N=N, BK=SK, BV=SV, REV=rev,
                                       NGI=NG if os.environ.get('TRITON_INTERPRET') == '1' else 0)
    FK = min(N, 64)
    _scan_fix_kernel[(NT, (N // FK) ** 2, B * H)](buf, acc, carry, NT, NG, N=N, BK=FK, G=G)
