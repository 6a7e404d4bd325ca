"""Every tutorial in notebooks/ runs top to bottom, in order, twice in a row, in real
Jupyter kernels (nbclient) against one real `fednb demo` (three domains on loopback, the
real sandbox) that this module starts in its own home; the second pass is a learner
running the notebooks again on the same hospitals. After both passes the demo's whole
process tree holds under 1.5 GB (PSS), what a Binder session gets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.adversarial.conftest import require_sandbox

NOTEBOOKS = Path(__file__).parents[2] / "notebooks"
TUTORIALS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
PASSES = [(n, path) for n in (1, 2) for path in TUTORIALS]  # pass 1 in order, then pass 2
MEMORY_LIMIT = 1.5e9  # bytes of PSS: what a Binder session gets is 1-2 GB


def start_demo(home: Path, python: str = sys.executable, env: dict[str, str] | None = None,
               timeout: float = 180, args: tuple[str, ...] = ("--no-lab",),
               cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """``fednb demo --no-lab`` in the background; returns once its domains are up."""
    home.parent.mkdir(parents=True, exist_ok=True)
    log = home.parent / "demo.log"
    with log.open("wb") as out:  # a file, not a pipe nobody reads while the notebooks run
        proc = subprocess.Popen([python, "-m", "fednb.cli", "demo", *args, "--home", str(home)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
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


def tree_pss(pid: int) -> tuple[int, int]:
    """PSS (bytes) of ``pid`` and all its descendants, from /proc/<pid>/smaps_rollup; and
    how many processes that is. PSS splits each shared page among its sharers, so the sum
    is what the tree costs the machine, however its workers share the zygote's pages."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        ppid = int(text[text.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    total, count, todo = 0, 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text()
        except FileNotFoundError:  # exited meanwhile
            continue
        total += 1024 * sum(int(line.split()[1]) for line in rollup.splitlines()
                            if line.startswith("Pss:"))
        count += 1
    return total, count


@dataclass
class Demo:
    home: Path
    proc: subprocess.Popen[bytes]
    ran: set[tuple[int, str]] = field(default_factory=set)  # (pass, notebook) tried so far


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    require_sandbox()
    home = tmp_path_factory.mktemp("demo") / "home"
    proc = start_demo(home)
    old = os.environ.get("FEDNB_DEMO_HOME")
    os.environ["FEDNB_DEMO_HOME"] = str(home)  # the kernels inherit it
    try:
        yield Demo(home, proc)
    finally:
        if old is None:
            os.environ.pop("FEDNB_DEMO_HOME", None)
        else:
            os.environ["FEDNB_DEMO_HOME"] = old
        stop_demo(proc)


def run_tutorial(demo: Demo, n: int, path: Path, out: Path) -> nbformat.NotebookNode:
    demo.ran.add((n, path.name))
    nb = nbformat.read(path, as_version=4)
    try:
        NotebookClient(nb, timeout=240, kernel_name="python3",
                       resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    finally:
        nbformat.write(nb, out / f"pass{n}-{path.name}")  # inspectable after a failure
    return nb


def test_the_tutorials_are_committed_without_outputs() -> None:
    assert len(TUTORIALS) >= 7
    for path in TUTORIALS:
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") and c.get("execution_count") is None
                   for c in nb.cells if c.cell_type == "code"), path.name


@pytest.mark.parametrize(("n", "path"), PASSES, ids=[f"pass{n}-{p.stem}" for n, p in PASSES])
def test_tutorial_runs_top_to_bottom(n: int, path: Path, demo: Demo, tmp_path: Path) -> None:
    nb = run_tutorial(demo, n, path, tmp_path)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    # the real sandbox here: no tutorial claims to run without it
    assert not any("InsecureDemoWarning" in o.get("text", "") for o in outputs)


def test_the_demo_holds_under_1_5_gb_after_two_passes(demo: Demo, tmp_path: Path) -> None:
    # run alone (-k), the passes this module has not tried come first: the figure is the
    # one after a learner has run every tutorial twice
    for n, path in PASSES:
        if (n, path.name) not in demo.ran:
            run_tutorial(demo, n, path, tmp_path)
    assert demo.proc.poll() is None, "the demo exited"
    pss, processes = tree_pss(demo.proc.pid)
    print(f"demo after two passes of {len(TUTORIALS)} tutorials: PSS {pss / 1e6:.0f} MB "
          f"in {processes} processes")
    assert pss > 0
    assert pss < MEMORY_LIMIT, f"the demo's processes hold {pss / 1e6:.0f} MB (PSS) in {processes} processes"
