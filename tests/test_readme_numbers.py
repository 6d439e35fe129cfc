"""The README's results tables come from results/*.json: no number without a source file, no source without its
command, no stale section. And the check itself catches an invented number."""
import json
import os
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import make_tables as mt  # noqa: E402

import bench  # noqa: E402

H100 = "NVIDIA H100 80GB HBM3"


def test_readme_results_section_is_sourced_and_current():
    text = open(os.path.join(ROOT, "README.md")).read()
    results = os.path.join(ROOT, "results")
    assert mt.check_readme(text, results) == []
    sec = mt.section(text)
    if sec is not None:
        assert sec.strip() == mt.render(results).strip(), "README results section is stale: python scripts/make_tables.py"


def _fake_results(tmp_path):
    """A results folder with one runs file and one generate file, written by bench.write_results as bench.py would."""
    res = tmp_path / "results"
    summary = dict(device_name=H100, runs=3, seeds=[0, 1, 2], target=1.47, tok_window=[100, 300],
                   best_val=bench.spread([1.4712, 1.4698, 1.4755]), reached_target=2,
                   wall_to_target_s=bench.spread([91.25, 95.5]), tok_s=bench.spread([1412345.6, 1398765.4, 1420001.0]),
                   train_time_s=bench.spread([120.5, 121.25, 119.75]), end_reasons=["max_iters"] * 3)
    prov = dict(command="x", git={"sha": "0123456789abcdef", "dirty": False}, device="cuda", device_name=H100,
                driver="550.54", cuda="12.4", versions={"torch": "2.5"})
    bench.write_results(str(res), "spine", "runs", "cuda", [0, 1, 2], {}, [], summary, prov=prov,
                        argv=["--what=runs", "--metrics=a,b,c", "--target=1.47", "--name=spine"])
    gen = dict(device_name=H100, rows=[dict(config="shakespeare_char", ctx=128, batch=16, gen_tokens=128,
                                            path="kv_cache", prefill_tok_s=812345.25, decode_tok_s=9876.7,
                                            decode_ms_per_token=1.6203, generate_tok_s=9012.75)])
    bench.write_results(str(res), "gen", "generate", "cuda", [0], {}, {}, gen, prov=prov,
                        argv=["config/shakespeare_char.py", "--what=generate", "--name=gen"])
    kern = dict(device_name=H100, rows=[dict(shape="8x4096x32x64", impl="triton[64,64]", fwd_ms=1.2345, fwdbwd_ms=4.25,
                                             y_rel_vs_cuda=0.00123, error="RuntimeError: a | b")])
    bench.write_results(str(res), "kern", "kernel", "cuda", [1234], {}, [], kern, prov=prov, argv=["--what=kernel"])
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{mt.BEGIN}\n{mt.END}\n")
    mt.update_readme(str(readme), str(res))
    return readme.read_text(), str(res)


def test_generated_tables_pass_and_invented_numbers_are_caught(tmp_path):
    text, res = _fake_results(tmp_path)
    assert mt.check_readme(text, res) == []
    rows = [line for line in mt.section(text).splitlines() if "[20" in line and line.startswith("|")]
    assert len(rows) == 3 and "| 8x4096x32x64 | triton[64,64] | 1.234 | 4.250 | 0.001230 | RuntimeError: a / b |" in rows[2]
    assert "1.4722 ± 0.0030 (1.4698–1.4755)" in rows[0] and "9,877" in rows[1]
    assert "bench.py --what=runs --metrics=a,b,c --target=1.47 --name=spine`" in text

    # a made-up number in a row: caught, naming the number and the file
    bad = text.replace("1.4722 ±", "1.4622 ±")
    problems = mt.check_readme(bad, res)
    assert len(problems) == 1 and "1.4622" in problems[0] and "spine.json" in problems[0]
    # a plausible-looking but different decode speed: caught
    assert any("9,977" in p for p in mt.check_readme(text.replace("9,877", "9,977"), res))
    # rounding is not invention: the printed value is the file's value at the printed precision
    assert mt.matches("1.47", [1.4712]) and not mt.matches("1.47", [1.4751])


def test_check_catches_missing_command_file_and_citation(tmp_path):
    text, res = _fake_results(tmp_path)
    doc = json.load(open(next(os.path.join(res, f) for f in os.listdir(res) if f.endswith("_gen.json"))))
    no_cmd = text.replace(f"`{doc['command']}`", "`python bench.py (lost)`")
    assert any("command" in p and "_gen.json" in p for p in mt.check_readme(no_cmd, res))
    row = next(line for line in text.splitlines() if "_gen.json](" in line and line.startswith("|"))
    uncited = text.replace(row, row.split("[")[0] + " |")
    assert any("cites no results file" in p for p in mt.check_readme(uncited, res))
    missing = text.replace("_gen.json)", "_gen2.json)")
    assert any("does not exist" in p for p in mt.check_readme(missing, res))
    assert mt.check_readme("no markers here | 1.234 |", res) == []
    with pytest.raises(ValueError, match="results:end"):
        mt.section(f"{mt.BEGIN}\n| 1 |\n")
