"""Process-wide settings that fednb's library calls touch in the user's kernel process:
each is put back when the call returns, or never changed there (docs/federated.md,
"Process-wide settings"). Each check runs in a fresh interpreter, so what it reads
before a call is the process's own starting state, not another test's leftovers."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

# The probe records every call fednb makes to glibc's mallopt (wrapping the libc handle
# they go through; each still reaches glibc), BLAS's thread count (threadpoolctl), Numba's threading-layer
# settings and thread count, and the environment, around simulate() and kernel calls.
_PROBE = '''
import json, os, sys
import numpy as np, xarray as xr, numba
from threadpoolctl import ThreadpoolController, threadpool_info
import fednb
from fednb import kernels
from fednb.kernels import _memory

calls = []
libc = _memory._libc()  # the handle fednb's mallopt calls go through: wrapped, still called
if libc is not None:
    real = libc.mallopt
    libc.mallopt = lambda param, value: (calls.append([param, value]), real(param, value))[1]

ThreadpoolController().limit(limits=2, user_api="blas")  # a start that differs from one_blas_thread's

def state():
    return {"blas": {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"},
            "layer": str(numba.config.THREADING_LAYER), "numba_threads": numba.get_num_threads(),
            "numba_config_threads": numba.config.NUMBA_NUM_THREADS,
            "env": {k: v for k, v in os.environ.items()}}

@fednb.remote
def train(data, weights):
    return fednb.Update(weights={k: v + float(data["x"].values.mean()) for k, v in weights.items()})

out = {"before": state()}
with kernels.one_blas_thread():
    out["inside_one_blas_thread"] = state()["blas"]
big = np.ones(1 << 19, np.float32)
assert kernels.all_finite(big)
stacked = np.random.default_rng(0).normal(size=(5, 4096))
kernels.coordinate_median(stacked); kernels.trimmed_mean(stacked, 1)
kernels.box_muller(np.full(64, 0.5), 1.0, np.empty(32), np.empty(32))
kernels.stochastic_round(np.zeros(64), 4.0, 1.0, np.arange(64, dtype=np.uint32))
out["after_kernels"] = state()
parts = {n: xr.Dataset({"x": ("row", np.array([v]))}) for n, v in (("a", 1.0), ("b", 3.0))}
w0 = {"w": np.zeros(1 << 19, np.float32)}  # big enough for the BLAS finiteness scan
for workers in (1, 2):
    hist = fednb.simulate(train, parts, initial=w0, rounds=2, progress=False, workers=workers)
    assert float(hist.weights["w"][0]) == 4.0
out["after_simulate"] = state()
out["mallopt_in_simulate"] = list(calls)
with kernels.keep_freed_memory_if_asked() as kept:
    pass
out["asked_kept"] = kept
out["mallopt_total"] = list(calls)
out["glibc"] = libc is not None
print(json.dumps(out))
'''


def _run(tmp_path: Path, **env: str) -> dict[str, object]:
    script = tmp_path / "probe.py"  # a file: fednb.remote reads the function's source
    script.write_text(_PROBE)
    environ = {k: v for k, v in os.environ.items() if k != "FEDNB_KEEP_FREED_MEMORY"}
    environ.update(env)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=environ,
                          cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return _run(tmp_path_factory.mktemp("side-effects"))


def test_blas_thread_count_is_limited_inside_the_context_and_put_back(default_run: dict) -> None:
    before = default_run["before"]["blas"]
    assert before and set(before.values()) == {2}  # the probe's own start: a BLAS found
    assert set(default_run["inside_one_blas_thread"].values()) == {1}
    for after in (default_run["after_kernels"]["blas"], default_run["after_simulate"]["blas"]):
        # a BLAS loaded later (SciPy's own) starts at its own default: the ones there before
        # are compared
        assert {path: after[path] for path in before} == before


def test_numba_threading_settings_and_environment_are_left_alone(default_run: dict) -> None:
    before = default_run["before"]
    for after in (default_run["after_kernels"], default_run["after_simulate"]):
        for key in ("layer", "numba_threads", "numba_config_threads", "env"):
            assert after[key] == before[key], key


def test_simulate_leaves_mallopt_alone_unless_asked(default_run: dict, tmp_path: Path) -> None:
    assert default_run["mallopt_in_simulate"] == []
    assert default_run["asked_kept"] is False and default_run["mallopt_total"] == []
    asked = _run(tmp_path, FEDNB_KEEP_FREED_MEMORY="1")
    if not asked["glibc"]:  # the documented no-op off glibc
        assert asked["asked_kept"] is False and asked["mallopt_total"] == []
        return
    assert platform.libc_ver()[0] == "glibc"
    # opted in, the probe sees the calls: its silence above is a real observation
    assert asked["asked_kept"] is True
    assert [-1, 2**31 - 1] in asked["mallopt_total"] and [-3, 32 << 20] in asked["mallopt_total"]
