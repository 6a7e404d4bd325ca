"""Fault injection for crash tests: ``FEDNB_FAULT=<point>`` kills the domain there.

Points: ``after_reserve`` (a run and its charge are reserved and committed, nothing has
run), ``mid_commit`` (inside the transaction that finishes a run, before it commits),
``after_release`` (a result and its charge were committed). The process ends with
``os._exit(137)``, as a ``kill -9`` would: no cleanup, no flush beyond what committed.
"""

from __future__ import annotations

import os
import sys

__all__ = ["FAULT_POINTS", "fault"]

FAULT_POINTS = ("after_reserve", "mid_commit", "after_release")


def fault(point: str) -> None:
    """Die here if ``FEDNB_FAULT`` names this point."""
    if os.environ.get("FEDNB_FAULT") == point:
        sys.stderr.write(f"FEDNB_FAULT: dying at {point}\n")
        sys.stderr.flush()
        os._exit(137)
