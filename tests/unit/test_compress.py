"""Update compression: fp16 and unbiased int8 with stochastic rounding."""

from __future__ import annotations

import numpy as np

from fednb.privacy import SecureNoise
from fednb.protocol import compress, decompress


def test_fp16_round_trip() -> None:
    x = {"w": np.linspace(-3, 3, 1000), "n": np.arange(3)}
    sent, meta = compress(x, "fp16", SecureNoise().uniform)
    assert sent["w"].dtype == np.float16 and sent["n"].dtype == x["n"].dtype
    back = decompress(sent, meta)
    assert back["w"].dtype == np.float64
    np.testing.assert_allclose(back["w"], x["w"], atol=3e-3)


def test_int8_is_unbiased_and_bounded() -> None:
    noise = SecureNoise()
    x = {"w": np.random.default_rng(0).normal(size=500).astype(np.float32)}
    sent, meta = compress(x, "int8", noise.uniform)
    assert sent["w"].dtype == np.int8 and sent["w"].nbytes * 4 == x["w"].nbytes
    scale = meta["scales"]["w"]
    one = decompress(sent, meta)["w"]
    assert one.dtype == np.float32 and np.abs(one - x["w"]).max() <= scale * 1.0001
    mean = np.mean([decompress(*compress(x, "int8", noise.uniform))["w"] for _ in range(400)], axis=0)
    assert np.abs(mean - x["w"]).max() < 6 * scale / np.sqrt(400) + 1e-6  # no systematic error


def test_none_and_zeros() -> None:
    x = {"w": np.zeros(4)}
    assert compress(x, "none", SecureNoise().uniform) == (x, {})
    sent, meta = compress(x, "int8", SecureNoise().uniform)
    np.testing.assert_array_equal(decompress(sent, meta)["w"], 0)
