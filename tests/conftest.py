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
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
