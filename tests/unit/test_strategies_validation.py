"""fednb.strategies: argument checks, composition refusals, flat layouts and the public surface."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import fednb.strategies as S
from fednb.errors import InvalidInput
from fednb.strategies import (
    ClientUpdate,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedBuff,
    FedProx,
    FedYogi,
    Krum,
    Median,
    RoundConfig,
    Strategy,
    TrimmedMean,
    compose_check,
    flatten,
    unflatten,
)


def test_exports_are_pinned_and_sorted() -> None:
    assert S.__all__ == sorted(S.__all__)
    assert set(S.__all__) == {
        "ClientUpdate", "FedAdagrad", "FedAdam", "FedAdamW", "FedAvg", "FedBuff", "FedProx", "FedYogi",
        "Krum", "Layout", "MeanStrategy", "Median", "ParamValue", "RoundConfig", "RoundUpdates",
        "StalenessFunction", "StateDict", "Strategy", "TrimmedMean", "admit", "compose_check",
        "coordinate_median", "flatten", "krum_scores",
        "pairwise_sq_distances", "trimmed_mean", "unflatten", "weighted_mean",
    }


def test_a_leaf_package_loads_no_other_fednb_package() -> None:
    code = "import sys, fednb.strategies; print(sorted(m for m in sys.modules if m.startswith('fednb')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = {m.split(".")[1] for m in eval(out) if "." in m}
    assert loaded <= {"errors", "typing", "strategies", "kernels"}, loaded


BAD_ARGUMENTS: list[tuple[Callable[..., Strategy], dict[str, Any], str]] = [
    (FedProx, {"mu": -0.1}, "mu"),
    (FedProx, {"mu": float("nan")}, "mu"),
    (FedProx, {"mu": "0.1"}, "mu"),
    (FedAdam, {"eta": 0.0}, "eta"),
    (FedAdam, {"beta1": 1.0}, "beta1"),
    (FedYogi, {"beta2": -0.5}, "beta2"),
    (FedYogi, {"tau": 0.0}, "tau"),
    (FedAdagrad, {"eta": float("inf")}, "eta"),
    (TrimmedMean, {"beta": 0.5}, "beta"),
    (TrimmedMean, {"beta": 0.0}, "beta"),
    (Krum, {"f": -1}, "f"),
    (Krum, {"f": 1.5}, "f"),
    (Krum, {"m": 0}, "m"),
    (Krum, {"m": True}, "m"),
    (FedBuff, {"buffer_size": 0}, "buffer_size"),
    (FedBuff, {"server_lr": -1.0}, "server_lr"),
    (FedBuff, {"staleness": "exponential"}, "staleness"),
    (FedBuff, {"a": -0.5}, "a"),
    (FedBuff, {"b": -2}, "b"),
    (FedAvg, {"fraction": 0.0}, "fraction"),
    (Median, {"fraction": 1.5}, "fraction"),
    (FedAvg, {"fraction": True}, "fraction"),
]


@pytest.mark.parametrize(("cls", "kwargs", "name"), BAD_ARGUMENTS, ids=lambda x: repr(x)[:30])
def test_constructors_refuse_bad_arguments(
    cls: Callable[..., Strategy], kwargs: dict[str, Any], name: str
) -> None:
    with pytest.raises(InvalidInput) as err:
        cls(**kwargs)
    assert name in err.value.message and repr(kwargs[name]) in err.value.message


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"vector": np.zeros((2, 2))}, "flat"),
        ({"vector": np.array(["a"])}, "real numbers"),
        ({"num_examples": 0}, "num_examples"),
        ({"num_examples": 2.5}, "num_examples"),
        ({"staleness": -1}, "staleness"),
        ({"domain": 3}, "domain"),
        ({"metrics": {"loss": "low"}}, "metrics"),
    ],
)
def test_client_update_validates(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"vector": np.zeros(3), "num_examples": 10, "domain": "a"} | kwargs
    with pytest.raises(InvalidInput, match=match):
        ClientUpdate(**args)


def test_client_update_keeps_float32_and_widens_other_dtypes() -> None:
    v32 = np.arange(3, dtype=np.float32)
    u = ClientUpdate(v32, 4, "a", metrics={"loss": 0.5})
    assert u.vector is v32 and u.staleness == 0  # no copy on the way into a sum
    assert ClientUpdate(np.arange(3), 4, "a").vector.dtype == np.float64
    assert ClientUpdate(np.arange(3, dtype=np.float16), 4, "a").vector.dtype == np.float64
    with pytest.raises(InvalidInput, match="fraction"):
        RoundConfig({}, fraction=0.0)
    # values are admitted per round (fednb.strategies.admit), not scanned here
    inf = ClientUpdate(np.array([1.0, np.inf]), 4, "a")
    assert S.admit([inf])[1] == [inf]


def test_trimmed_mean_and_krum_refuse_rounds_they_cannot_defend() -> None:
    ups = [ClientUpdate(np.full(3, float(i)), 10, f"h{i}") for i in range(4)]
    with pytest.raises(InvalidInput, match="trims nothing from 4"):
        TrimmedMean(beta=0.2).aggregate(np.zeros(3), ups)
    with pytest.raises(InvalidInput, match="more than 2f \\+ 2 = 4 updates"):
        Krum(f=1).aggregate(np.zeros(3), ups)
    five = [*ups, ClientUpdate(np.zeros(3), 10, "h4")]
    with pytest.raises(InvalidInput, match="N - f = 4"):
        Krum(f=1, m=5).aggregate(np.zeros(3), five)


def test_aggregate_sum_and_state_checks() -> None:
    with pytest.raises(InvalidInput, match="total_weight"):
        FedAvg().aggregate_sum(np.zeros(3), np.ones(3), 0.0)
    with pytest.raises(InvalidInput, match="total_examples"):
        FedBuff().aggregate_sum(np.zeros(3), np.ones(3), 1.0, total_examples=-1.0)
    with pytest.raises(InvalidInput, match="weighted sum has 2"):
        FedAvg().aggregate_sum(np.zeros(3), np.ones(2), 1.0)
    with pytest.raises(InvalidInput, match="keeps no state"):
        Median().load_state_dict({"m": np.zeros(3)})
    with pytest.raises(InvalidInput, match="steps"):
        FedAdam().load_state_dict({"m": np.zeros(3)})
    with pytest.raises(InvalidInput, match="v >= 0"):
        FedYogi().load_state_dict({"steps": 1, "m": np.zeros(3), "v": -np.ones(3)})
    adam = FedAdam()
    adam.aggregate(np.zeros(3), [ClientUpdate(np.ones(3), 1, "a")])
    with pytest.raises(InvalidInput, match="state for 3 parameters"):
        adam.aggregate(np.zeros(4), [ClientUpdate(np.ones(4), 1, "a")])


# --- composition (DESIGN.md, "Federated training") ---------------------------------------

FAMILY = [FedAvg(), FedProx(mu=0.01), FedAdam(), FedYogi(), FedAdagrad()]
ROBUST = [Median(), TrimmedMean(), Krum()]


@pytest.mark.parametrize("dp", [False, True])
@pytest.mark.parametrize("strategy", FAMILY + ROBUST + [FedBuff()], ids=repr)
def test_compose_check_follows_the_table(strategy: Strategy, dp: bool) -> None:
    for secagg in (False, True):
        for asynchronous in (False, True):
            allowed = (not secagg or not strategy.robust) and (
                asynchronous == isinstance(strategy, FedBuff) or (asynchronous and strategy.robust)
            )
            if allowed:
                compose_check(strategy, secure_aggregation=secagg, asynchronous=asynchronous, dp=dp)
            else:
                with pytest.raises(InvalidInput, match=type(strategy).__name__):
                    compose_check(strategy, secure_aggregation=secagg, asynchronous=asynchronous, dp=dp)


def test_compose_check_messages() -> None:
    with pytest.raises(InvalidInput, match="norm clipping is the defence — use FedAvg"):
        compose_check(Krum(), secure_aggregation=True, asynchronous=False, dp=True)
    with pytest.raises(InvalidInput, match="use FedBuff"):
        compose_check(FedYogi(), secure_aggregation=False, asynchronous=True, dp=False)
    with pytest.raises(InvalidInput, match="asynchronous=True"):
        compose_check(FedBuff(), secure_aggregation=True, asynchronous=False, dp=False)
    with pytest.raises(InvalidInput, match="Strategy"):
        compose_check("fedavg", secure_aggregation=False, asynchronous=False, dp=False)  # type: ignore[arg-type]


# --- flat layouts ---------------------------------------------------------------------------


def test_flatten_round_trip_keeps_shapes_and_dtypes() -> None:
    rng = np.random.default_rng(0)
    weights: dict[str, np.ndarray] = {
        "layer2.weight": rng.normal(size=(3, 4)).astype(np.float32),
        "layer1.bias": rng.normal(size=5),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
        "mask": np.array([True, False]),
        "empty": np.zeros((0, 3)),
    }
    vec, layout = flatten(weights)
    assert vec.dtype == np.float64 and vec.shape == (layout.size,) == (12 + 5 + 1 + 2,)
    assert layout.names == tuple(sorted(weights))
    back = unflatten(vec, layout)
    assert list(back) == sorted(weights)
    for name, arr in weights.items():
        assert back[name].dtype == arr.dtype and back[name].shape == arr.shape
        np.testing.assert_array_equal(back[name], arr)
    assert unflatten(vec + 0.4, layout)["bn.num_batches_tracked"] == 7  # integers round
    reordered = dict(reversed(list(weights.items())))
    np.testing.assert_array_equal(flatten(reordered)[0], vec)


def test_flatten_and_unflatten_refuse_bad_input() -> None:
    with pytest.raises(InvalidInput, match="complex"):
        flatten({"w": np.ones(2, dtype=np.complex128)})
    with pytest.raises(InvalidInput, match="non-empty"):
        flatten({})
    _, layout = flatten({"w": np.ones((2, 3))})
    with pytest.raises(InvalidInput, match="layout of 6"):
        unflatten(np.ones(5), layout)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weighted_sum_matches_the_reference(dtype: type) -> None:
    from fednb.strategies._base import weighted_sum

    rng = np.random.default_rng(0)
    vecs = [rng.normal(size=70_000).astype(dtype) for _ in range(5)]
    w = [3.0, 0.5, 1e-3, 7.0, 2.0]
    ref = sum(wi * v.astype(np.float64) for wi, v in zip(w, vecs, strict=True))
    out = weighted_sum(vecs, w)
    assert out.dtype == dtype  # float32 updates are summed in float32, anything else in float64
    tol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, ref, rtol=tol, atol=tol * float(np.abs(ref).max()))
    mixed = weighted_sum([vecs[0].astype(np.float32), vecs[1].astype(np.float64)], w[:2])
    assert mixed.dtype == np.float64


def test_flatten_without_copy_keeps_float32_and_views_a_single_tensor() -> None:
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    vec, layout = flatten({"w": w}, copy=False)
    assert vec.dtype == np.float32 and np.shares_memory(vec, w) and layout.shapes == ((2, 3),)
    vec2, _ = flatten({"a": w, "b": np.ones(2, np.float32)}, copy=False)
    assert vec2.dtype == np.float32 and vec2.tolist() == [*range(6), 1.0, 1.0]
    mixed, _ = flatten({"a": w, "b": np.ones(2)}, copy=False)
    assert mixed.dtype == np.float64
    copied, _ = flatten({"w": w})
    assert copied.dtype == np.float64 and not np.shares_memory(copied, w)
