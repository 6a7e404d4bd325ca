"""The worker: a zygote inside the sandbox that forks one fresh process per run.

The zygote imports NumPy, xarray and ``fednb.runtime`` (and PyTorch only for code that
uses it) and loads its one dataset once, so a run starts warm; it never executes the approved
source. For each run it forks a child that compiles the source (module-level code runs
there, per run), calls the function and sends its reply frame up a pipe; the zygote
forwards it to the domain behind a verdict frame of its own (``reply``, ``timeout``,
``exit``, ``signal``, ``too_large`` or ``no_fork``), which the child cannot forge.

After every run, whatever it did, the zygote

- kills every other process of the sandbox and waits until none is left: under
  bubblewrap it is pid 1 of its pid namespace, so ``kill(-1, SIGKILL)`` reaches every
  thread, child and daemonised grandchild of the run, and none can signal it back (the
  kernel drops SIGKILL and SIGSTOP sent to a namespace's init from inside, and the
  zygote installs no handler for any other signal);
- empties ``/tmp``, ``/job`` (the working directory; the owner's ``log.txt`` stays where
  ``/job`` is the work directory itself) and ``/dev/shm``, and removes the namespace's
  System V IPC objects (``/dev`` itself is read-only, and the seccomp filter denies
  keyrings: the sandbox's part, :mod:`._sandbox`);
- enforces the run's wall-clock limit itself, so a run that timed out leaves it warm.

It makes itself non-dumpable (``PR_SET_DUMPABLE`` 0), so a child of the same uid cannot
ptrace it, read or write ``/proc/1/mem`` or reopen its pipes through ``/proc/1/fd``;
POSIX message queues, which it could not list, are refused by ``RLIMIT_MSGQUEUE`` 0.

In ``insecure-demo`` mode (no bubblewrap, so no pid namespace) the zygote is not pid 1:
each run gets a process group of its own, killed after the run, and only the working
directory is emptied. A process that leaves the group (``setsid``) survives there, and
``/tmp`` and ``/dev/shm`` are the host's: the best available without a sandbox.

The code's prints and tracebacks go to ``log.txt`` (only the owner reads it). Everything
the child sends is untrusted: the domain's parent validates it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import json
import os
import resource
import select
import signal
import stat
import sys
import time
import traceback
from typing import Any, BinaryIO

__all__ = ["main"]

_MAX_IN = 1 << 31
_REAP_EVERY = 0.05  # seconds: how often a waiting zygote reaps the run's orphans
_PR_SET_DUMPABLE = 4
_IPC_RMID = 0
_LIBC = ctypes.CDLL(None, use_errno=True)


# -- what the zygote does once ----------------------------------------------------------
def _harden() -> None:
    """Non-dumpable; no POSIX message queues; no Python handler for SIGINT (as pid 1 of a
    namespace, a signal with no handler sent from inside is dropped by the kernel)."""
    _LIBC.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    with contextlib.suppress(OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_MSGQUEUE, (0, 0))
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # `python -m` put the working directory first on sys.path: a run writes there
    cwd = os.getcwd()
    sys.path[:] = [p for p in sys.path if p not in ("", cwd)]


def _preload(init: dict[str, Any]) -> Any:
    """Import what runs need and load the one dataset; returns it."""
    import numpy  # noqa: F401
    import xarray as xr

    from fednb.domain.runner import _frames  # noqa: F401
    from fednb.protocol import encode_message  # noqa: F401
    from fednb.runtime import device_in_use, prepare_gpu  # noqa: F401 - loaded before the fork

    if "torch" in init["source"] or init["function_name"] == "__fednb_dpsgd__":
        with contextlib.suppress(ImportError):
            import torch  # noqa: F401
        if init["function_name"] == "__fednb_dpsgd__":
            with contextlib.suppress(ImportError):
                from fednb.runtime import train_dpsgd  # noqa: F401 - loaded before the fork
    # no thread pool may exist when the zygote forks: dask's threaded scheduler left one whose
    # threads a child would wait on for ever. The data is loaded without dask, and dask is
    # not imported here (6 MB a worker); DASK_SCHEDULER=synchronous in the worker's
    # environment holds for any run that imports it
    return xr.open_zarr(init["path"], chunks=None).load()


def _cap_processes(init: dict[str, Any]) -> None:
    """Set the sandbox's own ``RLIMIT_NPROC`` (``init["max_procs"]``, see ``._nproc``) before
    any thread or child exists beside the zygote: every run's processes inherit it, and
    without capabilities none can raise it again."""
    cap = init.get("max_procs")
    if isinstance(cap, int) and cap > 0:
        resource.setrlimit(resource.RLIMIT_NPROC, (cap, cap))


def _scratch() -> list[str]:
    """The directories emptied after each run: the sandbox's own tmpfs mounts, none shared
    with anything outside it; without a sandbox, the work directory alone."""
    if os.getpid() != 1:
        return [os.getcwd()]
    scratch = ("/tmp", os.getcwd(), "/dev/shm")  # noqa: S108
    return [d for d in scratch if os.path.isdir(d)]


# -- one run, in the child --------------------------------------------------------------
def _rehearse(data: Any) -> None:
    """Go once through a run's path with fednb's own code, before the request comes: the
    copy-on-write faults of a first touch are taken here, off the run's latency."""
    import numpy as np

    from fednb.protocol import decode_message, encode_message
    from fednb.runtime import call_function, compile_function

    fn = compile_function("def _rehearsal(data, weights=None):\n    return np.zeros(1)\n", "_rehearsal")
    update = call_function(fn, data, {"w": np.zeros(1)}, {})
    decode_message(encode_message({"status": "ok", "metrics": update.metrics}, update.weights))


def _child(r: int, w: int, init: dict[str, Any], data: Any) -> None:
    from fednb.domain.runner._frames import FrameError, read_frame
    from fednb.protocol import decode_message, encode_message

    _rehearse(data)
    try:
        with os.fdopen(r, "rb", buffering=0) as f:
            header, tensors = decode_message(read_frame(f, _MAX_IN))
    except (FrameError, OSError):
        return  # the zygote is gone, or stopped before any request
    from fednb.runtime import call_function, compile_function, device_in_use, prepare_gpu

    reply: dict[str, Any]
    out: dict[str, Any] = {}
    try:
        for line in prepare_gpu():  # GPU jobs: allocator caps before any user code runs
            print(f"fednb: {line}", file=sys.stderr)
        fn = compile_function(init["source"], init["function_name"])
        weights = tensors if header.get("weights") else None
        update = call_function(fn, data, weights, header.get("params") or {})
        if sum(a.nbytes for a in update.weights.values()) > int(init["max_output"]):
            reply = {"status": "error", "reason": "output_too_large"}
        else:
            reply, out = {"status": "ok", "metrics": update.metrics}, update.weights
    except OSError as exc:
        traceback.print_exc()
        reason = "process_limit" if exc.errno == errno.EAGAIN else "exception"
        reply = {"status": "error", "reason": reason}
    except MemoryError:
        traceback.print_exc()
        reply = {"status": "error", "reason": "memory_limit"}
    except BaseException:
        traceback.print_exc()
        reply = {"status": "error", "reason": "exception"}
    reply["backend"] = device_in_use()
    try:
        frame = encode_message(reply, out)
    except BaseException as exc:  # the codec cannot carry it: NaN metrics, text or complex arrays
        traceback.print_exc()
        reason = "nonfinite_output" if isinstance(exc, ValueError) and "JSON" in str(exc) \
            else "invalid_output"
        frame = encode_message({"status": "error", "reason": reason, "backend": reply["backend"]})
    sys.stdout.flush()
    sys.stderr.flush()
    with os.fdopen(w, "wb") as f:
        f.write(len(frame).to_bytes(8, "little"))
        f.write(frame)


def _prefer_for_oom() -> None:
    """Raise this (child) process's ``oom_score_adj`` to 1000. Its /proc files are the
    kernel's while it is non-dumpable (inherited from the zygote), so it is dumpable for the
    write and non-dumpable again after."""
    _LIBC.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    finally:
        _LIBC.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


class _Child:
    """The next run's process, forked ahead of its request (off the run's critical path,
    and after the last run's clean-up): it waits for the request on a pipe, and only then
    compiles and calls the approved code."""

    def __init__(self, keep_out: list[int], init: dict[str, Any], data: Any) -> None:
        r_req, self.w_req = os.pipe()
        self.r_reply, w_reply = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:  # never returns
            try:
                for fd in (self.w_req, self.r_reply, *keep_out):  # the domain's pipes stay the zygote's
                    os.close(fd)
                if os.getppid() != 1:  # no pid namespace: a process group of its own
                    os.setpgid(0, 0)
                # the OOM killer takes a run's processes before the zygote: a zygote killed by
                # a run's memory (which may depend on the data) would make the next start cold,
                # a difference a scientist could time (the value cannot be lowered again
                # without CAP_SYS_RESOURCE; the run's children inherit it)
                _prefer_for_oom()
                _child(r_req, w_reply, init, data)
            finally:
                os._exit(0)
        os.close(r_req)
        os.close(w_reply)
        if os.getpid() != 1:
            with contextlib.suppress(OSError):  # either side may win the race; both set it
                os.setpgid(self.pid, self.pid)

    def send(self, request: bytes) -> None:
        """Hand the child its request (a frame's payload); a child already dead is seen by
        :func:`_wait`."""
        try:
            with os.fdopen(self.w_req, "wb") as f:
                f.write(len(request).to_bytes(8, "little"))
                f.write(request)
        except OSError:
            pass


class _Reply:
    """The child's reply frame, read from its pipe without blocking."""

    def __init__(self, fd: int, limit: int) -> None:
        self.fd, self.limit = fd, limit
        self.head = b""
        self.body: bytearray | None = None
        self.got = 0
        self.eof = False
        os.set_blocking(fd, False)

    def feed(self) -> str:
        """Read what is there: ``"more"``, ``"done"``, ``"too_large"`` or ``"eof"``."""
        try:
            while True:
                if self.body is None:
                    chunk = os.read(self.fd, 8 - len(self.head))
                    if not chunk:
                        break
                    self.head += chunk
                    if len(self.head) == 8:
                        n = int.from_bytes(self.head, "little")
                        if n > self.limit:
                            return "too_large"
                        self.body = bytearray(n)
                if self.body is not None:
                    if self.got == len(self.body):
                        return "done"
                    got = os.readv(self.fd, [memoryview(self.body)[self.got:]])
                    if got == 0:
                        break
                    self.got += got
        except BlockingIOError:
            return "more"
        self.eof = True
        return "eof"

    def wipe(self) -> None:
        """Zero the reply in the zygote's memory: the next run's child inherits a copy."""
        if self.body:
            ctypes.memset((ctypes.c_char * len(self.body)).from_buffer(self.body), 0, len(self.body))


def _reap(child: int, status: dict[int, tuple[str, int]]) -> None:
    """Reap every exited process of ours (the run's orphans are pid 1's), noting the child's."""
    while True:
        try:
            pid, st = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid == child:
            status[child] = ("signal", os.WTERMSIG(st)) if os.WIFSIGNALED(st) \
                else ("exit", os.WEXITSTATUS(st))


def _exited(child: int, status: dict[int, tuple[str, int]]) -> bool:
    """True once the child has exited. Outside a pid namespace it is left a zombie
    (``WNOWAIT``), so that its pid, the run's process group id, is not reused before the
    group is killed."""
    if os.getpid() == 1:
        _reap(child, status)
    else:
        with contextlib.suppress(ChildProcessError):
            res = os.waitid(os.P_PID, child, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if res is not None:
                killed = res.si_code in (os.CLD_KILLED, os.CLD_DUMPED)
                status[child] = ("signal" if killed else "exit", res.si_status)
    return child in status


def _wait(child: int, reply: _Reply, timeout: float) -> tuple[str, int]:
    """Wait for the reply, the child's exit or the deadline: (verdict, exit code or signal)."""
    deadline = time.monotonic() + timeout
    status: dict[int, tuple[str, int]] = {}
    try:
        pidfd: int | None = os.pidfd_open(child)
    except (AttributeError, OSError):
        pidfd = None
    try:
        while True:
            state = "eof" if reply.eof else reply.feed()
            if state in ("done", "too_large"):
                return ("reply" if state == "done" else "too_large"), 0
            if _exited(child, status):
                if not reply.eof and reply.feed() == "done":  # written just before it exited
                    return "reply", 0
                return status[child]
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout", 0
            fds = [fd for fd in (None if reply.eof else reply.fd, pidfd) if fd is not None]
            select.select(fds, [], [], min(left, _REAP_EVERY))
    finally:
        if pidfd is not None:
            os.close(pidfd)


# -- after every run ----------------------------------------------------------------------
def _others() -> list[int]:
    me = os.getpid()
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != me]


def _kill(child: int) -> None:
    """SIGKILL every process of the run: the namespace's all (as pid 1), else the run's
    process group and the child (not reaped yet, see :func:`_exited`: both ids are still
    its own)."""
    if os.getpid() == 1:
        with contextlib.suppress(OSError):
            os.kill(-1, signal.SIGKILL)  # every process of the namespace but its init
        return
    for kill in (os.kill, os.killpg):
        with contextlib.suppress(OSError):
            kill(child, signal.SIGKILL)


def _reap_all(child: int) -> None:
    """Wait until every process :func:`_kill` killed is gone (reaped, out of ``/proc``)."""
    if os.getpid() != 1:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(child, 0)
        return
    while True:
        _reap(child, {})
        left = _others()
        if not left:
            return
        for pid in left:  # forked after kill(-1) went by, or where it is refused
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.001)


def _remove_tree(top: str) -> None:
    """Remove ``top`` and everything under it, whatever modes a run left on the way."""
    stack = [(top, False)]
    while stack:
        path, listed = stack.pop()
        try:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(path)
            elif listed:
                os.rmdir(path)
            else:
                os.chmod(path, 0o700)
                stack.append((path, True))
                stack.extend((os.path.join(path, n), False) for n in os.listdir(path))
        except OSError:
            continue


def _empty(directory: str, mode: int, keep: frozenset[str] = frozenset()) -> None:
    """Empty ``directory`` (but a regular ``log.txt`` in the working directory, and the
    entries in ``keep``: what the sandbox put there before any run, such as the parents of
    a Python installation bound under ``/tmp``, which no run can write into) and give it
    back its mode."""
    with contextlib.suppress(OSError):
        os.chmod(directory, mode)
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if name in keep:
            continue
        path = os.path.join(directory, name)
        if name == "log.txt" and directory == os.getcwd() and os.path.isfile(path) \
                and not os.path.islink(path):
            continue  # where /job is the work directory, the owner's log lives here
        _remove_tree(path)


def _drop_ipc() -> None:
    """Remove the namespace's System V IPC objects (shared memory, semaphores, queues)."""
    for kind, call in (("shm", "shmctl"), ("sem", "semctl"), ("msg", "msgctl")):
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                ids = [int(line.split()[1]) for line in f.readlines()[1:] if line.split()]
        except (OSError, ValueError, IndexError):
            continue
        for ipc_id in ids:
            if kind == "sem":
                _LIBC.semctl(ipc_id, 0, _IPC_RMID)
            else:
                getattr(_LIBC, call)(ipc_id, _IPC_RMID, None)


def _reset(dirs: list[str], modes: dict[str, int], keep: dict[str, frozenset[str]]) -> None:
    for d in dirs:
        _empty(d, modes[d], keep.get(d, frozenset()))
    if os.getpid() == 1:
        _drop_ipc()


# -- the loop ---------------------------------------------------------------------------
def _serve(proto_in: BinaryIO, proto_out: BinaryIO) -> None:
    from fednb.domain.runner._frames import FrameError, read_frame, write_frame
    from fednb.protocol import decode_message, encode_message

    init, _ = decode_message(read_frame(proto_in, _MAX_IN))
    try:
        _cap_processes(init)
        data = _preload(init)
    except BaseException:
        traceback.print_exc()
        write_frame(proto_out, encode_message({"status": "error", "reason": "exception"}))
        return
    dirs = _scratch()
    gc.freeze()  # the children's collections leave the zygote's objects (and pages) alone
    modes = {d: stat.S_IMODE(os.stat(d).st_mode) for d in dirs}
    keep = {d: frozenset(os.listdir(d)) for d in dirs}  # the sandbox's own, before any run
    limit = int(init["max_output"]) + (1 << 20)
    keep_out = [proto_in.fileno(), proto_out.fileno()]
    write_frame(proto_out, encode_message({"status": "ready"}))
    runs = 0
    while True:
        try:
            child: _Child | None = _Child(keep_out, init, data)
        except OSError:
            traceback.print_exc()
            child = None
        try:  # two frames: the zygote's own (the run's limit), the child's request
            timeout = float(json.loads(read_frame(proto_in, 1 << 10))["timeout"])
            request = read_frame(proto_in, _MAX_IN)
        except FrameError:
            return  # the domain closed the pipe: shut down (the namespace goes with pid 1)
        runs += 1
        print(f"fednb: run {runs} of this worker", file=sys.stderr, flush=True)
        if child is None:
            write_frame(proto_out, json.dumps({"verdict": "no_fork", "code": 0}).encode())
            continue
        child.send(request)
        del request
        reply = _Reply(child.r_reply, limit)
        verdict, code = _wait(child.pid, reply, timeout)
        _kill(child.pid)  # before the reply leaves: nothing of the run runs past its end
        write_frame(proto_out, json.dumps({"verdict": verdict, "code": code}).encode())
        if verdict == "reply" and reply.body is not None:
            write_frame(proto_out, reply.body)
        # the clean-up, off the reply's path: the domain's next request is read only after it
        reply.wipe()
        os.close(child.r_reply)
        _reap_all(child.pid)
        _reset(dirs, modes, keep)


def main() -> None:
    """Entry point: ``python -m fednb.domain.runner._worker``."""
    proto_in = os.fdopen(os.dup(0), "rb", buffering=0)
    proto_out = os.fdopen(os.dup(1), "wb")
    log_fd = os.dup(2)  # the owner's log.txt in the work dir, opened by the domain
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    _harden()
    _serve(proto_in, proto_out)


if __name__ == "__main__":
    main()
