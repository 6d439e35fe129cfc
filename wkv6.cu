// WKV-6 (RWKV-6) forward and backward, plain CUDA C++ (no torch headers: `nvcc -c` builds it alone).
// Contract: see wkv6.py. Layout [B,T,H,N] contiguous; w = log-decay (fp32, <= 0); u [H,N] fp32;
// state [B,H,N(key),N(value)] fp32 in and out; r,k,v,y and their grads in F = float/bf16/fp16.
//
// Measured (results/wkv6_bench_h100_run2.json, "NVIDIA H100 80GB HBM3", bf16, N=64, fwd+bwd
// median ms): (32,256,4) 1.22 [v1: 1.19], (16,1024,8) 4.90, (8,4096,32) 28.3, (1,16384,4) 56.8;
// RWKV-LM's kernel: 1.249 / 5.922 at the first two (brief). Per step ~0.75 us at every shape
// (latency-bound; profile with ncu next): the Triton 'split' schedule is faster from T >= 1k.
//
// Design (after RWKV-LM's wkv6_cuda.cu: one block per (b,h), state in registers, per-step inputs
// in shared memory), with these differences:
//  * KS=4 threads share one owned channel, each holding N/KS of its state row/column; partial
//    sums meet through warp shuffles. 4x the threads of the official kernel: more latency hidden
//    at small B*H, and a 4x shorter dependent FMA chain per step.
//  * v2 (default): inputs of CL=16 steps (8 at N=128) staged in shared memory at once, double-
//    buffered with the next chunk's loads in flight: one __syncthreads per CL steps and global
//    latency hidden behind CL steps. v1 (WKV6_CUDA_V1=1): per-step staging, one sync per step.
//  * any T (no compile-time T, no T-sized per-thread arrays); initial state in, final state out,
//    initial-state gradient out, final-state gradient in; launches on the caller's stream.
//  * backward in 3 passes:
//      pass 1 (forward in time, thread = key row j):   gr, gu partials, and P_t = r_t*dq_t -> gw
//      pass 2 (reverse,         thread = key row j):   gk, then gw from the identity
//              gw_tau = sum_{t>tau} P_t - sum_{s>=tau} k_s*dk_s + <S_T[j,:], dS_T[j,:]>
//              (dq, dk = the state parts of gr, gk; running sums in fp64)
//      pass 3 (reverse,         thread = value col i): gv and dS0
//    Known limit of the identity: gw is a difference of O(1) sums, so where the true gw is tiny
//    (decays ~exp(-30)) its error is ~1e-7 of those sums, not of gw (tests use a scaled metric).
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdlib.h>

typedef long long i64;

__device__ __forceinline__ float ld(const float* p) { return *p; }
__device__ __forceinline__ float ld(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ float ld(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ void st(float* p, float x) { *p = x; }
__device__ __forceinline__ void st(__nv_bfloat16* p, float x) { *p = __float2bfloat16(x); }
__device__ __forceinline__ void st(__half* p, float x) { *p = __float2half(x); }

template <int KS>
__device__ __forceinline__ float lane_sum(float x) {  // sum over the KS adjacent lanes of a group
#pragma unroll
  for (int o = KS / 2; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// ------------------------------------------------------------------------------------------
// Value-owned kernels (forward, pass 3): thread (i = tid/KS, q = tid%KS) owns state column i,
// rows j = jj*KS + q. Shared per step: r, k, d = exp(w).

template <typename F, int N>
__device__ __forceinline__ float fetch_rkw(int x, i64 o, const F* r, const F* k, const float* w) {
  const int which = x / N, c = x % N;
  return which == 0 ? ld(r + o + c) : which == 1 ? ld(k + o + c) : w[o + c];
}

template <int N>
__device__ __forceinline__ void put_rkw(int x, float val, float* sr, float* sk, float* sd) {
  const int which = x / N, c = x % N;
  if (which == 0) sr[c] = val;
  else if (which == 1) sk[c] = val;
  else sd[c] = expf(val);
}

template <typename F, int N, int KS>
__global__ void __launch_bounds__(N * KS) wkv6_fwd_kernel(
    int T, int H, const F* __restrict__ r, const F* __restrict__ k, const F* __restrict__ v,
    const float* __restrict__ w, const float* __restrict__ u, const float* __restrict__ s0,
    F* __restrict__ y, float* __restrict__ sT) {
  constexpr int NTHR = N * KS, JN = N / KS, M = (3 * N + NTHR - 1) / NTHR;
  const int bh = blockIdx.x, b = bh / H, h = bh % H;
  const int tid = threadIdx.x, i = tid / KS, q = tid % KS;
  __shared__ float sr[2][N], sk[2][N], sd[2][N], su[N];
  for (int x = tid; x < N; x += NTHR) su[x] = u[h * N + x];
  const i64 base = ((i64)b * T * H + h) * N, stride = (i64)H * N;
  const i64 sbase = (i64)bh * N * N;
  float s[JN];
#pragma unroll
  for (int jj = 0; jj < JN; jj++) s[jj] = s0[sbase + (i64)(jj * KS + q) * N + i];
  float pre[M], vn = 0.f;
#pragma unroll
  for (int m = 0; m < M; m++) pre[m] = 0.f;
  if (T > 0) {
#pragma unroll
    for (int m = 0; m < M; m++) { const int x = tid + m * NTHR; if (x < 3 * N) pre[m] = fetch_rkw<F, N>(x, base, r, k, w); }
    vn = ld(v + base + i);
#pragma unroll
    for (int m = 0; m < M; m++) { const int x = tid + m * NTHR; if (x < 3 * N) put_rkw<N>(x, pre[m], sr[0], sk[0], sd[0]); }
  }
  int buf = 0;
  for (int t = 0; t < T; t++) {
    __syncthreads();
    const float vi = vn;
    if (t + 1 < T) {
      const i64 o = base + (i64)(t + 1) * stride;
#pragma unroll
      for (int m = 0; m < M; m++) { const int x = tid + m * NTHR; if (x < 3 * N) pre[m] = fetch_rkw<F, N>(x, o, r, k, w); }
      vn = ld(v + o + i);
    }
    const float *cr = sr[buf], *ck = sk[buf], *cd = sd[buf];
    float y0 = 0.f, y1 = 0.f;
#pragma unroll
    for (int jj = 0; jj < JN; jj += 2) {
      int j = jj * KS + q;
      float x = ck[j] * vi;
      y0 += cr[j] * (su[j] * x + s[jj]);
      s[jj] = s[jj] * cd[j] + x;
      j += KS;
      x = ck[j] * vi;
      y1 += cr[j] * (su[j] * x + s[jj + 1]);
      s[jj + 1] = s[jj + 1] * cd[j] + x;
    }
    const float yv = lane_sum<KS>(y0 + y1);
    if (q == 0) st(y + base + (i64)t * stride + i, yv);
    if (t + 1 < T) {
      buf ^= 1;
#pragma unroll
      for (int m = 0; m < M; m++) { const int x = tid + m * NTHR; if (x < 3 * N) put_rkw<N>(x, pre[m], sr[buf], sk[buf], sd[buf]); }
    }
  }
#pragma unroll
  for (int jj = 0; jj < JN; jj++) sT[sbase + (i64)(jj * KS + q) * N + i] = s[jj];
}

// pass 3: reverse in time, carries dS column i; emits gv and dS0.
template <typename F, int N, int KS>
__global__ void __launch_bounds__(N * KS) wkv6_bwd_v_kernel(
    int T, int H, const F* __restrict__ r, const F* __restrict__ k, const float* __restrict__ w,
    const float* __restrict__ u, const F* __restrict__ gy, const float* __restrict__ gsT,
    F* __restrict__ gv, float* __restrict__ gs0) {
  constexpr int NTHR = N * KS, JN = N / KS, M = (3 * N + NTHR - 1) / NTHR;
  const int bh = blockIdx.x, b = bh / H, h = bh % H;
  const int tid = threadIdx.x, i = tid / KS, q = tid % KS;
  __shared__ float sr[2][N], sk[2][N], sd[2][N], su[N];
  for (int x = tid; x < N; x += NTHR) su[x] = u[h * N + x];
  const i64 base = ((i64)b * T * H + h) * N, stride = (i64)H * N;
  const i64 sbase = (i64)bh * N * N;
  float G[JN];
#pragma unroll
  for (int jj = 0; jj < JN; jj++) G[jj] = gsT[sbase + (i64)(jj * KS + q) * N + i];
  float pre[M], gn = 0.f;
#pragma unroll
  for (int m = 0; m < M; m++) pre[m] = 0.f;
  if (T > 0) {
    const i64 o = base + (i64)(T - 1) * stride;
#pragma unroll
    for (int m = 0; m < M; m++) { const int x = tid + m * NTHR; if (x < 3 * N) pre[m] = fetch_rkw<F, N>(x, o, r, k, w); }
    gn = ld(gy + o + i);
#pragma unroll
    for (int m = 0; m < M; m++) { const int x = tid + m * NTHR; if (x < 3 * N) put_rkw<N>(x, pre[m], sr[0], sk[0], sd[0]); }
  }
  int buf = 0;
  for (int t = T - 1; t >= 0; t--) {
    __syncthreads();
    const float gi = gn;
    if (t > 0) {
      const i64 o = base + (i64)(t - 1) * stride;
#pragma unroll
      for (int m = 0; m < M; m++) { const int x = tid + m * NTHR; if (x < 3 * N) pre[m] = fetch_rkw<F, N>(x, o, r, k, w); }
      gn = ld(gy + o + i);
    }
    const float *cr = sr[buf], *ck = sk[buf], *cd = sd[buf];
    float a0 = 0.f, a1 = 0.f;
#pragma unroll
    for (int jj = 0; jj < JN; jj += 2) {
      int j = jj * KS + q;
      float rj = cr[j];
      a0 += ck[j] * (G[jj] + su[j] * rj * gi);
      G[jj] = rj * gi + cd[j] * G[jj];
      j += KS;
      rj = cr[j];
      a1 += ck[j] * (G[jj + 1] + su[j] * rj * gi);
      G[jj + 1] = rj * gi + cd[j] * G[jj + 1];
    }
    const float gvv = lane_sum<KS>(a0 + a1);
    if (q == 0) st(gv + base + (i64)t * stride + i, gvv);
    if (t > 0) {
      buf ^= 1;
#pragma unroll
      for (int m = 0; m < M; m++) { const int x = tid + m * NTHR; if (x < 3 * N) put_rkw<N>(x, pre[m], sr[buf], sk[buf], sd[buf]); }
    }
  }
#pragma unroll
  for (int jj = 0; jj < JN; jj++) gs0[sbase + (i64)(jj * KS + q) * N + i] = G[jj];
}

// ------------------------------------------------------------------------------------------
// Key-owned kernels (passes 1 and 2): thread (j = tid/KS, q = tid%KS) owns state row j, columns
// i = ii*KS + q. Shared per step: v, gy. Own r_j, k_j, w_j from registers.

template <typename F, int N>
__device__ __forceinline__ float fetch_vg(int x, i64 o, const F* v, const F* gy) {
  return x < N ? ld(v + o + x) : ld(gy + o + x - N);
}

// pass 1: forward in time, carries S row j; emits gr, gu partial (per b,h), P_t = r_t*dq_t into gw.
template <typename F, int N, int KS>
__global__ void __launch_bounds__(N * KS) wkv6_bwd_r_kernel(
    int T, int H, const F* __restrict__ r, const F* __restrict__ k, const F* __restrict__ v,
    const float* __restrict__ w, const float* __restrict__ u, const float* __restrict__ s0,
    const F* __restrict__ gy, F* __restrict__ gr, float* __restrict__ gw, float* __restrict__ gu_part) {
  constexpr int NTHR = N * KS, IN = N / KS, M = (2 * N + NTHR - 1) / NTHR;
  const int bh = blockIdx.x, b = bh / H, h = bh % H;
  const int tid = threadIdx.x, j = tid / KS, q = tid % KS;
  __shared__ float sv[2][N], sg[2][N];
  const i64 base = ((i64)b * T * H + h) * N, stride = (i64)H * N;
  const i64 sbase = (i64)bh * N * N;
  const float uj = u[h * N + j];
  float S[IN];
#pragma unroll
  for (int ii = 0; ii < IN; ii++) S[ii] = s0[sbase + (i64)j * N + ii * KS + q];
  float pre[M], rn = 0.f, kn = 0.f, wn = 0.f, gu_acc = 0.f;
#pragma unroll
  for (int m = 0; m < M; m++) pre[m] = 0.f;
  if (T > 0) {
#pragma unroll
    for (int m = 0; m < M; m++) { const int x = tid + m * NTHR; if (x < 2 * N) pre[m] = fetch_vg<F, N>(x, base, v, gy); }
    rn = ld(r + base + j); kn = ld(k + base + j); wn = w[base + j];
#pragma unroll
    for (int m = 0; m < M; m++) { const int x = tid + m * NTHR; if (x < 2 * N) { if (x < N) sv[0][x] = pre[m]; else sg[0][x - N] = pre[m]; } }
  }
  int buf = 0;
  for (int t = 0; t < T; t++) {
    __syncthreads();
    const float rj = rn, kj = kn, dj = expf(wn);
    if (t + 1 < T) {
      const i64 o = base + (i64)(t + 1) * stride;
#pragma unroll
      for (int m = 0; m < M; m++) { const int x = tid + m * NTHR; if (x < 2 * N) pre[m] = fetch_vg<F, N>(x, o, v, gy); }
      rn = ld(r + o + j); kn = ld(k + o + j); wn = w[o + j];
    }
    const float *cv = sv[buf], *cg = sg[buf];
    float a0 = 0.f, a1 = 0.f, c0 = 0.f, c1 = 0.f;
#pragma unroll
    for (int ii = 0; ii < IN; ii += 2) {
      int i = ii * KS + q;
      float vi = cv[i], gi = cg[i];
      a0 += S[ii] * gi; c0 += vi * gi; S[ii] = S[ii] * dj + kj * vi;
      i += KS;
      vi = cv[i]; gi = cg[i];
      a1 += S[ii + 1] * gi; c1 += vi * gi; S[ii + 1] = S[ii + 1] * dj + kj * vi;
    }
    const float dq = lane_sum<KS>(a0 + a1), vg = lane_sum<KS>(c0 + c1);
    if (q == 0) {
      const i64 o = base + (i64)t * stride + j;
      st(gr + o, dq + uj * kj * vg);
      gw[o] = rj * dq;
    }
    gu_acc += rj * kj * vg;
    if (t + 1 < T) {
      buf ^= 1;
#pragma unroll
      for (int m = 0; m < M; m++) { const int x = tid + m * NTHR; if (x < 2 * N) { if (x < N) sv[buf][x] = pre[m]; else sg[buf][x - N] = pre[m]; } }
    }
  }
  if (q == 0) gu_part[(i64)bh * N + j] = gu_acc;
}

// pass 2: reverse in time, carries dS row j; emits gk and the final gw.
template <typename F, int N, int KS>
__global__ void __launch_bounds__(N * KS) wkv6_bwd_k_kernel(
    int T, int H, const F* __restrict__ r, const F* __restrict__ k, const F* __restrict__ v,
    const float* __restrict__ w, const float* __restrict__ u, const float* __restrict__ sT,
    const F* __restrict__ gy, const float* __restrict__ gsT, F* __restrict__ gk, float* __restrict__ gw) {
  constexpr int NTHR = N * KS, IN = N / KS, M = (2 * N + NTHR - 1) / NTHR;
  const int bh = blockIdx.x, b = bh / H, h = bh % H;
  const int tid = threadIdx.x, j = tid / KS, q = tid % KS;
  __shared__ float sv[2][N], sg[2][N];
  const i64 base = ((i64)b * T * H + h) * N, stride = (i64)H * N;
  const i64 sbase = (i64)bh * N * N;
  const float uj = u[h * N + j];
  float G[IN];
  float c = 0.f;
#pragma unroll
  for (int ii = 0; ii < IN; ii++) {
    const i64 o = sbase + (i64)j * N + ii * KS + q;
    G[ii] = gsT[o];
    c += sT[o] * G[ii];
  }
  const double cend = (double)lane_sum<KS>(c);   // <S_T[j,:], dS_T[j,:]>
  double accP = 0.0, accQ = 0.0;
  float pre[M], rn = 0.f, kn = 0.f, wn = 0.f;
#pragma unroll
  for (int m = 0; m < M; m++) pre[m] = 0.f;
  if (T > 0) {
    const i64 o = base + (i64)(T - 1) * stride;
#pragma unroll
    for (int m = 0; m < M; m++) { const int x = tid + m * NTHR; if (x < 2 * N) pre[m] = fetch_vg<F, N>(x, o, v, gy); }
    rn = ld(r + o + j); kn = ld(k + o + j); wn = w[o + j];
#pragma unroll
    for (int m = 0; m < M; m++) { const int x = tid + m * NTHR; if (x < 2 * N) { if (x < N) sv[0][x] = pre[m]; else sg[0][x - N] = pre[m]; } }
  }
  int buf = 0;
  for (int t = T - 1; t >= 0; t--) {
    __syncthreads();
    const float rj = rn, kj = kn, dj = expf(wn);
    if (t > 0) {
      const i64 o = base + (i64)(t - 1) * stride;
#pragma unroll
      for (int m = 0; m < M; m++) { const int x = tid + m * NTHR; if (x < 2 * N) pre[m] = fetch_vg<F, N>(x, o, v, gy); }
      rn = ld(r + o + j); kn = ld(k + o + j); wn = w[o + j];
    }
    const float *cv = sv[buf], *cg = sg[buf];
    float a0 = 0.f, a1 = 0.f, c0 = 0.f, c1 = 0.f;
#pragma unroll
    for (int ii = 0; ii < IN; ii += 2) {
      int i = ii * KS + q;
      float vi = cv[i], gi = cg[i];
      a0 += G[ii] * vi; c0 += vi * gi; G[ii] = rj * gi + dj * G[ii];
      i += KS;
      vi = cv[i]; gi = cg[i];
      a1 += G[ii + 1] * vi; c1 += vi * gi; G[ii + 1] = rj * gi + dj * G[ii + 1];
    }
    const float dk = lane_sum<KS>(a0 + a1), vg = lane_sum<KS>(c0 + c1);
    if (q == 0) {
      const i64 o = base + (i64)t * stride + j;
      st(gk + o, dk + uj * rj * vg);
      accQ += (double)(kj * dk);
      const float P = gw[o];                        // r_t*dq_t from pass 1
      gw[o] = (float)(accP - accQ + cend);
      accP += (double)P;
    }
    if (t > 0) {
      buf ^= 1;
#pragma unroll
      for (int m = 0; m < M; m++) { const int x = tid + m * NTHR; if (x < 2 * N) { if (x < N) sv[buf][x] = pre[m]; else sg[buf][x - N] = pre[m]; } }
    }
  }
}

// ------------------------------------------------------------------------------------------
// v2 ("chunk-staged"): the same four recurrences, but the inputs of CL consecutive steps are
// staged in shared memory at once (double-buffered, the next chunk's global loads in flight in
// registers while this chunk computes): one __syncthreads per CL steps instead of per step, and
// the global-load latency is hidden behind CL steps of arithmetic instead of one. Arrays staged:
// r, k, w (stored as d = exp(w)), then one or two of v / gy. u lives in registers.

template <int N> struct CLen { static constexpr int value = N <= 64 ? 16 : 8; };  // smem <= 40 KB

template <typename F, int N, int CL>
__device__ __forceinline__ float fetch_stage(int x, i64 base, i64 stride, int t0, int T, const F* r,
                                             const F* k, const float* w, const F* e0, const F* e1) {
  const int a = x / (CL * N), rem = x % (CL * N), tt = rem / N, c = rem % N;
  if (t0 + tt >= T) return 0.f;
  const i64 o = base + (i64)(t0 + tt) * stride + c;
  if (a == 0) return ld(r + o);
  if (a == 1) return ld(k + o);
  if (a == 2) return w[o];
  if (a == 3) return ld(e0 + o);
  return ld(e1 + o);
}

// stage layout: sm[buf][a][tt][c]; a = 0 r, 1 k, 2 d, 3 e0, 4 e1
#define STAGE_FETCH(T0)                                                                       \
  _Pragma("unroll") for (int m = 0; m < PER; m++) {                                           \
    const int x = tid + m * NTHR;                                                             \
    pre[m] = x < TOT ? fetch_stage<F, N, CL>(x, base, stride, (T0), T, r, k, w, e0, e1) : 0.f; \
  }
#define STAGE_PUT(BUF)                                                                        \
  _Pragma("unroll") for (int m = 0; m < PER; m++) {                                           \
    const int x = tid + m * NTHR;                                                             \
    if (x < TOT) sm[BUF][x] = (x / (CL * N) == 2) ? expf(pre[m]) : pre[m];                    \
  }

// forward (value-owned) and pass 3 (value-owned, reverse): e0 = v (fwd) or gy (pass 3)
template <typename F, int N, int KS, bool REV>
__global__ void __launch_bounds__(N * KS, N <= 64 ? 2 : 1) wkv6_v2_vown_kernel(
    int T, int H, const F* __restrict__ r, const F* __restrict__ k, const float* __restrict__ w,
    const F* __restrict__ e0, const float* __restrict__ u, const float* __restrict__ st_in,
    F* __restrict__ out, float* __restrict__ st_out) {
  constexpr int CL = CLen<N>::value, NA = 4, NTHR = N * KS, JN = N / KS, TOT = NA * CL * N;
  constexpr int PER = (TOT + NTHR - 1) / NTHR;
  const F* e1 = e0;  // unused 5th array
  const int bh = blockIdx.x, b = bh / H, h = bh % H;
  const int tid = threadIdx.x, i = tid / KS, q = tid % KS;
  __shared__ float sm[2][TOT];
  const i64 base = ((i64)b * T * H + h) * N, stride = (i64)H * N, sbase = (i64)bh * N * N;
  float s[JN], ur[JN];
#pragma unroll
  for (int jj = 0; jj < JN; jj++) {
    s[jj] = st_in[sbase + (i64)(jj * KS + q) * N + i];
    ur[jj] = u[h * N + jj * KS + q];
  }
  const int nch = (T + CL - 1) / CL;
  float pre[PER];
  if (nch > 0) { const int c0 = REV ? (nch - 1) * CL : 0; STAGE_FETCH(c0) }
  int buf = 0;
  for (int ci = 0; ci < nch; ci++) {
    const int c0 = (REV ? nch - 1 - ci : ci) * CL;
    STAGE_PUT(buf)
    __syncthreads();
    if (ci + 1 < nch) { const int c1 = (REV ? nch - 2 - ci : ci + 1) * CL; STAGE_FETCH(c1) }
    const float *cr = sm[buf], *ck = sm[buf] + CL * N, *cd = sm[buf] + 2 * CL * N, *ce = sm[buf] + 3 * CL * N;
    const int nst = min(CL, T - c0);
    for (int s_ = 0; s_ < nst; s_++) {
      const int tt = REV ? nst - 1 - s_ : s_;
      const float ei = ce[tt * N + i];            // v_i (forward) or gy_i (pass 3)
      const float *rr = cr + tt * N, *kk = ck + tt * N, *dd = cd + tt * N;
      float a0 = 0.f, a1 = 0.f;
#pragma unroll
      for (int jj = 0; jj < JN; jj += 2) {
        int j = jj * KS + q;
        if (!REV) {   // y_i += r_j (u_j k_j v_i + S_ji);  S_ji = d_j S_ji + k_j v_i
          float x = kk[j] * ei;
          a0 += rr[j] * (ur[jj] * x + s[jj]);
          s[jj] = s[jj] * dd[j] + x;
          j += KS;
          x = kk[j] * ei;
          a1 += rr[j] * (ur[jj + 1] * x + s[jj + 1]);
          s[jj + 1] = s[jj + 1] * dd[j] + x;
        } else {      // gv_i += k_j (G_ji + u_j r_j gy_i);  G_ji = r_j gy_i + d_j G_ji
          float rj = rr[j];
          a0 += kk[j] * (s[jj] + ur[jj] * rj * ei);
          s[jj] = rj * ei + dd[j] * s[jj];
          j += KS;
          rj = rr[j];
          a1 += kk[j] * (s[jj + 1] + ur[jj + 1] * rj * ei);
          s[jj + 1] = rj * ei + dd[j] * s[jj + 1];
        }
      }
      const float o = lane_sum<KS>(a0 + a1);
      if (q == 0) st(out + base + (i64)(c0 + tt) * stride + i, o);
    }
    buf ^= 1;
  }
#pragma unroll
  for (int jj = 0; jj < JN; jj++) st_out[sbase + (i64)(jj * KS + q) * N + i] = s[jj];
}

// pass 1 (key-owned, forward: gr, P -> gw, gu partial) and pass 2 (key-owned, reverse: gk, gw).
// e0 = v, e1 = gy.
template <typename F, int N, int KS, bool REV>
__global__ void __launch_bounds__(N * KS, N <= 64 ? 2 : 1) wkv6_v2_kown_kernel(
    int T, int H, const F* __restrict__ r, const F* __restrict__ k, const float* __restrict__ w,
    const F* __restrict__ e0, const F* __restrict__ e1, const float* __restrict__ u,
    const float* __restrict__ st_in, const float* __restrict__ sT, const float* __restrict__ gsT,
    F* __restrict__ out, float* __restrict__ gw, float* __restrict__ gu_part) {
  constexpr int CL = CLen<N>::value, NA = 5, NTHR = N * KS, IN = N / KS, TOT = NA * CL * N;
  constexpr int PER = (TOT + NTHR - 1) / NTHR;
  const int bh = blockIdx.x, b = bh / H, h = bh % H;
  const int tid = threadIdx.x, j = tid / KS, q = tid % KS;
  __shared__ float sm[2][TOT];
  const i64 base = ((i64)b * T * H + h) * N, stride = (i64)H * N, sbase = (i64)bh * N * N;
  const float uj = u[h * N + j];
  float S[IN];
  float c = 0.f;
#pragma unroll
  for (int ii = 0; ii < IN; ii++) {
    const i64 o = sbase + (i64)j * N + ii * KS + q;
    if (!REV) S[ii] = st_in[o];                       // state row j (pass 1)
    else { S[ii] = gsT[o]; c += sT[o] * S[ii]; }      // state-gradient row j (pass 2)
  }
  const double cend = REV ? (double)lane_sum<KS>(c) : 0.0;   // <S_T[j,:], dS_T[j,:]>
  double accP = 0.0, accQ = 0.0;
  float gu_acc = 0.f;
  const int nch = (T + CL - 1) / CL;
  float pre[PER];
  if (nch > 0) { const int c0 = REV ? (nch - 1) * CL : 0; STAGE_FETCH(c0) }
  int buf = 0;
  for (int ci = 0; ci < nch; ci++) {
    const int c0 = (REV ? nch - 1 - ci : ci) * CL;
    STAGE_PUT(buf)
    __syncthreads();
    if (ci + 1 < nch) { const int c1 = (REV ? nch - 2 - ci : ci + 1) * CL; STAGE_FETCH(c1) }
    const float *cr = sm[buf], *ck = sm[buf] + CL * N, *cd = sm[buf] + 2 * CL * N;
    const float *cv = sm[buf] + 3 * CL * N, *cg = sm[buf] + 4 * CL * N;
    const int nst = min(CL, T - c0);
    for (int s_ = 0; s_ < nst; s_++) {
      const int tt = REV ? nst - 1 - s_ : s_;
      const float rj = cr[tt * N + j], kj = ck[tt * N + j], dj = cd[tt * N + j];
      const float *vv = cv + tt * N, *gg = cg + tt * N;
      float a0 = 0.f, a1 = 0.f, b0 = 0.f, b1 = 0.f;
#pragma unroll
      for (int ii = 0; ii < IN; ii += 2) {
        int i = ii * KS + q;
        float vi = vv[i], gi = gg[i];
        if (!REV) { a0 += S[ii] * gi; S[ii] = S[ii] * dj + kj * vi; }
        else      { a0 += S[ii] * vi; S[ii] = rj * gi + dj * S[ii]; }
        b0 += vi * gi;
        i += KS;
        vi = vv[i]; gi = gg[i];
        if (!REV) { a1 += S[ii + 1] * gi; S[ii + 1] = S[ii + 1] * dj + kj * vi; }
        else      { a1 += S[ii + 1] * vi; S[ii + 1] = rj * gi + dj * S[ii + 1]; }
        b1 += vi * gi;
      }
      const float dsum = lane_sum<KS>(a0 + a1), vg = lane_sum<KS>(b0 + b1);
      const i64 o = base + (i64)(c0 + tt) * stride + j;
      if (!REV) {
        if (q == 0) { st(out + o, dsum + uj * kj * vg); gw[o] = rj * dsum; }
        gu_acc += rj * kj * vg;
      } else if (q == 0) {
        st(out + o, dsum + uj * rj * vg);
        accQ += (double)(kj * dsum);
        const float P = gw[o];
        gw[o] = (float)(accP - accQ + cend);
        accP += (double)P;
      }
    }
    buf ^= 1;
  }
  if (!REV && q == 0) gu_part[(i64)bh * N + j] = gu_acc;
}
#undef STAGE_FETCH
#undef STAGE_PUT

// ------------------------------------------------------------------------------------------
// extern "C" launchers (called from the small torch binding in wkv6.py). dtype: 0 fp32, 1 bf16,
// 2 fp16. Return a cudaError_t code (0 = success).

constexpr int KSPLIT = 4;

static bool use_v1() {  // WKV6_CUDA_V1=1 selects the per-step-synchronised v1 kernels (A/B and fallback)
  const char* e = getenv("WKV6_CUDA_V1");
  return e != nullptr && e[0] == '1';
}

template <typename F, int N>
static int launch_fwd(i64 B, i64 T, i64 H, const void* r, const void* k, const void* v, const float* w,
                      const float* u, const float* s0, void* y, float* sT, cudaStream_t st) {
  if (!use_v1()) {
    wkv6_v2_vown_kernel<F, N, KSPLIT, false><<<(unsigned)(B * H), N * KSPLIT, 0, st>>>(
        (int)T, (int)H, (const F*)r, (const F*)k, w, (const F*)v, u, s0, (F*)y, sT);
    return (int)cudaGetLastError();
  }
  wkv6_fwd_kernel<F, N, KSPLIT><<<(unsigned)(B * H), N * KSPLIT, 0, st>>>(
      (int)T, (int)H, (const F*)r, (const F*)k, (const F*)v, w, u, s0, (F*)y, sT);
  return (int)cudaGetLastError();
}

template <typename F, int N>
static int launch_bwd(i64 B, i64 T, i64 H, const void* r, const void* k, const void* v, const float* w,
                      const float* u, const float* s0, const float* sT, const void* gy, const float* gsT,
                      void* gr, void* gk, void* gv, float* gw, float* gu_part, float* gs0, cudaStream_t st) {
  const unsigned grid = (unsigned)(B * H);
  if (!use_v1()) {
    wkv6_v2_kown_kernel<F, N, KSPLIT, false><<<grid, N * KSPLIT, 0, st>>>(
        (int)T, (int)H, (const F*)r, (const F*)k, w, (const F*)v, (const F*)gy, u, s0, sT, gsT, (F*)gr, gw, gu_part);
    int e = (int)cudaGetLastError();
    if (e) return e;
    wkv6_v2_kown_kernel<F, N, KSPLIT, true><<<grid, N * KSPLIT, 0, st>>>(
        (int)T, (int)H, (const F*)r, (const F*)k, w, (const F*)v, (const F*)gy, u, s0, sT, gsT, (F*)gk, gw, gu_part);
    e = (int)cudaGetLastError();
    if (e) return e;
    wkv6_v2_vown_kernel<F, N, KSPLIT, true><<<grid, N * KSPLIT, 0, st>>>(
        (int)T, (int)H, (const F*)r, (const F*)k, w, (const F*)gy, u, gsT, (F*)gv, gs0);
    return (int)cudaGetLastError();
  }
  wkv6_bwd_r_kernel<F, N, KSPLIT><<<grid, N * KSPLIT, 0, st>>>(
      (int)T, (int)H, (const F*)r, (const F*)k, (const F*)v, w, u, s0, (const F*)gy, (F*)gr, gw, gu_part);
  int e = (int)cudaGetLastError();
  if (e) return e;
  wkv6_bwd_k_kernel<F, N, KSPLIT><<<grid, N * KSPLIT, 0, st>>>(
      (int)T, (int)H, (const F*)r, (const F*)k, (const F*)v, w, u, sT, (const F*)gy, gsT, (F*)gk, gw);
  e = (int)cudaGetLastError();
  if (e) return e;
  wkv6_bwd_v_kernel<F, N, KSPLIT><<<grid, N * KSPLIT, 0, st>>>(
      (int)T, (int)H, (const F*)r, (const F*)k, w, u, (const F*)gy, gsT, (F*)gv, gs0);
  return (int)cudaGetLastError();
}

#define WKV6_DISPATCH(FN, ...)                                                        \
  do {                                                                                \
    if (B * H <= 0 || B * H > 0x7fffffffLL || T < 0 || T > 0x7fffffffLL) return (int)cudaErrorInvalidValue; \
    if (dtype == 0) {                                                                 \
      if (N == 32) return FN<float, 32>(__VA_ARGS__);                                 \
      if (N == 64) return FN<float, 64>(__VA_ARGS__);                                 \
      if (N == 128) return FN<float, 128>(__VA_ARGS__);                               \
    } else if (dtype == 1) {                                                          \
      if (N == 32) return FN<__nv_bfloat16, 32>(__VA_ARGS__);                         \
      if (N == 64) return FN<__nv_bfloat16, 64>(__VA_ARGS__);                         \
      if (N == 128) return FN<__nv_bfloat16, 128>(__VA_ARGS__);                       \
    } else if (dtype == 2) {                                                          \
      if (N == 32) return FN<__half, 32>(__VA_ARGS__);                                \
      if (N == 64) return FN<__half, 64>(__VA_ARGS__);                                \
      if (N == 128) return FN<__half, 128>(__VA_ARGS__);                              \
    }                                                                                 \
    return (int)cudaErrorInvalidValue;                                                \
  } while (0)

extern "C" int wkv6_fwd(int dtype, int N, long long B, long long T, long long H,
                        const void* r, const void* k, const void* v, const float* w, const float* u,
                        const float* s0, void* y, float* sT, void* stream) {
  WKV6_DISPATCH(launch_fwd, B, T, H, r, k, v, w, u, s0, y, sT, (cudaStream_t)stream);
}

extern "C" int wkv6_bwd(int dtype, int N, long long B, long long T, long long H,
                        const void* r, const void* k, const void* v, const float* w, const float* u,
                        const float* s0, const float* sT, const void* gy, const float* gsT,
                        void* gr, void* gk, void* gv, float* gw, float* gu_part, float* gs0, void* stream) {
  WKV6_DISPATCH(launch_bwd, B, T, H, r, k, v, w, u, s0, sT, gy, gsT, gr, gk, gv, gw, gu_part, gs0,
                (cudaStream_t)stream);
}

extern "C" const char* wkv6_error_string(int code) {
  if (code == (int)cudaErrorInvalidValue)
    return "invalid value (supported: dtype fp32/bf16/fp16, head size 32/64/128, B*H and T < 2^31)";
  return cudaGetErrorString((cudaError_t)code);
}
