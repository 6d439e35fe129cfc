"""
Prepare a token dataset, and the validated readers every other script uses to read it back.

    python prepare.py                                        # offline default: stdlib sources -> data/stdlib_char
    python prepare.py --source=shakespeare [--input=input.txt]   # nanoGPT's shakespeare_char, exactly
    python prepare.py --input=DIR_OR_FILE_OR.jsonl --tokenizer=gpt2 --gpt2_file=gpt2.tiktoken --dataset=mine

On-disk format, data/<dataset>/:
  train.bin, val.bin   flat np.uint16 token ids (little-endian), documents back to back.
                       char: documents of a split are joined by SEPARATOR ("\\n\\n"); gpt2: EOT after every document.
  {split}_labels.bin   only for fixed-length record datasets (write_records): uint16 targets, 65535 = not scored.
  meta.json            written LAST (it is the commit marker): tokenizer (char itos, or gpt2 + rank-file sha256),
                       vocab_size, eot_id / separator, per-split token counts + sha256, source manifest hash,
                       Python version, split rule and the exact command.
Everything is built in a temp dir inside --data_dir and moved into place at the end, so a failure leaves no
partial files. Every problem with the input raises DataError (one message: the problem and the fix); main()
prints it as `error: ...` and exits 2. Other scripts catch DataError the same way.

Splits: --split=hash puts each whole document in val when sha256(key) falls in the first VAL_PERMILLE/1000
(key = relative path; sha256 of the text for .jsonl, so duplicates share a split), so adding a document never
moves another one. --split=tail is nanoGPT's rule: the first 90% of the characters are train (a document may
be cut in two). auto = tail for a single document, hash otherwise. Large inputs stream in --chunk_bytes pieces
cut only where no GPT-2 pre-tokeniser piece can span (see _CUTS), so the bins do not depend on the chunk size.
"""
import argparse
import fnmatch
import hashlib
import itertools
import json
import os
import re
import shlex
import shutil
import sys
import sysconfig
import tempfile
import time

import numpy as np

SEPARATOR = "\n\n"          # char tokenizer: between documents of one split (recorded in meta.json)
VAL_PERMILLE = 100          # hash split: ~10% of documents go to val
TAIL_TRAIN_FRACTION = 0.9   # tail split: nanoGPT's n = len(data); train = data[:int(n*0.9)]
IGNORE = 65535              # label value meaning "not scored" in {split}_labels.bin (-1 once loaded)
HASH_LIMIT = 256 * 2**20    # load_meta hashes files up to this size by default (larger: size check only)
GPT2_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"  # r50k_base == gpt2 ranks
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
STDLIB_EXCLUDE_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "ensurepip",
                       "turtledemo", "pydoc_data", "encodings", "__pycache__"}
STDLIB_MAX_FILE = 200_000   # skip the few huge generated/aggregate modules
STDLIB_MAX_BYTES = 3_000_000  # ~3 MB of ASCII Python: enough for a small char model to beat a bigram quickly
GPT2_HELP = ("get the GPT-2 rank file offline with `pip download --no-deps openai-whisper==20250625`, extract "
             "whisper/assets/gpt2.tiktoken from the archive, then pass --gpt2_file=path/to/gpt2.tiktoken "
             "(or set GPT2_TIKTOKEN)")


class DataError(Exception):
    """Bad input or bad prepared data. The message names the problem and the fix."""


# ----------------------------------------------------------------------------------------------------------
# documents: (key for the hash split, display name, blocks(size) -> iterator of raw byte blocks)

def _file_blocks(path):
    def blocks(size):
        with open(path, "rb") as f:
            while block := f.read(size):
                yield block
    return blocks


def _bytes_blocks(data):
    return lambda size: (data[i:i + size] for i in range(0, len(data), size))


def _jsonl_blocks(path, offset):
    """Re-read one .jsonl line when needed, so a large .jsonl is never held in memory."""
    def blocks(size):
        with open(path, "rb") as f:
            f.seek(offset)
            yield from _bytes_blocks(json.loads(f.readline())["text"].encode("utf-8"))(size)
    return blocks


def stdlib_docs(max_bytes=STDLIB_MAX_BYTES):
    """The embedded offline corpus: pure-ASCII *.py files of the running Python's standard library.
    Candidates are taken in sha256(relpath) order (a fixed pseudo-random mix of modules) until max_bytes;
    the manifest is the sorted list of chosen relative paths."""
    root = sysconfig.get_paths()["stdlib"]
    cands = []
    for dp, dns, fns in os.walk(root):
        dns[:] = sorted(d for d in dns if d not in STDLIB_EXCLUDE_DIRS and not d.startswith("."))
        for fn in fns:
            rel = os.path.relpath(os.path.join(dp, fn), root).replace(os.sep, "/")
            if fn.endswith(".py") and not fn.startswith("test_"):
                cands.append(rel)
    chosen, total = {}, 0
    for rel in sorted(cands, key=lambda r: hashlib.sha256(r.encode()).hexdigest()):
        data = open(os.path.join(root, rel), "rb").read()
        if not data or len(data) > STDLIB_MAX_FILE or not data.isascii() or b"\0" in data:
            continue  # ASCII only keeps the char vocab at ~100 symbols
        if total + len(data) > max_bytes:
            continue
        chosen[rel] = data
        total += len(data)
    if not chosen:
        raise DataError(f"no usable *.py files under the stdlib path {root}; pass --input=PATH instead")
    docs = [(rel, rel, _bytes_blocks(chosen[rel])) for rel in sorted(chosen)]
    manifest = "".join(f"{rel}\t{hashlib.sha256(chosen[rel]).hexdigest()}\n" for rel in sorted(chosen))
    info = dict(kind="stdlib", split_key="relative path", root=root, max_bytes=max_bytes, files=len(docs), bytes=total,
                manifest_sha256=hashlib.sha256(manifest.encode()).hexdigest())
    return docs, info


def input_docs(path, exclude=()):
    """--input: a file (one document), a directory (every non-hidden file, recursively, sorted, one document
    each; --exclude=GLOB,... drops files whose relative or given path matches), or a .jsonl file (one
    document per line, field "text")."""
    if not os.path.exists(path):
        raise DataError(f"--input={path} does not exist; pass an existing file or directory")
    info = dict(kind="input", path=os.path.abspath(path))
    if os.path.isdir(path):
        docs = []
        for dp, dns, fns in os.walk(path):
            dns[:] = sorted(d for d in dns if not d.startswith("."))
            for fn in sorted(fns):
                full = os.path.join(dp, fn)
                rel = os.path.relpath(full, path).replace(os.sep, "/")
                if fn.startswith(".") or any(fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(full, g) for g in exclude):
                    continue
                if os.path.getsize(full) == 0:
                    raise DataError(f"{full} is an empty (0-byte) file in the input directory; delete it or "
                                    f"exclude it with --exclude='{rel}'")
                docs.append((rel, full, _file_blocks(full)))
        docs.sort(key=lambda d: d[0])
        manifest = "".join(f"{d[0]}\t{os.path.getsize(os.path.join(path, d[0]))}\n" for d in docs)
        info.update(kind="directory", split_key="relative path", files=len(docs))
    elif path.endswith(".jsonl"):
        docs, skipped, offset = [], 0, 0
        with open(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                offset, start = offset + len(line), offset
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                    text.encode("utf-8")  # str check; also rejects unpaired surrogates such as "\ud800"
                except Exception:
                    raise DataError(f"{path} line {lineno}: not a JSON object with a valid string field \"text\";"
                                    f" fix or remove that line") from None
                if not text:
                    skipped += 1
                    continue
                key = hashlib.sha256(text.encode("utf-8")).hexdigest()  # equal texts: same split
                docs.append((key, f"{path} line {lineno}", _jsonl_blocks(path, start)))
        manifest = "".join(d[0] + "\n" for d in docs)
        info.update(kind="jsonl", split_key="sha256 of the text", docs=len(docs), skipped_empty_docs=skipped)
    else:
        docs = [(os.path.basename(path), path, _file_blocks(path))]
        manifest = f"{os.path.basename(path)}\t{os.path.getsize(path)}\n"
        info["split_key"] = "file name"
    info["manifest_sha256"] = hashlib.sha256(manifest.encode()).hexdigest()
    return docs, info


def shakespeare_path(data_dir):
    """Download tinyshakespeare (short timeout) into data_dir/shakespeare_input.txt, or say how to avoid it."""
    dest = os.path.join(data_dir, "shakespeare_input.txt")
    if os.path.exists(dest):
        return dest
    import urllib.request
    try:
        with urllib.request.urlopen(SHAKESPEARE_URL, timeout=10) as r:
            data = r.read()
    except Exception as e:
        raise DataError(f"could not download tinyshakespeare ({type(e).__name__}: {e}); without network pass "
                        f"the file yourself: --source=shakespeare --input=path/to/input.txt") from None
    if hashlib.sha256(data).hexdigest() != SHAKESPEARE_SHA256:
        raise DataError(f"downloaded tinyshakespeare has an unexpected sha256; pass a known-good copy with "
                        f"--input=path/to/input.txt")
    os.makedirs(data_dir, exist_ok=True)
    with open(dest + ".part", "wb") as f:
        f.write(data)
    os.replace(dest + ".part", dest)
    return dest


# Cut points where no GPT-2 regex piece (letter/digit/punctuation runs, whitespace runs) can span, so the two
# sides encode exactly as the whole would: a newline with printable ASCII on both sides, or else (CRLF text,
# one huge line) the end of an ASCII letter followed by " " + letter. Char encoding is indifferent to cuts.
_CUTS = (re.compile(rb"[\x21-\x7e]\n(?=[\x21-\x7e])"), re.compile(rb"[A-Za-z](?= [A-Za-z])"))


def _safe_cut(buf, start):
    """End index of the last safe cut point in buf[start:], or -1."""
    for rx in _CUTS:
        last = None
        for last in rx.finditer(buf, start):
            pass
        if last:
            return last.end()
    return -1


def _decode(name, data, base):
    nul = data.find(b"\0")
    if nul >= 0:
        raise DataError(f"{name} looks binary (NUL byte at offset {base + nul}); remove it, or in a directory "
                        f"input skip it with --exclude='{name}'")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{name} is not valid UTF-8 at byte offset {base + e.start} (byte 0x{data[e.start]:02x}); "
                        f"convert it (iconv -f latin1 -t utf-8) or, in a directory input, skip it with "
                        f"--exclude='{name}'") from None


def doc_texts(name, blocks, chunk_bytes):
    """Yield a document's text in pieces of about chunk_bytes, cut only at _safe_cut points."""
    buf, base, scanned = bytearray(), 0, 0
    for block in blocks(chunk_bytes):
        buf += block
        if len(buf) < chunk_bytes:
            continue
        cut = _safe_cut(buf, max(scanned - 2, 0))
        if cut < 0:
            scanned = len(buf)  # no cut point yet: keep reading, search only the new part next time
            continue
        yield _decode(name, bytes(buf[:cut]), base)
        base += cut
        del buf[:cut]
        scanned = 0
    if buf:
        yield _decode(name, bytes(buf), base)


# ----------------------------------------------------------------------------------------------------------
# tokenizers

def load_gpt2(path=None):
    """Return (tiktoken.Encoding, info). Offline: a local rank file (--gpt2_file or $GPT2_TIKTOKEN);
    otherwise tiktoken.get_encoding('gpt2'), which needs the network once."""
    import tiktoken
    path = path or os.environ.get("GPT2_TIKTOKEN")
    if path:
        from tiktoken.load import load_tiktoken_bpe
        from tiktoken_ext.openai_public import r50k_pat_str
        if not os.path.isfile(path):
            raise DataError(f"GPT-2 rank file {path} not found; {GPT2_HELP}")
        sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
        try:
            ranks = load_tiktoken_bpe(path)
            eot = max(ranks.values()) + 1  # gpt2: 50256 ranks, <|endoftext|> = 50256
            name = "gpt2" if sha == GPT2_SHA256 else f"bpe:{os.path.basename(path)}"
            enc = tiktoken.Encoding(name=name, pat_str=r50k_pat_str, mergeable_ranks=ranks,
                                    special_tokens={"<|endoftext|>": eot}, explicit_n_vocab=eot + 1)
        except Exception as e:
            raise DataError(f"{path} is not a valid tiktoken rank file ({type(e).__name__}: {e}); {GPT2_HELP}") \
                from None
        return enc, dict(type="gpt2", name=name, rank_file=os.path.abspath(path), rank_sha256=sha)
    import socket
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)  # get_encoding may try to download; do not hang offline
    try:
        enc = tiktoken.get_encoding("gpt2")
    except Exception as e:
        raise DataError(f"tiktoken could not load 'gpt2' ({type(e).__name__}); {GPT2_HELP}") from None
    finally:
        socket.setdefaulttimeout(old)
    return enc, dict(type="gpt2", name="gpt2", rank_file=None, rank_sha256=None, via="tiktoken.get_encoding")


def tokenizer_from_meta(meta, gpt2_file=None):
    """(encode: str -> list[int], decode: list[int] -> str) for a prepared dataset (used by sample.py)."""
    tok = meta["tokenizer"]
    if tok["type"] == "char":
        itos = tok["itos"]
        stoi = {c: i for i, c in enumerate(itos)}

        def encode(s):
            bad = sorted(set(s) - stoi.keys())
            if bad:
                raise DataError(f"characters {bad[:10]!r} are not in this dataset's vocabulary; use only "
                                f"characters that occur in the training corpus")
            return [stoi[c] for c in s]
        return encode, lambda ids: "".join(itos[i] for i in ids)
    if tok["type"] == "gpt2":
        path = gpt2_file or os.environ.get("GPT2_TIKTOKEN") or tok.get("rank_file")
        if tok.get("rank_file") and not os.path.isfile(path):
            raise DataError(f"GPT-2 rank file {path} (used by prepare.py for this dataset) not found; pass "
                            f"--gpt2_file=PATH or set GPT2_TIKTOKEN; {GPT2_HELP}")
        enc, info = load_gpt2(path)
        if tok.get("rank_sha256") and info["rank_sha256"] != tok["rank_sha256"]:
            raise DataError(f"rank file {path} (sha256 {str(info['rank_sha256'])[:12]}) is not the one this "
                            f"dataset was prepared with ({tok['rank_sha256'][:12]}); pass the right --gpt2_file")
        return (lambda s: enc.encode(s, allowed_special={"<|endoftext|>"})), (lambda ids: enc.decode(list(ids)))
    raise DataError(f"dataset has no text tokenizer ({tok['type']}); it cannot be encoded/decoded as text")


class _Sink:
    """One output split: appends uint16 tokens to a file, counting them and hashing the bytes."""

    def __init__(self, path):
        self.f, self.sha, self.tokens, self.docs = open(path, "wb"), hashlib.sha256(), 0, 0

    def write(self, ids):
        b = np.asarray(ids, dtype=np.uint16).tobytes()
        self.f.write(b)
        self.sha.update(b)
        self.tokens += len(b) // 2


# ----------------------------------------------------------------------------------------------------------
# prepare

def prepare(docs, source_info, out_dir, dataset, tokenizer="char", split="auto", chunk_bytes=2**20,
            gpt2_file=None, command=None):
    """Two passes over docs: (1) validate, count characters, collect the char set; (2) encode and write.
    Writes into a temp dir under out_dir and moves the files into out_dir/dataset only when all succeeded."""
    if not dataset or dataset.startswith(".") or "/" in dataset or os.sep in dataset:
        raise DataError(f"--dataset={dataset!r} must be a plain directory name such as my_corpus_char")
    if tokenizer not in ("char", "gpt2"):
        raise DataError(f"unknown --tokenizer={tokenizer}; use char or gpt2")
    if split not in ("auto", "hash", "tail"):
        raise DataError(f"unknown --split={split}; use auto, hash or tail")
    if chunk_bytes < 16:
        raise DataError(f"--chunk_bytes={chunk_bytes} is too small; use at least 16 (default 1048576)")
    chars, total = set(), 0
    for key, name, blocks in docs:                         # pass 1
        for text in doc_texts(name, blocks, chunk_bytes):
            total += len(text)
            if tokenizer == "char":
                chars.update(text)
    if total == 0:
        raise DataError(f"empty corpus: {source_info.get('path', source_info['kind'])} contains no text; "
                        f"pass --input= a file or directory with UTF-8 text")
    split = split if split != "auto" else ("tail" if len(docs) == 1 else "hash")
    in_val = [int(hashlib.sha256(k.encode()).hexdigest()[:8], 16) % 1000 < VAL_PERMILLE for k, _, _ in docs]
    if split == "hash" and (all(in_val) or not any(in_val)):
        raise DataError(f"the hash split put all {len(docs)} documents in {'val' if all(in_val) else 'train'}; "
                        f"use more documents or --split=tail")
    if tokenizer == "char":
        if len(docs) > 1:
            chars.update(SEPARATOR)
        itos = sorted(chars)
        if len(itos) > 65535:
            raise DataError(f"the corpus has {len(itos)} distinct characters, more than uint16 can hold (65535); "
                            f"use --tokenizer=gpt2 or filter the input")
        cps = np.array([ord(c) for c in itos], dtype=np.uint32)
        encode = lambda s: np.searchsorted(cps, np.frombuffer(s.encode("utf-32-le"), dtype="<u4"))
        tok_info = dict(type="char", itos=itos)
        vocab_size, eot, sep = len(itos), None, (SEPARATOR if len(docs) > 1 else None)
    else:
        enc, tok_info = load_gpt2(gpt2_file)
        if enc.n_vocab > 65535:
            raise DataError(f"tokenizer vocab {enc.n_vocab} does not fit uint16 (65535); use a smaller BPE")
        encode, vocab_size, eot, sep = enc.encode_ordinary, enc.n_vocab, enc.eot_token, None
        tok_info["eot"] = eot

    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{dataset}-", dir=out_dir)
    try:
        sinks = {s: _Sink(os.path.join(tmp, f"{s}.bin")) for s in ("train", "val")}
        pos, k = 0, int((total + len(sep or "") * (len(docs) - 1)) * TAIL_TRAIN_FRACTION)  # tail: stream incl. SEPs
        for i, (key, name, blocks) in enumerate(docs):     # pass 2
            if split == "hash":
                sink = sinks["val" if in_val[i] else "train"]
                if sep and sink.docs:
                    sink.write(encode(sep))
                for text in doc_texts(name, blocks, chunk_bytes):
                    sink.write(encode(text))
            else:  # tail: one global stream, cut at character k (a document may straddle the cut)
                for text in itertools.chain([sep] if sep and i else [], doc_texts(name, blocks, chunk_bytes)):
                    if pos < k < pos + len(text):
                        sinks["train"].write(encode(text[:k - pos]))
                        sinks["val"].write(encode(text[k - pos:]))
                    else:
                        sinks["train" if pos < k else "val"].write(encode(text))
                    pos += len(text)
                sink = sinks["train" if pos < k else "val"]
            if eot is not None:
                sink.write([eot])
            sink.docs += 1
        splits = {}
        for s, sink in sinks.items():
            sink.f.close()
            if sink.tokens == 0:
                raise DataError(f"the {s} split is empty (corpus of {total} characters); use more data")
            splits[s] = dict(file=f"{s}.bin", tokens=sink.tokens, sha256=sink.sha.hexdigest(), docs=sink.docs)
        rule = (dict(kind="hash", val_permille=VAL_PERMILLE, key=source_info.get("split_key", "document key"),
                     rule="val iff int(sha256(key)[:8], 16) % 1000 < val_permille")
                if split == "hash" else dict(kind="tail", train_fraction=TAIL_TRAIN_FRACTION,
                                             rule="train = text[:int(n_chars * 0.9)], val = the rest"))
        meta = dict(format="uint16-bins-v1", dataset=dataset, dtype="uint16", vocab_size=vocab_size,
                    tokenizer=tok_info, eot_id=eot, separator=sep, splits=splits, split_rule=rule,
                    source=dict(source_info, chars=total, documents=len(docs)),
                    python=sys.version.split()[0], command=command)
        _install(tmp, out_dir, dataset, meta)
        return meta
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _install(tmp, out_dir, dataset, meta):
    """meta.json is written last in tmp; then: drop the old meta (readers now see 'not prepared', never a
    mismatched mix), move the split files, move meta.json. Only our own files in the dataset dir are touched."""
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    dest = os.path.join(out_dir, dataset)
    os.makedirs(dest, exist_ok=True)
    if os.path.exists(os.path.join(dest, "meta.json")):
        os.remove(os.path.join(dest, "meta.json"))
    for fn in sorted(os.listdir(tmp)):
        if fn != "meta.json":
            os.replace(os.path.join(tmp, fn), os.path.join(dest, fn))
    for s in ("train", "val"):  # stale labels from an earlier record dataset of the same name
        if "labels_file" not in meta["splits"].get(s, {}) and os.path.exists(os.path.join(dest, f"{s}_labels.bin")):
            os.remove(os.path.join(dest, f"{s}_labels.bin"))
    os.replace(os.path.join(tmp, "meta.json"), os.path.join(dest, "meta.json"))


def write_records(data_dir, dataset, splits, vocab_size, itos=None, extra_meta=None):
    """Fixed-length record datasets (puzzles), written to data_dir/dataset (data_dir = the root, e.g. 'data').
    splits: {name: (inputs [N,L] ints, labels [N,L] ints, -1 = unscored)}. Writes {name}.bin (inputs, flat
    uint16), {name}_labels.bin (uint16, 65535 = unscored) and meta.json with records={length: L}, atomically
    like prepare(). extra_meta keys are added to meta.json (they may not overwrite prepare.py's own keys)."""
    if not 0 < vocab_size <= 65535:
        raise DataError(f"vocab_size {vocab_size} must be in 1..65535 (65535 is the label ignore value)")
    if itos is not None and len(itos) != vocab_size:
        raise DataError(f"itos has {len(itos)} entries but vocab_size is {vocab_size}")
    L, out = None, {}
    for name, (x, y) in splits.items():
        x, y = np.asarray(x), np.asarray(y)
        if not (np.issubdtype(x.dtype, np.integer) and np.issubdtype(y.dtype, np.integer)):
            raise DataError(f"split {name}: inputs and labels must be integer arrays, got {x.dtype} and {y.dtype}")
        if x.ndim != 2 or x.shape != y.shape or x.shape[0] == 0 or x.shape[1] == 0:
            raise DataError(f"split {name}: inputs {x.shape} and labels {y.shape} must be equal non-empty [N, L]")
        if L is not None and x.shape[1] != L:
            raise DataError(f"split {name}: record length {x.shape[1]} differs from {L}; all splits need one L")
        L = x.shape[1]
        if x.min() < 0 or x.max() >= vocab_size or y.min() < -1 or y.max() >= vocab_size:
            raise DataError(f"split {name}: token ids must be in [0, {vocab_size}) and labels in [-1, {vocab_size})")
        out[name] = (x.astype(np.uint16), np.where(y < 0, IGNORE, y).astype(np.uint16))
    os.makedirs(data_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{dataset}-", dir=data_dir)
    try:
        meta_splits = {}
        for name, (x, y) in out.items():
            xb, yb = x.tobytes(), y.tobytes()
            for fn, b in ((f"{name}.bin", xb), (f"{name}_labels.bin", yb)):
                with open(os.path.join(tmp, fn), "wb") as f:
                    f.write(b)
            meta_splits[name] = dict(file=f"{name}.bin", tokens=x.size, sha256=hashlib.sha256(xb).hexdigest(),
                                     labels_file=f"{name}_labels.bin", labels_sha256=hashlib.sha256(yb).hexdigest(),
                                     records=x.shape[0])
        tok = dict(type="char", itos=list(itos)) if itos is not None else dict(type="none")
        meta = dict(format="uint16-bins-v1", dataset=dataset, dtype="uint16", vocab_size=int(vocab_size),
                    tokenizer=tok, eot_id=None, separator=None, splits=meta_splits, records=dict(length=L),
                    python=sys.version.split()[0], command=shlex.join(sys.argv))
        clash = set(meta) & set(extra_meta or {})
        if clash:
            raise DataError(f"extra_meta keys {sorted(clash)} would overwrite prepare.py's meta fields; rename them")
        meta.update(extra_meta or {})
        _install(tmp, data_dir, dataset, meta)
        return meta
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------
# readers

def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(2**22):
            h.update(b)
    return h.hexdigest()


def load_meta(data_dir, verify=None):
    """Read and check data_dir/meta.json (data_dir = e.g. 'data/stdlib_char'). Every split file must exist
    with size == 2 * token count; its sha256 is checked when verify=True, or (verify=None, the default) when
    the file is at most 256 MB; verify=False checks sizes only. Returns meta plus 'meta_sha256' (sha256 of
    the meta.json bytes: the data identity stored in checkpoints)."""
    path = os.path.join(data_dir, "meta.json")
    if not os.path.isfile(path):
        raise DataError(f"{path} not found: the dataset is not prepared; run `python prepare.py` (stdlib_char) "
                        f"or `python prepare.py --dataset={os.path.basename(os.path.normpath(data_dir))} ...`")
    raw = open(path, "rb").read()
    try:
        meta = json.loads(raw)
        assert all(isinstance(s["tokens"], int) and "file" in s for s in meta["splits"].values())
    except Exception:
        raise DataError(f"{path} is not a valid prepare.py meta.json; re-run prepare.py") from None
    for split, s in meta["splits"].items():
        for fkey, hkey in (("file", "sha256"), ("labels_file", "labels_sha256")):
            if fkey not in s:
                continue
            fp = os.path.join(data_dir, s[fkey])
            if not os.path.isfile(fp):
                raise DataError(f"{fp} is missing; re-run prepare.py ({meta.get('command') or 'python prepare.py'})")
            size = os.path.getsize(fp)
            if size != 2 * s["tokens"]:
                raise DataError(f"{fp} has {size} bytes but meta.json says {s['tokens']} tokens ({2 * s['tokens']}"
                                f" bytes): truncated or replaced; re-run prepare.py")
            if (verify or (verify is None and size <= HASH_LIMIT)) and _sha256_file(fp) != s[hkey]:
                raise DataError(f"{fp} does not match the sha256 in meta.json (modified or corrupted); "
                                f"re-run prepare.py ({meta.get('command') or 'python prepare.py'})")
    meta["meta_sha256"] = hashlib.sha256(raw).hexdigest()
    return meta


def _check_split(data_dir, split, meta, key):
    if split not in meta["splits"] or key not in meta["splits"][split]:
        raise DataError(f"{data_dir} has no {split} {'labels' if key == 'labels_file' else 'split'}; "
                        f"available splits: {sorted(meta['splits'])}")
    return os.path.join(data_dir, meta["splits"][split][key])


def open_split(data_dir, split, meta):
    """The split's tokens as a read-only np.memmap(uint16)."""
    return np.memmap(_check_split(data_dir, split, meta, "file"), dtype=np.uint16, mode="r")


def open_labels(data_dir, split, meta):
    """Record datasets: the split's labels as a read-only np.memmap(uint16), 65535 = unscored."""
    return np.memmap(_check_split(data_dir, split, meta, "labels_file"), dtype=np.uint16, mode="r")


def _seed_mix(*parts):
    """A stable 63-bit integer from the parts (same on every machine and Python, unlike hash())."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def _too_short(n_tokens, block_size, what):
    if n_tokens < block_size + 1:
        raise DataError(f"block_size {block_size} is larger than the {what} split ({n_tokens} tokens); "
                        f"lower --block_size or use more data")


def window_offsets(seed, iter_num, micro_step, n, n_tokens, block_size, record_len=None):
    """The training sampler: n window starts, a pure function of (seed, iter_num, micro_step), so a resumed
    or re-sharded run sees the same batches. n = batch_size * world_size; rank r takes
    [r*batch_size:(r+1)*batch_size]. With record_len=L (record datasets) offsets are record starts."""
    import torch  # lazily: the prepare CLI does not need it
    g = torch.Generator().manual_seed(_seed_mix(seed, iter_num, micro_step))
    if record_len:
        if n_tokens < record_len:
            raise DataError(f"the train split has {n_tokens} tokens, fewer than one record ({record_len})")
        return torch.randint(0, n_tokens // record_len, (n,), generator=g) * record_len
    _too_short(n_tokens, block_size, "train")
    return torch.randint(0, n_tokens - block_size, (n,), generator=g)


def eval_offsets(seed, n, n_tokens, block_size, record_len=None):
    """Fixed eval windows, drawn once per run and reused for every eval. If the split holds fewer than n
    non-overlapping windows (records), all of them are returned instead (tiling the split)."""
    import torch
    g = torch.Generator().manual_seed(_seed_mix(seed, "eval"))
    if record_len:
        count = n_tokens // record_len
        if count == 0:
            raise DataError(f"the val split has {n_tokens} tokens, fewer than one record ({record_len})")
        if count <= n:
            return torch.arange(count) * record_len
        return torch.randperm(count, generator=g)[:n].sort().values * record_len
    _too_short(n_tokens, block_size, "val")
    count = (n_tokens - 1) // block_size
    if count < n:
        return torch.arange(count) * block_size
    return torch.randint(0, n_tokens - block_size, (n,), generator=g)


def get_windows(data, offsets, block_size, labels=None):
    """(x, y) int64 CPU tensors [n, block_size]: x = data[o:o+bs], y = data[o+1:o+1+bs]. Record datasets
    (labels given): x = data[o:o+L], y = labels[o:o+L] with 65535 -> -1 (ignored by the loss)."""
    import torch
    off = np.asarray(offsets, dtype=np.int64)[:, None]
    if labels is not None:
        idx = off + np.arange(block_size)
        x = torch.from_numpy(data[idx].astype(np.int64))
        y = labels[idx].astype(np.int64)
        y[y == IGNORE] = -1
        return x, torch.from_numpy(y)
    w = data[off + np.arange(block_size + 1)].astype(np.int64)
    return torch.from_numpy(w[:, :-1].copy()), torch.from_numpy(w[:, 1:].copy())


def fit_ngram_baselines(train_tokens, val_tokens, vocab_size):
    """Val cross-entropy (nats/token) of reference models fitted on train: uniform (ln V), add-1/2 unigram,
    add-1/2 bigram (scored on the len(val)-1 transitions). 'The model beats the bigram' is measured here.
    Cost ~ O(N log N) in the train length for V > 4096 (np.unique): pass a prefix for very large splits."""
    tr, va, V = np.asarray(train_tokens, dtype=np.int64), np.asarray(val_tokens, dtype=np.int64), int(vocab_size)
    uni = np.bincount(tr, minlength=V)[:V] + 0.5
    unigram = float(-np.mean(np.log(uni[va] / uni.sum())))
    prev = np.bincount(tr[:-1], minlength=V)[:V]
    if V <= 4096:  # dense V x V counts
        pair = np.bincount(tr[:-1] * V + tr[1:], minlength=V * V)[va[:-1] * V + va[1:]]
    else:  # sparse: sorted unique train pair codes, looked up by binary search
        codes, counts = np.unique(tr[:-1] * V + tr[1:], return_counts=True)
        q = va[:-1] * V + va[1:]
        j = np.clip(np.searchsorted(codes, q), 0, len(codes) - 1)
        pair = np.where(codes[j] == q, counts[j], 0)
    bigram = float(-np.mean(np.log((pair + 0.5) / (prev[va[:-1]] + 0.5 * V))))
    return dict(uniform=float(np.log(V)), unigram=unigram, bigram=bigram)


# ----------------------------------------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--source", default="stdlib", choices=["stdlib", "shakespeare"])
    p.add_argument("--input", default=None, help="file, directory or .jsonl (overrides the stdlib corpus)")
    p.add_argument("--tokenizer", default="char", choices=["char", "gpt2"])
    p.add_argument("--dataset", default=None, help="default: stdlib_char, shakespeare_char, <input name>_<tok>")
    p.add_argument("--data_dir", default="data")
    p.add_argument("--gpt2_file", default=None, help="local gpt2.tiktoken rank file (or env GPT2_TIKTOKEN)")
    p.add_argument("--chunk_bytes", type=int, default=2**20)
    p.add_argument("--split", default="auto", choices=["auto", "hash", "tail"])
    p.add_argument("--max_bytes", type=int, default=STDLIB_MAX_BYTES, help="size cap of the stdlib corpus")
    p.add_argument("--exclude", default="", help="comma-separated globs of relative paths to skip (directories)")
    a = p.parse_args(argv)
    command = shlex.join(["python", "prepare.py"] + list(sys.argv[1:] if argv is None else argv))
    t0 = time.time()
    try:
        if a.source == "shakespeare":
            path = a.input or shakespeare_path(a.data_dir)
            docs, info = input_docs(path)
            info["kind"] = "shakespeare"
            split, name = ("tail" if a.split == "auto" else a.split), f"shakespeare_{a.tokenizer}"
        elif a.input:
            docs, info = input_docs(a.input, [g for g in a.exclude.split(",") if g])
            base = os.path.splitext(os.path.basename(os.path.normpath(a.input)))[0]
            split, name = a.split, f"{base}_{a.tokenizer}"
        else:
            docs, info = stdlib_docs(a.max_bytes)
            split, name = a.split, f"stdlib_{a.tokenizer}"
        meta = prepare(docs, info, a.data_dir, a.dataset or name, a.tokenizer, split, a.chunk_bytes,
                       a.gpt2_file, command)
    except (DataError, OSError) as e:  # OSError: e.g. an unwritable --data_dir
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = meta["splits"]
    print(f"wrote {os.path.join(a.data_dir, meta['dataset'])}: {meta['source']['documents']} docs, "
          f"{meta['source']['chars']:,} chars, vocab {meta['vocab_size']}, train {s['train']['tokens']:,} / "
          f"val {s['val']['tokens']:,} tokens ({meta['split_rule']['kind']} split) in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
