# Baseline for config/sudoku_trm.py: a plain bidirectional GPT with the same 2 blocks (equal parameters, minus the
# TRM's 257-parameter Q-head), same data, optimizer, schedule and EMA; one pass, no recursion.
exec(open("config/sudoku_trm.py").read())
out_dir = "out-sudoku-gpt"
recursive = False
rec_act = False
halt_max_steps = 1
compile = False
