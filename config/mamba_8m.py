# Single-branch Mamba-2 baseline for config/gf_mh_8m.py: the same block (RMSNorm, channel-mix FFN, dropout) with the
# RWKV branch removed and the Mamba width (mamba_d_inner, left at 0 = auto) widened to the multiple of 64 whose
# mixer has the parameter count closest to the hybrid's RWKV + Mamba + gate (832 = 13 heads at n_embd 192).
out_dir = "out-mamba-8m"
dataset = "shakespeare_char"
eval_interval = 250
eval_iters = 200
log_interval = 10
always_save_checkpoint = False

model_type = "hybrid"
fusion = "MAMBA"
n_layer = 10
n_embd = 192
dropout = 0.1
d_state = 64
mamba_headdim = 64
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
