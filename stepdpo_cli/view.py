"""`stepdpo view`: one self-contained HTML page for any stage's output, recognised from its fields.

Kinds: pairs (chosen vs rejected with a word-level diff), localized solutions (the first wrong step marked),
search trees (`stepdpo search`: every node with visits, Q and prior, the chosen path and the pairs taken from it),
eval results (accuracy by dataset / subject / level with 95% intervals, wrong answers listed), training
metrics (the paper's Figure 2: reward accuracy and margin curves, loss, learning rate) and, for anything else,
the raw records. Charts are SVG drawn here; records are embedded as JSON and rendered a page at a time by the
inline script (search by id or text, a filter per kind, paging), so 10,000 pairs open fast. Nothing is loaded
from the network: CSS and JS are inlined from `view_assets/`.
"""
from __future__ import annotations

import html
import math
import os
from importlib import resources
from typing import Any, Iterable, Sequence

import orjson

from .stages.evaluate import natural_key

KINDS = ("pairs", "localized", "eval", "metrics", "trees", "records")
PAGE_SIZE = 50
# The metric curves drawn for a training run: the paper's Figure 2 (reward accuracy, margin), then loss, lr.
METRIC_CHARTS = (("reward_accuracy", "reward accuracy"), ("margin", "reward margin (chosen - rejected)"),
                 ("loss", "loss"), ("lr", "learning rate"), ("chosen_reward", "chosen reward"),
                 ("rejected_reward", "rejected reward"))
COLORS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def detect_kind(records: Sequence[dict]) -> str:
    """The kind of a stage's output, from the fields of its first records."""
    for record in records[:20]:
        if isinstance(record.get("tree"), list) and "chosen_path" in record:
            return "trees"
        if "chosen" in record and "rejected" in record:
            return "pairs"
        if "localize_status" in record or ("first_error_step" in record and "steps" in record):
            return "localized"
        if "step" in record and "loss" in record and not ({"prompt", "problem"} & set(record)):
            return "metrics"
        if "correct" in record and ("prediction" in record or "predictions" in record) and "answer" in record:
            return "eval"
    return "records"


def render_html(records: Sequence[dict], *, kind: str | None = None, title: str = "stepdpo view",
                sources: Sequence[str] = (), page_size: int = PAGE_SIZE) -> str:
    """The page as one string. `records` may carry `_source` (the file each came from) for metrics overlays."""
    kind = kind or detect_kind(records)
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "trees":
        records = [_with_tree_pairs(r) for r in records]
    charts, filters = "", _filters(records, kind)
    if kind == "metrics":
        charts = _metric_charts(records)
    elif kind == "eval":
        charts = _eval_charts(records)
    elif kind == "pairs":
        charts = _pair_stats(records)
    elif kind == "localized":
        charts = _localized_stats(records)
    elif kind == "trees":
        charts = _tree_stats(records)
    payload = {"kind": kind, "pageSize": page_size, "filter": filters, "records": list(records)}
    # "<" only occurs inside JSON strings, where \u003c means the same: no record can close the script tag.
    data = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY).replace(b"<", b"\\u003c").decode()
    assets = resources.files("stepdpo_cli").joinpath("view_assets")
    css = assets.joinpath("view.css").read_text(encoding="utf-8")
    js = assets.joinpath("view.js").read_text(encoding="utf-8")
    source_text = ", ".join(sources)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{html.escape(title)}</title><style>{css}</style></head>\n"
        f"<body data-kind=\"{kind}\"><header><h1>{html.escape(title)}</h1>"
        f"<div class=\"meta\">{kind} &middot; <span id=\"total\">{len(records)}</span> records"
        + (f" &middot; {html.escape(source_text)}" if source_text else "") + "</div></header>\n"
        f"<section id=\"charts\">{charts}</section>\n"
        "<nav id=\"controls\"><input id=\"search\" type=\"search\" placeholder=\"search id or text\" "
        "aria-label=\"search\"><select id=\"filter\" aria-label=\"filter\"></select>"
        "<span id=\"count\"></span><span class=\"pager\"><button id=\"prev\" type=\"button\">&larr; prev</button>"
        "<span id=\"page\"></span><button id=\"next\" type=\"button\">next &rarr;</button></span></nav>\n"
        "<main id=\"items\"></main>\n"
        f"<script id=\"data\" type=\"application/json\">{data}</script>\n<script>{js}</script>\n</body></html>\n"
    )


EVIDENCE_FIELDS = ("localize_status", "judge_raw", "step_verdicts", "step_scores", "rollouts_spent", "localizer")


def write_view(paths: Sequence[str], output: str, *, kind: str | None = None, title: str | None = None,
               page_size: int = PAGE_SIZE, evidence: str | None = None) -> dict:
    """Read JSONL file(s), write the page atomically to `output`; returns {kind, records, bytes}.

    `evidence`: a localize (or rectify) output whose records' localizer evidence (the judge's text, verdicts,
    rollout rates) is shown with the pairs made from them (pair rows do not carry it), matched by `source_id`."""
    from .records import InputError, atomic_write_bytes, iter_jsonl

    if kind is not None and kind not in KINDS:
        raise InputError(f"choose one of {', '.join(KINDS)}", field="--kind")
    for path in paths:
        if os.path.exists(output) and os.path.exists(path) and os.path.samefile(path, output):
            raise InputError("is the same file as an input; write to another file", source=output, field="--output")
    records: list[dict] = []
    kinds: set[str] = set()
    for path in paths:
        rows = list(iter_jsonl(path))
        if rows:
            kinds.add(detect_kind(rows))
        for record in rows:
            if len(paths) > 1:
                record["_source"] = os.path.basename(path)
        records.extend(rows)
    if kind is None and len(kinds) > 1:
        raise InputError(f"files of different kinds ({', '.join(sorted(kinds))}); view one kind at a time, "
                         "or name one with --kind", field="FILE")
    found = kind or detect_kind(records)
    if evidence:
        by_id = {str(r.get("id")): {k: r[k] for k in EVIDENCE_FIELDS if k in r} for r in iter_jsonl(evidence)}
        for record in records:
            found_evidence = by_id.get(str(record.get("source_id", record.get("id"))))
            if found_evidence:
                record["_evidence"] = found_evidence
    page = render_html(records, kind=found, title=title or f"stepdpo view: {', '.join(map(os.path.basename, paths))}",
                       sources=[os.path.basename(p) for p in paths], page_size=page_size)
    data = page.encode("utf-8")
    atomic_write_bytes(output, data)
    return {"kind": found, "records": len(records), "bytes": len(data)}


# ---------------------------------------------------------------------------------------------- filters

def _filters(records: Sequence[dict], kind: str) -> dict:
    """The filter menu: a field and its values (as strings), "" = all."""
    def values_of(field: str) -> list[str]:
        seen: dict[str, None] = {}
        for record in records:
            value = record.get(field)
            if value is not None and value != "":
                seen.setdefault(str(value).lower() if isinstance(value, bool) else str(value), None)
        return sorted(seen, key=natural_key)

    if kind == "eval":
        return {"field": "correct", "label": "answers", "options": [["false", "wrong answers"], ["true", "right"],
                                                                    ["", "all"]]}
    field = {"pairs": "dataset", "localized": "localize_status", "metrics": "_source", "trees": "_status"}.get(kind, "")
    options = values_of(field) if field else []
    label = "search status" if kind == "trees" else field
    return {"field": field, "label": label, "options": [["", "all"]] + [[v, v] for v in options]}


# ---------------------------------------------------------------------------------------------- charts (SVG)

def _scale(value: float, low: float, high: float, size: float) -> float:
    return 0.0 if high == low else (value - low) / (high - low) * size


def line_chart(title: str, series: list[tuple[str, list[tuple[float, float]]]], *, width: int = 420,
               height: int = 220) -> str:
    """An SVG line chart: one polyline per (label, [(x, y)]) series, axes with min/max ticks, a legend."""
    points = [p for _, s in series for p in s if math.isfinite(p[1])]
    if not points:
        return ""
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    if y0 == y1:
        y0, y1 = y0 - 0.5, y1 + 0.5
    legend = 13 * len(series) if len(series) > 1 else 0  # legend lines sit above the plot, not on the curves
    height += legend
    left, bottom, top, right = 56, 28, 24 + legend, 10
    w, h = width - left - right, height - top - bottom
    parts = [f'<svg class="chart line" data-metric="{html.escape(title)}" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" role="img"><title>{html.escape(title)}</title>',
             f'<text class="ct" x="{left}" y="15">{html.escape(title)}</text>',
             f'<line class="axis" x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}"/>',
             f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + h}"/>']
    for value in (y0, y1):
        y = top + h - _scale(value, y0, y1, h)
        parts.append(f'<text class="tick" x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{value:.3g}</text>')
    parts.append(f'<text class="tick" x="{left}" y="{height - 8}">{x0:g}</text>'
                 f'<text class="tick" x="{left + w}" y="{height - 8}" text-anchor="end">{x1:g}</text>')
    for index, (label, values) in enumerate(series):
        coords = " ".join(f"{left + _scale(x, x0, x1, w):.1f},{top + h - _scale(y, y0, y1, h):.1f}"
                          for x, y in values if math.isfinite(y))
        color = COLORS[index % len(COLORS)]
        parts.append(f'<polyline class="series" data-label="{html.escape(label)}" fill="none" stroke="{color}" '
                     f'stroke-width="1.6" points="{coords}"/>')
        if len(series) > 1:
            parts.append(f'<text class="legend" x="{left + w}" y="{28 + 13 * index}" text-anchor="end" '
                         f'fill="{color}">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _metric_charts(records: Sequence[dict]) -> str:
    by_source: dict[str, list[dict]] = {}
    for record in records:
        by_source.setdefault(str(record.get("_source", "run")), []).append(record)
    charts = []
    for key, title in METRIC_CHARTS:
        series = [(source, [(float(r["step"]), float(r[key])) for r in rows
                            if isinstance(r.get(key), (int, float)) and isinstance(r.get("step"), (int, float))])
                  for source, rows in by_source.items()]
        series = [s for s in series if s[1]]
        if series:
            charts.append(line_chart(title, series))
    return '<div class="charts">' + "".join(charts) + "</div>"


def bar_chart(title: str, rows: list[tuple[str, float, float | None, float | None, str]], *,
              width: int = 560) -> str:
    """Horizontal bars in [0, 1] with optional 95% interval whiskers: rows of (label, value, low, high, note)."""
    if not rows:
        return ""
    row_h, left, right, top = 22, 150, 130, 26
    height = top + row_h * len(rows) + 24
    w = width - left - right
    parts = [f'<svg class="chart bars" data-group="{html.escape(title)}" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" role="img"><title>{html.escape(title)}</title>',
             f'<text class="ct" x="4" y="16">{html.escape(title)}</text>']
    for index, (label, value, low, high, note) in enumerate(rows):
        y = top + index * row_h
        parts.append(f'<text class="tick" x="{left - 6}" y="{y + 15}" text-anchor="end">{html.escape(label)}</text>'
                     f'<rect class="bar" x="{left}" y="{y + 3}" width="{value * w:.1f}" height="{row_h - 8}"/>')
        if low is not None and high is not None:
            lx, hx, mid = left + low * w, left + high * w, y + row_h / 2
            parts.append(f'<line class="ci" x1="{lx:.1f}" y1="{mid}" x2="{hx:.1f}" y2="{mid}"/>'
                         f'<line class="ci" x1="{lx:.1f}" y1="{y + 6}" x2="{lx:.1f}" y2="{y + row_h - 6}"/>'
                         f'<line class="ci" x1="{hx:.1f}" y1="{y + 6}" x2="{hx:.1f}" y2="{y + row_h - 6}"/>')
        parts.append(f'<text class="tick" x="{left + w + 6}" y="{y + 15}">{html.escape(note)}</text>')
    axis_y = top + row_h * len(rows) + 4
    parts.append(f'<line class="axis" x1="{left}" y1="{axis_y}" x2="{left + w}" y2="{axis_y}"/>'
                 f'<text class="tick" x="{left}" y="{axis_y + 14}">0%</text>'
                 f'<text class="tick" x="{left + w}" y="{axis_y + 14}" text-anchor="end">100%</text></svg>')
    return "".join(parts)


def _accuracy_row(label: str, stats: dict) -> tuple[str, float, float, float, str]:
    low, high = stats["ci95"]
    return (label, stats["accuracy"], low, high,
            f"{100 * stats['accuracy']:.1f}% [{100 * low:.0f}, {100 * high:.0f}] n={stats['count']}")


def _eval_charts(records: Sequence[dict]) -> str:
    from .stages.evaluate import EvalStats

    stats = EvalStats()
    for record in records:
        if "correct" in record:
            stats.add(record)
    summary = stats.summary(1)
    charts = [bar_chart("accuracy (95% Wilson interval)", [_accuracy_row("all", summary)])]
    for group, values in summary["by"].items():
        charts.append(bar_chart(f"by {group}", [_accuracy_row(str(v), s) for v, s in values.items()]))
    return '<div class="charts">' + "".join(charts) + "</div>"


def _stat_list(items: Iterable[tuple[str, Any]]) -> str:
    return '<dl class="stats">' + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>"
                                           for k, v in items) + "</dl>"


def _histogram(title: str, counts: dict[Any, int]) -> str:
    total = sum(counts.values()) or 1
    rows = [(str(k), v / total, None, None, f"{v} ({100 * v / total:.0f}%)")
            for k, v in sorted(counts.items(), key=lambda kv: kv[0])]
    return bar_chart(title, rows)


def _pair_stats(records: Sequence[dict]) -> str:
    steps: dict[int, int] = {}
    for record in records:
        if isinstance(record.get("first_error_step"), int):
            steps[record["first_error_step"]] = steps.get(record["first_error_step"], 0) + 1
    empty = sum(1 for r in records if not r.get("chosen") or not r.get("rejected"))
    problems = len({r.get("problem_id", r.get("prompt")) for r in records})
    return (_stat_list([("pairs", len(records)), ("problems", problems), ("empty chosen/rejected", empty)])
            + ('<div class="charts">' + _histogram("pairs by first error step", steps) + "</div>" if steps else ""))


def _localized_stats(records: Sequence[dict]) -> str:
    status: dict[str, int] = {}
    steps: dict[int, int] = {}
    for record in records:
        status[str(record.get("localize_status", "undecided"))] = status.get(
            str(record.get("localize_status", "undecided")), 0) + 1
        if isinstance(record.get("first_error_step"), int):
            steps[record["first_error_step"]] = steps.get(record["first_error_step"], 0) + 1
    return ('<div class="charts">' + _histogram("localize status", status)
            + (_histogram("first error step", steps) if steps else "") + "</div>")


def _with_tree_pairs(record: dict) -> dict:
    """A search record with the pairs `pair --strategy tree` takes from it (`_pairs`) and its status (`_status`)."""
    from .records import InputError
    from .search.pairs import tree_pair_rows

    try:
        pairs = [{"node": int(r["id"].rsplit("/t", 1)[1]), "chosen": r["chosen_node"], "rejected": r["rejected_node"],
                  "label_smoothing": r["label_smoothing"]} for r in tree_pair_rows(record)]
    except (InputError, KeyError, TypeError, ValueError):
        pairs = []
    return {**record, "_pairs": pairs, "_status": str((record.get("search") or {}).get("status", ""))}


def _tree_stats(records: Sequence[dict]) -> str:
    nodes = [len(r.get("tree") or []) for r in records]
    right = sum(1 for r in records if _path_end(r).get("correct"))
    return _stat_list([("problems", len(records)), ("nodes", sum(nodes)),
                       ("mean nodes per tree", f"{sum(nodes) / len(nodes):.1f}" if nodes else "0"),
                       ("chosen path right", right), ("tree pairs", sum(len(r["_pairs"]) for r in records)),
                       ("timeouts", sum(1 for r in records if r["_status"] == "timeout"))])


def _path_end(record: dict) -> dict:
    path, tree = record.get("chosen_path") or [], record.get("tree") or []
    by_id = {n.get("id"): n for n in tree if isinstance(n, dict)}
    return by_id.get(path[-1], {}) if path else {}
