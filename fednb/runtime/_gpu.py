"""A GPU job's start and its report: the allocators' caps, and the device a run used.

The domain's worker calls :func:`prepare_gpu` before it compiles the approved code, so
the caps are in place before any user code runs: CuPy's default memory pool gets
``set_limit(size=...)`` and PyTorch ``set_per_process_memory_fraction``, each only where
the library imports and sees a GPU. These are allocator limits in the job's own process:
they stop a job that asks for too much by accident, not code that means to lift them (it
can call the same functions); a hard cap per job needs a MIG slice or a GPU of its own.

:func:`device_in_use` says, after a run, which device the job's process has used:
``"cuda:<name>"`` once CuPy's pool or PyTorch's caching allocator has held device
memory, ``"cpu"`` otherwise. Every GPU call is guarded: a missing library, a broken driver or
no device is "not there", never an exception.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

__all__ = ["BACKEND_LABEL_MAX", "device_in_use", "gpu_settings", "kernels_device", "prepare_gpu"]

BACKEND_LABEL_MAX = 32  # what the run's record holds


def gpu_settings(env: dict[str, str] | None = None) -> tuple[bool, int | None]:
    """(GPU jobs on, GPU memory cap in bytes or None) from the worker's environment
    (``FEDNB_GPU=1``, ``FEDNB_GPU_MEMORY_BYTES``), as the domain's launcher set it."""
    env = dict(os.environ) if env is None else env
    raw = env.get("FEDNB_GPU_MEMORY_BYTES", "").strip()
    return env.get("FEDNB_GPU") == "1", int(raw) if raw.isdigit() and int(raw) > 0 else None


def _label(name: Any) -> str:
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    text = "".join(c for c in str(name) if " " <= c <= "~").strip()
    return ("cuda:" + text)[:BACKEND_LABEL_MAX] if text else "cuda"


def _cap_cupy(limit: int | None) -> str:
    if importlib.util.find_spec("cupy") is None:
        return "cupy: not installed"
    try:
        import cupy  # type: ignore[import-not-found]

        if not cupy.cuda.is_available():
            return "cupy: no GPU"
        if limit is None:
            return "cupy: no cap set"
        cupy.get_default_memory_pool().set_limit(size=limit)
        return f"cupy: memory pool capped at {limit} bytes"
    except Exception as exc:  # a broken driver or toolkit: the job runs without CuPy's GPU
        return f"cupy: unavailable ({type(exc).__name__}: {exc})"


def _cap_torch(limit: int | None) -> str:
    if importlib.util.find_spec("torch") is None:
        return "torch: not installed"
    try:
        import torch

        if not torch.cuda.is_available():
            return "torch: no GPU"
        if limit is None:
            return "torch: no cap set"
        total = int(torch.cuda.get_device_properties(0).total_memory)
        fraction = min(1.0, limit / total)
        torch.cuda.set_per_process_memory_fraction(fraction, 0)
        return f"torch: caching allocator capped at {fraction:.4f} of {total} bytes"
    except Exception as exc:
        return f"torch: unavailable ({type(exc).__name__}: {exc})"


def prepare_gpu(env: dict[str, str] | None = None) -> list[str]:
    """Apply the GPU settings of ``env`` (default: this process's environment) before user
    code starts; returns one line per library saying what was done, for the owner's log.
    With GPU jobs on and CuPy seeing a GPU, ``fednb.kernels`` runs on CuPy
    (``FEDNB_BACKEND=cupy``); otherwise it stays as the launcher set it. Does nothing
    when GPU jobs are off."""
    on, limit = gpu_settings(env)
    if not on:
        return []
    lines = [_cap_cupy(limit), _cap_torch(limit)]
    if lines[0].startswith("cupy: memory pool capped") or lines[0] == "cupy: no cap set":
        os.environ["FEDNB_BACKEND"] = "cupy"
    return lines


def _cupy_device(cp: Any) -> str | None:
    try:
        if cp.get_default_memory_pool().total_bytes() > 0:
            return _label(cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"])
    except Exception:  # a broken driver: nothing ran there
        return None
    return None


def _torch_device(torch: Any) -> str | None:
    try:
        # not is_initialized(): capping the allocator at the start initialised CUDA
        if torch.cuda.is_initialized() and torch.cuda.max_memory_allocated() > 0:
            return _label(torch.cuda.get_device_name())
    except Exception:
        return None
    return None


def device_in_use() -> str:
    """``"cuda:<device name>"`` (at most :data:`BACKEND_LABEL_MAX` characters) once this
    process has used a GPU through CuPy or PyTorch, else ``"cpu"``."""
    cp, torch = sys.modules.get("cupy"), sys.modules.get("torch")
    used = (_cupy_device(cp) if cp is not None else None) or (_torch_device(torch) if torch else None)
    return used or "cpu"


def kernels_device() -> str:
    """The device ``fednb.kernels`` computes on in this process (a query's run, which the
    domain computes itself): ``"cuda:<name>"`` on CuPy or Numba CUDA, else ``"cpu"``."""
    from fednb import kernels

    try:
        name = kernels.backend()
        if name == "cupy":
            import cupy

            return _label(cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"])
        if name == "numba-cuda":
            from numba import cuda

            return _label(cuda.get_current_device().name)  # type: ignore[no-untyped-call]
    except Exception:
        return "cpu"
    return "cpu"
