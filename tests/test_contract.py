"""The contract every stage keeps, checked the same way for each: a stage gets it by being added to STAGES.

Hostile input (a truncated line, wrong types, a 2 MB field, duplicate ids, NUL) exits 2 with one line naming
the file and line, before an existing -o is touched; an empty file, a byte-order mark and CRLF line ends are
read as they should be; SIGTERM mid-stream exits 143 with every finished record on disk, and --resume then
gives exactly the output of an uninterrupted run. Stages that load a model for every run are marked slow
where they must generate.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

import orjson
import pytest

from conftest import ROOT, run_cli

ENV = {"OMP_NUM_THREADS": "1"}
VERIFIER = "def verify(problem, steps, record):\n    return ['4' not in step for step in steps]\n"


@dataclass
class Stage:
    name: str
    args: Callable[[dict], list[str]]  # command-line options besides -i/-o, from the shared fixtures
    record: Callable[[int], dict]  # the i-th good input record
    typed_field: str  # a required field: given a list, it must be refused naming this field
    model: bool = False  # generates with the tiny model (slow: torch starts in every run)
    writes_records: bool = True  # train writes a model dir, not JSONL
    out_per_input: float = 1
    label: str = ""  # the test id when one command is several stages (pair --strategy full-step)
    streams: bool = True  # writes a record as soon as its input is read (full-step pairs wait for a whole problem)

    @property
    def id(self) -> str:
        return self.label or self.name


def _problem(i: int) -> dict:
    return {"id": f"p{i}", "problem": f"Add: {i} + 2", "answer": str(i + 2)}


def _localized(i: int) -> dict:
    return {**_problem(i), "id": f"p{i}/s0", "steps": [f"{i} + 2 = {i + 3}", f"The answer is {i + 3}"],
            "first_error_step": 1, "template": "raw"}


def _rectified(i: int) -> dict:
    return {**_localized(i), "candidates": [{"text": f"{i} + 2 = {i + 2}",
                                             "continuation": f"{i} + 2 = {i + 2}\nStep 2: The answer is {i + 2}"}]}


def _pair_row(i: int) -> dict:
    return {"id": f"p{i}/s0/c0", "prompt": f"Add: {i} + 2", "initial_reason_steps": "Let's think step by step.\n"
            "Step 1:", "chosen": f" {i} + 2 = {i + 2}", "rejected": f" {i} + 2 = {i + 3}", "answer": str(i + 2)}


def _scored(i: int) -> dict:
    """Sample i of problem i // 2: even samples right, odd ones wrong, PRM-scored."""
    p = i // 2
    total = p + 2 + (i % 2)
    return {"id": f"p{p}/s{i % 2}", "problem_id": f"p{p}", "problem": f"Add: {p} + 2", "answer": str(p + 2),
            "steps": [f" {p} + 2 = {total}.", f" The answer is {total}."], "correct": i % 2 == 0,
            "step_rewards": [0.9 - 0.1 * (i % 2), 0.8], "prm_score": 0.85 - 0.05 * (i % 2)}


def _rolled(i: int) -> dict:
    """Sample i of problem i // 2, rollout-localized: even samples right, odd ones wrong with a low Q at step 1."""
    p = i // 2
    total = p + 2 + (i % 2)
    return {"id": f"p{p}/s{i % 2}", "problem_id": f"p{p}", "problem": f"Add: {p} + 2", "answer": str(p + 2),
            "steps": [f" {p} + 2 = {total}.", f" The answer is {total}."], "correct": i % 2 == 0,
            "step_scores": [1.0, 1.0] if i % 2 == 0 else [0.25, 0.0]}


def _searched(i: int) -> dict:
    """A searched problem: the root's two children, the better one on the chosen path."""
    node = {"parent": 0, "terminal": True, "prior": 0.5}
    return {**_problem(i), "tree": [{"id": 0, "parent": None, "step": "", "visits": 4, "q": 0.5},
                                    {**node, "id": 1, "step": f" {i} + 2 = {i + 2}.", "visits": 3, "q": 1.0},
                                    {**node, "id": 2, "step": f" {i} + 2 = {i + 3}.", "visits": 1, "q": 0.0}],
            "chosen_path": [0, 1], "status": "ok"}


STAGES = [
    Stage("grade", lambda f: [], lambda i: {"id": f"r{i}", "completion": f"so \\boxed{{{i}}}", "answer": str(i)},
          "completion"),
    Stage("localize", lambda f: ["--method", "verifier", "--verifier", f["verifier"]],
          lambda i: {**_problem(i), "steps": [f"{i} + 2 = {i + 2}"]}, "steps"),
    Stage("pair", lambda f: [], _rectified, "candidates"),
    Stage("pair", lambda f: ["--strategy", "full-step"], _scored, "step_rewards", out_per_input=0.5,
          label="pair-full-step", streams=False),
    Stage("pair", lambda f: ["--strategy", "q-value", "--format", "dpo"], _rolled, "step_scores", out_per_input=0.5,
          label="pair-q-value", streams=False),
    Stage("pair", lambda f: ["--strategy", "tree"], _searched, "tree", label="pair-tree"),
    Stage("score", lambda f: ["--prm", f["prm"](), "--batch-size", "1"], _localized, "steps", model=True),
    Stage("sample", lambda f: ["-m", f["model"], "-n", "2", "--max-tokens", "3", "--batch-size", "2",
                               "--template", "raw"], _problem, "problem", model=True, out_per_input=2),
    Stage("eval", lambda f: ["-m", f["model"], "--max-tokens", "3", "--batch-size", "1", "--template", "raw"],
          _problem, "problem", model=True),
    Stage("rectify", lambda f: ["-m", f["model"], "-n", "2", "--max-tokens", "3", "--batch-size", "2"],
          _localized, "steps", model=True),
    Stage("search", lambda f: ["-m", f["model"], "--simulations", "2", "--max-step-tokens", "3", "--max-tokens", "3",
                               "--batch-size", "1", "--template", "raw"], _problem, "problem", model=True),
    Stage("train", lambda f: ["-m", f["model"], "--objective", "dpo", "--max-steps", "1", "--batch-size", "2",
                              "--template", "raw"], _pair_row, "chosen", model=True, writes_records=False),
]
RECORD_STAGES = [s for s in STAGES if s.writes_records]


def _param(stage: Stage, *, generates: bool):
    """`generates`: this check loads the model (rectify and train load it before reading input) or generates,
    so a model stage is slow here."""
    marks = [pytest.mark.slow] if generates and stage.model else []
    return pytest.param(stage, id=stage.id, marks=marks)


@pytest.fixture(scope="module")
def fixtures(tiny_model, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("contract")
    (root / "verify.py").write_text(VERIFIER)
    prm: list[str] = []

    def trained_prm() -> str:  # a PRM from one training step, built on first use
        if not prm:
            rows = root / "prm_rows.jsonl"
            rows.write_bytes(_lines([{**_localized(i), "correct": i % 2 == 0} for i in range(4)]))
            proc = run_cli("train", "-q", "--objective", "prm", "-m", tiny_model, "--data", str(rows), "--output",
                           str(root / "prm"), "--max-steps", "1", "--template", "raw", env=ENV)
            assert proc.returncode == 0, proc.stderr.decode()[-3000:]
            prm.append(str(root / "prm"))
        return prm[0]

    return {"model": tiny_model, "verifier": f"{root / 'verify.py'}:verify", "prm": trained_prm}


def _lines(records: list[dict]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def _run(stage: Stage, fixtures: dict, inp, out, *extra: str, stdin: bytes | None = None):
    io = ["-i", str(inp)] if inp is not None else []
    io += ["--output" if stage.name == "train" else "-o", str(out)]
    return run_cli(stage.name, "-q", *stage.args(fixtures), *io, *extra, input=stdin, env=ENV)


# ---------------------------------------------------------------------------------------------- hostile input

def _hostile(stage: Stage, case: str) -> tuple[bytes, int, str]:
    """(file bytes, the line the error must name, a fragment the message must hold)."""
    good = [stage.record(i) for i in range(3)]
    if case == "truncated line":
        return _lines(good) + orjson.dumps(stage.record(3))[:25], 4, "bad JSON"
    if case == "wrong types":
        return _lines([good[0], {**good[1], stage.typed_field: [1, {"x": 2}]}]), 2, f"field '{stage.typed_field}'"
    if case == "2 MB field":
        big = {**good[1], stage.typed_field: "9" * (2 << 20)}
        return _lines([good[0], big]), 2, "--max-line-bytes"
    if case == "duplicate ids":
        return _lines([good[0], good[1], good[0]]), 3, "duplicate id"
    if case == "NUL":
        return _lines(good[:1]) + b'{"id": "n\x00ul"}\n', 2, "bad JSON"
    raise AssertionError(case)


HOSTILE = ["truncated line", "wrong types", "2 MB field", "duplicate ids", "NUL"]


@pytest.mark.parametrize("case", HOSTILE)
@pytest.mark.parametrize("stage", [_param(s, generates=s.name in ("rectify", "train", "score")) for s in STAGES])
def test_hostile_input_exits_2_naming_file_and_line_and_keeps_the_old_output(stage, case, fixtures, tmp_path):
    data, line, fragment = _hostile(stage, case)
    inp, out = tmp_path / "in.jsonl", tmp_path / ("model_out" if not stage.writes_records else "out.jsonl")
    inp.write_bytes(data)
    if stage.writes_records:
        out.write_bytes(b'{"id": "from an earlier run"}\n')
    started = time.monotonic()
    proc = _run(stage, fixtures, inp, out)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert f"{inp}:{line}:" in lines[0] and fragment in lines[0], lines[0]
    if stage.writes_records:
        assert out.read_bytes() == b'{"id": "from an earlier run"}\n'  # records before the bad line: in .partial
    if case == "2 MB field" and not stage.model:
        assert time.monotonic() - started < 10


@pytest.mark.parametrize("stage", [_param(s, generates=s.name in ("rectify", "train")) for s in STAGES])
def test_an_empty_file_is_no_records(stage, fixtures, tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_bytes(b"")
    proc = _run(stage, fixtures, inp, out)
    if stage.writes_records:
        assert proc.returncode == 0, proc.stderr.decode()[-3000:]
        assert out.read_bytes() == b"" and proc.stderr == b""
    else:  # nothing to train on is a usage error
        assert proc.returncode == 2 and "no usable training rows" in proc.stderr.decode()


@pytest.fixture(scope="module")
def uninterrupted(fixtures, tmp_path_factory) -> Callable[[Stage], bytes]:
    """Each record stage's output on 6 good records, run once and shared."""
    cache: dict[str, bytes] = {}

    def get(stage: Stage) -> bytes:
        if stage.id not in cache:
            root = tmp_path_factory.mktemp(f"clean-{stage.id}")
            (root / "in.jsonl").write_bytes(_lines([stage.record(i) for i in range(6)]))
            proc = _run(stage, fixtures, root / "in.jsonl", root / "out.jsonl")
            assert proc.returncode == 0, proc.stderr.decode()[-3000:]
            cache[stage.id] = (root / "out.jsonl").read_bytes()
            assert cache[stage.id].count(b"\n") == 6 * stage.out_per_input
        return cache[stage.id]

    return get


@pytest.mark.parametrize("case", ["BOM", "CRLF"])
@pytest.mark.parametrize("stage", [_param(s, generates=True) for s in RECORD_STAGES])
def test_a_byte_order_mark_and_crlf_read_as_plain_jsonl(stage, case, fixtures, uninterrupted, tmp_path):
    data = _lines([stage.record(i) for i in range(6)])
    data = b"\xef\xbb\xbf" + data if case == "BOM" else data.replace(b"\n", b"\r\n")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_bytes(data)
    proc = _run(stage, fixtures, inp, out)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert out.read_bytes() == uninterrupted(stage)


# ---------------------------------------------------------------------------------------------- interrupt, resume

@pytest.mark.parametrize("stage", [_param(s, generates=True) for s in RECORD_STAGES if s.streams])
def test_sigterm_midstream_then_resume_equals_the_uninterrupted_run(stage, fixtures, uninterrupted, tmp_path):
    """Feed 3 of 6 records through a pipe, SIGTERM once they are written: exit 143, the 3 on disk at -o;
    --resume with all 6 then writes exactly what one uninterrupted run writes."""
    out = tmp_path / "out.jsonl"
    args = [sys.executable, "-m", "stepdpo_cli", stage.name, *stage.args(fixtures), "-o", str(out)]
    proc = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **ENV})
    partial = f"{out}.partial"
    try:
        proc.stdin.write(_lines([stage.record(i) for i in range(3)]))
        proc.stdin.flush()
        deadline = time.monotonic() + 120
        while not (os.path.exists(partial) and open(partial, "rb").read().count(b"\n") == 3 * stage.out_per_input):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-3000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 143, err.decode()[-3000:]
    assert "interrupted" in err.decode() and "--resume" in err.decode() and "Traceback" not in err.decode()
    assert out.read_bytes().count(b"\n") == 3 * stage.out_per_input and not os.path.exists(partial)
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(_lines([stage.record(i) for i in range(6)]))
    resumed = _run(stage, fixtures, inp, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    assert out.read_bytes() == uninterrupted(stage)
