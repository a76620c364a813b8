"""One way to run a stage over records: read -> validate -> skip what -o already has -> stage -> write.

Every command that maps records to records goes through `run_records`, so all of them open outputs, refuse
`-o` onto the input, resume and keep finished records on failure the same way (records.RecordWriter).
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Iterator

from . import log
from .records import (DEFAULT_MAX_LINE_BYTES, InputError, ReadStats, RecordWriter, check_input, iter_jsonl, outcome_of,
                      refuse_overwriting_input)


def run_records(
    stage: Callable[[Iterable[dict]], Iterator[Any]],
    *,
    input: str | None,
    output: str | None,
    resume: bool = False,
    skip_invalid: bool = False,
    validate: Callable[[dict], dict] | None = None,
    done_filter: Callable[[dict, set[str]], bool] | None = None,
    source: Iterable[dict] | None = None,
    group_key: Callable[[dict], Any] | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    limit: int | None = None,
) -> tuple[ReadStats, RecordWriter]:
    """Read -> validate -> (skip done) -> stage -> write, flushing per record or per yielded group.

    `group_key(output record)`: the input a record came from, for stages that write several per input (resume
    then redoes the last input in -o whole). The output is opened only once the input is known readable and
    is not -o. A failed run (bad input, full disk) leaves an existing -o untouched and its finished records in
    -o.partial; an interrupted one moves what it finished to -o. --resume continues from either."""
    if resume and not output:
        raise InputError("--resume needs -o FILE", field="--resume")
    if source is None:
        check_input(input)
    refuse_overwriting_input(input, output)
    stats = ReadStats()
    writer = RecordWriter(output, resume=resume, group_key=group_key)
    if writer.adopted_partial:
        log.log(f"resume: continuing from {output}.partial, left by an interrupted run")
    outcome = "failed"
    try:
        # `source`: records that do not come from a JSONL file (e.g. eval --dataset gsm8k).
        records: Iterable[dict] = source if source is not None else iter_jsonl(
            input, skip_invalid=skip_invalid, stats=stats, validate=validate, log=log.warn,
            max_line_bytes=max_line_bytes)
        if limit is not None:  # the first `limit` inputs, before done ones are skipped: resume covers the same set
            records = itertools.islice(records, limit)
        if resume and writer.done_ids:
            done = writer.done_ids
            is_done = done_filter or (lambda record, ids: str(record.get("id")) in ids)

            def pending(source: Iterable[dict]) -> Iterator[dict]:
                for record in source:
                    if is_done(record, done):
                        stats.skipped_done += 1
                        continue
                    yield record

            records = pending(records)
        for item in stage(records):
            if isinstance(item, list):
                writer.write_many(item)
            else:
                writer.write(item)
        outcome = "done"
    except BaseException as exc:
        outcome = outcome_of(type(exc))
        raise
    finally:
        left = writer.close(outcome)
        if left:
            log.log(f"{writer.written} finished record(s) kept in {left}; --resume continues from them")
    if stats.invalid:
        log.warn(f"{stats.invalid} invalid record(s) skipped")
    if stats.skipped_done:
        log.log(f"resume: {stats.skipped_done} record(s) already done in {output}")
    return stats, writer
