"""Running model-written Python against tests in an isolated child process: limits, levels, protocol.

`run_sandboxed(code, tests)` starts `python -S -B sandbox_child.py` in a new session with a
minimal environment, sends it the job (program, test inputs or probe expressions: never the
expected outputs), and reads one result line, capped in size and bounded in time. The child
isolates itself at the strongest level the host allows (`isolation_level()` probes once per
process and logs once when it is weaker than "root"; see sandbox_child.py for what each level
does) and runs every test in its own fork. Nothing here ever executes the program in the
calling process. When the child is done or out of time its whole process group is killed,
every process it made dies with it (PID namespace, or a subreaper at the basic level), and its
working directory is removed.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

from r1jax.rewards import sandbox_child
from r1jax.rewards.sandbox_child import MAGIC

LEVELS = ("root", "userns", "basic")
STATUSES = ("ok", "error", "timeout", "overflow", "lost")
CHILD_SCRIPT = sandbox_child.__file__
TEMP_PREFIX = "r1jax-sandbox-"
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
        "HOME": sandbox_child.SANDBOX_DIR, "TMPDIR": sandbox_child.SANDBOX_DIR}
_STARTUP_S = 10.0  # the judge's allowance for interpreter start and isolation, on a loaded host
_GRACE_S = 1.0  # after SIGTERM, how long the child may take to kill its tests before SIGKILL
_STDERR_BYTES = 16 << 10
_WEAKER = {
    "userns": "a user namespace: network, PID and mount namespaces with a minimal root, but the "
              "program runs with the trainer's uid and capabilities dropped",
    "basic": "no namespaces: sockets and signals to other processes are blocked by seccomp, files "
             "by Landlock where the kernel has it; a fork bomb is bounded by RLIMIT_NPROC only for "
             "non-root uids",
}

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Per-test limits and the isolation level ("auto": the strongest this host allows)."""

    timeout_s: float = 4.0  # wall clock per test
    cpu_s: float = 4.0  # RLIMIT_CPU per test (rounded up to whole seconds)
    memory_mb: int = 512  # RLIMIT_AS per process
    output_bytes: int = 1 << 20  # stdout (or a probe's value) per test; more fails the test
    file_mb: int = 16  # RLIMIT_FSIZE, and the size of the /sandbox tmpfs
    max_processes: int = 16  # RLIMIT_NPROC for the sandbox's uid, threads included
    isolation: str = "auto"
    first_uid: int = 1_000_000_000  # root level: each run gets a random uid in
    uid_count: int = 1_000_000  # [first_uid, first_uid + uid_count), owning nothing on the host

    def __post_init__(self):
        if self.isolation not in ("auto", *LEVELS):
            raise ValueError(f"isolation must be 'auto' or one of {LEVELS}, got {self.isolation!r}")
        for name in ("timeout_s", "cpu_s", "memory_mb", "output_bytes", "file_mb", "max_processes",
                     "uid_count"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxLimits.{name} must be > 0, got {getattr(self, name)!r}")
        if not (0 < self.first_uid and self.first_uid + self.uid_count < 2**32 - 1):
            raise ValueError("SandboxLimits: uids must lie in (0, 2**32 - 1)")

    def max_run_s(self, tests: int) -> float:
        """The longest one sandbox run of `tests` tests may take before it is killed."""
        return _STARTUP_S + tests * (self.timeout_s + 0.5) + _GRACE_S


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One test's result: `digest` of the normalized stdout (stdin/stdout tests) or the probe's `value`."""

    status: str  # one of STATUSES; "lost": the sandbox reported nothing for this test
    digest: str | None = None
    value: Any = None  # tagged JSON, see sandbox_child.encode_value and code_checks.decode_value
    head: str = ""  # the first 200 characters of the normalized stdout, for debugging


@dataclasses.dataclass(frozen=True)
class SandboxRun:
    """What one sandbox run reported, and how it was isolated."""

    outcomes: tuple[Outcome, ...]
    level: str
    uid: int | None  # root level: the run's uid (no process may own it afterwards)
    wall_s: float
    stderr: str  # the sandbox's own diagnostics (the tests' stderr is discarded)
    seccomp: bool = False  # whether the tests ran under the seccomp filter
    landlock: int = 0  # the kernel's Landlock ABI (used at the basic level); 0: none


def run_sandboxed(code: str, tests: Sequence[tuple[str, str]], setup: str = "",
                  limits: SandboxLimits = SandboxLimits()) -> SandboxRun:
    """Runs `code` once per test: ("stdio", stdin text) or ("call", expression to evaluate after it).

    `setup` (imports, helpers from the test file) runs after the program, before each expression.
    """
    for kind, _ in tests:
        if kind not in ("stdio", "call"):
            raise ValueError(f"test kind must be 'stdio' or 'call', got {kind!r}")
    level = isolation_level(limits.isolation)
    return _run(code, tests, setup, limits, level)


_levels: dict[str, str] = {}
_levels_lock = threading.Lock()


def isolation_level(requested: str = "auto") -> str:
    """The level sandboxes run at, probed once per process; raises RuntimeError if none works."""
    with _levels_lock:
        if not _levels:
            remove_stale_workdirs()
        if requested not in _levels:
            candidates = (LEVELS if os.geteuid() == 0 else LEVELS[1:]) if requested == "auto" else (requested,)
            failures = []
            for level in candidates:
                why, lacks = _probe(level)
                if why is None:
                    break
                failures.append(f"{level}: {why}")
            else:
                raise RuntimeError("no sandbox level works on this host: " + "; ".join(failures))
            if level != "root" and requested == "auto":
                why = "; ".join(failures) if failures else "the root level needs root"
                logger.warning("code sandbox runs at level %r (%s), since %s", level, _WEAKER[level], why)
            for lack in lacks:
                logger.warning("code sandbox at level %r lacks %s", level, lack)
            _levels[requested] = level
        return _levels[requested]


def remove_stale_workdirs() -> None:
    """Removes working directories left by judges that died (killed by a pool timeout, say)."""
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        owner = name[len(TEMP_PREFIX):].partition("-")[0]
        if name.startswith(TEMP_PREFIX) and owner.isdigit() and not os.path.exists(f"/proc/{owner}"):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _probe(level: str) -> tuple[str | None, list[str]]:
    """(None if a trivial program runs correctly at `level`, else why not; what it lacks)."""
    limits = SandboxLimits(timeout_s=10.0, isolation=level)
    run = _run("print(sum(map(int, input().split())))", [("stdio", "2 3\n")], "", limits, level)
    outcome = run.outcomes[0]
    if outcome.status != "ok" or outcome.digest != sandbox_child.output_digest("5"):
        return f"probe {outcome.status}, {run.stderr.strip()[-300:] or 'no diagnostics'}", []
    lacks = [] if run.seccomp else ["seccomp on this CPU architecture: sockets are NOT blocked"
                                    + (" outside the network namespace" if level != "basic" else "")]
    if level == "basic" and not run.landlock:
        lacks.append("Landlock in this kernel: the program can read and write what the trainer's uid can")
    return None, lacks


def _run(code: str, tests: Sequence[tuple[str, str]], setup: str, limits: SandboxLimits,
         level: str) -> SandboxRun:
    start = time.monotonic()
    nonce = secrets.token_hex(16)
    uid = limits.first_uid + secrets.randbelow(limits.uid_count) if level == "root" else None
    workdir = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-")
    job = {
        "nonce": nonce, "level": level, "uid": uid, "workdir": workdir, "code": code, "setup": setup,
        "nproc": limits.max_processes,
        "tests": [{"kind": kind, ("input" if kind == "stdio" else "expr"): text} for kind, text in tests],
        "limits": {name: getattr(limits, name)
                   for name in ("timeout_s", "cpu_s", "memory_mb", "output_bytes", "file_mb")},
    }
    payload = json.dumps(job).encode()
    deadline = start + limits.max_run_s(len(tests)) - _GRACE_S
    out_cap = len(tests) * (limits.output_bytes + 1024) + (64 << 10)
    try:
        out, err = _execute(payload, deadline, out_cap)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = _report(out, nonce)
    return SandboxRun(_outcomes(report, len(tests)), level, uid, time.monotonic() - start,
                      err.decode("utf-8", "replace"), report.get("seccomp") is True,
                      report.get("landlock") if isinstance(report.get("landlock"), int) else 0)


def _execute(payload: bytes, deadline: float, out_cap: int) -> tuple[bytes, bytes]:
    """Feeds the job, reads capped stdout/stderr until EOF or the deadline, then kills the group."""
    proc = subprocess.Popen([sys.executable, "-S", "-B", CHILD_SCRIPT], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_ENV, cwd="/",
                            start_new_session=True)
    try:
        out, err, finished = _communicate(proc, payload, deadline, out_cap)
        if not finished:
            os.kill(proc.pid, signal.SIGTERM)  # the child kills its tests and exits
            _wait_no_reap(proc.pid, time.monotonic() + _GRACE_S)
        else:
            _wait_no_reap(proc.pid, max(deadline, time.monotonic() + _GRACE_S))
    finally:
        try:  # the group leader is unreaped, so its pgid cannot have been reused
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
    return out, err


def _wait_no_reap(pid: int, until: float) -> None:
    while time.monotonic() < until:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return
        time.sleep(0.002)


def _communicate(proc: subprocess.Popen, payload: bytes, deadline: float,
                 out_cap: int) -> tuple[bytes, bytes, bool]:
    """(stdout, stderr, finished): finished is False on timeout or when stdout passes `out_cap`."""
    sel = selectors.DefaultSelector()
    for stream, event in ((proc.stdin, selectors.EVENT_WRITE), (proc.stdout, selectors.EVENT_READ),
                          (proc.stderr, selectors.EVENT_READ)):
        os.set_blocking(stream.fileno(), False)
        sel.register(stream, event)
    out, err, view = bytearray(), bytearray(), memoryview(payload)
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(out), bytes(err), False
            for key, _ in sel.select(left):
                if key.fileobj is proc.stdin:
                    try:
                        view = view[os.write(proc.stdin.fileno(), view[:1 << 16]):]
                    except BrokenPipeError:
                        view = view[:0]
                    if not view:
                        sel.unregister(proc.stdin)
                        proc.stdin.close()
                    continue
                try:
                    chunk = os.read(key.fileobj.fileno(), 1 << 16)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(key.fileobj)
                elif key.fileobj is proc.stdout:
                    out += chunk
                    if len(out) > out_cap:
                        return bytes(out), bytes(err), False
                elif len(err) < _STDERR_BYTES:
                    err += chunk[:_STDERR_BYTES - len(err)]
        return bytes(out), bytes(err), True
    finally:
        sel.close()


def _report(out: bytes, nonce: str) -> dict[str, Any]:
    """The JSON object on the line that carries `nonce`; {} if there is none."""
    prefix = f"{MAGIC} {nonce} ".encode()
    for line in out.split(b"\n"):
        if line.startswith(prefix):
            try:
                report = json.loads(line[len(prefix):])
            except (ValueError, RecursionError):
                return {}
            return report if isinstance(report, dict) else {}
    return {}


def _outcomes(report: dict[str, Any], n: int) -> tuple[Outcome, ...]:
    """One Outcome per test; "lost" for every test the report does not cover."""
    results = report.get("results")
    results = results if isinstance(results, list) else []
    outcomes = []
    for i in range(n):
        r = results[i] if i < len(results) and isinstance(results[i], dict) else {}
        status = r.get("status") if r.get("status") in STATUSES else "lost"
        digest, head = r.get("digest"), r.get("head", "")
        outcomes.append(Outcome(status, digest if isinstance(digest, str) else None, r.get("value"),
                                head if isinstance(head, str) else ""))
    return tuple(outcomes)
