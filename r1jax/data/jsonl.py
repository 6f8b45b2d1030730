"""Load real datasets from JSONL: GSM8K ({"question", "answer" ending "#### N"}) and MATH layouts.

MATH records are {"problem", "answer"} or {"problem", "solution"} with the
answer in the solution's last `\\boxed{}`; when both are present "answer" wins.
Files are UTF-8 (a leading BOM is allowed). Blank (whitespace-only) lines are
skipped, since trailing newlines are common; every other line must be one JSON
object. Every error names the file and, where there is one, the line.
"""
from __future__ import annotations

import json
import os
from typing import Any

from r1jax.data.problems import Problem
from r1jax.errors import UsageError
from r1jax.text import last_boxed

LAYOUTS = ("auto", "gsm8k", "math")
ID_FIELDS = ("id", "unique_id")


class DatasetError(UsageError):
    """A dataset file r1jax cannot read; the message names the file and line."""


def load_jsonl(path: str | os.PathLike, layout: str = "auto", task: str | None = None) -> tuple[Problem, ...]:
    """Problems from a GSM8K- or MATH-layout JSONL file; `auto` decides from the first record.

    `task` names the problems' task (default: the layout's name). Ids come from
    an "id"/"unique_id" field, else `<file stem>-<line>`.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    path = os.fspath(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    problems: list[Problem] = []
    seen_ids: dict[str, int] = {}
    for line_no, record in json_records(path):
        where = f"{path}:{line_no}"
        if layout == "auto":
            layout = detect_layout(record, where)
        problem = (_gsm8k if layout == "gsm8k" else _math)(record, where, task or layout, f"{stem}-{line_no}")
        if problem.id in seen_ids:
            raise DatasetError(f"{where}: id {problem.id!r} already used on line {seen_ids[problem.id]}")
        seen_ids[problem.id] = line_no
        problems.append(problem)
    if not problems:
        raise DatasetError(f"{path}: no records (the file is empty or blank)")
    return tuple(problems)


def detect_layout(record: dict[str, Any], where: str = "<record>") -> str:
    """'math' if the record has "problem", 'gsm8k' if it has "question"; DatasetError otherwise."""
    if "problem" in record:
        return "math"
    if "question" in record:
        return "gsm8k"
    raise DatasetError(f"{where}: cannot tell the layout from keys {sorted(record)}; expected "
                       f"'question'+'answer' (GSM8K) or 'problem'+'solution'/'answer' (MATH)")


def gsm8k_final(answer_text: str, where: str = "<record>") -> str:
    """The number after the last '####' in a GSM8K answer, thousands commas removed."""
    head, sep, tail = answer_text.rpartition("####")
    final = tail.strip().replace(",", "")
    if not sep:
        raise DatasetError(f"{where}: GSM8K answer has no '####' final-answer marker")
    if not final:
        raise DatasetError(f"{where}: GSM8K answer has nothing after '####'")
    return final


def json_records(path: str):
    """(line number, JSON object) for each non-blank line; errors name file and line."""
    try:
        with open(path, "rb") as f:
            raw_lines = f.read().split(b"\n")
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from None
    for line_no, raw in enumerate(raw_lines, start=1):
        try:
            text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise DatasetError(f"{path}:{line_no}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{line_no}: malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(record, dict):
            raise DatasetError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
        yield line_no, record


def _text_field(record: dict[str, Any], name: str, where: str) -> str:
    """A required non-empty string field (an int is accepted and converted)."""
    if name not in record:
        raise DatasetError(f"{where}: missing field {name!r} (have {sorted(record)})")
    value = record[name]
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{where}: field {name!r} must be a non-empty string, got {value!r}")
    return value


def _record_id(record: dict[str, Any], default: str, where: str) -> str:
    for name in ID_FIELDS:
        if name in record:
            return _text_field(record, name, where)
    return default


def _gsm8k(record: dict[str, Any], where: str, task: str, default_id: str) -> Problem:
    question = _text_field(record, "question", where)
    answer_text = _text_field(record, "answer", where)
    final = gsm8k_final(answer_text, where)
    reference = answer_text.rpartition("####")[0].strip() or None
    return Problem(id=_record_id(record, default_id, where), task=task, question=question.strip(),
                   answer=final, reference=reference)


def _math(record: dict[str, Any], where: str, task: str, default_id: str) -> Problem:
    question = _text_field(record, "problem", where)
    solution = _text_field(record, "solution", where) if "solution" in record else None
    if "answer" in record:
        answer = _text_field(record, "answer", where).strip()
    elif solution is not None:
        answer = last_boxed(solution)
        if not answer:
            raise DatasetError(f"{where}: MATH solution has no complete \\boxed{{}} answer")
    else:
        raise DatasetError(f"{where}: MATH record needs 'answer' or 'solution' (have {sorted(record)})")
    return Problem(id=_record_id(record, default_id, where), task=task, question=question.strip(),
                   answer=answer, reference=solution)
