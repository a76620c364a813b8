"""The methods study's bookkeeping (methods.mk): the q-value inputs, the tuned run behind a final, docs/methods.md
from the run's own files, and the check that every method ran. Never edit the output by hand.

  python methods.py wrong -i samples.jsonl -o wrong.jsonl            the wrong samples (rolled out for Q-values)
  python methods.py merge --samples S --rolled R -o OUT              S in its order, rolled records in place
  python methods.py tuned methods/reach/chosen.json stepdpo          -> tune_stepdpo_lr2e-5_b0.5
  python methods.py report --dir methods/reach --seeds "1 2 3" --out ../../docs/methods.md
  python methods.py check --dir methods/reach --seeds "1 2 3" --test 2000 --out ../../docs/methods.md
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

from report import paired, pct, read_json, read_jsonl
from study import compare, fmt_diff, fmt_seeds, plot, pooled, seed_accuracy, verdict

METHODS = ("control", "dpo", "stepdpo", "nll", "tdpo2", "fullstep", "mcts", "qvalue", "svpo")
LABELS = {"sft": "SFT (the shipped checkpoint)", "control": "SFT on Step-DPO's chosen steps (control)",
          "dpo": "DPO (whole solutions)", "stepdpo": "Step-DPO", "nll": "Step-DPO + NLL", "tdpo2": "TDPO2 on step pairs",
          "fullstep": "Full-Step-DPO (PRM-scored pairs)", "mcts": "MCTS-DPO (tree pairs, label smoothing)",
          "qvalue": "Q-value pairs (Setlur et al., DPO)", "svpo": "SVPO (tree pairs + SFT + value head)"}
# Each method's data: (the stages that built it, in times.jsonl; the pairs file). Shared work counts for every
# method that needs it: a method's cost is what building its data from nothing takes.
DATA = {"stepdpo": (("sample", "localize", "rectify", "pair"), "pairs_stepdpo"),
        "dpo": (("sample", "localize", "rectify"), "pairs_dpo"),
        "fullstep": (("prm-sample", "prm-train", "prm-score", "pair-fullstep"), "pairs_fullstep"),
        "qvalue": (("prm-sample", "qv-localize", "pair-qvalue"), "pairs_qvalue"),
        "mcts": (("search", "pair-tree"), "pairs_tree")}
DATA_OF = {"control": "stepdpo", "nll": "stepdpo", "tdpo2": "stepdpo", "svpo": "mcts"}
SECTIONS = ("## What it found", "## Protocol", "## Methods", "## Inference-time selectors", "## Data and cost",
            "## Validation")


# ------------------------------------------------------------------------------------------------ inputs

def wrong(src: str, dst: str) -> int:
    rows = [r for r in read_jsonl(src) if r.get("correct") is False]
    with open(dst, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)
    return len(rows)


def merge(samples: str, rolled: str, dst: str) -> None:
    """Every sample in its order (a problem's samples stay together), a rolled-out record in place of its own."""
    by_id = {r["id"]: r for r in read_jsonl(rolled)}
    with open(dst, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(by_id.get(r["id"], r)) + "\n" for r in read_jsonl(samples))


def tuned_name(chosen: dict, method: str) -> str:
    values = chosen["chosen"][method]
    return f"tune_{method}_lr{values['lr']}" + (f"_b{values['beta']}" if values.get("beta") is not None else "")


# ------------------------------------------------------------------------------------------------ cost

def cpu_seconds(times: list[dict], stage: str) -> float:
    """The stage's CPU seconds (its last run: a rerun after an interruption replaces the partial one)."""
    found = [t.get("cpu", t["seconds"]) for t in times if t["stage"] == stage]
    return found[-1] if found else 0.0


def data_cost(directory: str, times: list[dict], method: str) -> dict:
    stages, pairs_name = DATA[DATA_OF.get(method, method)]
    tokens = 0
    if "sample" in stages:
        tokens += sum(r["generation"]["num_tokens"] for r in read_jsonl(os.path.join(directory, "samples.jsonl")))
        tokens += sum(r.get("rectify", {}).get("generated_tokens", 0)
                      for r in read_jsonl(os.path.join(directory, "rectified.jsonl")))
    if "prm-sample" in stages:
        tokens += sum(r["generation"]["num_tokens"] for r in read_jsonl(os.path.join(directory, "prm_samples.jsonl")))
    if "qv-localize" in stages:
        tokens += sum(r.get("rollout_tokens", 0) for r in read_jsonl(os.path.join(directory, "qv_wrong_rolled.jsonl")))
    if "search" in stages:
        tokens += sum(r["search"]["generated_tokens"] for r in read_jsonl(os.path.join(directory, "trees.jsonl")))
    pairs = read_jsonl(os.path.join(directory, f"{pairs_name}.jsonl"))
    return {"tokens": tokens, "cpu": sum(cpu_seconds(times, s) for s in stages), "pairs": len(pairs),
            "problems": len({p.get("problem_id", p.get("prompt")) for p in pairs}), "file": pairs_name}


def train_cpu(times: list[dict], method: str, seeds: list[str], chosen: dict) -> float | None:
    """Mean CPU seconds of one final's training (the tuning seed's final is its tuning run)."""
    values = []
    for seed in seeds:
        value = cpu_seconds(times, f"train-{method}_s{seed}")
        if not value and method in chosen.get("chosen", {}):
            value = cpu_seconds(times, f"train-{tuned_name(chosen, method)}")
        if value:
            values.append(value)
    return statistics.fmean(values) if values else None


# ------------------------------------------------------------------------------------------------ report

def report(directory: str, seeds: list[str], out_path: str, settings: str) -> None:
    study, regime = os.path.dirname(directory.rstrip("/")), os.path.basename(directory.rstrip("/"))
    times = read_jsonl(os.path.join(study, "times.jsonl"))
    chosen = read_json(os.path.join(directory, "chosen.json")) or {}
    test = read_jsonl(os.path.join(directory, "data", "test.jsonl"))
    acc = {(m, k): seed_accuracy(study, regime, m, k, seeds) for m in ("sft",) + METHODS for k in ("greedy", "sampled")}
    vs_sft = {(m, k): compare(study, regime, m, "sft", k, seeds) for m in METHODS for k in ("greedy", "sampled")}
    vs_control = {(m, k): compare(study, regime, m, "control", k, seeds) for m in METHODS if m != "control"
                  for k in ("greedy", "sampled")}
    cost = {m: data_cost(directory, times, m) for m in METHODS}
    train_s = {m: train_cpu(times, m, seeds, chosen) for m in METHODS}

    def mean_acc(m: str, k: str) -> float:
        return statistics.fmean(acc[(m, k)]) if acc[(m, k)] else float("nan")

    def real(d: dict) -> bool:
        return d.get("n", 0) >= 2 and abs(d["mean"]) > d["half"]

    out = ["# The step-level methods side by side", "",
           "Generated by `make -C examples/arith methods` (methods.mk, methods.py) from the run's own eval files; "
           "never edited by hand.", f"Settings: `{' '.join(settings.split())}`.", ""]
    # ---- the answer first
    best = {k: max(METHODS, key=lambda m: mean_acc(m, k)) for k in ("greedy", "sampled")}
    out += ["## What it found", ""]
    for k in ("greedy", "sampled"):
        m = best[k]
        d, c = vs_sft[(m, k)], vs_control.get((m, k), {})
        out.append(f"- Best {k}: **{LABELS[m]}**, {pct(mean_acc(m, k))}% (SFT {pct(mean_acc('sft', k))}%); vs SFT "
                   f"{fmt_diff(d)} points" + (f", vs the control {fmt_diff(c)}" if c else "") + f"; its data took "
                   f"{cost[m]['tokens']:,} generated tokens and {cost[m]['cpu']:.0f} CPU s, training "
                   f"{(train_s[m] or 0):.0f} CPU s per seed.")
    for k in ("greedy", "sampled"):
        better = [m for m in METHODS if real(vs_sft[(m, k)]) and vs_sft[(m, k)]["mean"] > 0]
        worse = [m for m in METHODS if real(vs_sft[(m, k)]) and vs_sft[(m, k)]["mean"] < 0]
        out.append(f"- Real differences vs SFT ({k}, 95% CI excludes 0): better: {', '.join(better) or 'none'}; "
                   f"worse: {', '.join(worse) or 'none'}; the rest are within noise.")
        beat = [m for m in METHODS if m != "control" and real(vs_control[(m, k)]) and vs_control[(m, k)]["mean"] > 0]
        out.append(f"- Methods that beat the control ({k}): {', '.join(beat) or 'none'}.")
    select = read_json(os.path.join(directory, "eval", "select-prm.json")) or {}
    if select.get("selectors"):
        sel = select["selectors"]
        top = max(sel, key=lambda s: sel[s].get("accuracy", 0))
        sft_greedy = {i: v[0] for i, v in pooled(study, regime, "sft", "greedy", seeds).items()}
        picked = {r["id"]: float(r["selections"][top]["correct"])
                  for r in read_jsonl(os.path.join(directory, "eval", "select-prm.jsonl"))}
        out.append(f"- At inference with the SFT checkpoint, the best selector over {select['settings']['n']} samples "
                   f"at T={select['settings'].get('temperature')} is {top} ({pct(sel[top]['accuracy'])}%): "
                   f"{fmt_diff(paired(sft_greedy, picked))} points against its greedy decoding "
                   f"({pct(mean_acc('sft', 'greedy'))}%).")
    out.append("")

    # ---- protocol
    out += ["## Protocol", "", "Declared in methods.mk before the run, repeated here:", ""]
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "methods.mk"), encoding="utf-8") as handle:
        header = []
        for line in handle:
            if not line.startswith("#"):
                break
            header.append(line[2:].rstrip())
    out += ["```"] + header[2:] + ["```", ""]
    out.append(f"{len(test)} test problems; seeds {', '.join(seeds)}; every difference is paired over the same "
               "problems, each side's seeds averaged per problem, with a 95% CI over problems.")
    out.append("")

    # ---- methods table
    out += ["## Methods", "",
            "Greedy and sampled (mean over K samples) accuracy on the test problems, seeds averaged; per-seed "
            "differences vs SFT in brackets. Cost: the method's data (generated tokens, CPU seconds) and one seed's "
            "training (CPU seconds). Gain per CPU-hour = greedy points over SFT per hour of data + training CPU.", "",
            "| method | greedy | vs SFT [per seed] | vs control | sampled | vs SFT | vs control | data tokens | "
            "data CPU s | train CPU s | greedy gain per CPU-h |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    out.append(f"| {LABELS['sft']} | {pct(mean_acc('sft', 'greedy'))} | — | — | {pct(mean_acc('sft', 'sampled'))} | "
               "— | — | 0 | 0 | 0 | — |")
    for m in METHODS:
        if not acc[(m, "greedy")]:
            continue
        g, s = vs_sft[(m, "greedy")], vs_sft[(m, "sampled")]
        gc, sc = vs_control.get((m, "greedy"), {}), vs_control.get((m, "sampled"), {})
        hours = (cost[m]["cpu"] + (train_s[m] or 0)) / 3600
        gain = f"{100 * g['mean'] / hours:+.1f}" if g.get("n", 0) >= 2 and hours else "-"
        out.append(f"| {LABELS[m]} | {pct(mean_acc(m, 'greedy'))} | {fmt_diff(g)} [{fmt_seeds(g)}] | "
                   f"{fmt_diff(gc) if gc else '—'} | {pct(mean_acc(m, 'sampled'))} | {fmt_diff(s)} | "
                   f"{fmt_diff(sc) if sc else '—'} | {cost[m]['tokens']:,} | {cost[m]['cpu']:.0f} | "
                   f"{(train_s[m] or 0):.0f} | {gain} |")
    out.append("")
    png = os.path.splitext(out_path)[0] + "_effects.png"
    if plot(study, [regime], seeds, png, METHODS):
        out += [f"![paired differences vs SFT]({os.path.basename(png)})", ""]
    out += ["Verdicts, greedy:", ""]
    for m in METHODS:
        out.append(f"- {LABELS[m]} vs SFT: {verdict(vs_sft[(m, 'greedy')], LABELS[m], 'sft')}" + (
            f"; vs the control: {verdict(vs_control[(m, 'greedy')], LABELS[m], 'control')}" if m != "control" else ""))
    out.append("")

    # ---- selectors
    out += ["## Inference-time selectors", "",
            "The SFT checkpoint on the same test problems (SVPO's value beam search: the seed-"
            f"{seeds[0]} SVPO model with its own head). Selectors read the same samples; beam searches generate "
            "their own. Paired differences vs SFT greedy (95% CI).", "",
            "| method | accuracy | vs SFT greedy | generated tokens | CPU s |", "|---|---|---|---|---|"]
    sft_greedy = pooled(study, regime, "sft", "greedy", seeds)
    base = {i: v[0] for i, v in sft_greedy.items()}
    rows = [("greedy", base, (read_json(os.path.join(directory, "eval", "sft-greedy.json")) or {}).get("tokens"),
             cpu_seconds(times, "eval-sft-greedy"))]
    sel_rows = read_jsonl(os.path.join(directory, "eval", "select-prm.jsonl"))
    if sel_rows:
        k = select["settings"]["n"]
        rows.append((f"mean of {k} samples", {r["id"]: float(r["mean_correct"]) for r in sel_rows}, select["tokens"],
                     cpu_seconds(times, "eval-select-prm")))
        for name in sel_rows[0]["selections"]:
            rows.append((f"{name} ({k} samples{'' if name == 'majority' else ', fullstep PRM'})",
                         {r["id"]: float(r["selections"][name]["correct"]) for r in sel_rows}, select["tokens"],
                         cpu_seconds(times, "eval-select-prm")))
    for name, label in (("beam-prm", "PRM step beam search"), ("beam-value", "SVPO value-guided beam search")):
        summary = read_json(os.path.join(directory, "eval", f"{name}.json"))
        if summary:
            label += f" (width {summary['settings'].get('beam_width')}, expand {summary['settings'].get('expand')})"
            rows.append((label, {r["id"]: float(r["correct"]) for r in
                                 read_jsonl(os.path.join(directory, "eval", f"{name}.jsonl"))},
                         summary.get("tokens"), cpu_seconds(times, f"eval-{name}")))
    for label, values, tokens, secs in rows:
        if values:
            d = paired(base, values)
            out.append(f"| {label} | {pct(statistics.fmean(values.values()))} | "
                       f"{'—' if values is base else fmt_diff(d)} | {tokens if tokens is not None else '-'} | "
                       f"{secs:.0f} |")
    out.append("")

    # ---- data
    out += ["## Data and cost", "",
            "Each method's training rows and what building them from nothing took (shared stages count for every "
            "method that needs them). Pairs per 1,000 generated tokens compares the pair builders.", "",
            "| data | used by | rows | problems | generated tokens | rows per 1k tokens | CPU s |",
            "|---|---|---|---|---|---|---|"]
    for m, (stages, name) in DATA.items():
        c = cost[m]
        users = ", ".join([m] + [u for u, d in DATA_OF.items() if d == m])
        per_k = f"{1000 * c['pairs'] / c['tokens']:.2f}" if c["tokens"] else "-"
        out.append(f"| {name} ({' + '.join(stages)}) | {users} | {c['pairs']} | {c['problems']} | {c['tokens']:,} | "
                   f"{per_k} | {c['cpu']:.0f} |")
    by_kind: dict[str, float] = {}
    for t in times:
        kind = "eval" if t["stage"].startswith("eval-") else "train" if t["stage"].startswith("train-") else "data"
        by_kind[kind] = by_kind.get(kind, 0.0) + t.get("cpu", t["seconds"])
    out += ["", "CPU seconds of the whole run: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(by_kind.items()))
            + f"; total {sum(by_kind.values()):.0f}.", ""]

    # ---- validation
    out += ["## Validation", "", "Greedy accuracy on the validation split, tuning seed; chosen = *.", "",
            "| method | LR | beta | val acc |", "|---|---|---|---|"]
    sft_val = read_json(os.path.join(directory, "eval", "sft-val.json"))
    if sft_val:
        out.append(f"| sft | - | - | {pct(sft_val['accuracy'])} |")
    for row in chosen.get("validation", []):
        pick = chosen["chosen"].get(row["variant"], {})
        mark = "*" if (pick.get("lr"), pick.get("beta")) == (row["lr"], row["beta"]) else ""
        out.append(f"| {row['variant']} | {row['lr']}{mark} | {row['beta'] or '-'} | {pct(row['accuracy'])} |")
    out.append("")
    with open(out_path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(out))
    print(f"wrote {out_path}", file=sys.stderr)


def check(directory: str, seeds: list[str], test: int, out_path: str) -> list[str]:
    """What a finished run must hold: every method and seed over all TEST problems, the selectors, the sections."""
    problems = []
    if not os.path.exists(os.path.join(directory, "chosen.json")):
        problems.append("no chosen.json")
    names = [("sft", k) for k in ("greedy", "sampled")] + [
        (f"{m}_s{s}", k) for m in METHODS for s in seeds for k in ("greedy", "sampled")] + [
        ("select-prm", None), ("beam-prm", None), ("beam-value", None)]
    for name, kind in names:
        file = f"{name}-{kind}.json" if kind else f"{name}.json"
        summary = read_json(os.path.join(directory, "eval", file))
        if summary is None or summary.get("count") != test:
            problems.append(f"{file}: " + ("missing" if summary is None else f"{summary.get('count')} problems"))
    for m in DATA:
        if not read_jsonl(os.path.join(directory, f"{DATA[m][1]}.jsonl")):
            problems.append(f"{DATA[m][1]}.jsonl: no rows")
    text = open(out_path, encoding="utf-8").read() if os.path.exists(out_path) else ""
    problems += [f"{out_path}: no {heading}" for heading in SECTIONS if heading not in text]
    problems += [f"{out_path}: no row for {LABELS[m]}" for m in METHODS if f"| {LABELS[m]} |" not in text]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    w = commands.add_parser("wrong")
    w.add_argument("-i", required=True)
    w.add_argument("-o", required=True)
    g = commands.add_parser("merge")
    g.add_argument("--samples", required=True)
    g.add_argument("--rolled", required=True)
    g.add_argument("-o", required=True)
    t = commands.add_parser("tuned")
    t.add_argument("chosen")
    t.add_argument("method")
    for name in ("report", "check"):
        c = commands.add_parser(name)
        c.add_argument("--dir", required=True)
        c.add_argument("--seeds", required=True)
        c.add_argument("--out", required=True)
        c.add_argument("--settings", default="")
        c.add_argument("--test", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "wrong":
        print(f"methods: {wrong(args.i, args.o)} wrong samples", file=sys.stderr)
    elif args.command == "merge":
        merge(args.samples, args.rolled, args.o)
    elif args.command == "tuned":
        print(tuned_name(read_json(args.chosen), args.method))
    elif args.command == "report":
        report(args.dir, args.seeds.split(), args.out, args.settings)
    else:
        problems = check(args.dir, args.seeds.split(), args.test, args.out)
        for problem in problems:
            print(f"methods check: {problem}", file=sys.stderr)
        if problems:
            return 1
        print(f"methods check: ok ({args.dir})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
