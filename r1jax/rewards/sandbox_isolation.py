"""The sandbox's isolation: namespaces and a minimal root, capabilities, Landlock, seccomp, rlimits.

Used by sandbox_child.py (see its docstring for the levels); standard library only. Linux only;
syscall numbers are given for x86_64 and aarch64 (elsewhere the namespaced levels and seccomp
are unavailable, and the judge falls back to what works).
"""
import ctypes
import math
import os
import resource
import struct
import sys

SANDBOX_DIR = "/sandbox"
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache",
                "/etc/localtime")
DEVICES = ("null", "zero", "full", "random", "urandom")

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x4000000, 0x8000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_SET_SECUREBITS = 1, 4, 22, 28
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 36, 38
# Linux statvfs flag -> mount flag, to keep a bind mount's flags when remounting it read-only
# (numbers, not os.ST_*: those are missing on other systems, where importing this must still work)
_KEEP_FLAGS = {2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC, 1024: 1024, 2048: 2048, 4096: 1 << 21}

# Syscall numbers per architecture; numbers >= 424 are the same everywhere.
_NR = {
    "x86_64": dict(pivot_root=155, capset=126, clone=56, socket=41, ptrace=101, kill=62, tkill=200, tgkill=234,
                   rt_sigqueueinfo=129, rt_tgsigqueueinfo=297, process_vm_readv=310,
                   process_vm_writev=311, perf_event_open=298, bpf=321, userfaultfd=323, keyctl=250,
                   add_key=248, request_key=249, unshare=272, setns=308, mount=165),
    "aarch64": dict(pivot_root=41, capset=91, clone=220, socket=198, ptrace=117, kill=129, tkill=130, tgkill=131,
                    rt_sigqueueinfo=138, rt_tgsigqueueinfo=240, process_vm_readv=270,
                    process_vm_writev=271, perf_event_open=241, bpf=280, userfaultfd=282, keyctl=219,
                    add_key=217, request_key=218, unshare=97, setns=268, mount=40),
}.get(os.uname().machine)
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}.get(os.uname().machine)
_DENIED = ("socket", "ptrace", "process_vm_readv", "process_vm_writev", "perf_event_open", "bpf",
           "userfaultfd", "keyctl", "add_key", "request_key", "unshare", "setns", "mount")
_SIGNALLING = ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")
_PIDFD_SEND_SIGNAL, _IO_URING, _CLONE3 = 424, (425, 426, 427), 435
_CLONE_NAMESPACES = 0x7E020000  # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
_LANDLOCK_CREATE, _LANDLOCK_ADD_RULE, _LANDLOCK_RESTRICT = 444, 445, 446

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
libc.syscall.restype = ctypes.c_long


def ok(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def syscall(nr: int, *args) -> int:
    """A raw syscall; ints travel as C longs, buffers as pointers."""
    args = [a if isinstance(a, ctypes.Array) else ctypes.c_long(a) for a in args]
    return ok(libc.syscall(ctypes.c_long(nr), *args), f"syscall {nr}")


def prctl(option: int, arg: int | ctypes.Array = 0, arg2: int = 0) -> None:
    arg = arg if isinstance(arg, ctypes.Array) else ctypes.c_ulong(arg)
    ok(libc.prctl(ctypes.c_int(option), arg, ctypes.c_ulong(arg2), ctypes.c_ulong(0), ctypes.c_ulong(0)),
       f"prctl {option}")


def mount(source, target, fstype, flags, data=None) -> None:
    enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
    ok(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def unshare_namespaces(user: bool) -> None:
    """New mount, network, PID, IPC and UTS namespaces; with `user`, in a user namespace where we are 0."""
    uid, gid = os.geteuid(), os.getegid()
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    ok(libc.unshare(flags | (CLONE_NEWUSER if user else 0)), "unshare")
    if user:
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)


def python_dirs() -> list[str]:
    """The Python install's directories that are not already under a system path."""
    dirs = {os.path.abspath(p) for p in (sys.base_prefix, sys.base_exec_prefix)}
    return sorted(d for d in dirs if not any(d == s or d.startswith(s + "/") for s in SYSTEM_PATHS))


def _bind_readonly(source: str, target: str, device: bool = False) -> None:
    mount(source, target, None, MS_BIND | MS_REC)
    keep = sum(ms for st, ms in _KEEP_FLAGS.items() if os.statvfs(target).f_flag & st)
    extra = MS_NOSUID if device else MS_NOSUID | MS_NODEV
    mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | keep | extra)


def enter_minimal_root(root: str, limits: dict, uid: int, gid: int) -> None:
    """Pivots into a read-only tmpfs root with system libraries, Python, devices, /proc and /sandbox."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates to the host
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    os.umask(0o022)
    for path in [p for p in SYSTEM_PATHS if os.path.lexists(p)] + python_dirs():
        target = root + path
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if path in SYSTEM_PATHS and os.path.islink(path):  # e.g. /lib -> usr/lib
            os.symlink(os.readlink(path), target)
            continue
        if os.path.isdir(path):
            os.mkdir(target)
        else:
            open(target, "w").close()
        _bind_readonly(os.path.realpath(path), target)
    os.mkdir(root + "/dev")
    for name in DEVICES:
        open(f"{root}/dev/{name}", "w").close()
        _bind_readonly(f"/dev/{name}", f"{root}/dev/{name}", device=True)
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", f"{root}/dev/{name}")
    os.symlink("/proc/self/fd", root + "/dev/fd")
    os.mkdir(root + "/proc")
    try:
        mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:
        pass  # some container runtimes refuse a new /proc; Python runs without it
    os.mkdir(root + SANDBOX_DIR)
    mount("tmpfs", root + SANDBOX_DIR, "tmpfs", MS_NOSUID | MS_NODEV,
           f"mode=0700,uid={uid},gid={gid},size={limits['file_mb']}m")
    os.chdir(root)
    syscall(_NR["pivot_root"], ctypes.create_string_buffer(b"."), ctypes.create_string_buffer(b"."))
    ok(libc.umount2(b".", MNT_DETACH), "umount old root")  # the host's tree is gone from here
    os.chdir("/")
    mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chdir(SANDBOX_DIR)
    libc.sethostname(b"sandbox", 7)


def drop_capabilities() -> None:
    """Empties the capability sets; uid 0 keeps the uid but gains nothing back, not even from exec."""
    prctl(PR_SET_SECUREBITS, 0b11)  # SECBIT_NOROOT (+ locked): uid 0 gains nothing from exec
    header = ctypes.create_string_buffer(struct.pack("=Ii", 0x20080522, 0))
    data = ctypes.create_string_buffer(bytes(24))  # effective, permitted, inheritable: all empty
    syscall(_NR["capset"], header, data)


def become(uid: int) -> None:
    """Root level: every sandbox process runs as `uid`, which owns nothing outside /sandbox."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 where it has none."""
    try:
        return syscall(_LANDLOCK_CREATE, 0, 0, 1)  # LANDLOCK_CREATE_RULESET_VERSION
    except OSError:
        return 0


def landlock(workdir: str) -> None:
    """Read-only access to libraries and Python, read-write to `workdir`, nothing else (if the kernel can)."""
    abi = landlock_abi()
    if not abi:
        return
    handled = (1 << 13) - 1 | (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0) \
        | (1 << 15 if abi >= 5 else 0)
    file_rights = 0b111 | (1 << 14) | (1 << 15)  # execute, write, read, truncate, ioctl_dev
    read = 0b1101  # execute, read file, read dir
    rules = [(p, read) for p in SYSTEM_PATHS + tuple(python_dirs())]
    rules += [(f"/dev/{d}", 0b110 | (1 << 14)) for d in DEVICES] + [(workdir, handled)]
    ruleset = syscall(_LANDLOCK_CREATE, ctypes.create_string_buffer(struct.pack("=Q", handled)), 8, 0)
    try:
        for path, rights in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                if not os.path.isdir(path):
                    rights &= file_rights
                attr = ctypes.create_string_buffer(struct.pack("=Qi", rights & handled, fd))
                syscall(_LANDLOCK_ADD_RULE, ruleset, 1, attr, 0)
            finally:
                os.close(fd)
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        syscall(_LANDLOCK_RESTRICT, ruleset, 0)
    finally:
        os.close(ruleset)


def seccomp_supported() -> bool:
    return _NR is not None


def seccomp(only_self_signals: bool) -> None:
    """EPERM for the syscalls in _DENIED and for clone() into new namespaces; ENOSYS for clone3 (libc
    then falls back to clone); with `only_self_signals`, EPERM for signals to any other process."""
    deny, allow, enosys = 0x00050000 | 1, 0x7FFF0000, 0x00050000 | 38  # SECCOMP_RET_ERRNO | errno
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF ld abs, jumps, return
    nr, arch, arg0 = 0, 4, 16  # offsets in struct seccomp_data (arg0: its low 32 bits)
    prog = [(ld, 0, 0, arch), (jeq, 0, "deny", _AUDIT_ARCH), (ld, 0, 0, nr),
            (jge, "deny", 0, 0x40000000)]  # x32 syscalls
    prog += [(jeq, "deny", 0, n) for n in [_NR[name] for name in _DENIED] + [_PIDFD_SEND_SIGNAL, *_IO_URING]]
    prog += [(jeq, "enosys", 0, _CLONE3), (jeq, "clone", 0, _NR["clone"])]
    if only_self_signals:
        prog += [(jeq, "self", 0, _NR[name]) for name in _SIGNALLING]
    prog += [(ret, 0, 0, allow),
             "clone", (ld, 0, 0, arg0), (jset, "deny", "allow", _CLONE_NAMESPACES),
             "self", (ld, 0, 0, arg0), (jeq, "allow", "deny", os.getpid()),
             "allow", (ret, 0, 0, allow), "deny", (ret, 0, 0, deny), "enosys", (ret, 0, 0, enosys)]
    labels, insns = {}, []
    for item in prog:
        if isinstance(item, str):
            labels[item] = len(insns)
        else:
            insns.append(item)
    jump = lambda target, i: labels[target] - i - 1 if isinstance(target, str) else target  # noqa: E731
    code = b"".join(struct.pack("=HBBI", c, jump(t, i), jump(f, i), k) for i, (c, t, f, k) in enumerate(insns))
    filt = ctypes.create_string_buffer(code)
    fprog = ctypes.create_string_buffer(struct.pack("=HxxxxxxQ", len(insns), ctypes.addressof(filt)))
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    prctl(PR_SET_SECCOMP, 2, ctypes.addressof(fprog))  # SECCOMP_MODE_FILTER


def uid_tasks(uid: int) -> int:
    """Tasks (threads) owned by `uid`: what RLIMIT_NPROC counts."""
    count = 0
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and os.stat(f"/proc/{name}").st_uid == uid:
                count += len(os.listdir(f"/proc/{name}/task"))
        except OSError:
            continue
    return count


def set_limits(limits: dict, nproc: int) -> None:
    cpu = max(1, math.ceil(limits["cpu_s"]))
    memory, files = limits["memory_mb"] << 20, limits["file_mb"] << 20
    for kind, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_AS, (memory, memory)),
                        (resource.RLIMIT_FSIZE, (files, files)), (resource.RLIMIT_NOFILE, (256, 256)),
                        (resource.RLIMIT_CORE, (0, 0)), (resource.RLIMIT_NPROC, (nproc, nproc))):
        resource.setrlimit(kind, value)
