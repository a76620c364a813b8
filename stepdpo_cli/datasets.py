"""Built-in problem sets for `stepdpo eval`: GSM8K, MATH, MATH-500 and the official Step-DPO test files.

Every loader yields problem records ``{id, problem, answer, dataset, subject?, level?}`` that the stages
read like any problems.jsonl. Sources are `datasets.load_dataset` hub ids, or local copies in the same
shape (a directory, a .jsonl/.json/.parquet/.csv file, or a `save_to_disk` folder); the shape of a local
file is recognised from its columns, so `--dataset path/to/gsm8k_test.parquet` works offline.

`iter_rows` reads `train --data` the same ways (hub id + split, save_to_disk folder, parquet/json/csv, JSONL),
validating each row like a JSONL line.
"""
from __future__ import annotations

import itertools
import os
import re
from typing import Any, Callable, Iterable, Iterator

from .grading import extract_answer
from .records import InputError, ReadStats, iter_jsonl, normalize_problem, skip_or_raise

HUB_SOURCES = {
    "gsm8k": ("openai/gsm8k", ["main"]),
    "math": ("EleutherAI/hendrycks_math", ["algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                                           "number_theory", "prealgebra", "precalculus"]),
    "math500": ("HuggingFaceH4/MATH-500", [None]),
}
DATASET_NAMES = tuple(HUB_SOURCES)
_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def load_problems(name_or_path: str, split: str = "test", limit: int | None = None) -> Iterator[dict]:
    """Problem records from a named dataset (gsm8k, math, math500) or a local file/directory of one.

    `limit` keeps the first N problems (in the source's order, so runs are comparable).
    """
    if limit is not None and limit < 0:
        raise InputError("must be >= 0", field="--limit")
    # islice never pulls the record after the last one, so no further subject config is loaded.
    yield from itertools.islice(_rows(name_or_path, split), limit)


def _rows(name_or_path: str, split: str) -> Iterator[dict]:
    if name_or_path in HUB_SOURCES:
        hub_id, configs = HUB_SOURCES[name_or_path]
        for config in configs:
            table = _load(lambda: _load_dataset(hub_id, config, split), hub_id)
            yield from _convert(table, name_or_path, split, config)
        return
    if not os.path.exists(name_or_path):
        raise InputError(f"unknown dataset; use one of {', '.join(DATASET_NAMES)} or a local file or directory",
                         source=name_or_path, field="--dataset")
    table = _load(lambda: _load_local(name_or_path, split), name_or_path)
    yield from _convert(table, _name_from_path(name_or_path), split, None)


def _load_dataset(path: str, config: str | None, split: str, **kw: Any) -> Any:
    import datasets

    datasets.disable_progress_bars()  # stderr stays readable; stdout never sees it anyway
    return datasets.load_dataset(path, config, split=split, **kw)


def _load_local(path: str, split: str) -> Any:
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "dataset_info.json")) or os.path.exists(os.path.join(path, "state.json")) \
                or os.path.exists(os.path.join(path, "dataset_dict.json")):
            import datasets

            loaded = datasets.load_from_disk(path)
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise InputError(f"no split {split!r} (has {', '.join(loaded)})", source=path)
                return loaded[split]
            return loaded
        return _load_dataset(path, None, split)
    extension = next((e for e in _FILE_BUILDERS if path.endswith(e) or path.endswith(e + ".gz")), None)
    if extension is None:
        raise InputError("unsupported file type (use .jsonl, .json, .parquet or .csv)", source=path)
    return _load_dataset(_FILE_BUILDERS[extension], None, "train", data_files=path)


def _load(loader: Any, source: str, option: str = "--dataset") -> Any:
    try:
        return loader()
    except InputError:
        raise
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"cannot load dataset: {message}", source=source, field=option) from None


def _name_from_path(path: str) -> str:
    """`GSM8K_test_data.jsonl` -> gsm8k, `MATH_test_data.jsonl` -> math, otherwise the file's stem."""
    stem = os.path.basename(os.path.normpath(path)).split(".")[0].lower()
    for name in ("math500", "math-500", "gsm8k", "math"):
        if stem.startswith(name) or stem.replace("_", "-").startswith(name):
            return name.replace("-", "")
    return stem


def _level(value: Any) -> Any:
    """MATH writes "Level 3"; MATH-500 writes 3. Both become 3 so results group the same way."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(?:Level\s*)?(\d+)\s*", value)
        return int(match.group(1)) if match else value
    return value


def gsm8k_answer(solution: str) -> str:
    """The number after "####" in a GSM8K answer field, without thousands separators."""
    return solution.split("####")[-1].strip().replace(",", "")


def _convert(rows: Iterable[dict], name: str, split: str, config: str | None) -> Iterator[dict]:
    for index, row in enumerate(rows):
        row = dict(row)
        if "idx" in row and "instruction" in row:  # the official Step-DPO test files
            record = {**row, "problem": row["instruction"], "dataset": row.get("dataset", name)}
        elif "question" in row and isinstance(row.get("answer"), str) and "####" in row["answer"]:
            record = {"id": f"gsm8k/{split}/{index}", "problem": row["question"], "answer": gsm8k_answer(row["answer"]),
                      "solution": row["answer"], "dataset": "gsm8k"}
        elif "problem" in row and "solution" in row and "answer" not in row:  # hendrycks MATH
            answer = extract_answer(row["solution"])
            if answer is None:
                raise InputError("MATH solution has no final answer", source=name, line=index + 1, field="solution")
            subject = row.get("type") or config
            record = {"id": f"math/{split}/{config or 'all'}/{index}", "problem": row["problem"], "answer": answer,
                      "solution": row["solution"], "dataset": "math", "subject": subject, "level": _level(row.get("level"))}
        elif "problem" in row and "answer" in row and "subject" in row:  # MATH-500
            record = {"id": str(row.get("unique_id") or f"math500/{split}/{index}"), "problem": row["problem"],
                      "answer": row["answer"], "dataset": "math500", "subject": row["subject"],
                      "level": _level(row.get("level"))}
            if row.get("solution"):
                record["solution"] = row["solution"]
        else:  # any problems file with the usual aliases
            record = {**row, "dataset": row.get("dataset", name)}
        if "type" in record and "subject" not in record:
            record["subject"] = record["type"]
        if "level" in record:
            record["level"] = _level(record["level"])
        try:
            yield normalize_problem(record)
        except InputError as exc:
            raise InputError(exc.message, source=name, line=index + 1, field=exc.field) from None


# ---------------------------------------------------------------------------------------------- training rows

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,95}")


def is_jsonl_source(data: str) -> bool:
    """`train --data` values read line by line (line numbers in errors): stdin and .jsonl(.gz) files."""
    return data == "-" or data.endswith((".jsonl", ".jsonl.gz", ".ndjson"))


def load_rows(data: str, split: str = "train") -> Any:
    """A `datasets.Dataset` for `data`: a save_to_disk folder, a .parquet/.json/.csv file, a data directory or a
    hub dataset id (through the datasets cache; HF_HUB_OFFLINE=1 uses only what is cached). One clear
    InputError (exit 2) when it cannot be loaded."""
    if os.path.exists(data):
        return _load(lambda: _load_local(data, split), data, "--data")
    if not _HUB_ID.fullmatch(data):
        raise InputError("no such file, folder or hub dataset id (owner/name)", source=data, field="--data")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on") or \
        os.environ.get("HF_DATASETS_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        return _load_dataset(data, None, split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types; each becomes one line, exit 2
        if offline:
            raise InputError(f"hub dataset not in the local cache and HF_HUB_OFFLINE=1 (split {split!r}); "
                             "run once online or pass a local copy (save_to_disk folder, parquet, jsonl)",
                             source=data, field="--data") from None
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"cannot load hub dataset (split {split!r}): {message}", source=data,
                         field="--data") from None


def iter_rows(data: str, *, split: str = "train", validate: Callable[[dict], dict] | None = None,
              skip_invalid: bool = False, stats: ReadStats | None = None,
              log: Callable[[str], None] | None = None) -> Iterator[dict]:
    """Training rows from any `--data` source, each passed through `validate` as `records.iter_jsonl` does.

    JSONL (and stdin) go through iter_jsonl itself (errors name the line); other sources are loaded with
    `datasets` and their errors name the dataset, the 0-based row index and the field.
    """
    if is_jsonl_source(data):
        yield from iter_jsonl(data, skip_invalid=skip_invalid, stats=stats, validate=validate, log=log)
        return
    stats = stats if stats is not None else ReadStats()
    table = load_rows(data, split)
    name = data if os.path.exists(data) or split == "train" else f"{data}[{split}]"
    # CSV cannot tell an empty cell from a missing one and reads both as null; Math-Step-DPO-10K's empty
    # `rejected` strings must stay empty strings (skipped with a warning), not become "missing" errors.
    csv = data.endswith((".csv", ".csv.gz"))
    seen: dict[str, int] = {}
    for index, row in enumerate(table):
        try:
            record = {k: "" if v is None else v for k, v in row.items()} if csv else dict(row)
            if validate is not None:
                record = validate(record)
            if record.get("id") is not None:  # ids are unique as in JSONL input (resume keys on them)
                key = str(record["id"])
                if key in seen:
                    raise InputError(f"duplicate id {key!r}, first in row {seen[key]}", field="id")
                seen[key] = index
        except InputError as exc:
            skip_or_raise(InputError(exc.message, source=f"{name} row {index}", field=exc.field), skip_invalid,
                          stats, log)
            continue
        stats.read += 1
        yield record


# ---------------------------------------------------------------------------------------------- ProcessBench

PROCESSBENCH = "Qwen/ProcessBench"
PROCESSBENCH_SPLITS = ("gsm8k", "math", "olympiadbench", "omnimath")


def load_processbench(name_or_path: str = PROCESSBENCH, split: str = "gsm8k",
                      limit: int | None = None) -> Iterator[dict]:
    """ProcessBench rows (`id`, `generator`, `problem`, `steps`, `final_answer_correct`, `label` = 0-based first
    wrong step or -1) from the hub id or a local copy in its shape (save_to_disk folder, parquet, jsonl, ...),
    checked and given `dataset` = "processbench/SPLIT". `scoring.score_localizer` reads their `label`.
    ProcessBench ships no reference answers; `localize` needs an `answer` on each row."""
    from .scoring import gold_from_label

    table = load_rows(name_or_path, split) if not is_jsonl_source(name_or_path) else iter_jsonl(name_or_path)
    for index, row in enumerate(itertools.islice(table, limit)):
        record = dict(row)
        try:
            if not isinstance(record.get("problem"), str):
                raise InputError("must be a string", field="problem")
            steps = record.get("steps")
            if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
                raise InputError("must be a non-empty list of strings", field="steps")
            first = gold_from_label(record.get("label"))
            if first is not None and first > len(steps):
                raise InputError(f"points past the last of {len(steps)} steps", field="label")
            if record.get("id") is None:
                raise InputError("missing", field="id")
        except InputError as exc:
            raise InputError(exc.message, source=f"{name_or_path} row {index}", field=exc.field) from None
        record["id"] = str(record["id"])
        record.setdefault("dataset", f"processbench/{split}")
        yield record
