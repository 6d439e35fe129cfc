"""
The WKV-6 kernel timer (the kernels issue's bench): CUDA events around each call, warm-up excluded, medians of
per-repeat ms, and the I/O floor from a measured copy bandwidth. In one process on one GPU it times the torch chunked
path, both Triton schedules x both intra-chunk forms (wkv6_triton.py), the CUDA kernel (wkv6.cu) and fla's
chunk_rwkv6 when importable, and writes OUT/wkv6_bench.json (convert with `python bench.py --what=kernel
--from=...`, or run `python bench.py --what=kernel`, which calls bench() here).

    python wkv6_bench.py [--out=DIR] [--deadline_s=S] [--reps=R] [--impls=triton,cuda,...] [--shapes=0,1,...]
                         [--modes=split,fused] [--intras=columns,levels] [--variants=0|1] [--profile=0|1]
                         [--levels_bts=32,64] [--scan_groups=0,16,...] [--tune=NW/NS/MAXNREG,...]
                         [--host_profile=0|1]
Every row also has fwdbwd_host_median_ms: the host side of a fwd+bwd call alone (no sync inside); near fwdbwd_ms,
the call waits on the host. --host_profile=1 adds where that host time goes (cProfile, Triton and CUDA rows).
--levels_bts times the levels form's auto schedule again with longer chunks (WKV6_TRITON_LEVELS_BT), after the rest;
--scan_groups the same with the split schedule's state scans in groups of G chunks (WKV6_TRITON_SCAN_GROUP; 0 = one
sequential pass), at the shapes where auto runs split.
--tune=8/1/128,16/1/0 times the auto schedule with every autotuned kernel pinned to one (num_warps, num_stages,
maxnreg; 0 = no register cap) config, after the rest: a register cap lets two 8-warp programs share an SM.
--profile=1 adds the per-kernel device times (torch.profiler) of each Triton and fla measurement, and the configs
the Triton autotuner chose.
(`python wkv6_triton.py --bench ...` is the same.)

    python wkv6_bench.py --host=1 [--out=DIR]      (any machine, no GPU: writes OUT/wkv6_host_overhead.json)
times the host side alone: one Triton fwd+bwd call with every kernel launch replaced by a no-op, on CPU tensors,
through the eager route and through the custom ops (WKV6_EAGER_CUSTOM_OP=1), next to an autograd.Function that does
nothing (the floor of any autograd op). Small GPU calls wait on exactly this host work (--profile=1 shows the gap).
"""
import contextlib
import os
import sys

import torch
import triton

from metrics import source_digest
from wkv6_scan import _cdiv, _scan_blocks, _scan_group
from wkv6_triton import _blocks, _chunk_len, _intra, _mode, wkv6_triton

# (B, T, H), N=64, bf16: the kernels issue's four shapes, then gf_mh_8m's training call (16,384 tokens, 3 heads)
# (indices 5-7, on request with --shapes: its calls at T=4096 / 8192 / 16384, same tokens per step)
BENCH_SHAPES = [(32, 256, 4), (16, 1024, 8), (8, 4096, 32), (1, 16384, 4), (64, 256, 3),
                (4, 4096, 3), (2, 8192, 3), (1, 16384, 3)]
# extra Triton (BK, BV) splits tried per shape after the defaults, while time remains
BENCH_VARIANTS = {0: ['64,32', '32,64'], 1: ['64,32', '32,64'], 2: ['64,32', '32,64', '32,32'], 3: ['16,16', '32,16'],
                  4: ['64,32']}


def _time_ms(fn, reps, warmup=3):
    """Per-repeat CUDA-event times (ms) after `warmup` untimed calls (autotune/compile land there)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b))
    return out


def _host_ms(fn, reps, sync=None):
    """Host time per call (ms): perf_counter around each call with no sync inside it. Launches are asynchronous, so a
    call whose host time is about its CUDA-event time keeps the GPU waiting for the host (the launch queue does not
    fill at these rep counts); far below it, the GPU is the bound. `sync` (torch.cuda.synchronize on CUDA) runs
    before and after the loop, never inside it."""
    import time
    sync = sync or torch.cuda.synchronize
    sync()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    sync()
    return out


def host_profile(fn, reps, top=25):
    """Where one call's host time goes: cProfile over `reps` calls (after one unprofiled call), the `top` functions by
    own time, each as ms per call (own and cumulative) and calls per call. Python-level only: time inside the CUDA
    driver shows under the Python function that called it (e.g. triton's launcher)."""
    import cProfile
    import pstats
    fn()
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(reps):
        fn()
    pr.disable()
    st = pstats.Stats(pr)
    rows = [dict(func=f"{os.path.basename(f)}:{ln}({name})", calls=nc / reps, own_ms=tt / reps * 1e3,
                 cum_ms=ct / reps * 1e3) for (f, ln, name), (cc, nc, tt, ct, _) in st.stats.items()]
    return sorted(rows, key=lambda r: -r['own_ms'])[:top]


def kernel_times(fn, reps, device_type='cuda'):
    """Device time per kernel of one fn() call: {kernel name: (ms per call, launches per call)}, largest first, from
    torch.profiler over `reps` calls after one unprofiled call. On CUDA the entries are the GPU kernels themselves
    (Triton kernels under their function names, so scan vs chunk kernels, forward vs backward, and the host-side sums
    of split partials each get their own line); device_type='cpu' profiles CPU ops instead (the tests' stand-in)."""
    from torch.profiler import ProfilerActivity, profile
    cuda = device_type == 'cuda'
    fn()
    if cuda:
        torch.cuda.synchronize()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for _ in range(reps):
            fn()
        if cuda:
            torch.cuda.synchronize()
    want = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    rows = {e.key: ((e.self_device_time_total if cuda else e.self_cpu_time_total) / 1e3 / reps, e.count / reps)
            for e in prof.key_averages() if e.device_type == want}
    return dict(sorted(rows.items(), key=lambda kv: -kv[1][0]))


def _median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def _label(B, H, mode, T):
    """A Triton schedule's name in the results: its mode and (BK, BV) blocks at this (B, H), N=64; a split schedule
    whose state scans run in groups of G chunks (_scan_group) says ' gG'."""
    if mode == 'split':
        G = _scan_group(_cdiv(T, _chunk_len()))
        return 'triton-split[scan %d,%d%s]' % (*_scan_blocks(B, H, 64), f' g{G}' if G else '')
    return 'triton-fused[%d,%d]' % _blocks(B, H, 64)


def tuners():
    """The autotuned kernels of wkv6_triton and wkv6_scan by name."""
    import wkv6_scan as S_
    import wkv6_triton as T_
    return {k: getattr(m, k) for m in (T_, S_) for k in dir(m)
            if k.endswith('_kernel') and hasattr(getattr(m, k), 'configs')}


@contextlib.contextmanager
def pinned_config(tune):
    """Every autotuned kernel of wkv6_triton pinned to one config, 'NW/NS/MAXNREG' (0 = no register cap), with
    their tuning caches emptied; both restored on exit (--tune). Yields the label suffix."""
    nw, ns, nreg = (int(x) for x in tune.split('/'))
    tuners_ = list(tuners().values())
    saved = [(a.configs, dict(a.cache)) for a in tuners_]
    for a in tuners_:
        a.configs = [triton.Config({}, num_warps=nw, num_stages=ns, maxnreg=nreg or None)]
        a.cache.clear()
    try:
        yield f'w{nw}s{ns}' + (f'r{nreg}' if nreg else '')
    finally:
        for a, (configs, cache) in zip(tuners_, saved):
            a.configs, a.cache = configs, cache


@contextlib.contextmanager
def _env_rerun(var, value, tag):
    """One environment variable set for a rerun of the auto schedule, removed on exit. Yields the label suffix."""
    os.environ[var] = str(value)
    try:
        yield tag
    finally:
        os.environ.pop(var, None)


def levels_chunk(bt):
    """The levels form on bt-token chunks (WKV6_TRITON_LEVELS_BT; --levels_bts)."""
    return _env_rerun('WKV6_TRITON_LEVELS_BT', bt, f'bt{bt}')


def scan_group(g):
    """The split schedule's state scans in groups of g chunks (WKV6_TRITON_SCAN_GROUP; --scan_groups)."""
    return _env_rerun('WKV6_TRITON_SCAN_GROUP', g, f'g{g}')


def bench(argv):
    import json
    import platform
    import subprocess
    import time
    import wkv6 as W
    opts = dict(a[2:].split('=', 1) for a in argv if a.startswith('--') and '=' in a)
    out_dir = opts.get('out', 'results')
    deadline = time.time() + float(opts.get('deadline_s', 1e9))
    reps = int(opts.get('reps', 20))
    want_impls = opts.get('impls', 'torch_chunked,triton,cuda,fla_chunk_rwkv6').split(',')
    want_shapes = [int(x) for x in opts.get('shapes', '0,1,2,3,4').split(',')]
    want_modes = opts.get('modes', 'split,fused').split(',')   # Triton schedules timed at every shape
    want_intras = opts.get('intras', 'columns,levels').split(',')   # and forms of the intra-chunk pairs (_intra)
    want_variants = opts.get('variants', '1') == '1'
    want_profile = opts.get('profile', '0') == '1'   # per-kernel device time of each Triton fwd+bwd (kernel_times)
    want_host_profile = opts.get('host_profile', '0') == '1'   # cProfile of the Triton/CUDA fwd+bwd (host_profile)
    # the default Triton config and CUDA also through the custom ops (what torch.compile traces), side by side with
    # the eager route (plain autograd.Function) every eager call takes: the A/B of the host time per call
    want_op_route = opts.get('op_route', '1') == '1'
    want_bts = [int(x) for x in opts.get('levels_bts', '').split(',') if x]
    want_groups = [int(x) for x in opts.get('scan_groups', '').split(',') if x]
    want_tunes = [x for x in opts.get('tune', '').split(',') if x]   # NW/NS/MAXNREG (0 = no cap), e.g. 8/1/128
    os.makedirs(out_dir, exist_ok=True)
    dev = 'cuda'
    seed = 1234
    torch.manual_seed(seed)

    def sh(cmd):
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
        except Exception:
            return ''
    sha = os.environ.get('WKV6_GIT_SHA') or sh('git rev-parse HEAD')
    dirty = os.environ.get('WKV6_GIT_DIRTY') or ('1' if sh('git status --porcelain -- wkv6.py wkv6_triton.py wkv6_scan.py wkv6.cu') else '0')
    meta = {
        'command': ' '.join([sys.executable] + sys.argv), 'git_sha': sha, 'git_dirty': dirty == '1',
        'source_digest': source_digest(),   # the files that ran, whatever .git says (metrics.py --find-commit)
        'device': torch.cuda.get_device_name(), 'driver': sh('nvidia-smi --query-gpu=driver_version --format=csv,noheader'),
        'torch': torch.__version__, 'triton': triton.__version__, 'python': platform.python_version(),
        'cuda_runtime': torch.version.cuda, 'seed': seed, 'reps': reps, 'N': 64, 'dtype': 'bf16',
        'timing': 'CUDA events around each call, 3 warm-up calls excluded; medians of per-repeat ms; '
                  '*_host_median_ms: perf_counter around each call, no sync inside (the host side alone)',
        'routes': "eager calls run through plain autograd.Functions (wkv6_triton._EagerWKV6, wkv6._EagerCUDA); "
                  "'+op' = the same kernels through the torch.library custom ops torch.compile traces "
                  "(WKV6_EAGER_CUSTOM_OP=1), timed next to it",
    }
    print(f"device: {meta['device']}  driver {meta['driver']}  torch {meta['torch']}  triton {meta['triton']}", flush=True)

    # measured device copy bandwidth (bytes read + written) for the I/O floor
    x = torch.empty(2 ** 28, dtype=torch.float32, device=dev).normal_()
    yb = torch.empty_like(x)
    cp = _time_ms(lambda: yb.copy_(x), 10)
    bw = 2 * x.numel() * 4 / (_median(cp) * 1e-3)
    meta['copy_bandwidth_GBps'] = bw / 1e9
    del x, yb

    impls = {'torch_chunked': lambda *a: W.wkv6_torch_chunked(*a), 'triton': wkv6_triton, 'cuda': W.wkv6_cuda}
    impls = {n: f for n, f in impls.items() if n in want_impls}
    meta['triton_mode'] = (f"each of {want_modes} x intra {want_intras} per shape (WKV6_TRITON_MODE, "
                           f"WKV6_TRITON_INTRA; '/levels' in the label); '*' = what auto runs")
    try:
        if 'fla_chunk_rwkv6' not in want_impls:
            raise ImportError('not requested (--impls)')
        from fla.ops.rwkv6 import chunk_rwkv6

        def fla_fn(r, k, v, w, u, s0):
            return chunk_rwkv6(r, k, v, w, u, scale=1.0, initial_state=s0, output_final_state=True)
        impls['fla_chunk_rwkv6'] = fla_fn
        import fla
        meta['fla'] = getattr(fla, '__version__', '?')
    except Exception as e:
        meta['fla'] = f'not importable: {type(e).__name__}: {e}'
    results = []

    def save():
        path = os.path.join(out_dir, 'wkv6_bench.json')
        with open(path, 'w') as f:
            json.dump({'meta': meta, 'results': results}, f, indent=1)
        return path

    def one(shape_i, name, fn, label=None, mode=None, intra=None):
        if mode is not None:   # this measurement's Triton schedule and intra form (restored after it)
            os.environ['WKV6_TRITON_MODE'] = mode
            os.environ['WKV6_TRITON_INTRA'] = intra or 'levels'
            try:
                return one(shape_i, name, fn, label)
            finally:
                os.environ.pop('WKV6_TRITON_MODE', None)
                os.environ.pop('WKV6_TRITON_INTRA', None)
        B, T, H = BENCH_SHAPES[shape_i]
        N = 64
        g = torch.Generator(device=dev).manual_seed(seed + shape_i)
        sets = []
        for _ in range(2):   # two input sets, alternated, so small shapes are not timed out of L2
            r, k, v = (torch.randn(B, T, H, N, device=dev, generator=g).to(torch.bfloat16) for _ in range(3))
            w = -torch.exp(-1 + 0.5 * torch.randn(B, T, H, N, device=dev, generator=g))
            u = torch.randn(H, N, device=dev, generator=g)
            s0 = torch.randn(B, H, N, N, device=dev, generator=g)
            sets.append([r, k, v, w, u, s0])
        gy = torch.randn(B, T, H, N, device=dev, generator=g).to(torch.bfloat16)
        gs = torch.randn(B, H, N, N, device=dev, generator=g)
        n_el = B * T * H * N
        io_fwd = n_el * (3 * 2 + 4 + 2) + 2 * B * H * N * N * 4
        io_fb = io_fwd + n_el * (3 * 2 + 4 + 2 + 3 * 2 + 4) + 2 * B * H * N * N * 4
        rec = {'shape': [B, T, H, N], 'impl': label or name, 'io_floor_fwd_ms': io_fwd / bw * 1e3,
               'io_floor_fwdbwd_ms': io_fb / bw * 1e3}
        it = [0]

        def fwd():
            it[0] ^= 1
            with torch.no_grad():
                fn(*sets[it[0]])

        grad_sets = [[t.detach().clone().requires_grad_() for t in st] for st in sets]

        def fwdbwd():
            it[0] ^= 1
            xs = grad_sets[it[0]]
            for t in xs:
                t.grad = None
            y, s = fn(*xs)
            torch.autograd.backward([y, s], [gy, gs])
        try:
            t0 = time.time()
            rec['fwd_ms'] = _time_ms(fwd, reps)
            rec['fwdbwd_ms'] = _time_ms(fwdbwd, reps)
            rec['fwd_median_ms'] = _median(rec['fwd_ms'])
            rec['fwdbwd_median_ms'] = _median(rec['fwdbwd_ms'])
            rec['fwdbwd_host_median_ms'] = _median(_host_ms(fwdbwd, reps))
            rec['wall_s'] = time.time() - t0
            if want_profile and name in ('triton', 'fla_chunk_rwkv6'):
                kt = kernel_times(fwdbwd, 5)
                rec['kernels_fwdbwd'] = [dict(name=k, ms=ms, launches=n) for k, (ms, n) in kt.items()]
                if name == 'triton':   # which config each autotuned kernel settled on (tuned last on this shape)
                    rec['autotuned'] = {k: str(a.best_config) for k, a in tuners().items()
                                        if hasattr(a, 'best_config')}
                print('      kernels: ' + ', '.join(f"{k[:28]} {ms:.3f} ms x{n:g}" for k, (ms, n) in
                                                    list(kt.items())[:6]), flush=True)
            if want_host_profile and name in ('triton', 'cuda'):
                rec['host_profile_fwdbwd'] = host_profile(fwdbwd, reps)
                print('      host: ' + ', '.join(f"{h['func'][:40]} {h['own_ms']:.3f}" for h in
                                                 rec['host_profile_fwdbwd'][:5]), flush=True)
            try:
                with torch.no_grad():   # sanity: same answer as the CUDA kernel on these inputs
                    ya, sa = fn(*sets[0])
                    yb_, sb = W.wkv6_cuda(*sets[0])
                    rec['y_rel_vs_cuda'] = ((ya.float() - yb_.float()).norm() / yb_.float().norm()).item()
                    rec['state_rel_vs_cuda'] = ((sa.float() - sb.float()).norm() / sb.float().norm()).item()
            except Exception as e:
                rec['y_rel_vs_cuda'] = float('nan')
                rec['compare_error'] = f"{type(e).__name__}: {str(e)[:200]}"
            print(f"{str((B, T, H)):>16} {rec['impl']:>22}: fwd {rec['fwd_median_ms']:8.3f} ms   fwd+bwd "
                  f"{rec['fwdbwd_median_ms']:8.3f} ms (host {rec['fwdbwd_host_median_ms']:.3f})   (floor {rec['io_floor_fwd_ms']:.3f} / {rec['io_floor_fwdbwd_ms']:.3f})"
                  f"  y_rel_vs_cuda {rec['y_rel_vs_cuda']:.1e}", flush=True)
        except Exception as e:
            rec['error'] = f"{type(e).__name__}: {str(e)[:500]}"
            print(f"{str((B, T, H)):>16} {rec['impl']:>22}: ERROR {rec['error']}", flush=True)
        results.append(rec)
        save()   # after every measurement: a command cut off by its time limit still leaves what it measured
        del sets, grad_sets
        torch.cuda.empty_cache()

    def op_route(measure):
        os.environ['WKV6_EAGER_CUSTOM_OP'] = '1'
        try:
            measure()
        finally:
            os.environ.pop('WKV6_EAGER_CUSTOM_OP', None)

    for si in want_shapes:   # in the order given: the first shapes get measured before a deadline
        B, T, H = BENCH_SHAPES[si]
        for name, fn in impls.items():
            if time.time() > deadline:
                break
            if name == 'torch_chunked' and (B * H * T > 300_000 or T > 4096):
                continue   # ~B*H*T*16*64*4 bytes per autograd temporary: too large to be worth timing
            os.environ.pop('WKV6_TRITON_BLOCKS', None)
            if name != 'triton':
                one(si, name, fn, name)
                if name == 'cuda' and want_op_route:
                    op_route(lambda: one(si, name, fn, name + '+op'))
                continue
            for intra in want_intras:   # side by side; '*' marks what 'auto' (and the default intra form) runs
                for mode in want_modes:
                    if time.time() > deadline:   # checked per measurement: one shape's set can take minutes
                        break
                    label = _label(B, H, mode, T) + ('' if intra == 'columns' else '/levels')
                    auto = _mode(B, H, T) == mode and intra == ('columns', 'levels')[_intra()]
                    one(si, name, fn, label + ('*' if auto else ''),
                        mode=mode, intra=intra)
                    if auto and want_op_route:
                        op_route(lambda: one(si, name, fn, label + '*+op', mode=mode, intra=intra))
    for si in (want_shapes if want_variants and 'triton' in impls else []):
        for var in BENCH_VARIANTS.get(si, []):
            if time.time() > deadline:
                break
            os.environ['WKV6_TRITON_BLOCKS'] = var
            for mode in want_modes:   # the chunk kernels' (BK, BV) in either schedule
                one(si, 'triton', wkv6_triton, f'triton-{mode}[{var}]/levels', mode=mode, intra='levels')
    os.environ.pop('WKV6_TRITON_BLOCKS', None)
    # the auto schedule again, levels form, once per --levels_bts chunk length, per --scan_groups group (split
    # shapes only), then once per --tune config (every autotuned kernel pinned to it: the autotuner keeps only its
    # winner; this shows what each config costs)
    for reruns in ([(levels_chunk, bt) for bt in want_bts], [(scan_group, g) for g in want_groups],
                   [(pinned_config, t) for t in want_tunes]):
        for si in (want_shapes if 'triton' in impls else []):
            B, T, H = BENCH_SHAPES[si]
            mode = _mode(B, H, T)
            for setting, arg in reruns:
                if time.time() > deadline or (setting is scan_group and mode != 'split'):
                    break
                with setting(arg) as tag:
                    one(si, 'triton', wkv6_triton, f'{_label(B, H, mode, T)}/levels/{tag}', mode=mode,
                        intra='levels')
    path = save()
    print("\nsummary (median ms, fwd / fwd+bwd) on", meta['device'])
    for rcd in results:
        if 'error' not in rcd:
            print(f"  {str(tuple(rcd['shape'][:3])):>16} {rcd['impl']:>22} {rcd['fwd_median_ms']:8.3f} {rcd['fwdbwd_median_ms']:8.3f}")
    print("wrote", path)


def host_overhead(argv):
    """Host time of one wkv6_triton call with the launches stubbed (see the module docstring); medians of `reps`."""
    import json
    import platform
    import wkv6_scan
    import wkv6_triton as T_
    opts = dict(a[2:].split('=', 1) for a in argv if a.startswith('--') and '=' in a)
    out_dir, reps = opts.get('out', 'results'), int(opts.get('reps', 500))
    B, T, H, N = 32, 16, 4, 64   # (B, H, N) of the (32,256,4) shape (they set the blocks); T=16 keeps CPU ops cheap
    g = torch.Generator().manual_seed(0)
    leaves = [torch.randn(B, T, H, N, generator=g).to(torch.bfloat16).requires_grad_() for _ in range(3)]
    leaves += [(-torch.rand(B, T, H, N, generator=g)).requires_grad_(), torch.randn(H, N, generator=g).requires_grad_(),
               torch.randn(B, H, N, N, generator=g).requires_grad_()]
    gy, gs = torch.randn(B, T, H, N, generator=g).to(torch.bfloat16), torch.randn(B, H, N, N, generator=g)

    class Nothing(torch.autograd.Function):   # the floor: an autograd op that allocates its outputs and grads only
        @staticmethod
        def forward(ctx, r, k, v, w, u, s0):
            return torch.empty_like(r), torch.empty_like(s0)

        @staticmethod
        def backward(ctx, a, b):
            return tuple(torch.empty_like(x) for x in leaves)

    def median_ms(fn):
        for _ in range(20):
            fn()
        return _median(_host_ms(fn, reps, sync=lambda: None))   # CPU tensors: nothing to sync

    def fwdbwd(op):
        def call():
            for x in leaves:
                x.grad = None
            y, s = op(*leaves)
            torch.autograd.backward([y, s], [gy, gs])
        return call

    def fwd(op):
        def call():
            with torch.no_grad():
                op(*leaves)
        return call

    class NoLaunch:
        def __getitem__(self, grid):
            return lambda *a, **k: None
    saved = {(m, n): getattr(m, n) for m in (T_, wkv6_scan) for n in dir(m) if n.endswith('_kernel')}
    rows = [dict(route='autograd.Function doing nothing', mode=None, fwd_ms=median_ms(fwd(Nothing.apply)),
                 fwdbwd_ms=median_ms(fwdbwd(Nothing.apply)))]
    try:
        for m, n in saved:
            setattr(m, n, NoLaunch())
        for mode in ('fused', 'split'):
            os.environ['WKV6_TRITON_MODE'] = mode
            for route in ('eager', 'custom_op'):
                os.environ['WKV6_EAGER_CUSTOM_OP'] = '1' if route == 'custom_op' else '0'
                rows.append(dict(route=route, mode=mode, fwd_ms=median_ms(fwd(wkv6_triton)),
                                 fwdbwd_ms=median_ms(fwdbwd(wkv6_triton))))
    finally:
        for (m, n), f in saved.items():
            setattr(m, n, f)
        os.environ.pop('WKV6_TRITON_MODE', None)
        os.environ.pop('WKV6_EAGER_CUSTOM_OP', None)
    meta = {'command': ' '.join([os.path.basename(sys.executable), 'wkv6_bench.py'] + argv),
            'source_digest': source_digest(), 'machine': platform.processor() or platform.machine(),
            'cpu_count': os.cpu_count(), 'torch': torch.__version__, 'triton': triton.__version__,
            'python': platform.python_version(), 'shape': [B, T, H, N], 'blocks': list(_blocks(B, H, N)), 'reps': reps,
            'stubbed': sorted(f"{m.__name__}.{n}" for m, n in saved),
            'timing': 'perf_counter around each call on CPU tensors, kernel launches replaced by no-ops; medians'}
    for r in rows:
        print(f"  {r['route']:>32} {str(r['mode'] or ''):>6}: fwd {r['fwd_ms']:.3f} ms  fwd+bwd {r['fwdbwd_ms']:.3f} ms")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, 'wkv6_host_overhead.json')
    with open(path + '.tmp', 'w') as f:
        json.dump({'meta': meta, 'results': rows}, f, indent=1)
    os.replace(path + '.tmp', path)
    print('wrote', path)
    return path


if __name__ == '__main__':
    if '--host=1' in sys.argv:
        host_overhead([a for a in sys.argv[1:] if a != '--host=1'])
    else:
        bench(sys.argv[1:])
