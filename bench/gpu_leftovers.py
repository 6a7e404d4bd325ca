"""Does one process see another's device memory? A check for a machine with a GPU.

    .venv/bin/python bench/gpu_leftovers.py [--mib 1024]

Process A fills ``--mib`` MiB of device memory with a random 64-bit pattern, frees it
and exits; process B then allocates with ``cupy.empty`` (twice A's size, in blocks of
A's) and counts the 64-bit words that still hold the pattern. It prints whether B saw A's
leftovers: CUDA does not document that device memory is zeroed between processes, so
GPU jobs that share a device (and the domain's own CuPy kernels) may read each other's
data (docs/architecture.md, GPU jobs). Both are plain processes on the same GPU, as two
sandboxed GPU jobs of a domain are. Without a GPU it prints "no GPU" and exits with
status 2; it writes nothing but device memory it allocated itself.
"""

from __future__ import annotations

import argparse
import secrets
import subprocess
import sys


def has_gpu() -> str | None:
    """Why there is no GPU for CuPy here, or None when there is one."""
    try:
        import cupy  # type: ignore[import-not-found]
    except ImportError:
        return "CuPy is not installed (pip install cupy-cuda12x)"
    try:
        return None if cupy.cuda.is_available() else "cupy.cuda.is_available() is false"
    except Exception as exc:
        return f"CuPy cannot reach a GPU ({exc})"


def fill(mib: int, pattern: int) -> None:
    """Process A: write the pattern over ``mib`` MiB of device memory, then exit."""
    import cupy

    words = (mib << 20) // 8
    a = cupy.full(words, pattern, dtype=cupy.uint64)
    cupy.cuda.Device().synchronize()
    print(f"A: wrote {mib} MiB of {pattern:#018x}; pid exits now")
    del a
    cupy.get_default_memory_pool().free_all_blocks()  # back to the driver, as a job's exit does


def scan(mib: int, pattern: int) -> int:
    """Process B: ``cupy.empty`` twice A's size in blocks of A's; the words holding the pattern."""
    import cupy

    words, found, blocks = (mib << 20) // 8, 0, []
    for _ in range(2):
        b = cupy.empty(words, dtype=cupy.uint64)  # uninitialised: whatever the driver hands out
        found += int((b == cupy.uint64(pattern)).sum())
        blocks.append(b)  # keep it, so the next block is other memory
    print(f"B: scanned {2 * mib} MiB from cupy.empty")
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=1024, help="MiB process A fills (default 1024)")
    ap.add_argument("--role", choices=("fill", "scan"), help=argparse.SUPPRESS)
    ap.add_argument("--pattern", type=lambda s: int(s, 16), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "fill":
        fill(args.mib, args.pattern)
        return 0
    if args.role == "scan":
        print(f"matches={scan(args.mib, args.pattern)}")
        return 0
    why = has_gpu()
    if why is not None:
        print(f"no GPU: {why}")
        return 2
    pattern = secrets.randbits(63) | 1  # never zero, new each run: no match by chance; fits int64
    base = [sys.executable, __file__, "--mib", str(args.mib), "--pattern", f"{pattern:x}"]
    a = subprocess.run([*base, "--role", "fill"], capture_output=True, text=True, timeout=300)
    print(a.stdout, end="")
    if a.returncode != 0:
        print(f"process A failed:\n{a.stderr}")
        return 1
    b = subprocess.run([*base, "--role", "scan"], capture_output=True, text=True, timeout=300)
    print(b.stdout, end="")
    if b.returncode != 0 or "matches=" not in b.stdout:
        print(f"process B failed:\n{b.stderr}")
        return 1
    matches = int(b.stdout.rsplit("matches=", 1)[1].split()[0])
    total = (2 * args.mib << 20) // 8
    if matches:
        print(f"leftovers seen: {matches} of {total} words ({matches * 8 / (1 << 20):.1f} MiB) that B "
              "got from cupy.empty still held A's pattern: device memory is NOT cleared between "
              "processes here")
    else:
        print(f"no leftovers seen: none of {total} words B got from cupy.empty held A's pattern "
              "(this driver cleared them, or gave B other memory)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
