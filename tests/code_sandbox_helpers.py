"""Shared helpers of the code-reward tests: fast limits, host-leftover checks, a checked sandbox run."""
import os
import tempfile

import pytest

from r1jax.recipes.code_rl import DEFAULT_TASKS as FIXTURE  # the recipe's 15 tasks
from r1jax.rewards.code import compare_outcomes, parse_tests
from r1jax.rewards.sandbox import (
    TEMP_PREFIX,
    SandboxLimits,
    isolation_level,
    run_sandboxed,
)

__all__ = ['FIXTURE', 'FAST', 'SUM_TESTS', 'ADD_TESTS', 'FIVE', '_need', '_sandbox_pids', '_uid_of', '_uid_pids', '_zombie_children', '_temp_dirs', 'no_leftovers', '_run', 'fenced']

FAST = SandboxLimits(timeout_s=1.0, cpu_s=1.0, memory_mb=256, output_bytes=64 << 10)
SUM_TESTS = parse_tests({"inputs": ["2 3\n", "-5 5\n", "100 250\n"], "outputs": ["5\n", "0\n", "350\n"]})
ADD_TESTS = parse_tests({"asserts": "assert add(1, 2) == 3\nassert add(-1, 1) == 0\nassert add(20, 22) == 42"})
FIVE = parse_tests({"inputs": ["2 3\n"], "outputs": ["5\n"]})  # attacks print 5 only if they succeed


def _need(level):
    """Skips the test where the host does not allow `level`."""
    try:
        isolation_level(level)
    except RuntimeError as e:
        pytest.skip(f"isolation level {level!r} is not available here: {e}")


def _all_sandbox_pids():
    """Live processes running the sandbox script (every sandbox process is a fork of it)."""
    pids = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if name.isdigit() and b"sandbox_child.py" in f.read():
                    pids.append(int(name))
        except OSError:
            continue
    return pids


def _parent(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _ancestry(pid):
    """`pid` and its ancestors up to (not including) pid 1."""
    chain = []
    while pid > 1 and pid not in chain:
        chain.append(pid)
        pid = _parent(pid)
    return chain


def _sandbox_pids():
    """The sandbox processes this test process answers for: those it (or its reward-pool workers)
    started, and orphans, whoever started them (a leak either way). Another xdist worker's running
    sandboxes are not counted: they are its tests' business."""
    sandboxes, me, mine = set(_all_sandbox_pids()), os.getpid(), []
    for pid in sandboxes:
        first = _parent(pid)
        while first in sandboxes:  # up to the first ancestor that is not a sandbox process
            first = _parent(first)
        if first <= 1 or me in _ancestry(first):
            mine.append(pid)
    return mine


def _uid_of(pid):
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _uid_pids(uid):
    return [int(name) for name in os.listdir("/proc") if name.isdigit() and _uid_of(name) == uid]


def _zombie_children():
    zombies = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            for pid in f.read().split():
                try:
                    with open(f"/proc/{pid}/stat") as stat:
                        if stat.read().rpartition(")")[2].split()[0] == "Z":
                            zombies.append(int(pid))
                except OSError:
                    continue
    return zombies


def _temp_dirs():
    """Sandbox temp dirs this test process answers for: made by it or its reward-pool workers, or
    left by a process that is gone; not those of another xdist worker's running sandboxes."""
    me, dirs = os.getpid(), set()
    for d in os.listdir(tempfile.gettempdir()):
        owner = d[len(TEMP_PREFIX):].partition("-")[0]
        if d.startswith(TEMP_PREFIX) and (not owner.isdigit() or not os.path.exists(f"/proc/{owner}")
                                          or me in _ancestry(int(owner))):
            dirs.add(d)
    return dirs


_zombies_before = set()


@pytest.fixture(scope="module", autouse=True)
def no_leftovers():
    """After the tests here: no new sandbox process, temp dir, or zombie child of this process."""
    dirs, pids = _temp_dirs(), set(_sandbox_pids())
    _zombies_before.update(_zombie_children())
    yield
    assert set(_sandbox_pids()) - pids == set()
    assert _temp_dirs() - dirs == set()
    assert set(_zombie_children()) <= _zombies_before


def _run(code, tests, level=None, limits=FAST):
    """(passed list, SandboxRun) of `code` on parsed `tests`, checking the host afterwards."""
    limits = SandboxLimits(**{**limits.__dict__, "isolation": level or "auto"})
    jobs = [("stdio", text) for text, _ in tests.stdio] + [("call", c.probe) for c in tests.checks]
    run = run_sandboxed(code, jobs, tests.setup, limits)
    assert set(_zombie_children()) <= _zombies_before
    if run.uid is not None:  # the root level: every sandbox process ran as this uid
        assert _uid_pids(run.uid) == []
    return compare_outcomes(tests, run.outcomes), run


def fenced(code):
    return f"<think>easy</think>\n<answer>\n```python\n{code}\n```\n</answer>"

