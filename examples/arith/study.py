"""The study's bookkeeping (study.mk): choose LR / beta on the validation split, print a variant's train options,
and write docs/study.md (+ its plot) from the study's own eval files. Never edit the output by hand.

  python study.py choose --dir study/full --nll 1 --out study/full/chosen.json
  python study.py args study/full/chosen.json stepdpo       -> --lr 2e-5 --beta 0.1 --nll-weight 0
  python study.py report --study study --regimes "full reach" --seeds "1 2 3" --out ../../docs/study.md
  python study.py check --study study --regimes "full reach" --seeds "1 2 3" --test 2000 --out ../../docs/study.md
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import statistics
import subprocess
import sys
from collections import defaultdict

from report import per_problem, read_json, read_jsonl

LABELS = {"sft": "SFT (shipped checkpoint)", "stepdpo": "Step-DPO (self-generated chosen step)",
          "dpo": "DPO (whole solutions, same material)", "ood": "Step-DPO, OOD chosen step (verifier rewrite)",
          "nll": "Step-DPO + NLL on the chosen step", "control": "SFT on the Step-DPO rows' chosen steps",
          "r2": "Step-DPO round 2 (from round-1 Step-DPO)"}
REGIMES = {"full": "chains of 3-8 operations, the shipped checkpoint (the demo's task)",
           "reach": "chains of 4 operations only, the same checkpoint: within its reach"}
TRAINED = ("stepdpo", "dpo", "ood", "nll", "control", "r2")
# (question, model A, model B): the paired difference A - B answers it.
QUESTIONS = [("Step-DPO vs SFT", "stepdpo", "sft"), ("Step-DPO vs DPO", "stepdpo", "dpo"),
             ("Step-DPO vs the control (SFT on the same chosen steps)", "stepdpo", "control"),
             ("in-distribution vs out-of-distribution chosen steps", "stepdpo", "ood"),
             ("Step-DPO + NLL vs Step-DPO", "nll", "stepdpo"), ("round 2 vs round 1", "r2", "stepdpo")]


# ------------------------------------------------------------------------------------------------ choose / args

def choose(directory: str, nll: float) -> dict:
    """Best validation accuracy per tuned variant; ties go to the smaller LR, then the smaller beta."""
    table = []
    for path in sorted(glob.glob(os.path.join(directory, "eval", "tune_*-val.json"))):
        name = os.path.basename(path)[len("tune_"):-len("-val.json")]
        parts = name.split("_")
        summary = read_json(path) or {}
        table.append({"variant": parts[0], "lr": parts[1][2:], "beta": parts[2][1:] if len(parts) > 2 else None,
                      "accuracy": summary.get("accuracy"), "count": summary.get("count")})
    chosen = {}
    for variant in sorted({row["variant"] for row in table}):
        rows = [r for r in table if r["variant"] == variant and r["accuracy"] is not None]
        best = max(rows, key=lambda r: (r["accuracy"], -float(r["lr"]), -float(r["beta"] or 0)))
        chosen[variant] = {"lr": best["lr"], "beta": best["beta"]}
    if "stepdpo" in chosen:  # the Step-DPO variants share its values: they differ only in what the ablation changes
        for variant in ("ood", "r2"):
            chosen[variant] = dict(chosen["stepdpo"], nll_weight="0")
        chosen["nll"] = dict(chosen["stepdpo"], nll_weight=str(nll))
        chosen["stepdpo"]["nll_weight"] = "0"
    if "dpo" in chosen:
        chosen["dpo"]["nll_weight"] = "0"
    return {"chosen": chosen, "validation": table}


def train_args(chosen: dict, variant: str) -> str:
    values = chosen["chosen"][variant]
    out = [f"--lr {values['lr']}"]
    if values.get("beta") is not None:
        out.append(f"--beta {values['beta']}")
    if values.get("nll_weight") is not None:
        out.append(f"--nll-weight {values['nll_weight']}")
    return " ".join(out)


# ------------------------------------------------------------------------------------------------ statistics

def pooled(study: str, regime: str, name: str, kind: str, seeds: list[str]) -> dict[str, list[float]]:
    """Per problem id, the correctness of each seed of a variant (one entry for sft)."""
    runs = ["sft"] if name == "sft" else [f"{name}_s{s}" for s in seeds]
    field = "mean_correct" if kind == "sampled" else "correct"
    out: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        path = os.path.join(study, regime, "eval", f"{run}-{kind}.jsonl")
        for pid, value in per_problem(path, field).items():
            out[pid].append(value)
    return out


def seed_accuracy(study: str, regime: str, name: str, kind: str, seeds: list[str]) -> list[float]:
    runs = ["sft"] if name == "sft" else [f"{name}_s{s}" for s in seeds]
    out = []
    for run in runs:
        summary = read_json(os.path.join(study, regime, "eval", f"{run}-{kind}.json"))
        if summary:
            out.append(summary.get("mean_accuracy", summary["accuracy"]))
    return out


def compare(study: str, regime: str, a: str, b: str, kind: str, seeds: list[str]) -> dict:
    """A - B, paired on problems: each side's seeds averaged per problem; 95% CI over problems; per-seed values."""
    left, right = pooled(study, regime, a, kind, seeds), pooled(study, regime, b, kind, seeds)
    ids = sorted(i for i in set(left) & set(right) if left[i] and right[i])
    if len(ids) < 2:
        return {"n": len(ids)}
    diffs = [statistics.fmean(left[i]) - statistics.fmean(right[i]) for i in ids]
    mean = statistics.fmean(diffs)
    half = 1.96 * statistics.stdev(diffs) / math.sqrt(len(diffs))
    acc_a, acc_b = seed_accuracy(study, regime, a, kind, seeds), seed_accuracy(study, regime, b, kind, seeds)
    if len(acc_b) == 1:
        per_seed = [x - acc_b[0] for x in acc_a]
    else:
        per_seed = [x - y for x, y in zip(acc_a, acc_b)]
    return {"n": len(ids), "mean": mean, "half": half, "per_seed": per_seed}


def fmt_diff(d: dict) -> str:
    if d.get("n", 0) < 2:
        return "-"
    return f"{100 * d['mean']:+.2f} ± {100 * d['half']:.2f}"


def fmt_seeds(d: dict) -> str:
    return ", ".join(f"{100 * x:+.1f}" for x in d.get("per_seed", [])) or "-"


SHORT = {"sft": "SFT", "stepdpo": "Step-DPO", "dpo": "DPO", "ood": "OOD", "nll": "Step-DPO + NLL",
         "control": "the control", "r2": "round 2"}


def verdict(d: dict, a: str, b: str) -> str:
    a = SHORT.get(a, a)
    if d.get("n", 0) < 2:
        return "not measured"
    lo, hi = d["mean"] - d["half"], d["mean"] + d["half"]
    if lo > 0:
        return f"{a} is better: {fmt_diff(d)} points"
    if hi < 0:
        return f"{a} is worse: {fmt_diff(d)} points"
    bound = max(abs(lo), abs(hi))
    return f"no difference detected: {fmt_diff(d)} points (an effect larger than {100 * bound:.1f} points is ruled out)"


# ------------------------------------------------------------------------------------------------ report pieces

def right_step_mass(rectified: list[dict]) -> dict:
    """At each first-error state: the share of the policy's samples whose next step is right (rectify's verified / n)."""
    shares = [r["rectify"]["verified"] / r["rectify"]["n"] for r in rectified
              if r.get("rectify", {}).get("n") and "verified" in r.get("rectify", {})]
    if not shares:
        return {}
    return {"states": len(shares), "mean": statistics.fmean(shares), "median": statistics.median(shares),
            "any": sum(1 for s in shares if s > 0) / len(shares), "half": sum(1 for s in shares if s >= 0.5) / len(shares)}


def data_lines(directory: str, label: str) -> list[str]:
    samples = read_jsonl(os.path.join(directory, "samples.jsonl"))
    localized = read_jsonl(os.path.join(directory, "localized.jsonl"))
    rectified = read_jsonl(os.path.join(directory, "rectified.jsonl"))
    located = [r for r in localized if r.get("first_error_step")]
    hist = defaultdict(int)
    for r in located:
        hist[r["first_error_step"]] += 1
    mass = right_step_mass(rectified)
    pairs = {v: len(read_jsonl(os.path.join(directory, f"pairs_{v}.jsonl"))) for v in ("stepdpo", "dpo", "ood")}
    mass_cell = (f"{100 * mass['mean']:.1f} / {100 * mass['median']:.1f} / {100 * mass['any']:.1f} / "
                 f"{100 * mass['half']:.1f}" if mass else "-")
    return [f"| {label} | {len(samples)} | {len(located)} | "
            + ", ".join(f"{k}: {hist[k]}" for k in sorted(hist)) + f" | {mass_cell} | "
            + " / ".join(str(pairs[v]) if pairs[v] else "-" for v in ("stepdpo", "dpo", "ood")) + " |"]


def plot(study: str, regimes: list[str], seeds: list[str], png: str, variants: tuple[str, ...] = TRAINED) -> bool:
    """Paired difference vs SFT (greedy and sampled) with its 95% CI, per variant and regime."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(regimes), figsize=(5.2 * len(regimes), 3.8), squeeze=False)
    for ax, regime in zip(axes[0], regimes):
        for offset, kind, color in ((-0.15, "greedy", "tab:blue"), (0.15, "sampled", "tab:orange")):
            ys, means, halves = [], [], []
            for index, variant in enumerate(variants):
                d = compare(study, regime, variant, "sft", kind, seeds)
                if d.get("n", 0) >= 2:
                    ys.append(index + offset)
                    means.append(100 * d["mean"])
                    halves.append(100 * d["half"])
            ax.errorbar(means, ys, xerr=halves, fmt="o", color=color, capsize=3, label=kind)
        ax.axvline(0, color="grey", lw=1)
        ax.set_yticks(range(len(variants)), variants)
        ax.invert_yaxis()
        ax.set_title(f"{regime}: accuracy minus SFT (points, 95% CI)", fontsize=9)
        ax.grid(alpha=0.3, axis="x")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


def meaning(found: dict[str, dict[str, dict]], masses: dict[str, dict]) -> list[str]:
    """What the answers mean, stated from the CIs by fixed rules (written before the results were seen)."""
    def sig(regime: str, key: str) -> int:
        d = found.get(regime, {}).get(key, {})
        if d.get("n", 0) < 2:
            return 0
        return 1 if d["mean"] - d["half"] > 0 else (-1 if d["mean"] + d["half"] < 0 else 0)

    def move(regime: str, key: str) -> str:
        d = found[regime].get(key, {})
        word = {1: "up", -1: "down", 0: "no detectable change"}[sig(regime, key)]
        return word if d.get("n", 0) < 2 else f"{word} ({100 * d['mean']:+.1f} ± {100 * d['half']:.1f})"

    def both(regime: str, key: str) -> str:
        return f"greedy {move(regime, key + ' greedy')}, sampled {move(regime, key + ' sampled')}"

    def direction(regime: str, key: str) -> tuple[str, int]:
        g, s = sig(regime, key + " greedy"), sig(regime, key + " sampled")
        if g and g == s:
            return "both", g
        if g * s < 0:
            return "mixed", 0
        return ("one", g or s) if (g or s) else ("none", 0)

    # (comparison, what "A better" means, what "A worse" means, the neutral phrase)
    claims = [("stepdpo-control", "Step-DPO beat SFT on the same chosen steps: the preference term itself helps",
               "SFT on the same chosen steps did better than Step-DPO: the supervised signal in the corrected "
               "steps alone did more than the preference objective built around them",
               "Step-DPO vs SFT on the same chosen steps"),
              ("stepdpo-dpo", "Step-DPO beat whole-solution DPO on the same material",
               "whole-solution DPO did better than Step-DPO", "Step-DPO vs whole-solution DPO"),
              ("stepdpo-ood", "chosen steps in the model's own words beat the verifier's rewrites (the paper's "
               "Table 4 direction)", "the verifier's rewrites did better than self-generated chosen steps",
               "self-generated vs rewritten chosen steps"),
              ("nll-stepdpo", "adding NLL on the chosen step helped", "adding NLL on the chosen step hurt",
               "NLL on the chosen step"),
              ("r2-stepdpo", "a second round from the Step-DPO model helped further", "a second round hurt",
               "round 2 vs round 1")]
    out, control_wins, sampled_only = [], False, False
    for regime in found:
        parts = [f"Step-DPO vs SFT: {both(regime, 'stepdpo-sft')}."]
        if sig(regime, "stepdpo-sft sampled") > 0 and sig(regime, "stepdpo-sft greedy") <= 0:
            sampled_only = True
            parts.append("It sharpened the sampling distribution without improving what greedy decoding picks.")
        for key, better, worse, neutral in claims:
            kind, sign = direction(regime, key)
            if kind == "both":
                parts.append(f"On both measures {better if sign > 0 else worse} ({both(regime, key)}).")
                control_wins = control_wins or (key == "stepdpo-control" and sign < 0)
            elif kind == "one":
                parts.append(f"{neutral[0].upper() + neutral[1:]}: {both(regime, key)}; one measure only, weak "
                             f"evidence that {better if sign > 0 else worse}.")
            else:
                parts.append(f"{neutral[0].upper() + neutral[1:]}: {both(regime, key)}"
                             + (" (the measures disagree)." if kind == "mixed" else "."))
        mass = masses.get(regime) or {}
        if mass:
            parts.append(f"Right-step mass at the first-error states: {100 * mass['mean']:.0f}% of samples on "
                         f"average, some right sample at {100 * mass['any']:.0f}% of them.")
        out.append(f"- **{regime}** ({REGIMES.get(regime, regime)}): " + " ".join(parts))
    lessons = ["the method can only move probability mass the policy already puts on the right step: measure it "
               "at the first-error states before a run (rectify's `verified / n` with a step verifier, or the share "
               "of rollouts from the prefix that recover)"]
    if control_wins:
        lessons.append("run the SFT-on-chosen-steps control: a Step-DPO gain over the SFT model does not by itself "
                       "show that the preference term is what helps")
    if sampled_only:
        lessons.append("report sampled accuracy (and pass@k / majority) beside greedy: the effect can sit "
                       "entirely in the sampling distribution")
    lessons.append("compare variants on the same problems with paired CIs; a one-point effect like the paper's "
                   "needs thousands of problems and several seeds to see")
    out.append("- For someone running Step-DPO on a real model: " + "; ".join(lessons) + ".")
    return out


def overlap_line(study: str, regimes: list[str], sft_rows: str | None) -> str:
    """How many problems of each split the shipped model saw in SFT (the held-out claim, checked)."""
    if not sft_rows or not os.path.exists(sft_rows):
        return "- Overlap with the shipped model's SFT rows: not checked (no --sft-rows)."
    trained = {r["problem"] for r in read_jsonl(sft_rows)}
    cells = []
    for regime in regimes:
        for split in ("test", "val", "pool"):
            problems = [r["problem"] for r in read_jsonl(os.path.join(study, regime, "data", f"{split}.jsonl"))]
            cells.append(f"{regime} {split} {sum(1 for p in problems if p in trained)} of {len(problems)}")
    return (f"- Problems also in the shipped model's {len(trained):,} SFT rows (re-made exactly as make_sft.sh "
            "drew them): " + ", ".join(cells) + ".")


def report(study: str, regimes: list[str], seeds: list[str], out_path: str, settings: str,
           sft_rows: str | None = None) -> None:
    # The protocol's commit is the one that added study.mk; any later edit is named, so a reader can check that
    # none of them touched what was declared.
    history = subprocess.run(["git", "log", "--format=%h %ad %s", "--date=format:%Y-%m-%d %H:%M", "--", "study.mk"],
                             capture_output=True, text=True, check=False).stdout.strip().splitlines()
    commit = history[-1].split()[0] if history else "uncommitted"
    found: dict[str, dict[str, dict]] = {}
    answers, tables = [], []
    for regime in regimes:
        found[regime] = {}
        for question, a, b in QUESTIONS:
            g = compare(study, regime, a, b, "greedy", seeds)
            s = compare(study, regime, a, b, "sampled", seeds)
            found[regime][f"{a}-{b} greedy"] = g
            found[regime][f"{a}-{b} sampled"] = s
            answers.append((regime, question, a, b, g, s))
    out = ["# The miniature study: does Step-DPO beat SFT, DPO and SFT on the corrected steps?", "",
           f"Generated by `make -C examples/arith study` (`study.mk`, protocol committed in {commit} "
           f"({history[-1].split()[1] + ' ' + history[-1].split()[2] if history else '-'} UTC) before the run; "
           f"`study.py` writes this file from the study's eval files). Do not edit by hand."
           + (" Later edits to study.mk: " + "; ".join(f"{h.split()[0]} ({' '.join(h.split()[3:])})"
                                                       for h in history[:-1]) + "." if len(history) > 1 else ""), "",
           "## Answers", "",
           "Each answer is a paired difference A - B on the same held-out test problems, each side's seeds averaged "
           "per problem, with its 95% CI over problems; the seed spread lists each seed's own difference "
           "(points of accuracy).", ""]
    for regime in regimes:
        out += [f"### Regime `{regime}`: {REGIMES.get(regime, regime)}", ""]
        for reg, question, a, b, g, s in answers:
            if reg != regime:
                continue
            out.append(f"- **{question}**: greedy, {verdict(g, a, b)}; seeds {fmt_seeds(g)}. "
                       f"Sampled (mean of K samples), {verdict(s, a, b)}; seeds {fmt_seeds(s)}.")
        out.append("")
    masses = {r: right_step_mass(read_jsonl(os.path.join(study, r, "rectified.jsonl"))) for r in regimes}
    halves = sorted(100 * d["half"] for reg, _, _, _, g, _ in answers for d in (g,) if d.get("n", 0) >= 2)
    if halves:
        n_test = max(g["n"] for *_, g, _ in answers if g.get("n", 0) >= 2)
        need = math.ceil(n_test * (halves[-1] / 0.8) ** 2 / 100) * 100
        out += [f"Greedy CI half-widths over these comparisons: {halves[0]:.2f} to {halves[-1]:.2f} points on "
                f"{n_test:,} problems; {sum(1 for h in halves if h <= 0.8)} of {len(halves)} are within 0.8 points "
                f"(the widest would need about {need:,} problems). Comparisons against SFT are the widest: one "
                "deterministic SFT model against three seeds' average.", ""]
    out += ["### What it means", "", *meaning(found, masses), ""]

    out += ["## Protocol (declared in study.mk before the run)", "",
            "- Regimes: " + "; ".join(f"`{r}` = {REGIMES.get(r, r)}" for r in regimes) + ".",
            "- Data per regime (arith task, its own seed): held-out test problems, a validation split, and the pool "
            "that preference data is built from, all drawn apart from the shipped model's SFT rows.",
            overlap_line(study, regimes, sft_rows),
            "- Round 1 data: the shipped SFT model samples the pool, the verifier locates the first wrong step, the "
            "policy rectifies it (a candidate's first step must pass the verifier), `pair` builds Step-DPO rows, "
            "whole-solution DPO rows and OOD rows (chosen = the verifier's rewrite) from the same material.",
            "- Variants at one budget (steps x batch): " + "; ".join(f"`{k}` {v}" for k, v in LABELS.items()
                                                                      if k != "sft") + ".",
            "- LR and beta chosen per variant on the validation split (greedy, tuning seed); OOD, NLL and round 2 "
            "reuse Step-DPO's values; ties go to the smaller LR, then the smaller beta. Test problems are read only "
            "by the final evaluations.",
            "- Round 2: each round-1 Step-DPO seed samples the same pool again, is localized and rectified as the "
            "policy, and trains a second Step-DPO round from itself (its own reference).",
            f"- Settings: `{' '.join(settings.split())}`.", ""]

    for regime in regimes:
        directory = os.path.join(study, regime)
        tables += [f"## Regime `{regime}`", ""]
        test = read_jsonl(os.path.join(directory, "data", "test.jsonl"))
        tables += [f"Test problems: {len(test)}; validation: {len(read_jsonl(os.path.join(directory, 'data', 'val.jsonl')))}"
                   f"; pool: {len(read_jsonl(os.path.join(directory, 'data', 'pool.jsonl')))}.", "",
                   "| variant | seeds | greedy acc (per seed) | greedy vs SFT | sampled acc (per seed) | sampled vs SFT |",
                   "|---|---|---|---|---|---|"]
        for variant in ("sft",) + TRAINED:
            greedy = seed_accuracy(study, regime, variant, "greedy", seeds)
            sampled = seed_accuracy(study, regime, variant, "sampled", seeds)
            if not greedy:
                continue
            g = compare(study, regime, variant, "sft", "greedy", seeds) if variant != "sft" else {}
            s = compare(study, regime, variant, "sft", "sampled", seeds) if variant != "sft" else {}
            tables.append(f"| {LABELS[variant]} | {len(greedy)} | {100 * statistics.fmean(greedy):.2f} "
                          f"({', '.join(f'{100 * x:.1f}' for x in greedy)}) | {fmt_diff(g)} | "
                          + (f"{100 * statistics.fmean(sampled):.2f} ({', '.join(f'{100 * x:.1f}' for x in sampled)})"
                             if sampled else "-") + f" | {fmt_diff(s)} |")
        tables += ["", "Paired comparisons (A - B, points, 95% CI; seeds: each seed's own difference):", "",
                   "| comparison | greedy | seeds | sampled | seeds |", "|---|---|---|---|---|"]
        for reg, question, a, b, g, s in answers:
            if reg == regime:
                tables.append(f"| {a} - {b} | {fmt_diff(g)} | {fmt_seeds(g)} | {fmt_diff(s)} | {fmt_seeds(s)} |")
        # by chain length
        levels = sorted({r.get("level") for r in test} - {None})
        if len(levels) > 1:
            tables += ["", "Greedy accuracy by chain length (operations), seeds averaged:", "",
                       "| variant | " + " | ".join(str(lv) for lv in levels) + " |", "|---|" + "---|" * len(levels)]
            level_of = {r["id"]: r.get("level") for r in test}
            for variant in ("sft",) + TRAINED:
                values = pooled(study, regime, variant, "greedy", seeds)
                if not values:
                    continue
                cells = []
                for lv in levels:
                    per = [statistics.fmean(v) for pid, v in values.items() if level_of.get(pid) == lv]
                    cells.append(f"{100 * statistics.fmean(per):.1f}" if per else "-")
                tables.append(f"| {variant} | " + " | ".join(cells) + " |")
        # validation
        chosen = read_json(os.path.join(directory, "chosen.json")) or {}
        if chosen:
            tables += ["", "Validation (greedy accuracy on the validation split, tuning seed; chosen = *):", "",
                       "| variant | LR | beta | val acc |", "|---|---|---|---|"]
            sft_val = read_json(os.path.join(directory, "eval", "sft-val.json"))
            if sft_val:
                tables.append(f"| sft | - | - | {100 * sft_val['accuracy']:.2f} |")
            for row in chosen.get("validation", []):
                pick = chosen["chosen"].get(row["variant"], {})
                mark = "*" if (pick.get("lr"), pick.get("beta")) == (row["lr"], row["beta"]) else ""
                tables.append(f"| {row['variant']} | {row['lr']}{mark} | {row['beta'] or '-'} | "
                              f"{100 * row['accuracy']:.2f} |")
        # data
        tables += ["", "Preference data. Right-step mass = at each first-error state, the share of the policy's "
                   "samples whose next step the verifier accepts (mean / median / states with any / states with "
                   "at least half, %):", "",
                   "| data | wrong samples | first error located | first-error step | right-step mass | "
                   "pairs stepdpo / dpo / ood |", "|---|---|---|---|---|---|"]
        tables += data_lines(directory, "round 1 (SFT policy)")
        for s in seeds:
            r2 = os.path.join(directory, "r2", f"s{s}")
            if os.path.isdir(r2):
                tables += data_lines(r2, f"round 2 (stepdpo_s{s} policy)")
        # training
        tables += ["", "Training (last 10 logged steps, seeds averaged):", "",
                   "| variant | reward acc | margin | chosen reward | rejected reward |", "|---|---|---|---|---|"]
        for variant in TRAINED:
            rows = [r for s in seeds for r in read_jsonl(os.path.join(directory, f"metrics-{variant}_s{s}.jsonl"))[-10:]]

            def avg(key: str) -> str:
                values = [r[key] for r in rows if key in r]
                return f"{statistics.fmean(values):.3f}" if values else "-"
            if rows:
                tables.append(f"| {variant} | {avg('reward_accuracy')} | {avg('margin')} | {avg('chosen_reward')} | "
                              f"{avg('rejected_reward')} |")
        tables.append("")
    png = os.path.splitext(out_path)[0] + "_effects.png"
    if plot(study, regimes, seeds, png):
        out += [f"![paired differences vs SFT]({os.path.basename(png)})", ""]
    out += tables
    times = read_jsonl(os.path.join(study, "times.jsonl"))
    if times:
        by_kind: dict[str, float] = defaultdict(float)
        for t in times:
            stage = t["stage"]
            kind = "eval" if "-eval-" in stage else "train" if "-train-" in stage else "data pipeline"
            by_kind[kind] += t["seconds"]
        out += ["## Cost", "", "Job seconds (jobs ran two at a time, one thread each): "
                + ", ".join(f"{k} {v:.0f}" for k, v in by_kind.items()) + f"; total {sum(by_kind.values()):.0f}.", ""]
    with open(out_path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(out))
    print(f"wrote {out_path}", file=sys.stderr)


def check(study: str, regimes: list[str], seeds: list[str], test: int, out_path: str) -> list[str]:
    """What a finished study must hold: every eval over all TEST problems, the choice, and the report."""
    problems = []
    for regime in regimes:
        if not os.path.exists(os.path.join(study, regime, "chosen.json")):
            problems.append(f"{regime}: no chosen.json")
        runs = ["sft"] + [f"{v}_s{s}" for v in TRAINED for s in seeds]
        for run in runs:
            for kind in ("greedy", "sampled"):
                summary = read_json(os.path.join(study, regime, "eval", f"{run}-{kind}.json"))
                if summary is None or summary.get("count") != test:
                    problems.append(f"{regime}: {run}-{kind}: "
                                    + ("missing" if summary is None else f"{summary.get('count')} problems"))
    text = open(out_path, encoding="utf-8").read() if os.path.exists(out_path) else ""
    for heading in ["## Answers", "## Protocol"] + [f"**{q}**" for q, _, _ in QUESTIONS]:
        if heading not in text:
            problems.append(f"{out_path}: no {heading}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    c = commands.add_parser("choose")
    c.add_argument("--dir", required=True)
    c.add_argument("--nll", type=float, required=True)
    c.add_argument("--out", required=True)
    a = commands.add_parser("args")
    a.add_argument("chosen")
    a.add_argument("variant")
    r = commands.add_parser("report")
    r.add_argument("--study", required=True)
    r.add_argument("--regimes", required=True)
    r.add_argument("--seeds", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--settings", default="")
    r.add_argument("--sft-rows", default=None, help="the shipped model's SFT rows: each split's overlap is counted")
    k = commands.add_parser("check")
    k.add_argument("--study", required=True)
    k.add_argument("--regimes", required=True)
    k.add_argument("--seeds", required=True)
    k.add_argument("--test", type=int, required=True)
    k.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.command == "choose":
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(choose(args.dir, args.nll), handle, indent=1)
    elif args.command == "args":
        with open(args.chosen, encoding="utf-8") as handle:
            print(train_args(json.load(handle), args.variant))
    elif args.command == "check":
        problems = check(args.study, args.regimes.split(), args.seeds.split(), args.test, args.out)
        for problem in problems:
            print(f"study check: {problem}", file=sys.stderr)
        if problems:
            return 1
        print(f"study check: ok ({args.study})", file=sys.stderr)
    else:
        report(args.study, args.regimes.split(), args.seeds.split(), args.out, args.settings, args.sft_rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
