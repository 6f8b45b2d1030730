"""Adversarial programs against the code-reward sandbox: each scores 0 and leaves the host unharmed."""
import os
import resource
import secrets
import socket
import subprocess
import sys
import threading
import time

import pytest

from r1jax.rewards.code import parse_tests
from r1jax.rewards.code_checks import Check
from r1jax.rewards.sandbox import (
    LEVELS,
    TEMP_PREFIX,
    SandboxLimits,
    remove_stale_workdirs,
)
from code_sandbox_helpers import *  # noqa: F401,F403  limits, leftover checks, _run, fenced


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
    peak, done = {}, threading.Event()  # uid → most live processes seen at once

    def watch():  # at the root level every process of one sandbox run has that run's uid
        while not done.is_set():  # (another xdist worker's sandboxes run at once, under other uids)
            counts = {}
            for name in os.listdir("/proc"):
                u = _uid_of(name) if name.isdigit() else None
                if u is not None and FAST.first_uid <= u < FAST.first_uid + FAST.uid_count:
                    counts[u] = counts.get(u, 0) + 1
            for u, n in counts.items():
                peak[u] = max(peak.get(u, 0), n)
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
        assert 2 <= peak.get(run.uid, 0) <= FAST.max_processes, (run.uid, peak)
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
    deadline = time.monotonic() + 30  # a loaded host starts the three slowly; the loop ends as soon as they run
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
