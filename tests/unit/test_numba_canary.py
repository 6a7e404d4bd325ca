"""A canary for a new Numba: the CPU kernels use Numba internals (``numba.core.cgutils``,
llvmlite's IR classes and attribute sets, generated modules imported for Numba's cache),
tested only over the range declared in ``fednb.kernels._compat``. This fails loudly when
the installed Numba or llvmlite leaves that range or lacks one of those internals: widen
the range there once tests/unit/test_kernels.py passes on the new release."""

from __future__ import annotations

import llvmlite  # type: ignore[import-untyped]
import numba
import pytest

from fednb.kernels import _compat


def test_installed_numba_and_llvmlite_are_in_the_tested_range() -> None:
    lo, hi = _compat.NUMBA_TESTED
    assert lo <= _compat.version_tuple(numba.__version__) < hi, numba.__version__
    lo, hi = _compat.LLVMLITE_TESTED
    assert lo <= _compat.version_tuple(llvmlite.__version__) < hi, llvmlite.__version__


def test_every_numba_internal_the_kernels_use_exists() -> None:
    assert _compat.missing_internals() == []
    _compat.require_tested_numba()


def test_an_untested_numba_is_refused_with_the_range_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(numba, "__version__", "0.99.0")
    monkeypatch.delenv("FEDNB_ALLOW_UNTESTED_NUMBA", raising=False)
    _compat.require_tested_numba.cache_clear()
    try:
        with pytest.raises(_compat.UntestedNumba, match=r"numba 0\.99\.0 .*\(>=0\.60,<0\.69\)"):
            _compat.require_tested_numba()
        monkeypatch.setenv("FEDNB_ALLOW_UNTESTED_NUMBA", "1")
        with pytest.warns(RuntimeWarning, match="FEDNB_ALLOW_UNTESTED_NUMBA=1"):
            _compat.require_tested_numba()
    finally:
        _compat.require_tested_numba.cache_clear()
    assert not isinstance(_compat.UntestedNumba("x"), ImportError)  # never a quiet NumPy fallback


def test_version_strings_with_suffixes_are_read() -> None:
    assert _compat.version_tuple("0.70.0rc1") == (0, 70)
    assert _compat.version_tuple("1.2") == (1, 2)
