"""Protection of ``stats`` releases: disclosure control, DP noise, or both.

The owner's policy sets, per dataset, how ``stats`` requests are protected
(``Policy.stats_protection``) and the disclosure rules (``Policy.disclosure``,
:class:`~fednb.protocol._templates.DisclosureRules`). docs/stats-domain.md states the
rules and their defaults.

Disclosure control (exact values). Checked from the card and the spec at submission:
allowed and denied variables, and the parameters of a model against the whole dataset's
rows. Checked on the data when a run is created, before anything is released, and
refused with a message naming the rule and how to proceed: the filtered subset's size,
model parameters per row used, every cell count (the public number of patients makes a
single masked cell recoverable from the margins, so a table with a small cell is refused
whole, as DataSHIELD does, rather than masked), and differencing: the rows a release is
about (the filtered subset, and each of its group cells) must differ by at least
``min_subset`` rows from every such set this scientist was given on the dataset before,
the whole dataset and the empty set included (:class:`SubsetMemory`).

DP. Each array is noised on the grid with discrete Gaussian noise of standard deviation
``noise_multiplier`` times its replace-one L2 sensitivity (from the spec and the card
only), one ``GaussianEvent(z, GRID_SLACK)`` per noised array (``fednb.runtime.KINDS["stats"].event``),
charged before the run.
Nothing data-dependent is refused: the release has the structure of
:func:`fednb.runtime.default`, a failure releases that default noised alike, and
differencing is simply charged. With ``"both"`` the cell rule is applied as
post-processing of the noised release: a cell whose *noised* count is below the minimum
is released as NaN (the scientist's library reads NaN as suppressed).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr
from sqlalchemy import update
from sqlalchemy.orm import Session

from fednb.domain._policy import Policy
from fednb.domain._store import RequestRow, SettingRow
from fednb.domain.runner import WorkerOutcome
from fednb.errors import DisclosureRefused, FednbError, InvalidInput, RunRefused
from fednb.privacy import SecureNoise, grid_gaussian
from fednb.protocol import DatasetCard, DisclosureRules, StatsProtection, StatsSpec, Update
from fednb.runtime import StatsPart, check_stats, compute, default, kernels_device, kind_of, row_mask
from fednb.typing import Array, Weights

if TYPE_CHECKING:
    from fednb.domain._domain import Domain

__all__ = ["ACCEPTS", "ExactStats", "SubsetMemory", "check_cells", "check_stats_request", "dp_arrays",
           "prepare_exact_stats", "public_metrics", "refusal", "settle_exact", "stats_data", "stats_facts",
           "subset_masks", "suppress_noisy_cells"]

ACCEPTS: dict[str, tuple[StatsProtection, ...]] = {
    "disclosure": ("disclosure", "both"), "dp": ("dp", "both"), "both": ("both",)}
"""The protections a request may ask for, by the protection the dataset's policy sets."""


def refusal(rule: str, what: str, how: str) -> DisclosureRefused:
    """The error a disclosure refusal raises: the rule, what broke it, how to proceed. It
    never carries a private value (no count, no subset size)."""
    return DisclosureRefused(f"disclosure control refused this (rule {rule}): {what}; {how}")


# -- at submission: the spec and the card only ----------------------------------------
def check_protection(policy: Policy, spec: StatsSpec, dataset: str) -> None:
    """The request's protection must be one the dataset's policy accepts."""
    want = policy.protection_for(dataset)
    if spec.protection not in ACCEPTS[want]:
        ask = " or ".join(repr(p) for p in ACCEPTS[want])
        raise InvalidInput(f"dataset {dataset!r} takes stats requests with protection {want!r} (the "
                           f"owner's policy); ask for protection={ask}")


def check_variables(rules: DisclosureRules, spec: StatsSpec, dataset: str) -> None:
    denied = sorted(set(spec.variables) & set(rules.denied_variables))
    if rules.allowed_variables is not None:
        denied += sorted(set(spec.variables) - set(rules.allowed_variables) - set(denied))
    if denied:
        raise refusal("allowed_variables/denied_variables", f"the owner does not allow stats on "
                      f"{denied} of {dataset!r}", "leave them out, or ask the owner to allow them")


def _check_params(rules: DisclosureRules, n_params: int, n_rows: int, whole: bool) -> None:
    if n_params > rules.max_params_ratio * n_rows:
        rows = f"the dataset's {n_rows} rows" if whole else "the rows it uses"
        raise refusal("max_params_ratio", f"the model has {n_params} parameters, more than "
                      f"{rules.max_params_ratio:g} per row of {rows}",
                      "drop terms or merge levels, or widen the filter")


def check_stats_request(policy: Policy, spec: StatsSpec, cards: list[DatasetCard]) -> int:
    """Refuse at submission what the card and the policy rule out; the model's parameters.

    Returns
    -------
    int
        The most model parameters the request fits on any of its datasets (0: no model).
    """
    n_params = 0
    for card in cards:
        check_protection(policy, spec, card.name)
        rules = policy.rules_for(card.name)
        check_variables(rules, spec, card.name)
        check_stats(spec, card)
        try:
            part = default(spec, _one_row(card))  # the release's structure, from the card alone
        except FednbError:
            raise
        except Exception as exc:  # a formula the parser refuses, say: the scientist's own text
            raise InvalidInput(f"this {spec.op} step does not fit dataset {card.name!r}: "
                               f"{type(exc).__name__}: {str(exc)[:500]}") from None
        _check_params(rules, part.n_params, card.num_examples, whole=True)
        n_params = max(n_params, part.n_params)
    return n_params


def _one_row(card: DatasetCard) -> DatasetCard:
    """``card`` with one row: every row of :func:`default`'s input is the same (all values
    missing), so one row gives the names, shapes, model parameters and refusals of n rows,
    without building an n-row design for every step of a model at submission."""
    dims = {**card.dims, card.example_dim: 1}
    return card.model_copy(update={"num_examples": 1, "dims": dims})


# -- exact releases: checked on the data ----------------------------------------------
def check_cells(part: StatsPart, rules: DisclosureRules) -> None:
    """The subset size, the model's parameters per row used and every cell count."""
    if part.n_rows < rules.min_subset:
        raise refusal("min_subset", f"the rows this step uses number fewer than {rules.min_subset}",
                      "widen the filter or drop the grouping")
    _check_params(rules, part.n_params, part.n_rows, whole=False)
    for name, counts in part.counts.items():
        c = np.asarray(counts)
        if ((c > 0) & (c < rules.min_cell_count)).any():
            raise refusal("min_cell_count", f"a cell of {name!r} counts between 1 and "
                          f"{rules.min_cell_count - 1} rows",
                          "merge levels, drop the grouping, use a coarser grid or widen the filter")
        if rules.zero_cell_suppression and (c == 0).any():
            raise refusal("zero_cell_suppression", f"a cell of {name!r} is empty and the owner "
                          "suppresses empty cells", "merge levels, drop the grouping or use a coarser grid")


def subset_masks(spec: StatsSpec, data: xr.Dataset, card: DatasetCard) -> list[Array]:
    """The sets of rows a release of ``spec`` is about, as boolean masks over the dataset:
    the filtered subset (rows with a group level, when grouped) and each group cell."""
    keep, codes = row_mask(spec, data, card)  # the runtime's own filter semantics
    if spec.group is None or codes is None:
        return [keep]
    return [keep & (codes >= 0)] + [keep & (codes == g) for g in range(len(spec.levels[spec.group]))]


@dataclass
class SubsetMemory:
    """The row sets already released to one scientist on one dataset (kept in the store,
    packed bits), and the differencing rule against them."""

    scientist: str
    dataset: str
    n: int
    masks: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        pair = hashlib.sha256(f"{self.scientist}\x00{self.dataset}".encode()).hexdigest()[:40]
        return f"stats_subsets:{pair}"

    def load(self, s: Session) -> SubsetMemory:
        row = s.get(SettingRow, self.key)
        value = {} if row is None else row.value
        # a dataset replaced by one of another size starts afresh: its rows are not these
        self.masks = list(value.get("masks", [])) if value.get("n") == self.n else []
        return self

    @staticmethod
    def _pack(mask: Array) -> str:
        return base64.b64encode(np.packbits(mask.astype(bool)).tobytes()).decode()

    def _unpack(self, text: str) -> Array:
        bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[: self.n]
        return bits.astype(bool)

    def check(self, masks: list[Array], min_subset: int) -> None:
        """Refuse when a set of ``masks`` differs from a released one (or from all rows, or
        from none) by 1 to ``min_subset - 1`` rows."""
        known = [np.zeros(self.n, dtype=bool), np.ones(self.n, dtype=bool)]
        known += [self._unpack(m) for m in self.masks]
        for new in masks:
            for old in known:
                d = int(np.count_nonzero(new != old))
                if 0 < d < min_subset:
                    raise refusal("min_subset", f"the rows this release is about differ by fewer than "
                                  f"{min_subset} from a set of rows you were already given on "
                                  f"{self.dataset!r} (or from all or none of its rows): the two "
                                  "releases together would single those rows out (differencing)",
                                  f"choose a filter or grouping that differs by at least {min_subset} "
                                  "rows, or ask the owner for a DP release")

    def record(self, s: Session, masks: list[Array]) -> None:
        """Remember ``masks`` as released (inside the transaction that takes the run)."""
        for packed in map(self._pack, masks):
            if packed not in self.masks:
                self.masks.append(packed)
        value = {"n": self.n, "masks": self.masks}
        row = s.get(SettingRow, self.key)
        if row is None:
            s.add(SettingRow(key=self.key, value=value))
        else:
            row.value = value


# -- DP releases -------------------------------------------------------------------
def dp_arrays(part: StatsPart | None, spec: StatsSpec, card: DatasetCard,
              noise: SecureNoise) -> tuple[Weights, str | None]:
    """The noised release of ``part`` with :func:`default`'s names and shapes, or of the
    default when ``part`` is None or does not fit them; and why the default was used
    (None: it was not), for the owner's log."""
    assert spec.noise_multiplier is not None
    dflt = default(spec, card)
    why = None
    if part is None:
        why, src = "the run failed", dflt
    else:
        bad = [k for k, v in dflt.arrays.items()
               if k not in part.arrays or np.shape(part.arrays[k]) != np.shape(v)
               or not np.isfinite(np.asarray(part.arrays[k], dtype=np.float64)).all()]
        if bad or set(part.arrays) != set(dflt.arrays):
            why, src = f"the computed arrays {bad or sorted(part.arrays)} were not finite or not of the " \
                       "default's structure", dflt
        else:
            src = part
    out: Weights = {}
    for name, value in src.arrays.items():
        v = np.asarray(value, dtype=np.float64)
        s = dflt.sensitivity.get(name, 0.0)
        if s > 0 and v.size:
            v = np.asarray(grid_gaussian({"v": v}, s, spec.noise_multiplier * s, noise)["v"],
                           dtype=np.float64).reshape(v.shape)
        out[name] = v
    return out, why


def suppress_noisy_cells(noised: Weights, structure: StatsPart, rules: DisclosureRules) -> Weights:
    """``"both"``: NaN in every cell whose noised count is below the minimum (a function of
    the noised release alone; without zero-cell suppression a noised count below 0.5 reads
    as an empty cell and stays). ``structure`` is the data-independent default part: the
    count array behind each array is the released array whose memory its counts share."""
    out = dict(noised)
    for name, counts in structure.counts.items():
        source = next((k for k, a in structure.arrays.items()
                       if np.shares_memory(np.asarray(counts), a)), None)
        if source is None or name not in out:
            continue
        noisy = np.asarray(noised[source]).reshape(np.shape(counts))
        low = noisy < rules.min_cell_count
        if not rules.zero_cell_suppression:
            low &= noisy >= 0.5
        out[name] = np.where(np.broadcast_to(low, np.shape(out[name])), np.nan, out[name])
    return out


# -- the private values a stats step reads --------------------------------------------
_CACHED_DATASETS = 8
_cache: OrderedDict[str, tuple[tuple[int, int, int], dict[str, xr.DataArray]]] = OrderedDict()
_cache_lock = threading.Lock()


def stats_data(dom: Domain, dataset: str, names: list[str]) -> xr.Dataset:
    """The private variables ``names`` of ``dataset`` (those it has), for a stats step.

    A model's every Newton/IRLS step reads the same variables, so the values read are kept
    (read-only, in this trusted process, for the last few datasets) while the stored Zarr
    is unchanged: a replaced dataset is a new ``.zmetadata`` (another inode, time or size)
    and is read afresh.
    """
    path = dom.private_path(dataset)
    try:
        st = os.stat(path / ".zmetadata")
    except OSError:  # not a consolidated store: read as the domain always does
        full = dom.private(dataset)
        return xr.Dataset({n: full[n] for n in names if n in full.data_vars})
    stamp, key = (st.st_ino, st.st_mtime_ns, st.st_size), str(path)
    with _cache_lock:
        entry = _cache.get(key)
        if entry is None or entry[0] != stamp:
            entry = _cache[key] = (stamp, {})
        _cache.move_to_end(key)
        while len(_cache) > _CACHED_DATASETS:
            _cache.popitem(last=False)
        held = entry[1]
        if any(n not in held for n in names):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with xr.open_zarr(path, consolidated=True, chunks=None) as stored:
                    for n in names:
                        if n not in held and n in stored.data_vars:
                            held[n] = stored[n].load()
                            held[n].values.flags.writeable = False  # shared by every later step
        return xr.Dataset({n: held[n] for n in names if n in held})


# -- the domain's exact runs ------------------------------------------------------------
def public_metrics(dom: Domain, dataset: str) -> dict[str, float]:
    """What every stats release carries besides its arrays: the policy's minimum number of
    sites of a pooled model (a public fact; fednb.stats enforces it)."""
    return {"min_sites": float(dom.policy.get().rules_for(dataset).min_sites)}


def stats_facts(dom: Domain, req: RequestRow, dataset: str) -> dict[str, Any]:
    """What the audit log records of a stats run: the op, its protection, and the policy's
    minimum number of sites for a pooled model."""
    if not kind_of(req.kind).disclosure_controlled:  # a stats step's facts
        return {}
    spec = StatsSpec.model_validate_json(req.source)
    return {"stats": {"op": spec.op, "protection": spec.protection,
                      "min_sites": dom.policy.get().rules_for(dataset).min_sites}}


@dataclass
class ExactStats:
    """A disclosure-controlled ``stats`` run, computed when the run is created: its
    outcome, the row sets it is about and, when a rule refused it, the refusal."""

    outcome: WorkerOutcome
    masks: list[Array] = field(default_factory=list)
    refusal: InvalidInput | None = None


def prepare_exact_stats(dom: Domain, req: RequestRow, dataset: str) -> ExactStats:
    """Compute an exact ``stats`` step and check it against the dataset's disclosure rules,
    all but differencing (:func:`settle_exact`, inside the run's transaction)."""
    spec, card = StatsSpec.model_validate_json(req.source), dom.card(dataset)
    try:
        data = stats_data(dom, dataset, spec.variables)
        part = compute(spec, data, card)
        masks = subset_masks(spec, data, card)
    except Exception as exc:  # a non-DP run: its scientist sees it failed, the owner why
        return ExactStats(WorkerOutcome("failed", "exception", log=f"domain error: {exc!r}"))
    try:
        check_cells(part, dom.policy.get().rules_for(dataset))
    except InvalidInput as exc:
        return ExactStats(WorkerOutcome("refused", "ok", log=str(exc)), masks, exc)
    weights = {k: np.asarray(v, dtype=np.float64) for k, v in part.arrays.items()}
    log = json.dumps({"stats": spec.op, "protection": spec.protection, "rows": part.n_rows})
    update_ = Update(weights=weights, metrics=public_metrics(dom, dataset))
    return ExactStats(WorkerOutcome("succeeded", "ok", update_, log=log, backend=kernels_device()), masks)


def settle_exact(dom: Domain, s: Session, req: RequestRow, dataset: str,
                 exact: ExactStats) -> FednbError | None:
    """Inside the write transaction that would take the run: the differencing rule against
    the row sets this scientist was given before, which the release then joins. A refusal
    spends one of the approved runs (probing the rules is bounded by the approval); it is
    returned for the caller to audit and raise."""
    refusal = exact.refusal
    if refusal is None:
        memory = SubsetMemory(req.scientist, dataset, dom.card(dataset).num_examples).load(s)
        try:
            memory.check(exact.masks, dom.policy.get().rules_for(dataset).min_subset)
        except InvalidInput as exc:
            refusal = exc
        else:
            memory.record(s, exact.masks)
            return None
    took: int = s.execute(  # type: ignore[attr-defined]
        update(RequestRow).where(RequestRow.id == req.id, RequestRow.status == "approved",
                                 RequestRow.runs_used < RequestRow.runs)
        .values(runs_used=RequestRow.runs_used + 1)).rowcount
    if took != 1:
        return RunRefused(f"all {req.runs} approved runs of request {req.id!r} are used")
    return refusal
