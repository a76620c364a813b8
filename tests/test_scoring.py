"""Localizer scoring against gold first-error labels: ProcessBench's metric on a hand-computed example, the
ProcessBench loader on a local copy in its shape, and `stepdpo score-localizer` with labels or a --gold file."""
from __future__ import annotations

import json

import orjson
import pytest
from datasets import Dataset, DatasetDict

from conftest import run_cli
from stepdpo_cli.datasets import load_processbench
from stepdpo_cli.records import InputError
from stepdpo_cli.scoring import gold_from_label, score_localizer

# (ProcessBench label: 0-based first wrong step or -1, the localizer's first_error_step, its status)
CASES = [
    (1, 2, "error_found"),     # gold step 2, found 2: exact
    (2, 1, "error_found"),     # gold 3, blamed 1: early
    (1, 4, "error_found"),     # gold 2, blamed 4: late
    (0, None, "no_error"),     # gold 1, nothing found: missed
    (1, None, "undecided"),    # gold 2: undecided
    (2, 3, "error_found"),     # gold 3, found 3: exact
    (-1, None, "no_error"),    # correct, none reported
    (-1, 2, "error_found"),    # correct, false alarm
    (-1, None, "no_error"),    # correct, none reported
    (-1, None, "undecided"),   # correct: undecided
]


def labelled_records() -> list[dict]:
    return [{"id": f"pb-{i}", "problem": f"Problem {i}", "steps": ["a", "b", "c", "d"], "label": label,
             "first_error_step": step, "localize_status": status} for i, (label, step, status) in enumerate(CASES)]


def test_processbench_metric_equals_the_hand_computed_example():
    report = score_localizer(labelled_records())
    # erroneous: 6 solutions, 2 exact -> 1/3; correct: 4, 2 with no error reported -> 1/2
    # F1 = 2 * (1/3) * (1/2) / (1/3 + 1/2) = 0.4; exact-step accuracy = (2 + 2) / 10 = 0.4
    assert report["records"] == 10 and report["erroneous"] == 6 and report["correct"] == 4
    assert report["accuracy_erroneous"] == pytest.approx(1 / 3)
    assert report["accuracy_correct"] == pytest.approx(0.5)
    assert report["f1"] == pytest.approx(0.4)
    assert report["exact_step_accuracy"] == pytest.approx(0.4)
    assert report["confusion_erroneous"] == {"early": 1, "exact": 2, "late": 1, "missed": 1, "undecided": 1}
    assert report["confusion_correct"] == {"no_error": 2, "false_alarm": 1, "undecided": 1}


def test_gold_from_another_localizer_matched_by_id():
    predicted = labelled_records()
    gold = {"pb-0": 2, "pb-1": 1, "pb-6": None}  # pb-0 exact, pb-1 exact (1), pb-6 no error
    report = score_localizer(predicted, gold)
    assert report["records"] == 3 and report["unmatched"] == 7
    assert report["accuracy_erroneous"] == 1.0 and report["accuracy_correct"] == 1.0 and report["f1"] == 1.0


def test_bad_labels_are_input_errors():
    assert gold_from_label(-1) is None and gold_from_label(0) == 1
    for bad in (-2, "3", True, None):
        with pytest.raises(InputError, match="field 'label'"):
            gold_from_label(bad)
    with pytest.raises(InputError, match="pb-0: field 'label': missing"):
        score_localizer([{"id": "pb-0", "first_error_step": 1, "localize_status": "error_found"}])


def _processbench_copy(tmp_path) -> str:
    """A save_to_disk copy in ProcessBench's shape: one split per source benchmark."""
    def rows(split, n):
        return [{"id": f"{split}-{i}", "generator": "Qwen2-7B-Instruct", "problem": f"{split} problem {i}",
                 "steps": [f"step {j}" for j in range(3)], "final_answer_correct": i % 2 == 0,
                 "label": [-1, 0, 2][i % 3]} for i in range(n)]
    path = tmp_path / "ProcessBench"
    DatasetDict({"gsm8k": Dataset.from_list(rows("gsm8k", 5)), "math": Dataset.from_list(rows("math", 4))}) \
        .save_to_disk(str(path))
    return str(path)


def test_processbench_loader_on_a_local_copy(tmp_path):
    path = _processbench_copy(tmp_path)
    records = list(load_processbench(path, "math"))
    assert [r["id"] for r in records] == ["math-0", "math-1", "math-2", "math-3"]
    assert [r["label"] for r in records] == [-1, 0, 2, -1]
    assert records[0]["dataset"] == "processbench/math" and records[0]["steps"] == ["step 0", "step 1", "step 2"]
    assert len(list(load_processbench(path, "gsm8k", limit=2))) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "problem": "p", "steps": ["a"], "label": 3}) + "\n")
    with pytest.raises(InputError, match="row 0: field 'label': points past the last of 1 steps"):
        list(load_processbench(str(bad)))


def test_hub_id_offline_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(InputError, match="Qwen/ProcessBench: field '--data': hub dataset not in the local cache"):
        list(load_processbench("Qwen/ProcessBench", "gsm8k"))


def test_cli_reports_labels_and_gold_file(tmp_path):
    localized = tmp_path / "judged.jsonl"
    localized.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in labelled_records()))
    proc = run_cli("score-localizer", "-i", str(localized), "--summary", str(tmp_path / "score.json"))
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    assert report == json.loads((tmp_path / "score.json").read_text())
    assert report["f1"] == pytest.approx(0.4)
    assert "F1 (harmonic mean, ProcessBench)" in proc.stderr.decode()
    # the verifier as gold: its own output scores perfectly against itself, undecided records left out
    proc = run_cli("score-localizer", "-i", str(localized), "--gold", str(localized))
    report = json.loads(proc.stdout)
    assert report["records"] == 8 and report["exact_step_accuracy"] == 1.0
    proc = run_cli("score-localizer", "-i", str(localized), "--gold", str(tmp_path / "missing.jsonl"))
    assert proc.returncode == 2 and b"no such file" in proc.stderr
    # --gold matches by id: a gold record without one is bad input, named by file and line (was a KeyError)
    no_id = tmp_path / "no_id.jsonl"
    no_id.write_bytes(b"".join(orjson.dumps({k: v for k, v in r.items() if k != "id"}) + b"\n"
                               for r in labelled_records()))
    proc = run_cli("score-localizer", "-i", str(localized), "--gold", str(no_id))
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.count("\n") == 1 and f"{no_id}:1: field 'id'" in err, err
