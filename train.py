"""Train any model family, on one CPU/GPU or with DDP under torchrun. One loop, top to bottom.

    python train.py config/quickstart.py
    python train.py config/gf_mh_8m.py --batch_size=32
    torchrun --standalone --nproc_per_node=4 train.py config/gpt2_124m.py

Batch semantics (differs from nanoGPT, on purpose): batch_size and gradient_accumulation_steps are PER RANK, so
one optimizer step sees batch_size * world_size * gradient_accumulation_steps windows (printed in tokens). The
training windows are a pure function of (seed, iter, micro_step): the global micro-batch of batch_size * world
windows is drawn from that key and rank r takes slice r. So the sampler's whole resume state is `iter`, and
N processes at batch B/N reproduce one process at batch B step for step.

Everything measured goes to out_dir/metrics.jsonl (see metrics.py); checkpoints follow checkpoint.py's schema.
"""
import gc
import math
import os
import signal
import sys
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils._pytree import tree_map

import prepare
from checkpoint import (CheckpointError, FORMAT_VERSION as _FORMAT_VERSION, clean_state_dict, load_checkpoint, rng_state,
                        save_checkpoint, set_rng_state)
from configurator import ConfigError, configure
from metrics import MetricsLog, loss_curve, peak_flops, provenance
from model import COMMON_CONFIG, all_family_configs, build_model, model_args_from

# -----------------------------------------------------------------------------
# model keys: shared ones and every family's own (so --fusion=GF is type-checked like any other key)
globals().update(COMMON_CONFIG)
globals().update(all_family_configs())
# I/O
out_dir = "out"
eval_interval = 250
log_interval = 10
eval_iters = 200          # the val protocol: eval_iters * batch_size windows, drawn once, reused every eval
eval_only = False
always_save_checkpoint = False
init_from = "scratch"     # scratch | resume (out_dir/ckpt.pt) | path/to/ckpt.pt (weights only, fresh optimizer)
seed = 1337
plot = True               # loss-curve PNG at the end when matplotlib is present
wandb_log = False
wandb_project = "lab"
wandb_run_name = "run"
tensorboard_log = False
# data
dataset = "stdlib_char"
data_dir = "data"
batch_size = 64           # per rank
block_size = 256
gradient_accumulation_steps = 1  # per rank
carry_state = False       # stateful families: truncated BPTT over fixed tracks (state carried across windows)
eval_carry_state = False
# optimizer and schedule
learning_rate = 1e-3
max_iters = 5000
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.99
grad_clip = 1.0           # 0 disables clipping (the norm is still logged)
lr_schedule = "cosine"    # cosine | constant | wsd (warmup-stable-decay)
warmup_iters = 100
lr_decay_iters = 5000
min_lr = 1e-4
wsd_decay_frac = 0.2      # wsd: the last fraction of max_iters decays linearly to min_lr
ema = 0.0                 # > 0: keep an EMA of the weights (e.g. 0.999), evaluated and saved with the checkpoint
early_stop_patience = 0   # stop after this many evals without a new best val loss; 0 = never
max_nonfinite = 10        # stop after this many non-finite steps in a row (each one is skipped)
# system
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else \
    ("float16" if torch.cuda.is_available() else "float32")
compile = torch.cuda.is_available()
compile_mode = "auto"     # auto: reduce-overhead (CUDA graphs) for one CUDA process, else default | any torch mode
backend = "auto"          # auto (nccl on cuda, gloo on cpu) | nccl | gloo
ddp_bucket_mb = 25.0      # DDP's gradient bucket (MiB, PyTorch's default): bigger = fewer all-reduces, less overlap
ddp_grad_dtype = "float32"  # float32 | bfloat16: all-reduce the gradients in bf16 (half the bytes), cast back
                          # before the optimizer (a comm hook below, as PyTorch's NCCL-only bf16_compress_hook)
ddp_bucket_view = False   # DDP gradient_as_bucket_view: grads live in the all-reduce buckets (one copy less)
# -----------------------------------------------------------------------------


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


try:
    config = configure(globals(), sys.argv[1:])
except ConfigError as e:
    fail(e)
if ddp_grad_dtype not in ("float32", "bfloat16"):
    fail(f"ddp_grad_dtype={ddp_grad_dtype!r}: use float32 or bfloat16")
config_set = globals()["_config_set"]

# DDP: RANK is set by torchrun
ddp = int(os.environ.get("RANK", -1)) != -1
if ddp:
    rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    dist.init_process_group(backend=("nccl" if device.startswith("cuda") else "gloo") if backend == "auto" else backend)
else:
    rank, local_rank, world = 0, 0, 1
master = rank == 0
device_type = "cuda" if device.startswith("cuda") else "cpu"
log = print if master else (lambda *a, **k: None)


def stop_all(msg, code):
    if master:
        print(msg, file=sys.stderr if code else sys.stdout)
    if ddp:
        # gloo aborted ~1 exit in 7 ("terminate called without an active exception") when one rank tore its group
        # down while the other was still writing its last records: wait for every rank, drop the DDP wrapper (its
        # reducer holds the group) and only then destroy the group, all before interpreter shutdown
        dist.barrier()
        globals().pop("model", None)
        gc.collect()
        dist.destroy_process_group()
        # ...and a rank still aborted that way under load (a CI run sharing its 2 cores with two other test suites:
        # rank 1 exit -6 after "done"), from C++ destructors at interpreter shutdown. So a DDP rank leaves without
        # them: everything it writes is closed by now (metrics log, plot) or here.
        if master and tensorboard_log:
            tb.close()
        if master and wandb_log:
            wandb.finish()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


torch.manual_seed(seed + rank)  # dropout and init; the data sampler has its own pure key (seed, iter, micro_step)
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
ctx = nullcontext() if ptdtype == torch.float32 else torch.autocast(device_type=device_type, dtype=ptdtype)

# ---- data -------------------------------------------------------------------------------------------------------
data_path = os.path.join(data_dir, dataset)
try:
    meta = prepare.load_meta(data_path)
    splits = {s: prepare.open_split(data_path, s, meta) for s in ("train", "val")}
    records = meta.get("records")
    labels = {s: prepare.open_labels(data_path, s, meta) for s in ("train", "val")} if records else {}
    if records and block_size != records["length"]:
        raise prepare.DataError(f"{dataset} holds fixed-length records of {records['length']} tokens but "
                                f"block_size={block_size}; pass --block_size={records['length']}")
    record_len = records["length"] if records else None
    n_eval = eval_iters * batch_size * world
    eval_windows = {s: prepare.eval_offsets(seed, n_eval, len(splits[s]), block_size, record_len) for s in ("train", "val")}
    if eval_carry_state:  # instead: batch_size * world contiguous tracks read window after window (step-major order)
        for s in eval_windows:
            n_rows = batch_size * world
            track_len = len(splits[s]) // n_rows
            steps = min(eval_iters, (track_len - 1) // block_size)
            if steps < 1:
                raise prepare.DataError(f"eval_carry_state: the {s} split is too short for {n_rows} tracks of "
                                        f"block_size={block_size}; lower batch_size or block_size")
            eval_windows[s] = (torch.arange(steps)[:, None] * block_size + torch.arange(n_rows)[None] * track_len).flatten()
except prepare.DataError as e:
    fail(e)


def to_device_tokens(arr):
    """Small splits live on the device as int32 (no per-step host copies); big ones stay memory-mapped."""
    if arr is None or arr.size * 4 > 1 << 30:
        return None
    return torch.from_numpy(arr.astype("int32")).to(device)


dev_tokens = {s: to_device_tokens(splits[s]) for s in splits}
dev_labels = {s: to_device_tokens(labels[s]) for s in labels}
window_arange = torch.arange(block_size, device=device)  # made once: windows() runs every micro-step


def windows(split, offsets):
    """(x, y) int64 on device for the windows starting at `offsets`: the same tokens either way."""
    if dev_tokens[split] is None:
        x, y = prepare.get_windows(splits[split], offsets, block_size, labels.get(split))
        if device_type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)
    idx = offsets.to(device, non_blocking=True)[:, None] + window_arange
    x = dev_tokens[split][idx].long()
    if records:
        y = dev_labels[split][idx].long()
        return x, torch.where(y == 65535, -1, y)
    return x, dev_tokens[split][idx + 1].long()


if carry_state:  # truncated BPTT: every (rank, micro_step, row) reads its own contiguous track of the train split
    n_tracks = batch_size * world * gradient_accumulation_steps
    track_len = len(splits["train"]) // n_tracks
    track_windows = (track_len - 1) // block_size  # consecutive windows per track; then every track restarts
    if track_windows < 1:
        fail(f"carry_state needs {n_tracks} tracks of more than block_size={block_size} tokens, but the train "
             f"split has {len(splits['train'])} tokens; lower batch_size/block_size or disable carry_state")


def get_batch(it, micro_step):
    if carry_state:
        rows = torch.arange(batch_size) + (micro_step * world + rank) * batch_size
        return windows("train", rows * track_len + (it % track_windows) * block_size)
    offs = prepare.window_offsets(seed, it, micro_step, batch_size * world, len(splits["train"]), block_size, record_len)
    return windows("train", offs[rank * batch_size:(rank + 1) * batch_size])


# ---- model ------------------------------------------------------------------------------------------------------
iter_num, tokens_seen, best_val_loss, best_iter, ckpt, train_time = 0, 0, float("inf"), -1, None, 0.0
ckpt_path = os.path.join(out_dir, "ckpt.pt")
try:
    if init_from == "scratch":
        model_args = model_args_from(globals(), meta["vocab_size"], block_size)
    else:
        path = ckpt_path if init_from == "resume" else init_from
        ckpt = load_checkpoint(path, expect_model_type=model_type if "model_type" in config_set else None)
        model_args = dict(ckpt["model_args"])
        if ckpt["data"]["meta_sha256"] != meta["meta_sha256"] and init_from == "resume":
            raise CheckpointError(f"{path} was trained on data with meta sha256 {ckpt['data']['meta_sha256'][:12]}… "
                                  f"but data/{dataset} now has {meta['meta_sha256'][:12]}…; re-run the same "
                                  f"prepare.py command, or start a new run with --init_from=scratch")
        if model_args["vocab_size"] != meta["vocab_size"]:
            raise CheckpointError(f"{path} has vocab_size {model_args['vocab_size']} but data/{dataset} has "
                                  f"{meta['vocab_size']}; use the dataset the checkpoint was trained on")
        if init_from == "resume":
            iter_num, tokens_seen, train_time = ckpt["iter_num"], ckpt["tokens_seen"], ckpt.get("train_time_s", 0.0)
            best_val_loss, best_iter = ckpt["best_val_loss"], ckpt["best_iter"]
        else:  # fine-tuning: keep the architecture, take this run's dropout
            model_args["dropout"] = dropout
        model_type = model_args["model_type"]
    raw_model = build_model(model_args)
    if ckpt is not None:
        raw_model.load_state_dict(clean_state_dict(ckpt["model"]))
except (CheckpointError, ValueError) as e:
    fail(e)
if block_size < model_args["block_size"]:
    raw_model.crop_block_size(block_size)
    model_args["block_size"] = block_size
raw_model.to(device)
optimizer = raw_model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
scaler = torch.amp.GradScaler(device_type, enabled=(dtype == "float16"))
ema_params = None
if ema > 0:
    ema_params = [p.detach().clone().float() for p in raw_model.parameters()]
if ckpt is not None and init_from == "resume":
    optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt["scaler"] is not None:
        scaler.load_state_dict(ckpt["scaler"])
    if ema_params is not None and ckpt["ema"] is not None:
        sd = clean_state_dict(ckpt["ema"])
        for (name, _), e in zip(raw_model.named_parameters(), ema_params):
            e.copy_(sd[name])
    if len(ckpt["rng"]) == world:
        set_rng_state(ckpt["rng"][rank])
    else:
        log(f"note: checkpoint has RNG states of {len(ckpt['rng'])} ranks, this run has {world}; dropout streams restart")
ckpt = None  # free memory
if (carry_state or eval_carry_state) and not hasattr(raw_model, "init_state"):
    fail(f"carry_state/eval_carry_state need a stateful family (with init_state); model_type={model_type!r} has none")
fused_skip = getattr(optimizer, "defaults", {}).get("fused", False) and not scaler.is_enabled()
if compile_mode == "auto":  # CUDA graphs remove the per-kernel launch cost that bounds small models (an exploratory
    # H100 run of shakespeare_char: 1.4-1.8M tok/s with mode=default, 2.5M with CUDA graphs; results/ has the latter)
    # they are not used with DDP, whose hooks run outside them
    compile_mode = "reduce-overhead" if device_type == "cuda" and not ddp else "default"
model = torch.compile(raw_model, mode=compile_mode) if compile else raw_model
if ddp:
    from torch.nn.parallel import DistributedDataParallel as DDP
    model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None, bucket_cap_mb=ddp_bucket_mb,
                gradient_as_bucket_view=ddp_bucket_view)
    if ddp_grad_dtype == "bfloat16":   # (PyTorch's own bf16_compress_hook refuses gloo; this one is backend-free)
        def bf16_allreduce(group, bucket):
            g = group if group is not None else dist.group.WORLD
            low = bucket.buffer().div(dist.get_world_size(g)).to(torch.bfloat16)
            return dist.all_reduce(low, group=g, async_op=True).get_future().then(
                lambda fut: bucket.buffer().copy_(fut.value()[0]))
        model.register_comm_hook(None, bf16_allreduce)

backends = {"device_type": device_type, "dtype": dtype, "compile": compile_mode if compile else False, "world_size": world}
if hasattr(raw_model, "backends"):
    backends.update(raw_model.backends(compiled=bool(compile)))
if hasattr(raw_model, "attention_path"):
    backends["attention"] = raw_model.attention_path(device_type, ptdtype)
tokens_per_iter = batch_size * world * gradient_accumulation_steps * block_size
log(f"model: {model_type}, {raw_model.num_params() / 1e6:.2f}M non-embedding parameters; backends: {backends}")
if hasattr(raw_model, "param_breakdown"):
    log(raw_model.param_breakdown())
log(f"global batch: {batch_size} x {world} ranks x {gradient_accumulation_steps} accum x {block_size} tokens "
    f"= {tokens_per_iter:,} tokens per step")
prov = provenance(device)
flops_per_token = raw_model.flops_per_token(block_size)
peak = peak_flops(prov["device_name"]) if device_type == "cuda" else None  # MFU is "n/a" without a known peak


def get_lr(it):
    if lr_schedule == "constant":
        return learning_rate * min(1.0, (it + 1) / (warmup_iters + 1))
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if lr_schedule == "wsd":
        decay_start = int(max_iters * (1 - wsd_decay_frac))
        if it < decay_start:
            return learning_rate
        return min_lr + (learning_rate - min_lr) * max(0.0, 1 - (it - decay_start) / max(1, max_iters - decay_start))
    if lr_schedule != "cosine":
        fail(f"lr_schedule={lr_schedule!r}: use cosine, constant or wsd")
    if it > lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / max(1, lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


@torch.no_grad()
def evaluate():
    """Mean cross-entropy over the run's fixed eval windows (split across ranks, summed exactly, all-reduced).
    With ema > 0 the EMA weights are evaluated: they are what the checkpoint's "ema" holds.
    Runs the plain module, not the compiled one: the number logged and saved as the checkpoint's val_loss is then
    what anyone gets from those weights (gates.py's Reeval, sample.py). On the H100 (2026-11-23) this eval, then
    run compiled (inductor + CUDA graphs, bf16), logged val losses 0.02-0.6% above gates.py's eager re-evaluation
    of the saved weights (results/2026-11-23_gates.json, Reeval FAIL in 3 of 6 runs); the cause is not isolated,
    and the compiled path was the one difference we could name. Eval is a few batches: eager costs little."""
    if ema_params is not None:
        live = [p.detach().clone() for p in raw_model.parameters()]
        for p, e in zip(raw_model.parameters(), ema_params):
            p.copy_(e)
    raw_model.eval()
    out = {}
    for split in ("train", "val"):
        mine = eval_windows[split][rank::world]
        total = torch.zeros(2, device=device, dtype=torch.float64)
        state = None
        for i in range(0, len(mine), batch_size):
            x, y = windows(split, mine[i:i + batch_size])
            with ctx:
                if eval_carry_state:  # rows are contiguous tracks: window i continues window i - 1's state
                    if state is None:
                        state = raw_model.init_state(len(x), device)
                    logits, _, state = raw_model(x, state=state, return_state=True)
                else:
                    logits, _ = raw_model(x)
            total[0] += F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1), ignore_index=-1,
                                        reduction="sum").double()
            total[1] += (y != -1).sum()
        if ddp:
            dist.all_reduce(total)
        out[split] = (total[0] / total[1]).item()
        out[split + "_tokens"] = int(total[1].item())
    raw_model.train()
    if ema_params is not None:
        for p, l in zip(raw_model.parameters(), live):
            p.copy_(l)
    return out


def make_checkpoint(val_loss):
    rngs = [rng_state()]
    if ddp:
        rngs = [None] * world
        dist.all_gather_object(rngs, rng_state())
    ema_sd = None
    if ema_params is not None:
        ema_sd = {name: e.to(p.dtype) for (name, p), e in zip(raw_model.named_parameters(), ema_params)}
    return dict(format_version=_FORMAT_VERSION, model_type=model_type, model_args=model_args,
                model=raw_model.state_dict(), ema=ema_sd, optimizer=optimizer.state_dict(),
                scaler=scaler.state_dict() if scaler.is_enabled() else None, iter_num=iter_num,
                tokens_seen=tokens_seen, best_val_loss=best_val_loss, best_iter=best_iter, config=config, rng=rngs,
                sampler={"iter": iter_num}, data={"dataset": dataset, "meta_sha256": meta["meta_sha256"]},
                provenance={**prov, "backends": backends}, val_loss=val_loss, train_time_s=train_time)


def save(val_loss):
    ck = make_checkpoint(val_loss)  # collective under DDP: every rank calls it
    if master:
        save_checkpoint(ckpt_path, ck)


stop_requested = False


def on_signal(signum, frame):
    global stop_requested
    stop_requested = True  # acted on at the next step boundary, after all ranks agree


signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)

# ---- metrics log ------------------------------------------------------------------------------------------------
resumed = init_from == "resume"
mlog = None
if master:
    mlog = MetricsLog(os.path.join(out_dir, "metrics.jsonl"), append=resumed, header=dict(
        config=config, seed=seed, init_from=init_from, start_iter=iter_num, model_args=model_args,
        num_params=raw_model.num_params(), git=prov["git"], device=prov["device"], device_name=prov["device_name"],
        driver=prov.get("driver"), versions=prov["versions"], command=prov["command"], backends=backends,
        data={"dataset": dataset, "meta_sha256": meta["meta_sha256"], "vocab_size": meta["vocab_size"],
              "train_tokens": len(splits["train"]), "val_tokens": len(splits["val"])},
        eval_protocol={"windows": len(eval_windows["val"]), "block_size": block_size, "seed": seed,
                       "note": ("contiguous tracks, state carried across windows" if eval_carry_state else
                                "fixed windows drawn once from the seed, reused every eval") +
                               "; loss = summed token cross-entropy / scored tokens", "carry_state": eval_carry_state, "weights": "ema" if ema_params is not None else "live"},
        tokens_per_iter=tokens_per_iter, world_size=world))
    if wandb_log:
        import wandb
        wandb.init(project=wandb_project, name=wandb_run_name, config=config)
    if tensorboard_log:
        from torch.utils.tensorboard import SummaryWriter
        tb = SummaryWriter(os.path.join(out_dir, "tb"))


def record(kind, **fields):
    if not master:
        return
    mlog.write(kind, **fields)
    scalars = {f"{kind}/{k}": v for k, v in fields.items() if isinstance(v, (int, float)) and k != "iter"}
    if wandb_log:
        wandb.log(scalars, step=fields.get("iter"))
    if tensorboard_log:
        for k, v in scalars.items():
            tb.add_scalar(k, v, fields.get("iter"))


# ---- the loop ---------------------------------------------------------------------------------------------------
params = [p for p in raw_model.parameters() if p.requires_grad]
states = [None] * gradient_accumulation_steps  # carry_state: per micro-step states (not checkpointed: a resume
# restarts them at zero, so resume is exact only at a track restart)
X, Y = get_batch(iter_num, 0)
start_iter, evals_since_best, nonfinite_run, n_skipped = iter_num, 0, 0, 0
pending, end_reason = None, None
stop_host = torch.zeros(1, pin_memory=device_type == "cuda")
log(f"training from iter {iter_num} to {max_iters} on {prov['device_name']}")


def account(p):
    """Host-side bookkeeping for a finished step, read one step late so the host never waits on the device."""
    global nonfinite_run, n_skipped, end_reason
    loss_mean, nonfinite, stops = p["flags"].tolist()
    if nonfinite > 0:
        nonfinite_run += 1
        n_skipped += 1
        log(f"iter {p['iter']}: non-finite loss or gradient, step skipped ({nonfinite_run} in a row)")
        if nonfinite_run >= max_nonfinite:
            end_reason = "nonfinite"
    else:
        nonfinite_run = 0
    if stops > 0 and end_reason is None:
        end_reason = "signal"
    if p["iter"] % log_interval == 0:
        tok_s = tokens_per_iter / p["dt"]
        mfu = flops_per_token * tok_s / peak if (flops_per_token and peak) else None
        mem = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device_type == "cuda" else None
        record("train", iter=p["iter"], tokens=p["tokens"], loss=loss_mean, lr=p["lr"], grad_norm=p["grad_norm"].item(),
               skipped=bool(nonfinite > 0), dt_ms=p["dt"] * 1000, tok_s=tok_s, mfu=mfu, mem_peak_mb=mem,
               train_time_s=p["train_time"])
        log(f"iter {p['iter']}: loss {loss_mean:.4f}, lr {p['lr']:.2e}, {p['dt'] * 1000:.1f} ms, {tok_s:,.0f} tok/s, "
            f"mfu {'n/a' if mfu is None else f'{mfu * 100:.1f}%'}")


t_last = time.time()
while True:
    if (iter_num % eval_interval == 0 or iter_num >= max_iters) and (iter_num != start_iter or not resumed or eval_only):
        if device_type == "cuda":
            torch.cuda.synchronize()
        train_time += time.time() - t_last  # the step still in flight belongs to training, not eval
        if pending is not None:
            account(pending)
            pending = None
        losses = evaluate()
        improved = losses["val"] < best_val_loss
        if improved:
            best_val_loss, best_iter, evals_since_best = losses["val"], iter_num, 0
        else:
            evals_since_best += 1
        record("eval", iter=iter_num, tokens=tokens_seen, train_time_s=train_time, val_loss=losses["val"],
               train_loss=losses["train"], val_tokens_scored=losses["val_tokens"])
        log(f"eval {iter_num}: train {losses['train']:.4f}, val {losses['val']:.4f} "
            f"({losses['val_tokens']:,} val tokens), best {best_val_loss:.4f} @ {best_iter}")
        if (improved or always_save_checkpoint) and iter_num > 0 and not eval_only:
            save(losses["val"])
        if early_stop_patience and evals_since_best >= early_stop_patience:
            end_reason = end_reason or "early_stop"
        t_last = time.time()
    if eval_only:
        end_reason = "eval_only"
    if iter_num >= max_iters:
        end_reason = end_reason or "max_iters"
    if end_reason:
        break

    lr = get_lr(iter_num)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
    loss_acc = torch.zeros((), device=device)
    for micro_step in range(gradient_accumulation_steps):
        if ddp:  # all-reduce gradients only on the last micro-step
            model.require_backward_grad_sync = micro_step == gradient_accumulation_steps - 1
        with ctx:
            if carry_state:  # the state enters detached: gradients stop at the window edge
                if iter_num % track_windows == 0 or states[micro_step] is None:
                    states[micro_step] = raw_model.init_state(batch_size, device)
                _, loss, st = model(X, Y, state=states[micro_step], return_state=True)
                states[micro_step] = tree_map(lambda t: t.detach() if torch.is_tensor(t) else t, st)
            else:
                _, loss = model(X, Y)
            loss = loss / gradient_accumulation_steps
        nxt = micro_step + 1  # prefetch the next batch while the device works on this one
        X, Y = get_batch(iter_num + nxt // gradient_accumulation_steps, nxt % gradient_accumulation_steps)
        scaler.scale(loss).backward()
        loss_acc += loss.detach().float()
    if scaler.is_enabled():
        scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    stop_host[0] = float(stop_requested)
    flags = torch.stack([loss_acc, (~(torch.isfinite(loss_acc) & torch.isfinite(grad_norm))).float(),
                         stop_host.to(device, non_blocking=True)[0]])
    if ddp:  # every rank sees the same flags: the mean loss, whether any rank went non-finite, any stop request
        dist.all_reduce(flags)
        flags[0] /= world
    if fused_skip:  # the fused AdamW kernel skips the update on device when found_inf is 1: no host sync
        optimizer.found_inf = (flags[1] > 0).float()
        optimizer.step()
    elif flags[1].item() == 0:
        scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if ema_params is not None:
        torch._foreach_lerp_(ema_params, [p.detach().float() for p in raw_model.parameters()], 1 - ema)
    now = time.time()
    dt, t_last = now - t_last, now
    train_time += dt
    tokens_seen += tokens_per_iter
    if pending is not None:
        account(pending)
    pending = dict(iter=iter_num, flags=flags, grad_norm=grad_norm, lr=lr, dt=dt, tokens=tokens_seen,
                   train_time=train_time)
    iter_num += 1
    if end_reason:  # a stop seen while accounting the previous step: this step is done, so stop after it
        break

if pending is not None:
    account(pending)
if end_reason == "signal":
    save(None)  # the latest weights, for --init_from=resume; val_loss None: they were not evaluated
    log(f"stopped by signal at iter {iter_num}; checkpoint saved to {ckpt_path}")
record("end", reason=end_reason, iter=iter_num, tokens=tokens_seen, train_time_s=train_time, skipped_steps=n_skipped,
       best={"val_loss": best_val_loss, "iter": best_iter})
if master:
    mlog.close()
    if plot and not eval_only:
        loss_curve(os.path.join(out_dir, "metrics.jsonl"), os.path.join(out_dir, "loss.png"))
if end_reason == "nonfinite":
    stop_all(f"error: {max_nonfinite} non-finite steps in a row at iter {iter_num}; the last good checkpoint is "
             f"{ckpt_path}. Lower --learning_rate, enable --grad_clip, or use --dtype=bfloat16/float32.", 1)
stop_all(f"done: {end_reason}; best val {best_val_loss:.4f} at iter {best_iter}", 0)
