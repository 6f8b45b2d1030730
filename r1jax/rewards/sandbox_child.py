"""Inside the code sandbox: isolate, run each test in a fresh fork, print one result line.

Started by `r1jax.rewards.sandbox` as `python -S -B sandbox_child.py` with a JSON job on stdin.
Standard library only; of r1jax it imports only its sibling sandbox_isolation.py. Levels (the
judge probes which one the host allows):

- root: new mount, network, PID, IPC and UTS namespaces; the root becomes a read-only tmpfs
  holding only system libraries, the Python install and /dev/{null,zero,full,random,urandom}, a
  fresh /proc, and a size-capped tmpfs at /sandbox, the working directory and the only writable
  place; PID 1 of the namespace is the harness, and everything runs as a fresh unprivileged uid.
- userns: the same inside a user namespace (for non-root trainers): the program keeps the
  trainer's uid, with every capability dropped, and sees only the minimal root.
- basic: no namespaces; the harness is a child subreaper. Landlock (if the kernel has it) limits
  files to reading system libraries and the Python install and writing the working directory;
  seccomp also forbids signals to any other process. Root drops every capability but keeps uid 0,
  which RLIMIT_NPROC does not bind: this level is for non-root trainers on hosts without namespaces.

In every level a test's fork gets rlimits (CPU, address space, file size, processes, open files),
`no_new_privs`, and a seccomp filter: EPERM for socket(), ptrace, clone/unshare into new
namespaces, io_uring, bpf, perf_event_open, keyrings, mount.

Why results cannot be faked: the sandbox never sees an expected output. For stdin/stdout tests
the harness reports a digest of what the program printed; for assert tests it reports the plain
data (ints, strings, lists, ...) the probed expression returned; the trainer compares. Model code
runs only in forks whose fds 0-2 are replaced before it starts, so it cannot write to the
trainer's pipe; the harness, which holds that pipe, runs no model code. The result line carries
the job's nonce so that nothing else on the pipe is taken for it.
"""
import builtins
import importlib.util
import json
import math
import os
import select
import signal
import sys
import time

if __name__ == "__main__":  # a script: this directory (r1jax/rewards) must not shadow the stdlib
    del sys.path[0]
    _spec = importlib.util.spec_from_file_location(
        "sandbox_isolation", os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_isolation.py"))
    isolation = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(isolation)
else:
    from r1jax.rewards import sandbox_isolation as isolation

MAGIC = "R1JAX-SANDBOX"
SANDBOX_DIR = isolation.SANDBOX_DIR
SETUP_FAILED = 70  # exit status of a sandbox whose isolation could not be set up


def normalize_output(text: str) -> str:
    """Output as the judge compares it: trailing whitespace of each line and trailing blank lines dropped."""
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def output_digest(text: str) -> str:
    import hashlib

    return hashlib.sha256(normalize_output(text).encode("utf-8", "surrogatepass")).hexdigest()


def encode_value(value, depth: int = 0):
    """A probe's value as tagged JSON of plain data; raises TypeError for anything else."""
    if depth > 100:
        raise ValueError("value nested too deeply")
    if value is None or value is True or value is False:
        return value
    for kind in (int, float, str):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, complex):
        return ["complex", [float(value.real), float(value.imag)]]
    if isinstance(value, (bytes, bytearray)):
        return ["bytes", bytes(value).hex()]
    if isinstance(value, dict):
        return ["dict", [[encode_value(k, depth + 1), encode_value(v, depth + 1)] for k, v in value.items()]]
    for tag, kind in (("list", list), ("tuple", tuple), ("set", set), ("frozenset", frozenset)):
        if isinstance(value, kind):
            return [tag, [encode_value(v, depth + 1) for v in value]]
    raise TypeError(f"a test can only report plain data, not {type(value).__name__}")


def _run_program(job: dict, test: dict) -> int:
    """In the test's fork: the model's program, then (assert tests) the probe. Returns the exit status."""
    code = compile(job["code"], "solution.py", "exec")
    sys.argv = ["solution.py"]
    if test["kind"] == "call":
        scope = {"__name__": "solution", "__builtins__": builtins}
        exec(code, scope)  # a SystemExit here means the program quit before the test: a failure
        if job["setup"]:
            exec(compile(job["setup"], "tests.py", "exec"), scope)
        data = json.dumps(encode_value(eval(compile(test["expr"], "test.py", "eval"), scope))).encode()
        while data:
            data = data[os.write(3, data):]
        return 0
    try:
        exec(code, {"__name__": "__main__", "__builtins__": builtins, "__file__": "solution.py"})
        status = 0
    except SystemExit as e:
        status = 0 if e.code is None or e.code == 0 else 1
    sys.stdout.flush()
    return status


def _test_child(job: dict, test: dict, stdin_fd: int, out_fd: int, devnull: int) -> None:
    status = 1
    try:
        call = test["kind"] == "call"
        os.dup2(stdin_fd, 0)
        os.dup2(devnull if call else out_fd, 1)
        os.dup2(devnull, 2)
        if call:
            os.dup2(out_fd, 3)
        os.closerange(4 if call else 3, os.sysconf("SC_OPEN_MAX"))
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the harness's handler is not the program's
        sys.stdin = open(0, encoding="utf-8", errors="replace", closefd=False)
        sys.stdout = open(1, "w", encoding="utf-8", errors="replace", closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", errors="replace", closefd=False)
        isolation.prctl(isolation.PR_SET_PDEATHSIG, signal.SIGKILL)
        isolation.set_limits(job["limits"], job["nproc"])
        if job["level"] == "basic":
            isolation.landlock(job["workdir"])
        if isolation.seccomp_supported():
            isolation.seccomp(only_self_signals=job["level"] == "basic")
        status = _run_program(job, test)
    except BaseException:  # noqa: BLE001 - the program failed; say so on (discarded) stderr
        try:
            import traceback

            traceback.print_exc()
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(status)


def _collect(pid: int, fd: int, cap: int, deadline: float) -> tuple[str, bytes]:
    """Reads a test's output until the child exits, past `cap` bytes ('overflow') or the deadline."""
    os.set_blocking(fd, False)
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    buf = bytearray()
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout", b""
            events = dict(poller.poll(math.ceil(left * 1000)))
            while fd in events:
                try:
                    chunk = os.read(fd, 1 << 16)
                except BlockingIOError:
                    break
                if not chunk:  # every writer closed it; wait for the exit alone
                    poller.unregister(fd)
                    events.pop(fd)
                    break
                buf += chunk
                if len(buf) > cap:
                    return "overflow", b""
            if pidfd in events:
                while True:  # what the child wrote before exiting is still in the pipe
                    try:
                        chunk = os.read(fd, 1 << 16)
                    except BlockingIOError:
                        chunk = b""
                    if not chunk:
                        return "exited", bytes(buf)
                    buf += chunk
                    if len(buf) > cap:
                        return "overflow", b""
    finally:
        os.close(pidfd)


def _run_test(job: dict, test: dict, devnull: int) -> dict:
    limits = job["limits"]
    if test["kind"] == "call":
        stdin_fd = os.dup(devnull)
    else:
        stdin_fd = os.memfd_create("stdin")
        data = test["input"].encode()
        while data:
            data = data[os.write(stdin_fd, data):]
        os.lseek(stdin_fd, 0, os.SEEK_SET)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _test_child(job, test, stdin_fd, write_fd, devnull)
    os.close(write_fd)
    os.close(stdin_fd)
    try:
        how, data = _collect(pid, read_fd, limits["output_bytes"], time.monotonic() + limits["timeout_s"])
    finally:
        os.close(read_fd)
        os.kill(pid, signal.SIGKILL)
        _, wait_status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(wait_status)
    if how != "exited":
        return {"status": how}
    if code in (-signal.SIGXCPU, -signal.SIGKILL):  # RLIMIT_CPU: soft limit, then hard
        return {"status": "timeout"}
    if code != 0:
        return {"status": "error"}
    if test["kind"] == "call":
        try:
            return {"status": "ok", "value": json.loads(data)}
        except (ValueError, RecursionError):
            return {"status": "error"}
    text = normalize_output(data.decode("utf-8", "replace"))
    return {"status": "ok", "digest": output_digest(text), "head": text[:200]}


def _kill_leftovers(namespaced: bool) -> None:
    """Kills and reaps every process a test left behind (they all end up as this process's children)."""
    while True:
        if namespaced:  # PID 1 of the namespace: -1 reaches every process in it but this one
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
        else:  # a child subreaper: orphans are reparented here
            for task in os.listdir("/proc/self/task"):
                with open(f"/proc/self/task/{task}/children") as f:
                    for pid in f.read().split():
                        try:
                            os.kill(int(pid), signal.SIGKILL)
                        except ProcessLookupError:
                            pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _harness(job: dict, namespaced: bool) -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    results = []
    for test in job["tests"]:
        results.append(_run_test(job, test, devnull))
        _kill_leftovers(namespaced)
    report = {"level": job["level"], "results": results, "seccomp": isolation.seccomp_supported(),
              "landlock": isolation.landlock_abi()}
    line = f"{MAGIC} {job['nonce']} {json.dumps(report)}\n".encode()
    while line:
        line = line[os.write(1, line):]


def _read_job() -> dict:
    chunks = []
    while chunk := os.read(0, 1 << 20):
        chunks.append(chunk)
    return json.loads(b"".join(chunks))


def _namespaced(job: dict) -> int:
    """Unshares, then forks PID 1 of the new namespaces: it isolates itself, drops privileges, runs tests."""
    userns = job["level"] == "userns"
    isolation.unshare_namespaces(userns)
    uid = 0 if userns else job["uid"]  # userns: 0 inside is the trainer's uid outside
    child = []
    signal.signal(signal.SIGTERM, lambda *_: child and os.kill(child[0], signal.SIGKILL))
    pid = os.fork()
    if pid == 0:
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            isolation.enter_minimal_root(job["workdir"], job["limits"], uid, uid)
            if userns:
                isolation.drop_capabilities()
            else:
                isolation.become(uid)
            isolation.prctl(isolation.PR_SET_NO_NEW_PRIVS, 1)
            isolation.prctl(isolation.PR_SET_DUMPABLE, 0)
            isolation.prctl(isolation.PR_SET_PDEATHSIG, signal.SIGKILL)  # a uid change clears it: set it after
            job["workdir"] = SANDBOX_DIR
            _harness(job, namespaced=True)
            os._exit(0)
        except BaseException as e:  # noqa: BLE001
            os.write(2, f"sandbox setup failed: {e!r}\n".encode())
            os._exit(SETUP_FAILED)
    child.append(pid)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _basic(job: dict) -> int:
    """No namespaces: this process is the harness and a subreaper; as root it drops every capability.

    (Root keeps uid 0 here, since the Python install may be private to root: RLIMIT_NPROC does not
    bind uid 0. A root trainer gets the root level; basic is for hosts that allow no namespaces.)
    """
    isolation.prctl(isolation.PR_SET_CHILD_SUBREAPER, 1)
    os.chdir(job["workdir"])
    os.environ.update(HOME=job["workdir"], TMPDIR=job["workdir"])
    if os.geteuid() == 0:
        isolation.drop_capabilities()
    else:  # RLIMIT_NPROC counts all of this uid's tasks, the trainer's included
        job["nproc"] += isolation.uid_tasks(os.getuid())
    isolation.prctl(isolation.PR_SET_NO_NEW_PRIVS, 1)
    isolation.prctl(isolation.PR_SET_DUMPABLE, 0)
    signal.signal(signal.SIGTERM, lambda *_: (_kill_leftovers(namespaced=False), os._exit(1)))
    _harness(job, namespaced=False)
    return 0


def main() -> int:
    isolation.prctl(isolation.PR_SET_PDEATHSIG, signal.SIGKILL)  # the trainer's thread died: so do we
    job = _read_job()
    return _basic(job) if job["level"] == "basic" else _namespaced(job)


if __name__ == "__main__":
    sys.exit(main())
