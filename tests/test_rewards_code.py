"""Code reward: extraction, test parsing, honest scores, and adversarial programs that must score 0."""
import json
import os
import resource
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from r1jax.data.jsonl import DatasetError
from r1jax.rewards import RewardPool
from r1jax.rewards.code import CodeReward, compare_outcomes, extract_code, load_code_tasks, parse_tests
from r1jax.rewards.code_checks import Check, decode_value, parse_asserts
from r1jax.rewards.sandbox import (
    LEVELS,
    TEMP_PREFIX,
    SandboxLimits,
    isolation_level,
    remove_stale_workdirs,
    run_sandboxed,
)

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "code_tasks.jsonl")
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


def _sandbox_pids():
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
    return {d for d in os.listdir(tempfile.gettempdir()) if d.startswith(TEMP_PREFIX)}


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


# ------------------------------------------------------------------ extraction and parsing


def test_extract_code_takes_the_last_python_or_untagged_block():
    text = "```python\nprint(1)\n```\nthen\n```cpp\nint main(){}\n```\n```\n  print(2)\n```\n```python\nprint(3)"
    assert extract_code(text) == "print(2)"  # the last python block is unterminated; cpp is skipped
    assert extract_code("no code here") is None
    assert extract_code("```Python\nx = 1\n```") == "x = 1"
    assert extract_code("```py\nx = 2\n```\n```bash\nls\n```") == "x = 2"


def test_asserts_become_probes_compared_outside_the_sandbox():
    setup, checks = parse_asserts(
        "import math\nassert f(1) == 2\nassert 3 == f(2)\nassert f(0) is None\nassert not g(4)\nassert g(5)\n"
        "assert math.isclose(h(1), 0.5, rel_tol=1e-3)\nassert abs(h(2) - 1.5) < 1e-6\n"
        "assert f(3) == set((1, 2)) and f(4) in [1, 2]\nassert True\n")
    assert setup == "import math"
    assert [(c.probe, c.op) for c in checks] == [
        ("f(1)", "=="), ("f(2)", "=="), ("f(0)", "is"), ("g(4)", "falsy"), ("g(5)", "truthy"),
        ("h(1)", "isclose"), ("h(2)", "absdiff<"), ("f(3)", "=="), ("f(4)", "in")]
    assert checks[1].probe_left is False and checks[7].expected == {1, 2}
    assert checks[5].passes(0.5004) and not checks[5].passes(0.6) and not checks[5].passes("x")
    assert checks[6].passes(1.5) and not checks[6].passes(1.6)


def test_humaneval_check_candidate_is_renamed_to_the_entry_point():
    source = "METADATA = {}\n\ndef check(candidate):\n    import math\n    assert candidate([1]) == 1\n\ncheck(total)\n"
    setup, checks = parse_asserts(source)
    assert checks[0].probe == "total([1])" and "METADATA" in setup and "import math" in setup
    assert parse_asserts(source.replace("check(total)\n", ""), "other")[1][0].probe == "other([1])"


@pytest.mark.parametrize("source", [
    "assert f(1) == g(1)",  # both sides computed in the sandbox
    "assert bool(f(1) == 2)",  # the comparison would run in the sandbox
    "assert 1 < f(1) < 3",  # chained
    "assert f(1) is 5",
    "assert f(1) == 2 ** 10",  # no powers in expected values
    "assert f(1) == list(range(10000000))",  # too long an expected value
    "x = 1",  # nothing tested
])
def test_unsupported_asserts_are_refused(source):
    with pytest.raises(ValueError):
        parse_asserts(source)


def test_spec_errors_are_clear():
    with pytest.raises(ValueError, match="unknown tests spec keys"):
        parse_tests({"input": ["1"]})
    with pytest.raises(ValueError, match="equal length"):
        parse_tests({"inputs": ["1"], "outputs": []})
    with pytest.raises(ValueError, match="no tests"):
        parse_tests({"inputs": [], "outputs": []})
    with pytest.raises(ValueError, match="isolation"):
        SandboxLimits(isolation="docker")


def test_decode_value_inverts_the_tagged_encoding():
    from r1jax.rewards.sandbox_child import encode_value

    value = [1, 2.5, "s", None, True, (1, (2,)), {1: [b"x"]}, {3}, frozenset({4}), 1 + 2j, 10 ** 30]
    assert decode_value(json.loads(json.dumps(encode_value(value)))) == value


def test_fixture_tasks_load_in_every_layout():
    tasks = load_code_tasks(FIXTURE)
    assert len(tasks) >= 10 and all(t.solution for t in tasks)
    assert {k for t in tasks for k in t.tests} == {"inputs", "outputs", "asserts", "entry_point"}
    assert tasks[0].columns() == {"tests": tasks[0].tests}


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "p", "inputs": ["1"]', "malformed JSON"),
    ('{"inputs": ["1"], "outputs": ["1"]}', "needs a non-empty prompt"),
    ('{"prompt": "p"}', "no tests"),
    ('{"prompt": "p", "test_list": ["assert f(1) == g(2)"]}', "line 1: unsupported assert"),
    ('{"prompt": "p", "input_output": "{\\"fn_name\\": \\"f\\", \\"inputs\\": [], \\"outputs\\": []}"}', "fn_name"),
])
def test_loader_errors_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok", "inputs": ["1"], "outputs": ["1"]}\n\n' + line + "\n")
    with pytest.raises(DatasetError, match=f"bad.jsonl:3: .*{message}"):
        load_code_tasks(path)


# ------------------------------------------------------------------ honest programs


def test_reference_solutions_score_1_and_wrong_programs_0():
    tasks = load_code_tasks(FIXTURE)
    reward = CodeReward(limits=FAST, workers=2)
    tests = [t.tests for t in tasks]
    assert reward(["p"] * len(tasks), [fenced(t.solution) for t in tasks], tests=tests) == [1.0] * len(tasks)
    wrong = fenced("print('nope')\ndef add(a, b):\n    return None")
    assert reward(["p"] * len(tasks), [wrong] * len(tasks), tests=tests) == [0.0] * len(tasks)


def test_partial_solutions_score_the_fraction_passed():
    partial = fenced("a, b = map(int, input().split())\nprint(abs(a) + abs(b))")  # wrong on -5 5
    hangs = fenced("a, b = map(int, input().split())\nwhile a < 0: pass\nprint(a + b)")  # -5 5 times out
    add = fenced("def add(a, b):\n    return a + b if a > 0 else 1")  # wrong on add(-1, 1)
    scores = CodeReward(limits=FAST)(["p"] * 3, [partial, hangs, "no code"], tests=[SUM_TESTS] * 3)
    assert scores == pytest.approx([2 / 3, 2 / 3, 0.0])
    assert CodeReward(limits=FAST)(["p"], [add], tests=[ADD_TESTS]) == pytest.approx([2 / 3])
    assert CodeReward(limits=FAST, all_or_nothing=True)(["p"], [partial], tests=[SUM_TESTS]) == [0.0]
    syntax_error = fenced("def add(a, b) return a + b")
    assert CodeReward(limits=FAST)(["p"], [syntax_error], tests=[ADD_TESTS]) == [0.0]


def test_reward_runs_in_a_reward_pool():
    tasks = load_code_tasks(FIXTURE)[:4]
    completions = [fenced(t.solution) for t in tasks[:2]] + [fenced("print('x')")] * 2
    reward = CodeReward(limits=FAST)
    with RewardPool(num_workers=2, timeout_s=60) as pool:
        scores = pool.score(reward, ["p"] * 4, completions, tests=[t.tests for t in tasks])
    assert scores.values == [1.0, 1.0, 0.0, 0.0] and (scores.errors, scores.timeouts) == (0, 0)


def test_a_non_root_trainer_is_told_once_what_is_weaker(monkeypatch, caplog):
    from r1jax.rewards import sandbox

    _need("userns")
    monkeypatch.setattr(sandbox, "_levels", {})
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 1000)
    with caplog.at_level("WARNING", logger="r1jax.rewards.sandbox"):
        assert isolation_level() == isolation_level() == "userns"
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["code sandbox runs at level 'userns'"]


def test_root_trainers_get_the_root_level():
    if os.geteuid() != 0:
        pytest.skip("not root")
    assert isolation_level() == "root"


# ------------------------------------------------------------------ adversarial programs


@pytest.mark.parametrize("level", LEVELS)
def test_infinite_loop_times_out_after_printing_the_answer(level):
    _need(level)
    start = time.monotonic()
    passed, run = _run("print(5, flush=True)\nwhile True:\n    pass", FIVE, level)
    assert passed == [False] and run.outcomes[0].status == "timeout"
    assert time.monotonic() - start < 10


def test_fork_bomb_is_bounded_and_leaves_no_process():
    level = "root" if os.geteuid() == 0 else None  # RLIMIT_NPROC binds uid 0 only at the root level
    if level:
        _need(level)
    bomb = ("import os\nprint(5, flush=True)\n"
            "if os.fork() == 0:\n    os.setsid()\n"  # one escapes its session and process group
            "while True:\n    try:\n        os.fork()\n    except OSError:\n        pass")
    peak, done = [0], threading.Event()

    def watch():  # at the root level every sandbox process has a uid in FAST's range
        while not done.is_set():
            uids = [_uid_of(name) for name in os.listdir("/proc") if name.isdigit()]
            in_range = [u is not None and FAST.first_uid <= u < FAST.first_uid + FAST.uid_count for u in uids]
            peak[0] = max(peak[0], sum(in_range))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    start = time.monotonic()
    try:
        passed, run = _run(bomb, FIVE, level)
    finally:
        done.set()
        watcher.join()
    assert passed == [False] and run.outcomes[0].status == "timeout"
    assert time.monotonic() - start < 10
    if level == "root":
        assert 2 <= peak[0] <= FAST.max_processes
    subprocess.run(["true"], check=True)  # the host can still fork


@pytest.mark.parametrize("level", LEVELS)
def test_allocating_50_gb_hits_the_address_space_limit(level):
    _need(level)
    passed, run = _run("x = bytearray(50 * 2**30)\nx[-1] = 1\nprint(5)", FIVE, level)
    assert passed == [False] and run.outcomes[0].status == "error"


@pytest.mark.parametrize("level", LEVELS)
def test_printing_1_gb_stops_at_the_output_cap(level):
    _need(level)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    passed, run = _run("import sys\nchunk = '5' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(chunk)",
                       FIVE, level)
    assert passed == [False] and run.outcomes[0].status == "overflow"
    assert time.monotonic() - start < 10
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 200 << 10  # KiB


@pytest.mark.parametrize("level", LEVELS)
def test_writing_outside_the_working_directory_fails(level, tmp_path):
    _need(level)
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(tmp_path, 0o777)
    os.chmod(open_dir, 0o777)  # only the sandbox, not file permissions, may stop this
    token = secrets.token_hex(8)
    targets = [str(open_dir / "pwned"), f"/tmp/r1jax-pwned-{token}", f"/dev/shm/r1jax-pwned-{token}",
               os.path.join(os.getcwd(), f"r1jax-pwned-{token}")]
    code = (f"wrote = 0\nfor path in {targets!r}:\n    try:\n        open(path, 'w').write('x')\n"
            "        wrote += 1\n    except OSError:\n        pass\nprint(5 if wrote else 0)")
    passed, _ = _run(code, FIVE, level)
    assert passed == [False]
    assert not any(os.path.exists(p) for p in targets)


@pytest.mark.parametrize("level", LEVELS)
def test_reading_a_planted_file_fails(level, tmp_path):
    _need(level)
    secret = f"tok-{secrets.token_hex(16)}"
    planted = [tmp_path / "readable.txt", tmp_path / "private.txt"]
    for path, mode in zip(planted, (0o644, 0o600)):
        path.write_text(secret)
        os.chmod(path, mode)
    os.chmod(tmp_path, 0o755)
    paths = [str(p) for p in planted]
    code = (f"for path in {paths!r}:\n    try:\n        print(open(path).read())\n        break\n"
            "    except OSError:\n        pass")
    passed, _ = _run(code, parse_tests({"inputs": [""], "outputs": [secret]}), level)
    assert passed == [False]


def test_expected_outputs_never_enter_the_sandbox():
    secret = f"tok-{secrets.token_hex(16)}"
    scan = ("import gc, re\nfound = [o for o in gc.get_objects() if isinstance(o, (str, dict, list))\n"
            "         and re.search(r'tok-[0-9a-f]{32}', repr(o))]\n"
            "print(re.search(r'tok-[0-9a-f]{32}', repr(found)).group() if found else 'none')")
    passed, run = _run(scan, parse_tests({"inputs": ["x"], "outputs": [secret]}),
                       limits=SandboxLimits(timeout_s=3.0, cpu_s=3.0))
    assert passed == [False] and run.outcomes[0].head == "none"


@pytest.mark.parametrize("level", LEVELS)
def test_sockets_cannot_reach_the_host(level):
    _need(level)
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    tcp_port, udp_port = tcp.getsockname()[1], udp.getsockname()[1]
    code = f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {tcp_port}), timeout=0.5).sendall(b"hi")
    print(5)
except OSError:
    pass
try:
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"hi", ("127.0.0.1", {udp_port}))
    print(5)
except OSError:
    pass
"""
    try:
        passed, _ = _run(code, FIVE, level)
        for s in (tcp, udp):
            s.setblocking(False)
        with pytest.raises(BlockingIOError):
            tcp.accept()
        with pytest.raises(BlockingIOError):
            udp.recv(16)
    finally:
        tcp.close()
        udp.close()
    assert passed == [False]


@pytest.mark.parametrize("level", LEVELS)
def test_killing_the_parent_or_the_trainer_fails(level):
    _need(level)
    decoy = subprocess.Popen(["sleep", "60"])
    targets = [decoy.pid, os.getpid()]
    code = f"""
import os, signal, time
def exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
dead = 0
for pid in {targets!r} + [os.getppid()]:
    if exists(pid):
        for kill in (os.kill, os.killpg):
            try:
                kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.05)
        dead += not exists(pid)
try:
    os.kill(-1, signal.SIGKILL)
except OSError:
    pass
print(5 if dead else 0)
"""
    try:
        passed, run = _run(code, FIVE, level)
        assert decoy.poll() is None  # alive
        assert passed == [False] and run.outcomes[0].status != "lost"  # the harness survived too
    finally:
        decoy.kill()
        decoy.wait()


@pytest.mark.parametrize("level", ["root", "userns"])  # basic: a setsid'd sleeper may outlive it
def test_a_dying_trainer_takes_its_sandbox_along(level):
    _need(level)
    script = ("import sys\nfrom r1jax.rewards.sandbox import SandboxLimits, run_sandboxed\nprint('go', flush=True)\n"
              "run_sandboxed('import os, time\\nif os.fork() == 0:\\n    os.setsid()\\n    time.sleep(100)\\n"
              "while True: pass', [('stdio', '')], limits=SandboxLimits(timeout_s=60, isolation=sys.argv[1]))")
    before = set(_sandbox_pids())
    trainer = subprocess.Popen([sys.executable, "-c", script, level], stdout=subprocess.PIPE)
    assert trainer.stdout.readline() == b"go\n"
    deadline = time.monotonic() + 10
    while len(set(_sandbox_pids()) - before) < 3 and time.monotonic() < deadline:  # harness, test, sleeper
        time.sleep(0.05)
    assert len(set(_sandbox_pids()) - before) >= 3
    trainer.kill()  # as a pool does to a worker past its timeout
    trainer.wait()
    trainer.stdout.close()
    deadline = time.monotonic() + 5
    while set(_sandbox_pids()) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(_sandbox_pids()) - before == set()
    assert any(d.startswith(f"{TEMP_PREFIX}{trainer.pid}-") for d in _temp_dirs())  # it could not clean up
    remove_stale_workdirs()  # the next trainer does (once, when it first probes the isolation level)
    assert not any(d.startswith(f"{TEMP_PREFIX}{trainer.pid}-") for d in _temp_dirs())


@pytest.mark.parametrize("level", LEVELS)
def test_exiting_before_the_tests_run_scores_0(level):
    _need(level)
    for exit_call in ("import sys\nsys.exit(0)", "import os\nos._exit(0)"):
        passed, _ = _run(f"def add(a, b):\n    return a + b\n{exit_call}", ADD_TESTS, level)
        assert passed == [False] * 3


@pytest.mark.parametrize("level", LEVELS)
def test_monkey_patching_the_checker_scores_0(level):
    _need(level)
    patcher = """
import builtins, json, os, sys
class Always:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __bool__(self): return True
    def __hash__(self): return 0
import __main__ as harness
for name in list(vars(harness)):
    if callable(getattr(harness, name)) and not isinstance(getattr(harness, name), type):
        setattr(harness, name, lambda *a, **k: Always())
json.dumps = lambda *a, **k: '["pass", []]'
builtins.isinstance = lambda *a: True
forged = 'R1JAX-SANDBOX 0 {"level": "root", "results": [{"status": "ok", "value": 3}]}\\n'
print(forged)
for fd in range(3, 64):
    try:
        os.write(fd, forged.encode())
    except OSError:
        pass
for path in ("/proc/1/fd/1", "/proc/%d/fd/1" % os.getppid()):
    try:
        open(path, "w").write(forged)
    except OSError:
        pass
class Sneaky(int):
    def __eq__(self, other): return True
def add(a, b):
    return Always() if a > 0 else Sneaky(7)
"""
    passed, _ = _run(patcher, ADD_TESTS, level)
    assert passed == [False] * 3
    stdio_patcher = "import __main__ as h\nh.output_digest = h.normalize_output = lambda *a: ''\nprint(4)"
    assert _run(stdio_patcher, FIVE, level)[0] == [False]


def test_each_test_runs_in_a_fresh_process():
    code = ("import sys\na, b = map(int, input().split())\nprint(0 if hasattr(sys, 'seen') else a + b)\n"
            "sys.seen = True")
    assert _run(code, SUM_TESTS)[0] == [True] * 3


@pytest.mark.parametrize("level", LEVELS)
def test_new_namespaces_are_refused(level):
    _need(level)
    code = ("import ctypes, os\nlibc = ctypes.CDLL(None)\nmade = libc.unshare(0x10000000) == 0\n"
            "pid = libc.syscall(56 if os.uname().machine == 'x86_64' else 220, 0x10000000 | 17, 0, 0, 0, 0)\n"
            "if pid == 0:\n    os._exit(0)\nprint(5 if made or pid > 0 else 0)")
    assert _run(code, FIVE, level)[0] == [False]


@pytest.mark.parametrize("level", LEVELS)
def test_honest_program_passes_at_every_level(level):
    _need(level)
    code = ("import heapq, fractions, subprocess, threading\nout = []\n"
            "t = threading.Thread(target=lambda: out.append(sum(map(int, input().split()))))\nt.start()\nt.join()\n"
            "print(subprocess.run(['echo', str(out[0])], capture_output=True, text=True).stdout.strip())")
    passed, run = _run(code, SUM_TESTS, level)
    assert passed == [True] * 3 and run.level == level and run.seccomp


def test_check_compares_plain_values_only():
    check = Check("f(1)", "==", 3)
    assert check.passes(3) and check.passes(3.0) and not check.passes("3") and not check.passes(None)
