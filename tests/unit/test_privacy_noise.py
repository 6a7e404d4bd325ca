"""fednb.privacy noise: CSPRNG-backed samplers, the grid release, clipping and the Gaussian mechanism.

The noise is unseeded by design, so these checks are statistical: thresholds are set
at 5 standard errors (or p > 1e-3 for goodness-of-fit tests).
"""

from __future__ import annotations

import itertools
import math
import os

import numpy as np
import pytest
from scipy import stats

from fednb.errors import InvalidInput
from fednb.privacy import GRID_SLACK, SecureNoise, clip_l2, gaussian_mechanism, grid_gaussian

N = 200_000


@pytest.fixture(scope="module")
def noise() -> SecureNoise:
    return SecureNoise()


def test_gaussian_statistics(noise: SecureNoise) -> None:
    x = noise.gaussian(N, sigma=3.0)
    assert x.shape == (N,) and x.dtype == np.float64
    assert abs(x.mean()) < 5 * 3.0 / math.sqrt(N)
    assert x.std() == pytest.approx(3.0, rel=0.01)
    assert stats.kstest(x, stats.norm(loc=0.0, scale=3.0).cdf).pvalue > 1e-3
    assert noise.gaussian((4, 5, 6), 1.0).shape == (4, 5, 6)
    assert noise.gaussian(7, 1.0).shape == (7,)  # odd sizes
    assert noise.gaussian(0, 1.0).size == 0


def test_laplace_statistics(noise: SecureNoise) -> None:
    b = 2.0
    x = noise.laplace(N, scale=b)
    assert abs(x.mean()) < 5 * math.sqrt(2) * b / math.sqrt(N)
    assert x.std() == pytest.approx(math.sqrt(2) * b, rel=0.01)
    assert stats.kstest(x, stats.laplace(loc=0.0, scale=b).cdf).pvalue > 1e-3
    assert np.isfinite(x).all()


def test_discrete_gaussian_statistics(noise: SecureNoise) -> None:
    sigma = 3.0
    x = noise.discrete_gaussian(N, sigma)
    assert x.dtype == np.int64
    support = np.arange(-60, 61)
    pmf = np.exp(-(support**2) / (2 * sigma**2))
    pmf /= pmf.sum()
    variance = float((pmf * support**2).sum())
    assert abs(x.mean()) < 5 * math.sqrt(variance / N)
    assert x.var() == pytest.approx(variance, rel=0.02)
    inner = np.arange(-9, 10)  # expected counts of at least ~ 2,000 each; tails pooled
    observed = np.array([(x == k).sum() for k in inner] + [(np.abs(x) > 9).sum()])
    expected = np.concatenate([pmf[np.isin(support, inner)], [pmf[np.abs(support) > 9].sum()]]) * N
    assert stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue > 1e-3


def test_uniforms_lie_strictly_inside_the_unit_interval(noise: SecureNoise) -> None:
    u = noise.uniform(1_000_000)
    assert u.min() > 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / u.size)
    assert np.array_equal(u * 2**53, np.floor(u * 2**53))  # 53-bit grid


def test_an_all_zero_draw_is_drawn_again() -> None:
    class ZerosFirst(SecureNoise):
        """A bit source whose first draw is all zeros, the one value uniform() must reject."""

        calls = 0

        def random_bytes(self, n: int) -> bytes:
            self.calls += 1
            return bytes(n) if self.calls == 1 else super().random_bytes(n)

    u = ZerosFirst().uniform(5)
    assert (u > 0).all() and (u < 1).all()


def test_two_instances_give_different_streams() -> None:
    a, b = SecureNoise(), SecureNoise()
    assert a.random_bytes(32) != b.random_bytes(32)
    assert not np.array_equal(a.gaussian(100, 1.0), b.gaussian(100, 1.0))


def test_a_forked_child_does_not_repeat_its_parents_noise() -> None:
    source = SecureNoise()
    source.random_bytes(16)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: send what it would draw next, then leave without running pytest's teardown
        os.write(write_end, source.random_bytes(32))
        os._exit(0)
    os.close(write_end)
    child = os.read(read_end, 32)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert len(child) == 32 and child != source.random_bytes(32)


def test_numpy_random_is_never_used(monkeypatch: pytest.MonkeyPatch) -> None:
    np.random.seed(0)  # a job seeding NumPy's global generator must change nothing either
    first = SecureNoise().gaussian(50, 1.0)
    np.random.seed(0)
    second = SecureNoise().gaussian(50, 1.0)
    assert not np.array_equal(first, second)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("numpy.random was used for DP noise")

    names = ("normal", "standard_normal", "laplace", "uniform", "random", "random_sample", "rand", "randn",
             "randint", "bytes", "seed", "default_rng", "Generator", "RandomState", "PCG64", "MT19937")
    for name in names:
        monkeypatch.setattr(np.random, name, refuse)
    fresh = SecureNoise()
    assert fresh.gaussian(1000, 2.0).std() > 0
    assert fresh.laplace(1000, 1.0).std() > 0
    assert fresh.discrete_gaussian(1000, 2.0).std() > 0
    out = gaussian_mechanism({"w": np.ones(10)}, clip=1.0, noise_multiplier=1.0, noise=fresh)
    assert out["w"].shape == (10,)


def test_samplers_reject_bad_arguments(noise: SecureNoise) -> None:
    with pytest.raises(InvalidInput, match="sigma"):
        noise.gaussian(3, -1.0)
    with pytest.raises(InvalidInput, match="scale"):
        noise.laplace(3, float("nan"))
    with pytest.raises(InvalidInput, match="sigma"):
        noise.discrete_gaussian(3, 0.0)
    with pytest.raises(InvalidInput, match="shape"):
        noise.gaussian((2, -1), 1.0)


def _norm(tensors: dict[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(np.square(t, dtype=np.float64))) for t in tensors.values()))


def test_clip_l2_bounds_the_norm_of_the_whole_update() -> None:
    update = {"w": np.full((3, 4), 2.0), "b": np.array([1.0, -3.0])}
    original = _norm(update)
    clipped, norm = clip_l2(update, clip=1.5)
    assert norm == pytest.approx(original)
    assert _norm(clipped) <= 1.5 and _norm(clipped) == pytest.approx(1.5, rel=1e-9)
    ratio = clipped["w"][0, 0] / 2.0  # one scale for every tensor: the direction is kept
    np.testing.assert_allclose(clipped["b"], update["b"] * ratio)
    np.testing.assert_allclose(update["w"], 2.0)  # the input is not modified

    f32 = {"w": (np.arange(1000, dtype=np.float32) / 7)}
    c32, _ = clip_l2(f32, clip=1.0)
    assert c32["w"].dtype == np.float32 and _norm(c32) <= 1.0


def test_clip_l2_keeps_small_updates_unchanged() -> None:
    update = {"w": np.array([0.3, -0.4]), "n": np.array([0, 0], dtype=np.int32)}
    clipped, norm = clip_l2(update, clip=1.0)
    assert norm == pytest.approx(0.5)
    assert np.array_equal(clipped["w"], update["w"]) and clipped["w"] is not update["w"]
    assert clipped["n"].dtype == np.float64


def test_clip_l2_rejects_bad_input() -> None:
    with pytest.raises(InvalidInput, match="NaN"):
        clip_l2({"w": np.array([1.0, np.nan])}, 1.0)
    with pytest.raises(InvalidInput, match="clip"):
        clip_l2({"w": np.ones(2)}, 0.0)
    with pytest.raises(InvalidInput, match="dtype"):
        clip_l2({"w": np.array(["a"])}, 1.0)


def test_gaussian_mechanism_noise_matches_z_times_clip() -> None:
    source = SecureNoise()
    update = {"w": np.full(40, 1.0), "b": np.full(10, -1.0)}  # norm sqrt(50) > clip
    clip, z, releases = 0.5, 1.3, 4000
    clipped, _ = clip_l2(update, clip)
    residuals = np.concatenate([
        np.concatenate([out[k] - clipped[k] for k in ("w", "b")])
        for out in (gaussian_mechanism(update, clip, z, source) for _ in range(releases))
    ])
    assert residuals.size == 50 * releases
    assert residuals.std() == pytest.approx(z * clip, rel=0.02)
    assert abs(residuals.mean()) < 5 * z * clip / math.sqrt(residuals.size)
    with pytest.raises(InvalidInput, match="noise_multiplier"):
        gaussian_mechanism(update, clip, 0.0, source)


class Recording(SecureNoise):
    """A source that keeps every batch of uniforms it hands out."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[np.ndarray] = []

    def uniform(self, n: int) -> np.ndarray:
        u = super().uniform(n)
        self.batches.append(u.copy())
        return u


def test_gaussian_releases_one_half_of_each_box_muller_pair() -> None:
    # Both halves (r cos t, r sin t) of one pair give away r and t, hence the uniforms: each
    # sample must come from its own two uniforms, as the cosine half of its own pair
    source, n, sigma = Recording(), 70_001, 2.5  # more than one chunk, odd
    x = source.gaussian(n, sigma)
    u = np.concatenate(source.batches)
    assert u.size == 2 * n  # two uniforms per released sample
    offsets = np.cumsum([0] + [b.size for b in source.batches])
    r, theta = [], []
    for start, end in itertools.pairwise(offsets):
        half = (end - start) // 2
        r.append(sigma * np.sqrt(-2.0 * np.log(u[start : start + half])))
        theta.append(u[start + half : end] * (2.0 * np.pi))
    radius, angle = np.concatenate(r), np.concatenate(theta)
    # each value is the cosine half of its own pair: no two values share a pair
    np.testing.assert_allclose(x, radius * np.cos(angle), rtol=1e-9, atol=1e-12)


def dg_pmf(sigma: float, support: np.ndarray) -> np.ndarray:
    pmf = np.exp(-(support.astype(np.float64) ** 2) / (2 * sigma**2))
    return pmf / pmf.sum()


@pytest.mark.parametrize("sigma", [0.5, 0.9])
def test_discrete_gaussian_at_small_sigma_matches_its_exact_law(noise: SecureNoise, sigma: float) -> None:
    x = noise.discrete_gaussian(N, sigma)
    support = np.arange(-12, 13)
    pmf = dg_pmf(sigma, support)
    variance = float((pmf * support**2).sum())  # 0.21 at sigma 0.5: far from sigma^2
    assert abs(x.mean()) < 5 * math.sqrt(variance / N)
    assert x.var() == pytest.approx(variance, rel=0.03)
    inner = np.arange(-2, 3)
    observed = np.array([(x == k).sum() for k in inner] + [(np.abs(x) > 2).sum()])
    expected = np.concatenate([pmf[np.isin(support, inner)], [pmf[np.abs(support) > 2].sum()]]) * N
    assert stats.chisquare(observed, expected).pvalue > 1e-3


@pytest.mark.parametrize("sigma", [1e3, 1e6, 1e9, 3e13])
def test_discrete_gaussian_at_large_sigma_keeps_its_mean_and_variance(noise: SecureNoise,
                                                                     sigma: float) -> None:
    x = noise.discrete_gaussian(N, sigma)
    assert x.dtype == np.int64
    assert abs(x.mean()) < 5 * sigma / math.sqrt(N)
    assert x.astype(np.float64).std() == pytest.approx(sigma, rel=0.01)
    assert stats.kstest(x / sigma, stats.norm().cdf).pvalue > 1e-3


def test_discrete_gaussian_refuses_a_sigma_its_integers_cannot_hold(noise: SecureNoise) -> None:
    assert noise.discrete_gaussian(1000, 2.0**47).std() > 0  # the largest allowed: no overflow, no hang
    with pytest.raises(InvalidInput, match="2\\^47"):
        noise.discrete_gaussian(3, 1e160)  # sigma^2 overflows float64: once a silent endless loop
    assert (noise.discrete_gaussian(1000, 1e-3) == 0).all()


def grid_step(sensitivity: float, d: int) -> float:
    """The grid of a release, computed apart from the code under test."""
    return 2.0 ** math.floor(math.log2(sensitivity * 2.0**-10 / math.sqrt(d)))


class Silent(SecureNoise):
    """Zero noise: what is left of a grid release is its rounding."""

    def discrete_gaussian(self, shape: int | tuple[int, ...], sigma: float) -> np.ndarray:
        return np.zeros(shape, dtype=np.int64)


def test_grid_gaussian_releases_multiples_of_its_grid_step(noise: SecureNoise) -> None:
    x = {"w": np.linspace(-0.7, 0.7, 12).reshape(3, 4), "b": np.array([0.1, -0.3], np.float32),
         "n": np.array([1, 2, 3]), "empty": np.zeros((0, 5))}
    out = grid_gaussian(x, sensitivity=2.0, sigma=1.5, noise=noise)
    gamma = grid_step(2.0, 17)
    assert gamma == 2.0**-12
    assert list(out) == list(x) and all(out[k].shape == x[k].shape for k in x)
    assert all(v.dtype == np.float64 for v in out.values())
    for v in out.values():
        k = v / gamma
        assert np.array_equal(k, np.rint(k)) and (np.abs(k) < 2**53).all()
    assert grid_gaussian({}, 1.0, 1.0, noise) == {}
    assert grid_gaussian({"e": np.zeros(0)}, 1.0, 1.0, noise) == {}  # d = 0: nothing to release
    empty = gaussian_mechanism({"e": np.zeros((0, 3), np.float32)}, 1.0, 1.0, noise)["e"]
    assert empty.shape == (0, 3) and empty.dtype == np.float32


def test_grid_gaussian_moves_a_value_by_at_most_half_a_step_before_its_noise() -> None:
    rng = np.random.default_rng(7)
    for sens, d in ((2.0, 1), (0.37, 1000), (1e6, 33), (1e-9, 10)):
        x = rng.uniform(-sens, sens, d)
        out = grid_gaussian({"x": x}, sens, sens, Silent())["x"]
        gamma = grid_step(sens, d)
        assert (np.abs(out - x) <= gamma / 2).all()
        # hence the slack in the accounted sensitivity: each input moves <= sens * 2^-11
        assert np.linalg.norm(out - x) <= sens * (GRID_SLACK - 1) / 2


def test_grid_gaussian_noise_has_the_asked_mean_and_variance(noise: SecureNoise) -> None:
    sens, sigma, d = 2.0, 0.8, 50
    x = np.linspace(-0.2, 0.2, d)
    base = grid_gaussian({"x": x}, sens, sigma, Silent())["x"]
    residuals = np.concatenate([grid_gaussian({"x": x}, sens, sigma, noise)["x"] - base for _ in range(2000)])
    assert abs(residuals.mean()) < 5 * sigma / math.sqrt(residuals.size)
    assert residuals.std() == pytest.approx(sigma, rel=0.02)


def test_grid_gaussian_refuses_non_finite_and_non_numeric_values(noise: SecureNoise) -> None:
    for bad in (np.array([1.0, np.nan]), np.array([np.inf]), np.array([1.0, -np.inf], np.float32)):
        with pytest.raises(InvalidInput, match="NaN or infinite"):
            grid_gaussian({"w": bad}, 1.0, 1.0, noise)
    with pytest.raises(InvalidInput, match="non-numeric"):
        grid_gaussian({"w": np.array([1 + 2j])}, 1.0, 1.0, noise)
    with pytest.raises(InvalidInput, match="sensitivity"):
        grid_gaussian({"w": np.ones(2)}, 0.0, 1.0, noise)
    with pytest.raises(InvalidInput, match="sigma"):
        grid_gaussian({"w": np.ones(2)}, 1.0, float("nan"), noise)


def test_grid_gaussian_keeps_huge_values_finite_and_on_a_grid(noise: SecureNoise) -> None:
    # far beyond any clipped input: clamped to 2^52 steps (non-expansive), never refused
    out = grid_gaussian({"x": np.array([1e300, -1e300, 0.5])}, 1.0, 1.0, noise)["x"]
    gamma = grid_step(1.0, 3)
    assert np.isfinite(out).all() and np.array_equal(out / gamma, np.rint(out / gamma))
    assert abs(out[0]) <= 2.0**52 * gamma * (1 + 1e-9) + 20 * gamma * 2**10


def test_clip_l2_clips_a_finite_update_whose_squares_overflow() -> None:
    clipped, norm = clip_l2({"w": np.array([1e200, -1e200, 3.0])}, clip=1.0)
    assert norm == pytest.approx(math.sqrt(2) * 1e200)
    assert _norm(clipped) <= 1.0 and clipped["w"][0] == pytest.approx(1 / math.sqrt(2))


def test_gaussian_mechanism_releases_on_the_grid_of_twice_the_clip(noise: SecureNoise) -> None:
    update = {"w": np.full(40, 1.0), "b": np.full(10, -1.0, np.float32)}
    out = gaussian_mechanism(update, 0.5, 2.0, noise)
    assert out["w"].dtype == np.float64 and out["b"].dtype == np.float32
    gamma = grid_step(2 * 0.5, 50)
    for v in out.values():
        k = v.astype(np.float64) / gamma
        assert np.array_equal(k, np.rint(k))
