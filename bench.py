"""Measure, once and the same way every time: training throughput, generation speed, kernels, finished runs.

    python bench.py config/gpt_8m.py config/gf_mh_8m.py --T=256,1024 --tokens_per_step=16384 --steps=50
    python bench.py config/shakespeare_char.py --what=generate --ctx=128 --gen_batch=1,16 --gen_tokens=128
    python bench.py --what=runs --metrics=out-s0/metrics.jsonl,out-s1/metrics.jsonl --target=1.47 --name=sc
    python bench.py --what=kernel --deadline_s=240   (delegates to wkv6_bench.bench, the kernels issue's timer)

Every mode writes results/<YYYY-MM-DD>_<name>.json (see write_results): the exact command, git sha + dirty flag,
device name, driver, library versions, seeds, the configs, the raw per-step / per-repeat numbers and the summary.
scripts/make_tables.py turns those files into the README's tables. What each number means (pinned here, once):

train     tokens/s of the optimizer step loop train.py runs (forward + backward under the config's autocast,
          GradScaler for fp16, grad clip, fused AdamW via the model's configure_optimizers, zero_grad, the same
          one-step-late host read of the step flags), torch.compile as the config says, batches drawn by
          prepare.window_offsets exactly as train.py draws them (sampling + host->device copy inside the timed
          window). No eval, no checkpointing. `warmup` steps (compilation, autotuning, allocator growth) are run
          and discarded, then `steps` steps are timed one by one: on CUDA with events recorded between steps (no
          sync inside the window, so the host/device overlap train.py gets is kept), on CPU with the host clock.
          Reported: median per-step tok/s with min/max, and the window's total tokens / total wall time, and
          slow_steps: every timed step over SLOW_STEP_FACTOR x the median (index, seconds; printed as a warning). Several
          configs in one command run in one process on one device with identical inputs: the same seeds, T and
          batch give the same token windows (recorded as inputs_sha256; the command fails if the configs would
          see different windows).
generate  prefill tokens/s (one forward over the B x ctx prompt, building the KV cache / recurrent state) and
          decode tokens/s (gen_tokens single-token forwards from that state, B rows each, sampling included),
          timed separately with a device sync around each, median over gen_repeats after one warm-up repeat;
          plus model.generate end to end for the same prompt. Eager (no torch.compile; the GPT KV cache is
          preallocated to block_size and written in place). --gen_graph=0,1 also times the recurrent families'
          decode as one CUDA graph per token (hybrid.DecodeGraph; path "recurrent_step+cuda_graph", its capture
          time reported apart as capture_s and not inside decode; generate end to end includes it).
runs      from metrics.jsonl files of finished train.py runs: best val loss and its iter, training wall time
          (train_time_s: excludes eval and checkpointing) to the first eval at or below --target, the median of
          the logged per-step tok/s over --tok_window (train.py logs a step only every log_interval), and across
          runs mean, sample std (n-1) and min/max, with the seeds listed.
A number belongs to the device it was measured on: each summary carries the device name, and a --gate is only
checked when the device name equals --gate_device exactly (an H200 result never passes an H100 gate).
"""
import ast
import datetime
import hashlib
import json
import math
import os
import re
import shlex
import signal
import statistics
import sys
import time
from contextlib import nullcontext

import torch

import prepare
from configurator import ConfigError, configure
from metrics import provenance, read_metrics
from model import COMMON_CONFIG, all_family_configs, build_model, model_args_from, sample_next

ROOT = os.path.dirname(os.path.abspath(__file__))
SCHEMA = 1

# bench.py's own options (everything else on the command line is a config file or a --key=value config override
# applied to every config). Names must not collide with train.py's keys; checked in parse_cli.
OPTIONS = dict(
    what="train",            # train | generate | kernel | runs
    name="",                 # results file name: results/<date>_<name>.json (default: the config names)
    out="results",           # folder for the results file
    seeds="0",               # comma list; train/generate: model init and data windows come from the seed
    T="",                    # train: comma list of sequence lengths, each at --tokens_per_step (default: config's)
    tokens_per_step=16384,   # train with --T: batch_size = tokens_per_step // T (no gradient accumulation)
    steps=50,                # train: timed optimizer steps per (config, T, seed)
    warmup=10,               # train: discarded steps before the timed window
    ctx="128",               # generate: prompt lengths
    gen_batch="1,16",        # generate: batch sizes
    gen_tokens=128,          # generate: decode steps timed
    gen_repeats=5,           # generate: timed repeats (after one warm-up repeat)
    gen_graph="0",           # generate: comma list; 1 = decode through a captured CUDA graph (recurrent families)
    metrics="",              # runs: comma list of metrics.jsonl paths (or FILE#RUN: run RUN of a merged JSONL)
    target=1.47,             # runs: val-loss target for time-to-target
    tok_window="100,300",    # runs: iteration window [a, b] (inclusive) for the median tok/s
    gate="",                 # runs: e.g. "tok_s>=1.4e6,best_val<=1.47,wall_to_target<=150"
    gate_device="",          # runs: the exact device name the gate is for, e.g. "NVIDIA H100 80GB HBM3"
)


class BenchError(Exception):
    """A bad bench request; the message names the problem and the fix."""


# ---- configs ----------------------------------------------------------------------------------------------------
def train_defaults(path=os.path.join(ROOT, "train.py")):
    """train.py's own config defaults without running it: its top-level `name = <literal>` assignments up to its
    first function or try block (the config section), read with ast. device / dtype / compile are expressions
    there (they depend on CUDA) and are recomputed here with train.py's rules. tests/test_bench.py checks this
    against `python train.py --help`, so a new key in train.py cannot be silently missed."""
    tree = ast.parse(open(path).read())
    out, names = {}, set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.Try)):
            break
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            names.add(node.targets[0].id)
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    missing = {"device", "dtype", "compile"} - names
    if missing:
        raise BenchError(f"train.py no longer assigns {sorted(missing)} in its config section; update "
                         f"bench.train_defaults to its new rules")
    cuda = torch.cuda.is_available()
    out["device"] = "cuda" if cuda else "cpu"
    out["dtype"] = "bfloat16" if cuda and torch.cuda.is_bf16_supported() else ("float16" if cuda else "float32")
    out["compile"] = cuda
    return out


def load_config(args):
    """One config as train.py would see it: model keys (COMMON_CONFIG, every family), then train.py's defaults,
    then the config files and --key=value overrides in `args`, left to right, through configurator.configure."""
    g = {**COMMON_CONFIG, **all_family_configs(), **train_defaults()}
    try:
        return configure(g, list(args), keys=list(g))
    except ConfigError as e:
        raise BenchError(str(e)) from None


def parse_cli(argv):
    opts, files, overrides = dict(OPTIONS), [], []
    clash = set(OPTIONS) & set(train_defaults())
    assert not clash, f"bench options {clash} collide with train.py keys"
    for a in argv:
        if a in ("-h", "--help"):
            print(__doc__)
            print("options:\n" + "\n".join(f"  --{k}={v!r}" for k, v in OPTIONS.items()))
            raise SystemExit(0)
        key = a[2:].split("=", 1)[0] if a.startswith("--") else None
        if key in OPTIONS:
            if "=" not in a:
                raise BenchError(f"{a}: bench options take a value, e.g. --{key}={OPTIONS[key]!r}")
            raw = a.split("=", 1)[1]
            opts[key] = type(OPTIONS[key])(float(raw)) if isinstance(OPTIONS[key], int) else type(OPTIONS[key])(raw)
        elif a.startswith("-"):
            overrides.append(a)
        else:
            files.append(a)
    if opts["what"] not in ("train", "generate", "kernel", "runs"):
        raise BenchError(f"--what={opts['what']}: use train, generate, kernel or runs")
    return opts, files, overrides


def int_list(s, what):
    try:
        return [int(float(x)) for x in str(s).split(",") if x.strip()]
    except ValueError:
        raise BenchError(f"--{what}={s!r}: expected a comma-separated list of integers, e.g. --{what}=0,1,2") from None


def label_of(path, used):
    base = os.path.splitext(os.path.basename(path))[0]
    label, i = base, 2
    while label in used:
        label, i = f"{base}_{i}", i + 1
    used.add(label)
    return label


# ---- statistics -------------------------------------------------------------------------------------------------
def spread(xs):
    """median, mean, sample std (n-1; 0 for one value), min, max, n."""
    xs = [float(x) for x in xs]
    if not xs:
        return None
    return dict(median=statistics.median(xs), mean=statistics.fmean(xs),
                std=statistics.stdev(xs) if len(xs) > 1 else 0.0, min=min(xs), max=max(xs), n=len(xs))


# ---- results files ----------------------------------------------------------------------------------------------
def write_results(out_dir, name, what, device, seeds, configs, raw, summary, notes=(), prov=None, argv=None,
                  script="bench.py"):
    """results/<UTC date>_<name>.json. `summary` must carry device_name (the device the numbers belong to).
    `argv`: the script's arguments (default sys.argv[1:]); the command is recorded as `<python> SCRIPT ARGS`
    (scripts/ddp_eval.py and scripts/profile_train.py write their files here too)."""
    prov = prov or provenance(device)
    summary = dict(summary)
    summary.setdefault("device_name", prov["device_name"])
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or what
    # the command re-quoted (provenance joins argv with spaces, which breaks --gate_device="NVIDIA H100 ...")
    command = shlex.join([os.path.basename(sys.executable), script, *(sys.argv[1:] if argv is None else argv)])
    doc = dict(schema=SCHEMA, what=what, name=name, command=command, git=prov["git"],
               device=prov["device"], device_name=prov["device_name"], driver=prov.get("driver"),
               cuda=prov.get("cuda"), versions=prov["versions"], seeds=list(seeds), configs=configs,
               notes=list(notes), created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               raw=raw, summary=summary)
    return write_json(out_dir, name, doc)


def write_json(out_dir, name, doc):
    """OUT_DIR/<UTC date>_<name>.json, whole or not at all (a temp file, then os.replace); returns the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}_{name}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, default=str)
        f.write("\n")
    os.replace(tmp, path)
    return path


# ---- data -------------------------------------------------------------------------------------------------------
class Data:
    """A dataset's train split placed as train.py places it (small splits on the device as int32), and train.py's
    window gather, so the timed data path is the one training runs."""

    def __init__(self, data_dir, dataset, device):
        path = os.path.join(data_dir, dataset)
        try:
            self.meta = prepare.load_meta(path)
            if self.meta.get("records"):
                raise BenchError(f"{dataset} is a record dataset; bench.py times plain token streams only")
            self.train = prepare.open_split(path, "train", self.meta)
        except prepare.DataError as e:
            raise BenchError(str(e)) from None
        self.device = device
        self.cuda = str(device).startswith("cuda")
        self.dev = torch.from_numpy(self.train.astype("int32")).to(device) if self.train.size * 4 <= 1 << 30 else None

    def offsets(self, seed, it, micro_step, batch, T):
        if len(self.train) < T + 1:
            raise BenchError(f"T={T} needs {T + 1} tokens but the train split of {self.meta['dataset']} has "
                             f"{len(self.train)}; lower --T or use a larger dataset")
        return prepare.window_offsets(seed, it, micro_step, batch, len(self.train), T)

    def windows(self, offs, T):
        if self.dev is None:
            x, y = prepare.get_windows(self.train, offs, T)
            if self.cuda:
                return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
            return x.to(self.device), y.to(self.device)
        idx = offs.to(self.device, non_blocking=True)[:, None] + torch.arange(T, device=self.device)
        return self.dev[idx].long(), self.dev[idx + 1].long()


def autocast_ctx(cfg, device_type):
    ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg["dtype"]]
    return ptdtype, (nullcontext() if ptdtype == torch.float32 else torch.autocast(device_type=device_type, dtype=ptdtype))


def compile_mode(cfg):
    """train.py's rule: compile_mode 'auto' = reduce-overhead (CUDA graphs) for one CUDA process, else default.
    bench.py is always one process. (.get: bench.py also runs against a train.py without the key.)"""
    mode = cfg.get("compile_mode", "default")
    if mode == "auto":
        return "reduce-overhead" if str(cfg["device"]).startswith("cuda") else "default"
    return mode


def backends_of(raw_model, cfg, device_type, ptdtype):
    b = {"device_type": device_type, "dtype": cfg["dtype"], "compile": compile_mode(cfg) if cfg["compile"] else False}
    if hasattr(raw_model, "backends"):
        b.update(raw_model.backends(compiled=bool(cfg["compile"])))
    if hasattr(raw_model, "attention_path"):
        b["attention"] = raw_model.attention_path(device_type, ptdtype)
    return b


def sync(device_type):
    if device_type == "cuda":
        torch.cuda.synchronize()


# ---- train ------------------------------------------------------------------------------------------------------
def measure_train(cfg, data, T, batch, accum, steps, warmup, seed, profiler=None):
    """Time `warmup` + `steps` optimizer steps of train.py's loop; return the timed steps only (see module doc).
    `profiler` (a torch.profiler.profile, not started): recorded over the timed steps only (scripts/profile_train.py)."""
    device = cfg["device"]
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    if cfg.get("carry_state"):
        raise BenchError("carry_state=True (truncated BPTT over tracks) is not timed by bench.py, which draws "
                         "train.py's random windows; pass --carry_state=False, or read tok/s from the run's "
                         "metrics.jsonl with --what=runs")
    torch.manual_seed(seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    ptdtype, ctx = autocast_ctx(cfg, device_type)
    raw_model = build_model(model_args_from(cfg, data.meta["vocab_size"], T)).to(device)
    raw_model.train()
    optimizer = raw_model.configure_optimizers(cfg["weight_decay"], cfg["learning_rate"],
                                               (cfg["beta1"], cfg["beta2"]), device_type)
    scaler = torch.amp.GradScaler(device_type, enabled=(cfg["dtype"] == "float16"))
    fused_skip = getattr(optimizer, "defaults", {}).get("fused", False) and not scaler.is_enabled()
    ema_params = [p.detach().clone().float() for p in raw_model.parameters()] if cfg["ema"] > 0 else None
    if cfg["compile"]:
        # a fresh dynamo cache per measurement: compiling the same forward for many models / shapes would otherwise
        # hit dynamo's recompile limit and silently fall back to eager for the later configs
        torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # graph breaks of this measurement's compile only
    model = torch.compile(raw_model, mode=compile_mode(cfg)) if cfg["compile"] else raw_model
    params = [p for p in raw_model.parameters() if p.requires_grad]
    grad_clip = cfg["grad_clip"]
    if device_type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    digest = hashlib.sha256(data.meta["meta_sha256"].encode())

    def get_batch(it, micro_step):
        offs = data.offsets(seed, it, micro_step, batch, T)
        digest.update(offs.numpy().astype("<i8").tobytes())
        return data.windows(offs, T)

    marks, pending = [], None
    stop_host = torch.zeros(1, pin_memory=device_type == "cuda")
    X, Y = get_batch(0, 0)
    for it in range(warmup + steps):
        if it == warmup:  # the timed window starts here: everything before it (compile, autotune) is discarded
            sync(device_type)
            t_start = time.perf_counter()
            marks.append(_mark(device_type))
            if profiler is not None:
                profiler.start()
        for group in optimizer.param_groups:
            group["lr"] = cfg["learning_rate"] * group.get("lr_mult", 1.0)
        loss_acc = torch.zeros((), device=device)
        for micro_step in range(accum):
            with ctx:
                _, loss = model(X, Y)
                loss = loss / accum
            nxt = micro_step + 1  # prefetch the next batch while the device works, as train.py does
            X, Y = get_batch(it + nxt // accum, nxt % accum)
            scaler.scale(loss).backward()
            loss_acc += loss.detach().float()
        if scaler.is_enabled():
            scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
        flags = torch.stack([loss_acc, (~(torch.isfinite(loss_acc) & torch.isfinite(grad_norm))).float(),
                             stop_host.to(device, non_blocking=True)[0]])  # train.py's stop-request flag copy
        if fused_skip:
            optimizer.found_inf = (flags[1] > 0).float()
            optimizer.step()
        elif flags[1].item() == 0:
            scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if ema_params is not None:
            torch._foreach_lerp_(ema_params, [p.detach().float() for p in raw_model.parameters()], 1 - cfg["ema"])
        if pending is not None:  # train.py reads the previous step's flags one step late: the same host sync
            last_loss = pending.tolist()[0]
        pending = flags
        if it >= warmup:
            marks.append(_mark(device_type))
    sync(device_type)
    wall = time.perf_counter() - t_start
    if profiler is not None:
        profiler.stop()
    last_loss = pending.tolist()[0]
    if device_type == "cuda":
        dts = [a.elapsed_time(b) / 1000 for a, b in zip(marks, marks[1:])]
        mem = torch.cuda.max_memory_allocated(device) / 2 ** 20
    else:
        dts = [b - a for a, b in zip(marks, marks[1:])]
        mem = None
    tokens = batch * accum * T
    counters = torch._dynamo.utils.counters
    # a graph break splits the step into several compiled graphs (with CUDA graphs: several replays, host work between)
    breaks = {reason[:200]: n for reason, n in counters["graph_break"].items()}
    # a timed step far above the median (a recompile, a CUDA-graph re-record, a host stall) is kept in the window
    # rate and named, so a median that hides it is never the only number (an H200 run had one 1.5 s step in 50)
    med = statistics.median(dts) if dts else 0.0
    slow = [[i, d] for i, d in enumerate(dts) if d > SLOW_STEP_FACTOR * med]
    out = dict(T=T, batch_size=batch, grad_accum=accum, tokens_per_step=tokens, seed=seed, warmup=warmup,
               steps=steps, step_s=dts, slow_steps=slow, tok_s=[tokens / d for d in dts], window_wall_s=wall,
               window_tok_s=tokens * steps / wall, mem_peak_mb=mem, final_loss=last_loss,
               loss_finite=math.isfinite(last_loss), inputs_sha256=digest.hexdigest(),
               backends=backends_of(raw_model, cfg, device_type, ptdtype),
               num_params=raw_model.num_params(), flops_per_token=raw_model.flops_per_token(T),
               compiled_graphs=counters["stats"]["unique_graphs"] if cfg["compile"] else None,
               graph_breaks=sum(breaks.values()) if cfg["compile"] else None, graph_break_reasons=breaks)
    del model, raw_model, optimizer, ema_params
    if device_type == "cuda":
        torch.cuda.empty_cache()
    return out


SLOW_STEP_FACTOR = 5   # a timed step longer than this times the median is reported as a slow step


def _mark(device_type):
    if device_type == "cuda":
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        return e
    return time.perf_counter()


def run_train(opts, labels, cfgs, datas):
    Ts = int_list(opts["T"], "T")
    seeds = int_list(opts["seeds"], "seeds")
    shapes = {}
    for label, cfg in zip(labels, cfgs):
        if Ts:
            for T in Ts:
                if opts["tokens_per_step"] % T:
                    raise BenchError(f"--tokens_per_step={opts['tokens_per_step']} is not a multiple of T={T}")
            shapes[label] = [(T, opts["tokens_per_step"] // T, 1) for T in Ts]
        else:
            shapes[label] = [(cfg["block_size"], cfg["batch_size"], cfg["gradient_accumulation_steps"])]
    if len({tuple(s) for s in shapes.values()}) > 1:
        raise BenchError("the configs would see different inputs: " + "; ".join(
            f"{l}: (T, batch, accum) = {s}" for l, s in shapes.items()) + ". Pass --T=... (with --tokens_per_step) "
            "or --block_size=... --batch_size=... --gradient_accumulation_steps=... to time them on the same windows")
    raw = {label: [] for label in labels}
    for T, batch, accum in shapes[labels[0]]:
        for seed in seeds:
            for label, cfg in zip(labels, cfgs):  # configs interleaved per (T, seed): drift hits all of them alike
                print(f"[bench] {label}: T={T} batch={batch} accum={accum} seed={seed} "
                      f"({opts['warmup']} warm-up + {opts['steps']} timed steps)", flush=True)
                r = measure_train(cfg, datas[cfg["dataset"]], T, batch, accum, opts["steps"], opts["warmup"], seed)
                raw[label].append(r)
                print(f"[bench]   median {statistics.median(r['tok_s']):,.0f} tok/s, window "
                      f"{r['window_tok_s']:,.0f} tok/s, peak mem {r['mem_peak_mb']} MiB, compiled graphs "
                      f"{r['compiled_graphs']}, graph breaks {r['graph_breaks']}", flush=True)
                for i, d in r["slow_steps"]:
                    print(f"[bench]   warning: timed step {i} took {1000 * d:,.1f} ms, over {SLOW_STEP_FACTOR}x the "
                          f"median step; the median excludes its effect, the window rate includes it", flush=True)
                for reason, n in list(r["graph_break_reasons"].items())[:5]:
                    print(f"[bench]   graph break x{n}: {reason}", flush=True)
    rows = []
    for label in labels:
        for T, batch, accum in shapes[label]:
            rs = [r for r in raw[label] if r["T"] == T]
            tok = spread([x for r in rs for x in r["tok_s"]])
            rows.append(dict(config=label, T=T, batch_size=batch, grad_accum=accum, tokens_per_step=batch * accum * T,
                             seeds=seeds, timed_steps=tok["n"], tok_s_median=tok["median"], tok_s_min=tok["min"],
                             tok_s_max=tok["max"], window_tok_s=sum(r["tokens_per_step"] * r["steps"] for r in rs) /
                             sum(r["window_wall_s"] for r in rs),
                             step_ms_median=1000 * statistics.median([x for r in rs for x in r["step_s"]]),
                             mem_peak_mb=max((r["mem_peak_mb"] or 0) for r in rs) if rs[0]["mem_peak_mb"] is not None else None,
                             backends=rs[0]["backends"], num_params=rs[0]["num_params"],
                             inputs_sha256=sorted({r["inputs_sha256"] for r in rs}),
                             all_losses_finite=all(r["loss_finite"] for r in rs),
                             slow_steps=sum(len(r["slow_steps"]) for r in rs)))
    return raw, dict(rows=rows, same_inputs=True), seeds


# ---- generate ---------------------------------------------------------------------------------------------------
def measure_generate(cfg, data, ctx_len, B, gen_tokens, repeats, seed, graph=False):
    device = cfg["device"]
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    ptdtype, ac = autocast_ctx(cfg, device_type)
    torch.manual_seed(seed)
    model = build_model(model_args_from(cfg, data.meta["vocab_size"], cfg["block_size"])).to(device).eval()
    if hasattr(model, "new_cache"):  # GPT: the KV cache, which generate() uses
        if ctx_len + gen_tokens > cfg["block_size"]:
            raise BenchError(f"ctx {ctx_len} + gen_tokens {gen_tokens} exceeds block_size {cfg['block_size']}: the GPT's "
                             f"window would slide and re-prefill, which is not decoding; lower them or raise --block_size")
        prefill = lambda x: model(x, state=model.new_cache(), return_state=True)  # noqa: E731
        decode = lambda tok, st: model(tok, state=st, return_state=True)[::2]  # noqa: E731
        path = "kv_cache"
    elif hasattr(model, "step"):
        prefill = lambda x: model(x, return_state=True)  # noqa: E731
        decode = model.step
        path = "recurrent_step+cuda_graph" if graph else "recurrent_step"
    else:
        prefill = decode = None
        path = "generate_only"
    prompt, _ = data.windows(data.offsets(seed, 0, 0, B, ctx_len), ctx_len)
    gen = torch.Generator(device=device)
    reps = []
    with torch.no_grad(), ac:
        for rep in range(repeats + 1):  # repeat 0 is the warm-up
            r = {}
            if prefill is not None:
                sync(device_type)
                t0 = time.perf_counter()
                logits, _, state = prefill(prompt)
                sync(device_type)
                r["prefill_s"] = time.perf_counter() - t0
                gen.manual_seed(seed)
                logits = logits[:, -1, :]
                if graph:  # capture from the prefilled state, timed apart from the decode
                    from hybrid import DecodeGraph
                    t0 = time.perf_counter()
                    g = DecodeGraph(model, state)
                    sync(device_type)
                    r["capture_s"] = time.perf_counter() - t0
                    decode = lambda tok, st: (g(tok), None)  # noqa: E731
                t0 = time.perf_counter()
                for _ in range(gen_tokens):
                    nxt = sample_next(logits, 1.0, None, None, gen)
                    logits, state = decode(nxt, state)
                    logits = logits[:, -1, :]
                sync(device_type)
                r["decode_s"] = time.perf_counter() - t0
            gen.manual_seed(seed)
            sync(device_type)
            t0 = time.perf_counter()
            model.generate(prompt, gen_tokens + 1, temperature=1.0, generator=gen,
                           **({"cuda_graph": bool(graph)} if hasattr(model, "step") else {}))
            sync(device_type)
            r["generate_s"] = time.perf_counter() - t0
            if rep > 0:
                reps.append(r)
    med = lambda k: statistics.median(r[k] for r in reps) if k in reps[0] else None  # noqa: E731
    row = dict(ctx=ctx_len, batch=B, gen_tokens=gen_tokens, repeats=repeats, path=path, seed=seed,
               prefill_s_median=med("prefill_s"), decode_s_median=med("decode_s"), generate_s_median=med("generate_s"),
               capture_s_median=med("capture_s"),
               backends=backends_of(model, {**cfg, "compile": False}, device_type, ptdtype))
    row["prefill_tok_s"] = B * ctx_len / row["prefill_s_median"] if row["prefill_s_median"] else None
    row["decode_tok_s"] = B * gen_tokens / row["decode_s_median"] if row["decode_s_median"] else None
    row["decode_ms_per_token"] = 1000 * row["decode_s_median"] / gen_tokens if row["decode_s_median"] else None
    row["generate_tok_s"] = B * (gen_tokens + 1) / row["generate_s_median"]
    del model
    return reps, row


class _Stopped(Exception):
    pass


def _stop(signum, frame):
    raise _Stopped()


def run_generate(opts, labels, cfgs, datas):
    """Every (ctx, batch, config) in turn. SIGTERM (a device script's time limit) ends the measurement in flight
    (discarded) and the finished ones are still written, with summary["stopped"] saying how many of how many: a
    slow last case must not lose the whole file, as happened on the H100 (results/2026-11-23_hybrid_generate.json)."""
    seeds = int_list(opts["seeds"], "seeds")
    raw, rows = {label: [] for label in labels}, []
    graphs = int_list(opts["gen_graph"], "gen_graph")
    if not set(graphs) <= {0, 1}:
        raise BenchError(f"--gen_graph={opts['gen_graph']}: use 0, 1 or 0,1")
    if 1 in graphs and not str(cfgs[0]["device"]).startswith("cuda"):
        raise BenchError("--gen_graph=1 captures CUDA graphs: it needs --device=cuda")
    # graph 1 runs only for families with a recurrent step (a GPT config in the same command keeps its one path)
    cases = [(c, b, label, cfg, g) for c in int_list(opts["ctx"], "ctx") for b in int_list(opts["gen_batch"], "gen_batch")
             for label, cfg in zip(labels, cfgs) for g in graphs if g == 0 or cfg.get("model_type") == "hybrid"]
    summary = dict(rows=rows)
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        for ctx_len, B, label, cfg, g in cases:
            print(f"[bench] {label}: generate ctx={ctx_len} batch={B} tokens={opts['gen_tokens']}"
                  f"{' (CUDA graph)' if g else ''}", flush=True)
            reps, row = measure_generate(cfg, datas[cfg["dataset"]], ctx_len, B, opts["gen_tokens"],
                                         opts["gen_repeats"], seeds[0], graph=bool(g))
            raw[label].append(dict(ctx=ctx_len, batch=B, graph=g, repeats=reps))
            rows.append(dict(config=label, **row))
            print(f"[bench]   prefill {row['prefill_tok_s'] or 0:,.0f} tok/s, decode {row['decode_tok_s'] or 0:,.0f}"
                  f" tok/s, generate end-to-end {row['generate_tok_s']:,.0f} tok/s", flush=True)
    except _Stopped:
        summary["stopped"] = f"SIGTERM after {len(rows)} of {len(cases)} measurements"
        print(f"[bench] {summary['stopped']}: writing those", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return raw, summary, seeds[:1]


# ---- runs -------------------------------------------------------------------------------------------------------
def read_run(spec):
    """One run's metrics records: a train.py metrics.jsonl, or FILE#RUN = the lines of run RUN in a JSONL that
    holds several runs (the device scripts merge their runs' logs into one file, each line tagged "run": RUN, since
    a GPU box hands back only a few files)."""
    path, _, run = spec.partition("#")
    recs = read_metrics(path)
    if not run:
        return recs
    mine = [r for r in recs if r.get("run") == run]
    if not mine:
        have = sorted({str(r.get("run")) for r in recs})
        raise BenchError(f"{path} has no lines of run {run!r} (runs there: {', '.join(have)}); use FILE#RUN with one "
                         f"of those")
    return mine


def summarize_run(path, target, window):
    recs = read_run(path)
    heads = [r for r in recs if r["kind"] == "run"]
    if not heads:
        raise BenchError(f"{path} has no 'run' header line; is it a train.py metrics.jsonl?")
    head = heads[0]
    evals = [r for r in recs if r["kind"] == "eval"]
    trains = [r for r in recs if r["kind"] == "train"]
    ends = [r for r in recs if r["kind"] == "end"]
    if not evals:
        raise BenchError(f"{path} has no eval lines: the run ended before its first eval")
    best = min(evals, key=lambda r: r["val_loss"])
    hit = next((r for r in evals if r["val_loss"] <= target), None)
    lo, hi = window
    tok = [r["tok_s"] for r in trains if lo <= r["iter"] <= hi]
    return dict(metrics=path, seed=head.get("seed"), device=head.get("device"), device_name=head.get("device_name"),
                driver=head.get("driver"), versions=head.get("versions"), git=head.get("git"),
                config=head.get("config"), backends=head.get("backends"), tokens_per_iter=head.get("tokens_per_iter"),
                log_interval=(head.get("config") or {}).get("log_interval"),
                best_val=best["val_loss"], best_iter=best["iter"], best_train_time_s=best["train_time_s"],
                reached_target=hit is not None, target_iter=hit["iter"] if hit else None,
                wall_to_target_s=hit["train_time_s"] if hit else None,
                tok_s_median=statistics.median(tok) if tok else None, tok_s_lines=len(tok),
                end_reason=ends[-1]["reason"] if ends else None, final_iter=ends[-1]["iter"] if ends else None,
                train_time_s=ends[-1]["train_time_s"] if ends else evals[-1]["train_time_s"],
                evals=[dict(iter=r["iter"], val_loss=r["val_loss"], train_time_s=r["train_time_s"]) for r in evals],
                tok_s_window=tok)


GATE_RE = re.compile(r"^(best_val|wall_to_target|tok_s)(<=|>=)([0-9.eE+-]+)$")


def check_gate(gate, gate_device, device_name, per_run):
    """Each clause must hold for every run. Returns None when no gate was asked for."""
    if not gate:
        return None
    if not gate_device:
        raise BenchError("--gate needs --gate_device (the exact device name it is for, e.g. 'NVIDIA H100 80GB HBM3')")
    if device_name != gate_device:
        return dict(gate=gate, gate_device=gate_device, checked=False, passed=None,
                    reason=f"measured on {device_name!r}, not {gate_device!r}: not comparable, not checked")
    clauses = []
    for c in gate.split(","):
        m = GATE_RE.match(c.strip())
        if not m:
            raise BenchError(f"--gate clause {c!r}: use best_val<=X, wall_to_target<=S or tok_s>=N")
        key, op, lim = m.group(1), m.group(2), float(m.group(3))
        field = {"best_val": "best_val", "wall_to_target": "wall_to_target_s", "tok_s": "tok_s_median"}[key]
        vals = [r[field] for r in per_run]
        ok = all(v is not None and (v <= lim if op == "<=" else v >= lim) for v in vals)
        clauses.append(dict(clause=c.strip(), values=vals, passed=ok))
    return dict(gate=gate, gate_device=gate_device, checked=True, passed=all(c["passed"] for c in clauses),
                clauses=clauses)


def run_runs(opts):
    paths = [p for p in opts["metrics"].split(",") if p]
    if not paths:
        raise BenchError("--what=runs needs --metrics=a/metrics.jsonl,b/metrics.jsonl,...")
    window = int_list(opts["tok_window"], "tok_window")
    if len(window) != 2 or window[0] > window[1]:
        raise BenchError(f"--tok_window={opts['tok_window']!r}: give two iterations a,b with a <= b")
    missing = [p for p in paths if not os.path.exists(p.partition("#")[0])]
    if missing:
        raise BenchError(f"metrics file(s) not found: {', '.join(missing)}")
    per_run = [summarize_run(p, opts["target"], window) for p in paths]
    devices = sorted({r["device_name"] for r in per_run})
    if len(devices) != 1:
        raise BenchError(f"the runs were measured on different devices {devices}; summarise each device separately")
    drop = {"seed", "out_dir", "wandb_run_name"}
    cfgs = [{k: v for k, v in (r["config"] or {}).items() if k not in drop} for r in per_run]
    differ = sorted({k for c in cfgs for k in c if any(c.get(k) != d.get(k) for d in cfgs)})
    reached = [r for r in per_run if r["reached_target"]]
    summary = dict(
        device_name=devices[0], runs=len(per_run), seeds=[r["seed"] for r in per_run], target=opts["target"],
        tok_window=window, config_keys_differing=differ,
        best_val=spread([r["best_val"] for r in per_run]),
        best_iter=[r["best_iter"] for r in per_run],
        reached_target=len(reached),
        wall_to_target_s=spread([r["wall_to_target_s"] for r in reached]),
        tok_s=spread([r["tok_s_median"] for r in per_run if r["tok_s_median"] is not None]),
        train_time_s=spread([r["train_time_s"] for r in per_run]),
        end_reasons=[r["end_reason"] for r in per_run],
        gate=check_gate(opts["gate"], opts["gate_device"], devices[0], per_run))
    notes = [f"tok/s: median of the per-step tok_s of train lines with {window[0]} <= iter <= {window[1]}; train.py "
             f"writes a train line every log_interval steps (log_interval={sorted({r['log_interval'] for r in per_run}, key=str)}), "
             f"so this is a median over the logged steps only",
             "wall_to_target_s: train_time_s (training wall-clock, eval and checkpointing excluded) at the first eval "
             f"with val_loss <= {opts['target']}; runs that never reach it are counted in reached_target, not averaged",
             "std is the sample standard deviation (n-1)"]
    if differ:
        notes.append(f"WARNING: the runs' configs differ in {differ} (beyond seed/out_dir)")
    return per_run, summary, [r["seed"] for r in per_run], notes


def runs_provenance(per_run):
    """The numbers were measured by the runs: device, driver and versions come from their metrics headers (the
    first run's; run_runs refuses mixed devices); command and git are this summarising command's."""
    here = provenance("cpu")
    first = per_run[0]
    return {**here, "device": first["device"], "device_name": first["device_name"], "driver": first["driver"],
            "versions": first["versions"] or here["versions"], "cuda": None}


# ---- main -------------------------------------------------------------------------------------------------------
def main(argv):
    opts, files, overrides = parse_cli(argv)
    if opts["what"] == "runs":
        if files:
            raise BenchError(f"--what=runs reads --metrics files, not configs ({files})")
        raw, summary, seeds, notes = run_runs(opts)
        path = write_results(opts["out"], opts["name"] or "runs", "runs", "cpu", seeds,
                             {r["metrics"]: r["config"] for r in raw}, raw, summary, notes,
                             prov=runs_provenance(raw), argv=argv)
        s = summary
        print(f"[bench] {s['runs']} runs on {s['device_name']}: best val {s['best_val']['mean']:.4f} ± "
              f"{s['best_val']['std']:.4f}; reached {opts['target']}: {s['reached_target']}/{s['runs']}")
        if s["gate"]:
            print(f"[bench] gate {s['gate']['gate']}: {s['gate'].get('passed')} {s['gate'].get('reason', '')}")
        print(f"[bench] wrote {path}")
        return path
    if opts["what"] == "kernel":
        return run_kernel(opts, files + overrides, argv)
    if not files:
        raise BenchError("name at least one config file, e.g. python bench.py config/shakespeare_char.py")
    used = set()
    labels = [label_of(f, used) for f in files]
    cfgs = [load_config([f, *overrides]) for f in files]
    devices = {c["device"] for c in cfgs}
    if len(devices) != 1:
        raise BenchError(f"configs ask for different devices {sorted(devices)}; pass --device=... for all of them")
    device = devices.pop()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError("device=cuda but CUDA is not available here; pass --device=cpu --compile=false --dtype=float32")
    datasets = {(c["data_dir"], c["dataset"]) for c in cfgs}
    if len(datasets) != 1:
        raise BenchError(f"configs use different datasets {sorted(datasets)}; pass --dataset=... --data_dir=... "
                         f"so they are timed on the same tokens")
    data_dir, dataset = datasets.pop()
    datas = {dataset: Data(data_dir, dataset, device)}
    fn = run_train if opts["what"] == "train" else run_generate
    raw, summary, seeds = fn(opts, labels, cfgs, datas)
    notes = []
    if opts["what"] == "generate":
        notes.append("speed only: a freshly initialised model of each config (seeded), not a trained checkpoint; "
                     "sampling at temperature 1.0 from the full distribution, eager mode")
        notes.append("GPT: the prefill attends with is_causal (the backends' attention path); a decode step's one "
                     "query attends over the filled rows of the preallocated KV cache through SDPA without a mask")
    summary["data"] = dict(dataset=dataset, meta_sha256=datas[dataset].meta["meta_sha256"],
                           train_tokens=len(datas[dataset].train))
    path = write_results(opts["out"], opts["name"] or "_".join(labels) + f"_{opts['what']}", opts["what"], device,
                         seeds, dict(zip(labels, cfgs)), raw, summary, notes, argv=argv)
    print(f"[bench] wrote {path}")
    return path


def _cuda_ok():
    return torch.cuda.is_available()


def _device_ms(rec):
    """GPU time of one fwd+bwd call: the sum of its kernels' device times (wkv6_bench --profile=1, Triton rows
    only; None without a profile). fwdbwd_ms minus this is time the GPU waited for the host to launch work."""
    ks = rec.get("kernels_fwdbwd")
    return sum(k["ms"] for k in ks) if ks else None   # each entry is already ms per call, all its launches


def run_kernel(opts, rest, argv):
    """The kernels issue owns the WKV-6 timer (wkv6_bench.bench: CUDA events, warm-up excluded, medians of
    per-repeat ms, a measured copy bandwidth for the I/O floor). It writes its own wkv6_bench.json; this converts
    that into a results file of the one format. `rest` (e.g. --deadline_s=120 --reps=20) goes to it unchanged.
    --from=PATH converts a wkv6_bench.json measured earlier (on a GPU box) instead of measuring: the device,
    versions and git sha are the measurement's (from its meta), the source command is kept in the notes."""
    source = next((a.split("=", 1)[1] for a in rest if a.startswith("--from=")), None)
    if source:
        try:
            with open(source) as f:
                doc = json.load(f)
        except (OSError, ValueError) as e:
            raise BenchError(f"--from={source}: cannot read a wkv6_bench.json there ({e})") from None
        if not {"meta", "results"} <= set(doc):
            raise BenchError(f"--from={source} is not wkv6_bench.bench output (no meta/results)")
    else:
        if not _cuda_ok():
            raise BenchError("--what=kernel times the CUDA/Triton WKV-6 kernels: run it on a CUDA machine (or convert "
                             "an earlier measurement with --from=path/to/wkv6_bench.json)")
        try:
            import wkv6_bench
        except Exception as e:  # ImportError, or triton failing to initialise
            raise BenchError(f"--what=kernel needs wkv6_bench.py and wkv6_triton.py (the kernels issue), which cannot "
                             f"be imported: {type(e).__name__}: {e}") from None
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            wkv6_bench.bench([a for a in rest if not a.startswith("--out=")] + [f"--out={tmp}"])
            with open(os.path.join(tmp, "wkv6_bench.json")) as f:
                doc = json.load(f)
    meta, results = doc["meta"], doc["results"]
    rows = [dict(shape="x".join(map(str, r["shape"])), impl=r["impl"], fwd_ms=r.get("fwd_median_ms"),
                 fwdbwd_ms=r.get("fwdbwd_median_ms"), floor_fwd_ms=r.get("io_floor_fwd_ms"),
                 floor_fwdbwd_ms=r.get("io_floor_fwdbwd_ms"), y_rel_vs_cuda=r.get("y_rel_vs_cuda"),
                 device_fwdbwd_ms=_device_ms(r), host_fwdbwd_ms=r.get("fwdbwd_host_median_ms"),
                 error=r.get("error", "")) for r in results]
    here = provenance("cpu")
    git = {"sha": meta.get("git_sha"), "dirty": meta.get("git_dirty"), "source_digest": meta.get("source_digest")} \
        if source else here["git"]
    prov = {**here, "git": git, "device": "cuda", "device_name": meta["device"], "driver": meta.get("driver"),
            "cuda": meta.get("cuda_runtime"), "versions": {**here["versions"], "torch": meta.get("torch"),
                                                         "triton": meta.get("triton"), "python": meta.get("python")}}
    summary = dict(rows=rows, device_name=meta["device"], copy_bandwidth_GBps=meta.get("copy_bandwidth_GBps"))
    config = {k: meta.get(k) for k in ("N", "dtype", "reps", "seed", "fla", "timing")}
    path = write_results(opts["out"], opts["name"] or "wkv6_kernel", "kernel", "cuda", [meta.get("seed")],
                         {"wkv6": config}, results, summary,
                         [meta.get("timing", "")] + ([f"converted from {source}, measured by: {meta.get('command')}"]
                                                     if source else []), prov=prov, argv=argv)
    print(f"[bench] wrote {path}")
    return path


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
