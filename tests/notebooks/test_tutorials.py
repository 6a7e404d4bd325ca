"""Every tutorial in notebooks/ runs top to bottom, in order, in a real Jupyter kernel
(nbclient) against a real `fednb demo` (three domains on loopback, the real sandbox)
that this test starts in its own home."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).parents[2] / "notebooks"
TUTORIALS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def start_demo(home: Path, python: str = sys.executable, env: dict[str, str] | None = None,
               timeout: float = 180) -> subprocess.Popen[bytes]:
    """``fednb demo --no-lab`` in the background; returns once its domains are up."""
    home.parent.mkdir(parents=True, exist_ok=True)
    log = home.parent / "demo.log"
    with log.open("wb") as out:  # a file, not a pipe nobody reads while the notebooks run
        proc = subprocess.Popen([python, "-m", "fednb.cli", "demo", "--no-lab", "--home", str(home)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if "domains are up" in log.read_text(errors="replace"):
            return proc
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the demo did not come up:\n" + log.read_text(errors="replace")[-3000:])


def stop_demo(proc: subprocess.Popen[bytes]) -> None:
    """Ctrl-C, as a user would; the demo stops its domains and exits 0."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - t0 < 30, "the demo took long to stop"


def execute(path: Path, workdir: Path, timeout: int = 240) -> nbformat.NotebookNode:
    """Run a notebook in a fresh python3 kernel; raises on the first cell that errs."""
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(workdir)}}).execute()
    return nb


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("demo") / "home"
    proc = start_demo(home)
    old = os.environ.get("FEDNB_DEMO_HOME")
    os.environ["FEDNB_DEMO_HOME"] = str(home)  # the kernels inherit it
    try:
        yield home
    finally:
        if old is None:
            os.environ.pop("FEDNB_DEMO_HOME", None)
        else:
            os.environ["FEDNB_DEMO_HOME"] = old
        stop_demo(proc)


def test_the_tutorials_are_committed_without_outputs() -> None:
    assert len(TUTORIALS) >= 7
    for path in TUTORIALS:
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") and c.get("execution_count") is None
                   for c in nb.cells if c.cell_type == "code"), path.name


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs_top_to_bottom(path: Path, demo: Path, tmp_path: Path) -> None:
    t0 = time.monotonic()
    nb = execute(path, NOTEBOOKS)
    seconds = time.monotonic() - t0
    nbformat.write(nb, tmp_path / path.name)  # inspectable after a failure
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert seconds < 120, f"{path.name} took {seconds:.0f} s"
