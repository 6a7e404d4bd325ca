"""`fednb demo --headless` runs both roles end to end on a fresh home, then reuses it."""

from __future__ import annotations

import re
import stat
import subprocess
import sys
from pathlib import Path


def run_demo(home: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "fednb.cli", "demo", "--headless", "--home", str(home)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_headless_demo(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    text = run_demo(home)
    m = re.search(r"federated test accuracy ([0-9.]+)\s+pooled training ([0-9.]+)", text)
    assert m, text
    fed, pooled = float(m.group(1)), float(m.group(2))
    assert fed >= pooled - 0.02 and fed >= 0.93
    assert text.count("audit chain OK") == 2
    assert stat.S_IMODE((home / "tokens.json").stat().st_mode) == 0o600
    again = run_demo(home)  # a second start reuses the state (and the tokens)
    assert "federated test accuracy" in again
