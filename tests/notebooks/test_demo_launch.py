"""`fednb demo` as a newcomer meets it on a machine without bubblewrap (as on Binder), run
from a checkout other than the one fednb is installed from:

- it serves the tutorials of the current directory's checkout, says which, and opens
  JupyterLab on notebook 01 rather than the Launcher;
- it starts its hospitals in insecure-demo mode, says so, and records it in tokens.json;
- every tutorial that talks to its hospitals says so in the output of its first cell
  (hospitals() or sandbox_notice() there: 01 and 02 are executed, one of each).

The demo runs with a PATH that has no bwrap on it: the real demo, the real JupyterLab,
real kernels; only the sandbox is missing, as it is there.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from fednb.demo import INSECURE_NOTICE

NOTEBOOKS = Path(__file__).parents[2] / "notebooks"
TUTORIALS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def talks_to_the_demo(path: Path) -> bool:
    nb = nbformat.read(path, as_version=4)
    return any("hospitals(" in c.source for c in nb.cells if c.cell_type == "code")


def test_every_tutorial_that_talks_to_the_demo_says_in_its_first_cell_how_it_runs() -> None:
    shown = [p for p in TUTORIALS if talks_to_the_demo(p)]
    assert len(shown) >= 6
    for path in shown:
        first = first_code(path)
        assert "hospitals(" in first.source or "sandbox_notice()" in first.source, path.name


def first_code(path: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    return next(c for c in nb.cells if c.cell_type == "code")


def first_cell_output(path: Path, workdir: Path) -> str:
    """The text a fresh kernel shows for the notebook's first code cell (stdout and stderr)."""
    nb = nbformat.read(path, as_version=4)
    first = first_code(path)
    nb.cells = [first]
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(workdir)}}).execute()
    return "".join(o.get("text", "") for o in first.outputs if o.output_type == "stream")


def wait_for(check: Callable[[], object], proc: subprocess.Popen[bytes], log: Path,
             timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if check():
            return
        time.sleep(0.3)
    raise AssertionError("the demo did not get there:\n" + log.read_text(errors="replace")[-3000:])


def test_the_demo_without_bubblewrap_serves_this_checkout_and_says_it_runs_unsandboxed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkout = tmp_path / "checkout"  # another clone: its notebooks, not the installed ones
    shutil.copytree(NOTEBOOKS, checkout / "notebooks", ignore=shutil.ignore_patterns(".*"))
    home, runtime = tmp_path / "home", tmp_path / "runtime"
    bindir = tmp_path / "bin"  # python and nothing else: no bwrap on the PATH
    bindir.mkdir()
    (bindir / "python").symlink_to(sys.executable)
    assert shutil.which("bwrap", path=str(bindir)) is None
    env = {**os.environ, "PATH": str(bindir), "BROWSER": "true", "JUPYTER_RUNTIME_DIR": str(runtime),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"), "JUPYTER_TOKEN": secrets.token_hex(16),
           "JUPYTER_PORT": str(free_port())}
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fednb.cli", "demo", "--hospitals", "1",
                                 "--home", str(home)], cwd=checkout, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    def opened() -> list[Path]:  # what JupyterLab opens in the browser once it serves
        return sorted(runtime.glob("jpserver-file-to-run-*-open.html"))

    try:
        wait_for(lambda: "domains are up" in log.read_text(errors="replace") and opened(), proc, log)
        text = log.read_text(errors="replace")
        assert "sandbox: insecure-demo" in text, text
        assert "WITHOUT the bubblewrap sandbox" in " ".join(text.split()), text
        assert f"on the tutorials in {(checkout / 'notebooks').resolve()}" in text, text
        assert json.loads((home / "tokens.json").read_text())["sandbox"] == "insecure-demo"
        # JupyterLab opens notebook 01 (jupyter_server's file_to_run), not the Launcher
        assert "lab/tree/01_data_owner.ipynb" in opened()[0].read_text()

        # the two ways a first cell says it, each in a fresh kernel: 01 asks sandbox_notice()
        # before its own domain, 02 (and the others) connect with hospitals()
        monkeypatch.setenv("FEDNB_DEMO_HOME", str(home))  # the kernels inherit it
        for name in ("01_data_owner.ipynb", "02_data_scientist.ipynb"):
            first = first_cell_output(checkout / "notebooks" / name, checkout / "notebooks")
            assert "InsecureDemoWarning" in first and INSECURE_NOTICE[:60] in first, (name, first)
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C stops JupyterLab and the hospitals
        try:
            assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
