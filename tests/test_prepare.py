"""prepare.py: bins/meta round trips, split rules, chunking invariance, sampler, loaders and every bad input."""
import base64
import hashlib
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import prepare
from prepare import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(tmp_path, *args):
    """python prepare.py ARGS in tmp_path (data_dir defaults to tmp_path/data)."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "prepare.py"), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def files_under(d):
    return sorted(os.path.join(dp, f) for dp, _, fs in os.walk(d) for f in fs) if os.path.exists(d) else []


def make_docs(root, n=30, seed=0):
    """n small documents with indentation, trailing spaces, blank lines and a little non-ASCII."""
    rng = np.random.default_rng(seed)
    words = ["def", "x", "return", "the", "Über", "naïve", "  ", "(a, b):", "#", "'s", "42", "\t", "é"]
    docs = {}
    for i in range(n):
        lines = []
        for _ in range(int(rng.integers(3, 40))):
            indent = " " * int(rng.choice([0, 0, 4, 8]))
            lines.append(indent + " ".join(rng.choice(words, int(rng.integers(0, 8)))) + rng.choice(["", " ", "  "]))
        docs[f"sub{i % 3}/doc{i:02d}.txt"] = "\n".join(lines) + rng.choice(["", "\n", "\n\n"])
    for rel, text in docs.items():
        os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
        with open(os.path.join(root, rel), "w", encoding="utf-8") as f:
            f.write(text)
    return dict(sorted(docs.items()))


def in_val(key):  # the documented hash rule, restated independently
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 1000 < prepare.VAL_PERMILLE


def write_rank_file(path):
    """A tiny synthetic tiktoken rank file: 256 single bytes + a few merges + EOT. Some merges span
    whitespace (" the", "\\r\\n"), so a chunk cut in the wrong place changes the tokens."""
    merges = [b"th", b"he", b"the", b" t", b"in", b"  ", b"    ", b"re", b"\n\n", b" the", b" re", b"\r\n", b" \n"]
    toks = [bytes([i]) for i in range(256)] + merges
    with open(path, "wb") as f:
        for r, t in enumerate(toks):
            f.write(base64.b64encode(t) + b" " + str(r).encode() + b"\n")
    return len(toks) + 1


def decode_split(d, split):
    meta = prepare.load_meta(d)
    _, decode = prepare.tokenizer_from_meta(meta)
    return decode(prepare.open_split(d, split, meta).tolist()), meta


# ---------------------------------------------------------------------------------------------------------

def test_char_roundtrip_and_hash_split(tmp_path):
    docs = make_docs(tmp_path / "corpus")
    assert prepare.main([f"--input={tmp_path / 'corpus'}", f"--data_dir={tmp_path / 'data'}", "--dataset=c"]) == 0
    d = tmp_path / "data" / "c"
    val_keys = [k for k in docs if in_val(k)]
    assert 0 < len(val_keys) < len(docs)  # the fixture exercises both sides
    for split, keys in (("train", [k for k in docs if not in_val(k)]), ("val", val_keys)):
        text, meta = decode_split(d, split)
        assert text == prepare.SEPARATOR.join(docs[k] for k in keys)  # per document, sorted, joined by SEP
        assert meta["splits"][split]["docs"] == len(keys)
    assert meta["separator"] == "\n\n" and meta["eot_id"] is None
    assert meta["tokenizer"]["itos"] == sorted(set("".join(docs.values())) | set("\n"))
    assert meta["split_rule"]["kind"] == "hash" and meta["source"]["kind"] == "directory"
    assert len(meta["meta_sha256"]) == 64 and not [f for f in os.listdir(tmp_path / "data") if f.startswith(".")]


def test_hash_split_is_stable_per_document(tmp_path):
    """Adding a document never moves another one between splits."""
    make_docs(tmp_path / "corpus")
    prepare.main([f"--input={tmp_path / 'corpus'}", f"--data_dir={tmp_path / 'data'}", "--dataset=a"])
    with open(tmp_path / "corpus" / "zz_new.txt", "w") as f:  # sorts last
        f.write("brand new document\n")
    prepare.main([f"--input={tmp_path / 'corpus'}", f"--data_dir={tmp_path / 'data'}", "--dataset=b"])
    gains = "val" if in_val("zz_new.txt") else "train"
    for split in ("train", "val"):
        a = decode_split(tmp_path / "data" / "a", split)[0]
        b = decode_split(tmp_path / "data" / "b", split)[0]
        assert b == (a + prepare.SEPARATOR + "brand new document\n" if split == gains else a)


@pytest.mark.parametrize("tokenizer", ["char", "gpt2"])
def test_chunking_invariance(tmp_path, tokenizer):
    make_docs(tmp_path / "corpus", n=30, seed=1)
    with open(tmp_path / "corpus" / "big.txt", "w") as f:  # one document much larger than the chunk
        f.write("".join(f"line {i} the thin  \n    indented re\n\n" for i in range(300)))
    with open(tmp_path / "corpus" / "crlf.txt", "w", newline="") as f:  # no newline cut points: space rule
        f.write("".join(f"Row {i} of the thin re  tab\t\r\n" for i in range(200)))
    rank = tmp_path / "ranks.tiktoken"
    write_rank_file(rank)
    hashes = []
    for cb in (16, 1024, 2**20):
        assert prepare.main([f"--input={tmp_path / 'corpus'}", f"--data_dir={tmp_path / 'data'}", f"--dataset=d{cb}",
                             f"--tokenizer={tokenizer}", f"--gpt2_file={rank}", f"--chunk_bytes={cb}"]) == 0
        d = tmp_path / "data" / f"d{cb}"
        meta = prepare.load_meta(d)
        hashes.append({s: v["sha256"] for s, v in meta["splits"].items()})
        assert all(hashlib.sha256(open(d / f"{s}.bin", "rb").read()).hexdigest() == h for s, h in hashes[-1].items())
    assert hashes[0] == hashes[1] == hashes[2]


def test_doc_texts_cuts_only_at_safe_points():
    text = "".join(f"Row {i} of the  text\r\n" for i in range(300)).encode()
    pieces = list(prepare.doc_texts("t", prepare._bytes_blocks(text), 64))
    assert "".join(pieces).encode() == text and len(pieces) > 50
    assert all(p[-1].isalpha() for p in pieces[:-1])  # CRLF text: cut before " " + letter only
    text = b"ab\n  cd\nef\n\ngh\nij\n" * 40
    pieces = list(prepare.doc_texts("t", prepare._bytes_blocks(text), 32))
    assert "".join(pieces).encode() == text and len(pieces) > 5
    assert all(p[-1] == "\n" and p[-2] in "dhj" for p in pieces[:-1])  # newline between printable chars
    one = list(prepare.doc_texts("t", prepare._bytes_blocks(b"\n\n  \t" * 100), 16))
    assert len(one) == 1  # no safe point at all: the document stays whole


def test_gpt2_path_with_synthetic_rank_file(tmp_path):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    from tiktoken_ext.openai_public import r50k_pat_str
    docs = make_docs(tmp_path / "corpus", n=20, seed=2)
    rank = tmp_path / "ranks.tiktoken"
    n_vocab = write_rank_file(rank)
    assert prepare.main([f"--input={tmp_path / 'corpus'}", f"--data_dir={tmp_path / 'data'}", "--dataset=g",
                         "--tokenizer=gpt2", f"--gpt2_file={rank}", "--chunk_bytes=64"]) == 0
    meta = prepare.load_meta(tmp_path / "data" / "g")
    ranks = load_tiktoken_bpe(str(rank))
    ref = tiktoken.Encoding("ref", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                            special_tokens={"<|endoftext|>": n_vocab - 1}, explicit_n_vocab=n_vocab)
    eot = n_vocab - 1
    assert meta["vocab_size"] == n_vocab and meta["eot_id"] == eot and meta["separator"] is None
    tok = meta["tokenizer"]
    assert tok["name"] == "bpe:ranks.tiktoken" and tok["rank_sha256"] == hashlib.sha256(rank.read_bytes()).hexdigest()
    encode, decode = prepare.tokenizer_from_meta(meta)
    for split, keys in (("train", [k for k in docs if not in_val(k)]), ("val", [k for k in docs if in_val(k)])):
        want = [t for k in keys for t in ref.encode_ordinary(docs[k]) + [eot]]  # whole-document encoding + EOT
        got = prepare.open_split(tmp_path / "data" / "g", split, meta).tolist()
        assert got == want
        assert decode(got) == "".join(docs[k] + "<|endoftext|>" for k in keys)
    assert encode("the thin") == ref.encode_ordinary("the thin")


def test_gpt2_missing_rank_file_is_one_clear_error(tmp_path):
    with open(tmp_path / "a.txt", "w") as f:
        f.write("hello\n")
    r = run_cli(tmp_path, "--input=a.txt", "--tokenizer=gpt2", "--gpt2_file=nope.tiktoken")
    assert r.returncode == 2 and "pip download --no-deps openai-whisper" in r.stderr
    assert files_under(tmp_path / "data") == []


@pytest.mark.parametrize("tokenizer", ["char", "gpt2"])
def test_tail_split_matches_nanogpt_rule(tmp_path, tokenizer):
    rng = np.random.default_rng(3)
    text = "".join(rng.choice(list("abc de\nfgh  XY"), 2347))
    with open(tmp_path / "input.txt", "w") as f:
        f.write(text)
    rank = tmp_path / "r.tiktoken"
    write_rank_file(rank)
    assert prepare.main(["--source=shakespeare", f"--input={tmp_path / 'input.txt'}", f"--tokenizer={tokenizer}",
                         f"--gpt2_file={rank}", f"--data_dir={tmp_path / 'data'}", "--chunk_bytes=100"]) == 0
    d = tmp_path / "data" / f"shakespeare_{tokenizer}"
    meta = prepare.load_meta(d)
    n = len(text)
    train, val = text[:int(n * 0.9)], text[int(n * 0.9):]  # nanoGPT: data[:int(n*0.9)], data[int(n*0.9):]
    if tokenizer == "char":
        itos = sorted(set(text))
        assert meta["tokenizer"]["itos"] == itos and meta["separator"] is None
        stoi = {c: i for i, c in enumerate(itos)}
        want = {"train": [stoi[c] for c in train], "val": [stoi[c] for c in val]}
    else:
        enc, _ = prepare.load_gpt2(str(rank))
        want = {"train": enc.encode_ordinary(train), "val": enc.encode_ordinary(val) + [enc.eot_token]}
    for s in ("train", "val"):
        assert prepare.open_split(d, s, meta).tolist() == want[s]
    assert meta["split_rule"]["kind"] == "tail" and meta["source"]["kind"] == "shakespeare"


def test_tail_split_across_documents(tmp_path):
    docs = make_docs(tmp_path / "corpus", n=7, seed=4)
    assert prepare.main([f"--input={tmp_path / 'corpus'}", f"--data_dir={tmp_path / 'data'}", "--dataset=t",
                         "--split=tail", "--chunk_bytes=32"]) == 0
    stream = prepare.SEPARATOR.join(docs.values())
    k = int(len(stream) * 0.9)
    assert decode_split(tmp_path / "data" / "t", "train")[0] == stream[:k]
    assert decode_split(tmp_path / "data" / "t", "val")[0] == stream[k:]


def test_jsonl_input(tmp_path):
    rows = [{"text": f"document {i}\nwith text {i * i} na\u00efve \u2603"} for i in range(40)] + [{"text": ""}]
    with open(tmp_path / "d.jsonl", "w") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    assert prepare.main([f"--input={tmp_path / 'd.jsonl'}", f"--data_dir={tmp_path / 'data'}"]) == 0
    meta = prepare.load_meta(tmp_path / "data" / "d_char")
    texts = [r["text"] for r in rows if r["text"]]
    val = [t for t in texts if in_val(hashlib.sha256(t.encode()).hexdigest())]  # key = sha256 of the text
    assert decode_split(tmp_path / "data" / "d_char", "val")[0] == prepare.SEPARATOR.join(val)
    assert meta["source"]["docs"] == 40 and meta["source"]["skipped_empty_docs"] == 1


def test_default_stdlib_corpus(tmp_path):
    r = run_cli(tmp_path, "--max_bytes=150000")
    assert r.returncode == 0, r.stderr
    d = tmp_path / "data" / "stdlib_char"
    meta = prepare.load_meta(d, verify=True)
    src = meta["source"]
    assert src["kind"] == "stdlib" and 0 < src["bytes"] <= 150000 and len(src["manifest_sha256"]) == 64
    assert meta["python"] == sys.version.split()[0] and meta["command"] == "python prepare.py --max_bytes=150000"
    assert meta["split_rule"]["kind"] == "hash" and meta["separator"] == "\n\n"
    assert 50 < meta["vocab_size"] <= 100  # ASCII only
    n = {s: meta["splits"][s]["tokens"] for s in ("train", "val")}
    assert n["train"] + n["val"] == src["chars"] + 2 * (src["documents"] - 2)  # text + one SEP between docs
    first = open(d / "meta.json", "rb").read()
    assert run_cli(tmp_path, "--max_bytes=150000").returncode == 0
    assert open(d / "meta.json", "rb").read() == first  # deterministic


# ---------------------------------------------------------------------------------------------------------
# bad inputs: exit 2, one line "error: ...", naming the problem, no files left behind

def _bad_cases(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "zero.txt").write_bytes(b"")
    for name, extra in (("nonutf8", ("bad.txt", b"ok line\nabc\xff\xfe")), ("zerodir", ("z.txt", b"")),
                        ("bindir", ("b.bin", b"MZ\x00\x01\x02"))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "good.txt").write_text("fine text\n")
        (tmp_path / name / extra[0]).write_bytes(extra[1])
    chars = [chr(c) for c in range(0x100, 0x100 + 66000 + 2048) if not 0xD800 <= c < 0xE000][:65600]
    (tmp_path / "wide.txt").write_text("".join(chars), encoding="utf-8")
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"txt": "b"}\n')
    (tmp_path / "sur.jsonl").write_text('{"text": "a\\ud800"}\n')
    (tmp_path / "tiny.txt").write_text("x")
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.txt").write_text("only one side\n")
    (tmp_path / "one" / "b.txt").write_text("only one side too\n")
    return {
        "empty dir": (["--input=empty"], "empty corpus"),
        "empty file": (["--input=zero.txt"], "empty corpus"),
        "non-utf8": (["--input=nonutf8"], "nonutf8/bad.txt is not valid UTF-8 at byte offset 11 (byte 0xff)"),
        "zero-byte in dir": (["--input=zerodir"], "--exclude='z.txt'"),
        "binary in dir": (["--input=bindir"], "bindir/b.bin looks binary (NUL byte at offset 2)"),
        "vocab > 65535": (["--input=wide.txt"], "65600 distinct characters"),
        "bad jsonl": (["--input=bad.jsonl"], "bad.jsonl line 2: not a JSON object"),
        "surrogate jsonl": (["--input=sur.jsonl"], "sur.jsonl line 1: not a JSON object"),
        "bad dataset name": (["--input=zero.txt", "--dataset=../x"], "plain directory name"),
        "one-sided hash split": (["--input=one", "--split=hash"], "--split=tail"),
        "missing input": (["--input=nothere"], "does not exist"),
        "empty train split": (["--input=tiny.txt"], "the train split is empty"),  # fails after the temp dir exists
    }


def test_bad_inputs_fail_cleanly(tmp_path):
    cases = _bad_cases(tmp_path)
    for case, (args, needle) in cases.items():
        r = run_cli(tmp_path, *args, "--data_dir=data")
        assert r.returncode == 2, (case, r.stderr)
        assert r.stderr.startswith("error: ") and needle in r.stderr, (case, r.stderr)
        assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr, case
        assert files_under(tmp_path / "data") == [], case


def test_exclude_skips_named_files(tmp_path):
    _bad_cases(tmp_path)
    r = run_cli(tmp_path, "--input=nonutf8", "--split=tail")
    assert r.returncode == 2 and "--exclude='nonutf8/bad.txt'" in r.stderr
    assert run_cli(tmp_path, "--input=nonutf8", "--split=tail", "--exclude=nonutf8/bad.txt").returncode == 0
    assert run_cli(tmp_path, "--input=bindir", "--split=tail", "--exclude=*.bin,z*").returncode == 0
    assert decode_split(tmp_path / "data" / "bindir_char", "train")[0] == "fine text\n"[:9]


def test_failed_run_keeps_previous_dataset(tmp_path):
    (tmp_path / "good.txt").write_text("hello world\n" * 20)
    (tmp_path / "bad.txt").write_bytes(b"hello\xff")
    assert run_cli(tmp_path, "--input=good.txt", "--dataset=x").returncode == 0
    before = {f: open(f, "rb").read() for f in files_under(tmp_path / "data")}
    r = run_cli(tmp_path, "--input=bad.txt", "--dataset=x")
    assert r.returncode == 2 and "not valid UTF-8 at byte offset 5" in r.stderr
    assert {f: open(f, "rb").read() for f in files_under(tmp_path / "data")} == before


# ---------------------------------------------------------------------------------------------------------
# loaders

@pytest.fixture
def small(tmp_path):
    (tmp_path / "in.txt").write_text("abcdefghij" * 50)
    prepare.main([f"--input={tmp_path / 'in.txt'}", f"--data_dir={tmp_path / 'data'}", "--dataset=s"])
    return tmp_path / "data" / "s"


def test_loader_errors(small):
    meta = prepare.load_meta(small)
    assert meta["splits"]["val"]["tokens"] == 50
    raw = bytearray(open(small / "val.bin", "rb").read())
    raw[3] ^= 1  # same size, different content
    (small / "val.bin").write_bytes(raw)
    with pytest.raises(DataError, match="val.bin does not match the sha256.*re-run prepare.py"):
        prepare.load_meta(small)
    prepare.load_meta(small, verify=False)  # size-only check passes
    (small / "val.bin").write_bytes(raw[:-2])
    with pytest.raises(DataError, match="val.bin has 98 bytes but meta.json says 50 tokens"):
        prepare.load_meta(small, verify=False)
    os.remove(small / "meta.json")
    with pytest.raises(DataError, match="meta.json not found.*python prepare.py"):
        prepare.load_meta(small)
    with pytest.raises(DataError, match="run `python prepare.py"):
        prepare.load_meta(small.parent / "never_prepared")


def test_block_size_larger_than_split(small):
    with pytest.raises(DataError, match=r"block_size 64 is larger than the val split \(50 tokens\); lower --block"):
        prepare.eval_offsets(0, 8, 50, 64)
    with pytest.raises(DataError, match="larger than the train split"):
        prepare.window_offsets(0, 0, 0, 8, 50, 50)


def test_sampler_is_pure_and_windows_are_shifted(small):
    meta = prepare.load_meta(small)
    data = prepare.open_split(small, "train", meta)
    n_tok, bs = len(data), 16
    a = prepare.window_offsets(1337, 5, 0, 12, n_tok, bs)
    assert a.dtype == torch.int64 and a.shape == (12,)
    assert torch.equal(a, prepare.window_offsets(1337, 5, 0, 12, n_tok, bs))
    for other in ((1337, 6, 0), (1337, 5, 1), (1338, 5, 0)):
        assert not torch.equal(a, prepare.window_offsets(*other, 12, n_tok, bs))
    many = prepare.window_offsets(0, 0, 0, 5000, n_tok, bs)
    assert many.min() >= 0 and many.max() == n_tok - bs - 1  # the last valid start is reachable, never beyond
    x, y = prepare.get_windows(data, a, bs)
    assert x.dtype == torch.int64 and x.shape == (12, bs)
    for i, o in enumerate(a.tolist()):
        assert x[i].tolist() == data[o:o + bs].tolist() and y[i].tolist() == data[o + 1:o + 1 + bs].tolist()


def test_eval_offsets_fixed_and_tiling():
    e = prepare.eval_offsets(7, 20, 10_000, 32)
    assert torch.equal(e, prepare.eval_offsets(7, 20, 10_000, 32))
    assert not torch.equal(e, prepare.eval_offsets(8, 20, 10_000, 32))
    assert e.max() <= 10_000 - 33
    t = prepare.eval_offsets(7, 20, 200, 32)  # only 6 non-overlapping windows fit: all of them
    assert t.tolist() == [0, 32, 64, 96, 128, 160] and 160 + 33 <= 200
    assert prepare.eval_offsets(7, 20, 33, 32).tolist() == [0]


def test_records_roundtrip(tmp_path):
    rng = np.random.default_rng(5)
    L, V = 12, 20
    splits = {}
    for s, n in (("train", 30), ("val", 4)):
        x = rng.integers(0, V, (n, L))
        y = np.where(rng.random((n, L)) < 0.5, -1, rng.integers(0, V, (n, L)))
        splits[s] = (x, y)
    itos = [chr(65 + i) for i in range(V)]
    prepare.write_records(tmp_path / "data", "puz", splits, V, itos, {"puzzle": "sudoku-ish"})
    d = tmp_path / "data" / "puz"
    meta = prepare.load_meta(d)
    assert meta["records"] == {"length": L} and meta["puzzle"] == "sudoku-ish" and meta["vocab_size"] == V
    for s, (x, y) in splits.items():
        data, labels = prepare.open_split(d, s, meta), prepare.open_labels(d, s, meta)
        assert labels.dtype == np.uint16 and (labels == 65535).sum() == (y == -1).sum()
        off = prepare.eval_offsets(0, 100, len(data), L, record_len=L)
        assert off.tolist() == [i * L for i in range(len(x))]  # fewer records than n: all of them, in order
        xb, yb = prepare.get_windows(data, off, L, labels=labels)
        assert np.array_equal(xb.numpy(), x) and np.array_equal(yb.numpy(), y) and yb.dtype == torch.int64
    w = prepare.window_offsets(1, 2, 0, 50, 30 * L, L, record_len=L)
    assert (w % L == 0).all() and w.max() < 30 * L
    assert len(set(prepare.eval_offsets(0, 3, 30 * L, L, record_len=L).tolist())) == 3
    labels_path = d / "val_labels.bin"
    raw = bytearray(labels_path.read_bytes())
    raw[0] ^= 1
    labels_path.write_bytes(raw)
    with pytest.raises(DataError, match="val_labels.bin does not match"):
        prepare.load_meta(d)
    with pytest.raises(DataError, match="token ids must be in"):
        prepare.write_records(tmp_path / "data", "bad", {"train": (np.full((2, 3), V), np.zeros((2, 3), int))}, V)
    with pytest.raises(DataError, match="integer arrays"):
        prepare.write_records(tmp_path / "data", "bad", {"train": (np.zeros((2, 3)), np.zeros((2, 3)))}, V)
    with pytest.raises(DataError, match="overwrite"):
        prepare.write_records(tmp_path / "data", "bad", splits, V, extra_meta={"splits": 1})
    with pytest.raises(DataError, match="65535"):
        prepare.write_records(tmp_path / "data", "bad", splits, 70000)
    assert not (tmp_path / "data" / "bad").exists()


def test_ngram_baselines():
    V = 10
    alt = np.tile([3, 7], 5000)
    b = prepare.fit_ngram_baselines(alt, alt[:1000], V)
    assert b["uniform"] == pytest.approx(math.log(V)) and b["bigram"] < 1e-3
    assert b["unigram"] == pytest.approx(-math.log(5000.5 / (10000 + 0.5 * V)))
    rng = np.random.default_rng(6)
    tr, va = rng.integers(0, 6, 3000), rng.integers(0, 6, 500)
    for V in (6, 5000):  # dense and sparse bigram paths against a direct formula
        c = {}
        for a, bb in zip(tr[:-1], tr[1:]):
            c[a, bb] = c.get((a, bb), 0) + 1
        prev = np.bincount(tr[:-1], minlength=V)
        ref = -np.mean([math.log((c.get((a, bb), 0) + 0.5) / (prev[a] + 0.5 * V)) for a, bb in zip(va[:-1], va[1:])])
        assert prepare.fit_ngram_baselines(tr, va, V)["bigram"] == pytest.approx(ref, rel=1e-12)
