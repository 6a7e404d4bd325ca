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
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from fednb.demo import SEED, breast_cancer
from fednb.domain import Domain

__all__ = ["NAMES", "case_mix_split", "create", "dicom_files"]

NAMES = ["st-mary", "st-john", "general", "royal", "city"]
IMAGE_SIZE = (128, 128)
SCIENTIST_EPSILON = 30.0  # per dataset: room for the headless run and every tutorial, twice
_MODALITIES = {"CT", "MR", "NM"}


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
    """One hospital's images through the domain's DICOM folder loader."""
    from fednb.domain._loaders import load_dicom_folder

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
    for name, dom in doms.items():
        for peer, other in doms.items():
            if peer != name:
                dom.peers.trust(peer, other.identity.public)
        dom.close()
    return tokens
