"""``fednb demo``: hospitals on loopback with real medical data, and JupyterLab on the tutorials.

Three hospitals by default (``--hospitals``), each with its part of the Wisconsin breast
cancer set (a case-mix shift), the diabetes set and a few DICOM scans
(:mod:`fednb._demo_data`). The state lives under ``--home`` and is reused by the next
start; the URLs and tokens go to ``tokens.json`` there (0600), which the tutorials read
(:mod:`fednb.demo`), with the sandbox the hospitals run code in: bubblewrap, or, where it
is missing or unusable, insecure-demo mode, which the demo announces and the tutorials
repeat in their first cell.

``--headless`` plays both roles end to end instead (:mod:`fednb._demo_scenario`) and exits.
Without it the domains stay up, with JupyterLab on the tutorials (``notebooks/`` of the
current directory, else of the checkout fednb runs from; the demo prints which) opened on
the first one when JupyterLab is installed, until Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fednb
from fednb._demo_data import NAMES, create, upgrade
from fednb.client import DomainClient
from fednb.demo import INSECURE_NOTICE
from fednb.domain import Domain, Server
from fednb.domain.runner import bwrap_available

__all__ = ["main", "start"]

LAB_TOKENS = "lab-tokens.json"  # fednb.lab's tokens_file format: {"domains": [{name, url, token}]}


@dataclass
class Site:
    name: str
    server: Server
    owner: DomainClient
    scientist: DomainClient


def _write_private(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` readable only by the user, at no moment readable by others:
    a new 0600 file beside it (fchmod'ed before a byte is written), then renamed over."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a leftover of the same name kept its own mode
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def start(home: Path, n: int, port_base: int = 0) -> list[Site]:
    """Create (or reuse) ``n`` hospitals under ``home`` and serve them on loopback."""
    home.mkdir(parents=True, exist_ok=True)
    tok_file = home / "tokens.json"
    state = json.loads(tok_file.read_text()) if tok_file.exists() else {}
    if len(state.get("hospitals", {})) != n:
        for name in NAMES[:n]:
            if (home / name).exists():
                raise SystemExit(f"{home} holds a demo of another size; remove it or use --home")
        state = {"hospitals": create(home, n)}
    else:
        upgrade(home, list(state["hospitals"]))
    insecure = not bwrap_available()
    sites = []
    for i, (name, toks) in enumerate(state["hospitals"].items()):
        port = port_base + i if port_base else 0
        server = Domain.open(home / name).serve(port=port, insecure_demo=insecure)
        toks["url"] = server.url
        sites.append(Site(name, server, fednb.connect(server.url, token=toks["owner"]),
                          fednb.connect(server.url, token=toks["scientist"])))
    # what fednb.demo.sandbox_notice reads: the tutorials say it in their first cell
    state["sandbox"] = sites[0].server.domain.sandbox_mode if sites else None
    _write_private(tok_file, state)
    owners = [{"name": name, "url": toks["url"], "token": toks["owner"]}
              for name, toks in state["hospitals"].items()]
    _write_private(home / LAB_TOKENS, {"domains": owners})  # the owners' review desk in JupyterLab
    return sites


def _lab_settings(sites: list[Site]) -> dict[str, Any]:
    """What JupyterLab (and the fednb extension) needs to know about the demo: each
    hospital's URL and the 0600 file with the owners' tokens in ``fednb.lab``'s
    ``tokens_file`` format (never the tokens themselves). See :func:`_start_lab`."""
    home = Path(sites[0].server.domain.home).parent if sites else Path(".fednb-demo")
    return {"domains": {s.name: s.server.url for s in sites},
            "tokens_file": str((home / LAB_TOKENS).resolve())}


def _tutorials(folder: Path) -> list[Path]:
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


def _notebooks_dir() -> Path | None:
    """The tutorials to serve: those of the current directory's checkout (``notebooks/``
    here, or here itself), else those of the checkout fednb is installed from (editable);
    None when neither has them (an installed wheel, run elsewhere)."""
    here = Path.cwd()
    for folder in (here / "notebooks", here, Path(__file__).resolve().parent.parent / "notebooks"):
        if _tutorials(folder):
            return folder.resolve()
    return None


def _lab_command(notebooks: Path | None) -> list[str]:
    """JupyterLab on ``notebooks``, opened on the first tutorial rather than the Launcher."""
    cmd = [sys.executable, "-m", "jupyterlab", "--ip=127.0.0.1"]
    if notebooks is not None:
        cmd.append(f"--notebook-dir={notebooks}")
        cmd.append(str(_tutorials(notebooks)[0]))  # jupyter_server's file_to_run: opened at start
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # a container's only user; JupyterLab refuses root otherwise
    return cmd


def _start_lab(sites: list[Site], home: Path) -> subprocess.Popen[bytes] | None:
    """JupyterLab on the tutorials, its kernels pointed at this demo; None without JupyterLab."""
    notebooks = _notebooks_dir()
    if notebooks is None:
        print("no tutorials here nor in the checkout fednb is installed from: run `fednb demo` "
              "in a fednb checkout (its notebooks/)", flush=True)
    where = f"the tutorials in {notebooks}" if notebooks is not None else f"{Path.cwd()}"
    if importlib.util.find_spec("jupyterlab") is None:
        print(f"JupyterLab is not installed (pip install jupyterlab): open {where} in a Jupyter "
              f"of your own with FEDNB_DEMO_HOME={home}", flush=True)
        return None
    settings = _lab_settings(sites)
    env = dict(os.environ, FEDNB_DEMO_HOME=str(home), FEDNB_LAB_TOKENS=settings["tokens_file"])
    cmd = _lab_command(notebooks)
    print(f"starting JupyterLab on {where}: " + " ".join(cmd[2:]), flush=True)
    return subprocess.Popen(cmd, env=env)


def _wait(lab: subprocess.Popen[bytes] | None) -> None:
    print("domains are up; press Ctrl-C to stop", flush=True)
    while lab is not None and lab.poll() is None:
        time.sleep(0.5)
    if lab is not None:
        print(f"JupyterLab exited (status {lab.returncode}); the domains stay up: Ctrl-C to stop", flush=True)
    while True:
        time.sleep(3600)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(args: argparse.Namespace) -> int:
    """Entry point of ``fednb demo``."""
    # Ctrl-C stops everything, even when a shell started the demo in the background (which
    # ignores SIGINT for it); `kill` and `docker stop` (SIGTERM) stop it the same way
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    n = int(args.hospitals)
    if not 1 <= n <= len(NAMES):
        raise SystemExit(f"--hospitals must be between 1 and {len(NAMES)}")
    home = Path(args.home).resolve()
    sites = start(home, n, int(getattr(args, "port_base", 0) or 0))
    lab: subprocess.Popen[bytes] | None = None
    try:
        mode = sites[0].server.domain.sandbox_mode
        for s in sites:
            print(f"{s.name:8s} {s.server.url}")
        print(f"sandbox: {mode}" + ("  (INSECURE DEMO: jobs run without bubblewrap)"
                                    if mode == "insecure-demo" else ""))
        if mode == "insecure-demo":
            print("\n" + "!" * 78 + "\n" + textwrap.fill("WARNING: " + INSECURE_NOTICE, 78)
                  + "\n" + "!" * 78 + "\n", file=sys.stderr, flush=True)
        print(f"tokens: {home / 'tokens.json'} (readable only by you)", flush=True)
        if args.headless:
            return _headless(sites)
        if not getattr(args, "no_lab", False):
            lab = _start_lab(sites, home)
        _wait(lab)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if lab is not None and lab.poll() is None:
            lab.terminate()
            lab.wait(30)
        for s in sites:
            s.server.stop()


def _headless(sites: list[Site]) -> int:
    from fednb._demo_scenario import Parties, scenario

    scenario(Parties({s.name: s.scientist for s in sites}, {s.name: s.owner for s in sites}))
    for s in sites:
        print(f"  {s.name:8s} audit: {s.server.domain.verify_audit()}")
    return 0
