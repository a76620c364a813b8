"""Scoring a step localizer against gold first-error labels (ProcessBench's metric, and more).

Gold comes from a record's `label` (ProcessBench's shape: 0-based index of the first wrong step, -1 when every
step is right) or from another localizer's output taken as the reference (e.g. the arith demo's exact
verifier). Predictions are `localize`'s `first_error_step` (1-based, null = none) and `localize_status`.

The report: accuracy on erroneous solutions (the first wrong step found exactly), accuracy on correct ones
(no error reported), their harmonic mean (ProcessBench's F1), exact-step accuracy over all solutions, and the
confusion of the erroneous ones: early (an earlier step blamed), exact, late, missed (no error reported),
undecided; of the correct ones: no error, false alarm, undecided.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from .records import InputError

UNDECIDED = "undecided"


def gold_from_label(label: Any) -> int | None:
    """ProcessBench `label` (0-based first wrong step, -1 = none) -> 1-based first error step or None."""
    if isinstance(label, bool) or not isinstance(label, int) or label < -1:
        raise InputError("must be an integer >= -1 (index of the first wrong step, -1 when none)", field="label")
    return None if label == -1 else label + 1


def predicted_step(record: dict) -> int | None | str:
    """A localized record's answer: a 1-based step, None (no error) or "undecided"."""
    status = record.get("localize_status")
    step = record.get("first_error_step")
    if status == UNDECIDED or (status is None and "first_error_step" not in record):
        return UNDECIDED
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 1):
        raise InputError("must be a positive integer or null", field="first_error_step")
    return step


@dataclass
class LocalizerScore:
    """Counts of (gold, predicted) outcomes; `report()` turns them into the metrics."""
    erroneous: dict[str, int] = field(default_factory=lambda: {"early": 0, "exact": 0, "late": 0, "missed": 0,
                                                               UNDECIDED: 0})
    correct: dict[str, int] = field(default_factory=lambda: {"no_error": 0, "false_alarm": 0, UNDECIDED: 0})

    def add(self, gold: int | None, predicted: int | None | str) -> None:
        if gold is None:
            key = UNDECIDED if predicted == UNDECIDED else ("no_error" if predicted is None else "false_alarm")
            self.correct[key] += 1
        elif predicted == UNDECIDED:
            self.erroneous[UNDECIDED] += 1
        elif predicted is None:
            self.erroneous["missed"] += 1
        else:
            self.erroneous["early" if predicted < gold else "late" if predicted > gold else "exact"] += 1

    def report(self) -> dict:
        n_err, n_ok = sum(self.erroneous.values()), sum(self.correct.values())
        acc_err = self.erroneous["exact"] / n_err if n_err else None
        acc_ok = self.correct["no_error"] / n_ok if n_ok else None
        f1 = (2 * acc_err * acc_ok / (acc_err + acc_ok) if acc_err is not None and acc_ok is not None
              and acc_err + acc_ok > 0 else (0.0 if acc_err is not None and acc_ok is not None else None))
        total = n_err + n_ok
        return {"records": total, "erroneous": n_err, "correct": n_ok,
                "accuracy_erroneous": acc_err, "accuracy_correct": acc_ok, "f1": f1,
                "exact_step_accuracy": (self.erroneous["exact"] + self.correct["no_error"]) / total if total else None,
                "confusion_erroneous": dict(self.erroneous), "confusion_correct": dict(self.correct)}


def score_localizer(records: Iterable[dict], gold: dict[str, int | None] | None = None) -> dict:
    """ProcessBench's report for localized `records`. Gold: each record's `label`, or `gold[id]` (1-based step
    or None) when given; records whose id is not in `gold` are skipped and counted as `unmatched`."""
    score, unmatched = LocalizerScore(), 0
    for index, record in enumerate(records):
        try:
            if gold is not None:
                if str(record.get("id")) not in gold:
                    unmatched += 1
                    continue
                truth = gold[str(record["id"])]
            elif "label" in record:
                truth = gold_from_label(record["label"])
            else:
                raise InputError("missing: a gold first-error label (ProcessBench's shape), or pass --gold FILE",
                                 field="label")
            score.add(truth, predicted_step(record))
        except InputError as exc:
            raise InputError(exc.message, source=str(record.get("id", f"record {index}")), field=exc.field) from None
    report = score.report()
    if gold is not None:
        report["unmatched"] = unmatched
    return report


def gold_steps(records: Iterable[dict]) -> dict[str, int | None]:
    """Gold labels from a reference localizer's output: id -> first_error_step; undecided records are left out."""
    out: dict[str, int | None] = {}
    for record in records:
        predicted = predicted_step(record)
        if predicted != UNDECIDED:
            out[str(record["id"])] = predicted  # type: ignore[assignment]
    return out


def report_rows(report: dict) -> list[dict]:
    """The report as table rows for the log (percentages)."""
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    rows = [{"metric": "accuracy on erroneous (exact first error)", "value": pct(report["accuracy_erroneous"]),
             "n": report["erroneous"]},
            {"metric": "accuracy on correct (no error reported)", "value": pct(report["accuracy_correct"]),
             "n": report["correct"]},
            {"metric": "F1 (harmonic mean, ProcessBench)", "value": pct(report["f1"]), "n": report["records"]},
            {"metric": "exact-step accuracy (all)", "value": pct(report["exact_step_accuracy"]),
             "n": report["records"]}]
    for name, count in report["confusion_erroneous"].items():
        rows.append({"metric": f"erroneous: {name}", "value": str(count), "n": report["erroneous"]})
    for name, count in report["confusion_correct"].items():
        rows.append({"metric": f"correct: {name}", "value": str(count), "n": report["correct"]})
    return rows

