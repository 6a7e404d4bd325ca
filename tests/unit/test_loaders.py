"""Tests of the built-in loaders of fednb.loaders on real data.

Tables come from scikit-learn's bundled Wisconsin breast cancer and diabetes sets,
images from pydicom's bundled test files (never downloaded), FHIR from a small
hand-written R4 Bundle.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
import pytest
import xarray as xr
from pydicom.data import get_testdata_file
from sklearn.datasets import load_breast_cancer, load_diabetes

from fednb.errors import InvalidInput
from fednb.loaders import (
    formats,
    load,
    load_csv,
    load_dicom_folder,
    load_fhir_bundle,
    load_netcdf,
    load_parquet,
    load_zarr,
)

HAVE_H5PY = importlib.util.find_spec("h5py") is not None
needs_h5py = pytest.mark.skipif(
    not HAVE_H5PY,
    reason="NetCDF4/HDF5 through h5netcdf needs h5py, which is not installed",
)

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cancer() -> pd.DataFrame:
    """The breast cancer table with a string id column in front."""
    frame = load_breast_cancer(as_frame=True).frame
    frame.insert(0, "patient_id", [f"P{i:04d}" for i in range(len(frame))])
    return frame


@pytest.fixture
def cancer_csv(tmp_path: Path, cancer: pd.DataFrame) -> Path:
    path = tmp_path / "cancer.csv"
    cancer.to_csv(path, index=False)
    return path


@pytest.fixture
def cancer_parquet(tmp_path: Path, cancer: pd.DataFrame) -> Path:
    path = tmp_path / "cancer.parquet"
    cancer.to_parquet(path, index=False)
    return path


@pytest.fixture(scope="module")
def diabetes() -> xr.Dataset:
    """The diabetes set as a dataset along ``patient``, with attributes."""
    frame = load_diabetes(as_frame=True).frame.rename_axis("patient")
    ds = xr.Dataset.from_dataframe(frame)
    ds["patient"] = ds["patient"].astype(np.int32)  # NetCDF3 has no int64
    ds.attrs["title"] = "diabetes"
    ds["target"].attrs["long_name"] = "disease progression after one year"
    return ds


def _testfile(name: str) -> Path:
    """A DICOM file bundled with pydicom (no download)."""
    found = get_testdata_file(name, download=False)
    assert isinstance(found, str), f"pydicom does not bundle {name}"
    return Path(found)


def _dicom_folder(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(_testfile(name), folder / name)
    return folder


MR_SAME_SHAPE = ["MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm"]


# --------------------------------------------------------------------------- CSV, Parquet


def _assert_table(ds: xr.Dataset, frame: pd.DataFrame, *, exact: bool) -> None:
    """``ds`` holds the columns of ``frame`` (but the id) along ``patient``."""
    assert ds.sizes == {"patient": len(frame)}
    assert list(ds.data_vars) == [c for c in frame.columns if c != "patient_id"]
    for name in ds.data_vars:
        assert ds[name].dims == ("patient",)
        if exact:
            np.testing.assert_array_equal(ds[name].values, frame[name].to_numpy())
        else:
            np.testing.assert_allclose(ds[name].values, frame[name].to_numpy(), rtol=1e-15)


def test_csv_with_index(cancer_csv: Path, cancer: pd.DataFrame) -> None:
    ds = load_csv(cancer_csv, index="patient_id")
    _assert_table(ds, cancer, exact=False)
    assert ds["patient"].dtype.kind == "U"
    assert ds["patient"].values.tolist() == cancer["patient_id"].tolist()
    assert ds["target"].dtype.kind == "i"
    assert ds["mean radius"].dtype == np.float64


def test_csv_without_index_keeps_strings(cancer_csv: Path, cancer: pd.DataFrame) -> None:
    ds = load_csv(cancer_csv, example_dim="subject")
    assert ds.sizes == {"subject": len(cancer)}
    np.testing.assert_array_equal(ds["subject"].values, np.arange(len(cancer)))
    assert ds["patient_id"].dtype.kind == "U"
    assert ds["patient_id"].values.tolist() == cancer["patient_id"].tolist()


def test_csv_column_subset(cancer_csv: Path, cancer: pd.DataFrame) -> None:
    ds = load_csv(cancer_csv, index="patient_id", columns=["target", "mean area"])
    assert list(ds.data_vars) == ["target", "mean area"]
    np.testing.assert_array_equal(ds["target"].values, cancer["target"].to_numpy())
    assert ds["patient"].values[0] == "P0000"


def test_csv_gaps(tmp_path: Path) -> None:
    path = tmp_path / "gaps.csv"
    path.write_text("id,sex,age,smoker\na,F,61,true\nb,,,false\nc,M,47,true\n")
    ds = load_csv(path, index="id")
    assert ds["sex"].values.tolist() == ["F", "", "M"]
    assert ds["sex"].dtype.kind == "U"
    np.testing.assert_array_equal(ds["age"].values, [61.0, np.nan, 47.0])
    assert ds["smoker"].dtype == bool


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"index": "nope"}, "'nope'"),
        ({"columns": ["target", "nope"]}, "'nope'"),
        ({"index": "target"}, "repeats ids"),
    ],
)
def test_csv_bad_options(cancer_csv: Path, options: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle):
        load_csv(cancer_csv, **options)


def test_csv_column_named_like_example_dim(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("patient,x\np1,1\np2,2\n")
    with pytest.raises(InvalidInput, match="index='patient'"):
        load_csv(path)
    assert load_csv(path, index="patient")["patient"].values.tolist() == ["p1", "p2"]


def test_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        load_csv(tmp_path / "absent.csv")


def test_parquet_with_index(cancer_parquet: Path, cancer: pd.DataFrame) -> None:
    ds = load_parquet(cancer_parquet, index="patient_id")
    _assert_table(ds, cancer, exact=True)
    assert ds["patient"].values.tolist() == cancer["patient_id"].tolist()


def test_parquet_stored_index_and_subset(tmp_path: Path, cancer: pd.DataFrame) -> None:
    path = tmp_path / "indexed.parquet"
    cancer.set_index("patient_id").to_parquet(path)
    ds = load_parquet(path, index="patient_id", columns=["worst area"])
    assert list(ds.data_vars) == ["worst area"]
    assert ds["patient"].values.tolist() == cancer["patient_id"].tolist()
    np.testing.assert_array_equal(ds["worst area"].values, cancer["worst area"].to_numpy())
    plain = load_parquet(path)
    np.testing.assert_array_equal(plain["patient"].values, np.arange(len(cancer)))
    assert "patient_id" in plain.data_vars


def test_parquet_missing_column(cancer_parquet: Path) -> None:
    with pytest.raises(InvalidInput, match="no column 'nope'"):
        load_parquet(cancer_parquet, columns=["nope"])


# --------------------------------------------------------------------------- NetCDF, Zarr


@pytest.mark.parametrize("engine", ["scipy", pytest.param("h5netcdf", marks=needs_h5py)])
def test_netcdf_roundtrip(tmp_path: Path, diabetes: xr.Dataset, engine: str) -> None:
    path = tmp_path / f"diabetes_{engine}.nc"
    diabetes.to_netcdf(path, engine=engine)
    ds = load_netcdf(path, example_dim="patient")
    xr.testing.assert_identical(ds, diabetes)
    path.unlink()  # loaded into memory: the file is no longer needed
    assert float(ds["bmi"].sum()) == pytest.approx(float(diabetes["bmi"].sum()))


def test_netcdf_rejects(tmp_path: Path, diabetes: xr.Dataset) -> None:
    fake = tmp_path / "fake.nc"
    fake.write_text("a,b\n1,2\n")
    with pytest.raises(InvalidInput, match="not a NetCDF file"):
        load_netcdf(fake)
    real = tmp_path / "real.nc"
    diabetes.to_netcdf(real, engine="scipy")
    with pytest.raises(InvalidInput, match="no dimension 'image'"):
        load_netcdf(real, example_dim="image")


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_roundtrip(tmp_path: Path, diabetes: xr.Dataset, zarr_format: int) -> None:
    path = tmp_path / "diabetes.zarr"
    diabetes.to_zarr(path, zarr_format=zarr_format)
    ds = load_zarr(path, example_dim="patient")
    xr.testing.assert_identical(ds, diabetes)
    assert all(isinstance(v.data, np.ndarray) for v in ds.variables.values())


def test_zarr_rejects_plain_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="Zarr store"):
        load_zarr(tmp_path)


# --------------------------------------------------------------------------- DICOM


def test_dicom_same_shape_stack(tmp_path: Path) -> None:
    folder = _dicom_folder(tmp_path / "mr", MR_SAME_SHAPE)
    ds = load_dicom_folder(folder)
    names = sorted(MR_SAME_SHAPE)
    assert ds["pixels"].dims == ("image", "row", "col")
    assert ds["pixels"].shape == (3, 64, 64)
    # the three files share one SOPInstanceUID, so the file names are the coordinate
    assert ds["image"].values.tolist() == names
    for i, name in enumerate(names):
        expected = pydicom.dcmread(folder / name).pixel_array
        np.testing.assert_array_equal(ds["pixels"].values[i], expected)
    assert ds["pixels"].dtype.isnative
    assert ds.attrs["n_skipped_files"] == 0


def test_dicom_mixed_shapes_need_size(tmp_path: Path) -> None:
    folder = _dicom_folder(tmp_path / "mixed", ["CT_small.dcm", "MR_small.dcm"])
    with pytest.raises(InvalidInput, match=r"size=\(rows, cols\)") as info:
        load_dicom_folder(folder)
    assert "(64, 64)" in str(info.value) and "(128, 128)" in str(info.value)


def test_dicom_size_crops_and_pads(tmp_path: Path) -> None:
    folder = _dicom_folder(tmp_path / "mixed", ["CT_small.dcm", "MR_small.dcm"])
    ds = load_dicom_folder(folder, size=(100, 90))
    assert ds["pixels"].shape == (2, 100, 90)
    ct = pydicom.dcmread(folder / "CT_small.dcm")
    mr = pydicom.dcmread(folder / "MR_small.dcm")
    assert ds["image"].values.tolist() == [ct.SOPInstanceUID, mr.SOPInstanceUID]
    pixels = ds["pixels"].values
    np.testing.assert_array_equal(pixels[0], ct.pixel_array[14:114, 19:109])  # centre crop
    np.testing.assert_array_equal(pixels[1, 18:82, 13:77], mr.pixel_array)  # centre pad
    assert not pixels[1, :18].any() and not pixels[1, :, :13].any()


@pytest.mark.parametrize("size", [(64,), (0, 10), (10.5, 10)])
def test_dicom_bad_size(tmp_path: Path, size: Any) -> None:
    folder = _dicom_folder(tmp_path / "mr", ["MR_small.dcm"])
    with pytest.raises(InvalidInput, match="size must be"):
        load_dicom_folder(folder, size=size)


def test_dicom_header_fields(tmp_path: Path) -> None:
    folder = _dicom_folder(tmp_path / "mixed", ["CT_small.dcm", "MR_small.dcm"])
    fields = ["PatientSex", "Modality", "Rows", "SliceThickness", "KVP"]
    ds = load_dicom_folder(folder, fields=fields, size=(64, 64))
    assert ds["PatientSex"].values.tolist() == ["O", "F"]
    assert ds["Modality"].values.tolist() == ["CT", "MR"]
    assert ds["Modality"].dtype.kind == "U"
    np.testing.assert_array_equal(ds["Rows"].values, [128.0, 64.0])
    np.testing.assert_allclose(ds["SliceThickness"].values, [5.0, 0.8])
    np.testing.assert_array_equal(ds["KVP"].values, [120.0, np.nan])  # MR has no KVP
    for name in ("Rows", "SliceThickness", "KVP"):
        assert ds[name].dtype == np.float64
    assert ds["SliceThickness"].attrs["units"] == "mm"
    assert ds["KVP"].attrs["units"] == "kV"
    assert ds["Modality"].attrs["long_name"] == "Modality"


def test_dicom_unknown_field(tmp_path: Path) -> None:
    folder = _dicom_folder(tmp_path / "mr", ["MR_small.dcm"])
    with pytest.raises(InvalidInput, match="'PatientShoeSize' is not a DICOM"):
        load_dicom_folder(folder, fields=["PatientShoeSize"])


def test_dicom_skips_what_it_cannot_use(tmp_path: Path) -> None:
    folder = _dicom_folder(tmp_path / "mixed", ["MR_small.dcm"])
    _dicom_folder(folder / "series2", ["MR_small_implicit.dcm"])  # found recursively
    (folder / "notes.txt").write_text("not an image")
    shutil.copy(_testfile("rtplan.dcm"), folder / "rtplan.dcm")  # DICOM without pixels
    shutil.copy(_testfile("SC_rgb_small_odd.dcm"), folder / "rgb.dcm")  # colour
    ds = load_dicom_folder(folder, example_dim="scan")
    assert ds["scan"].values.tolist() == ["MR_small.dcm", "series2/MR_small_implicit.dcm"]
    assert ds["pixels"].dims == ("scan", "row", "col")
    assert ds.attrs["n_skipped_files"] == 3


def test_dicom_nothing_usable(tmp_path: Path) -> None:
    folder = tmp_path / "none"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    shutil.copy(_testfile("rtplan.dcm"), folder / "rtplan.dcm")
    with pytest.raises(InvalidInput, match="no usable DICOM image") as info:
        load_dicom_folder(folder)
    assert "notes.txt" in str(info.value)
    with pytest.raises(InvalidInput, match="not a folder"):
        load_dicom_folder(folder / "notes.txt")


# --------------------------------------------------------------------------- FHIR

HEART_RATE = ("8867-4", "Heart rate", "/min")
BODY_WEIGHT = ("29463-7", "Body weight", "kg")


def _observation(
    oid: str, subject: str, what: tuple[str, str, str], value: float, when: str | None
) -> dict[str, Any]:
    code, display, unit = what
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
        "subject": {"reference": subject},
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org"},
    }
    if when is not None:
        resource["effectiveDateTime"] = when
    return {"fullUrl": f"urn:uuid:{oid}", "resource": resource}


@pytest.fixture
def bundle() -> dict[str, Any]:
    """3 patients; p1 has two heart rates (the later one first); p3 no heart rate."""
    patients = [
        {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-05-01"},
        {"resourceType": "Patient", "id": "p2", "gender": "male", "birthDate": "1985"},
        {"resourceType": "Patient", "id": "p3"},
    ]
    observations = [
        _observation("o1", "Patient/p1", HEART_RATE, 80, "2022-06-01T10:00:00+02:00"),
        _observation("o2", "Patient/p1", HEART_RATE, 72, "2021-01-01"),
        _observation("o3", "Patient/p2", HEART_RATE, 65, "2021-03-04T08:00:00Z"),
        _observation("o4", "Patient/p1", BODY_WEIGHT, 70.5, "2021-01-01"),
        _observation("o5", "Patient/p2", BODY_WEIGHT, 82, None),
        _observation("o6", "Patient/p3", BODY_WEIGHT, 60.25, "2020-02"),
        _observation("o7", "Patient/ghost", BODY_WEIGHT, 99, "2020-02-02"),  # not in bundle
    ]
    entries = [{"fullUrl": f"urn:uuid:{p['id']}", "resource": p} for p in patients]
    return {"resourceType": "Bundle", "type": "collection", "entry": entries + observations}


def test_fhir_bundle(bundle: dict[str, Any]) -> None:
    ds = load_fhir_bundle(bundle)
    assert ds.sizes == {"patient": 3}
    assert ds["patient"].values.tolist() == ["p1", "p2", "p3"]
    assert ds["gender"].values.tolist() == ["female", "male", ""]
    np.testing.assert_array_equal(ds["birth_year"].values, [1970.0, 1985.0, np.nan])
    assert sorted(ds.data_vars) == ["birth_year", "gender", "loinc_29463_7", "loinc_8867_4"]
    # the later heart rate wins although it comes first; p3 has none
    np.testing.assert_array_equal(ds["loinc_8867_4"].values, [80.0, 65.0, np.nan])
    np.testing.assert_array_equal(ds["loinc_29463_7"].values, [70.5, 82.0, 60.25])
    assert ds["loinc_8867_4"].attrs == {
        "units": "/min",
        "code": "8867-4",
        "system": "http://loinc.org",
        "display": "Heart rate",
    }
    assert ds["loinc_29463_7"].attrs["units"] == "kg"


def test_fhir_last_wins_without_dates(bundle: dict[str, Any]) -> None:
    for entry in bundle["entry"]:
        entry["resource"].pop("effectiveDateTime", None)
    ds = load_fhir_bundle(bundle, example_dim="subject")
    np.testing.assert_array_equal(ds["loinc_8867_4"].values, [72.0, 65.0, np.nan])
    assert ds["loinc_8867_4"].dims == ("subject",)


def test_fhir_from_file_via_load(tmp_path: Path, bundle: dict[str, Any]) -> None:
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle))
    xr.testing.assert_identical(load(path), load_fhir_bundle(bundle))


def test_fhir_rejects(tmp_path: Path, bundle: dict[str, Any]) -> None:
    patient = bundle["entry"][0]["resource"]
    with pytest.raises(InvalidInput, match="'Bundle', got 'Patient'"):
        load_fhir_bundle(patient)
    broken = copy.deepcopy(bundle)
    del broken["entry"][3]["resource"]["status"]  # required in an Observation
    with pytest.raises(InvalidInput, match="not valid FHIR"):
        load_fhir_bundle(broken)
    mixed = copy.deepcopy(bundle)
    mixed["entry"][5]["resource"]["valueQuantity"]["unit"] = "beats/min"
    with pytest.raises(InvalidInput, match="several units"):
        load_fhir_bundle(mixed)
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(InvalidInput, match="as JSON"):
        load_fhir_bundle(path)


# --------------------------------------------------------------------------- dispatch


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_load_dispatches_every_format(
    tmp_path: Path,
    cancer: pd.DataFrame,
    cancer_csv: Path,
    cancer_parquet: Path,
    diabetes: xr.Dataset,
) -> None:
    assert {"csv", "dicom", "fhir", "netcdf", "parquet", "zarr"} <= set(formats())
    xr.testing.assert_identical(
        load(cancer_csv, index="patient_id"), load_csv(cancer_csv, index="patient_id")
    )
    xr.testing.assert_identical(load(cancer_parquet), load_parquet(cancer_parquet))
    netcdf = {".nc": "scipy", ".cdf": "scipy"}
    if HAVE_H5PY:
        netcdf |= {".nc4": "h5netcdf", ".h5": "h5netcdf"}
    for suffix, engine in netcdf.items():
        path = tmp_path / f"diabetes{suffix}"
        diabetes.to_netcdf(path, engine=engine)
        xr.testing.assert_identical(load(path), diabetes)
    diabetes.to_zarr(tmp_path / "diabetes.zarr")
    diabetes.to_zarr(tmp_path / "store_v2", zarr_format=2)  # found by its .zgroup
    for store in ("diabetes.zarr", "store_v2"):
        xr.testing.assert_identical(load(tmp_path / store), diabetes)
    folder = _dicom_folder(tmp_path / "mr", MR_SAME_SHAPE)
    assert load(folder, fields=["Modality"])["pixels"].shape == (3, 64, 64)


def test_load_explicit_format(tmp_path: Path, cancer: pd.DataFrame) -> None:
    path = tmp_path / "cancer.txt"
    cancer.to_csv(path, index=False)
    ds = load(path, format="CSV", index="patient_id", columns=["target"])
    assert list(ds.data_vars) == ["target"]
    plain = _dicom_folder(tmp_path / "series", ["MR_small.dcm"])
    (plain / "MR_small.dcm").rename(plain / "IM0001")  # DICOM files often lack a suffix
    with pytest.raises(InvalidInput, match="format='dicom'"):
        load(plain)
    assert load(plain, format="dicom")["pixels"].shape == (1, 64, 64)


def test_load_rejects(tmp_path: Path, cancer_csv: Path) -> None:
    sheet = tmp_path / "table.xlsx"
    sheet.write_bytes(b"PK\x03\x04")
    with pytest.raises(InvalidInput, match="format= one of") as info:
        load(sheet)
    assert all(fmt in str(info.value) for fmt in formats())
    with pytest.raises(InvalidInput, match="unknown format 'excel'"):
        load(sheet, format="excel")
    with pytest.raises(InvalidInput, match="options of 'csv'"):
        load(cancer_csv, fields=["Modality"])
    with pytest.raises(InvalidInput, match="does not exist"):
        load(tmp_path / "absent.csv")


def test_a_dicom_folder_loads_the_same_by_name_and_through_the_registry(tmp_path: Path) -> None:
    """The demo (fednb._demo_data) reads its images with ``load_dicom_folder``, header
    fields and a size; ``load(format="dicom")``, which the domain uses, gives the same."""
    from fednb import loaders

    folder = _dicom_folder(tmp_path / "mr", MR_SAME_SHAPE)
    opts: dict[str, Any] = {"fields": ["Modality", "PatientSex"], "size": (32, 48)}
    direct = loaders.load_dicom_folder(folder, **opts)
    xr.testing.assert_identical(load(folder, format="dicom", **opts), direct)
    assert direct["pixels"].shape == (3, 32, 48)
    assert list(direct["Modality"].values) == ["MR"] * 3
    assert loaders.max_load_bytes() > 0


# -- what registration tells the owner, and what a synthesised mock carries --------------
def _with_private_attrs() -> xr.Dataset:
    ds = xr.Dataset(
        {"age": ("patient", np.array([34.0, np.nan, 150.0, np.inf, 50.0]),
                 {"units": "years", "long_name": "age at admission", "actual_range": [34.0, 150.0],
                  "comment": "MRN 0042 recorded as 150"}),
         "note": ("patient", np.arange(5.0), {"description": "a code"})},
        coords={"feature": ("feature", ["a"], {"comment": "from MRN list", "units": "1"})},
        attrs={"title": "ward 3", "history": "exported by J. Smith", "description": "admissions"})
    return ds


def test_a_synthesised_mock_carries_only_whitelisted_attributes() -> None:
    from fednb.domain._datasets import MOCK_ATTRS, synthesise_mock

    mock = synthesise_mock(_with_private_attrs(), {"age": (0.0, 120.0), "note": (0.0, 10.0)}, "patient")
    assert mock["age"].attrs == {"units": "years", "long_name": "age at admission"}
    assert mock["note"].attrs == {"description": "a code"}
    assert mock["feature"].attrs == {"units": "1"}
    assert set(mock.attrs) == {"description", "fednb_mock"}
    assert set(MOCK_ATTRS) == {"units", "long_name", "description"}


def test_validate_private_reports_missing_infinite_and_out_of_bounds_values() -> None:
    from fednb.domain._datasets import validate_private

    found = validate_private(_with_private_attrs(), {"age": (0.0, 120.0)})
    text = "\n".join(found)
    assert "'age': 1 missing (NaN)" in text
    assert "'age': 1 infinite" in text
    assert "'age': 1 values outside the declared bounds [0, 120]" in text
    assert "'note': no declared bounds" in text
    assert validate_private(xr.Dataset({"v": ("patient", [1.0, 2.0])}), {"v": (0.0, 5.0)}) == []
