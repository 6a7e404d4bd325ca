"""Real-browser fixtures: Debian's chromium driven by Playwright (no downloaded browsers).

`make test` sets FEDNB_REQUIRE_BROWSER=1 (it installs chromium first): there a missing
browser fails the run instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


def _need_browser() -> None:
    if not Path(CHROMIUM).exists():
        message = "needs Debian's chromium (apt-get install chromium)"
        if os.environ.get("FEDNB_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], Any], timeout: float = 20.0, poll: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy (returned) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(poll)
    raise AssertionError("condition not met in time")


def wait_for_server(
    proc: subprocess.Popen[bytes], name: str, ready: Callable[[], bool], timeout: float, log: Path
) -> None:
    """Wait until ``ready()`` (an HTTP probe) holds; fail with the log's tail if ``proc`` exits first.

    A server's output goes to the file ``log``, never to a pipe nobody reads: once a pipe's
    64 KiB fill, the server blocks in its next write (a log line) and stops answering."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail(log)}")
        try:
            if ready():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise TimeoutError(f"{name} did not start in {timeout:.0f} s:\n{tail(log)}")


def tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


def no_news(lab_url: str, token: str) -> None:
    """Answer JupyterLab's "notified about official Jupyter news?" question with "never"
    before a page opens, so its toast does not cover the views in the screenshots."""
    resp = httpx.put(
        f"{lab_url}/lab/api/settings/@jupyterlab/apputils-extension:notification",
        json={"raw": '{"fetchNews": "false"}'},
        headers={"Authorization": f"token {token}"},
        timeout=30,
    )
    assert resp.status_code in (200, 204), resp.text


def shot(page: Any, name: str) -> Path:
    """Save a screenshot under tests/browser/artifacts (kept by CI)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[Any]:
    """Start ``fednb dashboard`` with the given arguments; yields a starter returning its URL.

    Each dashboard's output goes to a log file; its tail is printed at teardown, which pytest
    shows when the test failed."""
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(*args: str) -> str:
        port = free_port()
        log = tmp_path / f"dashboard-{len(procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fednb.cli", "dashboard", "--port", str(port), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        procs.append((proc, log))
        url = f"http://127.0.0.1:{port}"
        wait_for_server(proc, "fednb dashboard", lambda: bool(httpx.get(url + "/", timeout=2)), 60, log)
        return url

    yield start
    for proc, _ in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    for _, log in procs:
        print(f"--- {log.name} ---\n{tail(log)}")
