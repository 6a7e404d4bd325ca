"""``python -m fednb.kernels --precompile``: compile the CPU kernels once, at install.

``make install`` and Binder's ``postBuild`` run it, so that a scientist's first robust
round does not wait for Numba (tens of seconds for Krum's Gram kernel or a large median
network on a fresh machine). ``--median-sizes 2-16`` (the default) says which median and
trimmed-mean networks to build; other sizes compile on first use, with a notice.
"""

from __future__ import annotations

import argparse
import sys

from fednb.kernels._compile import precompile


def _sizes(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"sizes are positive whole numbers, e.g. 2-16,50: not {text!r}")
    return sorted(set(out))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fednb.kernels", description=__doc__.splitlines()[0])
    ap.add_argument("--precompile", action="store_true", help="compile (or load) every CPU kernel now")
    ap.add_argument("--median-sizes", type=_sizes, default=list(range(2, 17)), metavar="N[-M],...",
                    help="rows of the median and trimmed-mean networks to build (default 2-16)")
    args = ap.parse_args(argv)
    if not args.precompile:
        ap.print_help()
        return 2
    precompile(args.median_sizes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
