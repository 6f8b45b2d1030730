"""Code accuracy reward: the completion's last fenced Python block, run against the problem's tests.

DeepSeek-R1 (arXiv 2501.12948, Sec. 2.2.2) scores coding problems by running the model's program
on test cases. Column `tests` holds one spec per row, a JSON-serializable dict with either or both:

    {"inputs": ["1 2\\n", ...], "outputs": ["3\\n", ...]}    # stdin -> expected stdout
    {"asserts": "assert add(1, 2) == 3\\n...", "entry_point": "add"}    # a test file of asserts

Stdout is compared line by line with trailing whitespace dropped. An asserts string may hold
setup statements (imports, helpers) and a HumanEval-style `def check(candidate)` whose asserts
call `candidate` (read as `entry_point`, or the function passed to `check(...)`). Each assert
becomes a probe run in the sandbox and a comparison done here (see code_checks.py): the expected
values never enter the sandbox, so neither an early exit nor a patched checker can pass a test.
Programs run only in `r1jax.rewards.sandbox` children, never in the calling process.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import os
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from r1jax.data.jsonl import DatasetError, json_records
from r1jax.rewards.code_checks import Check, decode_value, parse_asserts
from r1jax.rewards.sandbox import Outcome, SandboxLimits, run_sandboxed
from r1jax.rewards.sandbox_child import output_digest

PYTHON_TAGS = ("python", "py", "python3", "")  # "": an untagged fence
SPEC_KEYS = ("inputs", "outputs", "asserts", "entry_point")


def extract_code(text: str) -> str | None:
    """The last complete fenced block tagged python/py/python3 or untagged; None if there is none."""
    blocks, lang, body = [], "", None
    for line in text.splitlines():
        stripped = line.strip()
        if body is None:
            if stripped.startswith("```"):
                lang, body = stripped[3:].strip().lower(), []
        elif stripped == "```":
            blocks.append((lang, textwrap.dedent("\n".join(body))))
            body = None
        else:
            body.append(line)
    code = [b for tag, b in blocks if tag in PYTHON_TAGS and b.strip()]
    return code[-1] if code else None


@dataclasses.dataclass(frozen=True)
class CodeTests:
    """A problem's tests, parsed: stdin inputs with the digests of their expected outputs, and checks."""

    stdio: tuple[tuple[str, str], ...] = ()
    checks: tuple[Check, ...] = ()
    setup: str = ""

    def __len__(self) -> int:
        return len(self.stdio) + len(self.checks)


def parse_tests(spec: CodeTests | Mapping[str, Any]) -> CodeTests:
    """A `tests` column entry as CodeTests; ValueError naming what is wrong with a malformed spec."""
    if isinstance(spec, CodeTests):
        return spec
    if not isinstance(spec, Mapping):
        raise ValueError(f"a tests spec must be a dict, got {type(spec).__name__}")
    try:
        key = json.dumps(dict(spec), sort_keys=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"a tests spec must be JSON-serializable: {e}") from None
    return _parse_spec(key)


@functools.lru_cache(maxsize=4096)
def _parse_spec(spec_json: str) -> CodeTests:
    spec = json.loads(spec_json)
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(f"unknown tests spec keys {unknown}; expected some of {list(SPEC_KEYS)}")
    inputs, outputs = spec.get("inputs"), spec.get("outputs")
    if (inputs is None) != (outputs is None):
        raise ValueError("tests spec: 'inputs' and 'outputs' go together")
    stdio: tuple[tuple[str, str], ...] = ()
    if inputs is not None:
        if not (isinstance(inputs, list) and isinstance(outputs, list) and len(inputs) == len(outputs)):
            raise ValueError("tests spec: 'inputs' and 'outputs' must be lists of equal length")
        if not all(isinstance(s, str) for s in inputs + outputs):
            raise ValueError("tests spec: 'inputs' and 'outputs' must hold strings")
        stdio = tuple((i, output_digest(o)) for i, o in zip(inputs, outputs))
    setup, checks = "", ()
    if spec.get("asserts") is not None:
        source = spec["asserts"]
        if isinstance(source, list) and all(isinstance(s, str) for s in source):
            source = "\n".join(source)
        if not isinstance(source, str):
            raise ValueError("tests spec: 'asserts' must be a string or a list of strings")
        setup, checks = parse_asserts(source, spec.get("entry_point"))
    tests = CodeTests(stdio, checks, setup)
    if not len(tests):
        raise ValueError("tests spec holds no tests")
    return tests


def grade(code: str, tests: CodeTests, limits: SandboxLimits = SandboxLimits()) -> list[bool]:
    """Whether `code` passes each test (stdin/stdout tests first, then checks), in one sandbox run."""
    jobs = [("stdio", text) for text, _ in tests.stdio] + [("call", c.probe) for c in tests.checks]
    return compare_outcomes(tests, run_sandboxed(code, jobs, tests.setup, limits).outcomes)


def compare_outcomes(tests: CodeTests, outcomes: Sequence[Outcome]) -> list[bool]:
    """Whether each test passed, from the sandbox's outcomes (in grade's order of tests)."""
    passed = [o.status == "ok" and o.digest == digest for (_, digest), o in zip(tests.stdio, outcomes)]
    return passed + [_check_passes(c, o) for c, o in zip(tests.checks, outcomes[len(tests.stdio):])]


def _check_passes(check: Check, outcome: Outcome) -> bool:
    if outcome.status != "ok":
        return False
    try:
        value = decode_value(outcome.value)
    except Exception:  # noqa: BLE001 - malformed report
        return False
    return check.passes(value)


@dataclasses.dataclass(frozen=True)
class CodeReward:
    """`reward(prompts, completions, tests=...)`: the fraction of tests passed, or 1/0 with all_or_nothing.

    A completion without a Python code block scores 0. Rows run in parallel on up to `workers`
    threads (default: one per CPU core), each driving its own sandbox process; under a
    `RewardPool` every call gets one row, so the pool's workers are the parallelism. The pool's
    timeout_s must exceed a row's worst case, `limits.max_run_s(number of tests)`.
    """

    limits: SandboxLimits = SandboxLimits()
    all_or_nothing: bool = False
    workers: int | None = None

    def __post_init__(self):
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1 (or None: one per CPU core), got {self.workers}")

    def __call__(self, prompts: Sequence[str], completions: Sequence[str],
                 tests: Sequence[Any] | None = None, **_: Any) -> list[float]:
        if tests is None:
            raise ValueError("the code reward needs the dataset column 'tests' (one test spec per row)")
        if len(tests) != len(completions):
            raise ValueError(f"column 'tests' has {len(tests)} rows but completions has {len(completions)}")
        parsed = [parse_tests(spec) for spec in tests]
        codes = [extract_code(c) for c in completions]
        workers = min(self.workers or os.cpu_count() or 1, len(codes))
        if workers <= 1:
            return [self.score(code, t) for code, t in zip(codes, parsed)]
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            return list(pool.map(self.score, codes, parsed))

    def score(self, code: str | None, tests: CodeTests) -> float:
        if code is None:
            return 0.0
        passed = grade(code, tests, self.limits)
        return float(all(passed)) if self.all_or_nothing else sum(passed) / len(passed)


code_reward = CodeReward()


@dataclasses.dataclass(frozen=True)
class CodeTask:
    """A coding problem: `question` for the policy, `tests` (a spec, see the module docstring) for the reward.

    Like `r1jax.data.Problem` it has `.question` and `.columns()`, which is all the GRPO loop reads.
    """

    id: str
    question: str
    tests: dict[str, Any]
    solution: str | None = None  # a reference program, when the dataset has one

    def columns(self) -> dict[str, Any]:
        """Keyword columns the code reward receives."""
        return {"tests": self.tests}


PROMPT_FIELDS = ("prompt", "question", "problem", "text", "description")
ID_FIELDS = ("id", "task_id", "problem_id")
SOLUTION_FIELDS = ("solution", "canonical_solution", "code")


def load_code_tasks(path: str | os.PathLike) -> tuple[CodeTask, ...]:
    """Coding problems from JSONL; every error names the file and line.

    Test layouts: "tests" (a spec as above); "inputs" + "outputs"; "input_output" (APPS: a JSON
    string or object with inputs/outputs); "test_list" (+ "test_setup_code", "test_imports") as in
    MBPP; "test" (+ "entry_point") as in HumanEval.
    """
    path = os.fspath(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    tasks, seen = [], {}
    for line_no, record in json_records(path):
        where = f"{path}:{line_no}"
        question = next((record[f] for f in PROMPT_FIELDS if f in record), None)
        if not isinstance(question, str) or not question.strip():
            raise DatasetError(f"{where}: needs a non-empty prompt in one of {list(PROMPT_FIELDS)}")
        task_id = str(next((record[f] for f in ID_FIELDS if f in record), f"{stem}-{line_no}"))
        if task_id in seen:
            raise DatasetError(f"{where}: id {task_id!r} already used on line {seen[task_id]}")
        seen[task_id] = line_no
        spec = _spec(record, where)
        try:
            parse_tests(spec)
        except ValueError as e:
            raise DatasetError(f"{where}: {e}") from None
        solution = next((record[f] for f in SOLUTION_FIELDS if isinstance(record.get(f), str)), None)
        tasks.append(CodeTask(task_id, question.strip(), spec, solution))
    if not tasks:
        raise DatasetError(f"{path}: no records (the file is empty or blank)")
    return tuple(tasks)


def _spec(record: dict[str, Any], where: str) -> dict[str, Any]:
    if isinstance(record.get("tests"), dict):
        return record["tests"]
    if "inputs" in record or "outputs" in record:
        return {"inputs": record.get("inputs"), "outputs": record.get("outputs")}
    if "input_output" in record:
        io = record["input_output"]
        try:
            io = json.loads(io) if isinstance(io, str) else io
        except ValueError:
            raise DatasetError(f"{where}: 'input_output' is not valid JSON") from None
        if not isinstance(io, dict) or io.get("fn_name"):
            raise DatasetError(f"{where}: 'input_output' must be stdin/stdout inputs and outputs "
                               "(call-based 'fn_name' records are not supported)")
        return {"inputs": io.get("inputs"), "outputs": io.get("outputs")}
    if "test_list" in record:
        if not (isinstance(record["test_list"], list) and all(isinstance(t, str) for t in record["test_list"])):
            raise DatasetError(f"{where}: 'test_list' must be a list of assert strings")
        parts = list(record.get("test_imports") or []) + [record.get("test_setup_code") or ""]
        return {"asserts": "\n".join([p for p in parts if p] + list(record["test_list"]))}
    if isinstance(record.get("test"), str):
        spec = {"asserts": record["test"]}
        if record.get("entry_point"):
            spec["entry_point"] = record["entry_point"]
        return spec
    raise DatasetError(f"{where}: no tests; expected 'tests', 'inputs'+'outputs', 'input_output', "
                       f"'test_list' or 'test' (have {sorted(record)})")
