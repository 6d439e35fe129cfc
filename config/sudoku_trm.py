# TRM-style recursive model on Sudoku 9x9 (data: python puzzles.py --task=sudoku --clues=45 ...; see puzzles.py).
# TRM's Sudoku setup (anchors.md §C.3) scaled to a few GPU-minutes: one shared core of 2 bidirectional blocks,
# z <- core(z + y + x) x3 then y <- core(y + z), x2 repetitions (the first without gradient), up to 4 deep-supervision
# steps with ACT halting; untied head (TRM: tying hurt), EMA of the weights. 1.6M parameters.
# No-recursion ablation (same network, schedule run once, no deep supervision):
#   --rec_n=1 --rec_T=1 --halt_max_steps=1 --rec_act=False
out_dir = "out-sudoku-trm"
dataset = "sudoku45"
block_size = 81           # one record = one puzzle, row-major; labels only at blank cells
batch_size = 256
eval_interval = 250
eval_iters = 4            # val CE over up to 4 * 256 val puzzles (all of them when there are fewer)
log_interval = 25
always_save_checkpoint = True   # the last weights are what scripts/recursive_eval.py scores on the test split

model_type = "gpt"
recursive = True
causal = False            # every cell attends to every clue
n_layer = 2
n_prelude = 0
n_core = 2
n_coda = 0
n_head = 4
n_embd = 256
dropout = 0.0
bias = False
norm = "rmsnorm"
mlp = "swiglu"
pos_emb = "learned"       # 81 absolute cell positions (a 1-D RoPE would blur the 2-D structure)
tie_weights = False
rec_n = 3
rec_T = 2
rec_grad_last = 1
halt_max_steps = 4
rec_act = True
halt_explore_prob = 0.1
loss_type = "ce"          # stablemax is available; CE learns faster in short runs

learning_rate = 1e-3
max_iters = 1500
lr_decay_iters = 1500
warmup_iters = 100
min_lr = 1e-4
weight_decay = 0.1
beta2 = 0.95
ema = 0.99                # TRM uses 0.999 over ~10^5 steps; 0.99 averages the last ~100 of a short run
compile = False           # ACT halting is data-dependent control flow (variable batch per supervision step)
