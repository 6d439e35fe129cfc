"""Reasoning data for the recursive model: Sudoku 9x9 and multi-digit addition, as fixed-length record datasets.

    python puzzles.py --task=sudoku --clues=45 --n_train=1000 --n_aug=50 --n_val=200 --n_test=1000
    python puzzles.py --task=addition --digits=6 --n_train=20000 --n_val=500 --n_test=2000
    python train.py config/sudoku_trm.py

Both write data/<dataset>/{train,val,test}.bin + *_labels.bin + meta.json through prepare.write_records (the
spine's record convention: input and label per position, -1 = unscored). Every split is disjoint from the others
on a *canonical key* that is invariant under the task's augmentations, so no val/test puzzle is an augmentation
of a train puzzle. Everything is a pure function of --seed (puzzle i comes from its own seeded RNG, so the worker
count does not change the data).

Sudoku: tokens 0 = blank, 1..9 = digits; 81 positions, row-major. Labels are the solution digit at blank cells
and -1 at clues (copying a clue is not reasoning). Each puzzle has exactly one solution (checked by the solver);
difficulty = the number of clues (fewer is harder; holes are dug from a random full grid in random order, a hole
kept only if the solution stays unique). Augmentations (validity preserving): digit relabelling, band and stack
permutations, row-within-band and column-within-stack permutations, transpose.

Addition: a + b with `digits`-digit operands (leading zeros), least significant digit first (the order a carry
flows), record = a '+' b '=' then digits+1 answer slots ('_'); labels = the sum's digits at the answer slots.
Augmentation: swapping the operands; canonical key = the unordered pair.
"""
import argparse
import hashlib
import os
import random
import sys
from multiprocessing import Pool

import numpy as np

import prepare

# ---------------------------------------------------------------------------------------------------- Sudoku
ROW = [i // 9 for i in range(81)]
COL = [i % 9 for i in range(81)]
BOX = [(i // 27) * 3 + (i % 9) // 3 for i in range(81)]
ALL = 0x3FE  # bits 1..9
SUDOKU_ITOS = list(".123456789")


def solve(grid, limit=2, rng=None):
    """Backtracking with bitmasks, most-constrained cell first. grid: 81 ints (0 = blank).
    Returns (number of solutions found, capped at limit; the first solution as a list or None).
    rng (random.Random): try digits in random order (random full grids)."""
    rows, cols, boxes = [0] * 9, [0] * 9, [0] * 9
    g = list(grid)
    for i, v in enumerate(g):
        if v:
            b = 1 << v
            if (rows[ROW[i]] | cols[COL[i]] | boxes[BOX[i]]) & b:
                return 0, None  # a clue repeats in a row, column or box
            rows[ROW[i]] |= b
            cols[COL[i]] |= b
            boxes[BOX[i]] |= b
    empty = [i for i in range(81) if not g[i]]
    found = [0, None]

    def search(k):
        if k == len(empty):
            found[0] += 1
            if found[1] is None:
                found[1] = list(g)
            return found[0] >= limit
        best, best_n, best_m = k, 10, 0  # pick the empty cell (among empty[k:]) with the fewest candidates
        for j in range(k, len(empty)):
            i = empty[j]
            m = ALL & ~(rows[ROW[i]] | cols[COL[i]] | boxes[BOX[i]])
            n = bin(m).count("1")
            if n < best_n:
                best, best_n, best_m = j, n, m
                if n <= 1:
                    break
        if best_n == 0:
            return False
        empty[k], empty[best] = empty[best], empty[k]
        i = empty[k]
        digits = [d for d in range(1, 10) if best_m >> d & 1]
        if rng is not None:
            rng.shuffle(digits)
        for d in digits:
            b = 1 << d
            g[i] = d
            rows[ROW[i]] |= b
            cols[COL[i]] |= b
            boxes[BOX[i]] |= b
            stop = search(k + 1)
            rows[ROW[i]] &= ~b
            cols[COL[i]] &= ~b
            boxes[BOX[i]] &= ~b
            g[i] = 0
            if stop:
                return True
        empty[k], empty[best] = empty[best], empty[k]
        return False

    search(0)
    return found[0], found[1]


def is_valid_solution(sol, puzzle=None):
    """Every row, column and box holds 1..9 exactly once, and the clues of `puzzle` are kept."""
    s = np.asarray(sol).reshape(9, 9)
    full = set(range(1, 10))
    ok = all(set(s[r]) == full for r in range(9)) and all(set(s[:, c]) == full for c in range(9))
    ok = ok and all(set(s[r:r + 3, c:c + 3].ravel()) == full for r in (0, 3, 6) for c in (0, 3, 6))
    if puzzle is not None:
        p = np.asarray(puzzle).reshape(9, 9)
        ok = ok and bool(np.all((p == 0) | (p == s)))
    return ok


def _seed(*parts):
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little")


def make_sudoku(seed, index, clues):
    """Puzzle `index` of the stream `seed`: (puzzle, solution) as lists of 81 ints, with at least `clues` clues
    (exactly `clues` unless digging more holes in this grid would break uniqueness) and one solution."""
    rng = random.Random(_seed("sudoku", seed, index))
    _, sol = solve([0] * 81, limit=1, rng=rng)
    puz = list(sol)
    order = list(range(81))
    rng.shuffle(order)
    n = 81
    for i in order:
        if n <= clues:
            break
        v, puz[i] = puz[i], 0
        if solve(puz, limit=2)[0] == 1:
            n -= 1
        else:
            puz[i] = v
    return puz, sol


def augment(puzzle, solution, rng):
    """One random validity-preserving transform applied to both grids (np.random.Generator)."""
    p, s = np.asarray(puzzle).reshape(9, 9), np.asarray(solution).reshape(9, 9)
    digits = np.concatenate([[0], rng.permutation(9) + 1])  # 0 (blank) stays 0
    rows = np.concatenate([b * 3 + rng.permutation(3) for b in rng.permutation(3)])
    cols = np.concatenate([b * 3 + rng.permutation(3) for b in rng.permutation(3)])
    transpose = rng.random() < 0.5
    out = []
    for g in (p, s):
        g = digits[g][rows][:, cols]
        if transpose:
            g = g.T
        out.append(g.reshape(81).tolist())
    return out[0], out[1]


def _relation(i, j, t):
    """Structure shared by cells i and j, in a form that row/column/band/stack permutations preserve;
    t=True reads the grid transposed (rows <-> columns, bands <-> stacks)."""
    r = (ROW[i] == ROW[j], COL[i] == COL[j], ROW[i] // 3 == ROW[j] // 3, COL[i] // 3 == COL[j] // 3)
    return (r[1], r[0], r[3], r[2]) if t else r


def canonical_key(puzzle):
    """A key shared by every augmentation of `puzzle` (digit relabelling, band/stack/row/column permutations,
    transpose): two rounds of colour refinement on the clue graph whose edges are the structural relation of two
    clues plus whether their digits are equal -- all quantities the augmentations preserve -- taken as the min over
    the two orientations. Equivalent puzzles always get equal keys, so disjoint keys guarantee that no puzzle of
    one split is an augmentation of a puzzle of another (distinct puzzles could in principle collide; that only
    drops a candidate). sha256 hex."""
    cells = [i for i in range(81) if puzzle[i]]
    keys = []
    for t in (False, True):
        rel = {(i, j): (*_relation(i, j, t), puzzle[i] == puzzle[j]) for i in cells for j in cells if i != j}
        colour = {i: 0 for i in cells}
        for _ in range(2):
            sig = {i: (colour[i], tuple(sorted((rel[i, j], colour[j]) for j in cells if j != i))) for i in cells}
            names = {s: n for n, s in enumerate(sorted(set(sig.values())))}
            colour = {i: (names[sig[i]], sig[i]) for i in cells}
            colour = {i: hashlib.sha256(repr(colour[i]).encode()).hexdigest()[:16] for i in cells}
        keys.append(tuple(sorted(colour.values())))
    return hashlib.sha256(repr(min(keys)).encode()).hexdigest()


def _sudoku_job(args):
    seed, index, clues = args
    puz, sol = make_sudoku(seed, index, clues)
    return puz, sol, canonical_key(puz)


def sudoku_records(puzzles):
    """(inputs [N,81], labels [N,81]) from (puzzle, solution) pairs: labels = solution at blanks, -1 at clues."""
    x = np.asarray([p for p, _ in puzzles], dtype=np.int64)
    s = np.asarray([s for _, s in puzzles], dtype=np.int64)
    return x, np.where(x == 0, s, -1)


# -------------------------------------------------------------------------------------------------- addition
ADD_ITOS = list("0123456789+=_")
PLUS, EQ, BLANK = 10, 11, 12


def addition_record(a, b, digits):
    """(inputs, labels) for a + b: a '+' b '=' then digits+1 blanks; least significant digit first."""
    da = [(a // 10 ** k) % 10 for k in range(digits)]
    db = [(b // 10 ** k) % 10 for k in range(digits)]
    c = a + b
    dc = [(c // 10 ** k) % 10 for k in range(digits + 1)]
    x = da + [PLUS] + db + [EQ] + [BLANK] * (digits + 1)
    y = [-1] * (2 * digits + 2) + dc
    return x, y


def addition_splits(seed, digits, n_train, n_val, n_test):
    """Pairs drawn uniformly, deduplicated on the unordered pair {a, b} (the canonical key under the operand
    swap) so splits are disjoint; train also holds every pair's swapped twin (the augmentation)."""
    if 10 ** (2 * digits) < 4 * (n_train + n_val + n_test):
        raise ValueError(f"{digits}-digit addition has too few distinct pairs for {n_train + n_val + n_test} "
                         f"problems; raise --digits or lower the counts")
    rng = np.random.default_rng(_seed("addition", seed) % 2 ** 63)
    seen, out = set(), {"test": [], "val": [], "train": []}
    for name, n in (("test", n_test), ("val", n_val), ("train", n_train)):
        while len(out[name]) < n:
            a, b = (int(v) for v in rng.integers(0, 10 ** digits, 2))
            if (min(a, b), max(a, b)) in seen:
                continue
            seen.add((min(a, b), max(a, b)))
            out[name].append((a, b))
    res = {}
    for name, pairs in out.items():
        if name == "train":
            pairs = [q for a, b in pairs for q in ((a, b), (b, a))]
        recs = [addition_record(a, b, digits) for a, b in pairs]
        res[name] = (np.asarray([r[0] for r in recs]), np.asarray([r[1] for r in recs]))
    return res


# ------------------------------------------------------------------------------------------------ splits, CLI
def sudoku_splits(seed, clues, n_train, n_aug, n_val, n_test, workers=1):
    """{split: (inputs, labels)}: test first, then val, then train, each puzzle's canonical key unseen before
    (so the splits are disjoint up to augmentation, and no split repeats a puzzle). Train holds n_aug
    augmentations of each of its n_train puzzles (the first is the puzzle itself)."""
    need = n_train + n_val + n_test
    made, keys, order = [], set(), []
    nxt = 0
    with Pool(workers) if workers > 1 else _Serial() as pool:
        while len(made) < need:
            short = need - len(made)  # a pool gets some slack for the (rare) candidates whose key repeats
            batch = range(nxt, nxt + (short if workers == 1 else max(4 * workers, short * 11 // 10)))
            nxt = batch.stop
            for puz, sol, key in pool.map(_sudoku_job, [(seed, i, clues) for i in batch]):
                if key not in keys and len(made) < need:
                    keys.add(key)
                    made.append((puz, sol))
    test, val, train = made[:n_test], made[n_test:n_test + n_val], made[n_test + n_val:]
    rng = np.random.default_rng(_seed("sudoku-aug", seed) % 2 ** 63)
    aug = []
    for puz, sol in train:
        aug.append((puz, sol))
        aug.extend(augment(puz, sol, rng) for _ in range(n_aug - 1))
    out = {"train": sudoku_records(aug), "val": sudoku_records(val)}
    if test:
        out["test"] = sudoku_records(test)
    return out


class _Serial:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, f, xs):
        return [f(x) for x in xs]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", choices=("sudoku", "addition"), required=True)
    ap.add_argument("--dataset", default=None, help="name under data_dir (default: sudoku<clues> / addition<digits>)")
    ap.add_argument("--data_dir", default="data")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n_train", type=int, default=1000)
    ap.add_argument("--n_val", type=int, default=200)
    ap.add_argument("--n_test", type=int, default=1000)
    ap.add_argument("--n_aug", type=int, default=50, help="sudoku: augmented copies per train puzzle (incl. itself)")
    ap.add_argument("--clues", type=int, default=45, help="sudoku difficulty: clues per puzzle (17..80)")
    ap.add_argument("--digits", type=int, default=6, help="addition: digits per operand")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args(argv)
    try:
        if min(a.n_train, a.n_val) < 1 or a.n_test < 0 or a.n_aug < 1:
            raise ValueError("--n_train, --n_val and --n_aug must be >= 1 and --n_test >= 0")
        if a.task == "sudoku":
            if not 17 <= a.clues <= 80:
                raise ValueError(f"--clues={a.clues}: a unique-solution 9x9 Sudoku has 17..80 clues")
            splits = sudoku_splits(a.seed, a.clues, a.n_train, a.n_aug, a.n_val, a.n_test, a.workers)
            name, itos = a.dataset or f"sudoku{a.clues}", SUDOKU_ITOS
            extra = dict(puzzle=dict(task="sudoku", clues=a.clues, seed=a.seed, n_train=a.n_train, n_aug=a.n_aug))
        else:
            if a.digits < 1:
                raise ValueError("--digits must be >= 1")
            splits = addition_splits(a.seed, a.digits, a.n_train, a.n_val, a.n_test)
            name, itos = a.dataset or f"addition{a.digits}", ADD_ITOS
            extra = dict(puzzle=dict(task="addition", digits=a.digits, seed=a.seed, n_train=a.n_train))
        if a.n_test == 0:
            splits.pop("test", None)
        meta = prepare.write_records(a.data_dir, name, splits, len(itos), itos=itos, extra_meta=extra)
    except (ValueError, prepare.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sizes = ", ".join(f"{k} {v['records']:,}" for k, v in meta["splits"].items())
    print(f"wrote {os.path.join(a.data_dir, name)}: records of {meta['records']['length']} tokens; {sizes}")


if __name__ == "__main__":
    main()
