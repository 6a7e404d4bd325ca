"""The demo's hospitals and their data: real, public medical sample sets.

- **breast-cancer**: the Wisconsin diagnostic breast cancer set (569 patients x 30
  features, ``y`` = 1 benign, 0 malignant), 80% for training split across the hospitals
  with a case-mix shift: the first hospital is a referral cancer centre that sees most
  malignant tumours, the last a screening centre that sees mostly benign ones (hospital
  ``i`` of ``n`` gets a share of the malignant cases proportional to ``n - i`` and of the
  benign ones proportional to ``i + 1``). The other 20% is the scientist's public test set.
- **diabetes**: disease progression one year after baseline (442 patients x 10
  standardised features), every ``n``-th patient at each hospital.
- **imaging**: pydicom's sample CT, MR and NM images (a handful of real scans, centre
  cropped or padded to 128 x 128), shared out among the hospitals.
- **gbsg2**: the German Breast Cancer Study Group 2 trial (686 patients with node-positive
  breast cancer; recurrence-free survival; lifelines' bundled copy), every patient at one
  hospital, with a case-mix shift like breast-cancer's: grade III tumours and many positive
  nodes go to the first hospitals. Its owners allow the study of notebook 09 by a
  ``fednb.stats`` template under disclosure control (:func:`add_study`).
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from fednb.demo import SEED, breast_cancer
from fednb.domain import Domain
from fednb.protocol import DisclosureRules

__all__ = ["GBSG2_LEVELS", "NAMES", "add_study", "case_mix_split", "create", "dicom_files", "gbsg2",
           "gbsg2_split", "has_gbsg2", "upgrade"]

NAMES = ["st-mary", "st-john", "general", "royal", "city"]
IMAGE_SIZE = (128, 128)
SCIENTIST_EPSILON = 30.0  # per dataset: room for the headless run and every tutorial, twice
_MODALITIES = {"CT", "MR", "NM"}
GBSG2_LEVELS = {"horTh": ["no", "yes"], "menostat": ["Pre", "Post"], "tgrade": ["I", "II", "III"]}
# the card's bounds: wide, public ranges (a trial's inclusion criteria and follow-up), not
# the data's own minima and maxima
_GBSG2_BOUNDS = {"age": (18.0, 90.0), "tsize": (0.0, 150.0), "pnodes": (0.0, 60.0),
                 "progrec": (0.0, 2500.0), "estrec": (0.0, 2500.0), "time": (0.0, 3650.0),
                 "cens": (0.0, 1.0)}
STUDY_TEMPLATE = "gbsg2-study"


def case_mix_split(train: xr.Dataset, n: int) -> list[xr.Dataset]:
    """Malignant cases concentrate in the first hospitals, benign ones in the last."""
    rng = np.random.default_rng(SEED)
    parts: list[list[int]] = [[] for _ in range(n)]
    y = train.y.values
    for label, weight in ((0, np.arange(n, 0, -1)), (1, np.arange(1, n + 1))):
        rows = rng.permutation(np.flatnonzero(y == label))
        cuts = (np.cumsum(weight / weight.sum())[:-1] * len(rows)).astype(int)
        for i, chunk in enumerate(np.split(rows, cuts)):
            parts[i].extend(chunk.tolist())
    return [train.isel(patient=sorted(p)) for p in parts]


def has_gbsg2() -> bool:
    """Whether lifelines, which ships GBSG2, is installed (``fednb[tutorials]``)."""
    return importlib.util.find_spec("lifelines") is not None


def gbsg2() -> pd.DataFrame:
    """GBSG2 as lifelines ships it: one row per patient, ``time`` in days to recurrence or
    death (``cens`` 1) or to the end of follow-up (``cens`` 0)."""
    from lifelines.datasets import load_gbsg2  # type: ignore[import-untyped]

    df = load_gbsg2()
    return df.assign(time=df["time"].astype(float), cens=df["cens"].astype(float))


def gbsg2_split(n: int) -> list[pd.DataFrame]:
    """Every GBSG2 patient at one of ``n`` hospitals: the sicker a patient (grade III, many
    positive nodes), the likelier the first hospitals, as referral centres see them."""
    df = gbsg2()
    rng = np.random.default_rng(SEED)
    sick = ((df["tgrade"] == "III").to_numpy() + np.minimum(df["pnodes"].to_numpy(), 10) / 10) / 2
    rank = np.arange(n)
    weight = sick[:, None] * (n - rank) + (1 - sick[:, None]) * (rank + 1)
    site = np.asarray([rng.choice(n, p=w / w.sum()) for w in weight])
    return [df.loc[site == k].reset_index(drop=True) for k in range(n)]


def _xr(df: pd.DataFrame) -> xr.Dataset:
    return xr.Dataset({c: ("patient", df[c].to_numpy().astype(str) if df[c].dtype == object
                           else df[c].to_numpy()) for c in df.columns})


def add_study(dom: Domain, part: pd.DataFrame, n: int) -> None:
    """GBSG2 and its owner's rules: exact statistics under disclosure control, and a
    template that approves the study's ``fednb.stats`` calls without a review each.

    The rules are the defaults (cells and subsets of at least 5 patients, at most one
    model parameter per 3 patients, pooled models over at least 3 hospitals, or all of a
    smaller demo) but for ``min_cell_count=1``: exact Kaplan-Meier curves and the pooled
    Cox model release how many events fell on each day, often 1. The owner allows that
    only because GBSG2 is a published trial whose rows anyone can download; with real
    patients she would keep 5 and the scientist would ask for a grid of times, the
    stratified Cox model or DP (docs/stats-domain.md).
    """
    dom.add_dataset("gbsg2", _xr(part), bounds={**_GBSG2_BOUNDS, **GBSG2_LEVELS},
                    units={"age": "years", "tsize": "mm", "progrec": "fmol/l", "estrec": "fmol/l",
                           "time": "days"},
                    description="GBSG2: node-positive breast cancer, recurrence-free survival "
                                "(this hospital's patients; lifelines' copy of the public trial). "
                                "Levels: " + "; ".join(f"{k} {', '.join(v)}"
                                                       for k, v in GBSG2_LEVELS.items()))
    policy = dom.policy  # an older demo's owner may have set rules for other datasets: keep them
    dom.policy.update(stats_protection={**policy.stats_protection, "gbsg2": "disclosure"},
                      disclosure={**policy.disclosure,
                                  "gbsg2": DisclosureRules(min_cell_count=1, min_sites=min(3, n))})
    dom.policy.templates.add({"name": STUDY_TEMPLATE, "datasets": ["gbsg2"], "scientists": ["scientist"],
                              "functions": ["describe", "crosstab", "quantiles", "glm", "kaplan_meier",
                                            "cox"],
                              "max_params": 12, "max_iterations": 50, "protection": "disclosure",
                              "release": "auto"}, reviewer="owner")


def _diabetes() -> xr.Dataset:
    from sklearn.datasets import load_diabetes

    dia = load_diabetes()
    return xr.Dataset({"x": (("patient", "feature"), dia.data), "progression": ("patient", dia.target)},
                      coords={"feature": [str(f) for f in dia.feature_names]})


def dicom_files() -> list[Path]:
    """pydicom's bundled 2-D CT, MR and NM sample images, one file per distinct image.

    Read from the package's own folder: ``pydicom.data.get_testdata_files`` would also
    try to download pydicom's larger set.
    """
    import pydicom
    from pydicom.data.data_manager import DATA_ROOT

    chosen: dict[str, Path] = {}
    for f in sorted(Path(DATA_ROOT, "test_files").glob("*.dcm")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(f)
                ok = ds.get("Modality") in _MODALITIES and ds.pixel_array.ndim == 2
            except Exception:  # pydicom raises many kinds on odd files (no decoder, bad VRs)
                ok = False
        uid = str(ds.get("SOPInstanceUID", f.name)) if ok else ""
        if ok and uid not in chosen:
            chosen[uid] = f
    return sorted(chosen.values())


def _imaging(files: list[Path]) -> xr.Dataset:
    """One hospital's images through the DICOM folder loader a domain uses."""
    from fednb.loaders import load_dicom_folder

    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            shutil.copy(f, Path(tmp) / f.name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_dicom_folder(tmp, fields=["Modality", "PatientSex"], size=IMAGE_SIZE)


def _add_imaging(dom: Domain, files: list[Path]) -> None:
    if not files:
        return
    images = _imaging(files)
    bounds: dict[str, Any] = {"pixels": (-2048.0, 65535.0), "Modality": sorted(_MODALITIES),
                              "PatientSex": ["", "F", "M", "O"]}
    dom.add_dataset("imaging", images, bounds=bounds,
                    units={"pixels": "stored value"},
                    description="Sample CT, MR and NM scans (pydicom's test images), 128 x 128")


def create(home: Path, n: int) -> dict[str, dict[str, str]]:
    """Create ``n`` hospital domains under ``home``; returns their owner and scientist tokens.

    The owners put each other on their secure-aggregation rosters (as they would after
    checking each other's identity out of band).
    """
    train, _ = breast_cancer()
    diabetes, images = _diabetes(), dicom_files()
    study = gbsg2_split(n) if has_gbsg2() else None
    tokens: dict[str, dict[str, str]] = {}
    doms: dict[str, Domain] = {}
    for i, (name, part) in enumerate(zip(NAMES[:n], case_mix_split(train, n), strict=True)):
        dom = doms[name] = Domain.create(home / name, name=name.replace("-", " ").title())
        tokens[name] = {"owner": dom.add_user("owner", role="owner"),
                        "scientist": dom.add_user("scientist", epsilon=SCIENTIST_EPSILON)}
        dom.policy.update(allow_no_dp=["scientist"])
        dom.add_dataset("breast-cancer", part, bounds={"x": (0.0, 5000.0), "y": (0, 1)},
                        description="Wisconsin diagnostic breast cancer (this hospital's patients)")
        dom.add_dataset("diabetes", diabetes.isel(patient=slice(i, None, n)),
                        bounds={"x": (-0.5, 0.5), "progression": (0.0, 400.0)},
                        description="Diabetes progression after one year")
        _add_imaging(dom, images[i::n])
        if study is not None:
            add_study(dom, study[i], n)
    for name, dom in doms.items():
        for peer, other in doms.items():
            if peer != name:
                dom.peers.trust(peer, other.identity.public)
        dom.close()
    return tokens


def upgrade(home: Path, names: list[str]) -> None:
    """Add what a demo made by an older fednb lacks (GBSG2 and its study template), so the
    tutorials written since run on it too; and GBSG2 once lifelines is installed."""
    if not has_gbsg2():
        return
    study = gbsg2_split(len(names))
    for name, part in zip(names, study, strict=True):
        dom = Domain.open(home / name)
        try:
            if "gbsg2" not in {c.name for c in dom.datasets()}:
                add_study(dom, part, len(names))
        finally:
            dom.close()
