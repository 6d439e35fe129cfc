"""gates.py, both ways: a healthy model passes each gate, a model broken in the way the gate targets fails it.
Doubles (tests/gates_doubles.py): a context-blind unigram, a perfect-copy oracle; plus a tiny GPT and a tiny hybrid
trained with train.py once per session."""
import json
import os

import numpy as np
import pytest
import torch

import gates
import model as M
import prepare
from checkpoint import load_checkpoint, model_from_checkpoint
from conftest import TINY, run_py

FAST = dict(g3_steps=20, overfit_steps=80, overfit_lr=1e-2, n_val_windows=16, lrd_windows=64, long_len=256, ucw_seqs=2,
            retrieval_trials=4, div_tokens=64)
HYB = ["config/hybrid_tiny.py", "--fusion=HY", "--n_layer=1", "--n_embd=32", "--rwkv_head_size=16", "--d_state=8",
       "--mamba_headdim=16", "--ssd_chunk=16", "--block_size=32", "--batch_size=8", "--max_iters=80",
       "--lr_decay_iters=80", "--learning_rate=1e-2", "--warmup_iters=5", "--eval_interval=40", "--eval_iters=4",
       "--log_interval=40", "--plot=False"]


@pytest.fixture(scope="session")
def gpt_run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("gates_gpt")
    run_py(["train.py", *TINY, f"--data_dir={tiny_data}", f"--out_dir={out}", "--max_iters=150",
            "--learning_rate=5e-3", "--eval_interval=50", "--log_interval=50"])
    return str(out)


@pytest.fixture(scope="session")
def hyb_run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("gates_hyb")
    run_py(["train.py", *HYB, f"--data_dir={tiny_data}", f"--out_dir={out}"])
    return str(out)


@pytest.fixture(scope="session")
def data(tiny_data):
    d = os.path.join(tiny_data, "stdlib_char")
    meta = prepare.load_meta(d)
    return meta, prepare.open_split(d, "train", meta), prepare.open_split(d, "val", meta)


@pytest.fixture
def doubles(monkeypatch):
    monkeypatch.setitem(M.FAMILIES, "gates_unigram", ("gates_doubles", "UNIGRAM_CONFIG", "Unigram"))
    monkeypatch.setitem(M.FAMILIES, "gates_oracle", ("gates_doubles", "ORACLE_CONFIG", "CopyOracle"))


def ctx_for(model, data, fresh=False, block=None, ckpt=None, metrics=None, **opts):
    meta, train, val = data
    args = dict(model.model_args)
    if block:
        args["block_size"] = block
    cfg = dict(learning_rate=1e-2, batch_size=8, weight_decay=0.0, beta1=0.9, beta2=0.99, grad_clip=1.0,
               warmup_iters=2)
    if ckpt is not None:
        cfg = ckpt["config"]
    return gates.Ctx(model, args, cfg, train, val, meta, seed=0, fresh=fresh, ckpt=ckpt, metrics=metrics,
                     opts={**FAST, **opts})


def double(kind, data, **kw):
    V = data[0]["vocab_size"]
    args = {**M.COMMON_CONFIG, "model_type": kind, "vocab_size": V, "block_size": kw.pop("block_size", 32), **kw}
    return M.build_model(args)


def status(rows, gate):
    got = [r["status"] for r in rows if r["gate"] == gate]
    assert got, f"no row {gate} in {[r['gate'] for r in rows]}"
    return got[0]


def load(run):
    ck = load_checkpoint(os.path.join(run, "ckpt.pt"))
    from metrics import read_metrics
    return ck, model_from_checkpoint(ck), read_metrics(os.path.join(run, "metrics.jsonl"))


# ---------------------------------------------------------------------------------------------- whole CLI, GPT
def test_cli_on_trained_gpt(gpt_run, tiny_data, tmp_path):
    out = tmp_path / "g"
    code = gates.main([f"--ckpt={gpt_run}/ckpt.pt", f"--data_dir={tiny_data}", "--device=cpu", f"--out={out}",
                       "--gates=G0,G1,G2,S1,D4,Reeval,Resume,Frozen,Leak,UCW,ACT",
                       *[f"--{k}={v}" for k, v in FAST.items()]])
    res = json.load(open(out / "gates.json"))
    bad = [r for r in res["rows"] if r["status"] == "FAIL"]
    assert code == 0 and not bad, bad
    assert res["iter_num"] == 150 and res["data"]["dataset"] == "stdlib_char" and res["provenance"]["git"]
    assert status(res["rows"], "S1") == "n/a" and status(res["rows"], "UCW") == "n/a"  # GPT: no state / no carry
    assert (out / "gates.png").stat().st_size > 10_000
    assert set(gates.THRESHOLDS) and all(k in open(gates.__file__).read() for k in gates.THRESHOLDS)
    import gates_context
    table = gates_context.summarize([out / "gates.json"] * 2)
    assert "| Reeval | PASS 2/2 |" in table and "| val_loss_reeval | " in table


def test_reeval_catches_weights_altered_after_saving(gpt_run, tiny_data, tmp_path):
    ck = torch.load(os.path.join(gpt_run, "ckpt.pt"), weights_only=True)
    with torch.no_grad():
        for v in ck["model"].values():
            v.mul_(1.02)
    torch.save(ck, tmp_path / "ckpt.pt")
    code = gates.main([f"--ckpt={tmp_path}/ckpt.pt", f"--data_dir={tiny_data}", "--device=cpu", "--gates=Reeval"])
    res = json.load(open(tmp_path / "gates.json"))
    assert code == 1 and status(res["rows"], "Reeval") == "FAIL"
    ck["val_loss"] = None  # a signal save: nothing to check against
    torch.save(ck, tmp_path / "ckpt.pt")
    assert gates.main([f"--ckpt={tmp_path}/ckpt.pt", f"--data_dir={tiny_data}", "--device=cpu", "--gates=Reeval"]) == 0


def test_fresh_mode_from_config(tiny_data, tmp_path):
    code = gates.main(["config/quickstart.py", f"--data_dir={tiny_data}", "--dataset=stdlib_char", "--device=cpu",
                       "--n_layer=1", "--n_embd=32", "--n_head=2", "--block_size=32", "--batch_size=4",
                       "--compile=False", f"--out={tmp_path}", "--gates=G1,G2,G3,LRD,Reeval", "--g3_steps=15"])
    rows = json.load(open(tmp_path / "gates.json"))["rows"]
    assert code == 0 and status(rows, "G2") == "PASS" and "fresh" in rows[1]["note"]
    assert status(rows, "LRD") == "n/a" and status(rows, "Reeval") == "n/a"
    assert gates.main(["--gates=G9", "--device=cpu"]) == 2


# ------------------------------------------------------------------------------- single gates, both ways
def test_G1_G2_catch_nonfinite_and_saturated_init(doubles, data):
    u = double("gates_unigram", data)
    assert status(gates.run_gates(ctx_for(u, data, fresh=True), ["G1", "G2"]), "G2") == "PASS"
    spiky = double("gates_unigram", data, init_peak=40.0)
    assert status(gates.run_gates(ctx_for(spiky, data, fresh=True), ["G2"]), "G2") == "FAIL"
    with torch.no_grad():
        u.bias[3] = float("nan")
    assert status(gates.run_gates(ctx_for(u, data), ["G1"]), "G1") == "FAIL"


def test_G3_fails_when_nothing_learns(doubles, data):
    u = double("gates_unigram", data)
    c = ctx_for(u, data, fresh=True)
    c.cfg = dict(c.cfg, learning_rate=0.1)
    assert status(gates.run_gates(c, ["G3"]), "G3") == "PASS"   # the unigram's bias does learn
    c.cfg = dict(c.cfg, learning_rate=1e-12)
    assert status(gates.run_gates(c, ["G3"]), "G3") == "FAIL"


def test_overfit_and_baselines(doubles, data, gpt_run):
    ck, gpt, _ = load(gpt_run)
    rows = gates.run_gates(ctx_for(gpt, data, ckpt=ck), ["Overfit", "Baselines"])
    assert status(rows, "Overfit") == "PASS" and status(rows, "Baselines") != "FAIL"
    u = double("gates_unigram", data).fit_unigram(data[1])
    rows = gates.run_gates(ctx_for(u, data), ["Overfit", "Baselines"])
    assert status(rows, "Overfit") == "FAIL"       # a context-blind model cannot memorise sequences
    assert status(rows, "Baselines") == "WARN"     # it ties the unigram baseline and loses to the bigram
    assert status(gates.run_gates(ctx_for(double("gates_unigram", data), data), ["Baselines"]), "Baselines") == "FAIL"


def test_resume_catches_state_lost_on_save(doubles, data):
    ok = gates.run_gates(ctx_for(double("gates_unigram", data), data, fresh=True), ["Resume"])
    assert status(ok, "Resume") == "PASS"
    torch.manual_seed(0)
    lossy = double("gates_unigram", data, random_buffer=True)  # a non-persistent buffer: gone after reload
    assert status(gates.run_gates(ctx_for(lossy, data, fresh=True), ["Resume"]), "Resume") == "FAIL"


def test_frozen_validation(gpt_run, data):
    ck, gpt, metrics = load(gpt_run)
    assert status(gates.run_gates(ctx_for(gpt, data, ckpt=ck, metrics=metrics), ["Frozen"]), "Frozen") == "PASS"
    frozen = [dict(r, val_loss=2.5) if r["kind"] == "eval" else r for r in metrics]
    assert status(gates.run_gates(ctx_for(gpt, data, ckpt=ck, metrics=frozen), ["Frozen"]), "Frozen") == "FAIL"


def test_leak_check(doubles, data):
    u = double("gates_unigram", data)
    assert status(gates.run_gates(ctx_for(u, data), ["Leak"]), "Leak") == "PASS"   # real split of Python source
    meta, train, val = data
    c = ctx_for(u, (meta, train, np.array(train[5000:5000 + len(val)])))
    assert status(gates.run_gates(c, ["Leak"]), "Leak") == "FAIL"


def test_diversity_catches_a_degenerate_sampler(doubles, data, gpt_run):
    ck, gpt, _ = load(gpt_run)
    assert status(gates.run_gates(ctx_for(gpt, data, ckpt=ck), ["Diversity"]), "Diversity") == "PASS"
    stuck = double("gates_unigram", data).fit_unigram(data[1])
    with torch.no_grad():
        stuck.bias[5] += 12.0  # one token takes almost all the mass
    assert status(gates.run_gates(ctx_for(stuck, data), ["Diversity"]), "Diversity") == "FAIL"


def test_context_blind_fails_context_gates_and_oracle_passes(doubles, data):
    blind = double("gates_unigram", data, block_size=512).fit_unigram(data[1])
    rows = gates.run_gates(ctx_for(blind, data, long_len=512), ["LRD", "Retrieval", "SPS", "D4"])
    assert [status(rows, g) for g in ("LRD", "Retrieval", "SPS", "D4")] == ["FAIL"] * 4
    oracle = double("gates_oracle", data, block_size=512).fit_unigram(data[1])
    c = ctx_for(oracle, data, long_len=512)
    rows = gates.run_gates(c, ["LRD", "Retrieval", "SPS", "D4"])
    assert [status(rows, g) for g in ("LRD", "Retrieval", "SPS", "D4")] == ["PASS"] * 4, rows
    assert min(c.curves["Retrieval"]) == 64 and max(c.curves["Retrieval"]) == 256  # up to what it can see


def test_act_gate(doubles, data):
    gpt_like = double("gates_oracle", data)
    assert status(gates.run_gates(ctx_for(gpt_like, data), ["ACT"]), "ACT") == "n/a"
    assert status(gates.run_gates(ctx_for(double("gates_unigram", data), data), ["ACT"]), "ACT") == "PASS"
    const = double("gates_unigram", data, halting="constant")
    assert status(gates.run_gates(ctx_for(const, data), ["ACT"]), "ACT") == "FAIL"


# ----------------------------------------------------------------------------------------------- the hybrid
def test_trained_hybrid_branches_and_states(hyb_run, data):
    ck, hyb, metrics = load(hyb_run)
    names = ["G0", "G4", "D3", "S0", "S1", "S2", "S3", "S4", "D1", "D2", "D4", "UCW"]
    rows = gates.run_gates(ctx_for(hyb, data, ckpt=ck, metrics=metrics), names)
    assert not [r for r in rows if r["status"] == "FAIL"], rows
    assert status(rows, "G4 ablation") in ("PASS", "WARN") and status(rows, "D3") == "PASS"
    # Mamba branch scaled by 1e-3 (HY: its gain): dead, so ablating it costs nothing
    with torch.no_grad():
        for blk in hyb.blocks:
            blk.fusion.mamba_gain.mul_(1e-3)
    rows = gates.run_gates(ctx_for(hyb, data, ckpt=ck), ["G4", "D3"])
    assert status(rows, "G4 ablation") == "FAIL" and status(rows, "D3") == "FAIL"


def test_state_gates_catch_input_blind_and_nondeterministic_states(hyb_run, data):
    ck, hyb, _ = load(hyb_run)
    with torch.no_grad():
        for blk in hyb.blocks:
            blk.rwkv.key.weight.zero_()   # wkv state = sum of k v^T = 0 whatever the input
    rows = gates.run_gates(ctx_for(hyb, data, ckpt=ck), ["S2", "S4", "D2"])
    assert [status(rows, g) for g in ("S2", "S4", "D2")] == ["FAIL"] * 3
    ck, hyb, _ = load(hyb_run)
    fwd = hyb.forward

    def noisy(*a, **k):  # a state with run-to-run noise
        out = fwd(*a, **k)
        if k.get("return_state"):
            out[2][0]["ssm"] = out[2][0]["ssm"] + 1e-2 * torch.randn_like(out[2][0]["ssm"])
        return out
    hyb.forward = noisy
    assert status(gates.run_gates(ctx_for(hyb, data, ckpt=ck), ["S3"]), "S3") == "FAIL"


def test_head_to_head(hyb_run, gpt_run, data, tmp_path):
    ck, hyb, metrics = load(hyb_run)
    c = ctx_for(hyb, data, ckpt=ck, metrics=metrics)
    c.baseline = os.path.join(gpt_run, "ckpt.pt")
    rows = gates.run_gates(c, ["H2H"])
    assert {r["gate"] for r in rows} == {"H2H loss", "H2H tok/s", "H2H peak mem", "H2H CER"}
    assert status(rows, "H2H loss") in ("PASS", "WARN", "FAIL") and "x" in rows[0]["value"]
    worse = [dict(r, val_loss=r["val_loss"] * 2) if r["kind"] == "eval" else r for r in metrics]
    c.metrics = worse
    assert status(gates.run_gates(c, ["H2H"]), "H2H loss") == "FAIL"


def test_G0_catches_a_wrong_kernel(hyb_run, data, monkeypatch):
    import mamba2
    import wkv6
    ck, hyb, _ = load(hyb_run)
    rows = gates.run_gates(ctx_for(hyb, data, ckpt=ck), ["G0"])
    assert [r["status"] for r in rows] == ["PASS", "PASS"], rows
    chunked, ssd = wkv6.wkv6_torch_chunked, mamba2.ssd_chunked
    monkeypatch.setattr(wkv6, "wkv6_torch_chunked", lambda *a, **k: (lambda y, s: (y * 1.01, s))(*chunked(*a, **k)))
    monkeypatch.setattr(mamba2, "ssd_chunked", lambda *a, **k: (lambda y, s: (y, s * 0.99))(*ssd(*a, **k)))
    rows = gates.run_gates(ctx_for(hyb, data, ckpt=ck), ["G0"])
    assert [r["status"] for r in rows] == ["FAIL", "FAIL"], rows


def test_state_gates_catch_T_dependent_and_exploding_states(hyb_run, data):
    ck, hyb, _ = load(hyb_run)
    fwd = hyb.forward

    def growing(idx, *a, **k):  # a "state" that is the whole history: its size grows with T
        out = fwd(idx, *a, **k)
        if k.get("return_state"):
            out[2][0]["hist"] = idx.float()
        return out
    hyb.forward = growing
    assert status(gates.run_gates(ctx_for(hyb, data, ckpt=ck), ["S0"]), "S0") == "FAIL"

    def exploding(idx, *a, **k):  # every segment multiplies the carried SSM state by 1000
        out = fwd(idx, *a, **k)
        if k.get("return_state") and k.get("state") is not None:
            out[2][0]["ssm"] = k["state"][0]["ssm"] * 1000 + out[2][0]["ssm"]
        return out
    hyb.forward = exploding
    rows = gates.run_gates(ctx_for(hyb, data, ckpt=ck), ["S1", "D1", "UCW"])
    # UCW: the loss beyond the training length degrades (WARN); it FAILs only when worse than uniform
    assert [status(rows, g) for g in ("S1", "D1", "UCW")] == ["FAIL", "FAIL", "WARN"], rows
