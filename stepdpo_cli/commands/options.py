"""The CLI's shared option types and their checks, defined once for every command.

Each `...Opt` is an `Annotated` type a command's parameter takes (`input: InputOpt = None`), so an option's
flags and help read the same in every command that has it. Range checks run before anything is loaded or
opened, and name the option (exit 2).
"""
from __future__ import annotations

from typing import Optional

import typer
from typing_extensions import Annotated

from ..records import InputError

# Options every record stage shares.
InputOpt = Annotated[Optional[str], typer.Option("-i", "--input", help="Input JSONL (.gz ok); default stdin.")]
OutputOpt = Annotated[Optional[str], typer.Option("-o", "--output", help="Output JSONL (.gz: gzip), written as "
                                                   "OUTPUT.partial until the run ends; default stdout.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted or failed run: skip the inputs "
                                         "already in -o (or -o.partial); append.")]
SkipInvalidOpt = Annotated[bool, typer.Option("--skip-invalid", help="Log and skip bad records instead of exit 2.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (recorded in outputs).")]
SEED = 0  # the one default of --seed, every command
MaxLineBytesOpt = Annotated[int, typer.Option(
    "--max-line-bytes", help="Refuse an input line longer than this (exit 2 naming file and line; "
    "--skip-invalid skips it) before parsing it, so memory stays bounded. Default 1 MiB.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary on stderr.")]


# Options of the stages that generate (sample, eval, localize --method rollout, rectify).
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Model spec: PATH, hf:PATH, vllm:PATH or openai:NAME.")]
BackendOpt = Annotated[Optional[str], typer.Option("--backend", help="hf | vllm | openai (default: from --model, else hf).")]
TemplateOpt = Annotated[Optional[str], typer.Option(
    "--template", help="chat | alpaca | qwen2-boxed | deepseek-math | raw (default: the model dir's stepdpo.json, "
    "else chat when the tokenizer has a chat template, else raw).")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Sequences generated per backend call (hf decodes "
                                           "them together); records per call = batch-size / n.")]
NOpt = Annotated[int, typer.Option("-n", "--n", help="Solutions sampled per problem.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="hf: auto (cuda if available, else cpu) | cpu | cuda[:i].")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="hf/vllm: auto | float32 | bfloat16 | float16.")]
SERVERS_HELP = ("a server URL, comma-separated URLs, or a file of URLs (one per line); several: each request goes "
                "to the least busy one and a failing one's requests go to the others (docs/scale.md)")
BaseUrlOpt = Annotated[Optional[str], typer.Option("--base-url", help=f"openai: {SERVERS_HELP}; else $OPENAI_BASE_URL.")]
ConcurrencyOpt = Annotated[Optional[int], typer.Option("--concurrency", help="openai: requests in flight per server.")]
StopOpt = Annotated[Optional[list[str]], typer.Option("--stop", help="Stop string (repeatable); cut from the text.")]
GradeTimeoutOpt = Annotated[float, typer.Option("--grade-timeout", help="Seconds allowed per answer comparison.")]
BackendOptionOpt = Annotated[Optional[list[str]], typer.Option(
    "--backend-option", help="KEY=VALUE given to the backend as is (repeatable; VALUE parsed as JSON when it is), "
    "e.g. tensor_parallel_size=8, kv_cache_gb=4, endpoint=chat, api_key_env=MY_KEY, unavailable_timeout=300.")]
DataParallelOpt = Annotated[int, typer.Option(
    "--data-parallel", help="N worker processes, each with its own engine on its own GPU group (tensor_parallel_size "
    "GPUs, see --backend-option), over an N-way split of the input, merged back in input order. Needs -o; "
    "--resume resumes every worker.")]


def check_ranges(*, temperature: float | None = None, top_p: float | None = None,
                 timeouts: dict[str, float] | None = None, sizes: dict[str, int | None] | None = None) -> None:
    """Range checks of the generation options, before anything is loaded or opened (exit 2 naming the option)."""
    if temperature is not None and not temperature >= 0:
        raise InputError(f"must be >= 0, got {temperature}", field="--temperature")
    if top_p is not None and not 0 < top_p <= 1:
        raise InputError(f"must be in (0, 1], got {top_p}", field="--top-p")
    for name, value in (timeouts or {}).items():  # 0 is documented: only the cheap grading tiers
        if not value >= 0:
            raise InputError(f"must be >= 0 (0: skip the symbolic tier), got {value}", field=name)
    for name, value in (sizes or {}).items():
        if value is not None and value < 1:
            raise InputError(f"must be >= 1, got {value}", field=name)


def records_per_call(batch_size: int, per_record: int) -> int:
    """--batch-size counts sequences in every stage; a record asks for `per_record` of them."""
    return max(1, batch_size // max(1, per_record))
