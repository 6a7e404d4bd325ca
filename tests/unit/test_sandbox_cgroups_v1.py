"""Worker cgroups on cgroup v1 go under the domain's own cgroup of each controller, where
the domain may make cgroups there, over the fake cgroup trees of test_gpu_binds."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from fednb.domain.runner import _sandbox
from tests.unit import test_gpu_binds

fake_kernel = test_gpu_binds.fake_kernel  # the fixture: fake v1 and v2 trees
v1_tree = test_gpu_binds.v1_tree

SELF = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/f6c5\n2:cpu,cpuacct:/\n0::/\n"


def own_v1(fk: Any, controller: str, path: str) -> Path:
    own = fk.root / controller / path
    own.mkdir(parents=True)
    (own / "cgroup.procs").write_text(f"{os.getpid()}\n")
    return own


def test_v1_worker_cgroups_go_under_the_domains_own_cgroup(fake_kernel: Any) -> None:
    v1_tree(fake_kernel)
    fake_kernel.self_cgroup.write_text(SELF)
    own = own_v1(fake_kernel, "memory", "process_api/f6c5")
    cg = _sandbox._Cgroup(_sandbox.Limits(memory_bytes=1 << 30, max_procs=7))
    pids, mem = cg.dirs
    assert pids.parent == fake_kernel.root / "pids"  # the domain's pids cgroup is the root: as before
    assert mem.parent == own and mem.name.startswith(f"fednb-{os.getpid()}-")
    assert (mem / "memory.limit_in_bytes").read_text() == str(1 << 30)
    assert (pids / "pids.max").read_text() == "7"
    assert cg.caps_memory
    # the sweep and the tests' worker_cgroups look there too
    assert _sandbox._worker_parents(fake_kernel.root) == [fake_kernel.root / "pids", own,
                                                          fake_kernel.root / "memory"]
    cg.remove()
    assert not mem.exists() and not pids.exists()


def test_a_controller_named_among_others_is_found(fake_kernel: Any) -> None:
    v1_tree(fake_kernel)
    own = own_v1(fake_kernel, "pids", "jobs/a")
    text = "5:pids,blkio:/jobs/a\n"
    assert _sandbox.v1_parent(fake_kernel.root, "pids", text) == own
    assert _sandbox.v1_parent(fake_kernel.root, "memory", text) is None  # not listed: the root


@pytest.mark.parametrize("text", ["4:memory:/\n", "4:memory:/../../etc\n", "4:memory:/gone\n",
                                  "4:memory:relative\n", ""])
def test_the_root_is_used_where_the_own_cgroup_is_odd_or_missing(fake_kernel: Any, text: str) -> None:
    v1_tree(fake_kernel)
    assert _sandbox.v1_parent(fake_kernel.root, "memory", text) is None
    fake_kernel.self_cgroup.write_text(text)
    cg = _sandbox._Cgroup(_sandbox.Limits())
    assert [d.parent for d in cg.dirs] == [fake_kernel.root / "pids", fake_kernel.root / "memory"]


def test_an_own_cgroup_the_domain_cannot_make_cgroups_in_is_left_alone(fake_kernel: Any) -> None:
    v1_tree(fake_kernel)
    own = fake_kernel.root / "memory" / "process_api" / "f6c5"
    own.mkdir(parents=True)  # no cgroup.procs this process may write: not a usable cgroup
    fake_kernel.self_cgroup.write_text(SELF)
    assert _sandbox.v1_parent(fake_kernel.root, "memory", SELF) is None
    cg = _sandbox._Cgroup(_sandbox.Limits())
    assert cg.dirs[1].parent == fake_kernel.root / "memory"


def test_a_cgroup_the_kernel_refuses_under_the_own_one_falls_back_to_the_root(
        fake_kernel: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    v1_tree(fake_kernel)
    fake_kernel.self_cgroup.write_text(SELF)
    own = own_v1(fake_kernel, "memory", "process_api/f6c5")
    make = _sandbox._make_cgroup_dir

    def refuse_under_own(path: Path) -> None:
        if path.parent == own:
            raise PermissionError(13, "Permission denied")
        make(path)

    monkeypatch.setattr(_sandbox, "_make_cgroup_dir", refuse_under_own)
    cg = _sandbox._Cgroup(_sandbox.Limits())
    assert cg.dirs[1].parent == fake_kernel.root / "memory"
