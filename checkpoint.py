"""Checkpoints: one schema, written atomically, loadable with torch.load(weights_only=True).

Schema (FORMAT_VERSION 1), every key always present:
  format_version, model_type, model_args (JSON-able), model (state_dict without _orig_mod./module. prefixes),
  ema (state_dict or None), optimizer, scaler (or None), iter_num, tokens_seen, best_val_loss, best_iter,
  config (every train.py key), rng (a list: one dict per rank), sampler ({"iter": n}: the sampler is a pure
  function of (seed, iter, micro_step), so that is its whole state), data ({dataset, meta_sha256}),
  provenance (git, device, versions, backends).
The file is written to a temp file in the same directory, fsync'd, then os.replace'd, so a crash mid-write
leaves the previous checkpoint intact and never a half-written one under the real name.
"""
import json
import os
import random

import numpy as np
import torch

FORMAT_VERSION = 1
KEYS = ("format_version", "model_type", "model_args", "model", "ema", "optimizer", "scaler", "iter_num",
        "tokens_seen", "best_val_loss", "best_iter", "config", "rng", "sampler", "data", "provenance")


class CheckpointError(Exception):
    """An unusable checkpoint; the message names the problem and the fix."""


def clean_state_dict(sd):
    """Strip the prefixes torch.compile (_orig_mod.) and DDP (module.) add, so any wrapper loads any checkpoint."""
    out = {}
    for k, v in sd.items():
        for prefix in ("_orig_mod.", "module."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def rng_state():
    """This process's RNG states, as tensors / ints / lists (numpy arrays would break weights_only loading)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"] if isinstance(state["python"], tuple) else
                    (state["python"][0], tuple(state["python"][1]), state["python"][2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))


def save_checkpoint(path, ckpt):
    missing = [k for k in KEYS if k not in ckpt]
    assert not missing, f"checkpoint is missing {missing}"
    # the descriptive fields go through JSON so only plain types reach the file (weights_only loading)
    plain = {k: json.loads(json.dumps(ckpt[k])) for k in ("model_args", "config", "data", "provenance", "sampler")}
    ckpt = dict(ckpt, **plain, model=clean_state_dict(ckpt["model"]),
                ema=clean_state_dict(ckpt["ema"]) if ckpt["ema"] is not None else None)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    try:  # make the rename itself durable
        fd = os.open(directory, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:
        pass


def load_checkpoint(path, map_location="cpu", expect_model_type=None):
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}; train one first (python train.py ...) or pass "
                              f"--init_from=PATH / --out_dir=DIR pointing at an existing ckpt.pt")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for a truncated zip; all mean the same to the user
        if "Weights only load failed" in str(e):
            raise CheckpointError(f"checkpoint {path} holds objects that weights_only loading refuses; it was not "
                                  f"written by this train.py (retrain, or re-save it with plain types)") from None
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]}); use an earlier checkpoint or retrain") from None
    if not isinstance(ckpt, dict) or ckpt.get("format_version") != FORMAT_VERSION:
        version = ckpt.get("format_version") if isinstance(ckpt, dict) else None
        raise CheckpointError(f"checkpoint {path} has format_version {version!r}, this code reads "
                              f"{FORMAT_VERSION}; it was not written by this train.py")
    missing = [k for k in KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}; it is incomplete, retrain")
    if expect_model_type is not None and ckpt["model_type"] != expect_model_type:
        raise CheckpointError(f"checkpoint {path} holds a '{ckpt['model_type']}' model but the config asks for "
                              f"model_type='{expect_model_type}'; drop the config file / --model_type override, or "
                              f"point --out_dir at a '{expect_model_type}' run")
    return ckpt


def model_from_checkpoint(ckpt, device="cpu", use_ema=False):
    """Rebuild the model from model_args and load its weights (the EMA weights when asked and present)."""
    from model import build_model
    model = build_model(ckpt["model_args"])
    model.load_state_dict(clean_state_dict(ckpt["model"]))
    if use_ema and ckpt["ema"] is not None:
        # the EMA holds parameters only (no buffers), one entry per parameter name: copy each into its parameter,
        # so a tied weight (wte = lm_head) gets its EMA value once, and buffers keep the live values
        ema = clean_state_dict(ckpt["ema"])
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(ema[name])
    return model.to(device)
