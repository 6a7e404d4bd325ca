"""The Binder image, built as repo2docker would build it (without Docker), from the files
in binder/ alone:

- the Python version repo2docker picks from them (binder/runtime.txt, else its default,
  3.10), and every pin of binder/requirements.txt resolved for that version by pip;
- binder/postBuild failing the image build, loudly, when the lab extension's build fails;
- the image itself: a fresh venv of that Python version from binder/requirements.txt,
  then binder/postBuild in the repository root, then binder/start, whose ``exec "$@"``
  runs notebooks 01 and 04 against the demo it started.

Slow: resolving the pins asks the package index (under a minute); installing them into an
empty venv takes minutes even from the local wheel cache (torch alone is ~200 MB). Set
FEDNB_SKIP_BINDER=1 to leave the module out.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).parents[2]
BINDER = ROOT / "binder"
# Run inside the venv by binder/start: execute notebooks with nbclient, fail on an error.
RUNNER = """
import sys, nbformat
from nbclient import NotebookClient
for path in sys.argv[1:]:
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": "notebooks"}}).execute()
    print("executed", path, flush=True)
"""

_PASS_THROUGH = ("NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
                 "CURL_CA_BUNDLE")

pytestmark = pytest.mark.skipif(os.environ.get("FEDNB_SKIP_BINDER") == "1", reason="FEDNB_SKIP_BINDER=1")

# repo2docker (jupyterhub/repo2docker, 2026-08): PythonBuildPack.python_version takes
# runtime.txt's `python-X.Y[-YYYY-MM-DD]`, else CondaBuildPack.major_pythons["3"]; with a
# binder/ folder it ignores pyproject.toml's requires-python. The versions it has
# environments for are conda/supported_python_version.py's.
R2D_DEFAULT_PYTHON = "3.10"
R2D_PYTHONS = ("3.8", "3.9", "3.10", "3.11", "3.12", "3.13", "3.14")


def repo2docker_python(binder: Path) -> str:
    """The Python version (X.Y) repo2docker builds the image with, from ``binder`` alone."""
    # other build packs (conda, pipenv, nix, docker) read other files and pick otherwise
    others = {"environment.yml", "environment.yaml", "Pipfile", "Pipfile.lock", "default.nix",
              "Dockerfile", "install.R", "Project.toml"}
    assert not others & {p.name for p in binder.iterdir()}, "not repo2docker's Python build pack"
    runtime = binder / "runtime.txt"
    if not runtime.exists():
        return R2D_DEFAULT_PYTHON
    text = runtime.read_text().strip()
    m = re.fullmatch(r"python-(\d+(?:\.\d+)*)(?:-\d{4}-\d\d-\d\d)?", text)
    assert m, f"binder/runtime.txt: {text!r} names no Python (repo2docker then takes {R2D_DEFAULT_PYTHON})"
    parts = m.group(1).split(".")
    return R2D_DEFAULT_PYTHON if len(parts) == 1 else ".".join(parts[:2])


def pinned(requirements: Path) -> dict[str, Requirement]:
    """The requirements of a pip requirements file, by canonical name (options left out)."""
    reqs = [Requirement(line.split("#")[0].strip()) for line in requirements.read_text().splitlines()
            if line.split("#")[0].strip() and not line.lstrip().startswith("-")]
    return {canonicalize_name(r.name): r for r in reqs}


def fednb_needs() -> set[str]:
    """What the tutorials need of fednb's own requirements: its dependencies and those of
    its ``tutorials`` extra, by canonical name (extras of fednb itself followed)."""
    import tomllib  # Python 3.11+, as the tests run

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras, names, todo = project["optional-dependencies"], set(), ["tutorials"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    while todo:
        for r in map(Requirement, extras[todo.pop()]):
            if canonicalize_name(r.name) == "fednb":
                todo += sorted(r.extras)
            else:
                reqs.append(r)
    names |= {canonicalize_name(r.name) for r in reqs}
    return names


def test_binder_pins_everything_fednb_and_its_tutorials_need() -> None:
    # postBuild installs fednb with --no-deps: a dependency missing here is missing there
    missing = fednb_needs() - set(pinned(BINDER / "requirements.txt"))
    assert not missing, f"binder/requirements.txt lacks {sorted(missing)} (pyproject.toml needs them)"


def test_repo2docker_picks_a_python_every_binder_pin_installs_on(tmp_path: Path) -> None:
    version = repo2docker_python(BINDER)
    assert version in R2D_PYTHONS, f"repo2docker has no Python {version}"
    found = re.search(r'^requires-python\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert found, "pyproject.toml names no requires-python"
    requires = found.group(1)
    assert f"{version}.0" in SpecifierSet(requires), f"postBuild's pip install of fednb needs {requires}"
    # Without runtime.txt the same folder gets repo2docker's default, older than numpy 2.4 needs.
    bare = tmp_path / "binder"
    shutil.copytree(BINDER, bare, ignore=shutil.ignore_patterns("runtime.txt"))
    assert repo2docker_python(bare) == R2D_DEFAULT_PYTHON
    # pip resolves the whole file for that interpreter version as the image's pip would
    # (wheels only: repo2docker's image has no compilers for an sdist of these)
    report = tmp_path / "report.json"
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--only-binary=:all:", "--python-version", version, "--report", str(report),
         "-r", str(BINDER / "requirements.txt")],
        capture_output=True, text=True, timeout=900, env={**os.environ, "PIP_RETRIES": "1"})
    assert out.returncode == 0, (f"binder/requirements.txt does not resolve for Python {version} "
                                 f"(repo2docker's choice):\n{out.stderr[-4000:]}")
    chosen = {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"]
              for i in json.loads(report.read_text())["install"]}
    for name, req in pinned(BINDER / "requirements.txt").items():
        assert name in chosen, f"{name} is missing from pip's resolution"
        assert req.specifier.contains(chosen[name], prereleases=True), (name, chosen[name], req)


def test_postbuild_fails_the_image_when_the_lab_extension_does_not_build(tmp_path: Path) -> None:
    """A lab extension that does not build fails postBuild, with the build's own error in
    the image's log, before fednb is installed: no Binder without the review sidebar."""
    repo = copy_checkout(tmp_path / "repo")
    (repo / "labextension" / "package.json").write_text('{"name": "fednb-labextension", broken')
    # a venv without pip: were postBuild to go on past the failure, it would fail there instead
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{Path(sys.executable).parent}:{os.environ['PATH']}",
           "YARN_GLOBAL_FOLDER": str(Path.home() / ".yarn" / "berry")}
    assert shutil.which("node", path=env["PATH"]) and shutil.which("jlpm", path=env["PATH"]), \
        "node and jlpm (repo2docker's image has both) are needed here"
    out = subprocess.run(["bash", str(repo / "binder" / "postBuild")], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=300)
    log = out.stdout + out.stderr
    assert out.returncode != 0, log
    assert "Syntax Error" in log and "package.json" in log, log  # yarn's own error, not silenced
    assert "No module named pip" not in log and "extension enabled" not in log, log


def copy_checkout(dest: Path) -> Path:
    """The files a clone has (tracked, and new files git does not ignore), as repo2docker
    copies them into its image; postBuild installs the copy, editable."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def run(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float) -> str:
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def python_of(version: str) -> str:
    """An interpreter of ``version`` (X.Y) on this machine: this one, or ``pythonX.Y``."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return sys.executable
    candidate = shutil.which(f"python{version}")
    if candidate and subprocess.run([candidate, "-c", ""], capture_output=True).returncode == 0:
        return candidate
    pytest.fail(f"the Binder image runs Python {version} (binder/runtime.txt): install it here")


@pytest.mark.timeout(1500)
def test_binder_image_runs_the_tutorials(tmp_path: Path) -> None:
    repo = copy_checkout(tmp_path / "repo")
    venv = tmp_path / "venv"
    # the interpreter version repo2docker would pick, not whichever runs this test
    subprocess.run([python_of(repo2docker_python(repo / "binder")), "-m", "venv", str(venv)], check=True)
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "HOME": str(home), "LANG": "C.UTF-8",
           "VIRTUAL_ENV": str(venv), "PIP_RETRIES": "0",  # an unreachable index fails fast
           **{k: v for k, v in os.environ.items() if k.startswith("PIP_")},
           # the machine's CA bundle (a TLS-inspecting proxy here) and yarn's package cache, so
           # postBuild's build of the lab extension fetches no more than a Binder build would
           **{k: v for k, v in os.environ.items() if k in _PASS_THROUGH},
           "YARN_GLOBAL_FOLDER": str(Path.home() / ".yarn" / "berry")}
    t0 = time.monotonic()
    run(["python", "-m", "pip", "install", "-q", "-r", str(repo / "binder" / "requirements.txt")],
        env, repo, timeout=1200)
    installed = time.monotonic() - t0
    built = run(["bash", str(repo / "binder" / "postBuild")], env, repo, timeout=600)
    # node is on this machine, as in repo2docker's images: postBuild builds and enables the extension
    assert "fednb: JupyterLab extension enabled" in built, built
    demo_home = home / ".fednb-demo"
    try:
        out = run(["bash", str(repo / "binder" / "start"), "python", "-c", RUNNER,
                   "notebooks/01_data_owner.ipynb", "notebooks/04_federated_training.ipynb"],
                  env, repo, timeout=600)
    finally:
        pid_file = demo_home / "demo.pid"
        if pid_file.exists():  # the demo binder/start left running, as it does on Binder
            pid = int(pid_file.read_text())
            with_ctrl_c(pid)
    assert "executed notebooks/01_data_owner.ipynb" in out
    assert "executed notebooks/04_federated_training.ipynb" in out
    assert (demo_home / "tokens.json").exists()
    print(f"binder: requirements installed in {installed:.0f} s, total {time.monotonic() - t0:.0f} s")


def with_ctrl_c(pid: int) -> None:
    """Stop the demo binder/start launched (this test's own child's child) with Ctrl-C."""
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return
    for _ in range(120):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
