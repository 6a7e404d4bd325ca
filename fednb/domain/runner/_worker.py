"""The worker: runs inside the sandbox, executes one approved function, run after run.

It holds no keys, noise or store. It reads frames from stdin and writes frames to a
duplicate of the original stdout; the code's own prints and tracebacks go to
``log.txt`` in the work directory, which only the owner reads. Everything it sends back
is untrusted: the domain's parent validates it.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from typing import Any, BinaryIO

__all__ = ["main"]

_MAX_IN = 1 << 31


def _serve(proto_in: BinaryIO, proto_out: BinaryIO) -> None:
    import xarray as xr

    from fednb.domain.runner._frames import FrameError, read_frame, write_frame
    from fednb.protocol import decode_message, encode_message
    from fednb.runtime import call_function, compile_function
    from fednb.runtime._gpu import device_in_use, prepare_gpu

    init, _ = decode_message(read_frame(proto_in, _MAX_IN))
    datasets: dict[str, str] = init["datasets"]
    max_output = int(init["max_output"])  # the parent enforces it too; this saves the copy
    for line in prepare_gpu():  # GPU jobs: allocator caps before any user code runs
        print(f"fednb: {line}", file=sys.stderr)
    try:
        fn = compile_function(init["source"], init["function_name"])
        write_frame(proto_out, encode_message({"status": "ready"}))
    except BaseException:
        traceback.print_exc()
        write_frame(proto_out, encode_message({"status": "error", "reason": "exception"}))
        return
    cache: dict[str, xr.Dataset] = {}
    while True:
        try:
            header, tensors = decode_message(read_frame(proto_in, _MAX_IN))
        except FrameError:
            return  # the domain closed the pipe: shut down
        reply: dict[str, Any]
        try:
            name = header["dataset"]
            if name not in cache:
                cache[name] = xr.open_zarr(datasets[name]).load()
            weights = tensors if header.get("weights") else None
            update = call_function(fn, cache[name], weights, header.get("params") or {})
            if sum(a.nbytes for a in update.weights.values()) > max_output:
                reply, out = {"status": "error", "reason": "output_too_large"}, {}
            else:
                reply, out = {"status": "ok", "metrics": update.metrics}, update.weights
        except OSError as exc:
            traceback.print_exc()
            reason = "process_limit" if exc.errno == errno.EAGAIN else "exception"
            reply, out = {"status": "error", "reason": reason}, {}
        except MemoryError:
            traceback.print_exc()
            reply, out = {"status": "error", "reason": "memory_limit"}, {}
        except BaseException:
            traceback.print_exc()
            reply, out = {"status": "error", "reason": "exception"}, {}
        reply["backend"] = device_in_use()
        try:
            frame = encode_message(reply, out)
        except BaseException as exc:  # the codec cannot carry it: NaN metrics, text or complex arrays
            traceback.print_exc()
            reason = "nonfinite_output" if isinstance(exc, ValueError) and "JSON" in str(exc) \
                else "invalid_output"
            frame = encode_message({"status": "error", "reason": reason})
        sys.stdout.flush()
        sys.stderr.flush()
        write_frame(proto_out, frame)


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
    _serve(proto_in, proto_out)


if __name__ == "__main__":
    main()
