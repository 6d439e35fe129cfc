"""The README's results section, generated from results/*.json (written by bench.py), and its check.

    python scripts/make_tables.py            # rewrite README.md between the results markers
    python scripts/make_tables.py --check    # exit 1 if a README number has no source, or the section is stale

Every table row cites the results file it was read from, and the section lists each file's exact command.
check_readme() is what tests/test_readme_numbers.py runs: every number in a results-table row must equal (at the
precision printed) a value in the file that row cites, the cited file must exist, and its command must appear in
the README. A number typed in by hand is caught by the first rule; a stale section by comparing with render().
"""
import json
import math
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"

HOWTO = """\
### Reproducing these numbers on a GPU box

Every number below comes from a `results/<date>_<name>.json` file written by `bench.py`, which records the exact
command, git sha (and whether the tree was dirty), device name, driver, torch / triton / Python versions, seeds,
configs, the raw per-step or per-repeat numbers and the summary. A number belongs to the device it was measured on.
Files written since 2026-12-02 also record `git.source_digest`, computed from the source files themselves: a GPU
box's copy of `.git` can lag behind its files, and `python metrics.py --find-commit DIGEST` names the commit that
the files which ran belong to.

GPU machines are often stateless and hand back only a few small files, so one script does a whole measurement
inside one command of under 10 minutes and writes nothing but results JSON, metrics JSONL and loss-curve PNGs
(8 files at most) to an output folder. On a CUDA machine with torch installed, from the repository root:

```
bash scripts/device_spine.sh path/to/tinyshakespeare.txt OUT_DIR
```

It prepares `shakespeare_char` from that copy of the corpus (no network), trains `config/shakespeare_char.py`
unchanged for seeds 0, 1, 2 (bf16 + compile, the CUDA defaults), summarises the three runs with
`bench.py --what=runs` (best val, wall time to val 1.47, median tok/s over iterations 100–300) and times GPT
generation with `bench.py --what=generate`. To bring the results back, copy everything in `OUT_DIR` into
`results/` (the runs file's recorded command then re-runs from the repository root: it reads the
`results/<date>_shakespeare_char_metrics_s*.jsonl` files that came back with it), run `python scripts/make_tables.py`
to regenerate this section, and `python -m pytest tests/test_readme_numbers.py` to check it.
`bash scripts/device_spine.sh --smoke CORPUS OUT_DIR` runs the same pipeline on a CPU (tiny model, 20 iterations)
to test it; `tests/test_bench.py` does.
"""

NUM_RE = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?")
LINK_RE = re.compile(r"\[[^\]]*\]\((results/[^)]+\.json)\)")


# ---- formatting (the checker parses what these print) ----------------------------------------------------------
def sig(x, digits=4):
    """`digits` significant digits, thousands separated, never in exponent form."""
    if x is None:
        return "–"
    if isinstance(x, bool) or isinstance(x, int):
        return f"{x:,}"
    if x == 0 or not math.isfinite(x):
        return f"{x}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return f"{x:,.{decimals}f}"


def fixed(x, decimals):
    return "–" if x is None else f"{x:,.{decimals}f}"


def mean_std_range(s, f):
    if not s:
        return "–"
    if s["n"] == 1:
        return f(s["mean"])
    return f"{f(s['mean'])} ± {f(s['std'])} ({f(s['min'])}–{f(s['max'])})"


def cell(x):
    return str(x).replace("|", "/").replace("\n", " ") or "–"


def link(rel):
    return f"[{os.path.basename(rel)}]({rel})"


def backends(b):
    return ", ".join(f"{k}={v}" for k, v in (b or {}).items() if k not in ("device_type", "dtype", "compile"))


# ---- rendering --------------------------------------------------------------------------------------------------
def load_results(results_dir, skipped=None):
    """bench.py results files (they carry "schema"); other JSON in results/ (raw tool outputs, e.g. a
    wkv6_bench.json: convert it with `python bench.py --what=kernel --from=FILE`) is not a table source."""
    docs = []
    if not os.path.isdir(results_dir):
        return docs
    for fn in sorted(os.listdir(results_dir)):
        if fn.endswith(".json"):
            with open(os.path.join(results_dir, fn)) as f:
                doc = json.load(f)
            if isinstance(doc, dict) and "what" in doc and ("schema" in doc or doc["what"] == "gates"):
                docs.append((f"results/{fn}", doc))
            elif skipped is not None:
                skipped.append(fn)
    return docs


def git_of(doc):
    """bench.py files carry "git"; a gates file has it in each run's provenance."""
    if doc.get("git"):
        return doc["git"]
    runs = list((doc.get("runs") or {}).values())
    return (runs[0].get("provenance") or {}).get("git", {}) if runs else {}


def commit(git):
    """'git SHA[, dirty tree][; launched from SHA]': launcher_sha is the commit a device launcher sent (LAB_GIT_SHA),
    where the box's own .git lagged behind its files."""
    return (f"git {str(git.get('sha'))[:10]}{', dirty tree' if git.get('dirty') else ''}"
            f"{'; launched from ' + git['launcher_sha'] if git.get('launcher_sha') else ''}")


def gates_section(results_dir, gates):
    """gates.py --summarize's tables as they came back (one results column added), the non-PASS rows of every run,
    and the report PNGs that came back beside the file."""
    chunks = []
    for rel, d in gates:
        md = [line.rstrip() for line in d.get("summary_markdown", "").splitlines() if line.startswith("|")]
        for i, line in enumerate(md):
            if _is_separator(line):
                md[i] = line + "---|"
            elif i + 1 < len(md) and _is_separator(md[i + 1]):
                md[i] = line + " results |"
            else:
                md[i] = line + f" {link(rel)} |"
        out = "\n".join(md).replace("|\n| number", "|\n\n| number")  # the two tables, apart
        bad = [[rid, r["gate"], r["status"], cell(r["value"]), cell(r["threshold"]), link(rel)]
               for rid, run in sorted(d["runs"].items()) for r in run["rows"] if r["status"] in ("FAIL", "WARN")]
        pngs = sorted(f for f in os.listdir(results_dir)
                      if f.startswith(os.path.basename(rel)[:-5] + "_") and f.endswith(".png"))
        chunks.append(f"Seeds {', '.join(map(str, d['seeds']))}; `{d['command']}`. Status counts per gate over the "
                      "runs, then headline numbers (mean ± std over the runs):\n\n" + out +
                      "\n\nEvery WARN and FAIL, per run (value and threshold as gates.py printed them):\n\n" +
                      table(["run", "gate", "status", "value", "threshold", "results"], bad) +
                      "".join(f"\n\n![{f}](results/{f})" for f in pngs))
    return "### Validation gates (gates.py on trained checkpoints)\n\n" + "\n\n".join(chunks)


def ddp_section(docs):
    """scripts/ddp_eval.py files: one row per config (throughput, efficiency, memory, loss match)."""
    rows = []
    for rel, d in docs:
        s, lo = d["summary"], d["summary"]["loss"]
        t, mem = s["tok_s"], s["mem_peak_mb"]
        target = "" if s.get("eff_target") is None else f" (target ≥ {s['eff_target']}: {'met' if s['eff_target_met'] else 'missed'})"
        rows.append([d["name"], s["device_name"], s["world"], s["per_rank_batch"], fixed(t["per_gpu_one"], 0),
                     fixed(t["multi"], 0), fixed(t["multi_per_gpu"], 0), fixed(s["scaling_efficiency"], 3) + target,
                     f"{sig(mem['per_gpu_one'])} / {sig(mem['multi_rank0'])}",
                     f"{'yes' if lo['match'] else 'NO'}: late train Δ {fixed(lo['train_late_rel_diff'], 4)}, val Δ ≤ "
                     f"{fixed(max((e['rel_diff'] for e in lo['evals']), default=float('nan')), 4)} "
                     f"(iters {lo['first_iter']}–{lo['last_iter']})",
                     "–" if not s.get("control") else f"{fixed(s['control']['tok_s_mean'], 0)} "
                     f"({fixed(s['control']['control_vs_per_gpu'], 2)}× alone)", link(rel)])
    return ("### Multi-GPU (DDP, scripts/ddp_eval.py)\n\nOne GPU at the per-rank batch vs torchrun on N GPUs (gradient "
            "accumulation 1 per rank), medians of the logged per-step tok/s (all ranks' tokens); efficiency = "
            "N-GPU tok/s ÷ (N × one-GPU tok/s); peak memory = torch.cuda.max_memory_allocated (one GPU / rank 0). "
            "Loss match: the one-GPU run with the same global batch (the same windows, dropout 0) vs the DDP run: mean "
            "|train loss difference| over the last half of the steps and the largest eval difference, both as fractions of "
            "the loss (0.001 = 0.1%). Control: "
            "two independent one-GPU runs at the same time, one per GPU, no DDP (tok/s each, mean; and against the "
            "one-GPU run alone): what two busy processes cost each other on the host.\n\n" +
            table(["run", "device", "GPUs", "batch per rank", "one-GPU tok/s", "N-GPU tok/s", "tok/s per GPU",
                   "efficiency", "peak MiB (1 / N)", "loss match", "control: 2 × 1 GPU at once", "results"], rows))


def profile_section(docs):
    """scripts/profile_train.py files: where one compiled training step's time goes."""
    rows = []
    for rel, d in docs:
        s = d["summary"]
        fams = ", ".join(f"{k} {v['ms_per_step']:.1f}" for k, v in list(s["families"].items())[:5])
        rows.append([s["config"], s["device_name"], f"{s['T']} × {s['batch_size']}",
                     f"{backends(s['backends'])}, compile={s['backends'].get('compile')}",
                     fixed(s["wall_ms_per_step_median"], 1), fixed(s["gpu_kernel_ms_per_step"], 1),
                     fixed(s["kernel_launches_per_step"], 0),
                     "not recorded" if s.get("graph_breaks") is None else s["graph_breaks"], fams, link(rel)])
    return ("### Profiles (scripts/profile_train.py)\n\ntorch.profiler over bench.py's timed training steps (warm-up "
            "excluded); GPU kernel time summed per step and by kernel family (ms per step). Wall time includes the "
            "profiler's own host overhead.\n\n" +
            table(["config", "device", "T × batch", "backends", "wall ms/step", "GPU kernel ms/step", "launches/step",
                   "graph breaks", "GPU ms by family", "results"], rows))


def depth_key(k):
    """Depth keys in order: "fixed" (a model without recursion) first, then 1, 2, 4, ... numerically."""
    return (k != "fixed", int(k) if k.isdigit() else 0)


def recursive_section(docs):
    chunks = []
    v3 = lambda x: fixed(x, 3)  # noqa: E731
    v4 = lambda x: fixed(x, 4)  # noqa: E731
    for rel, d in docs:
        runs = d.get("sudoku_runs", {})
        rows = []
        for model, m in sorted(d.get("sudoku", {}).items()):
            mine = [r for n, r in sorted(runs.items()) if n.rsplit("-s", 1)[0] == f"sudoku-{model}"]
            ends = [r["end"] or {} for r in mine]
            rows.append([model, sig(mine[0]["num_params"]) if mine else "–", m["exact"]["n"],
                         mean_std_range(m["exact"], v3), mean_std_range(m["cell_acc"], v3),
                         mean_std_range(m["best_over_depths"], v3),
                         ", ".join(sig(e.get("tokens")) for e in ends),
                         ", ".join(fixed(e.get("train_time_s"), 1) for e in ends),
                         ", ".join(sorted({str(e.get("reason")) for e in ends})), link(rel)])
        if rows:
            chunks.append("Sudoku 9×9, held-out test puzzles: exact-solve rate and cell accuracy at the depth each model "
                          "was trained at (mean ± std (min–max) over seeds), and the best exact rate over test-time "
                          "depths; tokens, train time and end reason per seed.\n\n" +
                          table(["model", "params", "seeds", "exact solve", "cell accuracy", "best exact over depths",
                                 "tokens", "train time (s)", "ended by", "results"], rows))
            depths = sorted({k for r in runs.values() for k in (r.get("depth_eval") or {}).get("results", {})},
                            key=depth_key)
            per = [[n] + [v3(((r.get("depth_eval") or {}).get("results", {}).get(k) or {}).get("exact"))
                          for k in depths] + [link(rel)] for n, r in sorted(runs.items())]
            chunks.append("Exact-solve rate per seed against test-time depth (recursion steps):\n\n" +
                          table(["run"] + [f"depth {k}" for k in depths] + ["results"], per))
        verdict = d.get("recursion_beats_no_recursion") or {}
        if verdict:
            chunks.append(table(["rule", "held", "recursive", "no recursion", "results"],
                                [[v["rule"], v["held"], ", ".join(v3(x) for x in v["trm"]),
                                  ", ".join(v3(x) for x in v["norec"]), link(rel)] for v in verdict.values()]))
        lm = d.get("lm", {})
        if lm:
            rows = [[model, ", ".join(map(str, m["seeds"])), mean_std_range(m["best_val"], v4),
                     ", ".join(sig(t) for t in m["tokens"]), ", ".join(m["end_reasons"]), link(rel)]
                    for model, m in sorted(lm.items())]
            chunks.append(f"tiny-shakespeare char, `config/trm_8m.py` beside `config/gpt_8m.py` at equal tokens: best "
                          f"val loss of the run's evals (mean ± std (min–max) over seeds; a run named without a seed "
                          f"used train.py's default seed {d.get('default_seed')}).\n\n" +
                          table(["model", "seeds", "best val loss", "tokens", "ended by", "results"], rows))
            depths = sorted({k for m in lm.values() for k in m["depth_curve"]},
                            key=depth_key)
            curve = [[k] + [mean_std_range(m["depth_curve"].get(k), v4) for _, m in sorted(lm.items())] + [link(rel)]
                     for k in depths]
            chunks.append("Val loss against test-time depth (400 fixed val windows, seed 1337; \"fixed\" = a model "
                          "without recursion), mean ± std (min–max) over seeds:\n\n" +
                          table(["depth"] + sorted(lm) + ["results"], curve))
    return "### Recursive model (scripts/device_recursive.sh)\n\n" + "\n\n".join(chunks)


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def render(results_dir):
    docs = load_results(results_dir)
    parts = [HOWTO.rstrip()]
    by = lambda what: [(rel, d) for rel, d in docs if d.get("what") == what]  # noqa: E731
    runs = by("runs")
    if runs:
        rows = []
        for rel, d in runs:
            s = d["summary"]
            v4 = lambda x: fixed(x, 4)  # noqa: E731
            v1 = lambda x: fixed(x, 1)  # noqa: E731
            rows.append([d["name"], s["device_name"], ", ".join(str(x) for x in s["seeds"]),
                         mean_std_range(s["best_val"], v4), f"{s['reached_target']}/{s['runs']} ≤ {s['target']}",
                         mean_std_range(s["wall_to_target_s"], v1),
                         mean_std_range(s["tok_s"], lambda x: fixed(x, 0)) +
                         f" (iters {s['tok_window'][0]}–{s['tok_window'][1]})",
                         mean_std_range(s["train_time_s"], v1), ", ".join(sorted(set(map(str, s["end_reasons"])))),
                         link(rel)])
        parts.append("### Training runs\n\nBest val loss over the run's evals; wall time = training time (eval and "
                     "checkpointing excluded) at the first eval at or below the target; tok/s = median of the logged "
                     "steps in the iteration window, then mean ± std (min–max) over the runs (std: n−1); \"signal\" "
                     "in 'ended by' means a run hit its time limit and stopped early.\n\n" +
                     table(["runs", "device", "seeds", "best val loss", "reached", "wall to target (s)", "tok/s",
                            "total train time (s)", "ended by", "results"], rows))
        per_seed = [[d["name"], r["seed"], fixed(r["best_val"], 4), r["best_iter"],
                     "not reached" if r["wall_to_target_s"] is None else fixed(r["wall_to_target_s"], 1),
                     fixed(r["tok_s_median"], 0), fixed(r["train_time_s"], 1), link(rel)]
                    for rel, d in runs for r in d["raw"]]
        parts.append("Per seed (the target is the runs file's `--target`):\n\n" +
                     table(["runs", "seed", "best val loss", "at iter", "wall to target (s)", "tok/s median",
                            "train time (s)", "results"], per_seed))
    train = by("train")
    if train:
        rows = []
        for rel, d in train:
            for r in d["summary"]["rows"]:
                rows.append([r["config"], r["T"], f"{r['batch_size']} × {r['grad_accum']}",
                             f"{fixed(r['tok_s_median'], 0)} ({fixed(r['tok_s_min'], 0)}–{fixed(r['tok_s_max'], 0)})",
                             fixed(r["window_tok_s"], 0), sig(r["step_ms_median"]), sig(r["mem_peak_mb"]),
                             f"{r['backends']['dtype']}, compile={r['backends']['compile']}",
                             backends(r["backends"]), d["summary"]["device_name"], link(rel)])
        parts.append("### Training throughput (bench.py)\n\nMedian (min–max) per-step tok/s of the timed window "
                     "(warm-up excluded, data sampling included, no eval), and the window's tokens / wall time.\n\n" +
                     table(["config", "T", "batch × accum", "tok/s median (min–max)", "window tok/s", "step ms",
                            "peak MiB", "precision", "backends", "device", "results"], rows))
    gen = by("generate")
    if gen:
        rows = []
        for rel, d in gen:
            for r in d["summary"]["rows"]:
                rows.append([r["config"], r["ctx"], r["batch"], r["gen_tokens"], r["path"],
                             fixed(r["prefill_tok_s"], 0), fixed(r["decode_tok_s"], 0), sig(r["decode_ms_per_token"]),
                             fixed(r["generate_tok_s"], 0), d["summary"]["device_name"], link(rel)])
        parts.append("### Generation speed (bench.py --what=generate)\n\nPrefill = one forward over the batch × ctx "
                     "prompt; decode = single-token steps from the cache/state, sampling included; generate = "
                     "model.generate end to end (1 prefill + the decode steps). Freshly initialised weights: speed "
                     "only. Median over repeats.\n\n" +
                     table(["config", "ctx", "batch", "new tokens", "path", "prefill tok/s", "decode tok/s",
                            "decode ms/token", "generate tok/s", "device", "results"], rows))
    kern = by("kernel")
    if kern:
        chunks = []
        for rel, d in kern:
            rows = d["summary"].get("rows", [])
            keys = [k for k in (rows[0] if rows else {}) if not isinstance(rows[0][k], (dict, list))]
            chunks.append(table(keys + ["device", "results"],
                                [[sig(r[k]) if r[k] is None or isinstance(r[k], (int, float)) else cell(r[k])
                                  for k in keys] +
                                 [d["summary"]["device_name"], link(rel)] for r in rows]))
        parts.append("### Kernels (bench.py --what=kernel)\n\n" + "\n\n".join(chunks))
    gates = by("gates")
    if gates:
        parts.append(gates_section(results_dir, gates))
    ddp = by("ddp")
    if ddp:
        parts.append(ddp_section(ddp))
    prof = by("profile")
    if prof:
        parts.append(profile_section(prof))
    rec = by("recursive")
    if rec:
        parts.append(recursive_section(rec))
    if docs:
        parts.append("### Commands\n\n" + "\n".join(f"- {link(rel)}: `{d['command']}` ({commit(git_of(d))})"
                                                  for rel, d in docs))
    else:
        parts.append("No results yet.")
    return "\n\n".join(parts) + "\n"


def section(text):
    """The text between the markers, or None when the README has no results section."""
    if BEGIN not in text:
        return None
    if END not in text.split(BEGIN, 1)[1]:
        raise ValueError(f"README has {BEGIN} but no {END} after it")
    return text.split(BEGIN, 1)[1].split(END, 1)[0]


def update_readme(readme, results_dir):
    text = open(readme).read()
    if section(text) is None:
        raise SystemExit(f"error: {readme} has no {BEGIN} ... {END} markers; add them where the tables belong")
    head, rest = text.split(BEGIN, 1)
    new = head + BEGIN + "\n" + render(results_dir) + END + rest.split(END, 1)[1]
    with open(readme, "w") as f:
        f.write(new)


# ---- checking ---------------------------------------------------------------------------------------------------
def json_numbers(x, out):
    """Every number in a results file: JSON numbers, and numbers written inside strings (device names, commands)."""
    if isinstance(x, bool):
        out.append(float(x))
    elif isinstance(x, (int, float)):
        out.append(float(x))
    elif isinstance(x, str):
        out.extend(float(m.replace(",", "")) for m in NUM_RE.findall(x))
    elif isinstance(x, dict):
        for k, v in x.items():  # keys too: a depth or a context length is often a key ({"6": 1.478})
            json_numbers(k, out)
            json_numbers(v, out)
    elif isinstance(x, list):
        for v in x:
            json_numbers(v, out)
    return out


def matches(token, values):
    """Does the printed number `token` equal some value at the precision it was printed with?"""
    v = float(token.replace(",", ""))
    decimals = len(token.split(".")[1]) if "." in token else 0
    tol = 0.5 * 10 ** -decimals * (1 + 1e-9) + 1e-12
    return any(abs(x - v) <= tol for x in values)


def check_readme(text, results_dir):
    """Problems with the README's results section (empty list: all good)."""
    sec = section(text)
    if sec is None:
        return []
    problems, cache = [], {}
    lines = sec.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("|") or _is_separator(line):
            continue
        if i + 1 < len(lines) and _is_separator(lines[i + 1]):
            continue  # a table's header row
        cited = LINK_RE.findall(line)
        if not cited:
            problems.append(f"table row cites no results file: {line.strip()}")
            continue
        rel = cited[0]
        if rel not in cache:
            path = os.path.join(os.path.dirname(os.path.abspath(results_dir)), rel)
            if not os.path.exists(path):
                problems.append(f"{rel} (cited in the README) does not exist")
                cache[rel] = None
            else:
                with open(path) as f:
                    doc = json.load(f)
                cache[rel] = json_numbers(doc, [])
                if not doc.get("command") or f"`{doc['command']}`" not in text:
                    problems.append(f"the command of {rel} is not in the README: {doc.get('command')}")
        if cache[rel] is None:
            continue
        for n in NUM_RE.findall(LINK_RE.sub("", line)):
            if not matches(n, cache[rel]):
                problems.append(f"{n} in README row '{line.strip()[:80]}' is not a value in {rel}")
    return problems


def _is_separator(line):
    return line.startswith("|") and set(line.strip()) <= set("|-: ")


def main(argv):
    readme, results_dir = os.path.join(ROOT, "README.md"), os.path.join(ROOT, "results")
    if "--check" in argv:
        text = open(readme).read()
        problems = check_readme(text, results_dir)
        if section(text) is not None and section(text).strip() != render(results_dir).strip():
            problems.append("README results section is stale: run python scripts/make_tables.py")
        print("\n".join(problems) or "README results section OK")
        return 1 if problems else 0
    update_readme(readme, results_dir)
    skipped = []
    load_results(results_dir, skipped)
    print(f"rewrote the results section of {readme} from {results_dir}")
    for fn in skipped:
        hint = (f" (convert with python bench.py --what=kernel --from=results/{fn} --name=...)"
                if fn.startswith("wkv6_bench") else "")
        print(f"not a table source (raw output or a measurement that did not finish): results/{fn}{hint}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
