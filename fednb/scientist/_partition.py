"""Split one xarray dataset into virtual hospitals for ``simulate``: IID, Dirichlet label
skew, quantity skew and feature shift. Seeded (these are experiments, not privacy noise)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from fednb.errors import InvalidInput

__all__ = ["dirichlet_split", "feature_shift", "iid_split", "quantity_skew"]


def _names(n: int, prefix: str) -> list[str]:
    if n < 1:
        raise InvalidInput(f"the number of hospitals must be >= 1, not {n}")
    return [f"{prefix}{i}" for i in range(n)]


def _dim(ds: xr.Dataset, dim: str | None) -> str:
    return dim or str(next(iter(ds.data_vars.values())).dims[0])


def _take(ds: xr.Dataset, dim: str, parts: list[np.ndarray], names: list[str]) -> dict[str, xr.Dataset]:
    empty = [n for n, p in zip(names, parts, strict=True) if len(p) == 0]
    if empty:
        raise InvalidInput(f"hospitals {empty} got no examples; use fewer hospitals or a larger alpha")
    return {n: ds.isel({dim: np.sort(p)}) for n, p in zip(names, parts, strict=True)}


def iid_split(ds: xr.Dataset, n: int, *, dim: str | None = None, seed: int = 0,
              prefix: str = "hospital-") -> dict[str, xr.Dataset]:
    """``n`` hospitals of (nearly) equal size, examples drawn at random."""
    d = _dim(ds, dim)
    order = np.random.default_rng(seed).permutation(ds.sizes[d])
    return _take(ds, d, np.array_split(order, n), _names(n, prefix))


def dirichlet_split(ds: xr.Dataset, n: int, *, label: str, alpha: float = 0.5, dim: str | None = None,
                    seed: int = 0, prefix: str = "hospital-") -> dict[str, xr.Dataset]:
    """Label skew: each class is spread over hospitals by Dirichlet(``alpha``) proportions
    (small alpha: each hospital sees mostly one class)."""
    if not alpha > 0:
        raise InvalidInput(f"alpha must be > 0, not {alpha}")
    d, rng, names = _dim(ds, dim), np.random.default_rng(seed), _names(n, prefix)
    y = np.asarray(ds[label].values)
    parts: list[list[int]] = [[] for _ in range(n)]
    for cls in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == cls))
        cuts = (np.cumsum(rng.dirichlet(np.full(n, alpha)))[:-1] * len(rows)).astype(int)
        for i, chunk in enumerate(np.split(rows, cuts)):
            parts[i].extend(chunk.tolist())
    return _take(ds, d, [np.asarray(p, dtype=int) for p in parts], names)


def quantity_skew(ds: xr.Dataset, n: int, *, alpha: float = 1.0, dim: str | None = None, seed: int = 0,
                  prefix: str = "hospital-") -> dict[str, xr.Dataset]:
    """Hospitals of very different sizes: proportions ~ Dirichlet(``alpha``), at least 1 each."""
    d, rng = _dim(ds, dim), np.random.default_rng(seed)
    total = ds.sizes[d]
    sizes = np.maximum(1, (rng.dirichlet(np.full(n, alpha)) * (total - n)).astype(int) + 1)
    order = rng.permutation(total)
    cuts = np.cumsum(sizes)[:-1]
    return _take(ds, d, np.split(order[: sizes.sum()], cuts), _names(n, prefix))


def feature_shift(parts: dict[str, xr.Dataset], variable: str, *, scale: float = 0.1,
                  seed: int = 0) -> dict[str, xr.Dataset]:
    """Shift ``variable`` by a per-hospital offset (``scale`` times its std), as scanners
    or lab methods differ between hospitals."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, ds in parts.items():
        v = ds[variable]
        offset = rng.normal(0.0, scale * float(v.std()), size=v.shape[1:] or None)
        out[name] = ds.assign({variable: v + offset})
    return out
