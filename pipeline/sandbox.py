"""The sandbox a plugin host enters before it loads an untrusted plugin (``sandbox: true``).

Design §5.5.6 and §7.2–7.3. The host process applies the layers to itself, in this order, and
only then imports the plugin, so none of the plugin's code — not even its module's top level —
runs outside them. Each layer stands on its own: where the kernel or the user lacks one, the
others still hold, and :func:`enter` reports which are active so the worker can log it.

=================  ======================================================  ==================
layer              stops                                                   needs
=================  ======================================================  ==================
rlimits            memory over ``max_memory`` (MemoryError), CPU spinning  nothing
                   past ``max_cpu_s`` per call (SIGXCPU), open files,
                   file size, core dumps, more than ``max_processes``
                   processes and threads (the kernel exempts uid 0)
network namespace  every connection, TCP or otherwise: no interface but    root
                   a down loopback
user               reading or writing what the plugin user may not         root
                   (setuid to ``user``, default nobody; else every
                   capability dropped and uid 0 kept, which is logged)
landlock           file writes, creates, deletes outside the work          Linux >= 5.13
                   directory; executing any file; TCP connect and bind     (TCP: >= 6.7)
seccomp            fork, exec, sockets, ptrace, mount, namespaces, bpf,    x86-64 Linux
                   io_uring, kernel keys and modules (EPERM)
audit hooks        the same from Python (os.system, subprocess, socket,   nothing
                   ctypes, open for writing outside the work directory),
                   with a message that names what was blocked
=================  ======================================================  ==================

The worker adds the outer layers: a wall-clock timeout per call (the host is killed and
restarted when it passes), an environment stripped of secrets, and a cap on what the plugin may
print. Python-level hooks alone are no sandbox (native code skips them); the kernel layers are
what hold against a determined plugin, the hooks are what makes the DLQ reason readable.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import pwd
import resource
import stat
import struct
import sys
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MB = 1024 * 1024


@dataclass(frozen=True)
class SandboxSpec:
    """What the worker asks of the host, sent to it as JSON (``--sandbox``)."""

    work_dir: str
    max_memory_mb: int = 100
    max_cpu_s: int = 10
    max_processes: int = 32
    max_open_files: int = 64
    max_file_mb: int = 64
    user: str = "nobody"
    restricted: bool = False
    read_paths: tuple[str, ...] = ()
    """Beyond the runtime and the plugin, what the plugin must still read as ``user`` (the lang
    packs): made reachable like the runtime when a directory above is closed to it."""

    def to_json(self) -> str:
        import json

        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SandboxSpec:
        import json

        fields = json.loads(text)
        fields["read_paths"] = tuple(fields.get("read_paths", ()))
        return cls(**fields)


class SandboxBlocked(PermissionError):
    """A plugin tried something the sandbox forbids; the message names it."""


SAFE_ENVIRONMENT = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "PYTHONPATH", "PYTHONHASHSEED")
"""The only variables a sandboxed host inherits: nothing that could hold a password."""


def child_environment(spec: SandboxSpec) -> dict[str, str]:
    env = {name: os.environ[name] for name in SAFE_ENVIRONMENT if name in os.environ}
    # One malloc arena: glibc reserves 64 MB of address space per thread arena otherwise.
    env.update(HOME=spec.work_dir, TMPDIR=spec.work_dir, MALLOC_ARENA_MAX="1")
    return env


_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _check(result: int, what: str) -> int:
    if result < 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")
    return result


def enter(spec: SandboxSpec, plugin_path: Path, native: bool = False) -> list[str]:
    """Apply every layer this machine allows, in order; the list of what is active (and why
    a layer is not) for the worker's start line. Raises OSError only where a layer that
    should work failed half-way: a host that cannot sandbox itself must not run the plugin.
    ``native``: the plugin is a C library, which the host calls through ctypes; the audit
    hooks then leave ctypes alone (they cannot see into native code anyway)."""
    work_dir = Path(spec.work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    os.chdir(work_dir)
    report = [limit_resources(spec)]
    is_root = os.geteuid() == 0
    if not is_root:
        report.append("network namespace: off (not root)")
    elif _libc.unshare(CLONE_NEWNET) == 0:
        report.append("network namespace")
    elif ctypes.get_errno() == errno.EPERM:  # root without CAP_SYS_ADMIN (a default container)
        report.append("network namespace: off (no CAP_SYS_ADMIN)")
    else:
        _check(-1, "unshare(CLONE_NEWNET)")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    if is_root:
        extra = [Path(path) for path in spec.read_paths if Path(path).exists()]
        needed = [*runtime_paths(), plugin_path, work_dir, *extra]
        report.append(drop_privileges(spec, needed, work_dir))
    report.append(restrict_filesystem(work_dir))
    report.append(install_seccomp())
    sys.addaudithook(
        AuditGuard(work_dir, BLOCKED_EVENTS - CTYPES_EVENTS if native else BLOCKED_EVENTS)
    )
    report.append("audit hooks")
    if spec.restricted and not native:
        report.append("RestrictedPython (compiled as restricted code, allow-listed imports)")
    return report


# --- rlimits --------------------------------------------------------------------------------


def limit_resources(spec: SandboxSpec) -> str:
    # RLIMIT_DATA, not RLIMIT_AS: it counts what the plugin can fill (heap, anonymous memory)
    # and not the address space shared libraries and malloc arenas reserve. Thread stacks do
    # count (8 MB each for native threads): Python threads here get 1 MB ones.
    threading.stack_size(MB)
    memory = spec.max_memory_mb * MB
    resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
    resource.setrlimit(resource.RLIMIT_NOFILE, (spec.max_open_files, spec.max_open_files))
    file_size = spec.max_file_mb * MB
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (spec.max_processes, spec.max_processes))
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write fails (EFBIG), no kill
    allow_cpu(spec.max_cpu_s)
    return (
        f"rlimits (memory {spec.max_memory_mb} MB, CPU {spec.max_cpu_s} s a call, "
        f"{spec.max_processes} processes, {spec.max_open_files} files, "
        f"files up to {spec.max_file_mb} MB)"
    )


def allow_cpu(seconds: int) -> None:
    """Let the next call use ``seconds`` of CPU on top of what the host used so far: SIGXCPU
    kills the host past that. The hard limit stays open so the next call can move it."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = int(usage.ru_utime + usage.ru_stime) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (used + seconds, resource.RLIM_INFINITY))


# --- privileges -----------------------------------------------------------------------------

CLONE_NEWNET = 0x40000000
PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522


def drop_privileges(spec: SandboxSpec, needed: list[Path], work_dir: Path) -> str:
    """Become ``spec.user``, after making what it must read (the Python runtime, the plugin,
    its work directory) reachable in a private mount namespace if a directory above them is
    closed to it (Python under /root); if that cannot be done, keep uid 0 with every
    capability gone (no DAC override, no mounts, no raw network)."""
    try:
        user = pwd.getpwnam(spec.user)
    except KeyError:
        user = None
    blocker = None
    if user is not None:
        blocker = unreachable(needed, user.pw_uid, user.pw_gid)
        if blocker is not None:
            try:
                blocker = expose(needed, user.pw_uid, user.pw_gid)
            except OSError as exc:  # no mount namespace for us (no CAP_SYS_ADMIN): keep uid 0
                if exc.errno != errno.EPERM:
                    raise
    if user is not None and blocker is None:
        os.chown(work_dir, user.pw_uid, user.pw_gid)
        os.setgroups([])
        os.setresgid(user.pw_gid, user.pw_gid, user.pw_gid)
        os.setresuid(user.pw_uid, user.pw_uid, user.pw_uid)  # also clears every capability
        return f"user {spec.user} ({user.pw_uid})"
    drop_capabilities()
    why = f"no user '{spec.user}'" if user is None else f"{blocker} is not readable by it"
    return f"user: uid 0 kept with no capabilities ({why})"


def drop_capabilities() -> None:
    for capability in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) < 0:
            break  # past the last capability this kernel knows
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = struct.pack("Ii", LINUX_CAPABILITY_VERSION_3, 0)
    data = bytes(24)  # two __user_cap_data_struct: effective, permitted, inheritable = 0
    _check(_libc.capset(header, data), "capset")


MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
CLONE_NEWNS = 0x00020000


def expose(needed: list[Path], uid: int, gid: int) -> Path | None:
    """In a mount namespace of this process only, lay a tmpfs over each directory that closes
    the way to ``needed`` and bind into it just the entries on that way: ``/root`` becomes a
    directory holding ``.pyenv`` and nothing else. The first path still unreachable, or None."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    resolved = [path.resolve() for path in needed]
    for _ in range(8):  # each round opens one closed directory; nesting deeper is unlikely
        blocker = unreachable(resolved, uid, gid)
        if blocker is None or not blocker.is_dir():
            return blocker
        entries = {
            path.relative_to(blocker).parts[0] for path in resolved if blocker in path.parents
        }
        stage = Path(f"/dev/shm/logloom-sandbox-{os.getpid()}")  # a path for the old view
        stage.mkdir(mode=0o700)
        _mount(str(blocker), str(stage), None, MS_BIND | MS_REC)
        _mount("tmpfs", str(blocker), "tmpfs", 0, b"mode=0755,size=64k")
        for name in sorted(entries):
            original = stage / name
            target = blocker / name
            if original.is_dir():
                target.mkdir()
            else:
                target.touch()
            _mount(str(original), str(target), None, MS_BIND | MS_REC)
        _check(_libc.umount2(str(stage).encode(), MNT_DETACH), f"umount({stage})")
        stage.rmdir()
    return unreachable(resolved, uid, gid)


def _mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: bytes | None = None
) -> None:
    encoded = [None if text is None else text.encode() for text in (source, target, fstype)]
    _check(_libc.mount(*encoded, flags, data), f"mount({target})")


def runtime_paths() -> list[Path]:
    """What the host must still read after dropping privileges: the interpreter, its library
    and site-packages, and this package (the plugin's own directory is on ``sys.path``)."""
    paths = {Path(sys.executable), Path(sys.base_prefix), Path(sys.prefix), Path(__file__)}
    paths.update(Path(entry) for entry in sys.path if entry and os.path.exists(entry))
    return sorted(paths)


def unreachable(paths: Iterable[Path], uid: int, gid: int) -> Path | None:
    """The first of ``paths`` (or a directory above it) that ``uid`` cannot read or enter."""
    for path in paths:
        resolved = path.resolve()
        for step in [*reversed(resolved.parents), resolved]:
            try:
                info = step.stat()
            except OSError:
                return step
            need = stat.S_IXOTH if stat.S_ISDIR(info.st_mode) else stat.S_IROTH
            if info.st_uid == uid:
                need <<= 6
            elif info.st_gid == gid:
                need <<= 3
            if not info.st_mode & need:
                return step
    return None


# --- landlock -------------------------------------------------------------------------------

SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1
FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_WRITE_LIKE = (
    FS_WRITE_FILE
    | (1 << 4)  # REMOVE_DIR
    | (1 << 5)  # REMOVE_FILE
    | (1 << 6)  # MAKE_CHAR
    | (1 << 7)  # MAKE_DIR
    | (1 << 8)  # MAKE_REG
    | (1 << 9)  # MAKE_SOCK
    | (1 << 10)  # MAKE_FIFO
    | (1 << 11)  # MAKE_BLOCK
    | (1 << 12)  # MAKE_SYM
)
FS_REFER = 1 << 13  # ABI 2: link or rename across directories
FS_TRUNCATE = 1 << 14  # ABI 3
NET_TCP = (1 << 0) | (1 << 1)  # ABI 4: BIND_TCP, CONNECT_TCP
SCOPE_ALL = (1 << 0) | (1 << 1)  # ABI 6: abstract unix sockets and signals outside


def restrict_filesystem(work_dir: Path) -> str:
    """Landlock: writes only beneath ``work_dir`` (and to /dev/null), no file executed, and on
    newer kernels no TCP at all and no signals or abstract sockets to other processes."""
    abi = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 1:
        return "landlock: off (kernel without Landlock)"
    writes = FS_WRITE_LIKE | (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0)
    net = NET_TCP if abi >= 4 else 0
    scoped = SCOPE_ALL if abi >= 6 else 0
    attributes = struct.pack("QQQ", writes | FS_EXECUTE, net, scoped)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = _check(
        _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, attributes, size, 0), "landlock_create_ruleset"
    )
    try:
        for path, access in ((work_dir, writes), (Path("/dev/null"), FS_WRITE_FILE)):
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                if path.is_file() or not path.is_dir():
                    access &= FS_WRITE_FILE | FS_TRUNCATE  # files take no directory rights
                rule = struct.pack("=Qi", access, fd)  # struct landlock_path_beneath_attr, packed
                added = _libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, RULE_PATH_BENEATH, rule, 0)
                _check(added, f"landlock_add_rule({path})")
            finally:
                os.close(fd)
        _check(_libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
    finally:
        os.close(ruleset)
    extra = (", no TCP" if net else "") + (", no signals out" if scoped else "")
    return f"landlock v{abi} (writes only in {work_dir}, no exec{extra})"


# --- seccomp --------------------------------------------------------------------------------

SECCOMP_MODE_FILTER = 2
PR_SET_SECCOMP = 22
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_KILL_PROCESS = 0x80000000
AUDIT_ARCH_X86_64 = 0xC000003E
CLONE_THREAD = 0x00010000
X32_SYSCALL_BIT = 0x40000000
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JGE_K = 0x35
BPF_JSET_K = 0x45
BPF_RET_K = 0x06

X86_64_CLONE = 56
X86_64_CLONE3 = 435
X86_64_DENIED = {
    "fork": 57, "vfork": 58, "execve": 59, "execveat": 322, "socket": 41, "ptrace": 101,
    "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "unshare": 272,
    "setns": 308, "bpf": 321, "perf_event_open": 298, "add_key": 248, "request_key": 249,
    "keyctl": 250, "kexec_load": 246, "kexec_file_load": 320, "init_module": 175,
    "finit_module": 313, "delete_module": 176, "reboot": 169, "swapon": 167, "swapoff": 168,
    "process_vm_readv": 310, "process_vm_writev": 311, "userfaultfd": 323,
    "open_by_handle_at": 304, "io_uring_setup": 425, "open_tree": 428, "move_mount": 429,
    "fsopen": 430, "fsmount": 432, "mount_setattr": 442, "personality": 135,
    "pidfd_send_signal": 424, "pidfd_open": 434, "pidfd_getfd": 438, "tkill": 200,
}  # fmt: skip
X86_64_KILL = 62
X86_64_TGKILL = 234


def seccomp_program(pid: int) -> bytes:
    """A classic-BPF filter: other architectures killed, the denied calls EPERM, clone only
    for threads (clone3 ENOSYS, so libc falls back to clone, whose flags can be read)."""

    def op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
        return struct.pack("HBBI", code, jt, jf, k)

    deny = SECCOMP_RET_ERRNO | 1  # EPERM
    program = [
        op(BPF_LD_W_ABS, 4),  # seccomp_data.arch
        op(BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        op(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
        op(BPF_LD_W_ABS, 0),  # seccomp_data.nr
        op(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1),
        op(BPF_RET_K, deny),
        op(BPF_JEQ_K, X86_64_CLONE3, 0, 1),
        op(BPF_RET_K, SECCOMP_RET_ERRNO | 38),  # ENOSYS
        op(BPF_JEQ_K, X86_64_CLONE, 0, 4),
        op(BPF_LD_W_ABS, 16),  # args[0], low half: the clone flags
        op(BPF_JSET_K, CLONE_THREAD, 1, 0),
        op(BPF_RET_K, deny),
        op(BPF_RET_K, SECCOMP_RET_ALLOW),
    ]
    for number in X86_64_DENIED.values():
        program += [op(BPF_JEQ_K, number, 0, 1), op(BPF_RET_K, deny)]
    for number in (X86_64_KILL, X86_64_TGKILL):  # signals to this process only, not the worker
        program += [
            op(BPF_JEQ_K, number, 0, 4),
            op(BPF_LD_W_ABS, 16),  # args[0]: the target pid (tgkill: the thread group)
            op(BPF_JEQ_K, pid, 1, 0),
            op(BPF_RET_K, deny),
            op(BPF_RET_K, SECCOMP_RET_ALLOW),
        ]
    program.append(op(BPF_RET_K, SECCOMP_RET_ALLOW))
    return b"".join(program)


def install_seccomp() -> str:
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return f"seccomp: off (no syscall table for {platform.machine()})"
    code = seccomp_program(os.getpid())
    filters = ctypes.create_string_buffer(code)
    fprog = struct.pack("HxxxxxxQ", len(code) // 8, ctypes.addressof(filters))
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, fprog, 0, 0), "seccomp")
    return "seccomp (no fork, exec, sockets, ptrace, mounts, namespaces, signals out)"


# --- audit hooks ----------------------------------------------------------------------------

BLOCKED_EVENTS = frozenset(
    {
        "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
        "subprocess.Popen", "pty.spawn", "socket.__new__", "socket.connect", "socket.bind",
        "socket.getaddrinfo", "ctypes.dlopen", "ctypes.dlsym", "ctypes.call_function",
        "os.kill", "os.killpg", "signal.pthread_kill",
    }
)  # fmt: skip
# Not resource.setrlimit: the host moves the CPU limit before each call from the same thread.
# A plugin can raise its own CPU soft limit; the worker's wall-clock timeout still ends it,
# which is why the rlimit is the second line there, not the first.
CTYPES_EVENTS = frozenset({"ctypes.dlopen", "ctypes.dlsym", "ctypes.call_function"})
"""Left to a C plugin's host, which calls its library through ctypes."""
PATH_EVENTS = frozenset(
    {
        "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link",
        "os.symlink", "os.truncate", "os.utime", "shutil.rmtree", "shutil.move",
    }
)  # fmt: skip
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class AuditGuard:
    """A ``sys.addaudithook`` hook: the second layer, and the one whose refusals read well."""

    def __init__(self, work_dir: Path, blocked: frozenset[str]) -> None:
        self.work_dir = str(work_dir)
        self.blocked = blocked

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if event in self.blocked:
            self.block(event, args[:1])
        elif event == "open":
            path, _mode, flags = args
            if isinstance(flags, int) and flags & WRITE_FLAGS and not self.inside(path):
                self.block("open for writing", args[:1])
        elif event in PATH_EVENTS:
            for path in args[:2]:
                if isinstance(path, (str, bytes, os.PathLike)) and not self.inside(path):
                    self.block(event, (path,))

    def inside(self, path: Any) -> bool:
        if isinstance(path, int):  # an fd already open
            return True
        real = os.path.realpath(os.fsdecode(path))
        return real == "/dev/null" or real == self.work_dir or real.startswith(self.work_dir + "/")

    def block(self, event: str, args: tuple[Any, ...]) -> None:
        shown = repr(args[0])[:80] if args else ""
        raise SandboxBlocked(f"sandbox blocked {event}({shown})")
