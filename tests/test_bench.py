"""bench.py's measurement protocol on CPU: warm-up and eval excluded from the timed numbers, identical inputs for
configs timed together, complete provenance in results files, runs-mode statistics, the one-command device script."""
import glob
import hashlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time

import pytest

import bench
import model as M
from conftest import PY, ROOT, TINY, run_py

CPU = ["--device=cpu", "--compile=False", "--dtype=float32"]
SMALL = CPU + ["--n_layer=1", "--n_head=2", "--n_embd=32", "--dropout=0.0"]
H100 = "NVIDIA H100 80GB HBM3"


def test_train_defaults_match_train_py():
    """bench.py reads train.py's defaults from its source; they must be exactly what train.py --help lists."""
    p = run_py(["train.py", "--help"])
    listed = {}
    for line in p.stdout.splitlines():
        if line.strip().startswith("--"):
            key, val = line.strip()[2:].split("=", 1)
            listed[key.strip()] = val.strip()
    # train.py imports FORMAT_VERSION (an int) from checkpoint.py, so configure() lists it as a key: not a config key
    listed.pop("FORMAT_VERSION", None)
    ours = {**M.COMMON_CONFIG, **M.all_family_configs(), **bench.train_defaults()}
    assert set(ours) == set(listed), (set(ours) ^ set(listed))
    assert {k: repr(v) for k, v in ours.items()} == listed


def _hash_windows(monkeypatch):
    """Record a sha256 of every (x, y) batch each measure_train call draws."""
    seen = []
    orig_windows, orig_measure = bench.Data.windows, bench.measure_train

    def windows(self, offs, T):
        x, y = orig_windows(self, offs, T)
        seen[-1][1].append(hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest())
        return x, y

    def measure(cfg, data, T, batch, accum, steps, warmup, seed):
        seen.append(((cfg["pos_emb"], T, seed), []))
        return orig_measure(cfg, data, T, batch, accum, steps, warmup, seed)
    monkeypatch.setattr(bench.Data, "windows", windows)
    monkeypatch.setattr(bench, "measure_train", measure)
    return seen


def test_two_configs_same_inputs_and_provenance(tiny_data, tmp_path, monkeypatch):
    seen = _hash_windows(monkeypatch)
    path = bench.main(["config/quickstart.py", "config/gpt_8m.py", *SMALL, f"--data_dir={tiny_data}",
                       "--dataset=stdlib_char", "--T=16,32", "--tokens_per_step=64", "--steps=2", "--warmup=1",
                       "--seeds=0", f"--out={tmp_path}", "--name=pair"])
    assert os.path.basename(path).endswith("_pair.json")
    # the two configs really differ (learned vs rope positions) but drew the same batches, call by call
    by_key = {}
    for (pos, T, seed), hashes in seen:
        by_key.setdefault((T, seed), {})[pos] = hashes
    assert len(by_key) == 2
    for key, d in by_key.items():
        assert set(d) == {"learned", "rope"} and d["learned"] == d["rope"] and len(d["rope"]) == 1 + 1 + 2, key
    assert by_key[(16, 0)]["rope"] != by_key[(32, 0)]["rope"]  # the check can fail: other T, other windows
    doc = json.load(open(path))
    for k in ("command", "git", "device", "device_name", "driver", "cuda", "versions", "seeds", "configs", "raw",
              "summary", "schema", "what", "created_utc"):
        assert k in doc, k
    assert doc["command"].split()[1:3] == ["bench.py", "config/quickstart.py"] and "--seeds=0 " in doc["command"]
    assert set(doc["git"]) == {"sha", "dirty", "source_digest"} and doc["git"]["sha"] and len(doc["git"]["source_digest"]) == 40
    assert {"python", "torch", "triton"} <= set(doc["versions"]) and doc["seeds"] == [0]
    assert doc["summary"]["device_name"] == doc["device_name"] and doc["device_name"].startswith("cpu")
    assert set(doc["configs"]) == {"quickstart", "gpt_8m"} and doc["configs"]["gpt_8m"]["pos_emb"] == "rope"
    rows = doc["summary"]["rows"]
    assert [(r["config"], r["T"], r["batch_size"]) for r in rows] == [
        ("quickstart", 16, 4), ("quickstart", 32, 2), ("gpt_8m", 16, 4), ("gpt_8m", 32, 2)]
    for r in rows:
        raws = [x for x in doc["raw"][r["config"]] if x["T"] == r["T"]]
        steps = [t for x in raws for t in x["tok_s"]]
        assert len(steps) == r["timed_steps"] == 2
        assert r["tok_s_median"] == pytest.approx(statistics.median(steps))
        assert r["tok_s_min"] <= r["tok_s_median"] <= r["tok_s_max"] and r["all_losses_finite"]
        assert r["backends"]["attention"] == "sdpa (cpu)"
    sha = {(r["config"], r["T"]): r["inputs_sha256"] for r in rows}
    assert sha[("quickstart", 16)] == sha[("gpt_8m", 16)] != sha[("gpt_8m", 32)]


def _clock_jumps(monkeypatch, jump_calls):
    """bench.time.perf_counter jumps 1000 s inside each forward call numbered in jump_calls (1-based): a stand-in
    for a slow step on the clock bench.py reads. Returns (calls, skew) to inspect."""
    calls, skew, clock = [], [0.0], time.perf_counter
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock() + skew[0])

    def slow_build(args):
        m = M.build_model(args)
        fwd = m.forward

        def forward(*a, **k):
            calls.append(1)
            if len(calls) in jump_calls:
                skew[0] += 1000.0
            return fwd(*a, **k)
        m.forward = forward
        return m
    monkeypatch.setattr(bench, "build_model", slow_build)
    return calls, skew


def test_a_slow_timed_step_is_named(tiny_data, monkeypatch):
    """A timed step far above the median (the H200's 1.5 s first timed step) is listed in slow_steps, with its index,
    and stays in the window rate; the fast steps are not listed. The clock jumps 1000 s inside timed step 1."""
    _clock_jumps(monkeypatch, {4})   # warm-up 2 + timed step 1
    cfg = bench.load_config(["config/quickstart.py", *SMALL, f"--data_dir={tiny_data}"])
    data = bench.Data(tiny_data, "stdlib_char", "cpu")
    r = bench.measure_train(cfg, data, T=16, batch=2, accum=1, steps=5, warmup=2, seed=0)
    assert [i for i, _ in r["slow_steps"]] == [1] and r["slow_steps"][0][1] > 1000, r["slow_steps"]
    assert r["window_wall_s"] > 1000   # the window rate keeps it


def test_configs_with_different_inputs_are_refused(tiny_data):
    with pytest.raises(bench.BenchError, match="different inputs"):
        bench.main(["config/quickstart.py", "config/hybrid_tiny.py", *SMALL, f"--data_dir={tiny_data}",
                    "--steps=1", "--warmup=0"])
    with pytest.raises(bench.BenchError, match="unknown config key 'n_embed'"):
        bench.main(["config/quickstart.py", "--n_embed=3"])


def test_warmup_excluded_from_timed_window(tiny_data, monkeypatch):
    """Each of the first `warmup` steps costs an extra 1000 s (a stand-in for compilation) on the clock bench.py
    reads; none of it reaches the timed steps. (A jump of a patched clock, not a real sleep: on a loaded 2-core
    machine a real tiny step has been seen near 1 s, so any real sleep short enough for CI would be ambiguous.)"""
    calls, skew = _clock_jumps(monkeypatch, {1, 2})
    cfg = bench.load_config(["config/quickstart.py", *SMALL, f"--data_dir={tiny_data}"])
    data = bench.Data(tiny_data, "stdlib_char", "cpu")
    r = bench.measure_train(cfg, data, T=16, batch=2, accum=1, steps=4, warmup=2, seed=0)
    assert len(calls) == 6 and len(r["step_s"]) == 4 and skew[0] == 2000.0
    assert max(r["step_s"]) < 1000 and r["window_wall_s"] < 1000, r["step_s"]
    assert r["tok_s"] == [32 / d for d in r["step_s"]]
    assert r["window_wall_s"] == pytest.approx(sum(r["step_s"]), rel=0.05, abs=0.05)


def test_eval_excluded_from_logged_tok_s(tiny_data, tmp_path):
    """Every eval batch of a real train.py run (F.cross_entropy with reduction='sum' is the eval's loss) moves
    the process's clocks (time.time / perf_counter / monotonic) forward by 1000 s: neither the train lines' dt/tok_s nor train_time_s see it, so
    --what=runs is eval-free too."""
    code = ("import atexit, runpy, sys, time\n"
            "import torch.nn.functional as F\n"
            "ce, n = F.cross_entropy, [0]\n"
            "for _f in ('time', 'perf_counter', 'monotonic'):  # whichever clock train.py times steps with\n"
            "    setattr(time, _f, (lambda c: lambda: c() + 1000.0 * n[0])(getattr(time, _f)))\n"
            "def slow(*a, **k):\n"
            "    if k.get('reduction') == 'sum':\n"
            "        n[0] += 1\n"
            "    return ce(*a, **k)\n"
            "F.cross_entropy = slow\n"
            "atexit.register(lambda: print('EVAL_JUMPS', n[0]))\n"
            "sys.argv = ['train.py'] + sys.argv[1:]\n"
            "runpy.run_path('train.py', run_name='__main__')\n")
    out = tmp_path / "run"
    p = run_py(["-c", code, *TINY, f"--data_dir={tiny_data}", f"--out_dir={out}", "--max_iters=6",
                "--eval_interval=3", "--eval_iters=1"])
    jumps = int(p.stdout.split("EVAL_JUMPS")[1].split()[0])
    assert jumps >= 6, "the injected eval cost never ran: train.py's eval no longer uses reduction='sum'"
    recs = [json.loads(line) for line in open(out / "metrics.jsonl")]
    trains = [r for r in recs if r["kind"] == "train"]
    assert len(trains) == 6 and max(r["dt_ms"] for r in trains) < 1000 * 1000
    assert recs[-1]["kind"] == "end" and recs[-1]["train_time_s"] < 1000
    path = bench.main(["--what=runs", f"--metrics={out / 'metrics.jsonl'}", "--tok_window=0,5", "--target=9",
                       f"--out={tmp_path}", "--name=evalfree"])
    s = json.load(open(path))["summary"]
    assert s["tok_s"]["mean"] == pytest.approx(statistics.median(r["tok_s"] for r in trains))
    assert s["tok_s"]["mean"] > 4 * 32 / 1000  # a step that contained an eval's 1000 s could not reach this
    assert s["wall_to_target_s"]["max"] < 1000


def _synthetic_run(path, seed, device, evals, trains, log_interval=10):
    lines = [dict(kind="run", seed=seed, device="cuda", device_name=device, driver="550.1", git={"sha": "abc", "dirty": False},
                  versions={"torch": "2.x"}, config={"seed": seed, "out_dir": f"o{seed}", "log_interval": log_interval,
                                                     "max_iters": 500}, backends={}, tokens_per_iter=16384)]
    lines += [dict(kind="train", iter=i, tok_s=t, dt_ms=1.0, loss=2.0) for i, t in trains]
    lines += [dict(kind="eval", iter=i, val_loss=v, train_time_s=w) for i, v, w in evals]
    best = min(evals, key=lambda e: e[1])
    lines.append(dict(kind="end", reason="max_iters", iter=500, train_time_s=evals[-1][2] + 1,
                      best={"val_loss": best[1], "iter": best[0]}))
    with open(path, "w") as f:
        f.write("\n".join(json.dumps(x) for x in lines) + "\n")
    return str(path)


def test_runs_summary_matches_hand_computed(tmp_path):
    runs = [
        # seed, evals (iter, val, train_time_s), train lines (iter, tok_s)
        (0, [(0, 4.2, 0.0), (250, 1.60, 30.0), (500, 1.46, 60.0)], [(90, 1.0e6), (100, 1.2e6), (200, 1.4e6), (250, 1.45e6), (300, 1.5e6), (310, 9e9)]),
        (1, [(0, 4.2, 0.0), (250, 1.47, 31.0), (500, 1.44, 62.0)], [(100, 1.3e6), (200, 1.3e6), (300, 1.1e6), (400, 1.0)]),
        (2, [(0, 4.2, 0.0), (250, 1.55, 29.0), (500, 1.49, 58.0)], [(100, 1.6e6), (300, 1.2e6)]),
    ]
    paths = [_synthetic_run(tmp_path / f"m{s}.jsonl", s, H100, e, t) for s, e, t in runs]
    path = bench.main(["--what=runs", "--metrics=" + ",".join(paths), "--target=1.47", "--tok_window=100,300",
                       "--gate=best_val<=1.5,tok_s>=1.3e6", f"--gate_device={H100}", f"--out={tmp_path}", "--name=syn"])
    doc = json.load(open(path))
    s, raw = doc["summary"], doc["raw"]
    assert doc["device_name"] == s["device_name"] == H100 and doc["driver"] == "550.1" and s["seeds"] == [0, 1, 2]
    assert [(r["best_val"], r["best_iter"]) for r in raw] == [(1.46, 500), (1.44, 500), (1.49, 500)]
    assert [r["wall_to_target_s"] for r in raw] == [60.0, 31.0, None]  # seed 1 hits 1.47 exactly at iter 250
    assert [r["target_iter"] for r in raw] == [500, 250, None] and s["reached_target"] == 2
    assert [r["tok_s_median"] for r in raw] == [1.425e6, 1.3e6, 1.4e6]  # window 100..300 inclusive
    assert s["best_val"]["mean"] == pytest.approx((1.46 + 1.44 + 1.49) / 3)
    assert s["best_val"]["std"] == pytest.approx(statistics.stdev([1.46, 1.44, 1.49]))
    assert (s["best_val"]["min"], s["best_val"]["max"]) == (1.44, 1.49)
    assert s["wall_to_target_s"]["mean"] == pytest.approx(45.5) and s["wall_to_target_s"]["n"] == 2
    assert s["tok_s"]["mean"] == pytest.approx(1.375e6) and s["tok_s"]["std"] == pytest.approx(66143.78, rel=1e-6)
    g = s["gate"]
    assert g["checked"] and g["passed"] is True and [c["passed"] for c in g["clauses"]] == [True, True]
    assert any("log_interval" in n for n in doc["notes"])

    # the same numbers measured on another device are not checked against an H100 gate
    other = [_synthetic_run(tmp_path / f"h{s}.jsonl", s, "NVIDIA H200", e, t) for s, e, t in runs]
    s2 = json.load(open(bench.main(["--what=runs", "--metrics=" + ",".join(other), "--gate=best_val<=1.5",
                                    f"--gate_device={H100}", f"--out={tmp_path}", "--name=h200"])))["summary"]
    assert s2["gate"]["checked"] is False and s2["gate"]["passed"] is None and s2["device_name"] == "NVIDIA H200"
    s3 = json.load(open(bench.main(["--what=runs", "--metrics=" + ",".join(paths), "--gate=best_val<=1.47",
                                    f"--gate_device={H100}", f"--out={tmp_path}", "--name=fail"])))["summary"]
    assert s3["gate"]["passed"] is False
    with pytest.raises(bench.BenchError, match="different devices"):
        bench.main(["--what=runs", f"--metrics={paths[0]},{other[0]}", f"--out={tmp_path}"])
    with pytest.raises(bench.BenchError, match="gate_device"):
        bench.main(["--what=runs", f"--metrics={paths[0]}", "--gate=best_val<=1.5", f"--out={tmp_path}"])


def test_generate_mode(tiny_data, tmp_path):
    path = bench.main(["config/quickstart.py", *SMALL, f"--data_dir={tiny_data}", "--what=generate", "--ctx=8",
                       "--gen_tokens=4", "--gen_batch=1,2", "--gen_repeats=2", f"--out={tmp_path}", "--name=gen"])
    doc = json.load(open(path))
    rows = doc["summary"]["rows"]
    assert [(r["ctx"], r["batch"], r["path"]) for r in rows] == [(8, 1, "kv_cache"), (8, 2, "kv_cache")]
    for r, raw in zip(rows, doc["raw"]["quickstart"]):
        assert len(raw["repeats"]) == 2
        assert r["decode_s_median"] == pytest.approx(statistics.median(x["decode_s"] for x in raw["repeats"]))
        assert r["decode_tok_s"] == pytest.approx(r["batch"] * 4 / r["decode_s_median"])
        assert r["prefill_tok_s"] == pytest.approx(r["batch"] * 8 / r["prefill_s_median"])
    assert any("fresh" in n for n in doc["notes"])
    with pytest.raises(bench.BenchError, match="exceeds block_size"):
        bench.main(["config/quickstart.py", *SMALL, f"--data_dir={tiny_data}", "--what=generate", "--ctx=60",
                    "--gen_tokens=8", f"--out={tmp_path}"])
    for graph, msg in (("2", "use 0, 1 or 0,1"), ("0,1", "needs --device=cuda")):  # CUDA-graph decode: CUDA only
        with pytest.raises(bench.BenchError, match=msg):
            bench.main(["config/quickstart.py", *SMALL, f"--data_dir={tiny_data}", "--what=generate", "--ctx=8",
                        f"--gen_graph={graph}", f"--out={tmp_path}"])


def test_generate_sigterm_writes_the_finished_measurements(tiny_data, tmp_path, monkeypatch):
    """A device script's time limit (SIGTERM) during the 2nd of 4 measurements: the 1st is written, the one in
    flight is dropped, summary["stopped"] says so, and the previous SIGTERM handler is back afterwards."""
    import os
    import signal
    real, calls = bench.measure_generate, []

    def measure(*a, **k):
        calls.append(a[2:4])
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler raises at the next bytecode, inside this call
        return real(*a, **k)
    monkeypatch.setattr(bench, "measure_generate", measure)
    before = signal.getsignal(signal.SIGTERM)
    path = bench.main(["config/quickstart.py", *SMALL, f"--data_dir={tiny_data}", "--what=generate", "--ctx=8,16",
                       "--gen_tokens=4", "--gen_batch=1,2", "--gen_repeats=1", f"--out={tmp_path}", "--name=gen"])
    doc = json.load(open(path))
    assert [(r["ctx"], r["batch"]) for r in doc["summary"]["rows"]] == [(8, 1)]
    assert doc["summary"]["stopped"] == "SIGTERM after 1 of 4 measurements" and len(calls) == 2
    assert signal.getsignal(signal.SIGTERM) is before


def test_kernel_mode_converts_the_kernel_timer_output(tmp_path, monkeypatch):
    """--what=kernel runs wkv6_bench.bench (GPU only) and rewrites its wkv6_bench.json in the results format.
    A stand-in timer writes that file here; without CUDA the mode is a clear error."""
    import types
    with pytest.raises(bench.BenchError, match="CUDA machine"):
        bench.main(["--what=kernel"])
    seen = {}

    def fake_bench(argv):
        seen["argv"] = argv
        out = [a for a in argv if a.startswith("--out=")][0][6:]
        meta = dict(device=H100, driver="550.54", torch="2.5.1", triton="3.1.0", python="3.12.1", cuda_runtime="12.4",
                    seed=1234, reps=20, N=64, dtype="bf16", timing="CUDA events", copy_bandwidth_GBps=3000.5, fla="n/a")
        res = [dict(shape=[8, 4096, 32, 64], impl="triton[64,64]", fwd_ms=[1.0, 1.25, 1.5], fwd_median_ms=1.25,
                    fwdbwd_ms=[4.0, 4.5], fwdbwd_median_ms=4.25, fwdbwd_host_median_ms=0.75, io_floor_fwd_ms=0.5,
                    io_floor_fwdbwd_ms=1.5,
                    y_rel_vs_cuda=1e-3, kernels_fwdbwd=[dict(name="_wkv6_bwd_kernel", ms=2.5, launches=1.0),
                                                        dict(name="_wkv6_fwd_kernel", ms=1.0, launches=1.0)]),
               dict(shape=[8, 4096, 32, 64], impl="cuda", fwd_ms=[1.0], fwd_median_ms=1.0, fwdbwd_ms=[5.0],
                    fwdbwd_median_ms=5.0, io_floor_fwd_ms=0.5, io_floor_fwdbwd_ms=1.5, y_rel_vs_cuda=0.0)]
        with open(os.path.join(out, "wkv6_bench.json"), "w") as f:
            json.dump({"meta": meta, "results": res}, f)
    monkeypatch.setitem(sys.modules, "wkv6_bench", types.SimpleNamespace(bench=fake_bench))
    monkeypatch.setattr(bench, "_cuda_ok", lambda: True)
    doc = json.load(open(bench.main(["--what=kernel", "--reps=20", f"--out={tmp_path}"])))
    assert "--reps=20" in seen["argv"] and doc["what"] == "kernel"
    assert doc["device_name"] == doc["summary"]["device_name"] == H100 and doc["driver"] == "550.54"
    assert doc["versions"]["triton"] == "3.1.0" and doc["raw"][0]["fwd_ms"] == [1.0, 1.25, 1.5]
    # device_fwdbwd_ms: the profiled kernels' device time per call, summed (only rows with a profile have one)
    assert doc["summary"]["rows"] == [dict(shape="8x4096x32x64", impl="triton[64,64]", fwd_ms=1.25, fwdbwd_ms=4.25,
                                           floor_fwd_ms=0.5, floor_fwdbwd_ms=1.5, y_rel_vs_cuda=1e-3,
                                           device_fwdbwd_ms=3.5, host_fwdbwd_ms=0.75, error=""),
                                      dict(shape="8x4096x32x64", impl="cuda", fwd_ms=1.0, fwdbwd_ms=5.0,
                                           floor_fwd_ms=0.5, floor_fwdbwd_ms=1.5, y_rel_vs_cuda=0.0,
                                           device_fwdbwd_ms=None, host_fwdbwd_ms=None, error="")]


def test_device_spine_smoke(tmp_path, monkeypatch):
    """The one-command device script end to end on CPU (one seed, tiny model): only results JSON, metrics JSONL and
    PNGs come out, flat, at most 8 files; the runs summary reads the metrics it copied, and the command it records
    reproduces it once the files sit in a results/ folder."""
    corpus = tmp_path / "corpus.txt"
    import inspect
    import argparse
    import configparser
    corpus.write_text(inspect.getsource(argparse) + inspect.getsource(configparser))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=PY, SEEDS="0", OMP_NUM_THREADS="1")
    p = subprocess.run(["bash", "scripts/device_spine.sh", "--smoke", str(corpus), str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    files = sorted(os.listdir(out))
    assert 0 < len(files) <= 8 and all(f.endswith((".json", ".jsonl", ".png")) for f in files), files
    assert not any(os.path.isdir(out / f) for f in files)
    runs = json.load(open(glob.glob(str(out / "*_shakespeare_char_smoke.json"))[0]))
    gen = json.load(open(glob.glob(str(out / "*_shakespeare_char_smoke_generate.json"))[0]))
    assert runs["summary"]["runs"] == 1 and runs["summary"]["gate"]["checked"] is False
    assert gen["summary"]["rows"][0]["path"] == "kv_cache"
    jsonl = [f for f in files if f.endswith(".jsonl")]
    assert len(jsonl) == 1 and runs["raw"][0]["best_val"] == min(
        json.loads(line)["val_loss"] for line in open(out / jsonl[0]) if '"eval"' in line)
    repro = tmp_path / "repro"
    (repro / "results").mkdir(parents=True)
    shutil.copy(out / jsonl[0], repro / "results" / jsonl[0])
    monkeypatch.chdir(repro)
    cmd = shlex.split(runs["command"])
    assert cmd[1] == "bench.py"
    again = json.load(open(bench.main(cmd[2:] + [f"--out={repro / 'again'}"])))
    assert again["summary"] == runs["summary"] and again["raw"] == runs["raw"]


@pytest.mark.gpu
def test_train_and_generate_on_cuda(tiny_data, tmp_path):
    """On a CUDA machine: bf16 + compile (train.py's CUDA defaults) through the timed loop, events per step, peak
    memory, the attention path, and a KV-cache generation run."""
    gpu = ["--n_layer=2", "--n_head=2", "--n_embd=64", "--dropout=0.0", f"--data_dir={tiny_data}",
           "--dataset=stdlib_char"]  # gpt_8m names shakespeare_char; both configs must read the same tokens
    doc = json.load(open(bench.main(["config/quickstart.py", "config/gpt_8m.py", *gpu, "--device=cuda",
                                     "--dtype=bfloat16", "--compile=True", "--T=64,128", "--tokens_per_step=2048",
                                     "--steps=5", "--warmup=3", f"--out={tmp_path}", "--name=gpu"])))
    assert doc["device_name"] == bench.torch.cuda.get_device_name() and doc["driver"]
    for r in doc["summary"]["rows"]:
        assert r["timed_steps"] == 5 and r["mem_peak_mb"] > 0 and r["all_losses_finite"]
        assert r["backends"]["attention"] == "sdpa/flash" and r["backends"]["compile"]
    gen = json.load(open(bench.main(["config/quickstart.py", *gpu, "--device=cuda", "--dtype=bfloat16",
                                     "--what=generate", "--ctx=16", "--gen_tokens=16", "--gen_batch=1,4",
                                     "--gen_repeats=2", f"--out={tmp_path}", "--name=gpugen"])))
    assert all(r["decode_tok_s"] > 0 and r["path"] == "kv_cache" for r in gen["summary"]["rows"])


def test_kernel_mode_converts_an_earlier_measurement(tmp_path):
    """--from=wkv6_bench.json: the numbers keep the measurement's device, versions, git sha and command."""
    meta = dict(command="python3 wkv6_triton.py --bench", git_sha="feedbeef", git_dirty=False, device=H100,
                driver="580.1", torch="2.11", triton="3.6.0", python="3.12.3", cuda_runtime="13.0", seed=1234, reps=20,
                N=64, dtype="bf16", timing="CUDA events", copy_bandwidth_GBps=2964.7)
    src = tmp_path / "wkv6_bench.json"
    src.write_text(json.dumps(dict(meta=meta, results=[dict(shape=[1, 16384, 4, 64], impl="cuda", fwd_median_ms=2.5,
                                                            fwdbwd_median_ms=7.5, error="OOM")])))
    doc = json.load(open(bench.main(["--what=kernel", f"--from={src}", f"--out={tmp_path}", "--name=k"])))
    assert doc["git"] == {"sha": "feedbeef", "dirty": False, "source_digest": None} and doc["device_name"] == H100
    assert doc["versions"]["torch"] == "2.11" and any("python3 wkv6_triton.py --bench" in n for n in doc["notes"])
    assert doc["summary"]["rows"][0]["shape"] == "1x16384x4x64" and doc["summary"]["rows"][0]["error"] == "OOM"
    with pytest.raises(bench.BenchError, match="not wkv6_bench.bench output"):  # a results file is not a source
        bench.main(["--what=kernel", f"--from={next(tmp_path.glob('*_k.json'))}", f"--out={tmp_path}"])


def test_git_info_keeps_the_launchers_sha(monkeypatch, tmp_path):
    """A copied tree can carry a stale .git (a GPU box once read the session's first commit, 'dirty', while its
    files were a later commit): the sha the launcher states is recorded beside git's; without .git it is the sha."""
    import metrics
    monkeypatch.setenv("LAB_GIT_SHA", "0123abc")
    info = metrics.git_info()
    assert len(info["sha"]) == 40 and info["launcher_sha"] == "0123abc"
    monkeypatch.setattr(metrics, "ROOT", str(tmp_path))  # no repository here
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    info = metrics.git_info()
    assert info["sha"] == "0123abc" and "LAB_GIT_SHA" in info["source"]


def test_source_digest_names_the_commit_a_stale_git_copy_ran(tmp_path):
    """The GPU box's copy of the tree once carried a .git at the session's first commit under a later commit's files
    (results read 'dirty' at the wrong sha). source_digest is computed from the files: it equals commit_digest of the
    commit those files are, ignores docs and tests, and find_commit names that commit (and any with the same code)."""
    import subprocess
    import metrics

    def git(*a):
        return subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True, text=True).stdout.strip()
    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    (tmp_path / "config").mkdir()
    (tmp_path / "scripts").mkdir()
    for rel, text in (("train.py", "a = 1\n"), ("config/c.py", "x = 1\n"), ("scripts/run.sh", "echo\n"),
                      ("README.md", "docs\n")):
        (tmp_path / rel).write_text(text)
    git("add", "-A")
    git("commit", "-qm", "A")
    first = git("rev-parse", "HEAD")
    (tmp_path / "train.py").write_text("a = 2\n")
    git("commit", "-qam", "B")
    code = git("rev-parse", "HEAD")
    (tmp_path / "README.md").write_text("more docs\n")
    git("commit", "-qam", "C: docs only")
    docs = git("rev-parse", "HEAD")
    digest = metrics.source_digest(str(tmp_path))
    assert digest == metrics.commit_digest(code, str(tmp_path)) != metrics.commit_digest(first, str(tmp_path))
    git("branch", "later")
    git("reset", "-q", "--soft", first)          # the stale copy: HEAD at A, the files of C
    (tmp_path / "test_x.py").write_text("")       # top-level *.py counts ...
    assert metrics.source_digest(str(tmp_path)) != digest
    (tmp_path / "test_x.py").unlink()
    (tmp_path / "notes.txt").write_text("x")      # ... other files do not
    assert metrics.source_digest(str(tmp_path)) == digest
    assert metrics.find_commit(digest, str(tmp_path)) == [docs, code]
    (tmp_path / "scripts" / "run.sh").write_text("echo changed\n")
    assert metrics.find_commit(metrics.source_digest(str(tmp_path)), str(tmp_path)) == []


def test_versions_never_import_optional_packages(tmp_path, monkeypatch):
    """metrics.versions() reads optional packages' versions from their installed metadata and imports nothing: an
    `import mamba_ssm` for the log header fails half way without the Mamba-1 extension, and loading optional code is
    the model's business (hybrid.py does it when built). A package whose import would fail still gets its version."""
    import sys
    import metrics
    pkg = tmp_path / "mamba_ssm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import selective_scan_cuda_that_is_not_built\n__version__ = '9.9.9'\n")
    info = tmp_path / "mamba_ssm-9.9.9.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mamba_ssm\nVersion: 9.9.9\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mamba_ssm", raising=False)
    v = metrics.versions()
    assert v["mamba_ssm"] == "9.9.9"
    assert "mamba_ssm" not in sys.modules
    assert v["numpy"] is not None and v["causal_conv1d"] is None


def test_train_measurement_counts_graph_breaks(tiny_data, tmp_path, monkeypatch):
    """A graph break splits the compiled step (with CUDA graphs: several replays with host work between), which is
    how a model can be far slower compiled than its kernels: bench.py reports the count and the reasons."""
    mlp_forward = M.MLP.forward

    def broken(self, x):
        bench.torch._dynamo.graph_break()
        return mlp_forward(self, x)
    monkeypatch.setattr(M.MLP, "forward", broken)
    doc = json.load(open(bench.main(["config/quickstart.py", *TINY[1:5], "--n_layer=1", "--device=cpu", "--dtype=float32",
                                     "--compile=True", f"--data_dir={tiny_data}", "--dataset=stdlib_char",
                                     "--steps=1", "--warmup=1", f"--out={tmp_path}", "--name=gb"])))
    (r,) = doc["raw"]["quickstart"]
    assert r["graph_breaks"] >= 1 and r["compiled_graphs"] >= 2, (r["graph_breaks"], r["compiled_graphs"])
    assert any("graph_break" in k for k in r["graph_break_reasons"]), r["graph_break_reasons"]


def test_profile_train_writes_a_results_file(tiny_data, tmp_path):
    """scripts/profile_train.py on a CPU: the profiler sees only the timed steps, the file is bench.py's layout with
    its own command, make_tables renders it; the kernel families are named by the GPU kernel names seen on the H200."""
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import make_tables
    import profile_train
    path = profile_train.main(["config/quickstart.py", *SMALL, f"--data_dir={tiny_data}", "--dataset=stdlib_char",
                               "--T=32", "--tokens_per_step=128", "--steps=2", "--warmup=1", f"--out={tmp_path}",
                               "--shapes=1"])
    doc = json.load(open(path))
    s = doc["summary"]
    assert doc["what"] == "profile" and shlex.split(doc["command"])[1] == "scripts/profile_train.py"
    assert s["steps"] == 2 and len(doc["raw"]["step_s"]) == 2 and s["wall_ms_per_step_median"] > 0
    assert s["top_cpu_ops"] and s["kernel_launches_per_step"] == 0   # no GPU: no kernels, CPU ops only
    # --shapes=1: ops per input shape (on a CPU by CPU time); the batch is 4 rows of T=32
    assert s["op_shapes"] and any(o["name"].startswith("aten::") and "[4, 32" in o["input_shapes"] for o in s["op_shapes"])
    assert "### Profiles" in make_tables.render(str(tmp_path))
    doc["git"]["launcher_sha"] = "abc1234"   # the commit a device launcher sent (LAB_GIT_SHA): named in the command list
    json.dump(doc, open(path, "w"))
    assert "; launched from abc1234)" in make_tables.render(str(tmp_path))
    names = {"void wkv6_v2_kown_kernel<__nv_bfloat16, 64, 4, true>(int)": "wkv", "nvjet_sm90_tst_192x128": "matmul",
             "triton_per_fused_add_mul_0": "inductor_triton", "ncclDevKernel_AllReduce": "nccl",
             "void at::native::conv_depthwise2d_forward_kernel": "other", "_out_bwd_kernel": "wkv",
             "_scan_carry_kernel": "wkv", "_scan_kernel": "wkv", "_scan_fwd_kernel": "wkv", "_wkv6_fwd_kernel": "wkv", "triton_poi_fused_out_fwd_kernel_0": "inductor_triton"}
    assert {n: profile_train.family(n) for n in names} == names


def test_ssd_bench_times_both_recurrence_forms(tmp_path):
    """scripts/ssd_bench.py on a CPU (--device=cpu, eager): both forms of ssd_chunked's inter-chunk recurrence are
    timed at one shape, agree with each other, and the module's threshold is restored afterwards."""
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import mamba2
    import ssd_bench
    before = mamba2.SCAN_LOOP_MAX_CHUNKS
    ssd_bench.main(["--device=cpu", "--compile=0", "--b=1", "--l=40", "--h=2", "--p=4", "--n=4", "--chunk=8",
                    "--reps=2", f"--out={tmp_path}"])
    (path,) = [p for p in os.listdir(tmp_path) if p.endswith("_ssd_recurrence_bench.json")]
    doc = json.load(open(os.path.join(tmp_path, path)))
    assert [r["form"] for r in doc["results"]] == ["loop", "matmul"] and doc["shape"]["chunks"] == 5
    assert all(r["fwdbwd_median_ms"] > 0 for r in doc["results"]) and doc["results"][1]["max_rel_err_vs_loop"] < 1e-5
    assert mamba2.SCAN_LOOP_MAX_CHUNKS == before
