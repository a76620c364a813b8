"""JSONL records: aliases, answers, ids, line-accurate errors, gzip, per-record flushing and resume."""
from __future__ import annotations

import gzip
import os
import subprocess
import sys

import orjson
import pytest

from stepdpo_cli.records import (
    InputError,
    ReadStats,
    RecordWriter,
    atomic_write_json,
    derive_seed,
    dumps,
    ensure_id,
    iter_jsonl,
    normalize_problem,
    partial_path,
    require_fields,
)


def write_lines(path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def read_records(path: str) -> list[dict]:
    with open(path, "rb") as handle:
        return [orjson.loads(line) for line in handle if line.strip()]


# ---------------------------------------------------------------------------------------------- problems

@pytest.mark.parametrize("alias", ["problem", "prompt", "question", "instruction"])
def test_every_problem_alias_is_read_as_problem_and_kept(alias):
    record = normalize_problem({alias: "What is $1+1$?", "answer": "2"})
    assert record["problem"] == "What is $1+1$?"
    assert record[alias] == "What is $1+1$?"  # the original field flows through too


def test_problem_wins_over_its_aliases():
    record = normalize_problem({"prompt": "templated text", "problem": "the problem", "answer": "1"})
    assert record["problem"] == "the problem"


@pytest.mark.parametrize("given, expected", [
    ("  \\frac{1}{2} ", "\\frac{1}{2}"),
    (72, "72"),
    (-3, "-3"),
    (2.5, "2.5"),
    (3.0, "3"),
    (["\\frac{1}{2}", 0.5], ["\\frac{1}{2}", "0.5"]),
    (["7"], "7"),
])
def test_answer_as_string_number_or_list(given, expected):
    assert normalize_problem({"problem": "p", "answer": given})["answer"] == expected


@pytest.mark.parametrize("bad", [True, {"value": 1}, [], [1, None]])
def test_bad_answers_name_the_answer_field(bad):
    with pytest.raises(InputError) as info:
        normalize_problem({"problem": "p", "answer": bad})
    assert info.value.field == "answer"
    assert "'answer'" in str(info.value)


def test_missing_problem_names_the_field_and_the_aliases_looked_for():
    with pytest.raises(InputError) as info:
        normalize_problem({"answer": "1"})
    assert info.value.field == "problem"
    assert "question" in str(info.value) and "instruction" in str(info.value)


def test_wrong_type_names_the_field_the_user_wrote():
    with pytest.raises(InputError) as info:
        normalize_problem({"question": 5, "answer": "1"})
    assert info.value.field == "question"
    assert "must be a string" in str(info.value)


def test_answer_is_required_unless_told_otherwise():
    with pytest.raises(InputError) as info:
        normalize_problem({"problem": "p"})
    assert info.value.field == "answer"
    assert normalize_problem({"problem": "p"}, require_answer=False)["problem"] == "p"


def test_ids_are_strings_stable_and_taken_from_id_or_idx():
    assert ensure_id({"id": 17}) == "17"
    assert ensure_id({"idx": 4, "problem": "p"}) == "4"
    first = normalize_problem({"problem": "What is 2+2?", "answer": "4"})["id"]
    again = normalize_problem({"problem": "What is 2+2?", "answer": 4})["id"]
    other = normalize_problem({"problem": "What is 2+3?", "answer": "5"})["id"]
    assert first == again != other
    assert isinstance(first, str) and len(first) == 16
    with pytest.raises(InputError) as info:
        ensure_id({"id": True})
    assert info.value.field == "id"


def test_require_fields_names_missing_and_mistyped_fields():
    with pytest.raises(InputError, match="'steps'.*missing"):
        require_fields({"completion": "x"}, {"completion": str, "steps": list})
    with pytest.raises(InputError, match="'first_error_step'.*must be int, not bool"):
        require_fields({"first_error_step": True}, {"first_error_step": int})
    with pytest.raises(InputError, match="must be str or list, not int"):
        require_fields({"answer": 3}, {"answer": (str, list)})


# ---------------------------------------------------------------------------------------------- reading

def test_a_broken_line_3_is_reported_with_file_and_line(tmp_path):
    path = write_lines(tmp_path / "in.jsonl", ['{"id": 1}', '', '{"id": 2, oops', '{"id": 3}'])
    # Line numbers count blank lines, as an editor does: the broken line is line 3.
    with pytest.raises(InputError) as info:
        list(iter_jsonl(path))
    assert info.value.line == 3
    assert str(info.value).startswith(f"{path}:3: bad JSON")
    assert "\n" not in str(info.value)


def test_skip_invalid_counts_bad_lines_and_keeps_the_rest(tmp_path):
    path = write_lines(tmp_path / "in.jsonl", ['{"id": 1}', '{"id": 2}', 'not json', '[1, 2]', '{"id": 5}'])
    stats, messages = ReadStats(), []
    records = list(iter_jsonl(path, skip_invalid=True, stats=stats, log=messages.append))
    assert [r["id"] for r in records] == [1, 2, 5]
    assert (stats.read, stats.invalid) == (3, 2)
    assert ":3:" in messages[0] and ":4: expected a JSON object, got list" in messages[1]


def test_validation_errors_carry_file_line_and_field(tmp_path):
    path = write_lines(tmp_path / "in.jsonl", ['{"problem": "p", "answer": "1"}', '{"problem": "p"}'])
    with pytest.raises(InputError) as info:
        list(iter_jsonl(path, validate=normalize_problem))
    assert str(info.value) == f"{path}:2: field 'answer': missing"


def test_gzip_input_reads_like_plain(tmp_path):
    path = tmp_path / "problems.jsonl.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(b'{"question": "1+1?", "answer": 2}\n\n{"problem": "2+2?", "answer": "4"}\n')
    records = list(iter_jsonl(str(path), validate=normalize_problem))
    assert [(r["problem"], r["answer"]) for r in records] == [("1+1?", "2"), ("2+2?", "4")]


def test_missing_or_corrupt_files_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        list(iter_jsonl(str(tmp_path / "absent.jsonl")))
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(b"this is not gzip")
    with pytest.raises(InputError, match="cannot read"):
        list(iter_jsonl(str(bad)))


def test_unicode_and_latex_survive_a_round_trip(tmp_path):
    record = {"id": "u", "problem": "Soit $x \\in \\mathbb{R}$ — résoudre $x^2=4$ 🙂", "answer": ["2", "-2"]}
    out = str(tmp_path / "out.jsonl")
    with RecordWriter(out) as writer:
        writer.write(record)
    assert list(iter_jsonl(out)) == [record]


# ---------------------------------------------------------------------------------------------- writing

def test_each_record_is_on_disk_as_soon_as_it_is_written(tmp_path):
    out = str(tmp_path / "sub" / "out.jsonl")  # parent folders are created
    writer = RecordWriter(out)
    writer.write({"id": "a"})
    assert read_records(partial_path(out)) == [{"id": "a"}]  # before close, in OUT.partial
    writer.write_many([{"id": "b", "i": 0}, {"id": "b", "i": 1}])
    assert len(read_records(partial_path(out))) == 3 and writer.written == 3
    assert not os.path.exists(out)
    writer.close()
    assert len(read_records(out)) == 3 and not os.path.exists(partial_path(out))


KILLED_WRITER = r"""
import sys, time
from stepdpo_cli.records import RecordWriter
writer = RecordWriter(sys.argv[1])
for i in range(10_000):
    writer.write_many([{"id": str(i), "sample": j, "text": "x" * 2000} for j in range(4)])
    print(i, flush=True)
    time.sleep(0.01)
"""


def test_a_killed_writer_leaves_every_finished_group_intact(tmp_path):
    out = str(tmp_path / "out.jsonl")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, out], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(20):  # wait until 20 groups are reported written
            proc.stdout.readline()
    finally:
        proc.kill()
        proc.wait()
    records = read_records(partial_path(out))  # would raise on a torn line
    assert len(records) >= 80 and len(records) % 4 == 0  # groups are never split
    assert [r["id"] for r in records[::4]] == [str(i) for i in range(len(records) // 4)]
    with RecordWriter(out, resume=True) as writer:  # --resume adopts the killed run's .partial
        assert writer.adopted_partial and writer.done_ids == {r["id"] for r in records}
    assert read_records(out) == records


def test_resume_repairs_a_torn_last_line_and_reports_done_ids(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"id": "1"}\n{"id": 2}\n{"id": "3", "text": "cut off he')
    writer = RecordWriter(str(out), resume=True)
    assert writer.done_ids == {"1", "2"}
    writer.write({"id": "3"})
    writer.close()
    assert [r["id"] for r in read_records(str(out))] == ["1", 2, "3"]


def test_resume_drops_a_complete_but_unparsable_last_line(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"id": "1"}\n{"id": "2", \n')
    assert RecordWriter(str(out), resume=True).done_ids == {"1"}
    assert out.read_bytes() == b'{"id": "1"}\n'


def test_without_resume_the_output_is_replaced(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"id": "old"}\n')
    with RecordWriter(str(out)) as writer:
        writer.write({"id": "new"})
    assert read_records(str(out)) == [{"id": "new"}]


def test_resume_on_a_missing_file_starts_fresh(tmp_path):
    with RecordWriter(str(tmp_path / "new.jsonl"), resume=True) as writer:
        assert writer.done_ids == set()
        writer.write({"id": "1"})
    assert read_records(str(tmp_path / "new.jsonl")) == [{"id": "1"}]


# ---------------------------------------------------------------------------------------------- helpers

def test_derived_seeds_depend_only_on_seed_and_keys():
    first = [derive_seed(0, "problem-a", i) for i in range(4)]
    assert first == [derive_seed(0, "problem-a", i) for i in range(4)]
    assert len(set(first)) == 4
    assert derive_seed(1, "problem-a", 0) != first[0]
    assert all(0 <= s < 2**31 for s in first)


def test_atomic_write_json_replaces_the_whole_file(tmp_path):
    path = str(tmp_path / "meta" / "stepdpo.json")
    atomic_write_json(path, {"template": "alpaca"})
    atomic_write_json(path, {"template": "raw", "seed": 3})
    assert orjson.loads(open(path, "rb").read()) == {"template": "raw", "seed": 3}
    assert os.listdir(os.path.dirname(path)) == ["stepdpo.json"]  # no temp files left behind


def test_stdin_is_read_when_no_path_is_given(monkeypatch):
    import io

    fake = io.TextIOWrapper(io.BytesIO(b'{"id": "s"}\n'))
    monkeypatch.setattr(sys, "stdin", fake)
    assert list(iter_jsonl(None)) == [{"id": "s"}]


def test_a_byte_order_mark_and_crlf_line_ends_are_accepted(tmp_path):
    path = tmp_path / "windows.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "a"}\r\n{"id": "b"}\r\n')
    assert [r["id"] for r in iter_jsonl(str(path))] == ["a", "b"]


def test_a_directory_as_input_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        list(iter_jsonl(str(tmp_path)))


# ---------------------------------------------------------------------------------------------- issue 11: limits, ids, groups

def test_an_over_long_line_is_refused_before_it_is_parsed(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_bytes(b'{"id": "a", "problem": "1+1", "answer": 2}\n'
                     + b'{"id": "b", "problem": "' + b"x" * (3 << 20) + b'", "answer": 1}\n'
                     + b'{"id": "c", "problem": "2+2", "answer": 4}\n')
    with pytest.raises(InputError) as info:
        list(iter_jsonl(str(path)))
    assert str(info.value).startswith(f"{path}:2: field 'problem': line is ")
    assert "--max-line-bytes" in str(info.value)
    stats = ReadStats()  # --skip-invalid drops the line and reads on
    assert [r["id"] for r in iter_jsonl(str(path), skip_invalid=True, stats=stats)] == ["a", "c"]
    assert stats.invalid == 1
    assert len(list(iter_jsonl(str(path), max_line_bytes=4 << 20))) == 3  # the limit can be raised


def test_a_line_at_the_limit_is_read_and_one_byte_more_is_not(tmp_path):
    line = b'{"id": "a", "t": "' + b"x" * 100 + b'"}'
    path = tmp_path / "edge.jsonl"
    path.write_bytes(line + b"\n")
    assert len(list(iter_jsonl(str(path), max_line_bytes=len(line)))) == 1
    with pytest.raises(InputError, match="over the limit"):
        list(iter_jsonl(str(path), max_line_bytes=len(line) - 1))


def test_duplicate_ids_name_both_lines_or_skip_the_later(tmp_path):
    path = write_lines(tmp_path / "dup.jsonl", ['{"id": "a", "v": 1}', '{"id": "b"}', '{"id": "a", "v": 2}'])
    with pytest.raises(InputError) as info:
        list(iter_jsonl(path))
    assert str(info.value) == f"{path}:3: field 'id': duplicate id 'a', first on line 1"
    assert [r.get("v") for r in iter_jsonl(path, skip_invalid=True)] == [1, None]


def test_option_errors_have_no_input_prefix():
    assert str(InputError("choose one of all, wrong", field="--keep")) == "field '--keep': choose one of all, wrong"
    assert str(InputError("bad", source="f.jsonl", line=3, field="id")) == "f.jsonl:3: field 'id': bad"


def test_resume_redoes_the_last_group_whole(tmp_path):
    """A stage that writes several records per input: the last input's records may be incomplete (a full disk
    or a kill between them), so resume cuts them along with a torn line and redoes that input."""
    out = tmp_path / "out.jsonl"
    lines = [orjson.dumps({"id": f"{p}/s{j}", "problem_id": p}).decode() for p in ("p0", "p1") for j in range(2)]
    out.write_text("\n".join(lines[:3]) + "\n" + lines[3][:9])  # p1's second sample torn
    with RecordWriter(str(out), resume=True, group_key=lambda r: r.get("problem_id")) as writer:
        assert writer.done_ids == {"p0/s0", "p0/s1"}
    assert out.read_text() == "\n".join(lines[:2]) + "\n"


def test_a_write_error_cuts_the_file_back_to_before_the_group(tmp_path):
    import resource

    out = str(tmp_path / "out.jsonl")
    first = dumps({"id": "a", "text": "x" * 100})
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    writer = RecordWriter(out)
    writer.write_many([{"id": "a", "text": "x" * 100}])
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(first) + 50, hard))  # the disk fills 50 bytes later
    try:
        with pytest.raises(OSError):
            writer.write_many([{"id": "b", "text": "y" * 100}, {"id": "c"}])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    writer.close()
    assert open(out, "rb").read() == first


def test_gzip_output_and_a_truncated_gzip_names_the_last_good_line(tmp_path):
    out = str(tmp_path / "out.jsonl.gz")
    with RecordWriter(out) as writer:
        for i in range(50):
            writer.write({"id": str(i), "text": f"record {i}"})
    assert [r["id"] for r in iter_jsonl(out)] == [str(i) for i in range(50)]
    data = open(out, "rb").read()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[: len(data) - 30])  # sync-flushed per record: whole lines survive the cut
    with pytest.raises(InputError, match=r"cut\.jsonl\.gz: cannot read: truncated .*the last good line is \d+"):
        list(iter_jsonl(str(cut)))
    # resume on a truncated .gz keeps what decompresses and appends after it
    with RecordWriter(str(cut), resume=True) as writer:
        kept = len(writer.done_ids)
        assert 40 <= kept < 50
        for i in range(kept, 50):
            writer.write({"id": str(i), "text": f"record {i}"})
    assert list(iter_jsonl(str(cut))) == list(iter_jsonl(out))


def test_a_failed_fresh_run_leaves_the_old_output_alone(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "old"}\n')
    with pytest.raises(RuntimeError):
        with RecordWriter(str(out)):
            raise RuntimeError("model failed to load")
    assert out.read_text() == '{"id": "old"}\n' and not os.path.exists(partial_path(str(out)))


def test_a_failed_run_keeps_its_finished_records_aside_and_an_interrupted_one_moves_them_in(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "old"}\n')
    with pytest.raises(InputError):
        with RecordWriter(str(out)) as writer:
            writer.write({"id": "new"})
            raise InputError("bad line 2")
    assert out.read_text() == '{"id": "old"}\n' and read_records(partial_path(str(out))) == [{"id": "new"}]
    with pytest.raises(KeyboardInterrupt):
        with RecordWriter(str(out), resume=True) as writer:  # adopts the .partial, then is interrupted
            assert writer.done_ids == {"new"}
            writer.write({"id": "newer"})
            raise KeyboardInterrupt
    assert read_records(str(out)) == [{"id": "new"}, {"id": "newer"}]
