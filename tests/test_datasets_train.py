"""`train --data` from what TRL's CLI takes: a save_to_disk folder, parquet/json/csv files, a hub id (offline here),
besides JSONL. Rows shaped like the released Math-Step-DPO-10K, including rows with an empty `rejected`."""
from __future__ import annotations

import json

import orjson
import pytest
from datasets import Dataset, DatasetDict

from conftest import run_cli
from stepdpo_cli.datasets import iter_rows
from stepdpo_cli.records import InputError, ReadStats
from stepdpo_cli.train.data import validator

pytestmark = pytest.mark.timeout(300)


def math_step_dpo_rows(n: int = 8) -> list[dict]:
    """Rows with the released dataset's columns; every fourth has an empty `rejected` (as ~1.2K released rows do)."""
    rows = []
    for i in range(n):
        a, b = i, i + 3
        rows.append({"dataset": "MATH" if i % 2 else "GSM8K", "prompt": f"What is {a}+{b}?",
                     "initial_reason_steps": "Let's think step by step.\nStep 1: We add the numbers.\nStep 2:",
                     "chosen": f" {a}+{b}={a + b}.", "rejected": "" if i % 4 == 3 else f" {a}+{b}={a + b + 1}.",
                     "full_chosen": f" {a}+{b}={a + b}.", "full_rejected": f" {a}+{b}={a + b + 1}.",
                     "answer": str(a + b)})
    return rows


def _jsonl(path, rows) -> str:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return str(path)


@pytest.fixture
def sources(tmp_path):
    rows = math_step_dpo_rows()
    saved = tmp_path / "math-step-dpo-10k"
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(saved))
    Dataset.from_list(rows).to_parquet(str(tmp_path / "rows.parquet"))
    Dataset.from_list(rows).to_csv(str(tmp_path / "rows.csv"), index=False)
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    return {"rows": rows, "jsonl": _jsonl(tmp_path / "rows.jsonl", rows), "save_to_disk": str(saved),
            "parquet": str(tmp_path / "rows.parquet"), "csv": str(tmp_path / "rows.csv"),
            "json": str(tmp_path / "rows.json")}


@pytest.mark.parametrize("kind", ["save_to_disk", "parquet", "json", "csv"])
def test_every_source_yields_the_jsonl_rows(sources, kind):
    validate = validator("step-dpo")
    expected = list(iter_rows(sources["jsonl"], validate=validate))
    got = list(iter_rows(sources[kind], validate=validate))
    if kind == "csv":  # CSV infers column types: the answer "3" comes back as 3 (train does not read it)
        expected = [{**row, "answer": int(row["answer"])} for row in expected]
        assert got == expected
        return
    assert got == expected == sources["rows"]


def test_bad_row_names_the_dataset_row_and_field(tmp_path):
    rows = math_step_dpo_rows(4)
    rows[2]["chosen"] = None  # a null cell: what a missing value is in a table
    path = tmp_path / "bad.parquet"
    Dataset.from_list(rows).to_parquet(str(path))
    with pytest.raises(InputError) as caught:
        list(iter_rows(str(path), validate=validator("step-dpo")))
    assert str(caught.value) == f"{path} row 2: field 'chosen': missing"
    stats = ReadStats()
    kept = list(iter_rows(str(path), validate=validator("step-dpo"), skip_invalid=True, stats=stats))
    assert len(kept) == 3 and stats.invalid == 1 and "row 2" in stats.errors[0]


def test_missing_split_of_a_saved_dataset_dict(sources):
    with pytest.raises(InputError, match="no split 'test' \\(has train\\)"):
        list(iter_rows(sources["save_to_disk"], split="test"))


def test_train_on_a_save_to_disk_copy(tiny_model, sources, tmp_path):
    proc = run_cli("train", "--model", tiny_model, "--data", sources["save_to_disk"], "--data-split", "train",
                   "--output", str(tmp_path / "out"), "--batch-size", "2", "--max-steps", "2", "--lr", "1e-3")
    assert proc.returncode == 0, proc.stderr.decode()
    metrics = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert abs(metrics[0]["loss"] - 0.6931) < 1e-3  # log 2: the first step's policy is the reference
    err = proc.stderr.decode()
    assert "train: 6 step-dpo rows from" in err and "skipped 2 row(s) with an empty chosen or rejected" in err
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_cli_bad_row_exits_2_with_one_line(tiny_model, tmp_path):
    rows = math_step_dpo_rows(4)
    rows[1]["prompt"] = None
    path = tmp_path / "bad"
    Dataset.from_list(rows).save_to_disk(str(path))
    proc = run_cli("train", "--model", tiny_model, "--data", str(path), "--output", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.decode().strip().splitlines()[-1].startswith(f"stepdpo: error: {path} row 1: field 'prompt'")
    assert b"Traceback" not in proc.stderr


def test_hub_id_offline_and_not_cached_is_one_clear_line(tiny_model, tmp_path):
    proc = run_cli("train", "--model", tiny_model, "--data", "xinlai/Math-Step-DPO-10K", "--output",
                   str(tmp_path / "out"),
                   env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
                        "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets")})
    assert proc.returncode == 2, proc.stderr.decode()
    lines = proc.stderr.decode().strip().splitlines()
    assert lines == ["stepdpo: error: xinlai/Math-Step-DPO-10K: field '--data': hub dataset not in the local cache "
                     "and HF_HUB_OFFLINE=1 (split 'train'); run once online or pass a local copy (save_to_disk "
                     "folder, parquet, jsonl)"]


def test_not_a_file_nor_a_hub_id(tmp_path):
    with pytest.raises(InputError, match="no such file, folder or hub dataset id"):
        list(iter_rows(str(tmp_path / "nothing.parquet")))


def test_duplicate_ids_are_refused_like_jsonl(tmp_path):
    rows = [{**row, "id": f"r{min(i, 2)}"} for i, row in enumerate(math_step_dpo_rows(4))]  # rows 2 and 3: r2
    path = tmp_path / "dup.parquet"
    Dataset.from_list(rows).to_parquet(str(path))
    with pytest.raises(InputError, match="row 3: field 'id': duplicate id 'r2', first in row 2"):
        list(iter_rows(str(path), validate=validator("step-dpo")))
