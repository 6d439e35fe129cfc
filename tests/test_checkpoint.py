"""checkpoint.py: atomic writes, weights_only loading, RNG round trip, clear errors."""
import os
import random

import numpy as np
import pytest
import torch

import checkpoint as C
import model as M


def minimal(model):
    return dict(format_version=C.FORMAT_VERSION, model_type="gpt", model_args=model.model_args,
                model={"_orig_mod." + k: v for k, v in model.state_dict().items()}, ema=None, optimizer={}, scaler=None,
                iter_num=3, tokens_seen=96, best_val_loss=2.0, best_iter=2, config={"seed": 1}, rng=[C.rng_state()],
                sampler={"iter": 3}, data={"dataset": "x", "meta_sha256": "0" * 64}, provenance={"git": {"sha": None}})


def tiny():
    return M.build_model({**M.COMMON_CONFIG, **M.GPT_CONFIG, "vocab_size": 11, "block_size": 8, "n_layer": 1,
                          "n_embd": 16, "n_head": 2})


def test_roundtrip_weights_only_and_prefixes(tmp_path):
    m = tiny()
    path = tmp_path / "ckpt.pt"
    C.save_checkpoint(str(path), minimal(m))
    ck = C.load_checkpoint(str(path))
    assert not any(k.startswith("_orig_mod.") for k in ck["model"])
    m2 = C.model_from_checkpoint(ck)
    idx = torch.randint(0, 11, (1, 8))
    assert torch.equal(m.eval()(idx)[0], m2.eval()(idx)[0])
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temp file left behind


def test_failed_write_keeps_previous(tmp_path, monkeypatch):
    m = tiny()
    path = tmp_path / "ckpt.pt"
    C.save_checkpoint(str(path), minimal(m))
    before = path.read_bytes()

    def boom(obj, f):
        f.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(C.torch, "save", boom)
    with pytest.raises(OSError):
        C.save_checkpoint(str(path), dict(minimal(m), iter_num=99))
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["ckpt.pt"]


def test_rng_state_roundtrip():
    s = C.rng_state()
    a = (torch.rand(3), random.random(), np.random.rand())
    C.set_rng_state(s)
    b = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_errors(tmp_path):
    with pytest.raises(C.CheckpointError, match="no checkpoint"):
        C.load_checkpoint(str(tmp_path / "nope.pt"))
    torch.save({"format_version": 0}, tmp_path / "old.pt")
    with pytest.raises(C.CheckpointError, match="format_version"):
        C.load_checkpoint(str(tmp_path / "old.pt"))
    C.save_checkpoint(str(tmp_path / "g.pt"), minimal(tiny()))
    with pytest.raises(C.CheckpointError, match="holds a 'gpt' model"):
        C.load_checkpoint(str(tmp_path / "g.pt"), expect_model_type="hybrid")


def test_crop_block_size():
    m = tiny().eval()
    idx = torch.randint(0, 11, (1, 4))
    before = m(idx)[0]
    m.crop_block_size(4)
    assert m.transformer.wpe.weight.shape[0] == 4 and m.model_args["block_size"] == 4
    assert torch.equal(m(idx)[0], before)
    with pytest.raises(ValueError, match="block_size"):
        m(torch.randint(0, 11, (1, 5)))


def test_ema_weights_load_into_tied_model(tmp_path):
    m = tiny()
    ck = minimal(m)
    ema = {name: p.detach() + 1.0 for name, p in m.named_parameters()}  # what train.py stores: parameters only
    ck["ema"] = ema
    C.save_checkpoint(str(tmp_path / "e.pt"), ck)
    loaded = C.load_checkpoint(str(tmp_path / "e.pt"))
    m_ema = C.model_from_checkpoint(loaded, use_ema=True)
    for name, p in m_ema.named_parameters():
        assert torch.equal(p, ema[name])
    assert m_ema.lm_head.weight is m_ema.transformer.wte.weight  # still tied
    m_live = C.model_from_checkpoint(loaded, use_ema=False)
    assert torch.equal(m_live.lm_head.weight, m.lm_head.weight)
