"""The recursive-depth GPT (model.py, recursive=True): protocol conformance, the TRM schedule and where gradients
flow, deep supervision, ACT halting, stable-max, test-time depth, honest FLOPs, and train.py resume with EMA."""
import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import model as M
from conftest import ROOT, TINY, run_py
from metrics import read_metrics
# the protocol checks every family passes, run here on recursive model_args (collected with this file's fixture)
from test_interface import (test_causal, test_counts, test_forward_shapes_and_loss,  # noqa: F401
                            test_generate_deterministic, test_model_args_roundtrip,
                            test_optimizer_covers_every_param_once)

V, T = 37, 24


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny shapes: a second intra-op thread only adds barrier waits, which on a busy 2-core CI machine cost
    10-100x (measured); restored afterwards for the other files."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def rec_args(**kw):
    a = {**M.COMMON_CONFIG, **M.GPT_CONFIG, "model_type": "gpt", "vocab_size": V, "block_size": 64, "n_layer": 2,
         "n_embd": 32, "n_head": 4, "dropout": 0.0, "recursive": True, "n_prelude": 0, "n_core": 1, "n_coda": 1,
         "rec_n": 2, "rec_T": 2}
    a.update(kw)
    return a


CONFORMANCE = [rec_args(),
               rec_args(n_prelude=1, n_coda=0, pos_emb="rope", rec_T=3, rec_grad_last=2, grad_checkpoint=True)]


@pytest.fixture(params=range(len(CONFORMANCE)), ids=["core+coda", "prelude+core,rope,ckpt"])
def family(request):
    torch.manual_seed(0)
    return "gpt-recursive", M.build_model(CONFORMANCE[request.param])


def build(**kw):
    torch.manual_seed(0)
    return M.build_model(rec_args(**kw))


def test_kv_cache_equals_uncached_and_chunked_prefill():
    m = build(n_layer=3, n_prelude=1, pos_emb="rope", block_size=20).eval()
    idx = torch.randint(0, V, (2, 6))
    a = m.generate(idx, 20, temperature=0)  # 26 > block_size: the window slides
    b = m.generate_uncached(idx, 20, temperature=0)
    assert torch.equal(a, b)
    cache = m.new_cache()
    assert len(cache["layers"]) == m.effective_depth() == 1 + 1 * 3 * 2 + 1
    l1, _, cache = m(idx[:, :4], state=cache, return_state=True)
    l2, _, cache = m(idx[:, 4:], state=cache, return_state=True)
    assert torch.allclose(torch.cat([l1, l2], 1), m(idx)[0], atol=1e-5)


def manual_forward(m, idx, targets, grad_reps):
    """The TRM schedule written out from the spec, with the no-grad repetitions detached by hand."""
    a = m.a
    x = m.transformer.wte(idx) + m.transformer.wpe(torch.arange(idx.size(1)))
    for b in m.prelude:
        x = b(x)
    rms = lambda h: F.rms_norm(h, (h.size(-1),))
    core = lambda h: rms(m.core[0](h))
    x = rms(x)
    y = m.y_init.expand_as(x)
    z = m.z_init.expand_as(x)
    for i in range(a["rec_T"]):
        with torch.set_grad_enabled(i >= a["rec_T"] - grad_reps):
            for _ in range(a["rec_n"]):
                z = core(z + y + x)
            y = core(y + z)
    for b in m.coda:
        y = b(y)
    logits = m.lm_head(m.transformer.ln_f(y))
    return F.cross_entropy(logits.view(-1, V), targets.view(-1))


def grads(m, loss):
    m.zero_grad()
    loss.backward()
    return {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for k, p in m.named_parameters()}


def test_gradient_flows_only_through_the_last_repetition():
    m = build(n_layer=3, n_prelude=1, rec_T=3, rec_grad_last=1)
    idx, tgt = torch.randint(0, V, (2, T)), torch.randint(0, V, (2, T))
    g_model = grads(m, m(idx, tgt)[1])
    g_last = grads(m, manual_forward(m, idx, tgt, grad_reps=1))
    g_all = grads(m, manual_forward(m, idx, tgt, grad_reps=3))
    for k in g_model:
        assert torch.allclose(g_model[k], g_last[k], atol=1e-6, rtol=1e-5), k
    m_ck = build(n_layer=3, n_prelude=1, rec_T=3, rec_grad_last=1, grad_checkpoint=True)  # recompute == store
    g_ck = grads(m_ck, m_ck(idx, tgt)[1])
    assert all(torch.allclose(g_ck[k], g_model[k], atol=1e-6, rtol=1e-5) for k in g_model)
    # control: backprop through every repetition gives different gradients, so the check above can fail
    assert any(not torch.allclose(g_model[k], g_all[k], atol=1e-6) for k in g_model)
    # truncated backprop through k repetitions equals the manual k-repetition gradient
    m.a["rec_grad_last"] = 2
    g2 = grads(m, m(idx, tgt)[1])
    g2_ref = grads(m, manual_forward(m, idx, tgt, grad_reps=2))
    assert all(torch.allclose(g2[k], g2_ref[k], atol=1e-6, rtol=1e-5) for k in g2)


def test_deep_supervision_is_the_mean_of_per_step_losses():
    m = build(halt_max_steps=3, rec_T=2)
    idx, tgt = torch.randint(0, V, (2, T)), torch.randint(0, V, (2, T))
    logits, loss = m(idx, tgt)
    assert m.last_reps == [2, 2, 2]
    m.eval()
    per_step = []
    for k in (1, 2, 3):  # the detached carry does not change values: step k = a chain of k * rec_T repetitions
        m.set_depth(2 * k)
        per_step.append(m(idx, tgt)[1])
    assert torch.allclose(loss, torch.stack(per_step).mean(), atol=1e-5)
    assert torch.allclose(logits, m(idx)[0], atol=1e-5)  # returned logits: the last step's
    m.set_depth(None)
    assert m.inference_reps() == 6 and m.effective_depth() == 1 * 3 * 6 + 1


def test_act_halts_at_the_cap_and_early_when_forced():
    with pytest.raises(ValueError, match="causal=False"):
        build(rec_act=True)
    m = build(causal=False, rec_act=True, halt_max_steps=4, halt_explore_prob=0.0)
    idx, tgt = torch.randint(0, V, (3, T)), torch.randint(0, V, (3, T))
    _, loss = m(idx, tgt)  # bias -5: q < 0, nothing halts before the cap
    assert m.last_reps == [2] * 4 and torch.isfinite(loss)
    loss.backward()
    assert m.q_head.weight.grad is not None and m.q_head.weight.grad.abs().sum() > 0  # the BCE reaches the Q-head
    with torch.no_grad():
        m.q_head.bias.fill_(10.0)  # q > 0: every sequence halts after its first step
    logits, _ = m(idx, tgt)
    assert m.last_reps == [2]
    m.eval()
    m.set_depth(2)
    assert torch.allclose(logits, m(idx)[0], atol=1e-5)  # halted rows return their halting step's logits
    m.set_depth(None)
    info = m.introspect(idx)  # q > 0 after the first step: halt_step 1 for every sequence
    assert info["halt_step"].tolist() == [1, 1, 1] and info["q"].shape == (4, 3) and len(info["y_delta"]) == 8
    with torch.no_grad():
        m.q_head.bias.fill_(-10.0)
    assert m.introspect(idx)["halt_step"].tolist() == [4, 4, 4]  # never fires: the cap
    m.q_head.bias.data.fill_(10.0)
    m.train()
    m.a["halt_explore_prob"] = 1.0  # exploration: every sequence must first run randint(2, 4) steps
    torch.manual_seed(1)
    m(idx, tgt)
    assert 2 <= len(m.last_reps) <= 4


def test_act_loss_definition():
    m = build(causal=False, rec_act=True, halt_max_steps=1)
    idx, tgt = torch.randint(0, V, (2, T)), torch.randint(0, V, (2, T))
    tgt[0, :5] = -1
    logits, loss = m(idx, tgt)
    valid = tgt != -1
    ce = F.cross_entropy(logits.view(-1, V), tgt.clamp(min=0).view(-1), reduction="none").view(2, T) * valid
    seq = ce.sum(1) / valid.sum(1)
    solved = ((logits.argmax(-1) == tgt) | ~valid).all(1).float()
    bce = F.binary_cross_entropy_with_logits(torch.full((2,), -5.0), solved, reduction="none")
    assert torch.allclose(loss, (seq + 0.5 * bce).mean(), atol=1e-5)


def test_stablemax_matches_definition_and_stays_finite():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, dtype=torch.float64) * 4
    logits[0, 0, :3] = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)  # the branch points
    tgt = torch.randint(0, 11, (3, 5))
    tgt[1, 2] = -1
    got = M.token_losses(logits, tgt, "stablemax")
    for b in range(3):
        for t in range(5):
            if tgt[b, t] == -1:
                assert got[b, t] == 0
                continue
            s = [x + 1 if x >= 0 else 1 / (1 - x) for x in logits[b, t].tolist()]
            assert abs(got[b, t].item() + math.log(s[tgt[b, t]] / sum(s))) < 1e-6
    big = (torch.randn(2, 4, 11) * 1e6).requires_grad_()
    loss = M.token_losses(big, torch.randint(0, 11, (2, 4)), "stablemax").mean()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(big.grad).all()
    one = torch.ones(1, 1, 11, requires_grad=True)  # x = 1 exactly: 1/(1-x) would be inf on the unused branch
    M.token_losses(one, torch.zeros(1, 1, dtype=torch.long), "stablemax").sum().backward()
    assert torch.isfinite(one.grad).all()
    m = build(loss_type="stablemax")
    idx = torch.randint(0, V, (2, T))
    logits, loss = m(idx, idx)
    assert torch.allclose(loss, M.token_losses(logits, idx, "stablemax").mean(), atol=1e-6)


def test_set_depth_and_counts():
    m = build()
    assert not hasattr(M.build_model({**rec_args(), "recursive": False}), "set_depth")  # plain GPT: no capability
    idx = torch.randint(0, V, (1, T))
    m.eval()
    a = m(idx)[0]
    m.set_depth(5)
    assert m.effective_depth() == 1 * 3 * 5 + 1 and not torch.allclose(a, m(idx)[0])
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="set_depth"):
            m.set_depth(bad)
    with pytest.raises(ValueError, match="n_layer"):
        build(n_layer=4)
    assert "effective depth" in m.param_breakdown()


def test_flops_per_token_counts_every_application():
    """The formula against PyTorch's FLOP counter on a real training step: prelude, coda, 2 supervision steps of
    3 repetitions, 2 with gradient (6N + 12HQT per application) and 1 without (forward only: 2N + 4HQT)."""
    m = build(n_layer=3, n_prelude=1, rec_T=3, rec_grad_last=2, halt_max_steps=2, n_embd=64, attn_impl="math")
    idx = torch.randint(0, V, (2, T))
    with FlopCounterMode(display=False) as fc:
        m(idx, idx)[1].backward()
    measured = fc.get_total_flops() / idx.numel()
    assert abs(m.flops_per_token(T) / measured - 1) < 0.02, (m.flops_per_token(T), measured)


def test_bidirectional_attention():
    for impl in ("sdpa", "math"):
        m = build(causal=False, attn_impl=impl).eval()
        idx = torch.randint(0, V, (1, T))
        idx2 = idx.clone()
        idx2[0, -1] = (idx2[0, -1] + 1) % V
        assert not torch.allclose(m(idx)[0][:, :5], m(idx2)[0][:, :5])  # the last token reaches the first
        with pytest.raises(ValueError, match="causal"):
            m.generate(idx, 2)
    m2 = build(causal=False, attn_impl="sdpa").eval()
    m2.load_state_dict(m.state_dict())
    assert torch.allclose(m(idx)[0], m2(idx)[0], atol=1e-5)


def test_depth_sampler():
    m = build(rec_T=3, rec_depth_sampling="lognormal_poisson")
    torch.manual_seed(0)
    draws = [m.train_reps() for _ in range(3000)]
    assert min(draws) >= 1 and max(draws) <= 9 and abs(sum(draws) / len(draws) - 3) < 0.15
    with pytest.raises(ValueError, match="rec_T >= 2"):
        build(rec_T=1, rec_depth_sampling="lognormal_poisson")


def test_train_resume_exact_with_ema_and_act(tmp_path):
    """train.py on a tiny Sudoku record set with ACT (random exploration), dropout and EMA: 4 steps straight equal
    1 step + resume to 4, bit for bit; and after step 1 the EMA is 0.9 * init + 0.1 * weights (train.py's rule)."""
    import puzzles
    data = tmp_path / "data"
    puzzles.main(["--task=sudoku", "--clues=60", "--n_train=4", "--n_aug=2", "--n_val=2", "--n_test=0",
                  f"--data_dir={data}", "--workers=1"])
    args = [*TINY, f"--data_dir={data}", "--dataset=sudoku60", "--block_size=81", "--recursive=True", "--causal=False",
            "--n_layer=1", "--n_core=1", "--rec_n=1", "--rec_T=2", "--halt_max_steps=3", "--rec_act=True",
            "--halt_explore_prob=0.5", "--dropout=0.1", "--ema=0.9", "--eval_interval=4", "--eval_iters=1",
            "--warmup_iters=1",
            "--lr_decay_iters=4", "--always_save_checkpoint=True", "--seed=3"]
    run_py(["train.py", *args, f"--out_dir={tmp_path / 'a'}", "--max_iters=4"])
    run_py(["train.py", *args, f"--out_dir={tmp_path / 'b'}", "--max_iters=1"])
    ck1 = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=True)
    torch.manual_seed(3)  # train.py seeds with seed + rank before building the model: the same initial weights
    init = dict(M.build_model(ck1["model_args"]).named_parameters())
    for k, e in ck1["ema"].items():
        assert torch.allclose(e, 0.9 * init[k].detach() + 0.1 * ck1["model"][k], atol=1e-6), k
    run_py(["train.py", *args, f"--out_dir={tmp_path / 'b'}", "--max_iters=4", "--init_from=resume"])
    def loss(d):
        return {r["iter"]: r["loss"] for r in read_metrics(os.path.join(d, "metrics.jsonl")) if r["kind"] == "train"}
    a, b = loss(tmp_path / "a"), loss(tmp_path / "b")
    assert sorted(a) == sorted(b) == [0, 1, 2, 3] and all(a[i] == b[i] for i in a), (a, b)
    ca, cb = (torch.load(tmp_path / d / "ckpt.pt", weights_only=True) for d in ("a", "b"))
    assert all(torch.equal(ca["ema"][k], cb["ema"][k]) for k in ca["ema"])
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])


def test_device_recursive_lm_seeds_and_merge(tmp_path):
    """scripts/device_recursive.sh --smoke with only the LM pair (SEEDS="" LM_SEEDS="1"): the runs are named by seed
    and the per-run folders come back as one archive; recursive_eval.py merge pools two such results files (a run
    named without a seed gets --default_seed) and refuses runs from different devices."""
    import json
    import subprocess
    import tarfile
    out, data = tmp_path / "out", tmp_path / "data"
    env = dict(os.environ, OUT=str(out), WORK=str(tmp_path / "work"), DATA_DIR=str(data), SEEDS="", LM_SEEDS="1",
               PYTHON=sys.executable, OMP_NUM_THREADS="1")
    p = subprocess.run(["bash", "scripts/device_recursive.sh", "--smoke"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    assert sorted(res["lm"]) == ["lm-gpt-s1", "lm-trm-s1"] and res["sudoku"] == {}
    assert res["script"]["lm_seeds"] == "1" and res["script"]["seeds"] == ""
    assert all(r["end_reason"] == "max_iters" and r["best_val"] is not None for r in res["lm"].values())
    assert sorted(os.listdir(out)) == ["results.json", "runs.tar.gz", "summary.txt"]
    with tarfile.open(out / "runs.tar.gz") as t:
        assert "lm-trm-s1/eval.json" in t.getnames()
    # a second "device run" whose LM runs carry no seed suffix (the first command's naming)
    other = dict(res, lm={k.rsplit("-s", 1)[0]: v for k, v in res["lm"].items()})
    (tmp_path / "b.json").write_text(json.dumps(other))
    merged = tmp_path / "2026-01-01_recursive_test.json"
    run_py(["scripts/recursive_eval.py", "merge", str(merged), str(out / "results.json"), str(tmp_path / "b.json"),
            "--default_seed=7"])
    m = json.loads(merged.read_text())
    assert m["what"] == "recursive" and m["name"] == "recursive_test" and "merge" in m["command"]
    assert m["lm"]["gpt"]["seeds"] == [1, 7] and m["lm"]["trm"]["best_val"]["n"] == 2
    assert set(m["lm"]["trm"]["depth_curve"]) == {"1", "2"} and m["lm"]["gpt"]["depth_curve"]["fixed"]["n"] == 2
    other["provenance"] = dict(other["provenance"], device_name="another GPU")
    (tmp_path / "c.json").write_text(json.dumps(other))
    bad = run_py(["scripts/recursive_eval.py", "merge", str(tmp_path / "x.json"), str(out / "results.json"),
                  str(tmp_path / "c.json")], check=False)
    assert bad.returncode != 0 and "different devices" in bad.stderr and not (tmp_path / "x.json").exists()
