"""The CUDA kernels under Numba's simulator: its own pytest process (``make test`` runs it
with NUMBA_ENABLE_CUDASIM=1 and FEDNB_BACKEND=numba-cuda-sim)."""

from __future__ import annotations

import numpy as np
import pytest

from fednb import kernels
from fednb.kernels import _cuda, _reference


def test_this_process_runs_the_simulated_cuda_backend() -> None:
    assert kernels.backend() == "numba-cuda-sim"


@pytest.mark.parametrize("n", [1, 2, 5, 8, 33])
def test_cuda_kernels_match_the_reference(n: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 300))
    x[:, :5] = -2.0
    np.testing.assert_allclose(kernels.coordinate_median(x), _reference.coordinate_median(x), rtol=1e-12)
    np.testing.assert_allclose(
        _cuda.trimmed_mean(x, n // 4), _reference.trimmed_mean(x, n // 4), rtol=1e-9, atol=1e-12
    )


def test_rounds_larger_than_a_thread_can_sort_go_to_the_cpu() -> None:
    x = np.random.default_rng(0).normal(size=(_cuda.MAX_N + 3, 50))
    np.testing.assert_allclose(kernels.coordinate_median(x), _reference.coordinate_median(x), rtol=1e-12)


def test_cuda_stochastic_rounding_matches_the_reference() -> None:
    rng = np.random.default_rng(9)
    x = np.concatenate([rng.normal(size=500) * 3, [5.0, -5.0]])
    bits = rng.integers(0, 2**32, size=x.size, dtype=np.uint32)
    np.testing.assert_array_equal(
        _cuda.stochastic_round(x, 2**20, 4.0, bits), _reference.stochastic_round(x, 2**20, 4.0, bits)
    )


def test_cuda_box_muller_matches_the_reference() -> None:
    u = np.random.default_rng(10).uniform(0.01, 0.99, size=600)
    got, want = (np.empty(300), np.empty(300)), (np.empty(300), np.empty(300))
    _cuda.box_muller(u, 1.5, *got)
    _reference.box_muller(u, 1.5, *want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-12)


def test_cuda_query_statistics_match_the_reference() -> None:
    rng = np.random.default_rng(11)
    x = rng.normal(size=(300, 4, 2)) * 5
    np.testing.assert_allclose(
        kernels.clipped_sum(x, -4.0, 6.0), _reference.clipped_sum(x, -4.0, 6.0), rtol=1e-12
    )
    y = np.concatenate([rng.normal(size=600) * 3, [3.0, -2.5, 1e9, np.nan], np.linspace(-2.5, 3.0, 23)])
    for bins in (1, 7, 10):
        np.testing.assert_array_equal(
            kernels.clipped_histogram(y, -2.5, 3.0, bins), _reference.clipped_histogram(y, -2.5, 3.0, bins)
        )
    v = np.sort(np.clip(rng.normal(size=51), -2, 2))
    assert kernels.quantile_pick(v, -2.0, 2.0, 25.0, 1.0, 0.3) == _reference.quantile_pick(
        v, -2.0, 2.0, 25.0, 1.0, 0.3
    )


def test_cuda_launches_from_two_threads_at_once_give_each_its_own_result() -> None:
    # the simulator swaps fake cuda modules into a kernel's globals for each launch: two
    # launches at once (a round's hospitals on threads) read each other's thread indices
    import threading

    rng = np.random.default_rng(3)
    inputs = [rng.normal(size=300) * 3 for _ in range(2)]
    bits = [rng.integers(0, 2**32, size=300, dtype=np.uint32) for _ in range(2)]
    want = [_reference.stochastic_round(x, 2**20, 4.0, b) for x, b in zip(inputs, bits, strict=True)]
    wrong: list[str] = []
    start = threading.Barrier(2, timeout=10)

    def launch(i: int) -> None:
        start.wait()
        for _ in range(5):
            try:
                got = _cuda.stochastic_round(inputs[i], 2**20, 4.0, bits[i])
            except Exception as exc:  # the simulator's own state, broken by the other launch
                wrong.append(f"{i}: {type(exc).__name__}")
                return
            if not np.array_equal(got, want[i]):
                wrong.append(f"{i}: wrong values")

    threads = [threading.Thread(target=launch, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert wrong == []
