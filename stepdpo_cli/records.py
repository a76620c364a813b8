"""JSONL records: streaming reads with line-accurate errors, per-record flushed writes, ids, aliases, resume.

Every stage reads an iterator of dicts and yields dicts; this module is the only place that touches
the bytes on disk, so the exit-code and "nothing finished is lost" rules live here once.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import sys
from dataclasses import dataclass, field
from typing import IO, Any, Iterable, Iterator

import orjson

PROBLEM_ALIASES = ("problem", "prompt", "question", "instruction")


class InputError(Exception):
    """Bad input: the CLI prints `str(self)` on one line and exits with status 2."""

    def __init__(self, message: str, *, source: str = "", line: int | None = None, field: str | None = None):
        self.source, self.line, self.field, self.message = source, line, field, message
        where = source or "<input>"
        if line is not None:
            where += f":{line}"
        if field:
            where += f": field '{field}'"
        super().__init__(f"{where}: {message}")


@dataclass
class ReadStats:
    read: int = 0
    invalid: int = 0
    skipped_done: int = 0
    errors: list[str] = field(default_factory=list)


def _open_text(path: str | None) -> tuple[IO[bytes], str]:
    if path is None or path == "-":
        return sys.stdin.buffer, "<stdin>"
    if not os.path.exists(path):
        raise InputError("no such file", source=path)
    try:
        raw: IO[bytes] = open(path, "rb")
    except OSError as exc:  # a directory, no permission: the user's input, not our failure
        raise InputError(f"cannot read: {exc.strerror or exc}", source=path) from None
    if path.endswith(".gz"):
        raw = gzip.open(raw, "rb")  # type: ignore[assignment]
    return raw, path


def iter_jsonl(path: str | None = None, *, skip_invalid: bool = False, stats: ReadStats | None = None,
               validate: Any = None, log: Any = None) -> Iterator[dict]:
    """Yield the JSON objects of a JSONL file (or stdin; `.gz` works), one per non-blank line.

    `validate(record) -> record` may raise InputError(field=...); the line number and source are filled in.
    With `skip_invalid`, bad lines are counted in `stats` and reported through `log` instead of raising.
    """
    stats = stats if stats is not None else ReadStats()
    handle, source = _open_text(path)
    try:
        for number, line in enumerate(handle, start=1):
            if number == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]  # a UTF-8 byte-order mark (editors on Windows write one)
            if not line.strip():
                continue
            try:
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise InputError(f"bad JSON ({exc.args[0].split(':')[0]})") from None
                if not isinstance(record, dict):
                    raise InputError(f"expected a JSON object, got {type(record).__name__}")
                if validate is not None:
                    record = validate(record)
            except InputError as exc:
                error = InputError(exc.message, source=source, line=number, field=exc.field)
                if not skip_invalid:
                    raise error from None
                stats.invalid += 1
                stats.errors.append(str(error))
                if log is not None:
                    log(f"skipped invalid record: {error}")
                continue
            stats.read += 1
            yield record
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InputError(f"cannot read: {exc}", source=source) from None
    finally:
        if handle is not sys.stdin.buffer:
            handle.close()


def dumps(record: dict) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"


class RecordWriter:
    """Writes JSONL to stdout or a file, flushing after every record (or group of records).

    An interrupted run leaves every finished line intact. With `resume`, an existing file is kept:
    a torn last line is cut off and the ids already present are exposed as `done_ids`.
    """

    def __init__(self, path: str | None = None, *, resume: bool = False):
        self.path = None if path in (None, "-") else path
        self.done_ids: set[str] = set()
        self.written = 0
        if self.path is None:
            self._handle: IO[bytes] = sys.stdout.buffer
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        if resume and os.path.exists(self.path):
            self.done_ids = _repair_and_collect_ids(self.path)
            self._handle = open(self.path, "ab")
        else:
            self._handle = open(self.path, "wb")

    def write(self, record: dict) -> None:
        self.write_many([record])

    def write_many(self, records: Iterable[dict]) -> None:
        """One write call for a group (e.g. all samples of one problem), so a kill never splits it."""
        data = b"".join(dumps(r) for r in records)
        if not data:
            return
        self._handle.write(data)
        self._handle.flush()
        self.written += data.count(b"\n")

    def close(self) -> None:
        if self.path is not None and not self._handle.closed:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _repair_and_collect_ids(path: str) -> set[str]:
    """Cut a torn (unterminated or unparsable) last line and return the ids of the complete lines."""
    ids: set[str] = set()
    good_end = 0
    with open(path, "rb") as handle:
        offset = 0
        for line in handle:
            end = offset + len(line)
            if not line.endswith(b"\n"):
                break
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                break
            if isinstance(record, dict) and "id" in record:
                ids.add(str(record["id"]))
            good_end = end
            offset = end
    if good_end != os.path.getsize(path):
        with open(path, "r+b") as handle:
            handle.truncate(good_end)
    return ids


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write a whole file so that readers see the old or the new content, never half of it."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_bytes(path, orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n")


# ---------------------------------------------------------------------------------------------- fields

def content_id(*parts: str) -> str:
    """A stable id from content (used when the input has none)."""
    digest = hashlib.sha1("\x1f".join(parts).encode("utf-8")).hexdigest()
    return digest[:16]


def derive_seed(seed: int, *keys: object) -> int:
    """A per-item seed that depends only on the run seed and the item's identity, not on batching."""
    digest = hashlib.sha256(("\x1f".join([str(seed), *map(str, keys)])).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _answer_text(value: Any) -> str:
    if isinstance(value, bool):
        raise InputError("answer must be a string, number or list of them", field="answer")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if not value.is_integer() else str(int(value))
    if isinstance(value, str):
        return value.strip()
    raise InputError(f"answer must be a string, number or list of them, not {type(value).__name__}",
                     field="answer")


def normalize_answer(value: Any) -> str | list[str]:
    """Answers come as a string, a number or a list (the official test files). One answer -> str."""
    if isinstance(value, list):
        if not value:
            raise InputError("answer list is empty", field="answer")
        answers = [_answer_text(v) for v in value]
        return answers[0] if len(answers) == 1 else answers
    return _answer_text(value)


def normalize_problem(record: dict, *, require_answer: bool = True) -> dict:
    """Validate a problem record in place: `problem` from its aliases, `answer` normalised, a stable `id`.

    Aliases are copied to `problem`, never removed, so a record still carries what it came with.
    """
    if not isinstance(record.get("problem"), str):
        for alias in PROBLEM_ALIASES[1:]:
            if isinstance(record.get(alias), str):
                record["problem"] = record[alias]
                break
        else:
            present = [a for a in PROBLEM_ALIASES if a in record]
            if present:
                raise InputError(f"must be a string, not {type(record[present[0]]).__name__}", field=present[0])
            raise InputError("missing (also looked for " + ", ".join(PROBLEM_ALIASES[1:]) + ")", field="problem")
    if "answer" in record and record["answer"] is not None:
        record["answer"] = normalize_answer(record["answer"])
    elif require_answer:
        raise InputError("missing", field="answer")
    ensure_id(record)
    return record


def ensure_id(record: dict) -> str:
    """Every record carries a string `id`: the given one (or `idx`), else a hash of its problem and answer."""
    if "id" in record and record["id"] is not None:
        if not isinstance(record["id"], (str, int)) or isinstance(record["id"], bool):
            raise InputError("must be a string or integer", field="id")
        record["id"] = str(record["id"])
    elif isinstance(record.get("idx"), (str, int)) and not isinstance(record.get("idx"), bool):
        record["id"] = str(record["idx"])
    else:
        answer = record.get("answer", "")
        record["id"] = content_id(str(record.get("problem", record.get("prompt", ""))),
                                  orjson.dumps(answer).decode())
    return record["id"]


def require_fields(record: dict, types: dict[str, type | tuple[type, ...]]) -> dict:
    """Check that each named field exists with the given type; raises InputError naming the field."""
    for name, kind in types.items():
        if name not in record:
            raise InputError("missing", field=name)
        if not isinstance(record[name], kind) or (isinstance(record[name], bool) and kind in (int, float)):
            expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise InputError(f"must be {expected}, not {type(record[name]).__name__}", field=name)
    return record


def batched(records: Iterable[dict], size: int) -> Iterator[list[dict]]:
    """Groups of `size` records: one backend call each, so finished groups reach disk while the rest run."""
    group: list[dict] = []
    for record in records:
        group.append(record)
        if len(group) >= size:
            yield group
            group = []
    if group:
        yield group


def read_text_stream(text: str) -> Iterator[dict]:
    """Parse JSONL held in memory (tests, notebooks)."""
    for line in io.StringIO(text):
        if line.strip():
            yield orjson.loads(line)
