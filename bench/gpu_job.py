"""A CuPy job through a real domain with GPU jobs on: what the owner sees of it.

    .venv/bin/python bench/gpu_job.py [--allow-cpu]

Makes a throwaway domain (``gpu_jobs=True``, ``gpu_memory_bytes`` 1 GiB), serves it on
loopback with the bubblewrap sandbox, files and approves a request whose function
computes ``cupy.arange(10).sum()`` on the GPU, runs it, releases the result and prints
the result (45), the run's status, the device the owner sees (``backend``) and the
owner's log (the allocator caps the worker set). Without a GPU it prints "no GPU" and
exits with status 2; ``--allow-cpu`` then runs the same job with NumPy in place of CuPy
(backend ``cpu``), to check the path on a machine without one. Where this process cannot
write a memory cgroup it sets ``gpu_without_host_memory_cap`` and says so.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap

import numpy as np
import xarray as xr
from gpu_leftovers import has_gpu  # bench/ is on sys.path: these run as scripts

SOURCE = textwrap.dedent("""
    def gpu_sum(data):
        try:
            import cupy as xp
        except ImportError:
            xp = np
        total = xp.arange(10).sum()
        return {"sum": np.asarray([float(total)]), "on_gpu": np.asarray([float(xp is not np)])}
""")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--allow-cpu", action="store_true", help="run the job with NumPy where there is no GPU")
    args = ap.parse_args()
    why = has_gpu()
    if why is not None:
        print(f"no GPU: {why}")
        if not args.allow_cpu:
            return 2
    import fednb
    from fednb.domain import Domain
    from fednb.domain.runner import _sandbox, bwrap_available

    if not bwrap_available():
        print("no sandbox: bubblewrap is missing or cannot make namespaces (apt install bubblewrap)")
        return 2
    with tempfile.TemporaryDirectory() as home:
        dom = Domain.create(f"{home}/gpu-domain", name="GPU check")
        owner_token, alice_token = dom.add_user("olivia", role="owner"), dom.add_user("alice")
        policy = {"allow_no_dp": ["alice"], "gpu_jobs": True, "gpu_memory_bytes": 1 << 30}
        if not _sandbox.memory_cgroup_works():
            print("no memory cgroup can be written here: gpu_without_host_memory_cap=true for this check")
            policy["gpu_without_host_memory_cap"] = True
        dom.policy.update(**policy)
        dom.add_dataset("toy", xr.Dataset({"x": ("patient", np.arange(8.0))}), bounds={"x": (0.0, 10.0)})
        server = dom.serve(port=0)
        try:
            fn = fednb.RemoteFunction(compile_gpu_sum(), source=SOURCE)
            req = fn.request(fednb.connect(server.url, token=alice_token), "toy")
            owner = fednb.connect(server.url, token=owner_token)
            owner.requests.get(req.id).approve()
            run = req.run()
            info = run.wait(300)
            seen = owner.runs.get(info.id)
            print(f"run: {info.status} ({info.reason}); backend the owner sees: {seen.info.backend}")
            print("owner's log:\n" + textwrap.indent(seen.info.owner_log or "(empty)", "  "))
            if info.status != "succeeded":
                return 1
            seen.release()
            out = run.result(60)
            print(f"cupy.arange(10).sum() = {float(out.weights['sum'][0]):g} "
                  f"(on the GPU: {bool(out.weights['on_gpu'][0])})")
            return 0 if why is None or args.allow_cpu else 2
        finally:
            server.stop()


def compile_gpu_sum():  # type: ignore[no-untyped-def]
    namespace: dict[str, object] = {"np": np}
    exec(SOURCE, namespace)  # our own source: the very text the domain approves
    return namespace["gpu_sum"]


if __name__ == "__main__":
    sys.exit(main())
