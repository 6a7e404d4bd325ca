"""`fednb demo` starts JupyterLab with the extension configured for its three hospitals:
the lab's server extension reaches each domain as its owner, and the page never gets a
domain token."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.browser.conftest import free_port


def test_the_demo_opens_jupyterlab_with_its_hospitals_in_the_sidebar(tmp_path: Path) -> None:
    token, port = secrets.token_hex(16), free_port()
    env = {**os.environ, "JUPYTER_TOKEN": token, "JUPYTER_PORT": str(port), "BROWSER": "true",
           "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config")}
    log = (tmp_path / "demo.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "fednb.cli", "demo", "--home", str(tmp_path / "demo")],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/fednb/domains"
    try:
        deadline, answer = time.monotonic() + 240, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = httpx.get(url, headers={"Authorization": f"token {token}"}, timeout=30)
                if r.status_code == 200 and len(r.json()) == 3:
                    answer = r
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert answer is not None, (tmp_path / "demo.log").read_text()[-3000:]
        domains = {d["name"]: d for d in answer.json()}
        assert set(domains) == {"st-mary", "st-john", "general"}
        assert all(d["role"] == "owner" and d["error"] is None for d in domains.values())
        lab_tokens = tmp_path / "demo" / "lab-tokens.json"
        assert lab_tokens.stat().st_mode & 0o077 == 0
        for entry in json.loads(lab_tokens.read_text())["domains"]:
            assert entry["token"] not in answer.text
        assert httpx.get(url, timeout=30).status_code == 403  # without Jupyter's token
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C stops JupyterLab and the domains
        try:
            assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
