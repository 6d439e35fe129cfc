# RWKV-6 ∥ Mamba-2 hybrid, GF-MH fusion (scalar gate per token, init 0.3 = Mamba-heavy), ~8.2M non-embedding
# parameters, on nanoGPT's shakespeare_char. Compare with config/gpt_8m.py, rwkv_8m.py, mamba_8m.py: same data,
# schedule, dropout and (within 5%) parameters.   python prepare.py --source=shakespeare ; python train.py config/gf_mh_8m.py
out_dir = "out-gf-mh-8m"
dataset = "shakespeare_char"
eval_interval = 250
eval_iters = 200
log_interval = 10
always_save_checkpoint = False

model_type = "hybrid"
fusion = "GF-MH"
n_layer = 10
n_embd = 192
dropout = 0.1
rwkv_head_size = 64
d_state = 64
mamba_expand = 2
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
