"""Run model-written Python/OpenCV image code in a sandbox: ``run_image_code(code, image_path) -> CodeResult``.

What it does
------------
The MAT-Coding action is a snippet that reads ``path_to_input_image.jpg`` and writes
``path_to_output_image.jpg`` (rotate, brighten, denoise, crop on the paper's 0-1000 grid, ...). This module
runs such a snippet in a fresh process with ``cv2``, ``numpy`` and ``PIL`` importable (pre-imported, so
``import cv2`` costs nothing; nothing is injected into the code's globals), captures its stdout, validates the
image it wrote, and hands back a copy the caller owns. Markdown fences (```python ... ```)
around the snippet are stripped by the one fence rule the parser uses too. :func:`run_image_code` never raises because of anything the code does:
failures come back as ``CodeResult(ok=False, error="...")`` with a short message meant to be shown to the
model (timeout, the exception's last traceback line with its line number, crash signal, missing or invalid
output image). It does raise for caller bugs (missing input file, nonsense limits).

``ok`` is True only when the code exited normally AND wrote a valid image; ``output_image`` is then the path
of a copy in ``output_dir`` (or a fresh ``tempfile.mkstemp`` file in the system temp dir when no
``output_dir`` is given). **The caller owns that file and deletes it**; nothing else in the sandbox refers to it.

How (speed)
-----------
The workbench process never runs untrusted code and is never forked to run it. On first use it starts a
*fork server*, ``python -I -B arftlib/tools/_sandbox_worker.py`` with a scrubbed environment, which imports
cv2/numpy/PIL (and the common stdlib modules) once. Each call hands the server one end of a private socketpair (SCM_RIGHTS over a control socket that only
this process holds, so nothing else can submit work); the server forks a disposable *supervisor* per call,
which sets up namespaces and the work dir and forks the call's *init* (PID 1 of a new PID namespace) which
locks itself down and forks the *code* process. So every call gets fresh processes; no two calls ever share
one, and the long-lived server never executes model code. Calls from many threads run concurrently. The server
is started lazily, restarted if it dies, and stopped by :func:`shutdown` (registered with ``atexit``); it also
exits by itself when this process dies (EOF on the control socket). ``python -m arftlib bench sandbox``
reports the latency (see :func:`benchmark`).

Threat model
------------
Assumed attacker: the code string (a model's output: usually buggy, occasionally pathological, in principle
adversarial). Assets: the workbench process and its secrets (environment, API keys, files in $HOME), the
user's files, the input image, other calls, and the machine's availability.

Defended, by the OS rather than by the code's good will (each layer is used when the kernel allows it; the
server probes them at start and then *fails closed*: a call whose setup step fails is an error, never a
silently weaker run; :func:`sandbox_info` lists what is active):

* Wall-clock timeout: the supervisor SIGKILLs the call's PID-1; the kernel then kills every process left in
  that PID namespace (fork bombs, daemonised grandchildren, SIGTERM-ignorers included). If the supervisor
  itself dies, a parent-death signal does the same and the server removes the call's work dir.
* rlimits: CPU seconds (timeout+2), address space (``memory_mb`` on top of the pre-imported libraries),
  processes/threads (64), file size (64 MiB), open files (256), no core files; the hard limits are set too,
  so the code cannot raise them back. ``oom_score_adj=1000`` makes a sandboxed process the OOM killer's
  first choice.
* Identity: as root, each call drops (setresuid/setresgid after fork, no supplementary groups) to its own
  unprivileged uid/gid, ``0x7F000000 + supervisor pid`` -- like nobody, but unique, so concurrent calls cannot
  signal each other, share an RLIMIT_NPROC budget or read each other's files, and anything the uid owns
  afterwards is known litter. Not root: the call runs as uid 65534 inside a new *user namespace* (mapped to
  the caller's own uid), with all capabilities dropped. ``no_new_privs`` is always set.
* Namespaces: network (no interfaces, not even loopback up), PID (plus a private /proc showing only the
  call's processes, so no other process's environ/cmdline, and ``os.kill(os.getppid())`` reaches nothing),
  mount (the whole tree is remounted read-only; the work dir is a private tmpfs of 128 MiB that disappears
  with the call), IPC, UTS. As root, a Python installation the call's uid could not reach (a pyenv under
  /root) is exposed in the call's mount namespace by covering the blocking directory with a tmpfs that holds
  only bind mounts of what is needed -- no permission on disk changes, and the rest of /root is hidden.
* Landlock (Linux >= 5.13, unprivileged): reads are allowed only under system library dirs, the Python
  installation (base prefix + venv), a few /etc files and the private /proc; writes only in the work dir;
  executing any program is denied; TCP bind/connect denied (ABI >= 4); signals and abstract unix sockets
  scoped to the call (ABI >= 6). Landlock also forbids ptrace of anything outside the call.
* seccomp (x86_64): deny-list of kernel attack surface (ptrace, mount, unshare/setns, clone with namespace
  flags, bpf, perf, io_uring, keyrings, module loading, execve, ...) and sockets other than AF_UNIX.
* Fallbacks, each still enforced: without landlock, the home directories are covered by empty read-only
  tmpfs mounts; without a read-only tree (no mount namespace), a root call's files left in world-writable
  dirs (/tmp, /dev/shm, ...) are found by their unique owner and deleted; without a PID namespace, the
  supervisor is a child subreaper (every orphan of the call is re-parented to it) and kills its whole process
  subtree, pass after pass, until it has no children left.
* Environment: the server starts with a handful of fixed variables (no API keys, HOME is the work dir), and
  the code process's environment is rebuilt from scratch again.
* Input image: the code gets a copy in its work dir; the original is never reachable (read-only tree,
  landlock, and for root a different uid).
* Output: read by the trusted supervisor only after every sandboxed process is dead (so it cannot change
  underneath), opened with O_NOFOLLOW, must be a regular file <= 48 MiB, format JPEG/PNG/WEBP/BMP/PPM/GIF, at
  most 4096x4096 pixels (16384 per side) according to the header, and only then fully decoded (truncated or
  corrupt files are rejected). Decoding happens in the per-call supervisor, not in the workbench or server.
* Output volume: stdout keeps the first 64 KiB, stderr the last 32 KiB; the rest is drained and counted.

Not defended / left out:

* Kernel bugs reachable through the allowed syscalls (this is not a VM; gVisor/Firecracker would be).
* Total memory across a call's processes (the limit is per process; 64 processes x ``memory_mb`` is the
  worst case) and memory bandwidth / CPU contention with other calls; no cgroups are used (they need
  delegation). Disk: bounded by the 128 MiB tmpfs when a mount namespace exists, otherwise by file-size x time.
* Side channels (timing, cache) and reading world-readable system files under /usr, /etc/passwd, etc.
* Degraded machines: without user namespaces *and* without landlock, a non-root caller cannot keep the code
  from writing the user's files; the server then refuses to run (``ARFT_SANDBOX_INSECURE=1`` overrides, for
  rlimits-only execution). Without a PID namespace and without landlock ABI >= 6, a non-root call can see
  and signal the user's other processes (seccomp still stops ``kill(-1)`` and ptrace). seccomp is only
  installed on x86_64. Linux only.
* The output image is fully decoded by Pillow in the per-call supervisor, which runs with the caller's
  rights: a decoder exploit there is not contained (the caller decodes the same bytes afterwards anyway).
* Code is limited to what the pre-imported interpreter offers: no subprocesses/shell, no network, no
  writes outside its work dir. ``cv2`` runs single-threaded (set in the server so forks never inherit a pool).

Environment knobs: ``ARFT_SANDBOX_DEBUG=1`` shows the server's stderr; ``ARFT_SANDBOX_DISABLE=pidns,landlock``
(comma list of mechanism names from :func:`sandbox_info`) switches mechanisms off, for testing the fallbacks;
``ARFT_SANDBOX_INSECURE=1`` allows the rlimits-only mode described above. They are read when the server starts.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings
from pathlib import Path

from arftlib.tools import _sandbox_worker as _w

__all__ = ["CodeResult", "SandboxUnavailable", "run_image_code", "extract_code", "sandbox_info", "shutdown",
           "benchmark", "INPUT_NAME", "OUTPUT_NAME"]

INPUT_NAME = _w.INPUT_NAME
OUTPUT_NAME = _w.OUTPUT_NAME
MAX_INPUT_BYTES = 64 * 1024 * 1024
_STARTUP_TIMEOUT_S = 120.0
_REPLY_GRACE_S = 30.0  # beyond timeout_s: setup, validation and a busy machine
_INFRA_PREFIXES = ("Sandbox unavailable", "Sandbox error", "Sandbox setup failed")  # messages made on this side


@dataclasses.dataclass
class CodeResult:
    """Outcome of one sandboxed run. ``output_image`` (when set) is a file the caller owns and must delete."""

    ok: bool
    error: str | None
    stdout: str
    output_image: str | None
    elapsed_s: float
    stderr: str = ""  # the (tail of the) code's error output, e.g. the full traceback
    timed_out: bool = False
    # why it failed, as a field: "ok" | "error" (raised, crashed, unreadable) | "timeout" | "no_output" (no valid
    # image written) | "infra" (the sandbox itself failed: not the code's fault)
    category: str = "ok"


class SandboxUnavailable(RuntimeError):
    """The fork server could not be started at all (reported inside CodeResult by run_image_code)."""


# ---- code extraction ---------------------------------------------------------------------------------------------
def extract_code(text: str) -> tuple[str, str | None]:
    """(source, error): the Python source in ``text`` by THE fence rule (`arftlib.parse.strip_code_fences`: the
    first fenced block, the text itself when there is no fence, an unclosed fence is an error), dedented and
    newline-terminated. The parser applies the same rule to `<code>` payloads, so a turn runs the same code
    whichever way it reaches the sandbox."""
    from arftlib.parse import strip_code_fences

    code, err = strip_code_fences(text or "")
    if err is not None:
        return "", err
    return textwrap.dedent(code).strip("\n") + "\n", None


# ---- the fork server (workbench side) ----------------------------------------------------------------------------
class _Server:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.ctrl: socket.socket | None = None
        self.base_dir: str | None = None
        self.info: dict = {}
        self.owner_pid = os.getpid()

    # Lock held by callers of the two methods below.
    def _start(self) -> None:
        self._stop()
        base = tempfile.mkdtemp(prefix="arft-sandbox-")
        os.chmod(base, 0o711)  # a root call's own uid must be able to reach its work dir inside
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        opts = {"base_dir": base, "max_input_bytes": MAX_INPUT_BYTES,
                "hide_paths": sorted({_home(), "/root", "/home"} - {""}),
                "allow_insecure": os.environ.get("ARFT_SANDBOX_INSECURE") == "1",
                "disable": [k for k in os.environ.get("ARFT_SANDBOX_DISABLE", "").split(",") if k]}
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": base, "TMPDIR": base,
               "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        debug = os.environ.get("ARFT_SANDBOX_DEBUG") == "1"
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-B", _w.__file__, str(theirs.fileno()), json.dumps(opts)],
                pass_fds=[theirs.fileno()], env=env, cwd="/", stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=None if debug else subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            ours.close()
            theirs.close()
            shutil.rmtree(base, ignore_errors=True)
            raise SandboxUnavailable(f"cannot start the sandbox server: {e}") from e
        theirs.close()
        ours.settimeout(_STARTUP_TIMEOUT_S)
        try:
            hello = json.loads(ours.recv(1 << 20) or b"{}")
        except (OSError, ValueError) as e:
            hello = {"error": str(e)}
        if not hello.get("ready"):
            proc.kill()
            proc.wait()
            ours.close()
            shutil.rmtree(base, ignore_errors=True)
            raise SandboxUnavailable(f"the sandbox server did not start: {hello.get('error', 'no reply')}")
        ours.settimeout(None)
        self.proc, self.ctrl, self.base_dir = proc, ours, base
        self.info = {"server_pid": proc.pid, "base_dir": base, "mechanisms": hello.get("mechanisms", {}),
                     "refused": hello.get("refuse"), "probe_error": hello.get("probe_error")}
        if hello.get("refuse"):
            warnings.warn(f"arftlib sandbox unavailable: {hello['refuse']}", RuntimeWarning, stacklevel=4)

    def _stop(self) -> None:
        proc, ctrl, base = self.proc, self.ctrl, self.base_dir
        self.proc = self.ctrl = self.base_dir = None
        if ctrl is not None:
            try:
                ctrl.close()  # EOF: the server finishes in-flight calls and exits
            except OSError:
                pass
        if proc is not None:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)

    def submit(self) -> socket.socket:
        """A connected socket to a fresh supervisor (starts/restarts the server as needed)."""
        with self.lock:
            if self.owner_pid != os.getpid():  # we are a fork of the process that started the server
                self.proc = self.ctrl = self.base_dir = None
                self.owner_pid = os.getpid()
            for attempt in range(2):
                if self.proc is None or self.proc.poll() is not None:
                    self._start()
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    socket.send_fds(self.ctrl, [b"C"], [theirs.fileno()])
                    return ours
                except OSError:
                    ours.close()
                    if attempt:
                        raise
                    self._stop()
                finally:
                    theirs.close()
            raise SandboxUnavailable("unreachable")

    def dead(self) -> bool:
        with self.lock:
            return self.proc is None or self.proc.poll() is not None

    def ensure(self) -> dict:
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self._start()
            return dict(self.info)

    def shutdown(self) -> None:
        with self.lock:
            if self.owner_pid == os.getpid():
                self._stop()
            else:
                self.proc = self.ctrl = self.base_dir = None


def _home() -> str:
    try:
        return str(Path.home())
    except (RuntimeError, KeyError):
        return ""


_SERVER = _Server()
atexit.register(_SERVER.shutdown)


def _after_fork_in_child() -> None:
    global _SERVER
    old = _SERVER
    _SERVER = _Server()
    if old.ctrl is not None:  # our copy of the parent's control socket: close it so the parent's server can
        try:  # still see EOF when the parent exits
            old.ctrl.close()
        except OSError:
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def sandbox_info() -> dict:
    """Start the server if needed and report ``server_pid``, ``base_dir`` and the active ``mechanisms``."""
    return _SERVER.ensure()


def shutdown() -> None:
    """Stop the fork server (waits for in-flight calls) and remove its temp dir. The next call restarts it."""
    _SERVER.shutdown()


# ---- the call ------------------------------------------------------------------------------------------------------
def run_image_code(code: str, image_path: str, *, timeout_s: float = 10.0, memory_mb: int = 1024,
                   output_dir: str | os.PathLike | None = None) -> CodeResult:
    """Run ``code`` on a copy of ``image_path`` in the sandbox (see the module docstring).

    The code reads ``path_to_input_image.jpg`` and writes ``path_to_output_image.jpg`` in its work dir.
    ``timeout_s`` is wall-clock; ``memory_mb`` is the address space the code may add to the pre-imported
    interpreter. On success the validated image is copied to ``output_dir`` (created if needed) or to a new
    temp file; its path is ``CodeResult.output_image`` and the caller deletes it. Never raises for anything the
    code does.
    """
    t0 = time.perf_counter()
    if not isinstance(code, str):
        raise TypeError(f"code must be str, not {type(code).__name__}")
    if not (0 < float(timeout_s) <= 3600):
        raise ValueError(f"timeout_s must be in (0, 3600], got {timeout_s!r}")
    if not (16 <= int(memory_mb) <= 1 << 20):
        raise ValueError(f"memory_mb must be in [16, 1048576], got {memory_mb!r}")
    with open(image_path, "rb") as f:  # a missing input is a caller bug: FileNotFoundError on purpose
        image = f.read(MAX_INPUT_BYTES + 1)
    if len(image) > MAX_INPUT_BYTES:
        raise ValueError(f"input image {image_path} is larger than {MAX_INPUT_BYTES} bytes")
    source, fence_error = extract_code(code)

    def done(ok=False, error=None, stdout="", output=None, stderr="", timed_out=False, category=None) -> CodeResult:
        if category is None:
            category = "ok" if ok else ("infra" if error and error.startswith(_INFRA_PREFIXES) else "error")
        return CodeResult(ok=ok, error=error, stdout=stdout, output_image=output,
                          elapsed_s=round(time.perf_counter() - t0, 6), stderr=stderr, timed_out=timed_out,
                          category=category)

    if fence_error is not None:
        return done(error=f"The code could not be read: {fence_error}.", category="error")
    if not source.strip():
        return done(error="Empty code: there was no Python code to run.", category="error")
    request = {"code": source, "timeout_s": float(timeout_s), "memory_mb": int(memory_mb)}
    reply = None
    for attempt in range(2):
        try:
            conn = _SERVER.submit()
        except Exception as e:  # noqa: BLE001 - the sandbox itself is broken: report, do not raise
            return done(error=f"Sandbox unavailable: {e}")
        try:
            conn.settimeout(float(timeout_s) + _REPLY_GRACE_S)
            _w.send_frame(conn, request, image)
            reply = _w.recv_frame(conn, max_payload=_w.MAX_OUTPUT_BYTES + 1)
            break
        except (EOFError, ConnectionError) as e:
            # No answer. If the server itself died, the call may never have started: start a new server and
            # try once more. If only this call's supervisor died (killed from outside), report it.
            if attempt or not _SERVER.dead():
                return done(error=f"Sandbox error: the sandbox stopped without answering ({e}).")
        except (OSError, ValueError) as e:  # includes socket.timeout
            return done(error=f"Sandbox error: no reply from the sandbox ({type(e).__name__}: {e}).")
        finally:
            conn.close()
    header, payload = reply
    output = None
    if header.get("ok") and payload:
        output = _save_output(payload, header.get("ext") or ".img", output_dir)
    ok = bool(header.get("ok")) and output is not None
    return done(ok=ok, error=header.get("error"), stdout=header.get("stdout", ""), output=output,
                stderr=header.get("stderr", ""), timed_out=bool(header.get("timed_out")),
                category="ok" if ok else header.get("category"))


def _save_output(data: bytes, ext: str, output_dir) -> str:
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix="sandbox-out-", suffix=ext, dir=os.fspath(output_dir))
    else:
        fd, path = tempfile.mkstemp(prefix="arft-sandbox-out-", suffix=ext)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


# ---- benchmark -----------------------------------------------------------------------------------------------------
_BENCH_CODES = [
    "import cv2\nimg = cv2.imread('path_to_input_image.jpg')\n"
    "cv2.imwrite('path_to_output_image.jpg', cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE))\n",
    "import cv2\nimg = cv2.imread('path_to_input_image.jpg')\nh, w = img.shape[:2]\n"
    "x1, y1, x2, y2 = [int(v * s / 1000) for v, s in zip([120, 250, 640, 830], [w, h, w, h])]\n"
    "cv2.imwrite('path_to_output_image.jpg', img[y1:y2, x1:x2])\n",
]


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def benchmark(n: int = 200, naive_n: int | None = None) -> dict:
    """End-to-end latency of ``run_image_code`` for a crop/rotate on a 720x720 JPEG (alternating), sequential
    calls after a short warm-up, versus a naive fresh ``python -c`` per call (``naive_n`` calls, default
    min(20, n)). Milliseconds."""
    import numpy as np
    from PIL import Image

    naive_n = min(20, n) if naive_n is None else naive_n
    with tempfile.TemporaryDirectory(prefix="arft-sandbox-bench-") as tmp:
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:720, 0:720]
        arr = np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8)
        arr = np.clip(arr.astype(int) + rng.integers(-20, 20, arr.shape), 0, 255).astype(np.uint8)
        img = os.path.join(tmp, "input.jpg")
        Image.fromarray(arr).save(img, quality=90)
        out_dir = os.path.join(tmp, "out")
        t_start = time.perf_counter()
        info = sandbox_info()
        startup_ms = (time.perf_counter() - t_start) * 1000
        for i in range(5):
            r = run_image_code(_BENCH_CODES[i % 2], img, output_dir=out_dir)
            if not r.ok:
                raise RuntimeError(f"sandbox benchmark call failed: {r.error}\n{r.stderr}")
        times, failures = [], 0
        for i in range(n):
            t0 = time.perf_counter()
            r = run_image_code(_BENCH_CODES[i % 2], img, output_dir=out_dir)
            times.append((time.perf_counter() - t0) * 1000)
            failures += not r.ok
            if r.output_image:
                os.unlink(r.output_image)
        naive = []
        work = os.path.join(tmp, "naive")
        os.makedirs(work)
        shutil.copy(img, os.path.join(work, INPUT_NAME))
        for i in range(naive_n):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import cv2, numpy, PIL.Image\n" + _BENCH_CODES[i % 2]],
                           cwd=work, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            naive.append((time.perf_counter() - t0) * 1000)
    p50 = _percentile(times, 0.5)
    naive_p50 = _percentile(naive, 0.5)
    return {"p50_ms": round(p50, 2), "p99_ms": round(_percentile(times, 0.99), 2),
            "naive_p50_ms": round(naive_p50, 2), "n": n, "naive_n": naive_n,
            "mean_ms": round(sum(times) / max(len(times), 1), 2), "max_ms": round(max(times, default=0.0), 2),
            "failures": failures, "speedup_p50": round(naive_p50 / p50, 1) if p50 else None,
            "server_start_ms": round(startup_ms, 1),
            "mechanisms": sorted(k for k, v in info.get("mechanisms", {}).items() if v is True)}
