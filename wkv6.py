"""
WKV-6 (RWKV-6 "Finch") time-mix operator: reference, chunked PyTorch path, dispatch to fast kernels.

    y, state_out = wkv6(r, k, v, w, u, state=None, backend="auto")

Layout [B, T, H, N] for r, k, v, w (N = head size, key dim = value dim = N).
  r, k, v : fp32 / bf16 / fp16 (same dtype); y comes back in r's dtype
  w       : the LOG-decay, w <= 0 (decay d = exp(w)); computed in fp32. RWKV-LM's raw decay
            parameter x maps to w = -exp(x) (do that in the model, not here).
  u       : [H, N] bonus for the current token
  state   : [B, H, N(key), N(value)] fp32 initial state (None = zeros); state_out is fp32.
            Both are differentiable: gradients flow into the initial state and through state_out.
No 1/sqrt(N) scale. Per head, reading first, then updating:
    y_t = r_t . (S_{t-1} + diag(u) k_t^T v_t)          S_t = diag(exp(w_t)) S_{t-1} + k_t^T v_t

Backends (fixed order for "auto"): cuda (wkv6.cu, JIT-built) -> triton (wkv6_triton.py) -> torch
(wkv6_torch_chunked). CPU tensors always take torch. "naive" is the sequential float64-capable
reference that every path is tested against (tests/test_wkv6.py, tests/test_wkv6_gpu.py).
"""
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

SUPPORTED_N_CUDA = (32, 64, 128)
_printed = set()  # messages printed once per process


def _say_once(msg):
    if msg not in _printed:
        _printed.add(msg)
        print(msg, file=sys.stderr, flush=True)


def _check_inputs(r, k, v, w, u, state):
    if r.dim() != 4:
        raise ValueError(f"wkv6: r must be [B,T,H,N], got shape {tuple(r.shape)}; reshape [B,T,C] to [B,T,H,C//H]")
    for name, x in (("k", k), ("v", v), ("w", w)):
        if x.shape != r.shape:
            raise ValueError(f"wkv6: {name} has shape {tuple(x.shape)} but r has {tuple(r.shape)}; all of r,k,v,w must be [B,T,H,N]")
    if k.dtype != r.dtype or v.dtype != r.dtype:
        raise ValueError(f"wkv6: r,k,v must share one dtype, got {r.dtype},{k.dtype},{v.dtype}; cast them together")
    B, T, H, N = r.shape
    if u.shape != (H, N):
        raise ValueError(f"wkv6: u must be [H,N]=({H},{N}), got {tuple(u.shape)}")
    if state is not None and state.shape != (B, H, N, N):
        raise ValueError(f"wkv6: state must be [B,H,N,N]=({B},{H},{N},{N}), got {tuple(state.shape)}")
    devs = {x.device for x in (r, k, v, w, u) + ((state,) if state is not None else ())}
    if len(devs) != 1:
        raise ValueError(f"wkv6: all inputs must be on one device, got {devs}")


# ----------------------------------------------------------------------------------------------
# reference: the plain recurrence

def wkv6_naive(r, k, v, w, u, state=None):
    """Sequential recurrence in the inputs' dtype (pass float64 for the reference). Autograd-able.
    Returns (y [B,T,H,N], state_out [B,H,N,N]) both in r's dtype."""
    _check_inputs(r, k, v, w, u, state)
    B, T, H, N = r.shape
    dt = r.dtype
    S = torch.zeros(B, H, N, N, dtype=dt, device=r.device) if state is None else state.to(dt)
    w, u = w.to(dt), u.to(dt)
    ys = []
    for t in range(T):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]                          # [B,H,N,N]
        ys.append(torch.einsum('bhj,bhji->bhi', r[:, t], S + u[None, :, :, None] * kv))
        S = torch.exp(w[:, t])[..., None] * S + kv
    y = torch.stack(ys, 1) if T > 0 else r.new_zeros(B, 0, H, N)
    return y, S


# ----------------------------------------------------------------------------------------------
# chunked pure-PyTorch path (CPU training path, autograd backward)

def wkv6_torch_chunked(r, k, v, w, u, state=None, chunk=16):
    """Chunked form: intra-chunk pair weights exp(ge_t - gi_s) built elementwise (exponents are
    sums of w over tau in (s, t), so always <= 0: strong decays underflow to 0, never overflow),
    inter-chunk state passing with matrix products. Cumsums run in fp32 (fp64 for fp64 inputs)
    and only inside one chunk, so precision does not degrade with T. T is padded to a multiple
    of `chunk` with w=0, k=0 (no effect on the state). Memory ~ B*H*T*chunk*N per temporary."""
    _check_inputs(r, k, v, w, u, state)
    B, T, H, N = r.shape
    out_dtype = r.dtype
    cdt = torch.float64 if r.dtype == torch.float64 else torch.float32
    L = chunk
    NT = max(1, math.ceil(T / L))
    pad = NT * L - T

    def prep(x):  # [B,T,H,N] -> [B,H,NT,L,N] in compute dtype
        x = x.to(cdt)
        if pad:
            x = F.pad(x, (0, 0, 0, 0, 0, pad))
        return x.view(B, NT, L, H, N).permute(0, 3, 1, 2, 4)

    r_, k_, v_, w_ = prep(r), prep(k), prep(v), prep(w)
    u_ = u.to(cdt)[None, :, None, None, :]                                     # [1,H,1,1,N]
    # Every decay exponent is a plain sum of w over the positions it spans (never a difference
    # of cumsums): a difference would be exact in value only up to rounding of |cumsum|, and
    # its autograd gradient would cancel O(1) terms, swamping the true (tiny) dw of strong
    # decays. So: exclusive cumsum by shifting, reverse-exclusive cumsum by flipping, and the
    # pairwise segment sums by a masked cumsum.
    gi = torch.cumsum(w_, dim=-2)                                              # sum_{tau<=t}
    ge = F.pad(gi[..., :-1, :], (0, 0, 1, 0))                                  # sum_{tau<t}
    rg = F.pad(torch.flip(torch.cumsum(torch.flip(w_[..., 1:, :], [-2]), -2), [-2]), (0, 0, 0, 1))  # sum_{tau>s}
    glast = gi[..., -1:, :]                                                    # [B,H,NT,1,N]
    # intra-chunk: A[t,s] = sum_j r_t[j] k_s[j] exp(seg[t,s,j]), seg = sum_{s<tau<t} w_tau, s < t
    idx = torch.arange(L, device=r.device)
    after = (idx[:, None] > idx[None, :])                                      # [tau, s]: tau > s
    X = w_[..., :, None, :] * after[..., None]                                 # [B,H,NT,L(tau),L(s),N]
    seg = F.pad(torch.cumsum(X, dim=-3)[..., :-1, :, :], (0, 0, 0, 0, 1, 0))   # [.., L(t), L(s), N]
    seg = seg.masked_fill(~after[..., None], float('-inf'))                    # keep s < t only
    A = ((r_[..., :, None, :] * torch.exp(seg)) * k_[..., None, :, :]).sum(-1)   # [B,H,NT,L,L]
    y = A @ v_ + (r_ * u_ * k_).sum(-1, keepdim=True) * v_
    # chunk-local state contributions, then a short sequential scan over chunks
    U = (k_ * torch.exp(rg)).transpose(-1, -2) @ v_                    # [B,H,NT,N,N]
    dec = torch.exp(glast).squeeze(-2)[..., None]                              # [B,H,NT,N,1]
    S = torch.zeros(B, H, N, N, dtype=cdt, device=r.device) if state is None else state.to(cdt)
    starts = []
    for c in range(NT):
        starts.append(S)
        S = dec[:, :, c] * S + U[:, :, c]
    y = y + (r_ * torch.exp(ge)) @ torch.stack(starts, 2)
    y = y.permute(0, 2, 3, 1, 4).reshape(B, NT * L, H, N)[:, :T]
    return y.to(out_dtype), S


# ----------------------------------------------------------------------------------------------
# CUDA kernel (wkv6.cu): JIT build + torch.library ops

_HERE = os.path.dirname(os.path.abspath(__file__))
_CU_PATH = os.path.join(_HERE, 'wkv6.cu')
_DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
# The binding is tiny and lives here so wkv6.cu stays plain CUDA C++ (it compiles with bare nvcc,
# no torch headers; tests/test_wkv6.py checks that). It passes PyTorch's current stream down.
_BINDING_CPP = r"""
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
extern "C" int wkv6_fwd(int dtype, int N, long long B, long long T, long long H,
    const void* r, const void* k, const void* v, const float* w, const float* u, const float* s0,
    void* y, float* sT, void* stream);
extern "C" int wkv6_bwd(int dtype, int N, long long B, long long T, long long H,
    const void* r, const void* k, const void* v, const float* w, const float* u, const float* s0,
    const float* sT, const void* gy, const float* gsT,
    void* gr, void* gk, void* gv, float* gw, float* gu_part, float* gs0, void* stream);
extern "C" const char* wkv6_error_string(int code);

static void wkv6_check(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda() && t.is_contiguous(), "wkv6: ", name, " must be a contiguous CUDA tensor");
}
std::vector<at::Tensor> fwd(int64_t dtype, at::Tensor r, at::Tensor k, at::Tensor v, at::Tensor w,
                            at::Tensor u, at::Tensor s0) {
  wkv6_check(r, "r"); wkv6_check(k, "k"); wkv6_check(v, "v"); wkv6_check(w, "w"); wkv6_check(u, "u"); wkv6_check(s0, "s0");
  const c10::cuda::CUDAGuard guard(r.device());
  auto y = at::empty_like(r);
  auto sT = at::empty_like(s0);
  int code = wkv6_fwd((int)dtype, (int)r.size(3), r.size(0), r.size(1), r.size(2),
      r.data_ptr(), k.data_ptr(), v.data_ptr(), w.data_ptr<float>(), u.data_ptr<float>(),
      s0.data_ptr<float>(), y.data_ptr(), sT.data_ptr<float>(), c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(code == 0, "wkv6 CUDA forward failed: ", wkv6_error_string(code));
  return {y, sT};
}
std::vector<at::Tensor> bwd(int64_t dtype, at::Tensor r, at::Tensor k, at::Tensor v, at::Tensor w,
                            at::Tensor u, at::Tensor s0, at::Tensor sT, at::Tensor gy, at::Tensor gsT) {
  wkv6_check(r, "r"); wkv6_check(k, "k"); wkv6_check(v, "v"); wkv6_check(w, "w"); wkv6_check(u, "u"); wkv6_check(s0, "s0");
  wkv6_check(sT, "sT"); wkv6_check(gy, "gy"); wkv6_check(gsT, "gsT");
  const c10::cuda::CUDAGuard guard(r.device());
  auto gr = at::empty_like(r), gk = at::empty_like(r), gv = at::empty_like(r);
  auto gw = at::empty_like(w), gs0 = at::empty_like(s0);
  auto gu_part = at::empty({r.size(0), r.size(2), r.size(3)}, w.options());
  int code = wkv6_bwd((int)dtype, (int)r.size(3), r.size(0), r.size(1), r.size(2),
      r.data_ptr(), k.data_ptr(), v.data_ptr(), w.data_ptr<float>(), u.data_ptr<float>(),
      s0.data_ptr<float>(), sT.data_ptr<float>(), gy.data_ptr(), gsT.data_ptr<float>(),
      gr.data_ptr(), gk.data_ptr(), gv.data_ptr(), gw.data_ptr<float>(), gu_part.data_ptr<float>(),
      gs0.data_ptr<float>(), c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(code == 0, "wkv6 CUDA backward failed: ", wkv6_error_string(code));
  return {gr, gk, gv, gw, gu_part.sum(0), gs0};
}
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fwd", &fwd, "WKV-6 forward");
  m.def("bwd", &bwd, "WKV-6 backward");
}
"""
_cuda_state = {}  # 'mod' or 'err'


def _load_cuda():
    """Build (once per process, cached on disk) and return the CUDA extension; raises a clear error."""
    if 'mod' in _cuda_state:
        return _cuda_state['mod']
    if 'err' in _cuda_state:
        raise RuntimeError(_cuda_state['err'])
    try:
        import shutil
        from torch.utils import cpp_extension
        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA device visible to torch")
        if cpp_extension.CUDA_HOME is None and shutil.which('nvcc') is None:
            raise RuntimeError("nvcc not found: install the CUDA toolkit or set CUDA_HOME")
        if not os.path.exists(_CU_PATH):
            raise RuntimeError(f"{_CU_PATH} is missing")
        build_dir = os.environ.get('WKV6_BUILD_DIR', os.path.join(os.path.expanduser('~'), '.cache', 'wkv6_build'))
        os.makedirs(build_dir, exist_ok=True)
        cpp = os.path.join(build_dir, 'wkv6_binding.cpp')
        if not os.path.exists(cpp) or open(cpp).read() != _BINDING_CPP:
            with open(cpp, 'w') as f:
                f.write(_BINDING_CPP)
        major, minor = torch.cuda.get_device_capability()
        t0 = time.time()
        mod = cpp_extension.load(
            name='wkv6_ext', sources=[cpp, _CU_PATH], build_directory=build_dir, verbose=False,
            extra_cflags=['-O3'],
            extra_cuda_cflags=['-O3', '-Xptxas=-O3',
                               f'-gencode=arch=compute_{major}{minor},code=sm_{major}{minor}'])
        _say_once(f"wkv6: CUDA kernel ready in {time.time() - t0:.1f}s (build cache {build_dir})")
        _cuda_state['mod'] = mod
        return mod
    except Exception as e:
        _cuda_state['err'] = f"{type(e).__name__}: {e}"
        raise


@torch.library.custom_op("wkv6::cuda_fwd", mutates_args=())
def _cuda_fwd(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, u: torch.Tensor,
              s0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y, sT = _load_cuda().fwd(_DTYPE_CODE[r.dtype], r, k, v, w, u, s0)
    return y, sT


@_cuda_fwd.register_fake
def _(r, k, v, w, u, s0):
    return torch.empty_like(r), torch.empty_like(s0)


@torch.library.custom_op("wkv6::cuda_bwd", mutates_args=())
def _cuda_bwd(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, u: torch.Tensor,
              s0: torch.Tensor, sT: torch.Tensor, gy: torch.Tensor, gsT: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(_load_cuda().bwd(_DTYPE_CODE[r.dtype], r, k, v, w, u, s0, sT, gy, gsT))


@_cuda_bwd.register_fake
def _(r, k, v, w, u, s0, sT, gy, gsT):
    return (torch.empty_like(r), torch.empty_like(k), torch.empty_like(v), torch.empty_like(w),
            torch.empty_like(u), torch.empty_like(s0))


def _cuda_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs, output[1])


def _upstream(r, gy, gsT):
    """A backward's incoming gradients, contiguous in the kernels' dtypes (zeros for an output not used); both the
    CUDA and the Triton backward take them so."""
    B, T, H, N = r.shape
    gy = torch.zeros_like(r) if gy is None else gy.to(r.dtype).contiguous()
    gsT = r.new_zeros((B, H, N, N), dtype=torch.float32) if gsT is None else gsT.float().contiguous()
    return gy, gsT


def _cuda_backward(ctx, gy, gsT):
    r, k, v, w, u, s0, sT = ctx.saved_tensors
    return _cuda_bwd(r, k, v, w, u, s0, sT, *_upstream(r, gy, gsT))


_cuda_fwd.register_autograd(_cuda_backward, setup_context=_cuda_setup)


class _EagerCUDA(torch.autograd.Function):
    """Eager calls of the same extension functions without torch.library's Python dispatch (host time per call,
    see wkv6_triton._EagerWKV6); torch.compile traces the custom ops above."""

    @staticmethod
    def forward(ctx, r, k, v, w, u, s0):
        y, sT = _load_cuda().fwd(_DTYPE_CODE[r.dtype], r, k, v, w, u, s0)
        ctx.save_for_backward(r, k, v, w, u, s0, sT)
        return y, sT

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy, gsT):
        r, k, v, w, u, s0, sT = ctx.saved_tensors
        return tuple(_load_cuda().bwd(_DTYPE_CODE[r.dtype], r, k, v, w, u, s0, sT, *_upstream(r, gy, gsT)))


def _eager_route():
    """Eager calls skip the custom ops' dispatch unless WKV6_EAGER_CUSTOM_OP=1 (the A/B timing route)."""
    return not torch.compiler.is_compiling() and os.environ.get('WKV6_EAGER_CUSTOM_OP') != '1'


def _prep_fast(r, k, v, w, u, state):
    """Contiguous inputs, fp32 w/u/state (casts stay in the autograd graph)."""
    B, T, H, N = r.shape
    s0 = r.new_zeros(B, H, N, N, dtype=torch.float32) if state is None else state.float().contiguous()
    return r.contiguous(), k.contiguous(), v.contiguous(), w.float().contiguous(), u.float().contiguous(), s0


def wkv6_cuda(r, k, v, w, u, state=None):
    """The wkv6.cu kernels (fp32 state/accumulation); same contract as wkv6()."""
    args = _prep_fast(r, k, v, w, u, state)
    if not _eager_route():
        return _cuda_fwd(*args)
    if torch.is_grad_enabled() and any(x.requires_grad for x in args):
        return _EagerCUDA.apply(*args)
    y, sT = _load_cuda().fwd(_DTYPE_CODE[r.dtype], *args)
    return y, sT


# ----------------------------------------------------------------------------------------------
# backend selection

def _cuda_ok(N):
    """True when the JIT-built CUDA extension loads for head size N (builds it on first use)."""
    if N not in SUPPORTED_N_CUDA:
        return False
    try:
        _load_cuda()
        return True
    except Exception as e:  # no GPU, missing nvcc/ninja, compile error...
        _say_once(f"wkv6: CUDA kernel unavailable ({e}); falling back")
        return False


def _triton_ok(N):
    if N < 16 or N > 128 or (N & (N - 1)) != 0:
        return False
    try:
        import wkv6_triton  # noqa: F401
        return True
    except Exception as e:
        _say_once(f"wkv6: Triton kernel unavailable ({type(e).__name__}: {e}); falling back")
        return False


_AUTO = {}  # (device type, N) -> the backend 'auto' picked: looked up first, so a compiled forward reads a constant
# instead of tracing the availability checks (which build/load the extension and catch its exceptions)


def wkv6_backend(device, N=64) -> str:
    """Which backend 'auto' picks for tensors on `device` with head size N (for log headers)."""
    device = torch.device(device)
    if device.type != 'cuda':
        pick = 'torch'
    elif _cuda_ok(N):
        pick = 'cuda'
    elif _triton_ok(N):
        pick = 'triton'
    else:
        pick = 'torch'
    _AUTO[(device.type, N)] = pick
    return pick


def wkv6(r, k, v, w, u, state=None, *, backend="auto"):
    """WKV-6 forward (autograd-differentiable). Returns (y in r.dtype, state_out fp32 [B,H,N,N])."""
    _check_inputs(r, k, v, w, u, state)
    if r.dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        raise ValueError(f"wkv6: unsupported dtype {r.dtype}; use fp32, bf16 or fp16")
    if backend not in ("auto", "cuda", "triton", "torch", "naive"):
        raise ValueError(f"wkv6: unknown backend '{backend}'; use auto|cuda|triton|torch|naive")
    N = r.shape[-1]
    if backend == "auto":
        backend = _AUTO.get((r.device.type, N)) or wkv6_backend(r.device, N)
        if not torch.compiler.is_compiling():  # print() is a graph break: one per layer, kept in the compiled code
            _say_once(f"wkv6: using backend '{backend}' on {r.device.type} (head size {N})")
    if backend == "naive":
        y, s = wkv6_naive(r, k, v, w, u, state)
        return y, s.float() if s.dtype != torch.float64 else s
    if backend == "torch":
        y, s = wkv6_torch_chunked(r, k, v, w, u, state)
        return y, s.float() if s.dtype != torch.float64 else s
    if r.device.type != 'cuda':
        raise ValueError(f"wkv6: backend '{backend}' needs CUDA tensors, got {r.device}; use backend='torch' on CPU")
    if backend == "cuda":
        if N not in SUPPORTED_N_CUDA:
            raise ValueError(f"wkv6: CUDA kernel supports head sizes {SUPPORTED_N_CUDA}, got {N}; use backend='triton' or 'torch'")
        return wkv6_cuda(r, k, v, w, u, state)
    import wkv6_triton
    return wkv6_triton.wkv6_triton(r, k, v, w, u, state)
