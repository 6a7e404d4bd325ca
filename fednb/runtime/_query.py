"""The ``query`` kind: declared aggregations with the patient as the privacy unit.

Values are clipped into the variable's declared bounds. Under add-or-remove-one-patient
adjacency: a count has L2 sensitivity 1; a sum of a variable whose per-patient part has
``m`` entries has ``max(|lo|, |hi|) * sqrt(m)``; a histogram (1-D variables) has 1. Each
gets Gaussian noise of ``noise_multiplier`` times its sensitivity, drawn from a CSPRNG. A
mean is a noisy sum over a noisy count (two releases). A quantile (1-D variables) is
drawn by the exponential mechanism over the gaps between sorted clipped values (Smith
2011), utility ``-|rank - q n|`` of sensitivity 1, at ``quantile_epsilon`` each.

The statistics run on :mod:`fednb.kernels` (clipped sum, clipped histogram, the quantile
draw). A dask-backed dataset is read one chunk of patients at a time for sums, means and
histograms, so memory holds one chunk; a quantile needs the variable's values sorted,
so it reads the whole (one value per patient) variable.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import xarray as xr

from fednb import kernels
from fednb.errors import InvalidInput
from fednb.privacy import Event, GaussianEvent, PureDPEvent, SecureNoise
from fednb.protocol import Aggregation, DatasetCard, QuerySpec
from fednb.typing import Array, Weights

__all__ = ["check_query", "query_events", "run_query"]


def _bounds(card: DatasetCard, agg: Aggregation) -> tuple[float, float]:
    assert agg.variable is not None
    var = card.variables.get(agg.variable)
    if var is None:
        raise InvalidInput(f"dataset {card.name!r} has no variable {agg.variable!r}")
    if var.bounds is None:
        raise InvalidInput(f"variable {agg.variable!r} has no declared bounds, so no DP {agg.op} of it "
                           "is possible; the owner declares bounds when adding the dataset")
    if agg.op in ("histogram", "quantile") and var.dims != [card.example_dim]:
        raise InvalidInput(f"{agg.op} works on one value per {card.example_dim}; {agg.variable!r} "
                           f"has dims {var.dims}")
    return var.bounds


def check_query(spec: QuerySpec, card: DatasetCard) -> None:
    """Refuse at submission what cannot run: unknown variables, no bounds, wrong dims."""
    for agg in spec.aggregations:
        if agg.op != "count":
            _bounds(card, agg)


def query_events(spec: QuerySpec) -> list[Event]:
    """The DP events of one run of ``spec``."""
    gauss = GaussianEvent(spec.noise_multiplier, sensitivity_factor=1.0)
    events: list[Event] = []
    for agg in spec.aggregations:
        if agg.op == "quantile":
            events += [PureDPEvent(spec.quantile_epsilon)] * len(agg.quantiles or [])
        else:
            events += [gauss] * (2 if agg.op == "mean" else 1)
    return events


def _count(n: int, z: float, noise: SecureNoise) -> float:
    return float(n + noise.gaussian((), z)[()])


def _blocks(var: xr.DataArray) -> Iterator[Array]:
    """The variable's values as float64, one chunk of patients at a time when dask backs it."""
    data = var.data
    if not hasattr(data, "dask"):
        yield np.asarray(data, dtype=np.float64)
        return
    start = 0
    for size in data.chunks[0]:
        yield np.asarray(data[start : start + size].compute(), dtype=np.float64)
        start += size


def _clipped_sum(var: xr.DataArray, lo: float, hi: float) -> tuple[Array, int]:
    total: Array | None = None
    n = 0
    for block in _blocks(var):
        part = kernels.clipped_sum(block, lo, hi)
        total = part if total is None else total + part
        n += block.shape[0]
    assert total is not None
    return total, n


def _sum(total: Array, shape: tuple[int, ...], lo: float, hi: float, z: float, noise: SecureNoise) -> Array:
    per = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    sens = max(abs(lo), abs(hi)) * math.sqrt(per)
    return np.asarray(total + noise.gaussian(np.shape(total), z * sens))


def _quantile(x: Array, lo: float, hi: float, q: float, eps: float, noise: SecureNoise) -> float:
    v = np.sort(np.clip(x.astype(np.float64), lo, hi))
    i = kernels.quantile_pick(v, lo, hi, q * len(v), eps, float(noise.uniform(1)[0]))
    left = lo if i == 0 else v[i - 1]
    right = hi if i == len(v) else v[i]
    return float(left + (right - left) * noise.uniform(1)[0])


def _one(agg: Aggregation, data: xr.Dataset, card: DatasetCard, spec: QuerySpec,
         noise: SecureNoise) -> Array:
    z = spec.noise_multiplier
    if agg.op == "count":
        return np.asarray(_count(card.num_examples if card.example_dim not in data.sizes
                                 else int(data.sizes[card.example_dim]), z, noise))
    lo, hi = _bounds(card, agg)
    var = data[agg.variable]
    if agg.op in ("sum", "mean"):
        total, n = _clipped_sum(var, lo, hi)
        noisy = _sum(total, var.shape, lo, hi, z, noise)
        if agg.op == "sum":
            return noisy
        count = max(_count(n, z, noise), 1.0)
        return np.clip(noisy / count, lo, hi)
    if agg.op == "histogram":
        counts = sum(kernels.clipped_histogram(b, lo, hi, agg.bins or 10) for b in _blocks(var))
        return np.asarray(counts + noise.gaussian(np.shape(counts), z))
    x = np.concatenate(list(_blocks(var)))
    return np.asarray([_quantile(x, lo, hi, q, spec.quantile_epsilon, noise) for q in agg.quantiles or []])


def run_query(spec: QuerySpec, data: xr.Dataset, card: DatasetCard, noise: SecureNoise) -> Weights:
    """Compute every aggregation with its noise; keys are ``"{i}:{op}:{variable}"``."""
    return {f"{i}:{a.op}:{a.variable or ''}": _one(a, data, card, spec, noise)
            for i, a in enumerate(spec.aggregations)}
