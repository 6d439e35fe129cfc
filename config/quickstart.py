# A small char-level GPT on the embedded corpus (the running Python's standard library sources).
# Sized for a laptop / 2-core CPU: a few minutes, and it must beat an add-1/2 bigram fitted on train by >= 0.3 nats.
out_dir = "out-quickstart"
dataset = "stdlib_char"
eval_interval = 100
eval_iters = 20
log_interval = 10
always_save_checkpoint = False

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
block_size = 64
batch_size = 16
learning_rate = 2e-3
max_iters = 600
lr_decay_iters = 600
min_lr = 2e-4
warmup_iters = 50
beta2 = 0.99
# device / dtype / compile: train.py's defaults (CPU: float32, no compile; CUDA: bf16 + compile)
