# Recursive-depth LM on tiny-shakespeare characters, parameter-matched to config/gpt_8m.py (same 10 blocks of
# d=256: 7.89M non-embedding parameters), same data, schedule and token budget. Layout after Huginn (Geiping et al.
# 2025, anchors.md §C.8): prelude 2 blocks -> shared core of 6 blocks in the TRM schedule -> coda 2 blocks, causal.
# Depth per batch ~ 1 + Poisson(LogNormal) with mean rec_T=2 repetitions (each: z <- core(z+y+x), y <- core(y+z)),
# gradient through the last repetition only; so training costs ~2x the GPT's FLOPs per token at the mean depth,
# and the random depth trains the model to run at other depths (set_depth; the loss-vs-depth curve).
exec(open("config/gpt_8m.py").read())
out_dir = "out-trm-8m"
recursive = True
n_layer = 10
n_prelude = 2
n_core = 6
n_coda = 2
rec_n = 1
rec_T = 2
rec_grad_last = 1
rec_depth_sampling = "lognormal_poisson"
halt_max_steps = 1
compile = False           # the per-batch random depth would recompile the graph for every new depth
