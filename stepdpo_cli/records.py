"""JSONL records: streaming reads with line-accurate errors, per-record flushed writes, ids, aliases, resume.

Every stage reads an iterator of dicts and yields dicts; this module is the only place that touches
the bytes on disk, so the exit-code and "nothing finished is lost" rules live here once.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import os
import re
import stat
import sys
import zlib
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Iterable, Iterator

import orjson

PROBLEM_ALIASES = ("problem", "prompt", "question", "instruction")


class InputError(Exception):
    """Bad input: the CLI prints `str(self)` on one line and exits with status 2."""

    def __init__(self, message: str, *, source: str = "", line: int | None = None, field: str | None = None):
        self.source, self.line, self.field, self.message = source, line, field, message
        parts = []
        if source or line is not None:  # an option error has neither: `field '--keep': ...`
            parts.append((source or "<input>") + (f":{line}" if line is not None else ""))
        if field:
            parts.append(f"field '{field}'")
        super().__init__(": ".join([*parts, message]))


@dataclass
class ReadStats:
    read: int = 0
    invalid: int = 0
    skipped_done: int = 0
    errors: list[str] = field(default_factory=list)


DEFAULT_MAX_LINE_BYTES = 1 << 20  # 1 MiB: far above any real record, far below what can exhaust memory
_KEY_BEFORE_STRING = re.compile(rb'"([A-Za-z_][A-Za-z0-9_]{0,63})"\s*:\s*"')


def check_input(path: str | None) -> None:
    """Fail (exit 2) now, before any output is opened, if `path` cannot be read."""
    if path is None or path == "-":
        return
    if not os.path.exists(path):
        raise InputError("no such file", source=path)
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:  # a directory, no permission: the user's input, not our failure
        raise InputError(f"cannot read: {exc.strerror or exc}", source=path) from None


def _open_text(path: str | None) -> tuple[IO[bytes], str]:
    if path is None or path == "-":
        return sys.stdin.buffer, "<stdin>"
    check_input(path)
    raw: IO[bytes] = open(path, "rb")
    if path.endswith(".gz"):
        raw = gzip.open(raw, "rb")  # type: ignore[assignment]
    return raw, path


def _bounded_lines(handle: IO[bytes], limit: int) -> Iterator[bytes | tuple[bytes, int]]:
    """Lines of at most `limit` bytes (newline excluded); a longer line yields (its first 4 KiB, its length)
    instead, read and dropped in chunks, so a 10 GB line costs no more memory than a short one."""
    while True:
        line = handle.readline(limit + 1)
        if not line:
            return
        if len(line) <= limit or line.endswith(b"\n"):
            yield line
            continue
        size, head = len(line), line[:4096]
        while not line.endswith(b"\n"):
            line = handle.readline(1 << 20)
            if not line:
                break
            size += len(line)
        yield head, size


def _long_line_error(head: bytes, size: int, limit: int) -> InputError:
    # The field whose string value runs past the limit is almost always the last key that opens a string.
    keys = _KEY_BEFORE_STRING.findall(head)
    return InputError(f"line is {size} bytes, over the limit of {limit} (raise it with --max-line-bytes)",
                      field=keys[-1].decode() if keys else None)


def skip_or_raise(error: InputError, skip_invalid: bool, stats: ReadStats, log: Any = None) -> None:
    """--skip-invalid bookkeeping for any row source: raise `error`, or count it and report it through `log`."""
    if not skip_invalid:
        raise error from None
    stats.invalid += 1
    stats.errors.append(str(error))
    if log is not None:
        log(f"skipped invalid record: {error}")


def iter_jsonl(path: str | None = None, *, skip_invalid: bool = False, stats: ReadStats | None = None,
               validate: Any = None, log: Any = None, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
               unique_ids: bool = True) -> Iterator[dict]:
    """Yield the JSON objects of a JSONL file (or stdin; `.gz` works), one per non-blank line.

    `validate(record) -> record` may raise InputError(field=...); the line number and source are filled in.
    With `skip_invalid`, bad lines are counted in `stats` and reported through `log` instead of raising.
    A line longer than `max_line_bytes` is refused before it is parsed (memory stays bounded), and with
    `unique_ids` a second record with an `id` already seen is refused naming both lines (resume keys on ids).
    """
    stats = stats if stats is not None else ReadStats()
    handle, source = _open_text(path)
    seen: dict[str, int] = {}
    number = 0
    try:
        for number, line in enumerate(_bounded_lines(handle, max_line_bytes), start=1):
            try:
                if isinstance(line, tuple):
                    raise _long_line_error(line[0], line[1], max_line_bytes)
                if number == 1 and line.startswith(b"\xef\xbb\xbf"):
                    line = line[3:]  # a UTF-8 byte-order mark (editors on Windows write one)
                if not line.strip():
                    continue
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise InputError(f"bad JSON ({exc.args[0].split(':')[0]})") from None
                if not isinstance(record, dict):
                    raise InputError(f"expected a JSON object, got {type(record).__name__}")
                if validate is not None:
                    record = validate(record)
                if unique_ids and record.get("id") is not None:
                    key = str(record["id"])
                    if key in seen:
                        raise InputError(f"duplicate id {key!r}, first on line {seen[key]}", field="id")
                    seen[key] = number
            except InputError as exc:
                skip_or_raise(InputError(exc.message, source=source, line=number, field=exc.field),
                              skip_invalid, stats, log)
                continue
            stats.read += 1
            yield record
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        last = f"; the last good line is {number}" if number else "; no complete line"
        raise InputError(f"cannot read: truncated or corrupt gzip ({exc}){last}", source=source) from None
    except OSError as exc:
        raise InputError(f"cannot read: {exc}", source=source) from None
    finally:
        if handle is not sys.stdin.buffer:
            handle.close()


def dumps(record: dict) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"


def partial_path(path: str) -> str:
    """Where a run writes before its output is complete (renamed over `path` at the end or on interrupt)."""
    return path + ".partial"


def refuse_overwriting_input(input: str | None, output: str | None) -> None:
    """-o must not be the input, whether the input is named by -i or arrives by stdin redirection."""
    if output in (None, "-"):
        return
    try:
        out = os.stat(output)
    except OSError:
        return
    if input in (None, "-"):
        try:
            inp = os.fstat(sys.stdin.fileno())
        except (OSError, ValueError):
            return
        if not stat.S_ISREG(inp.st_mode):
            return
    else:
        try:
            inp = os.stat(input)
        except OSError:
            return
    if (inp.st_dev, inp.st_ino) == (out.st_dev, out.st_ino):
        raise InputError("is the same file as the input; write to another file", source=output, field="--output")


class RecordWriter:
    """Writes JSONL (gzip for `.gz`) to stdout or a file, one write per record or group of records.

    A fresh run writes to `{path}.partial` and renames it over `path` when it ends or is interrupted, so an
    existing `path` is replaced only by a run that finished, or by an interrupted run's finished records. A run
    that fails (bad input, a full disk, a model error) leaves `path` as it was and its finished records in
    `.partial`. With `resume`, a `.partial` left by a killed run is adopted, then
    the output is appended to: a torn last line is cut off, and with `group_key` (the input a record came from,
    for stages that write several records per input) the last input's records are cut too, since the run may
    have died before all of them were written. The ids left are `done_ids`.
    """

    def __init__(self, path: str | None = None, *, resume: bool = False,
                 group_key: Callable[[dict], Any] | None = None):
        self.path = None if path in (None, "-") else path
        self.done_ids: set[str] = set()
        self.written = 0
        self.adopted_partial = False
        self._temp: str | None = None
        self._raw: IO[bytes] | None = None
        if self.path is None:
            self._handle: IO[bytes] = sys.stdout.buffer
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        compressed = self.path.endswith(".gz")
        if resume:
            if os.path.exists(partial_path(self.path)):
                os.replace(partial_path(self.path), self.path)
                self.adopted_partial = True
            if os.path.exists(self.path):
                self.done_ids = _repair_and_collect_ids(self.path, group_key)
            self._raw = open(self.path, "ab", buffering=0)
        else:
            self._temp = partial_path(self.path)
            if os.path.exists(self._temp) and os.path.getsize(self._temp) > 0:
                # An earlier run that failed or was killed left its finished records here: a fresh run would
                # truncate them. The user chooses: continue them, or delete the file.
                raise InputError("holds the finished records of an earlier run that failed or was killed: pass "
                                 "--resume to continue it, or delete it to start over", source=self._temp)
            self._raw = open(self._temp, "wb", buffering=0)
        self._size = self._raw.seek(0, os.SEEK_END)
        # mtime=0: the same records give the same bytes. Each record is sync-flushed, so a killed run's
        # file decompresses up to its last whole line.
        self._handle = gzip.GzipFile(fileobj=self._raw, mode="ab", mtime=0) if compressed else self._raw

    def write(self, record: dict) -> None:
        self.write_many([record])

    def write_many(self, records: Iterable[dict]) -> None:
        """One write for a group (e.g. all samples of one problem). If the disk fills part-way, the file is cut
        back to before the group, so no input is ever half on disk."""
        data = b"".join(dumps(r) for r in records)
        if not data:
            return
        if self._raw is None:
            self._handle.write(data)
            self._handle.flush()
        elif isinstance(self._handle, gzip.GzipFile):
            self._handle.write(data)
            self._handle.flush()
        else:
            view = memoryview(data)
            try:
                while view:  # an unbuffered write may be partial
                    view = view[self._raw.write(view):]
            except OSError:
                try:
                    os.ftruncate(self._raw.fileno(), self._size)
                except OSError:
                    pass
                raise
            self._size += len(data)
        self.written += data.count(b"\n")

    def close(self, outcome: str = "done") -> str | None:
        """Finish the file. `outcome`: done | interrupted | failed. A fresh run's `.partial` replaces `path`
        when done, or interrupted with records written; a failed run with records written leaves it for
        --resume (returned); else it is removed."""
        if self._raw is None or self._raw.closed:
            return None
        keep = outcome == "done" or (outcome == "interrupted" and self.written > 0)
        left = self._temp if outcome == "failed" and self.written > 0 else None
        try:
            if isinstance(self._handle, gzip.GzipFile):
                self._handle.close()
            os.fsync(self._raw.fileno())
        finally:
            self._raw.close()
            if self._temp is not None and not left:
                if keep:
                    os.replace(self._temp, self.path)  # type: ignore[arg-type]
                else:
                    os.unlink(self._temp)
        return left

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        self.close(outcome_of(exc_type))


def outcome_of(exc_type: Any) -> str:
    """The `RecordWriter.close` outcome for how a run ended (None: no exception)."""
    if exc_type is None:
        return "done"
    return "interrupted" if issubclass(exc_type, KeyboardInterrupt) else "failed"


def finished_records(output: str) -> Iterator[dict]:
    """The records `--resume` will keep from `output`: its `.partial` if an earlier run left one, else `output`,
    read as the writer reads it (gzip by the output's name, up to the last whole line). Reads, never repairs."""
    path = partial_path(output) if os.path.exists(partial_path(output)) else output
    if not os.path.exists(path):
        return
    for _, line in _complete_lines(path, gzipped=output.endswith(".gz")):
        record = orjson.loads(line)
        if isinstance(record, dict):
            yield record


def _complete_lines(path: str, gzipped: bool | None = None) -> Iterator[tuple[int, bytes]]:
    """(end offset, line) for each whole line; stops at a torn or unparsable line (or a truncated gzip)."""
    opener = gzip.open if (path.endswith(".gz") if gzipped is None else gzipped) else open
    offset = 0
    with opener(path, "rb") as handle:
        try:
            for line in handle:
                if not line.endswith(b"\n"):
                    return
                try:
                    orjson.loads(line)
                except orjson.JSONDecodeError:
                    return
                offset += len(line)
                yield offset, line
        except (EOFError, gzip.BadGzipFile, zlib.error):
            return


def _repair_and_collect_ids(path: str, group_key: Callable[[dict], Any] | None = None) -> set[str]:
    """Cut a torn last line (and, with `group_key`, the last group's lines); return the ids of what is kept."""
    kept: list[tuple[int, str | None, Any]] = []  # (end offset, id, group)
    for end, line in _complete_lines(path):
        record = orjson.loads(line)
        record = record if isinstance(record, dict) else {}
        rid = str(record["id"]) if record.get("id") is not None else None
        kept.append((end, rid, group_key(record) if group_key else None))
    if group_key is not None and kept and kept[-1][2] is not None:
        last = kept[-1][2]
        while kept and kept[-1][2] == last:
            kept.pop()
    good_end = kept[-1][0] if kept else 0
    if path.endswith(".gz"):
        # Rewrite the kept lines as one clean member; appends then add members after it.
        lines = [line for _, line in itertools.islice(_complete_lines(path), len(kept))]
        atomic_write_bytes(path, gzip.compress(b"".join(lines), mtime=0))
    elif good_end != os.path.getsize(path):
        with open(path, "r+b") as handle:
            handle.truncate(good_end)
    return {rid for _, rid, _ in kept if rid is not None}


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
