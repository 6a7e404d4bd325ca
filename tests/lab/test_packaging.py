"""The wheel ships the prebuilt extension and enables the server extension: after a
`pip install` of it, Jupyter finds both and reports them enabled (no node at install)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = "import sys; from {0} import main; sys.argv = ['jupyter-{1}', 'list']; main()"


def run(*args: str, cwd: Path | None = None) -> str:
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "JUPYTER_PATH", "JUPYTER_CONFIG_PATH")
    }
    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, check=True, cwd=cwd)
    return re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)


def test_the_wheel_installs_the_lab_and_server_extensions(tmp_path: Path) -> None:
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT))
    (wheel,) = tmp_path.glob("fednb-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = [n for n in names if "/share/jupyter/labextensions/fednb-labextension/" in n]
    assert any(n.endswith("/package.json") for n in shipped)
    assert any(re.search(r"/static/remoteEntry\.[0-9a-f]+\.js$", n) for n in shipped)
    assert any(n.endswith("/schemas/fednb-labextension/plugin.json") for n in shipped)
    assert not any(n.endswith(".ts") or "node_modules" in n for n in names)
    assert any(n.endswith("/etc/jupyter/jupyter_server_config.d/fednb.json") for n in names)

    # a fresh venv holding only the wheel; the checkout's venv lends it the dependencies
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", str(venv))
    (site,) = venv.glob("lib/python3*/site-packages")
    (site / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: never touch the checkout venv's own (editable) fednb
    run(
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--ignore-installed",
        "-q",
        "--prefix",
        str(venv),
        str(wheel),
    )
    python = str(venv / "bin" / "python")
    where = run(python, "-c", "import fednb.lab; print(fednb.lab.__file__)", cwd=tmp_path)
    assert where.strip().startswith(str(site)), where
    # the console scripts are the checkout venv's; call the same entry points in the fresh venv
    labs = run(python, "-c", LAUNCH.format("jupyterlab.labextensions", "labextension"), cwd=tmp_path)
    section = labs.split(str(venv / "share" / "jupyter" / "labextensions"), 1)[1]
    assert re.search(r"^\s+fednb-labextension v0\.1\.0 enabled\s+OK", section, re.M), labs
    servers = run(
        python,
        "-c",
        LAUNCH.format("jupyter_server.extension.serverextension", "server-extension"),
        cwd=tmp_path,
    )
    section = servers.split(f"Config dir: {venv / 'etc' / 'jupyter'}", 1)[1]
    assert re.search(r"^\s+fednb\.lab enabled", section, re.M), servers
    assert re.search(r"fednb\.lab\s+OK", section), servers
