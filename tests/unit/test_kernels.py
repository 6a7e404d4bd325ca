"""Kernels: every backend on this machine against the NumPy reference; the backend probe."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from fednb import kernels
from fednb.errors import InvalidInput
from fednb.kernels import _cpu, _cupy, _reference, _select

SIZES = [1, 2, 3, 4, 5, 7, 16, 33, 50, 64, 65, 130]


# every network compiles for seconds per dtype (once per machine, then cached): the big
# unrolled ones run in float32 only, the float64 code being the same generated source
CASES = [(n, dtype) for n in SIZES for dtype in (np.float64, np.float32)
         if not (33 < n <= _select.MAX_UNROLLED and dtype == np.float64)]


@pytest.mark.parametrize(("n", "dtype"), CASES)
def test_cpu_kernels_match_the_reference(n: int, dtype: type) -> None:
    big = 33 < n <= _select.MAX_UNROLLED
    rng = np.random.default_rng(n)
    x = (rng.normal(size=(n, 1000)) * rng.choice([1e-3, 1.0, 1e6], size=(n, 1))).astype(dtype)
    x[:, :10] = 7.0  # ties
    x[: n // 2, 10:20] = -3.0
    wide = x.astype(np.float64)  # the reference sees the same values, widened
    tol = 1e-12 if dtype == np.float64 else 1e-6  # float32 sums the middle rows in float32
    np.testing.assert_allclose(_cpu.coordinate_median(x), _reference.coordinate_median(wide), rtol=tol)
    for k in {n // 10} if big else {0, n // 4, (n - 1) // 2}:
        if 2 * k < n:
            np.testing.assert_allclose(
                _cpu.trimmed_mean(x, k),
                _reference.trimmed_mean(wide, k),
                rtol=tol,
                atol=tol * float(np.abs(wide).max()),
            )


@pytest.mark.parametrize("n", [1, 2, 7, 16, 50])
def test_the_looped_network_matches_the_reference(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_select, "MAX_UNROLLED", 0)  # what N above it run
    rng = np.random.default_rng(40 + n)
    x = rng.normal(size=(n, 700)) * rng.choice([1e-3, 1.0, 1e6], size=(n, 1))
    x[:, :10] = 7.0
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-6)):
        wide = x.astype(dtype).astype(np.float64)
        np.testing.assert_allclose(_cpu.coordinate_median(x.astype(dtype)), np.median(wide, axis=0), rtol=tol)
        k = n // 4
        np.testing.assert_allclose(
            _cpu.trimmed_mean(x.astype(dtype), k), _reference.trimmed_mean(wide, k), rtol=tol,
            atol=tol * float(np.abs(wide).max()),
        )


@pytest.mark.parametrize("n", [5, 16])
def test_the_unrolled_networks_cross_chunk_and_block_boundaries(n: int) -> None:
    # columns in several parallel blocks, each in chunks whose successors are prefetched,
    # with ragged ends: every column is selected once, the prefetches change nothing
    p = 2 * _select._BLOCK + _select._CHUNK + 37
    x = np.random.default_rng(n).normal(size=(n, p))
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-6)):
        wide = x.astype(dtype).astype(np.float64)
        np.testing.assert_allclose(_cpu.coordinate_median(x.astype(dtype)), np.median(wide, axis=0), rtol=tol)
        np.testing.assert_allclose(_cpu.trimmed_mean(x.astype(dtype), 1), _reference.trimmed_mean(wide, 1),
                                   rtol=tol, atol=tol)


def test_the_generated_kernels_carry_the_hints_and_name_their_code() -> None:
    src = _select._source(5, 2, 2)
    assert "        prefer_wide_vectors()" in src  # in the parallel loop's body: its function
    assert all(f"prefetch(x, o{i} + q)" in src for i in range(5))
    # the generated module's name hashes its text, which names the hints' code: a change
    # there is a new module, not Numba's stale cache of the old one
    assert _select._intrinsics_hash() in src


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 machine code")
def test_the_llvm_hints_reach_the_machine_code_and_change_no_result() -> None:
    from numba import njit

    from fednb.kernels._intrinsics import prefer_wide_vectors, prefetch

    @njit(fastmath=True)
    def hinted(x, out):  # type: ignore[no-untyped-def]
        prefer_wide_vectors()
        for j in range(x.size):
            if j + 64 < x.size:
                prefetch(x, j + 64)
            out[j] = min(x[j], 0.5) * 2

    x = np.random.default_rng(0).random(1000).astype(np.float32)
    out = np.empty_like(x)
    hinted(x, out)
    np.testing.assert_array_equal(out, np.minimum(x, 0.5) * 2)
    sig = hinted.signatures[0]
    assert '"prefer-vector-width"="512"' in hinted.inspect_llvm(sig)
    assert "prefetcht0" in hinted.inspect_asm(sig)


def test_the_selection_networks_select_from_every_zero_one_input() -> None:
    # the 0-1 principle: a comparator network puts the right values into rows first..last for
    # every input iff it does for every 0-1 input (comparators commute with thresholds)
    for n in (3, 6, 9, 12, 13):
        for first, last in {(0, n - 1), ((n - 1) // 2, n // 2), (1, n - 2), (n // 4, n - 1 - n // 4)}:
            net = _select.comparators(n, first, last)
            for bits in range(2**n):
                v = [(bits >> i) & 1 for i in range(n)]
                for a, d in net:
                    if v[a] > v[d]:
                        v[a], v[d] = v[d], v[a]
                assert sorted(v[first : last + 1]) == sorted(v)[first : last + 1], (n, first, last, bits)
    assert len(_select.comparators(50, 24, 25)) < 543  # pruned from Batcher's 64-input sort


def test_a_generated_kernel_file_that_changed_is_written_again(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    path = _select._write("x = 1\n", "fednb_select_test")
    path.write_text("import os\n")
    assert _select._write("x = 1\n", "fednb_select_test") == path and path.read_text() == "x = 1\n"


@pytest.mark.parametrize("n", [1, 2, 3, 5, 50])
def test_krum_distances_are_within_their_bound_of_the_reference(n: int) -> None:
    rng = np.random.default_rng(20 + n)
    p = 3 * 256 + 17  # a ragged last block
    offset = rng.normal(size=p) * 1e3  # centring removes what the rows share
    rows = [(offset + rng.normal(size=p) * s).astype(np.float32) for s in rng.choice([1e-3, 1.0, 1e2], n)]
    got, err = _cpu.sq_distances(rows)
    want, want_err = _reference.sq_distances(rows)
    assert got.shape == (n, n) and (np.abs(got - want) <= err + want_err).all()
    assert want_err.max() <= 1e-9 * want.max()
    loop = np.array([[np.sum((a.astype(np.float64) - b) ** 2) for b in rows] for a in rows])
    np.testing.assert_allclose(want, loop, rtol=1e-9, atol=1e-9)
    huge = [r * np.float32(1e20) for r in rows]  # float32 products overflow: no bound holds
    assert n == 1 or np.isinf(_cpu.sq_distances(huge)[1][~np.eye(n, dtype=bool)]).all()
    exact, exact_err = kernels.sq_distances(rows, exact=True)  # Numba's pair by pair sums
    assert (np.abs(exact - want) <= exact_err + want_err).all()
    twins, _ = _cpu.sq_distances_exact([*rows, rows[0].copy()])
    assert twins[0, -1] == 0.0 and (twins[0, 1:-1] == twins[-1, 1:-1]).all()  # ties stay ties


def test_the_dispatch_checks_its_input_and_uses_the_probed_backend() -> None:
    assert kernels.backend() in kernels.BACKENDS
    with pytest.raises(InvalidInput, match="shape"):
        kernels.coordinate_median(np.zeros(3))
    with pytest.raises(InvalidInput, match="leaves nothing"):
        kernels.trimmed_mean(np.zeros((4, 2)), 2)
    x = np.arange(12.0).reshape(4, 3)
    np.testing.assert_allclose(kernels.coordinate_median(x), [4.5, 5.5, 6.5])


def probe(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = "from fednb import kernels; print(kernels.backend())"
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**env, "PATH": "/usr/bin:/bin"},
        check=False,
    )


def test_the_probe_honours_fednb_backend_and_never_trusts_the_simulator_alone() -> None:
    assert probe({"FEDNB_BACKEND": "numpy"}).stdout.strip() == "numpy"
    plain = probe({}).stdout.strip()
    assert plain in ("numba", "numba-cuda", "cupy")  # "numba" on a machine without a GPU
    # the simulator makes numba.cuda.is_available() true on any machine: not taken unless asked
    assert probe({"NUMBA_ENABLE_CUDASIM": "1"}).stdout.strip() in ("numba", "cupy")
    sim = probe({"NUMBA_ENABLE_CUDASIM": "1", "FEDNB_BACKEND": "numba-cuda-sim"})
    assert sim.stdout.strip() == "numba-cuda-sim"
    bad = probe({"FEDNB_BACKEND": "numba-cuda-sim"})
    assert bad.returncode != 0 and "NUMBA_ENABLE_CUDASIM=1" in bad.stderr
    assert "not one of" in probe({"FEDNB_BACKEND": "tpu"}).stderr


def test_stochastic_rounding_matches_the_reference_bit_for_bit() -> None:
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(size=10_000) * 3, [5.0, -5.0, 4.0, -4.0, 0.0, 1e-300]])
    bits = rng.integers(0, 2**32, size=x.size, dtype=np.uint32)
    bits[-6:] = [0, 2**32 - 1, 0, 2**32 - 1, 2**31, 0]
    for scale in (1.0, 2**20 / 4.0, (2**31 - 3) / 4.0):
        want = _reference.stochastic_round(x, scale, 4.0, bits)
        np.testing.assert_array_equal(_cpu.stochastic_round(x, scale, 4.0, bits), want)
        np.testing.assert_array_equal(kernels.stochastic_round(x, scale, 4.0, bits), want)
    with pytest.raises(InvalidInput, match="uint32"):
        kernels.stochastic_round(x, 1.0, 4.0, bits.astype(np.int64))


def test_stochastic_rounding_is_unbiased() -> None:
    rng = np.random.default_rng(4)
    x = np.full(200_000, 0.3)
    bits = rng.integers(0, 2**32, size=x.size, dtype=np.uint32)
    q = kernels.stochastic_round(x, 1.0, 1.0, bits).view(np.int32)
    assert set(np.unique(q)) == {0, 1} and abs(q.mean() - 0.3) < 0.005


def test_box_muller_matches_the_reference_and_draws_normals() -> None:
    rng = np.random.default_rng(5)
    u = rng.uniform(size=200_000)
    u[u == 0.0] = 0.5
    got = (np.empty(100_000), np.empty(100_000))
    want = (np.empty(100_000), np.empty(100_000))
    kernels.box_muller(u, 2.5, *got)
    _reference.box_muller(u, 2.5, *want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
    both = np.concatenate(got)
    assert abs(both.mean()) < 0.03 and abs(both.std() - 2.5) < 0.03
    with pytest.raises(InvalidInput, match="uniforms"):
        kernels.box_muller(u.astype(np.float32), 1.0, *got)


def test_the_query_statistics_match_the_reference() -> None:
    rng = np.random.default_rng(11)
    assert np.isnan(_cpu.clipped_sum(np.array([1.0, np.nan, 2.0, 3.0, 4.0]), -1.0, 1.0))  # as np.clip does
    x = rng.normal(size=(5000, 4, 3)) * 5
    x[7, 1, 2] = np.nan
    np.testing.assert_allclose(
        _cpu.clipped_sum(x, -4.0, 6.0), _reference.clipped_sum(x, -4.0, 6.0), rtol=1e-12, equal_nan=True
    )
    np.testing.assert_allclose(
        kernels.clipped_sum(x[:, 0, 0], -1.0, 1.0), _reference.clipped_sum(x[:, 0, 0], -1, 1)
    )
    y = np.concatenate(
        [rng.normal(size=100_000) * 3, [3.0, -2.5, 1e9, -1e9, np.nan], np.linspace(-2.5, 3.0, 101)]
    )
    for bins in (1, 7, 10, 64):
        np.testing.assert_array_equal(
            _cpu.clipped_histogram(y, -2.5, 3.0, bins), _reference.clipped_histogram(y, -2.5, 3.0, bins)
        )
    v = np.sort(np.clip(rng.normal(size=501), -2, 2))
    v[100:110] = v[100]  # ties: empty gaps
    for u in rng.uniform(size=500):
        assert _cpu.quantile_pick(v, -2.0, 2.0, 250.5, 1.0, u) == _reference.quantile_pick(
            v, -2.0, 2.0, 250.5, 1.0, u
        )
    first = int(np.argmax(np.diff(np.concatenate([[-2.0], v, [2.0]])) > 0))  # the lowest gap of any width
    assert kernels.quantile_pick(v, -2.0, 2.0, 0.0, 50.0, 0.5) == first  # a sharp mechanism picks it
    with pytest.raises(InvalidInput):
        kernels.clipped_histogram(y, 1.0, 1.0, 5)
    with pytest.raises(InvalidInput):
        kernels.quantile_pick(v, -2.0, 2.0, 1.0, 1.0, 1.5)


def test_a_query_over_a_dask_backed_dataset_reads_it_chunk_by_chunk() -> None:
    import dask
    import xarray as xr

    from fednb.privacy import SecureNoise
    from fednb.protocol import Aggregation, DatasetCard, MockInfo, QuerySpec, VariableCard
    from fednb.runtime._query import run_query

    rng = np.random.default_rng(12)
    n = 2000
    ds = xr.Dataset(
        {"age": ("patient", rng.uniform(20, 90, n)), "x": (("patient", "f"), rng.normal(size=(n, 3)))}
    )
    card = DatasetCard(
        name="d",
        source="test",
        dims={"patient": n, "f": 3},
        example_dim="patient",
        num_examples=n,
        variables={
            "age": VariableCard(dims=["patient"], dtype="float64", bounds=(0.0, 100.0)),
            "x": VariableCard(dims=["patient", "f"], dtype="float64", bounds=(-1.0, 1.0)),
        },
        coords={},
        mock=MockInfo(method="provided-by-owner", note=""),
        created="2026-01-01T00:00:00Z",
    )
    spec = QuerySpec(
        aggregations=[
            Aggregation(op="sum", variable="x"),
            Aggregation(op="mean", variable="age"),
            Aggregation(op="histogram", variable="age", bins=7),
            Aggregation(op="quantile", variable="age", quantiles=[0.5]),
        ],
        noise_multiplier=1e-9,
        quantile_epsilon=10.0,
    )
    lazy = ds.chunk({"patient": 300})
    computed: list[int] = []

    class Count(dask.callbacks.Callback):  # type: ignore[misc]
        def _finish(self, dsk, state, errored):  # type: ignore[no-untyped-def]
            computed.append(1)

    with Count():
        got = run_query(spec, lazy, card, SecureNoise())
    assert len(computed) >= 7 * 3  # one computation per chunk of 300 patients, per statistic
    want = run_query(spec, ds, card, SecureNoise())
    # released on the noise grid: a step of at most the sensitivity (2) * 2^-10 / sqrt(3)
    np.testing.assert_allclose(got["0:sum:x"], np.clip(ds.x.values, -1, 1).sum(0), atol=2**-10)
    np.testing.assert_allclose(got["1:mean:age"], want["1:mean:age"], rtol=1e-9)
    np.testing.assert_allclose(
        got["2:histogram:age"], np.histogram(ds.age.values, bins=7, range=(0, 100))[0], atol=1e-6
    )
    assert abs(float(got["3:quantile:age"][0]) - float(np.median(ds.age.values))) < 2.0


# -- the CuPy kernels: array-module generic code, run here with xp = numpy --------------


def _has_gpu() -> bool:
    try:
        import cupy  # type: ignore[import-not-found]

        return bool(cupy.cuda.is_available())
    except Exception:
        return False


needs_gpu = pytest.mark.skipif(not _has_gpu(), reason="needs a GPU: cupy.cuda.is_available() is false "
                                                       "(or CuPy is not installed)")


@pytest.mark.parametrize("n", SIZES)
def test_the_cupy_kernels_code_matches_the_reference_with_numpy_as_xp(n: int) -> None:
    rng = np.random.default_rng(100 + n)
    x = rng.normal(size=(n, 400)) * rng.choice([1e-3, 1.0, 1e6], size=(n, 1))
    x[:, :10] = 7.0  # ties
    np.testing.assert_array_equal(_cupy.xp_coordinate_median(np, x), _reference.coordinate_median(x))
    for k in {0, n // 4, (n - 1) // 2}:
        if 2 * k < n:
            np.testing.assert_allclose(_cupy.xp_trimmed_mean(np, x, k), _reference.trimmed_mean(x, k),
                                       rtol=1e-9, atol=1e-9 * float(np.abs(x).max()))
    assert _cupy.xp_coordinate_median(np, x.astype(np.float32)).dtype == np.float64


def test_the_cupy_elementwise_kernels_match_the_reference_with_numpy_as_xp() -> None:
    rng = np.random.default_rng(21)
    x = np.concatenate([rng.normal(size=5000) * 3, [5.0, -5.0, 4.0, -4.0, 0.0, 1e-300]])
    bits = rng.integers(0, 2**32, size=x.size, dtype=np.uint32)
    bits[-6:] = [0, 2**32 - 1, 0, 2**32 - 1, 2**31, 0]
    for scale in (1.0, 2**20 / 4.0, (2**31 - 3) / 4.0):
        np.testing.assert_array_equal(_cupy.xp_stochastic_round(np, x, scale, 4.0, bits),
                                      _reference.stochastic_round(x, scale, 4.0, bits))
    u = rng.uniform(size=20_001)
    u[u == 0.0] = 0.5
    want = (np.empty(10_000), np.empty(10_000))
    _reference.box_muller(u, 2.5, *want)
    for got, w in zip(_cupy.xp_box_muller(np, u, 2.5), want, strict=True):
        np.testing.assert_array_equal(got, w)


def test_the_cupy_query_statistics_match_the_reference_with_numpy_as_xp() -> None:
    rng = np.random.default_rng(22)
    x = rng.normal(size=(3000, 4, 3)) * 5
    np.testing.assert_allclose(_cupy.xp_clipped_sum(np, x, -4.0, 6.0), _reference.clipped_sum(x, -4.0, 6.0),
                               rtol=1e-12)
    assert np.isnan(_cupy.xp_clipped_sum(np, np.array([1.0, np.nan]), -1.0, 1.0))  # as np.clip does
    y = np.concatenate([rng.normal(size=50_000) * 3, [3.0, -2.5, 1e9, -1e9, np.nan, np.inf, -np.inf],
                        np.linspace(-2.5, 3.0, 101), np.nextafter(np.linspace(-2.5, 3.0, 101), 9)])
    for bins in (1, 7, 10, 64, 1000):
        got = _cupy.xp_clipped_histogram(np, y, -2.5, 3.0, bins)
        np.testing.assert_array_equal(got, _reference.clipped_histogram(y, -2.5, 3.0, bins))
        assert got.dtype == np.int64
    strided = y[::3]  # not contiguous
    np.testing.assert_array_equal(_cupy.xp_clipped_histogram(np, strided, 0.0, 1.0, 5),
                                  _reference.clipped_histogram(strided, 0.0, 1.0, 5))


def test_the_cupy_backend_is_what_the_dispatch_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "backend", lambda: "cupy")
    assert kernels._module(200) is _cupy  # no size limit: CuPy sorts any N
    assert not hasattr(_cupy, "quantile_pick")  # the sequential draw stays on the CPU


@needs_gpu
@pytest.mark.parametrize("n", [1, 2, 5, 50, 130])
def test_the_cupy_kernels_on_the_gpu_match_the_reference(n: int) -> None:
    import cupy

    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 3000))
    np.testing.assert_allclose(_cupy.coordinate_median(x), _reference.coordinate_median(x), rtol=1e-12)
    np.testing.assert_allclose(_cupy.trimmed_mean(x, n // 4), _reference.trimmed_mean(x, n // 4),
                               rtol=1e-9, atol=1e-12)
    on_device = _cupy.coordinate_median(cupy.asarray(x))  # CuPy in, CuPy out: no copy back
    assert isinstance(on_device, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(on_device), _reference.coordinate_median(x), rtol=1e-12)


@needs_gpu
def test_the_cupy_elementwise_and_query_kernels_on_the_gpu_match_the_reference() -> None:
    rng = np.random.default_rng(23)
    x = rng.normal(size=100_000) * 3
    bits = rng.integers(0, 2**32, size=x.size, dtype=np.uint32)
    np.testing.assert_array_equal(_cupy.stochastic_round(x, 2**20, 4.0, bits),
                                  _reference.stochastic_round(x, 2**20, 4.0, bits))
    u = rng.uniform(0.01, 0.99, size=20_000)
    got, want = (np.empty(10_000), np.empty(10_000)), (np.empty(10_000), np.empty(10_000))
    _cupy.box_muller(u, 1.5, *got)
    _reference.box_muller(u, 1.5, *want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
    m = rng.normal(size=(5000, 4)) * 5
    np.testing.assert_allclose(_cupy.clipped_sum(m, -4.0, 6.0), _reference.clipped_sum(m, -4.0, 6.0),
                               rtol=1e-9)
    y = np.concatenate([x, [np.nan, 1e9], np.linspace(-2.5, 3.0, 23)])
    for bins in (1, 7, 50):
        np.testing.assert_array_equal(_cupy.clipped_histogram(y, -2.5, 3.0, bins),
                                      _reference.clipped_histogram(y, -2.5, 3.0, bins))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, "mixed"])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 8, 12, 13, 16])  # every last group: 8, 4, 2, 1
@pytest.mark.parametrize("size", [1, 2047, 2048, 5001])
def test_the_weighted_sum_matches_the_blas_reference(n: int, dtype: object, size: int) -> None:
    # one pass over every vector, in blocks of 2048 coordinates (sizes around a block and a
    # partial last block), float32 and float64 inputs in one call, either output dtype
    from fednb.kernels import _sum

    rng = np.random.default_rng(n * size)
    types = [dtype] * n if dtype != "mixed" else [(np.float32, np.float64)[i % 2] for i in range(n)]
    vecs = [rng.normal(size=size).astype(t) for t in types]
    weights = [float(w) for w in rng.integers(1, 300, size=n)]
    exact = sum(w * v.astype(np.float64) for w, v in zip(weights, vecs, strict=True))
    scale = float(np.abs(exact).max()) * n
    default = np.float32 if all(t == np.float32 for t in types) else np.float64
    assert kernels.weighted_sum(vecs, weights).dtype == default
    for out in (np.float32, np.float64):
        want = _reference.weighted_sum(vecs, weights, out)
        got, finite = _sum.weighted_sum(vecs, weights, np.dtype(out))
        assert finite and got.dtype == want.dtype == out
        # the kernel accumulates in float64: only the output's rounding is left
        np.testing.assert_allclose(got, exact.astype(out), rtol=0, atol=1e-13 * scale)
        tol = 1e-6 if out == np.float32 else 1e-13
        np.testing.assert_allclose(want, exact, rtol=0, atol=tol * scale)


@pytest.mark.parametrize("size", [1, 2047, 5001, 3 * 2048 + 5])
def test_the_weighted_sum_split_over_cores_is_the_one_thread_sum(
    size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # each coordinate is summed in the same order either way: the same bits; a non-finite
    # value in any range is reported
    from fednb.kernels import _sum

    rng = np.random.default_rng(size)
    vecs = [rng.normal(size=size).astype((np.float32, np.float64)[i % 2]) for i in range(11)]
    weights = [float(w) for w in rng.integers(1, 300, size=11)]
    alone, finite = _sum.weighted_sum(vecs, weights, np.dtype(np.float64))
    assert finite
    monkeypatch.setattr(_sum, "PARALLEL_MIN", 1)
    monkeypatch.setattr(_sum, "_threads", lambda: 3)
    for out in (np.float64, np.float32):
        split, finite = _sum.weighted_sum(vecs, weights, np.dtype(out))
        assert finite
        np.testing.assert_array_equal(split, alone.astype(out))
    vecs[4][-1] = np.nan  # in the last range
    split, finite = _sum.weighted_sum(vecs, weights, np.dtype(np.float64))
    assert not finite and np.isnan(split[-1]) and np.array_equal(split[:-1], alone[:-1])


@pytest.mark.parametrize("pool", ["busy", "shut down"])
def test_the_caller_sums_the_ranges_no_pool_thread_took(pool: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # a pool busy with other calls never starts these ranges (the caller takes them back), and
    # one shut down at interpreter exit refuses them (the caller sums them at once)
    from concurrent.futures import Future

    from fednb.kernels import _sum

    class Stuck:
        def submit(self, *_a: object) -> Future[bool]:
            if pool == "shut down":
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            return Future()  # never started

    monkeypatch.setattr(_sum, "PARALLEL_MIN", 1)
    monkeypatch.setattr(_sum, "_threads", lambda: 4)
    monkeypatch.setattr(_sum, "_pool", lambda: Stuck())
    vecs = [np.arange(5 * 2048, dtype=np.float64), np.ones(5 * 2048, np.float32)]
    total, finite = _sum.weighted_sum(vecs, [2.0, 1.0], np.dtype(np.float64))
    assert finite and np.array_equal(total, 2 * vecs[0] + 1)


def test_a_forked_child_sums_with_a_pool_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    from fednb.kernels import _sum

    monkeypatch.setattr(_sum, "PARALLEL_MIN", 1)
    monkeypatch.setattr(_sum, "_threads", lambda: 2)
    vecs = [np.ones(3 * 2048), np.full(3 * 2048, 2.0)]
    assert _sum.weighted_sum(vecs, [1.0, 1.0], np.dtype(np.float64))[0].tolist() == [3.0] * 6144  # a pool now

    def child() -> None:  # the parent's pool threads do not exist here: a new pool, no hang
        total, finite = _sum.weighted_sum(vecs, [1.0, 1.0], np.dtype(np.float64))
        os._exit(0 if finite and total.tolist() == [3.0] * 6144 else 3)

    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    proc.join(60)
    if proc.is_alive():
        proc.kill()
    assert proc.exitcode == 0


@pytest.mark.parametrize("where", [0, 2047, 2048, 5000])
def test_the_weighted_sum_says_whether_its_values_are_finite(where: int) -> None:
    from fednb.kernels import _sum

    ok = [np.ones(5001, np.float32), np.ones(5001)]
    for bad in (np.nan, np.inf, -np.inf):
        vec = np.ones(5001, np.float32)
        vec[where] = bad
        total, finite = _sum.weighted_sum([*ok, vec], [1.0, 2.0, 0.5], np.dtype(np.float64))
        assert not finite and not np.isfinite(total[where])
        assert np.isfinite(np.delete(total, where)).all()
        strided = np.repeat(vec, 2)[::2]  # not contiguous: the reference and its scan
        assert not strided.flags.c_contiguous
        assert not kernels.weighted_sum_checked([*ok, strided], [1.0, 2.0, 0.5])[1]
    # a finite sum too large for a float32 output is not finite there, but is in float64
    big = np.full(5001, 3e38, np.float32)
    assert not _sum.weighted_sum([big, big], [1.0, 1.0], np.dtype(np.float32))[1]
    assert _sum.weighted_sum([big, big], [1.0, 1.0], np.dtype(np.float64))[1]


def test_the_weighted_sum_checks_its_input_and_widens_mixed_dtypes() -> None:
    with pytest.raises(InvalidInput, match="as many weights"):
        kernels.weighted_sum([np.ones(3)], [1.0, 2.0])
    with pytest.raises(InvalidInput, match="one length"):
        kernels.weighted_sum([np.ones(3), np.ones(4)], [1.0, 2.0])
    with pytest.raises(InvalidInput, match="float32 or float64"):
        kernels.weighted_sum([np.ones(3)], [1.0], dtype=np.int32)
    mixed = kernels.weighted_sum([np.ones(3, np.float32), np.ones(3)], [1.0, 2.0])
    assert mixed.dtype == np.float64 and mixed.tolist() == [3.0, 3.0, 3.0]
    strided, finite = kernels.weighted_sum_checked([np.arange(6.0)[::2]], [2.0])  # the reference
    assert finite and strided.tolist() == [0.0, 4.0, 8.0]
    ints = kernels.weighted_sum([np.arange(3)], [2.0], dtype=np.float32)  # integers: the reference
    assert ints.dtype == np.float32 and ints.tolist() == [0.0, 2.0, 4.0]
    swapped = kernels.weighted_sum([np.arange(3.0).astype(">f8")], [2.0])  # big-endian: the reference
    assert swapped.tolist() == [0.0, 2.0, 4.0]
    # the kernel reads raw addresses: it refuses whatever it could misread
    from fednb.kernels import _sum

    f64 = np.dtype(np.float64)
    for bad in ([np.arange(6.0)[::2]], [np.arange(3.0).astype(">f8")], [np.arange(3)], [np.ones((2, 2))],
                [np.ones(3), np.ones(4)], [np.frombuffer(b"\0" * 25, np.float64, 3, offset=1)]):
        with pytest.raises(ValueError, match="kernel takes"):
            _sum.weighted_sum(bad, [1.0] * len(bad), f64)
    with pytest.raises(ValueError, match="a weight each"):
        _sum.weighted_sum([np.ones(3)], [1.0, 2.0], f64)


def test_all_finite_is_exact_also_when_the_sum_of_squares_overflows(monkeypatch: pytest.MonkeyPatch) -> None:
    from fednb.kernels import _blas

    monkeypatch.setattr(_blas, "_DOT_FROM", 1)  # the dot product's path at every size
    assert kernels.all_finite(np.ones((3, 4), np.float32))
    assert kernels.all_finite(np.full(10, 3e38, np.float32))  # squares overflow; values finite
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones(1000, np.float32)
        x[617] = bad
        assert not kernels.all_finite(x)
        assert not kernels.all_finite(x.astype(np.float64))
    assert not kernels.all_finite(np.array([[1.0, np.nan]]).T)  # not contiguous: the exact scan
    assert kernels.all_finite(np.zeros(0))
    big = np.ones(1 << 20, np.float32)
    monkeypatch.setattr(_blas, "_DOT_FROM", 1 << 20)
    assert kernels.all_finite(big)
    big[-1] = np.nan
    assert not kernels.all_finite(big)



def test_all_finite_off_the_main_thread_leaves_the_blas_thread_count_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a virtual hospital's output policy on a thread (simulate's workers) limited BLAS's
    # process-wide thread count: threadpoolctl then gives that thread control of it, and the
    # driver's own limits do nothing while it lives
    import threading

    from fednb.kernels import _blas

    calls: list[str] = []
    real = _blas.one_blas_thread
    monkeypatch.setattr(_blas, "one_blas_thread",
                        lambda: calls.append(threading.current_thread().name) or real())
    x = np.ones(1 << 18)
    bad = x.copy()
    bad[-1] = np.nan
    out: dict[str, bool] = {}
    hospital = threading.Thread(name="hospital", target=lambda: out.update(
        ok=kernels.all_finite(x), bad=kernels.all_finite(bad)))
    hospital.start()
    hospital.join(10)
    assert out == {"ok": True, "bad": False} and calls == []
    assert kernels.all_finite(x) and not kernels.all_finite(bad)
    assert calls == [threading.main_thread().name] * 2  # the BLAS dot product, on one thread
    # while hospitals run on threads, the main thread's checks leave the limit alone too
    with kernels.other_threads_in_blas():
        assert kernels.all_finite(x) and not kernels.all_finite(bad)
    assert calls == [threading.main_thread().name] * 2
    assert kernels.all_finite(x) and calls == [threading.main_thread().name] * 3  # and after it


def test_parallel_launches_take_turns_on_numbas_workqueue_layer_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    from fednb.kernels import _launch

    inside, most = [0], [0]
    count = threading.Lock()

    @_launch.serialised_on_workqueue
    def launch() -> None:
        with count:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.05)
        with count:
            inside[0] -= 1

    def run_at_once(fn: object, n: int) -> None:
        threads = [threading.Thread(target=fn) for _ in range(n)]  # type: ignore[arg-type]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)

    monkeypatch.setattr(_launch, "_threadsafe", False)  # the workqueue
    run_at_once(launch, 4)
    assert most[0] == 1
    # not known yet: turns until the first launch shows the layer, then at once where safe
    monkeypatch.setattr(_launch, "_threadsafe", None)
    monkeypatch.setattr(_launch, "_layer_is_threadsafe", lambda: True)
    launch()
    assert _launch._threadsafe is True
    met = threading.Barrier(2, timeout=5)
    broken: list[bool] = []

    @_launch.serialised_on_workqueue
    def meet() -> None:
        try:
            met.wait()
        except threading.BrokenBarrierError:
            broken.append(True)

    run_at_once(meet, 2)
    assert broken == []
