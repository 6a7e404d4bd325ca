"""A real domain and a real JupyterLab server with fednb's server extension on loopback."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.browser.conftest import free_port, tail, wait_for_server
from tests.conftest import Hospital, make_hospital


@dataclass
class Lab:
    url: str
    token: str  # the Jupyter token (what the browser holds); never a domain token
    tokens_file: Path
    hospital: Hospital

    def get(self, path: str, token: str | None = "same", **kw: object) -> httpx.Response:
        return self._call("GET", path, token, **kw)

    def post(self, path: str, body: object = None, token: str | None = "same") -> httpx.Response:
        return self._call("POST", path, token, json=body)

    def _call(self, method: str, path: str, token: str | None, **kw: object) -> httpx.Response:
        headers = (
            {} if token is None else {"Authorization": f"token {self.token if token == 'same' else token}"}
        )
        return httpx.request(method, f"{self.url}/fednb/{path}", headers=headers, timeout=60, **kw)  # type: ignore[arg-type]


def write_tokens(path: Path, h: Hospital) -> None:
    path.write_text(
        json.dumps(
            {
                "domains": [
                    {"name": "st-mary", "url": h.url, "token": h.owner_token},
                    {"name": "st-mary-as-alice", "url": h.url, "token": h.alice_token},
                ]
            }
        )
    )
    path.chmod(0o600)


def start_lab(root: Path, tokens_file: Path, token: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "FEDNB_LAB_TOKENS": str(tokens_file), "JUPYTER_PLATFORM_DIRS": "1"}
    log = root / "jupyter-lab.log"  # a file: a pipe nobody reads would block the server once full
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyterlab",
                "--no-browser",
                f"--port={port}",
                "--ip=127.0.0.1",
                f"--IdentityProvider.token={token}",
                f"--ServerApp.root_dir={root}",
                "--LabApp.news_url=",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                # a fresh workspace and settings: nothing restored from an earlier session
                f"--LabApp.workspaces_dir={root / 'workspaces'}",
                f"--LabApp.user_settings_dir={root / 'settings'}",
                *(["--allow-root"] if os.geteuid() == 0 else []),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
        )
    url = f"http://127.0.0.1:{port}"
    status = {"Authorization": f"token {token}"}
    ready = lambda: httpx.get(f"{url}/api/status", headers=status, timeout=2).is_success  # noqa: E731
    wait_for_server(proc, "jupyter lab", ready, 90, log)
    return proc, url


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("lab")
    h = make_hospital(root / "st-mary")
    tokens = root / "lab-tokens.json"
    write_tokens(tokens, h)
    token = secrets.token_hex(16)
    proc, url = start_lab(root, tokens, token)
    yield Lab(url, token, tokens, h)
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
    h.server.stop()
    print(f"--- jupyter-lab.log ---\n{tail(root / 'jupyter-lab.log')}")  # shown if the last test failed
