"""FHIR R4 Bundles of Patient and Observation resources: one row per patient."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr
from fhir.resources.R4B.bundle import Bundle

from fednb.errors import InvalidInput
from fednb.loaders._common import StrPath, existing
from fednb.loaders._registry import Loader
from fednb.typing import Array

__all__ = ["FhirLoader", "load_fhir_bundle"]

_SYSTEM_PREFIXES = {"http://loinc.org": "loinc", "http://snomed.info/sct": "snomed"}
_NON_WORD = re.compile(r"\W", re.ASCII)


@dataclass
class _Reading:
    """One Observation's numeric value, with what picks the latest one."""

    patient: str
    value: float
    when: float | None
    order: int


@dataclass
class _Code:
    """Every usable Observation of one code."""

    system: str
    code: str
    display: str = ""
    units: set[str] = field(default_factory=set)
    readings: list[_Reading] = field(default_factory=list)


def _bundle_json(source: StrPath | Mapping[str, Any]) -> dict[str, Any]:
    """The bundle as JSON, read from a file when given a path."""
    if isinstance(source, Mapping):
        return dict(source)
    p = existing(source, "FHIR bundle file")
    try:
        with p.open(encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"could not read {p.name} as JSON ({exc}); pass a FHIR Bundle") from exc
    if not isinstance(data, dict):
        raise InvalidInput(f"{p.name} holds a JSON {type(data).__name__}, not a FHIR Bundle object")
    return data


def _parse_bundle(data: dict[str, Any]) -> Any:
    """Validate ``data`` as a FHIR R4 (R4B) Bundle with fhir.resources."""
    kind = data.get("resourceType")
    if kind != "Bundle":
        raise InvalidInput(
            f"expected a FHIR resource of type 'Bundle', got {kind!r}; wrap the Patient and "
            "Observation resources in a Bundle (resourceType 'Bundle', type 'collection')"
        )
    try:
        return Bundle.model_validate(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"the FHIR Bundle is not valid FHIR R4: {exc}") from exc


def _birth_year(value: Any) -> float:
    """The year of a FHIR date (a ``date`` or a partial ``"YYYY[-MM]"`` string)."""
    if isinstance(value, dt.date):
        return float(value.year)
    try:
        return float(str(value)[:4]) if value else np.nan
    except ValueError:
        return np.nan


def _instant(value: Any) -> float | None:
    """A FHIR dateTime (datetime, date or partial string) as POSIX seconds, UTC."""
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)
        return aware.timestamp()
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc).timestamp()
    if not value:
        return None
    try:
        parts = [int(p[:2]) if i == 2 else int(p) for i, p in enumerate(str(value).split("-")[:3])]
        parts += [1] * (3 - len(parts))
        return dt.datetime(parts[0], parts[1], parts[2], tzinfo=dt.timezone.utc).timestamp()
    except ValueError:
        return None


def _patients(entries: list[Any]) -> tuple[dict[str, tuple[str, float]], dict[str, str]]:
    """Patient id -> (gender, birth year), and reference -> patient id."""
    patients: dict[str, tuple[str, float]] = {}
    refs: dict[str, str] = {}
    for entry in entries:
        resource = entry.resource
        if resource is None or resource.get_resource_type() != "Patient":
            continue
        pid = resource.id or entry.fullUrl
        if not pid:
            raise InvalidInput("a Patient in the Bundle has neither an id nor a fullUrl; give it an id")
        if pid in patients:
            raise InvalidInput(f"the Bundle holds Patient {pid!r} twice; keep one entry per patient")
        patients[pid] = (resource.gender or "", _birth_year(resource.birthDate))
        refs[f"Patient/{pid}"] = pid
        if entry.fullUrl:
            refs[entry.fullUrl] = pid
    return patients, refs


def _add_observation(codes: dict[tuple[str, str], _Code], obs: Any, pid: str, order: int) -> None:
    """Record ``obs`` under its first coding, if it has a code and a quantity."""
    coding = (obs.code.coding or [None])[0]
    quantity = obs.valueQuantity
    if coding is None or not coding.code or quantity is None or quantity.value is None:
        return
    key = (coding.system or "", coding.code)
    entry = codes.setdefault(key, _Code(system=key[0], code=key[1]))
    entry.display = entry.display or coding.display or ""
    unit = quantity.unit or quantity.code
    if unit:
        entry.units.add(str(unit))
    entry.readings.append(_Reading(pid, float(quantity.value), _instant(obs.effectiveDateTime), order))


def _observations(entries: list[Any], refs: Mapping[str, str]) -> dict[tuple[str, str], _Code]:
    """Numeric Observations of the bundle's patients, grouped by (system, code)."""
    codes: dict[tuple[str, str], _Code] = {}
    for order, entry in enumerate(entries):
        obs = entry.resource
        if obs is None or obs.get_resource_type() != "Observation" or obs.subject is None:
            continue
        ref = obs.subject.reference or ""
        pid = refs.get(ref) or refs.get("/".join(ref.split("/")[-2:]))  # absolute URLs too
        if pid is not None:
            _add_observation(codes, obs, pid, order)
    for entry in codes.values():
        if len(entry.units) > 1:
            raise InvalidInput(
                f"Observations of code {entry.code!r} ({entry.system or 'no system'}) use several "
                f"units {sorted(entry.units)}; convert them to one unit before loading"
            )
    return codes


def _variable_names(keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """A distinct identifier-like name per code, e.g. ``loinc_8867_4``."""
    names: dict[tuple[str, str], str] = {}
    for system, code in sorted(keys):
        base = f"{_SYSTEM_PREFIXES.get(system, 'code')}_{_NON_WORD.sub('_', code)}"
        name, n = base, 1
        while name in names.values():
            n += 1
            name = f"{base}_{n}"
        names[(system, code)] = name
    return names


def _latest_values(entry: _Code, position: Mapping[str, int]) -> Array:
    """Per patient the latest reading (by effectiveDateTime, then bundle order); NaN if none."""
    values = np.full(len(position), np.nan)
    best: dict[str, _Reading] = {}
    for r in entry.readings:
        old = best.get(r.patient)
        if old is None or _rank(r) >= _rank(old):
            best[r.patient] = r
    for pid, reading in best.items():
        values[position[pid]] = reading.value
    return values


def _rank(reading: _Reading) -> tuple[bool, float, int]:
    """Sort key: dated readings after undated ones, then by time, then bundle order."""
    return reading.when is not None, reading.when or 0.0, reading.order


def load_fhir_bundle(
    path_or_dict: StrPath | Mapping[str, Any], *, example_dim: str = "patient"
) -> xr.Dataset:
    """Read a FHIR R4 Bundle of Patient and Observation resources as one row per patient.

    Parameters
    ----------
    path_or_dict
        A JSON file holding the Bundle, or the Bundle already parsed from JSON. It is
        validated with ``fhir.resources.R4B`` (FHIR R4B, compatible with R4).
    example_dim
        The name of the example dimension.

    Returns
    -------
    xarray.Dataset
        Coordinate ``example_dim`` (Patient ids, in bundle order), ``gender`` (str,
        ``""`` when missing), ``birth_year`` (float, NaN when missing) and one float
        variable per Observation code (first coding), named like ``loinc_8867_4``,
        holding ``valueQuantity.value``: the latest by ``effectiveDateTime`` when a
        patient has several (else the last in the bundle), NaN when none. Its attrs
        are ``units``, ``code``, ``system`` and ``display``. Observations without a
        quantity, a coding or a subject in the bundle are ignored.

    Raises
    ------
    InvalidInput
        Not a Bundle, not valid FHIR, no Patient, a repeated Patient id, or one code
        with values in several units.
    """
    bundle = _parse_bundle(_bundle_json(path_or_dict))
    entries = list(bundle.entry or [])
    patients, refs = _patients(entries)
    if not patients:
        raise InvalidInput("the FHIR Bundle holds no Patient resource; add the patients it describes")
    codes = _observations(entries, refs)
    names = _variable_names(codes)
    if example_dim in {"gender", "birth_year", *names.values()}:
        raise InvalidInput(f"example_dim {example_dim!r} is also a variable name; choose another")
    position = {pid: i for i, pid in enumerate(patients)}
    data_vars: dict[str, Any] = {
        "gender": (example_dim, np.asarray([g for g, _ in patients.values()], dtype=str)),
        "birth_year": (example_dim, np.asarray([y for _, y in patients.values()], dtype=float)),
    }
    for key, name in sorted(names.items(), key=lambda item: item[1]):
        entry = codes[key]
        attrs = {"units": next(iter(entry.units), ""), "code": entry.code, "system": entry.system}
        data_vars[name] = xr.Variable(
            example_dim, _latest_values(entry, position), {**attrs, "display": entry.display}
        )
    coord = np.asarray(list(patients), dtype=str)
    return xr.Dataset(data_vars, coords={example_dim: coord})



class FhirLoader(Loader):
    """FHIR R4 Bundles as JSON files: :func:`load_fhir_bundle`."""

    suffixes = (".json",)
    description = "a FHIR R4 Bundle of Patients and Observations (.json)"
    open = staticmethod(load_fhir_bundle)
