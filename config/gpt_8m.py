# GPT baseline for config/gf_mh_8m.py: RoPE, no biases, GELU 4x MLP, tied head. n_layer 10 x n_embd 256 gives
# 12·L·d² ≈ 7.87M (+ norms + the tied head) = 7.89M non-embedding parameters, 3.7% under the hybrid's 8.19M
# (tests/test_hybrid.py asserts the 5% match). Same data, schedule and dropout as the hybrid.
out_dir = "out-gpt-8m"
dataset = "shakespeare_char"
eval_interval = 250
eval_iters = 200
log_interval = 10
always_save_checkpoint = False

model_type = "gpt"
n_layer = 10
n_head = 4
n_embd = 256
dropout = 0.1
bias = False
pos_emb = "rope"
norm = "layernorm"
mlp = "gelu"
tie_weights = True

batch_size = 64
block_size = 256
learning_rate = 1e-3
max_iters = 5000
lr_decay_iters = 5000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100
