"""The ``query`` kind: declared aggregations with the patient as the privacy unit.

Neighbouring relation: replace-one (docs/privacy.md, :mod:`fednb.privacy._events`). The
dataset's patient count n is public (cards and result headers carry it), so neighbours
have the same n and differ in every value of one patient, a missing value included.

The example dimension. Every aggregation reduces over the card's ``example_dim``
wherever it sits among the variable's dims (the variable is transposed to put it
first): a ``(hour, patient)`` variable releases one sum per hour, and a patient moves
all of its hours at once. A variable without the example dimension is refused at
submission (:func:`check_query`).

Missing values (NaN), one rule, :func:`missing_rule`, applied before any clamp, used by
every query and by DP-SGD (:mod:`fednb.runtime._dpsgd`):

- a NaN is *missing*; anything else, infinities included, is clamped into the declared
  ``[lo, hi]`` (``-inf`` to lo, ``+inf`` to hi);
- sums leave missing values out (they add 0). One entry of one patient then moves
  within ``[min(lo, 0), max(hi, 0)]``, so a sum of a variable with ``m`` entries per
  patient has L2 sensitivity ``(max(hi, 0) - min(lo, 0)) * sqrt(m)``;
- a mean is a noisy sum over a noisy count of the *present* values, entry by entry (so
  the mean is over non-missing values). That count moves by at most 1 per entry
  (present <-> missing): sensitivity ``sqrt(m)``. Two releases;
- a histogram (one value per patient) leaves missing values out. A patient moving
  between two bins changes two counts by one: sensitivity ``sqrt(2)`` (moving in or out
  of the missing state changes one count: 1);
- a quantile places a missing value at the lower bound ``lo``, so the ranks stay out of
  n, which is public. Under replace-one a patient's value, missing or not, moves every
  rank by at most 1, the utility ``-|rank - q n|`` has sensitivity 1, and the
  exponential mechanism at weight ``epsilon / 2`` is ``epsilon``-DP (Smith 2011);
- a count of all patients is n itself: public, released exactly, no privacy event.

Noise. Every Gaussian release goes through :func:`fednb.privacy.grid_gaussian` (values
snapped to a power-of-two grid, discrete Gaussian noise on it, so no floating-point
attack), with standard deviation ``noise_multiplier`` times its sensitivity; each is
recorded as ``GaussianEvent(noise_multiplier, sensitivity_factor=GRID_SLACK)``, the
grid's rounding charged. A quantile is drawn uniformly within the chosen gap, then
snapped to a grid of 2^-20 of the bounds' scale, coarse enough that the float
arithmetic of the draw (errors near 2^-52 of the scale) moves it with probability
below 2^-31.

run_query is total on the data: any content (NaN, infinities, huge values) gives a
release of the structure :func:`query_shapes` announces. :func:`default_query_release`
is the same query over a data-independent input (n patients, all values missing),
noised alike, for a run that failed for a reason of the domain's.

A dask-backed dataset is read one chunk of patients at a time for sums, means and
histograms; a quantile reads the whole (one value per patient) variable.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import xarray as xr

from fednb import kernels
from fednb.errors import InvalidInput
from fednb.privacy import GRID_SLACK, Event, GaussianEvent, PureDPEvent, SecureNoise, grid_gaussian
from fednb.protocol import Aggregation, DatasetCard, QuerySpec, VariableCard
from fednb.typing import Array, Weights

__all__ = ["check_query", "default_query_release", "missing_rule", "query_events", "query_shapes",
           "run_query"]

_QUANTILE_GRID_BITS = 20
"""A released quantile is snapped to 2^-20 of its bounds' scale."""


def missing_rule(x: Array, lo: float, hi: float, fill: float) -> tuple[Array, Array]:
    """The one rule for missing and out-of-range values, before anything else sees them.

    Parameters
    ----------
    x
        Values (any real dtype; cast to float64).
    lo, hi
        Declared bounds (finite, ``lo <= hi``).
    fill
        What a missing (NaN) value becomes.

    Returns
    -------
    values : ndarray
        float64: NaN replaced by ``fill``, everything else (infinities included) clamped
        into ``[lo, hi]``.
    present : ndarray
        bool, True where the value was not missing.
    """
    v = np.asarray(x, dtype=np.float64)
    present = ~np.isnan(v)
    return np.where(present, np.clip(v, lo, hi), fill), present


def _var(card: DatasetCard, agg: Aggregation) -> tuple[VariableCard, float, float]:
    """The variable's card and bounds, or InvalidInput saying what stops the aggregation."""
    assert agg.variable is not None
    var = card.variables.get(agg.variable)
    if var is None:
        raise InvalidInput(f"dataset {card.name!r} has no variable {agg.variable!r}")
    if var.bounds is None:
        raise InvalidInput(f"variable {agg.variable!r} has no declared bounds, so no DP {agg.op} of it "
                           "is possible; the owner declares bounds when adding the dataset")
    if card.example_dim not in var.dims:
        raise InvalidInput(f"variable {agg.variable!r} has dims {var.dims}, without the example "
                           f"dimension {card.example_dim!r}: a DP {agg.op} reduces over "
                           f"{card.example_dim!r}, the privacy unit")
    lo, hi = var.bounds
    if agg.op in ("histogram", "quantile"):
        if var.dims != [card.example_dim]:
            raise InvalidInput(f"{agg.op} works on one value per {card.example_dim}; {agg.variable!r} "
                               f"has dims {var.dims}")
        if not lo < hi:
            raise InvalidInput(f"a {agg.op} needs bounds with low < high; {agg.variable!r} has {var.bounds}")
    return var, lo, hi


def check_query(spec: QuerySpec, card: DatasetCard) -> None:
    """Refuse at submission what cannot run: unknown variables, no bounds, wrong dims."""
    for agg in spec.aggregations:
        if agg.op != "count":
            _var(card, agg)


def _key(i: int, agg: Aggregation) -> str:
    return f"{i}:{agg.op}:{agg.variable or ''}"


def _per_patient(card: DatasetCard, var: VariableCard) -> tuple[int, ...]:
    return tuple(card.dims[d] for d in var.dims if d != card.example_dim)


def query_shapes(spec: QuerySpec, card: DatasetCard) -> dict[str, tuple[int, ...]]:
    """The shape of each released value (all float64), from the spec and the card alone."""
    out: dict[str, tuple[int, ...]] = {}
    for i, agg in enumerate(spec.aggregations):
        if agg.op == "count":
            out[_key(i, agg)] = ()
        elif agg.op == "histogram":
            out[_key(i, agg)] = (agg.bins or 10,)
        elif agg.op == "quantile":
            out[_key(i, agg)] = (len(agg.quantiles or []),)
        else:
            out[_key(i, agg)] = _per_patient(card, _var(card, agg)[0])
    return out


def query_events(spec: QuerySpec) -> list[Event]:
    """The DP events of one run of ``spec`` (a count of all patients is public: none)."""
    gauss = GaussianEvent(spec.noise_multiplier, sensitivity_factor=GRID_SLACK)
    events: list[Event] = []
    for agg in spec.aggregations:
        if agg.op == "quantile":
            events += [PureDPEvent(spec.quantile_epsilon)] * len(agg.quantiles or [])
        elif agg.op != "count":
            events += [gauss] * (2 if agg.op == "mean" else 1)
    return events


def _noised(value: Array, sensitivity: float, z: float, noise: SecureNoise) -> Array:
    if sensitivity == 0.0 or np.size(value) == 0:  # bounds [0, 0] or no entries: nothing to hide
        return np.asarray(value, dtype=np.float64)
    out = grid_gaussian({"v": value}, sensitivity, z * sensitivity, noise)["v"]
    return np.asarray(out, dtype=np.float64).reshape(np.shape(value))


def _blocks(var: xr.DataArray) -> Iterator[Array]:
    """The values as float64, one chunk of patients at a time when dask backs them."""
    data = var.data
    if not hasattr(data, "dask"):
        yield np.asarray(data, dtype=np.float64)
        return
    start = 0
    for size in data.chunks[0]:
        yield np.asarray(data[start : start + size].compute(), dtype=np.float64)
        start += size


def _sum_and_count(var: xr.DataArray, lo: float, hi: float) -> tuple[Array, Array]:
    """Per entry: the sum of the present values clamped into [lo, hi], and how many there are."""
    total: Array = np.zeros(var.shape[1:])
    count: Array = np.zeros(var.shape[1:])
    for block in _blocks(var):
        values, present = missing_rule(block, lo, hi, 0.0)
        total = total + kernels.clipped_sum(values, min(lo, 0.0), max(hi, 0.0))
        count = count + present.sum(axis=0)
    return total, count


def _quantile(x: Array, lo: float, hi: float, q: float, eps: float, noise: SecureNoise) -> float:
    v = np.sort(missing_rule(x, lo, hi, lo)[0])
    i = kernels.quantile_pick(v, lo, hi, q * len(v), eps, float(noise.uniform(1)[0]))
    left = lo if i == 0 else v[i - 1]
    right = hi if i == len(v) else v[i]
    y = float(left + (right - left) * noise.uniform(1)[0])
    step = 2.0 ** (math.ceil(math.log2(max(abs(lo), abs(hi), hi - lo))) - _QUANTILE_GRID_BITS)
    return min(hi, max(lo, round(y / step) * step))


def _one(agg: Aggregation, data: xr.Dataset, card: DatasetCard, spec: QuerySpec,
         noise: SecureNoise) -> Array:
    z = spec.noise_multiplier
    if agg.op == "count":  # n is public under replace-one
        return np.asarray(float(card.num_examples))
    meta, lo, hi = _var(card, agg)
    dims = [card.example_dim] + [d for d in meta.dims if d != card.example_dim]
    var = data[agg.variable].transpose(*dims)
    if agg.op in ("sum", "mean"):
        total, count = _sum_and_count(var, lo, hi)
        root_m = math.sqrt(math.prod(_per_patient(card, meta)))
        noisy = _noised(total, (max(hi, 0.0) - min(lo, 0.0)) * root_m, z, noise)
        if agg.op == "sum":
            return noisy
        noisy_count = np.maximum(_noised(count, root_m, z, noise), 1.0)
        return np.asarray(np.clip(noisy / noisy_count, lo, hi), dtype=np.float64)
    if agg.op == "histogram":
        bins = agg.bins or 10
        counts = np.zeros(bins)
        for block in _blocks(var):
            values, present = missing_rule(block, lo, hi, lo)
            counts = counts + kernels.clipped_histogram(values[present], lo, hi, bins)
        return _noised(counts, math.sqrt(2.0), z, noise)
    x = np.concatenate(list(_blocks(var)))
    return np.asarray([_quantile(x, lo, hi, q, spec.quantile_epsilon, noise) for q in agg.quantiles or []],
                      dtype=np.float64)


def run_query(spec: QuerySpec, data: xr.Dataset, card: DatasetCard, noise: SecureNoise) -> Weights:
    """Compute every aggregation with its noise; keys are ``"{i}:{op}:{variable}"``.

    Total on the data's values: the keys, shapes and dtypes are :func:`query_shapes`'s
    and float64 whatever the values are.
    """
    return {_key(i, a): _one(a, data, card, spec, noise) for i, a in enumerate(spec.aggregations)}


def default_query_release(spec: QuerySpec, card: DatasetCard, noise: SecureNoise) -> Weights:
    """The release of ``spec`` over n patients whose every value is missing, noised alike.

    Data-independent, with exactly :func:`run_query`'s keys, shapes and dtypes: what the
    domain releases when a query run fails for a reason of its own.
    """
    names = {a.variable for a in spec.aggregations if a.variable is not None}
    blank = xr.Dataset({
        name: (card.variables[name].dims,
               np.full(tuple(card.dims[d] for d in card.variables[name].dims), np.nan))
        for name in names})
    return run_query(spec, blank, card, noise)
