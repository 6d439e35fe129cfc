# A tiny GF-MH hybrid for a CPU: trains in seconds on the offline stdlib_char corpus (python prepare.py first).
# Exercises every piece of the 8M model (RWKV-6 time-mix with LoRAs, Mamba-2 with the built-in chunked SSD,
# gate fusion, channel-mix) at toy width.
out_dir = "out-hybrid-tiny"
dataset = "stdlib_char"
eval_interval = 50
eval_iters = 10
log_interval = 10
always_save_checkpoint = False

model_type = "hybrid"
fusion = "GF-MH"
n_layer = 2
n_embd = 64
dropout = 0.0
rwkv_head_size = 32
d_state = 16
mamba_headdim = 32
ssd_chunk = 32
ffn_mult = 3.5

batch_size = 8
block_size = 64
learning_rate = 2e-3
max_iters = 100
lr_decay_iters = 100
min_lr = 2e-4
warmup_iters = 10
beta2 = 0.99

device = "cpu"
compile = False
dtype = "float32"
