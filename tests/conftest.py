"""Test setup shared by every test file.

TRITON_INTERPRET must be set before any @triton.jit decorator runs (triton reads it at decoration time),
so it is set here, before the project modules are imported by the tests. On a CUDA machine the GPU tests run
with real kernels: set WKV_TEST_GPU=1 there and the interpreter stays off.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
if os.environ.get("WKV_TEST_GPU") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402
import torch  # noqa: E402

try:  # multi-config autotune needs a GPU benchmarker; under the interpreter keep the first config only
    import triton.runtime.autotuner as _at
    if os.environ.get("TRITON_INTERPRET") == "1":
        _orig_run = _at.Autotuner.run

        def _run_first_config(self, *a, **k):
            if len(self.configs) > 1:
                self.configs = self.configs[:1]
            return _orig_run(self, *a, **k)
        _at.Autotuner.run = _run_first_config
except ImportError:  # triton is a Linux-only requirement; CI installs it, so tests that need it fail loudly
    pass


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped on CPU machines)")
    config.addinivalue_line("markers", "slow: end-to-end training runs")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        return
    # On a CUDA machine without WKV_TEST_GPU=1 the Triton interpreter is on (for the CPU tests), and a GPU test's
    # kernels would fail inside it with interpreter errors that look like real failures: skip them, naming the fix
    skip = pytest.mark.skip(reason="needs a CUDA device" if not torch.cuda.is_available() else
                            "the Triton interpreter is on (CPU tests): run GPU tests with WKV_TEST_GPU=1")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


PY = sys.executable


def run_py(args, cwd=ROOT, env=None, timeout=600, check=True):
    """Run `python args...` in a subprocess with a fixed thread count; returns CompletedProcess."""
    import subprocess
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    e.update(env or {})
    p = subprocess.run([PY] + list(args), cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"python {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A small real dataset (stdlib sources, char level, ~300 KB) prepared once per test session.
    Returns the data_dir; the dataset name is 'stdlib_char'."""
    d = tmp_path_factory.mktemp("data")
    run_py(["prepare.py", "--max_bytes=300000", f"--data_dir={d}"])
    return str(d)


# a tiny GPT that trains in seconds on CPU; tests add their own overrides after these
TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4", "--dropout=0.0",
        "--device=cpu", "--compile=False", "--dtype=float32", "--eval_iters=2", "--log_interval=1", "--plot=False"]
