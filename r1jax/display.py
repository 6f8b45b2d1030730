"""Notebook display: completions as HTML with the R1 structure and reflections highlighted.

    records = read_records("runs/r1_zero_small/final_eval.jsonl")   # EvalPhase output
    html = compare_html(before_records, after_records, n=3)          # renders in Jupyter / Colab

`<think>` blocks are shaded, `<answer>` blocks green, and "wait, … let me recheck" sentences
(DeepSeek-R1 §2.2.4, the "aha moment") yellow. Text is HTML-escaped first, so model output
cannot inject markup. Nothing here imports jax or IPython: results are `Html` strings, which
Jupyter renders through `_repr_html_`.
"""
from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Sequence
from typing import Any

from r1jax.data.cot import RECHECK_PHRASE

THINK_STYLE = "background:#eef2f7;border-left:3px solid #8aa1c1;padding:1px 4px"
ANSWER_STYLE = "background:#dff5e1;border-left:3px solid #4caf50;padding:1px 4px;font-weight:bold"
REFLECTION_STYLE = "background:#fff3a0;font-weight:bold"
TAG_STYLE = "color:#7a4fbf;font-weight:bold"

_BLOCK_RE = re.compile(r"(&lt;think&gt;)(.*?)(&lt;/think&gt;)|(&lt;answer&gt;)(.*?)(&lt;/answer&gt;)", re.DOTALL)
# a sentence that stops to recheck: "Wait, 3 + 4 is not 8; let me recheck." (and bare "let me recheck")
_REFLECTION_RE = re.compile(r"(?:\bwait\b[^.;\n]*?[,;:]?\s*)?[^.;\n]*\b" + re.escape(RECHECK_PHRASE) + r"\b[^.\n&]*\.?",
                            re.IGNORECASE)
_TAG_RE = re.compile(r"&lt;/?(?:think|answer)&gt;")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # byte-fallback tokens of an untrained model


class Html(str):
    """A string of HTML that Jupyter and Colab render (instead of printing it)."""

    def _repr_html_(self) -> str:
        return str(self)


def count_reflections(completions: Sequence[str]) -> int:
    """How many completions contain a "let me recheck" reflection (case-insensitive)."""
    return sum(RECHECK_PHRASE in c.lower() for c in completions)


def highlight(completion: str) -> Html:
    """One completion as HTML: think block shaded, answer block green, reflections yellow, tags purple."""
    text = html.escape(_CONTROL_RE.sub("\N{REPLACEMENT CHARACTER}", completion))
    text = _REFLECTION_RE.sub(lambda m: f'<mark style="{REFLECTION_STYLE}">{m[0]}</mark>', text)

    def block(m: re.Match) -> str:
        style = THINK_STYLE if m[1] else ANSWER_STYLE
        opening, body, closing = (m[1], m[2], m[3]) if m[1] else (m[4], m[5], m[6])
        return f'<span style="{style}">{opening}{body}{closing}</span>'

    text = _BLOCK_RE.sub(block, text)
    text = _TAG_RE.sub(lambda m: f'<span style="{TAG_STYLE}">{m[0]}</span>', text)
    return Html(f'<div style="white-space:pre-wrap;font-family:monospace;font-size:12px">{text}</div>')


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-problem records an EvalPhase wrote (`<workdir>/<phase>.jsonl`, see EvalResult.write_jsonl)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _mark(ok: bool) -> str:
    return '<span style="color:#2e7d32">✓</span>' if ok else '<span style="color:#c62828">✗</span>'


def _sample_cell(record: dict[str, Any], sample: int) -> str:
    ok = bool(record["correct"][sample])
    answer = record["answers"][sample]
    said = "no answer" if answer is None else f"answer {html.escape(str(answer))}"
    return (f'<td style="vertical-align:top;text-align:left">{_mark(ok)} {said}'
            f'{highlight(record["completions"][sample])}</td>')


def records_html(records: Sequence[dict[str, Any]], n: int = 3, sample: int = 0) -> Html:
    """A table of the first `n` problems: question, gold answer and sample `sample`'s highlighted completion."""
    rows = [f'<tr><td style="vertical-align:top;text-align:left">{html.escape(r["question"])}<br>gold: '
            f'<b>{html.escape(str(r["gold"]))}</b></td>{_sample_cell(r, sample)}</tr>' for r in records[:n]]
    return Html('<table><tr><th>problem</th><th>completion</th></tr>' + "".join(rows) + "</table>")


def compare_html(before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]], n: int = 3, sample: int = 0,
                 labels: tuple[str, str] = ("before", "after")) -> Html:
    """Side by side, for the first `n` problems found in both: sample `sample` before and after training."""
    by_id = {r["id"]: r for r in after}
    pairs = [(b, by_id[b["id"]]) for b in before if b["id"] in by_id][:n]
    if not pairs:
        raise ValueError("compare_html: the two record lists share no problem id")
    head = (f'<tr><th>problem</th><th>{html.escape(labels[0])}</th><th>{html.escape(labels[1])}</th></tr>')
    rows = [f'<tr><td style="vertical-align:top;text-align:left">{html.escape(b["question"])}<br>gold: '
            f'<b>{html.escape(str(b["gold"]))}</b></td>{_sample_cell(b, sample)}{_sample_cell(a, sample)}</tr>'
            for b, a in pairs]
    return Html("<table>" + head + "".join(rows) + "</table>")


def reflections_html(records: Sequence[dict[str, Any]], n: int = 3) -> Html:
    """Up to `n` completions that contain a "let me recheck" reflection, highlighted (a note if none)."""
    found = [(r, i) for r in records for i, c in enumerate(r["completions"]) if RECHECK_PHRASE in c.lower()][:n]
    if not found:
        return Html("<p><i>no completion here contains a “let me recheck” reflection</i></p>")
    rows = [f'<tr><td style="vertical-align:top;text-align:left">{html.escape(r["question"])}<br>gold: '
            f'<b>{html.escape(str(r["gold"]))}</b></td>{_sample_cell(r, i)}</tr>' for r, i in found]
    return Html('<table><tr><th>problem</th><th>completion with a reflection</th></tr>' + "".join(rows) + "</table>")
