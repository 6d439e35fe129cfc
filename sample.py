"""Sample from a trained checkpoint of any family.

    python sample.py --out_dir=out-quickstart --start="def " --num_samples=3 --max_new_tokens=200
    python sample.py --ckpt=path/to/ckpt.pt --start=FILE:prompt.txt --temperature=0.8 --top_p=0.95

Decoding uses the dataset's meta.json (char itos or the gpt2 rank file). Families with a recurrent step()
decode in O(1) per token; the GPT uses its KV cache. Same seed -> same text (on CPU, bit for bit).
"""
import os
import sys
from contextlib import nullcontext

import torch

import prepare
from checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from configurator import ConfigError, configure

out_dir = "out"
ckpt = ""                 # a checkpoint path; default out_dir/ckpt.pt
data_dir = "data"
start = "\n"              # or "FILE:prompt.txt"
num_samples = 3
max_new_tokens = 300
temperature = 0.8
top_k = 200
top_p = 1.0
seed = 1337
use_ema = True            # use the EMA weights when the checkpoint has them
cuda_graph = True         # hybrids on CUDA: decode each token as one captured CUDA graph (hybrid.DecodeGraph,
                          # ~8x faster than eager step() on an H200); not used by the GPT or on a CPU
gpt2_file = ""
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"


def main():
    try:
        configure(globals(), sys.argv[1:])
        ck = load_checkpoint(ckpt or os.path.join(out_dir, "ckpt.pt"))
        meta = prepare.load_meta(os.path.join(data_dir, ck["data"]["dataset"]))
        if meta["meta_sha256"] != ck["data"]["meta_sha256"]:
            raise prepare.DataError(f"data/{ck['data']['dataset']}/meta.json differs from the one this checkpoint was "
                                    f"trained with; re-run the prepare.py command that made it")
        encode, decode = prepare.tokenizer_from_meta(meta, gpt2_file or None)
        text = start
        if text.startswith("FILE:"):
            with open(text[5:], encoding="utf-8") as f:
                text = f.read()
        ids = encode(text)
        if not ids:
            raise ValueError("the start text encodes to no tokens; pass a non-empty --start")
    except (ConfigError, CheckpointError, prepare.DataError, ValueError, OSError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    torch.manual_seed(seed)
    model = model_from_checkpoint(ck, device, use_ema=use_ema)
    graph_kw = {}
    if hasattr(model, "step"):   # a hybrid: say which decode path runs
        graph_kw = {"cuda_graph": bool(cuda_graph) and device.startswith("cuda")}
        print(f"decode: recurrent step(), {'one CUDA graph per token' if graph_kw['cuda_graph'] else 'eager'}",
              file=sys.stderr)
    model.eval()
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    ctx = nullcontext() if ptdtype == torch.float32 else torch.autocast(device_type=device_type, dtype=ptdtype)
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.tensor([ids], dtype=torch.long, device=device)
    with torch.no_grad(), ctx:
        for _ in range(num_samples):
            y = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k or None,
                               top_p=top_p if top_p < 1 else None, generator=gen, **graph_kw)
            print(decode(y[0].tolist()))
            print("---------------")


if __name__ == "__main__":
    main()
