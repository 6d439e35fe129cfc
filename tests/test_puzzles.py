"""puzzles.py: Sudoku solver and generator validity, augmentations, canonical-key disjointness, addition records,
and the CLI writing prepare.py-readable record datasets. A handful of puzzles each (fast)."""
import numpy as np
import pytest

import prepare
import puzzles as P

# a classic (Wikipedia) puzzle with a unique solution
CLASSIC = [int(c) for c in
           "530070000600195000098000060800060003400803001700020006060000280000419005000080079"]


def test_solver():
    n, sol = P.solve(CLASSIC)
    assert n == 1 and P.is_valid_solution(sol, CLASSIC)
    assert sol[:9] == [5, 3, 4, 6, 7, 8, 9, 1, 2]
    bad = list(CLASSIC)
    bad[2] = 5  # repeats the 5 of cell 0 in row 0
    assert P.solve(bad)[0] == 0
    top_band_blank = [0] * 27 + sol[27:]  # its three rows can be reordered: at least 6 solutions
    assert P.solve(top_band_blank, limit=4)[0] == 4  # the count stops at limit
    assert P.solve([0] * 81, limit=2)[0] == 2  # the empty grid has many solutions; the count stops at limit
    assert not P.is_valid_solution([1] * 81)


@pytest.mark.parametrize("clues", [30, 50])
def test_generated_sudoku_valid_unique_deterministic(clues):
    seen = set()
    for i in range(3):
        puz, sol = P.make_sudoku(7, i, clues)
        assert sum(v > 0 for v in puz) == clues
        assert P.is_valid_solution(sol, puz)
        n, only = P.solve(puz, limit=2)
        assert n == 1 and only == sol  # unique, and it is the stored solution
        assert (puz, sol) == P.make_sudoku(7, i, clues)  # a pure function of (seed, index)
        seen.add(tuple(puz))
    assert len(seen) == 3


def test_augmentations_preserve_validity_and_canonical_key():
    rng = np.random.default_rng(0)
    puz, sol = P.make_sudoku(1, 0, 36)
    key = P.canonical_key(puz)
    transposed = 0
    for _ in range(6):
        pa, sa = P.augment(puz, sol, rng)
        assert P.is_valid_solution(sa, pa) and P.solve(pa)[0] == 1
        assert P.canonical_key(pa) == key
        transposed += P.canonical_key(np.asarray(pa).reshape(9, 9).T.ravel().tolist()) == key
    assert transposed == 6  # the key is transpose-invariant as well
    others = {P.canonical_key(P.make_sudoku(1, i, 36)[0]) for i in range(1, 4)}
    assert key not in others and len(others) == 3  # distinct puzzles get distinct keys


def test_sudoku_splits_disjoint_on_canonical_key():
    sp = P.sudoku_splits(seed=2, clues=55, n_train=3, n_aug=3, n_val=2, n_test=2)
    assert {k: v[0].shape for k, v in sp.items()} == {"train": (9, 81), "val": (2, 81), "test": (2, 81)}
    keys = {k: {P.canonical_key(row.tolist()) for row in x} for k, (x, _) in sp.items()}
    assert len(keys["train"]) == 3  # 3 puzzles x 3 augmentations: one key per puzzle
    assert not (keys["train"] & keys["val"]) and not (keys["train"] & keys["test"]) and not (keys["val"] & keys["test"])
    for x, y in sp.values():  # labels: the solution at blanks, -1 at clues
        assert np.all((x == 0) == (y != -1))
        for xi, yi in zip(x, y):
            full = np.where(xi == 0, yi, xi)
            assert P.is_valid_solution(full, xi)
    again = P.sudoku_splits(seed=2, clues=55, n_train=3, n_aug=3, n_val=2, n_test=2)
    assert all(np.array_equal(sp[k][0], again[k][0]) and np.array_equal(sp[k][1], again[k][1]) for k in sp)


def test_addition_records_and_disjointness():
    x, y = P.addition_record(987, 45, 3)
    assert x == [7, 8, 9, P.PLUS, 5, 4, 0, P.EQ, P.BLANK, P.BLANK, P.BLANK, P.BLANK]
    assert y == [-1] * 8 + [2, 3, 0, 1]  # 1032, least significant digit first
    sp = P.addition_splits(0, 4, n_train=20, n_val=5, n_test=5)
    num = lambda digits: sum(int(d) * 10 ** k for k, d in enumerate(digits))  # least significant first
    decode = lambda r: (num(r[:4]), num(r[5:9]))
    pairs = {k: [decode(r) for r in x] for k, (x, _) in sp.items()}
    canon = {k: {(min(p), max(p)) for p in v} for k, v in pairs.items()}
    assert len(pairs["train"]) == 40 and len(canon["train"]) == 20  # every train pair also appears swapped
    assert not (canon["train"] & canon["test"]) and not (canon["train"] & canon["val"])
    assert not (canon["val"] & canon["test"])
    for (x, y), ps in zip(sp.values(), pairs.values()):
        for yi, (a, b) in zip(y, ps):
            assert num(yi[-5:]) == a + b
    with pytest.raises(ValueError, match="digits"):
        P.addition_splits(0, 1, 100, 10, 10)


def test_cli_writes_record_dataset(tmp_path, capsys):
    P.main(["--task=sudoku", "--clues=60", "--n_train=2", "--n_aug=2", "--n_val=1", "--n_test=1",
            f"--data_dir={tmp_path}", "--workers=1"])
    meta = prepare.load_meta(str(tmp_path / "sudoku60"))
    assert meta["records"] == {"length": 81} and meta["vocab_size"] == 10 and meta["puzzle"]["clues"] == 60
    assert {k: v["records"] for k, v in meta["splits"].items()} == {"train": 4, "val": 1, "test": 1}
    P.main(["--task=addition", "--digits=3", "--n_train=10", "--n_val=2", "--n_test=0", f"--data_dir={tmp_path}"])
    assert prepare.load_meta(str(tmp_path / "addition3"))["records"] == {"length": 12}
    with pytest.raises(SystemExit) as e:
        P.main(["--task=sudoku", "--clues=10", f"--data_dir={tmp_path}"])
    assert e.value.code == 2 and "17..80" in capsys.readouterr().err
