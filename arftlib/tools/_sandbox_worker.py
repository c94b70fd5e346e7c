"""Fork server behind :mod:`arftlib.tools.sandbox` (internal; read that module's docstring first).

This file runs as its own process, started by the workbench as ``python -I -B _sandbox_worker.py ...`` with a
scrubbed environment. It is deliberately standalone: at import time it needs only the standard library (the
workbench imports it for the framing helpers and constants), and ``main()`` pre-imports cv2, numpy and PIL
once so that every call can start from a cheap ``fork()``.

Process tree for one call::

    server (pre-imported, never runs untrusted code; single-threaded; probes the mechanisms once at start)
      └─ supervisor (one per call, trusted, disposable: creates the namespaces and the work dir
         │           base/call-<pid>-<hex>, enforces the wall clock, keeps bounded stdout/stderr, validates the
         │           output image, removes the work dir, answers the caller, exits)
         └─ init   (PID 1 of a fresh PID namespace; private /proc, landlock, drops privileges, rlimits,
            │       seccomp; forks the code process; when it exits, kills everything else in the namespace
            │       and reports the status; a parent-death signal ties it to the supervisor)
            └─ code  (runs the model's code with exec(); nothing else)

Wire protocol (per call, over a private socketpair whose end the workbench hands to the server through the
SCM_RIGHTS control socket): a frame is ``!IQ`` (header length, payload length) + JSON header + payload bytes.
Request header: ``{"code", "timeout_s", "memory_mb"}``, payload = input image bytes. Reply header: result
fields, payload = the validated output image bytes (possibly empty).
"""

from __future__ import annotations

import ctypes
import errno
import io
import json
import os
import platform
import resource
import select
import signal
import socket
import stat
import struct
import sys
import time
import traceback

INPUT_NAME = "path_to_input_image.jpg"
OUTPUT_NAME = "path_to_output_image.jpg"
SANDBOX_UID = 65534  # "nobody": who the code is inside a user namespace (non-root callers)
SANDBOX_GID = 65534
# Root callers: each call runs as its own unprivileged uid/gid = base + the supervisor's pid (unique while the
# call lives), so concurrent calls cannot signal each other or share an RLIMIT_NPROC budget. The range
# 0x7F000000-0x7F3FFFFF (pid_max <= 2^22) is outside what distributions allocate to users and containers.
ROOT_CALL_ID_BASE = 0x7F000000

# ---- limits (the workbench may override some per call; these are the fixed ones) -----------------------------
MAX_STDOUT_BYTES = 64 * 1024  # kept from the start of stdout; the rest is drained and counted
MAX_STDERR_BYTES = 32 * 1024  # kept from the END of stderr (the traceback is what matters)
MAX_FILE_BYTES = 64 * 1024 * 1024  # RLIMIT_FSIZE: largest single file the code may write
WORKDIR_BYTES = 128 * 1024 * 1024  # size of the tmpfs work dir (all files together), when a mount ns exists
WORKDIR_INODES = 4096
MAX_PROCS = 64  # RLIMIT_NPROC (threads count too)
MAX_OPEN_FILES = 256  # RLIMIT_NOFILE
MAX_OUTPUT_BYTES = 48 * 1024 * 1024
MAX_OUTPUT_PIXELS = 4096 * 4096  # checked from the header, before any pixel is decoded
MAX_OUTPUT_SIDE = 16384
OUTPUT_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "PPM": ".ppm", "GIF": ".gif"}
CODE_FILENAME = "<model code>"

_FRAME = struct.Struct("!IQ")
_MAX_HEADER = 4 * 1024 * 1024


# ---- framing (shared with the workbench side) ------------------------------------------------------------------
def send_frame(sock: socket.socket, header: dict, payload: bytes = b"") -> None:
    head = json.dumps(header).encode()
    sock.sendall(_FRAME.pack(len(head), len(payload)) + head)
    if payload:
        sock.sendall(payload)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError("peer closed the connection")
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket, max_payload: int) -> tuple[dict, bytes]:
    n_head, n_payload = _FRAME.unpack(_recv_exact(sock, _FRAME.size))
    if n_head > _MAX_HEADER or n_payload > max_payload:
        raise ValueError(f"frame too large ({n_head} + {n_payload} bytes)")
    header = json.loads(_recv_exact(sock, n_head))
    return header, _recv_exact(sock, n_payload) if n_payload else b""


# ---- thin libc / syscall layer (ctypes) --------------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_ARCH = platform.machine()

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
_NS_FLAGS = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 1

PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
PR_SET_PDEATHSIG = 1

_SYS_MOUNT_SETATTR = 442
_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446


def _check(ret: int, what: str) -> int:
    if ret == -1:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return ret


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def umount(target: str, flags: int = MNT_DETACH) -> None:
    _check(_libc.umount2(target.encode(), ctypes.c_int(flags)), f"umount {target}")


def prctl(option: int, arg2: int = 0, arg3: int = 0) -> None:
    _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(0),
                       ctypes.c_ulong(0)), f"prctl({option})")


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def remount_tree_readonly() -> None:
    """Make every mount in this (private) mount namespace read-only, recursively (mount_setattr, Linux 5.12)."""
    attr = _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    _check(_libc.syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_int(AT_FDCWD), b"/",
                         ctypes.c_uint(AT_RECURSIVE), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))),
           "mount_setattr")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def drop_all_capabilities() -> None:
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")


# ---- landlock ----------------------------------------------------------------------------------------------------
LL_EXECUTE = 1 << 0
LL_WRITE_FILE = 1 << 1
LL_READ_FILE = 1 << 2
LL_READ_DIR = 1 << 3
LL_REMOVE_DIR = 1 << 4
LL_REMOVE_FILE = 1 << 5
LL_MAKE_CHAR = 1 << 6
LL_MAKE_DIR = 1 << 7
LL_MAKE_REG = 1 << 8
LL_MAKE_SOCK = 1 << 9
LL_MAKE_FIFO = 1 << 10
LL_MAKE_BLOCK = 1 << 11
LL_MAKE_SYM = 1 << 12
LL_REFER = 1 << 13  # ABI 2
LL_TRUNCATE = 1 << 14  # ABI 3
LL_IOCTL_DEV = 1 << 15  # ABI 5
LL_FILE_ONLY = LL_EXECUTE | LL_WRITE_FILE | LL_READ_FILE | LL_TRUNCATE | LL_IOCTL_DEV
LL_NET_BIND_TCP = 1 << 0  # ABI 4
LL_NET_CONNECT_TCP = 1 << 1
LL_SCOPE_ABSTRACT_UNIX = 1 << 0  # ABI 6
LL_SCOPE_SIGNAL = 1 << 1


class _LandlockRulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _LandlockPathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """Landlock ABI version of the running kernel, 0 when unavailable."""
    ret = _libc.syscall(ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET), None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(int(ret), 0)


def _landlock_fs_rights(abi: int) -> int:
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= LL_REFER
    if abi >= 3:
        rights |= LL_TRUNCATE
    if abi >= 5:
        rights |= LL_IOCTL_DEV
    return rights


def landlock_restrict(abi: int, read_paths: list[str], rw_dirs: list[str], rw_files: list[str]) -> dict:
    """Apply a landlock domain to this process (and its future children).

    Everything the ABI can express is handled (so denied) except: read (no execute) under ``read_paths``,
    everything under ``rw_dirs`` except execute, read+write on the single files ``rw_files``. TCP bind/connect
    is denied (ABI >= 4); signals and abstract unix sockets are scoped to the domain (ABI >= 6).
    """
    fs = _landlock_fs_rights(abi)
    net = (LL_NET_BIND_TCP | LL_NET_CONNECT_TCP) if abi >= 4 else 0
    scoped = (LL_SCOPE_ABSTRACT_UNIX | LL_SCOPE_SIGNAL) if abi >= 6 else 0
    attr = _LandlockRulesetAttr(fs, net, scoped)
    size = 8 if abi < 4 else (16 if abi < 6 else 24)
    ruleset = _check(_libc.syscall(ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET), ctypes.byref(attr),
                                   ctypes.c_size_t(size), ctypes.c_uint32(0)), "landlock_create_ruleset")
    read = LL_READ_FILE | LL_READ_DIR
    rw = fs & ~LL_EXECUTE
    rules = [(p, read) for p in read_paths] + [(p, rw) for p in rw_dirs] + \
            [(p, LL_READ_FILE | LL_WRITE_FILE | (LL_TRUNCATE if abi >= 3 else 0)) for p in rw_files]
    added = 0
    try:
        for path, access in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # a path this machine does not have
            try:
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    access &= LL_FILE_ONLY
                rule = _LandlockPathBeneath(access & fs, fd)
                _check(_libc.syscall(ctypes.c_long(_SYS_LANDLOCK_ADD_RULE), ctypes.c_int(ruleset), ctypes.c_int(1),
                                     ctypes.byref(rule), ctypes.c_uint32(0)), f"landlock_add_rule {path}")
                added += 1
            finally:
                os.close(fd)
        _check(_libc.syscall(ctypes.c_long(_SYS_LANDLOCK_RESTRICT_SELF), ctypes.c_int(ruleset), ctypes.c_uint32(0)),
               "landlock_restrict_self")
    finally:
        os.close(ruleset)
    return {"landlock_fs": True, "landlock_net": bool(net), "landlock_scope": bool(scoped), "landlock_rules": added}


# ---- seccomp (x86_64 only: syscall numbers are per architecture and only these were checked) --------------------
_AUDIT_ARCH_X86_64 = 0xC000003E
_X86_64_DENY_EPERM = [
    101, 310, 311,  # ptrace, process_vm_readv/writev
    59, 322,  # execve, execveat: no programs at all (landlock also withholds the execute right)
    165, 166, 155, 161, 272, 308,  # mount, umount2, pivot_root, chroot, unshare, setns
    428, 429, 430, 431, 432, 433, 442,  # new mount API
    248, 249, 250,  # add_key, request_key, keyctl
    321, 298, 323,  # bpf, perf_event_open, userfaultfd
    425, 426, 427,  # io_uring
    303, 304,  # name_to_handle_at, open_by_handle_at
    246, 320, 175, 313, 176,  # kexec_load, kexec_file_load, init/finit/delete_module
    169, 167, 168, 163, 179, 103, 172, 173, 135, 153, 212, 438,  # reboot, swap, acct, quotactl, syslog, io perms,
    # personality, vhangup, lookup_dcookie, pidfd_getfd
]
_NR_SOCKET, _NR_SOCKETPAIR, _NR_CLONE, _NR_CLONE3, _NR_KILL = 41, 53, 56, 435, 62
_AF_UNIX = 1


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def seccomp_supported() -> bool:
    return _ARCH in ("x86_64", "AMD64")


def seccomp_install(deny_kill_all: bool = True) -> None:
    """A deny-list BPF filter: kernel attack surface the code has no business with returns EPERM, sockets other
    than AF_UNIX return EAFNOSUPPORT, clone() with namespace flags returns EPERM, clone3 returns ENOSYS (glibc
    then falls back to clone, whose flags we can inspect), other architectures' ABIs are killed. kill(-1, ...)
    returns EPERM unless ``deny_kill_all`` is false (in a PID namespace, or under a uid of its own, it can only
    reach the call's own processes)."""
    if not seccomp_supported():
        raise OSError(errno.ENOSYS, f"seccomp filter not defined for {_ARCH}")
    LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
    ALLOW, KILL = 0x7FFF0000, 0x80000000
    err = lambda e: 0x00050000 | e  # noqa: E731  SECCOMP_RET_ERRNO
    nr, arg0 = 0, 16
    prog = [(LD, 0, 0, 4), (JEQ, 1, 0, _AUDIT_ARCH_X86_64), (RET, 0, 0, KILL),
            (LD, 0, 0, nr), (JGE, 0, 1, 0x40000000), (RET, 0, 0, err(errno.ENOSYS))]
    for n in _X86_64_DENY_EPERM:
        prog += [(JEQ, 0, 1, n), (RET, 0, 0, err(errno.EPERM))]
    prog += [(JEQ, 0, 1, _NR_CLONE3), (RET, 0, 0, err(errno.ENOSYS))]
    for n in (_NR_SOCKET, _NR_SOCKETPAIR):
        prog += [(LD, 0, 0, nr), (JEQ, 0, 3, n), (LD, 0, 0, arg0), (JEQ, 1, 0, _AF_UNIX),
                 (RET, 0, 0, err(errno.EAFNOSUPPORT))]
    prog += [(LD, 0, 0, nr), (JEQ, 0, 3, _NR_CLONE), (LD, 0, 0, arg0), (JSET, 0, 1, _NS_FLAGS),
             (RET, 0, 0, err(errno.EPERM))]
    if deny_kill_all:
        prog += [(LD, 0, 0, nr), (JEQ, 0, 3, _NR_KILL), (LD, 0, 0, arg0), (JEQ, 0, 1, 0xFFFFFFFF),
                 (RET, 0, 0, err(errno.EPERM))]
    prog += [(RET, 0, 0, ALLOW)]
    filt = (_SockFilter * len(prog))(*[_SockFilter(*ins) for ins in prog])
    fprog = _SockFprog(len(prog), filt)
    _check(_libc.prctl(ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(fprog),
                       ctypes.c_ulong(0), ctypes.c_ulong(0)), "seccomp")


# ---- one call ----------------------------------------------------------------------------------------------------
class SetupError(Exception):
    """A sandbox mechanism that worked when the server started failed for this call (fail closed)."""


class _Steps:
    """Runs setup steps. In probe mode a failing step is recorded and skipped; otherwise it aborts the call."""

    def __init__(self, probe: bool, mech: dict):
        self.probe, self.mech = probe, mech

    def __call__(self, name: str, enabled: bool, fn, *args) -> bool:
        if not enabled:
            return False
        try:
            out = fn(*args)
        except Exception as e:  # noqa: BLE001 - every failure is either recorded (probe) or fatal (call)
            if self.probe:
                self.mech[name] = False
                self.mech.setdefault("failures", {})[name] = f"{type(e).__name__}: {e}"
                return False
            raise SetupError(f"{name}: {e}") from e
        self.mech[name] = True
        if isinstance(out, dict):
            self.mech.update(out)
        return True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _close_fds_except(keep: set[int]) -> None:
    top = 1 << 16
    lo = 3
    for fd in sorted(k for k in keep if k >= 3) + [top]:
        if fd > lo:
            os.closerange(lo, fd)
        lo = fd + 1


def _vm_size_bytes() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _userns_map(uid: int, gid: int) -> None:
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{SANDBOX_UID} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{SANDBOX_GID} {gid} 1")


def _stranger_can_search(path: str) -> bool:
    """Whether a uid that owns nothing and is in no group may traverse ``path`` (the "other" x bit)."""
    try:
        st = os.stat(path)
    except OSError:
        return True  # nothing to expose
    return bool(st.st_mode & 0o001)


def _first_blocked(path: str) -> tuple[str, str] | None:
    """(ancestor an unprivileged stranger cannot search, the next component's path) on the way to ``path``."""
    parts = os.path.normpath(path).split(os.sep)[1:]
    cur = "/"
    for i, part in enumerate(parts[:-1] if parts else []):
        if not _stranger_can_search(cur):
            return cur, os.path.join(cur, part)
        cur = os.path.join(cur, part)
    if parts and not _stranger_can_search(cur):
        return cur, os.path.join(cur, parts[-1])
    return None


def expose_for_unprivileged(paths: list[str], hold_dir: str, keep_visible: list[str]) -> list[str]:
    """In a private mount namespace, make ``paths`` reachable for an unprivileged uid without changing any
    permission on
    disk: an ancestor it cannot search (typically /root, holding a pyenv Python) is covered by a tmpfs that
    contains only bind mounts of the needed children. The rest of that directory disappears from view. An
    ancestor of anything in ``keep_visible`` (the work dirs) is left alone. Returns the covered ancestors."""
    covered: list[str] = []
    for _ in range(8):  # each round removes one level of blocked ancestors
        groups: dict[str, list[str]] = {}
        for p in paths:
            hit = _first_blocked(p)
            if hit and not any(k == hit[0] or k.startswith(hit[0].rstrip("/") + "/") for k in keep_visible):
                children = groups.setdefault(hit[0], [])
                if hit[1] not in children and os.path.lexists(hit[1]):
                    children.append(hit[1])
        if not groups:
            break
        for ancestor, children in groups.items():
            holds = []
            for i, child in enumerate(children):
                hold = os.path.join(hold_dir, f"hold{i}")
                if os.path.isdir(child):
                    os.mkdir(hold, 0o700)
                else:
                    open(hold, "w").close()
                mount(child, hold, None, MS_BIND | MS_REC)
                holds.append((hold, os.path.basename(child), os.path.isdir(child)))
            mount("tmpfs", ancestor, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,nr_inodes=256,mode=0755")
            for hold, name, is_dir in holds:
                target = os.path.join(ancestor, name)
                if is_dir:
                    os.mkdir(target, 0o755)
                else:
                    open(target, "w").close()
                mount(hold, target, None, MS_MOVE)
                (os.rmdir if is_dir else os.unlink)(hold)
            covered.append(ancestor)
    return covered


def _drop_to(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getgid() != gid:
        raise OSError(errno.EPERM, "uid did not change")


def _set_rlimits(timeout_s: float, memory_mb: int, vm_base: int) -> None:
    cpu = int(timeout_s) + 2
    limits = [
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_AS, (vm_base + memory_mb * 1024 * 1024,) * 2),
        (resource.RLIMIT_FSIZE, (MAX_FILE_BYTES,) * 2),
        (resource.RLIMIT_NPROC, (MAX_PROCS,) * 2),
        (resource.RLIMIT_NOFILE, (MAX_OPEN_FILES,) * 2),
        (resource.RLIMIT_CORE, (0, 0)),
        (resource.RLIMIT_MSGQUEUE, (0, 0)),
    ]
    for which, lim in limits:
        soft, hard = resource.getrlimit(which)
        new_hard = lim[1] if hard == resource.RLIM_INFINITY else min(lim[1], hard)
        resource.setrlimit(which, (min(lim[0], new_hard), new_hard))


def _init_process(cfg: dict, req: dict, workdir: str, fds: dict, probe: bool) -> None:
    """Child of the supervisor: PID 1 of the call's namespaces. Never returns."""
    st_w = fds["st_w"]
    mech: dict = {}
    try:
        _close_fds_except({fds["out_w"], fds["err_w"], st_w})
        os.setsid()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_DFL)
        steps = _Steps(probe, mech)
        # a fresh procfs that shows only this PID namespace (in a mount namespace of its own)
        proc_ok = steps("private_proc", cfg["pidns"] and cfg["mount_private"] and cfg["private_proc"],
                        lambda: (unshare(CLONE_NEWNS),
                                 mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)))
        with open("/proc/self/oom_score_adj", "w") as f:  # if memory runs out, we are the ones to die
            f.write("1000")
        vm_base = _vm_size_bytes()
        os.chdir(workdir)  # before dropping privileges: the call's uid need not be able to search its parents
        ll_abi = cfg["landlock_abi"]
        read_paths = list(cfg["read_paths"]) + (["/proc"] if proc_ok else [])
        steps("no_new_privs", True, prctl, PR_SET_NO_NEW_PRIVS, 1)
        # landlock first, while every allowed path can still be opened; setuid/capset are not affected by it
        steps("landlock", ll_abi > 0 and cfg["landlock"], landlock_restrict, ll_abi, read_paths,
              [workdir], ["/dev/null", "/dev/zero", "/dev/full"])
        if cfg["root"]:
            steps("drop_uid", True, _drop_to, fds["uid"], fds["gid"])
        if cfg["userns"]:
            steps("drop_caps", True, drop_all_capabilities)
        # if the supervisor dies (it enforces the timeout), take the whole call down with it; set after the
        # credential change, which clears it
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        steps("rlimits", True, _set_rlimits, float(req["timeout_s"]), int(req["memory_mb"]), vm_base)
        steps("seccomp", seccomp_supported() and cfg["seccomp"], seccomp_install,
              not (cfg["pidns"] or cfg["root"]))
        _write_all(st_w, (json.dumps({"setup": mech}) + "\n").encode())
        pid = os.fork()
    except BaseException as e:  # noqa: BLE001
        try:
            _write_all(st_w, (json.dumps({"setup_error": f"{type(e).__name__}: {e}", "setup": mech}) + "\n").encode())
        finally:
            os._exit(121)
    if pid == 0:
        os.close(st_w)
        _code_process(req["code"], fds)  # never returns
    os.close(fds["out_w"])
    os.close(fds["err_w"])
    while True:  # reap everything; relay the code process's status as soon as it is known
        try:
            wpid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(122)
        except InterruptedError:
            continue
        if wpid == pid:
            if os.WIFSIGNALED(status):
                msg = {"signal": os.WTERMSIG(status)}
            else:
                msg = {"exit": os.WEXITSTATUS(status)}
            if os.getpid() == 1:  # init of the call's PID namespace: end the rest of the call first, so the
                try:  # work dir is final when the supervisor reads the status (and starts validating)
                    os.kill(-1, signal.SIGKILL)
                except OSError:
                    pass
                try:
                    while True:
                        os.waitpid(-1, 0)
                except ChildProcessError:
                    pass
                except OSError:
                    pass
            try:
                _write_all(st_w, (json.dumps(msg) + "\n").encode())
            finally:
                os._exit(0)


def _exit_code(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except Exception:  # noqa: BLE001
        pass
    return 1


def _code_process(code: str, fds: dict) -> None:
    """Grandchild: runs the untrusted code. Never returns."""
    rc = 1
    try:
        os.setsid()
        os.dup2(fds["out_w"], 1)
        os.dup2(fds["err_w"], 2)
        devnull = os.open("/dev/null", os.O_RDONLY)
        os.dup2(devnull, 0)
        _close_fds_except(set())
        os.umask(0o022)
        os.environ.clear()
        os.environ.update({"PATH": "/usr/bin:/bin", "HOME": os.getcwd(), "TMPDIR": os.getcwd(),
                           "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1",
                           "OMP_NUM_THREADS": "1"})
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import builtins
        import linecache

        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8",
                                      errors="backslashreplace", line_buffering=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                      errors="backslashreplace", line_buffering=True)
        sys.argv = [CODE_FILENAME]
        linecache.cache[CODE_FILENAME] = (len(code), None, code.splitlines(True), CODE_FILENAME)
        g = {"__name__": "__main__", "__builtins__": builtins}
        try:
            exec(compile(code, CODE_FILENAME, "exec", dont_inherit=True), g)  # noqa: S102 - the point of it all
            rc = 0
        except SystemExit as e:
            rc = _exit_code(e.code)
        except BaseException:  # noqa: BLE001
            etype, value, tb = sys.exc_info()
            traceback.print_exception(etype, value, tb.tb_next if tb is not None else None)
            rc = 1
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
    finally:
        os._exit(rc)


_SIGNAL_TEXT = {
    signal.SIGSEGV: "segmentation fault", signal.SIGBUS: "bus error", signal.SIGFPE: "arithmetic fault",
    signal.SIGILL: "illegal instruction", signal.SIGABRT: "aborted", signal.SIGKILL: "killed",
    signal.SIGXCPU: "CPU time limit exceeded", signal.SIGXFSZ: "file size limit exceeded",
    signal.SIGTERM: "terminated",
}


def _error_from_stderr(stderr: str) -> str | None:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    # the exception line: unindented, not a traceback header (forked processes may interleave their output)
    summary = [ln for ln in lines if not ln[:1].isspace() and not ln.startswith(("Traceback (most recent",
               "During handling of", "The above exception", "[... earlier"))]
    last = (summary or lines)[-1].strip()
    where = None
    for ln in lines:
        s = ln.strip()
        if s.startswith(f'File "{CODE_FILENAME}", line '):
            where = s.split(", line ", 1)[1].split(",", 1)[0]
    return f"{last} (line {where})" if where and "line" not in last else last


def validate_output(workdir: str) -> tuple[bytes | None, str | None, str | None, list[int] | None]:
    """(bytes, format, error, [w, h]) for the output image; dimensions are checked before pixels are decoded."""
    path = os.path.join(workdir, OUTPUT_NAME)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, None, f"No output image: the code did not write {OUTPUT_NAME}.", None
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None, None, f"Invalid output image: {OUTPUT_NAME} is a symbolic link.", None
        return None, None, f"Invalid output image: cannot open {OUTPUT_NAME} ({e.strerror}).", None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, None, f"Invalid output image: {OUTPUT_NAME} is not a regular file.", None
        if st.st_size == 0:
            return None, None, f"Invalid output image: {OUTPUT_NAME} is empty.", None
        if st.st_size > MAX_OUTPUT_BYTES:
            return None, None, f"Invalid output image: {st.st_size} bytes (limit {MAX_OUTPUT_BYTES}).", None
        chunks, total = [], 0
        while total <= MAX_OUTPUT_BYTES:
            b = os.read(fd, 1 << 20)
            if not b:
                break
            chunks.append(b)
            total += len(b)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if len(data) > MAX_OUTPUT_BYTES:
        return None, None, f"Invalid output image: larger than {MAX_OUTPUT_BYTES} bytes.", None
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            im = Image.open(io.BytesIO(data))  # reads the header only
            w, h = im.size
            fmt = im.format
            if fmt not in OUTPUT_FORMATS:
                return None, None, f"Invalid output image: format {fmt} is not accepted " \
                                   f"(use {', '.join(sorted(OUTPUT_FORMATS))}).", None
            if w <= 0 or h <= 0 or w > MAX_OUTPUT_SIDE or h > MAX_OUTPUT_SIDE or w * h > MAX_OUTPUT_PIXELS:
                return None, None, f"Invalid output image: {w}x{h} pixels is too large (limit " \
                                   f"{MAX_OUTPUT_PIXELS} pixels, {MAX_OUTPUT_SIDE} per side).", [w, h]
            im.load()  # full decode: catches truncated / corrupt files
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return None, None, f"Invalid output image: too large ({e})", None
    except Exception as e:  # noqa: BLE001
        return None, None, f"Invalid output image: {type(e).__name__}: {e}".strip(), None
    return data, fmt, None, [w, h]


def run_call(cfg: dict, req: dict, image: bytes, probe: bool = False) -> tuple[dict, bytes]:
    """The supervisor's work for one call (runs in a disposable process forked from the server)."""
    t0 = time.monotonic()
    mech: dict = {}
    steps = _Steps(probe, mech)
    workdir = os.path.join(cfg["base_dir"], f"call-{os.getpid()}-{os.urandom(4).hex()}")
    # who the code runs as, seen from outside: a per-call uid for root, else ourselves (uid 65534 in a userns)
    call_id = ROOT_CALL_ID_BASE + os.getpid() if cfg["root"] else None
    os.mkdir(workdir, 0o700)
    # Opened before any namespace is created, this handle keeps pointing at the real (writable) base dir after
    # our private mount namespace has made the whole tree read-only: cleanup goes through it.
    base_fd = os.open(cfg["base_dir"], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    mounted = False
    res: dict = {"ok": False, "error": None, "stdout": "", "stderr": "", "timed_out": False}
    out_bytes = b""
    try:
        prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of the call come back to us, not to the system's init
        if cfg["userns"]:
            uid, gid = os.getuid(), os.getgid()
            steps("userns", True, lambda: (unshare(CLONE_NEWUSER), _userns_map(uid, gid)))
        for name, flag in (("netns", CLONE_NEWNET), ("pidns", CLONE_NEWPID), ("mountns", CLONE_NEWNS),
                           ("ipcns", CLONE_NEWIPC), ("utsns", CLONE_NEWUTS)):
            steps(name, cfg[name], unshare, flag)
        private = steps("mount_private", mech.get("mountns", False) and cfg["mount_private"],
                        mount, None, "/", None, MS_REC | MS_PRIVATE)
        if cfg["root"] and cfg["expose_paths"]:
            hold = workdir + ".hold"
            os.mkdir(hold, 0o700)
            try:
                steps("expose_python", private and cfg["expose_python"], expose_for_unprivileged,
                      cfg["expose_paths"], hold, [cfg["base_dir"]])
            finally:
                try:
                    os.rmdir(hold)
                except OSError:
                    pass  # still a mount point after a failed step: the server removes it with the call dir
        steps("ro_root", private and cfg["ro_root"], remount_tree_readonly)
        if private and not cfg["landlock"] and cfg["hide_home"]:
            # without landlock, reads are limited only by permissions: cover the homes with empty tmpfs
            for p in cfg["hide_paths"]:
                steps("hide_home", os.path.isdir(p), mount, "tmpfs", p, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV,
                      "size=4k,nr_inodes=1,mode=000")
        mounted = steps("tmpfs_workdir", private and cfg["tmpfs_workdir"], mount, "tmpfs", workdir,
                        "tmpfs", MS_NOSUID | MS_NODEV,
                        f"size={WORKDIR_BYTES},nr_inodes={WORKDIR_INODES},mode=0700,"
                        f"uid={call_id or SANDBOX_UID},gid={call_id or SANDBOX_GID}")
        if cfg["root"] and not mounted:
            os.chown(workdir, call_id, call_id)
        in_path = os.path.join(workdir, INPUT_NAME)
        with open(in_path, "wb") as f:
            f.write(image)
        os.chmod(in_path, 0o644)
        if probe:
            cfg = dict(cfg, **{k: mech.get(k, False) for k in
                               ("userns", "netns", "pidns", "mountns", "mount_private", "tmpfs_workdir")})
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        st_r, st_w = os.pipe()
        fds = {"out_w": out_w, "err_w": err_w, "st_w": st_w, "uid": call_id, "gid": call_id}
        t_start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            try:
                _init_process(cfg, req, workdir, fds, probe)
            finally:
                os._exit(123)
        for fd in (out_w, err_w, st_w):
            os.close(fd)
        # with a PID namespace the output is final once init reports: validate while init is torn down
        early_check = (lambda: validate_output(workdir)) if cfg["pidns"] else None
        res.update(_supervise(pid, out_r, err_r, st_r, t_start + float(req["timeout_s"]), early_check))
        early = res.pop("_early")
        res["run_s"] = round(time.monotonic() - t_start, 4)
        status = res.pop("_status")
        setup = status.get("setup") or {}
        if probe:
            mech.update(setup)
        if "setup_error" in status:
            res["error"] = f"Sandbox setup failed: {status['setup_error']}"
            res["setup_failed"] = True
            res["category"] = "infra"
        elif res["timed_out"]:
            res["error"] = f"Timeout: the code ran longer than {float(req['timeout_s']):g} s and was stopped."
            res["category"] = "timeout"
        elif "signal" in status:
            sig = status["signal"]
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            tail = _error_from_stderr(res["stderr"])
            res["error"] = f"The code crashed: {name} ({_SIGNAL_TEXT.get(sig, 'signal')})" + \
                           (f"; last error output: {tail}" if tail else ".")
            res["category"] = "error"
        elif "exit" in status:
            if status["exit"] != 0:
                res["error"] = _error_from_stderr(res["stderr"]) or f"The code exited with status {status['exit']}."
                res["exit_code"] = status["exit"]
                res["category"] = "error"
            else:
                data, fmt, err, size = early or validate_output(workdir)
                if err:
                    res["error"] = err
                    res["category"] = "no_output"
                else:
                    out_bytes = data
                    res.update(ok=True, format=fmt, ext=OUTPUT_FORMATS[fmt], size=size)
        else:
            res["error"] = "Sandbox error: the sandbox init process died without a status."
            res["category"] = "infra"
    finally:
        if mounted:
            try:
                umount(workdir)
            except OSError:
                pass
        _remove_tree(os.path.basename(workdir), base_fd)
        os.close(base_fd)
        if call_id is not None and not mech.get("ro_root"):
            _sweep_files_of(call_id)
    if probe:
        res["mechanisms"] = mech
    res["total_s"] = round(time.monotonic() - t0, 4)
    return res, out_bytes


def _remove_tree(name: str, dir_fd: int) -> None:
    """Remove ``name`` (relative to ``dir_fd``) and everything in it; never follows symlinks."""
    try:
        os.rmdir(name, dir_fd=dir_fd)  # the usual case: an (unmounted, hence empty) tmpfs mount point
        return
    except FileNotFoundError:
        return
    except OSError:
        pass
    _rmtree_at(dir_fd, name)


def _rmtree_at(dir_fd: int, name: str) -> None:
    """rmtree relative to an open directory (symlinks are never followed); directories the code made
    unwritable are made writable first (needed when we are not root)."""
    import shutil

    def onerror(func, p, exc):
        try:
            os.chmod(os.path.dirname(p) or ".", 0o700, dir_fd=dir_fd, follow_symlinks=False)
            if func in (os.unlink, os.rmdir):
                func(p, dir_fd=dir_fd)
        except (OSError, TypeError, NotImplementedError):
            pass

    try:
        shutil.rmtree(name, onerror=onerror, dir_fd=dir_fd)
    except TypeError:  # Python < 3.11: no dir_fd; go through the descriptor's magic link instead
        shutil.rmtree(f"/proc/self/fd/{dir_fd}/{name}", ignore_errors=True)


_SHARED_WRITABLE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/var/lock")


def _sweep_files_of(uid: int, dirs=_SHARED_WRITABLE_DIRS, depth: int = 3) -> int:
    """Delete what a root call's unique uid left in world-writable dirs (only needed when the tree could not be
    made read-only). Anything that uid owns is this call's litter; nothing else is touched."""
    removed = 0
    for d in dirs:
        try:
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            for name in os.listdir(fd):
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue
                if st.st_uid == uid:
                    if stat.S_ISDIR(st.st_mode):
                        _rmtree_at(fd, name)
                    else:
                        try:
                            os.unlink(name, dir_fd=fd)
                        except OSError:
                            pass
                    removed += 1
                elif depth > 1 and stat.S_ISDIR(st.st_mode) and st.st_mode & 0o002:
                    removed += _sweep_files_of(uid, (os.path.join(d, name),), depth - 1)
        finally:
            os.close(fd)
    return removed


def _descendants_of(root: int) -> list[int]:
    """Every process below ``root``, from one /proc scan (/proc/PID/task/TID/children is not in every kernel)."""
    parent_of: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    data = f.read()
                parent_of[int(name)] = int(data[data.rindex(b")") + 2:].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    children: dict[int, list[int]] = {}
    for pid, ppid in parent_of.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        for kid in children.get(todo.pop(), []):
            out.append(kid)
            todo.append(kid)
    return out


def _sweep_children(limit_s: float = 5.0) -> None:
    """Kill and reap every process below us (orphans of the call are re-parented to us: we are a child
    subreaper) until we have no children at all. The whole subtree is killed in each pass, so a fork bomb
    cannot regrow faster than it is cut down. With a PID namespace nothing is ever left: returns at once."""
    me = os.getpid()
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] != 0:
                pass
        except ChildProcessError:
            return
        for k in _descendants_of(me):
            try:
                os.kill(k, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.001)


def _supervise(pid: int, out_r: int, err_r: int, st_r: int, deadline: float, on_success=None) -> dict:
    """Wait for the call's init (pidfd + poll), keep bounded stdout/stderr, enforce the deadline. As soon as
    init reports that the code exited with status 0 (it has already killed everything else in the namespace),
    ``on_success()`` runs -- while init's own exit is still being torn down -- and its result is returned."""
    early = None
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = -1
    out, out_dropped = bytearray(), 0
    err = bytearray()
    st = bytearray()
    open_fds = {out_r: "out", err_r: "err", st_r: "st"}
    poller = select.poll()
    for fd in open_fds:
        poller.register(fd, select.POLLIN)
    if pidfd >= 0:
        poller.register(pidfd, select.POLLIN)
    exited, status, timed_out = False, None, False
    grace_until = None
    while True:
        if not exited:
            try:
                wpid, wst = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                wpid, wst = pid, 0
            if wpid == pid:
                exited, status = True, wst
                if pidfd >= 0:
                    poller.unregister(pidfd)
                    os.close(pidfd)
                    pidfd = -1
                _sweep_children()
                grace_until = time.monotonic() + 1.0
        if exited and not open_fds:
            break
        now = time.monotonic()
        if not exited and now >= deadline:
            timed_out = True
            try:
                os.kill(pid, signal.SIGKILL)  # PID 1 of the namespace: the kernel kills everything else in it
            except ProcessLookupError:
                pass
            _sweep_children()  # no PID namespace: the rest of the tree (returns at once otherwise)
            deadline = float("inf")
        if exited and grace_until is not None and now >= grace_until:
            break  # a writer escaped our process tree (no PID namespace); stop reading
        wait = min(deadline, grace_until or float("inf"), now + 1.0) - now
        timeout_ms = 50 if pidfd < 0 and not exited else max(0, int(wait * 1000) + 1)
        for fd, _ev in poller.poll(timeout_ms):
            if fd == pidfd:
                continue
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                poller.unregister(fd)
                os.close(fd)
                del open_fds[fd]
                continue
            kind = open_fds[fd]
            if kind == "out":
                room = MAX_STDOUT_BYTES - len(out)
                out += chunk[:max(room, 0)]
                out_dropped += max(len(chunk) - max(room, 0), 0)
            elif kind == "err":
                err += chunk
                if len(err) > 2 * MAX_STDERR_BYTES:
                    del err[:-MAX_STDERR_BYTES]
            else:
                st += chunk[:65536]
                if on_success is not None and early is None and not timed_out and b'{"exit": 0}' in st:
                    early = on_success()
    for fd in list(open_fds):
        os.close(fd)
    stdout = out.decode("utf-8", "replace")
    if out_dropped:
        stdout += f"\n[... {out_dropped} more bytes of output not kept]"
    stderr = err.decode("utf-8", "replace")
    if len(err) > MAX_STDERR_BYTES:
        stderr = "[... earlier error output not kept]\n" + err[-MAX_STDERR_BYTES:].decode("utf-8", "replace")
    merged: dict = {}
    for line in st.decode("utf-8", "replace").splitlines():
        try:
            merged.update(json.loads(line))
        except ValueError:
            pass
    if status is not None and os.WIFSIGNALED(status) and "exit" not in merged and "signal" not in merged \
            and not timed_out and "setup_error" not in merged:
        merged["signal"] = os.WTERMSIG(status)
    return {"stdout": stdout, "stderr": stderr, "timed_out": timed_out, "_status": merged, "_early": early}


# ---- the server --------------------------------------------------------------------------------------------------
def _serve_connection(conn_fd: int, cfg: dict, ctrl_fd: int) -> None:
    """The supervisor process: one request, one reply, exit."""
    code = 0
    try:
        os.close(ctrl_fd)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        conn = socket.socket(fileno=conn_fd)
        conn.settimeout(60)
        req, image = recv_frame(conn, max_payload=cfg["max_input_bytes"])
        conn.settimeout(None)
        try:
            res, out = run_call(cfg, req, image)
        except SetupError as e:
            res, out = {"ok": False, "error": f"Sandbox setup failed: {e}", "stdout": "", "stderr": "",
                        "setup_failed": True, "category": "infra"}, b""
        except Exception as e:  # noqa: BLE001
            res, out = {"ok": False, "error": f"Sandbox error: {type(e).__name__}: {e}", "stdout": "", "stderr":
                        traceback.format_exc(), "category": "infra"}, b""
        conn.settimeout(60)
        send_frame(conn, res, out)
        conn.close()
    except BaseException:  # noqa: BLE001
        code = 1
    finally:
        os._exit(code)


def _reap_supervisors(base_dir: str, block: bool) -> None:
    """Collect finished supervisors. One that did not exit cleanly (killed from outside, e.g. by the OOM
    killer) could not remove its work dir: do it for it (its mount namespace, hence any tmpfs, is gone)."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        except InterruptedError:
            continue
        if pid == 0:
            return
        if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
            try:
                fd = os.open(base_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                for name in os.listdir(fd):
                    if name.startswith(f"call-{pid}-"):
                        _rmtree_at(fd, name)
            finally:
                os.close(fd)


def _default_read_paths() -> list[str]:
    paths = ["/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin",
             "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/fonts",
             "/etc/alternatives", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/mime.types",
             "/sys/devices/system/cpu", "/dev/urandom", "/dev/random"]
    for p in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:
        paths.append(p)
    try:
        import site

        paths += site.getsitepackages()
    except Exception:  # noqa: BLE001
        pass
    out = []
    for p in paths:
        if p and os.path.exists(p) and p not in out:
            out.append(p)
    return out


def _probe(cfg: dict) -> dict:
    """Try every mechanism once in a throw-away call; the server then uses exactly those that worked."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            req = {"code": "import cv2, numpy, PIL.Image\n"
                           "cv2.imwrite('path_to_output_image.jpg', cv2.imread('path_to_input_image.jpg'))\n",
                   "timeout_s": 20.0, "memory_mb": 512}
            import cv2
            import numpy as np

            ok, enc = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
            res, _ = run_call(cfg, req, enc.tobytes(), probe=True)
            _write_all(w, json.dumps(res).encode())
        except BaseException as e:  # noqa: BLE001
            _write_all(w, json.dumps({"ok": False, "error": f"probe: {type(e).__name__}: {e}",
                                      "mechanisms": {}}).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        data += b
    os.close(r)
    os.waitpid(pid, 0)
    try:
        return json.loads(data)
    except ValueError:
        return {"ok": False, "error": "probe crashed", "mechanisms": {}}


_PRELOAD_STDLIB = [
    "base64", "bisect", "collections", "collections.abc", "colorsys", "copy", "csv", "dataclasses", "datetime",
    "decimal", "fractions", "functools", "glob", "hashlib", "heapq", "itertools", "json", "linecache", "math",
    "numbers", "operator", "pathlib", "pprint", "random", "re", "shutil", "statistics", "string", "struct",
    "sysconfig", "tempfile", "textwrap", "time", "typing", "warnings", "zlib",
]


def main(argv: list[str]) -> int:
    ctrl_fd = int(argv[1])
    opts = json.loads(argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    os.environ.update({"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    # Pre-import (and warm) everything a call may use, so a call costs a fork, not an import.
    import cv2
    import numpy as np
    import PIL.Image
    import PIL.ImageDraw  # noqa: F401
    import PIL.ImageEnhance  # noqa: F401
    import PIL.ImageFilter  # noqa: F401
    import PIL.ImageOps  # noqa: F401
    import PIL.ImageChops  # noqa: F401
    import PIL.ImageStat  # noqa: F401

    for name in _PRELOAD_STDLIB:  # what model code commonly imports; also makes it importable when the
        try:  # Python installation is unreadable for uid 65534 and cannot be exposed
            __import__(name)
        except ImportError:
            pass

    PIL.Image.init()
    PIL.Image.MAX_IMAGE_PIXELS = MAX_OUTPUT_PIXELS
    cv2.setNumThreads(1)  # no worker pool in the server: forked children must not inherit a dead pool
    ok, enc = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))
    cv2.imdecode(enc, cv2.IMREAD_COLOR)
    PIL.Image.open(io.BytesIO(enc.tobytes())).load()

    import gc

    gc.collect()
    gc.freeze()  # the collector in a forked child then leaves the server's objects (and their pages) alone
    root = os.geteuid() == 0
    abi = landlock_abi()
    cfg = {
        "root": root, "base_dir": opts["base_dir"], "read_paths": _default_read_paths(),
        "hide_paths": opts.get("hide_paths", []),
        "max_input_bytes": int(opts["max_input_bytes"]), "landlock_abi": abi,
        "userns": not root, "netns": True, "pidns": True, "mountns": True, "ipcns": True, "utsns": True,
        "mount_private": True, "ro_root": True, "tmpfs_workdir": True, "private_proc": True,
        "landlock": abi > 0, "seccomp": seccomp_supported(), "expose_python": True, "hide_home": True,
    }
    for key in opts.get("disable", []):  # for tests of the fallbacks (ARFT_SANDBOX_DISABLE=pidns,landlock,...)
        if key in cfg and isinstance(cfg[key], bool):
            cfg[key] = False
    # Read paths that uid 65534 cannot reach (e.g. a pyenv Python under /root when running as root): each call
    # re-exposes them in its own mount namespace (see expose_for_unprivileged).
    cfg["expose_paths"] = [p for p in cfg["read_paths"] if root and _first_blocked(p)]
    # homes to cover when there is no landlock, except those holding the work dirs or the Python installation
    inside = lambda path, d: path == d or path.startswith(d.rstrip("/") + "/")  # noqa: E731
    cfg["hide_paths"] = [d for d in cfg["hide_paths"] if os.path.isdir(d) and not inside(cfg["base_dir"], d)
                         and not any(inside(p, d) for p in cfg["read_paths"] + [sys.executable])]
    probe = _probe(cfg)
    mech = probe.get("mechanisms", {})
    for key in ("userns", "netns", "pidns", "mountns", "ipcns", "utsns", "mount_private", "ro_root",
                "tmpfs_workdir", "private_proc", "landlock", "seccomp", "expose_python", "hide_home"):
        cfg[key] = bool(mech.get(key))
    if root:
        cfg["userns"] = False
    mech["root"] = root
    mech["landlock_abi"] = abi
    mech["arch"] = _ARCH
    fs_confined = (root and mech.get("drop_uid")) or mech.get("landlock") or mech.get("ro_root")
    refuse = None
    if not probe.get("ok"):
        refuse = f"the sandbox self-test failed: {probe.get('error')}"
    elif not fs_confined and not opts.get("allow_insecure"):
        refuse = ("no mechanism can keep the code from writing your files (not root, so no separate uid; no "
                  "read-only mount namespace; no landlock); set ARFT_SANDBOX_INSECURE=1 to run with rlimits only")
    ctrl = socket.socket(fileno=ctrl_fd)
    ctrl.send(json.dumps({"ready": True, "pid": os.getpid(), "mechanisms": mech, "refuse": refuse,
                          "probe_error": probe.get("error"), "probe_stderr": probe.get("stderr", "")[-2000:]}
                         ).encode())
    # reap supervisors as soon as they exit (the handler runs between recv_fds retries, in this thread)
    signal.signal(signal.SIGCHLD, lambda *_: _reap_supervisors(cfg["base_dir"], block=False))
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(ctrl, 16, 8)
        except InterruptedError:
            continue
        except OSError:
            break
        if not msg:
            break  # the workbench closed the control socket (or died): shut down
        for fd in fds:
            if refuse:
                try:
                    s = socket.socket(fileno=fd)
                    send_frame(s, {"ok": False, "error": f"Sandbox unavailable: {refuse}", "stdout": "",
                                   "stderr": "", "setup_failed": True, "category": "infra"})
                    s.close()
                except OSError:
                    pass
                continue
            try:
                pid = os.fork()
            except OSError:
                os.close(fd)
                continue
            if pid == 0:
                _serve_connection(fd, cfg, ctrl_fd)
            os.close(fd)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _reap_supervisors(cfg["base_dir"], block=True)  # let in-flight calls finish
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
