# GPT-2 small (124M) with GPT-2 BPE. Data: any corpus through
#   python prepare.py --tokenizer=gpt2 [--input=DIR_OR_FILE] [--gpt2_file=gpt2.tiktoken]   (default: the stdlib corpus)
# On one node: torchrun --standalone --nproc_per_node=8 train.py config/gpt2_124m.py
# batch_size and gradient_accumulation_steps are PER RANK: 12 x 1024 x 40 = 491,520 tokens per step on one GPU;
# with N GPUs divide gradient_accumulation_steps by N to keep nanoGPT's ~0.5M-token batch.
out_dir = "out-gpt2-124m"
dataset = "stdlib_gpt2"
eval_interval = 1000
eval_iters = 200
log_interval = 10

batch_size = 12
block_size = 1024
gradient_accumulation_steps = 40

n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
bias = False

learning_rate = 6e-4
max_iters = 600000
lr_decay_iters = 600000
min_lr = 6e-5
warmup_iters = 2000
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
