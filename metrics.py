"""The metrics log (one JSONL file per run) and provenance: what every number is computed on.

A run's metrics.jsonl holds, one JSON object per line, each with a "kind":
  run    the header: config, seed, git, device, versions, backends, data identity, eval protocol
  train  iter, tokens, loss, lr, grad_norm, skipped, dt_ms, tok_s, mfu, mem_peak_mb, train_time_s
  eval   iter, tokens, train_time_s, val_loss, train_loss, val_tokens_scored
  end    reason, best (best val loss and the iter it was reached at)
train_time_s is cumulative training wall-clock, excluding eval and checkpointing. Gates and README tables read
only this file, so a number that is not in it does not exist.
"""
import fnmatch
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.abspath(__file__))

TRAIN_FIELDS = ("iter", "tokens", "loss", "lr", "grad_norm", "skipped", "dt_ms", "tok_s", "mfu", "mem_peak_mb",
                "train_time_s")
EVAL_FIELDS = ("iter", "tokens", "train_time_s", "val_loss", "train_loss", "val_tokens_scored")

# dense bf16/fp16 tensor-core peaks (datasheets) used for MFU; an unknown device gets MFU "n/a", not a guess
PEAK_FLOPS = {
    "H100 80GB HBM3": 989.4e12, "H100 SXM": 989.4e12, "H100 PCIe": 756e12, "H100 NVL": 835e12,
    "H200": 989.4e12, "A100": 312e12, "L4": 121e12, "A10G": 125e12, "RTX 4090": 165.2e12,
}


def peak_flops(device_name):
    for key, value in PEAK_FLOPS.items():
        if key in device_name:
            return value
    return None


# the code that runs (not tests, docs or results): what source_digest covers
SOURCE_PATTERNS = ("*.py", "*.cu", "config/*.py", "scripts/*.py", "scripts/*.sh")


def _is_source(rel):
    return any(os.path.dirname(rel) == os.path.dirname(p) and fnmatch.fnmatch(os.path.basename(rel),
                                                                              os.path.basename(p))
               for p in SOURCE_PATTERNS)


def _digest(entries):
    """entries: (path, git blob sha) pairs -> one sha1 over the sorted 'path blob' lines."""
    return hashlib.sha1("\n".join(sorted(f"{p} {b}" for p, b in entries)).encode()).hexdigest()


def source_digest(root=ROOT):
    """A digest of the code that runs, computed from the files themselves, not from .git: each SOURCE_PATTERNS file's
    git blob id (what `git hash-object` prints), path by path, hashed together. A copied tree whose .git lags
    behind its files (a GPU box's once read the session's first commit, "dirty") still says exactly which code ran:
    `python metrics.py --find-commit DIGEST` names the commit whose files give the same digest."""
    entries = []
    for d in sorted({os.path.dirname(p) for p in SOURCE_PATTERNS}):
        folder = os.path.join(root, d)
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            rel = f"{d}/{name}" if d else name
            if _is_source(rel) and os.path.isfile(os.path.join(root, rel)):
                with open(os.path.join(root, rel), "rb") as f:
                    data = f.read()
                entries.append((rel, hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()))
    return _digest(entries)


def commit_digest(commit, root=ROOT):
    """source_digest of a commit's files, from git's own blob ids (`git ls-tree -r`)."""
    out = subprocess.run(["git", "ls-tree", "-r", commit], cwd=root, capture_output=True, text=True, check=True).stdout
    rows = (line.split("\t", 1) for line in out.splitlines())
    return _digest((path, meta.split()[2]) for meta, path in rows if meta.split()[1] == "blob" and _is_source(path))


def find_commit(digest, root=ROOT, limit=500):
    """The commits (newest first, among the last `limit` of every branch) whose source_digest is `digest`."""
    revs = subprocess.run(["git", "rev-list", "--all", "-n", str(limit)], cwd=root, capture_output=True, text=True,
                          check=True).stdout.split()
    return [c for c in revs if commit_digest(c, root) == digest]


def git_info():
    def run(*cmd):
        try:
            return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    sha = run("git", "rev-parse", "HEAD")
    launcher = os.environ.get("LAB_GIT_SHA")
    digest = source_digest()
    if len(sha) == 40 and all(c in "0123456789abcdef" for c in sha):
        info = {"sha": sha, "dirty": bool(run("git", "status", "--porcelain", "--untracked-files=no")),
                "source_digest": digest}
        # a copied tree may carry a stale .git (the GPU box's copy once had the session's first commit while the
        # files were a later one, so it read "dirty"): keep what the launcher says beside what git says
        if launcher and not sha.startswith(launcher):
            info["launcher_sha"] = launcher
        return info
    # no repository here (a GPU box gets a copy of the tree without .git): the launcher states the commit
    sha = launcher
    return {"sha": sha, "dirty": os.environ.get("LAB_GIT_DIRTY") == "1" if sha else None, "source_digest": digest,
            "source": "LAB_GIT_SHA (set by the launcher; no .git on this machine)" if sha else "unknown: no .git"}


def device_info(device):
    device = str(device)
    info = {"device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        idx = torch.device(device).index or 0
        info["device_name"] = torch.cuda.get_device_name(idx)
        info["cuda"] = torch.version.cuda
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10).stdout.split("\n")[0].strip()
            info["driver"] = out or None
        except (OSError, subprocess.TimeoutExpired):
            info["driver"] = None
    else:
        info["device_name"] = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, " \
                              f"{torch.get_num_threads()} threads)"
    return info


# optional packages are looked up by their installed distribution, never imported here: `import mamba_ssm` without
# its Mamba-1 extension fails half way, and which optional code a model loads (and when: never first inside a
# torch.compile trace) is the model's business, not the log header's
DISTRIBUTIONS = {"numpy": ("numpy",), "triton": ("triton",), "tiktoken": ("tiktoken",), "mamba_ssm": ("mamba_ssm", "mamba-ssm"),
                 "causal_conv1d": ("causal_conv1d", "causal-conv1d"), "fla": ("fla-core", "flash-linear-attention")}


def _installed(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions():
    v = {"python": platform.python_version(), "torch": str(torch.__version__)}
    for name, dists in DISTRIBUTIONS.items():
        v[name] = next(filter(None, map(_installed, dists)), None)
        if v[name] is None and name in sys.modules:  # imported from a path that has no metadata
            v[name] = str(getattr(sys.modules[name], "__version__", "unknown"))
    return v


def provenance(device):
    """git sha (and whether the tree was dirty), device name and driver, library versions, command line."""
    return {"git": git_info(), **device_info(device), "versions": versions(),
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}


class MetricsLog:
    """Append-only JSONL writer; each line is flushed so a crash or SIGKILL keeps everything logged so far."""

    def __init__(self, path, header, append=False):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self.f = open(path, "a" if append else "w")
        self.write("run", **header)

    def write(self, kind, **fields):
        self.f.write(json.dumps({"kind": kind, **fields}, default=_jsonable) + "\n")
        self.f.flush()

    def close(self):
        self.f.close()


def _jsonable(x):
    if isinstance(x, torch.Tensor):
        return x.item() if x.numel() == 1 else x.tolist()
    if hasattr(x, "item"):
        return x.item()
    return str(x)


def read_metrics(path):
    """All records of a metrics log, in order. A resumed run appends a new `run` header to the same file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def evals(records):
    return [r for r in records if r["kind"] == "eval"]


def loss_curve(metrics_path, png_path):
    """Train and val loss against tokens, from the metrics log alone. Returns False when matplotlib is absent."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    recs = read_metrics(metrics_path)
    train = [r for r in recs if r["kind"] == "train"]
    ev = evals(recs)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["tokens"] for r in train], [r["loss"] for r in train], lw=0.8, label="train (logged steps)")
    ax.plot([r["tokens"] for r in ev], [r["val_loss"] for r in ev], "o-", ms=3, label="val (fixed windows)")
    ax.set_xlabel("tokens")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return True


if __name__ == "__main__":
    # python metrics.py --digest              the working tree's source_digest
    # python metrics.py --find-commit DIGEST  which commit a results file's git.source_digest belongs to
    if sys.argv[1:2] == ["--digest"]:
        print(source_digest())
    elif sys.argv[1:2] == ["--find-commit"] and len(sys.argv) == 3:
        hits = find_commit(sys.argv[2])
        print("\n".join(hits) if hits else f"no commit has source digest {sys.argv[2]}: the files that ran were "
                                              f"never committed as they were (or are older than 500 commits)")
        sys.exit(0 if hits else 1)
    else:
        print("usage: python metrics.py --digest | --find-commit DIGEST", file=sys.stderr)
        sys.exit(2)
