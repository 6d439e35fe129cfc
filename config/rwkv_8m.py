# Single-branch RWKV-6 baseline for config/gf_mh_8m.py: the same block (RMSNorm, channel-mix FFN, dropout) with the
# Mamba branch removed and the RWKV width (rwkv_dim_att, left at 0 = auto) widened to the multiple of 64 whose
# time-mix has the parameter count closest to the hybrid's RWKV + Mamba + gate (448 = 7 heads at n_embd 192).
out_dir = "out-rwkv-8m"
dataset = "shakespeare_char"
eval_interval = 250
eval_iters = 200
log_interval = 10
always_save_checkpoint = False

model_type = "hybrid"
fusion = "RWKV"
n_layer = 10
n_embd = 192
dropout = 0.1
rwkv_head_size = 64
ffn = "cmix"
ffn_mult = 3.5

batch_size = 64
block_size = 256
learning_rate = 1e-3
max_iters = 5000
lr_decay_iters = 5000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100
