"""Length-prefixed frames on the pipes between the domain and a worker."""

from __future__ import annotations

import os
import select
import struct
import time
from typing import IO

__all__ = ["FrameError", "FrameTimeout", "FrameTooLarge", "read_frame", "write_frame"]

_LEN = struct.Struct("<Q")


class FrameError(Exception):
    """The peer closed the pipe or sent garbage."""


class FrameTimeout(FrameError):
    """No complete frame before the deadline."""


class FrameTooLarge(FrameError):
    """The peer announced a frame larger than allowed."""


def write_frame(stream: IO[bytes], payload: bytes | bytearray) -> None:
    """Write one frame and flush."""
    stream.write(_LEN.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks: list[bytes] = []
    while n > 0:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise FrameTimeout("no frame before the deadline")
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise FrameError("the peer closed the pipe")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(stream: IO[bytes], max_bytes: int, timeout: float | None = None) -> bytes:
    """Read one frame from a raw (unbuffered) pipe, refusing frames over ``max_bytes``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    fd = stream.fileno()
    (n,) = _LEN.unpack(_read_exact(fd, _LEN.size, deadline))
    if n > max_bytes:
        raise FrameTooLarge(f"frame of {n} bytes exceeds {max_bytes}")
    return _read_exact(fd, n, deadline)
