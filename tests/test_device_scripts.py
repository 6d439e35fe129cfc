"""The one-command GPU scripts for issues 4 and 6 (scripts/device_hybrid.sh, scripts/device_gates.sh), end to end on
a CPU with --smoke (tiny models, the same pipeline), and bench.py reading one run out of a merged metrics JSONL.
What a GPU box hands back is limited (8 files, flat, here only JSON / JSONL / PNG), so each test checks that too."""
import glob
import json
import os
import shlex
import subprocess
import sys

import pytest

import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
sys.path.insert(0, os.path.join(ROOT, "scripts"))


def corpus(tmp_path):
    """A real-text corpus that does not need the shipped tinyshakespeare (the project must not require it)."""
    import argparse
    import configparser
    import inspect
    p = tmp_path / "corpus.txt"
    p.write_text(inspect.getsource(argparse) + inspect.getsource(configparser))
    return p


def run_script(args, env=None, timeout=240):
    e = dict(os.environ, PYTHON=PY, OMP_NUM_THREADS="1")
    e.update(env or {})
    return subprocess.run(["bash", *args], cwd=ROOT, env=e, capture_output=True, text=True, timeout=timeout)


def flat_results(out):
    files = sorted(os.listdir(out))
    assert 0 < len(files) <= 8, files
    assert all(f.endswith((".json", ".jsonl", ".png")) and not os.path.isdir(out / f) for f in files), files
    return files


def metrics_lines(seed, vals, device_name="cpu test"):
    head = dict(kind="run", seed=seed, device="cpu", device_name=device_name, config=dict(seed=seed, log_interval=1),
                tokens_per_iter=64)
    evals = [dict(kind="eval", iter=10 * i, val_loss=v, train_time_s=float(i)) for i, v in enumerate(vals)]
    trains = [dict(kind="train", iter=i, tok_s=1000.0 + i) for i in range(0, 21)]
    return [head, *trains, *evals, dict(kind="end", reason="max_iters", iter=20, train_time_s=2.0)]


def test_bench_runs_reads_one_run_of_a_merged_jsonl(tmp_path):
    """FILE#RUN picks exactly that run's lines: the summary equals the one from the run's own file; a run id that is
    not there is a clear error naming the ids that are."""
    runs = {"m_s0": metrics_lines(0, [3.0, 2.0, 2.5]), "m_s1": metrics_lines(1, [3.1, 2.2, 1.9])}
    merged = tmp_path / "merged.jsonl"
    with open(merged, "w") as f:
        for rid, lines in runs.items():
            single = tmp_path / f"{rid}.jsonl"
            single.write_text("".join(json.dumps(r) + "\n" for r in lines))
            f.write("".join(json.dumps({"run": rid, **r}) + "\n" for r in lines))
    a = bench.main(["--what=runs", f"--metrics={merged}#m_s0,{merged}#m_s1", "--target=2.0", "--tok_window=0,20",
                    f"--out={tmp_path / 'a'}", "--name=x"])
    b = bench.main(["--what=runs", f"--metrics={tmp_path / 'm_s0.jsonl'},{tmp_path / 'm_s1.jsonl'}", "--target=2.0",
                    "--tok_window=0,20", f"--out={tmp_path / 'b'}", "--name=x"])
    sa, sb = json.load(open(a))["summary"], json.load(open(b))["summary"]
    assert sa == sb and sa["seeds"] == [0, 1] and sa["best_val"]["min"] == 1.9 and sa["reached_target"] == 2
    with pytest.raises(bench.BenchError, match="m_s0, m_s1"):
        bench.main(["--what=runs", f"--metrics={merged}#m_s7", f"--out={tmp_path / 'c'}"])


def test_device_hybrid_speed_smoke(tmp_path):
    """Speed + generation: every measurement its own process, merged into one train and one generate results file
    in bench.py's format (make_tables renders them); the hybrid/GPT ratio is the rows' tok/s ratio; a measurement that
    breaks is recorded with its exit code and log tail instead of ending the command."""
    out = tmp_path / "out"
    p = run_script(["scripts/device_hybrid.sh", "--smoke", str(corpus(tmp_path)), str(out)],
                   # the hybrid with both depthwise convs, side by side, and once more with an extra option
                   env=dict(MAMBA_CONVS="shift conv1d", HYBRID_EXTRA="--ssd_chunk=8"))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    files = flat_results(out)
    assert len(files) == 2
    speed = json.load(open(glob.glob(str(out / "*_hybrid_smoke_speed.json"))[0]))
    gen = json.load(open(glob.glob(str(out / "*_hybrid_smoke_generate.json"))[0]))
    s = speed["summary"]
    assert speed["what"] == "train" and speed["schema"] == bench.SCHEMA
    assert all(m["outcome"] == "ok" for m in s["measurements"]) and len(s["measurements"]) == 4
    tok = {r["measurement"]: r["tok_s_median"] for r in s["rows"]}
    assert set(tok) == {"gpt_8m_T16", "gf_mh_8m_T16_wkv_torch_ssd_chunk_8", "gf_mh_8m_T16_wkv_torch_conv1d_ssd_chunk_8"}
    ssd = "torch (built-in chunked SSD)"
    ratios = {r["measurement"]: r for r in s["hybrid_vs_gpt"]}   # one per hybrid measurement, none overwritten
    assert {n: r["mamba"] for n, r in ratios.items()} == {"gf_mh_8m_T16_wkv_torch_conv1d_ssd_chunk_8": ssd,
                                                           "gf_mh_8m_T16_wkv_torch_ssd_chunk_8":
                                                               ssd + " + shift-add conv"}  # shift: the default
    for n, r in ratios.items():
        assert r["T"] == 16 and r["wkv"] == "torch" and r["ratio"] == pytest.approx(tok[n] / tok["gpt_8m_T16"])
    assert len(speed["commands"]) == 3 and all(shlex.split(c)[1] == "bench.py" for c in speed["commands"])
    assert all("--ssd_chunk=8" in c for c in speed["commands"] if "gf_mh_8m" in c)
    paths = {(r["config"], r["path"]) for r in gen["summary"]["rows"]}
    assert paths == {("gf_mh_8m", "recurrent_step"), ("gpt_8m", "kv_cache")} and len(gen["summary"]["rows"]) == 8
    import make_tables
    (tmp_path / "results").mkdir()
    for f in files:
        os.replace(out / f, tmp_path / "results" / f)
    text = make_tables.render(str(tmp_path / "results"))
    assert "### Training throughput" in text and "### Generation speed" in text and "recurrent_step" in text


def test_device_gates_smoke(tmp_path):
    """Training both models (device_hybrid.sh --quality: one merged metrics JSONL, bench.py --what=runs per model
    reading it by run id), gates on each checkpoint (the hybrid against the GPT of its seed), the --summarize
    tables and every gates.json merged into one file; at most 8 files back. A gate FAIL (expected for 20-step toy
    models) is a result, not a broken command: exit 0."""
    out = tmp_path / "out"
    p = run_script(["scripts/device_gates.sh", "--smoke", str(corpus(tmp_path)), str(out)], env=dict(SEEDS="0"))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    files = flat_results(out)
    g = json.load(open(glob.glob(str(out / "*_gates_smoke.json"))[0]))
    assert set(g["runs"]) == {"gf_mh_8m_s0", "gpt_8m_s0"}
    assert all(o["rc"] in ("0", "1") and o["gates_json"] for o in g["outcome"].values())
    hyb = g["runs"]["gf_mh_8m_s0"]
    assert hyb["baseline"].endswith("gpt_8m_s0/ckpt.pt") and hyb["model_args"]["model_type"] == "hybrid"
    assert {r["gate"].split()[0] for r in hyb["rows"]} >= {"G4", "Reeval", "H2H"}
    assert "| gate |" in g["summary_markdown"] and "hybrid/GF-MH" in g["summary_markdown"]
    (jl,) = [f for f in files if f.endswith(".jsonl")]
    lines = [json.loads(x) for x in open(out / jl)]
    assert {r["run"] for r in lines} == {"gf_mh_8m_s0", "gpt_8m_s0"}
    q = json.load(open(glob.glob(str(out / "*_quality_gf_mh_8m.json"))[0]))
    evals = [r["val_loss"] for r in lines if r["run"] == "gf_mh_8m_s0" and r["kind"] == "eval"]
    assert q["summary"]["runs"] == 1 and q["raw"][0]["best_val"] == min(evals)
    assert sum(f.endswith(".png") for f in files) >= 2
    st = json.load(open(glob.glob(str(out / "*_quality_status.json"))[0]))
    assert st["iters"] == 20 and {k: v["rc"] for k, v in st["runs"].items()} == {"gf_mh_8m_s0": "0", "gpt_8m_s0": "0"}


def test_device_quality_failed_run_is_reported(tmp_path):
    """A run that dies (here: a stand-in for a compile error) is reported, not lost: its exit code and log tail come
    back in the status file (the only way to see why on a box that returns no logs), and the command exits 1.
    (Each run is its own process: the others carry on, as test_device_gates_smoke's runs show.)"""
    fake = tmp_path / "py"
    fake.write_text(f'#!/bin/bash\nif [[ "$*" == *train.py*gpt_8m* ]]; then echo "error: simulated" >&2; exit 2; fi\n'
                    f'exec {PY} "$@"\n')
    fake.chmod(0o755)
    out = tmp_path / "out"
    p = run_script(["scripts/device_hybrid.sh", "--smoke", "--quality", "0", "gpt_8m", str(corpus(tmp_path)),
                    str(out)], env=dict(PYTHON=str(fake)))
    assert p.returncode == 1, p.stdout[-3000:] + p.stderr[-3000:]
    flat_results(out)
    st = json.load(open(glob.glob(str(out / "*_quality_status.json"))[0]))["runs"]
    assert st["gpt_8m_s0"]["rc"] == "2" and st["gpt_8m_s0"]["log_tail"] == ["error: simulated"]
    assert not glob.glob(str(out / "*_quality_gpt_8m.json"))
    assert "0 of 1 models summarised" in p.stderr


def test_device_ddp_smoke(tmp_path):
    """Issue 8's command on a CPU (2 gloo processes, tiny models): per model a one-process run at the per-rank batch,
    a torchrun run, a one-process run at the global batch, then scripts/ddp_eval.py: with dropout 0 the global-batch
    run and the DDP run see the same windows, so their losses agree to float rounding; efficiency is computed from
    the runs' logged tok/s; every file comes back flat."""
    out = tmp_path / "out"
    # one model (the hybrid: the GPT's DDP equivalence is tests/test_train.py's) keeps the CPU suite short
    p = run_script(["scripts/device_ddp.sh", "--smoke", str(corpus(tmp_path)), "-", str(out)], timeout=400,
                   env=dict(MODELS="gf_mh_8m"))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    files = flat_results(out)
    assert len(files) == 3
    d = json.load(open(glob.glob(str(out / "*_ddp_smoke_gf_mh_8m.json"))[0]))
    s = d["summary"]
    assert d["what"] == "ddp" and s["world"] == 2 and s["loss"]["match"] and s["loss"]["common_iters"] == 8
    assert s["loss"]["train_max_abs_diff"] < 1e-4 and len(s["loss"]["evals"]) == 3
    raw = d["raw"]
    assert raw["multi"]["world_size"] == 2 and raw["multi"]["tokens_per_iter"] == raw["same_batch"]["tokens_per_iter"]
    assert s["scaling_efficiency"] == pytest.approx(s["tok_s"]["multi"] / (2 * s["tok_s"]["per_gpu_one"]))
    st = json.load(open(glob.glob(str(out / "*_ddp_smoke_status.json"))[0]))
    assert len(st["runs"]) == 3 and all(r["rc"] == "0" for r in st["runs"].values())
    assert st["env"]["NCCL_NVLS_ENABLE"] == "0"
    import make_tables
    (tmp_path / "results").mkdir()
    for f in files:
        os.replace(out / f, tmp_path / "results" / f)
    text = make_tables.render(str(tmp_path / "results"))
    assert "### Multi-GPU (DDP" in text and "gf_mh_8m" in text


def ddp_lines(world, batch, losses, vals, tok_s):
    head = dict(kind="run", seed=1337, device="cuda", device_name="GPU X", world_size=world,
                config=dict(batch_size=batch, block_size=8, gradient_accumulation_steps=1, model_type="gpt"),
                tokens_per_iter=batch * world * 8, backends=dict(compile="default"))
    trains = [dict(kind="train", iter=i, loss=l, tok_s=tok_s, mem_peak_mb=100.0) for i, l in enumerate(losses)]
    evals = [dict(kind="eval", iter=i * 4, val_loss=v, train_time_s=float(i)) for i, v in enumerate(vals)]
    return [head, *trains, *evals, dict(kind="end", reason="max_iters", iter=8, train_time_s=1.0)]


def test_ddp_eval_detects_a_mismatch_and_wrong_batches(tmp_path):
    """The comparison can fail: a DDP run whose losses drift by 5% is no match; runs of different global batches
    are refused with the fix named; efficiency is multi / (N x per-GPU)."""
    import ddp_eval
    good = [3.0, 2.8, 2.6, 2.5, 2.4, 2.3, 2.2, 2.1]
    runs = {"one": ddp_lines(1, 8, good, [3.0, 2.5, 2.2], 900.0),
            "multi": ddp_lines(2, 4, [x * 1.05 for x in good], [3.0, 2.6, 2.31], 1800.0),
            "per": ddp_lines(1, 4, good, [3.0, 2.5, 2.2], 1000.0), "bad": ddp_lines(1, 4, good, [3.0], 1.0)}
    path = tmp_path / "m.jsonl"
    with open(path, "w") as f:
        for rid, lines in runs.items():
            f.write("".join(json.dumps({"run": rid, **r}) + "\n" for r in lines))
    args = ["--name=t", "--world=2", f"--multi={path}#multi", f"--per_gpu={path}#per", "--tok_window=0,8",
            f"--out={tmp_path}"]
    s = json.load(open(ddp_eval.main([f"--same_batch={path}#one", *args])))["summary"]
    assert not s["loss"]["match"] and s["loss"]["train_late_rel_diff"] == pytest.approx(0.05)
    assert s["scaling_efficiency"] == pytest.approx(0.9) and s["strong_speedup"] == pytest.approx(2.0)
    with pytest.raises(SystemExit, match="batch_size = 2 x the per-rank"):
        ddp_eval.main([f"--same_batch={path}#bad", *args])


def test_device_hybrid_no_generation_writes_no_generate_file(tmp_path):
    """GEN_CAP=0 asks for no generation: the command returns the train file only, not a 'failed' generate file that
    would read as a broken measurement."""
    out = tmp_path / "out"
    p = run_script(["scripts/device_hybrid.sh", "--smoke", str(corpus(tmp_path)), str(out)], env=dict(GEN_CAP="0"))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    files = flat_results(out)
    assert len(files) == 1 and files[0].endswith("_hybrid_smoke_speed.json")
    assert json.load(open(out / files[0]))["what"] == "train"
