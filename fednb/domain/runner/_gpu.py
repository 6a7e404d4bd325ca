"""What a GPU job's sandbox binds: the NVIDIA device nodes and driver libraries, found once.

Both finders are pure functions of a root directory (and of ``ldconfig -p``'s text), so
tests run them over a fake tree of empty files. Only what CUDA needs is taken: the
per-GPU nodes ``/dev/nvidia0..N``, ``/dev/nvidiactl``, the unified-memory node
``/dev/nvidia-uvm`` and the MIG access capability nodes
(``/dev/nvidia-caps/nvidia-capN`` of the GPU and compute instances). Never
``nvidia-cap1`` and ``nvidia-cap2`` (MIG config and monitor: whoever opens them can
repartition the GPU or watch every instance, and a job runs with the domain's uid, root
where the domain is), ``nvidia-modeset`` (display), ``nvidia-uvm-tools`` (profiling),
render nodes (``/dev/dri``) or any other device. The driver's user-space libraries
(``libcuda.so*``, ``libnvidia-*.so*``) are bound read-only at their own paths; those
under a system directory the sandbox binds anyway (``/usr``, ``/lib`` ...) need no bind
of their own.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path

__all__ = ["GpuBinds", "driver_libraries", "gpu_binds", "nvidia_devices"]

_DEVICE_NAMES = ("nvidiactl", "nvidia-uvm")
_MIG_CAP = re.compile(r"^nvidia-cap[0-9]+$")
_MIG_ADMIN_CAPS = ("nvidia-cap1", "nvidia-cap2")  # MIG config and monitor: never bound
_LIB = re.compile(r"^lib(cuda|nvidia-[A-Za-z0-9_-]+)\.so(\.[0-9.]+)?$")
_LIB_DIRS = ("usr/lib/x86_64-linux-gnu", "usr/lib64", "usr/local/nvidia/lib64", "usr/local/nvidia/lib")
_LDCONFIG_LINE = re.compile(r"^\s*(\S+)\s+\(.*\)\s+=>\s+(/\S+)\s*$")


def _inside(root: Path, path: Path) -> str:
    return "/" + path.relative_to(root).as_posix()


def nvidia_devices(root: Path = Path("/")) -> list[str]:
    """The NVIDIA device nodes a CUDA job needs under ``root/dev``, as paths inside ``root``
    (sorted): see the module's docstring for what is left out and why."""
    dev = root / "dev"
    found = [p for p in dev.glob("nvidia[0-9]*") if p.name[6:].isdigit()]
    found += [dev / n for n in _DEVICE_NAMES if (dev / n).exists()]
    caps = dev / "nvidia-caps"
    if caps.is_dir():
        found += [p for p in caps.iterdir() if _MIG_CAP.match(p.name) and p.name not in _MIG_ADMIN_CAPS]
    return sorted(_inside(root, p) for p in found if not p.is_dir())


def driver_libraries(root: Path = Path("/"), ldconfig: str = "") -> list[str]:
    """The NVIDIA driver's user-space libraries: those ``ldconfig -p`` (its text as
    ``ldconfig``) lists and those in the usual driver directories under ``root``, plus
    ``/proc/driver/nvidia`` where it exists; paths inside ``root``, sorted, each once."""
    found: set[str] = set()
    for line in ldconfig.splitlines():
        m = _LDCONFIG_LINE.match(line)
        if m and _LIB.match(m.group(1)) and (root / m.group(2).lstrip("/")).exists():
            found.add(m.group(2))
    for d in _LIB_DIRS:
        base = root / d
        if base.is_dir():
            found.update(_inside(root, p) for p in base.iterdir() if _LIB.match(p.name))
    if (root / "proc/driver/nvidia").is_dir():
        found.add("/proc/driver/nvidia")
    return sorted(found)


class GpuBinds:
    """The device nodes (``--dev-bind``) and driver paths (``--ro-bind``) of this machine."""

    def __init__(self, devices: list[str], libraries: list[str]) -> None:
        self.devices, self.libraries = devices, libraries

    def argv(self, bound_dirs: tuple[str, ...]) -> list[str]:
        """bubblewrap arguments; libraries inside ``bound_dirs`` are visible already."""
        args: list[str] = []
        for d in self.devices:
            args += ["--dev-bind", d, d]
        for lib in self.libraries:
            if not any(lib == b or lib.startswith(b + "/") for b in bound_dirs):
                args += ["--ro-bind", lib, lib]
        return args


@functools.lru_cache(maxsize=1)
def gpu_binds() -> GpuBinds:
    """This machine's :class:`GpuBinds`, found once per process."""
    text = ""
    exe = shutil.which("ldconfig") or ("/sbin/ldconfig" if Path("/sbin/ldconfig").exists() else None)
    if exe is not None:
        try:
            text = subprocess.run([exe, "-p"], capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            text = ""
    return GpuBinds(nvidia_devices(), driver_libraries(ldconfig=text))
