"""The registry of loaders by format (fednb.loaders): built-ins, register(), entry points,
and a domain adding a dataset of a format registered at run time.

Data: scikit-learn's bundled diabetes table written as tab-separated text (a format no
built-in loader reads); real Domain on a real SQLite file; real entry points read by
importlib.metadata from a ``.dist-info`` folder on ``sys.path``.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from sklearn.datasets import load_diabetes

from fednb import loaders
from fednb.domain import Domain
from fednb.domain._datasets import load_private
from fednb.errors import InvalidInput
from fednb.loaders import Loader, _registry

BUILTIN = {"csv", "dicom", "fhir", "netcdf", "parquet", "zarr"}


class TsvLoader(Loader):
    """Tab-separated tables, one row per patient: a format fednb does not ship."""

    description = "a tab-separated table (.tsv)"

    def __init__(self, suffix: str) -> None:
        self.suffixes = (suffix,)
        self.opened: list[Path] = []

    def open(self, path: Path, *, index: str | None = None,
             example_dim: str = "patient") -> xr.Dataset:
        self.opened.append(path)
        frame = pd.read_csv(path, sep="\t", float_precision="round_trip")
        if index is not None:
            frame = frame.set_index(index)
        ds: xr.Dataset = xr.Dataset.from_dataframe(frame.rename_axis(example_dim))
        return ds


@pytest.fixture(scope="module")
def diabetes() -> pd.DataFrame:
    return load_diabetes(as_frame=True).frame


@pytest.fixture
def tsv(tmp_path: Path) -> Iterator[tuple[str, TsvLoader]]:
    """A TSV loader registered under a name and suffix no other test uses."""
    tag = uuid.uuid4().hex[:8]
    name, loader = f"tsv-{tag}", TsvLoader(f".tsv{tag}")
    loaders.register(name, loader)
    yield name, loader
    loaders.unregister(name)


def test_the_built_in_formats_are_registered_and_guessed_by_path(tmp_path: Path) -> None:
    assert set(loaders.formats()) >= BUILTIN
    assert list(loaders.formats()) == sorted(loaders.formats())
    for fmt in BUILTIN:
        assert isinstance(loaders.get(fmt), Loader)
    assert loaders.get("CSV") is loaders.get("csv")  # names are case-blind, loaders made once
    assert loaders.get("csv").options() == ["index", "example_dim", "columns"]
    assert loaders.get("zarr").options() == ["example_dim", "max_bytes"]
    for name, fmt in {"a.nc": "netcdf", "a.H5": "netcdf", "a.csv": "csv", "a.pq": "parquet",
                      "a.json": "fhir"}.items():
        (tmp_path / name).write_bytes(b"")
        assert loaders.guess_format(tmp_path / name) == fmt
    (tmp_path / "store.zarr").mkdir()
    assert loaders.guess_format(tmp_path / "store.zarr") == "zarr"
    (tmp_path / "scans" / "a").mkdir(parents=True)
    (tmp_path / "scans" / "a" / "x.dcm").write_bytes(b"")
    assert loaders.guess_format(tmp_path / "scans") == "dicom"


def test_importing_the_registry_imports_no_format_library(tmp_path: Path) -> None:
    netcdf = _touch(tmp_path / "a.nc")
    code = ("import sys, pathlib, fednb.loaders, fednb.domain._datasets; "
            "fmt = fednb.loaders.guess_format(pathlib.Path(sys.argv[1])); "
            "print(fmt, sorted(m for m in ('pydicom', 'fhir.resources', 'pyarrow.parquet') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(netcdf)], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "netcdf []"  # the first loader asked recognised it


def test_a_registered_format_is_guessed_by_its_suffix_and_loaded(
    tmp_path: Path, tsv: tuple[str, TsvLoader], diabetes: pd.DataFrame
) -> None:
    name, loader = tsv
    path = tmp_path / f"diabetes{loader.suffixes[0]}"
    diabetes.to_csv(path, sep="\t", index=False)
    assert name in loaders.formats()
    assert loaders.get(name) is loader
    assert loaders.guess_format(path) == name
    ds = loaders.load(path)
    assert ds.sizes == {"patient": len(diabetes)}
    np.testing.assert_array_equal(ds["bmi"].values, diabetes["bmi"].to_numpy())
    with pytest.raises(InvalidInput, match=rf"options of '{name}' data .*\['index', 'example_dim'\]"):
        loaders.load(path, columns=["bmi"])
    private, source = load_private(path, example_dim="subject")  # the domain's way in
    assert source == loader.suffixes[0].lstrip(".") and private.sizes == {"subject": len(diabetes)}
    with pytest.raises(InvalidInput, match="from its extension") as info:
        loaders.load(_touch(tmp_path / "table.xyz"))
    assert name in str(info.value) and loader.suffixes[0] in str(info.value)


def _touch(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def test_a_domain_adds_a_dataset_of_a_registered_format(
    tmp_path: Path, tsv: tuple[str, TsvLoader], diabetes: pd.DataFrame
) -> None:
    name, loader = tsv
    table = diabetes.assign(pid=[f"P{i:03d}" for i in range(len(diabetes))])
    path = tmp_path / f"diabetes{loader.suffixes[0]}"
    table.to_csv(path, sep="\t", index=False)
    bounds: dict[str, Any] = {c: (-1.0, 1.0) for c in diabetes.columns}
    bounds["target"] = (0.0, 400.0)
    dom = Domain.create(tmp_path / "home", name="Registry Hospital")
    try:
        guessed = dom.add_dataset("diabetes", path, bounds=bounds, index="pid")
        named = dom.add_dataset("diabetes-named", tmp_path / _copy(path, "plain.txt"),
                                format=name.upper(), bounds=bounds, index="pid")
        assert loader.opened == [path, tmp_path / "plain.txt"]
        assert guessed.num_examples == named.num_examples == len(diabetes)
        assert guessed.example_dim == "patient"
        assert set(guessed.variables) == set(diabetes.columns)
        assert guessed.source == loader.suffixes[0].lstrip(".") and named.source == name.upper()
        private = xr.open_zarr(dom.private_path("diabetes")).load()
        np.testing.assert_array_equal(private["target"].values, diabetes["target"].to_numpy())
        assert private["patient"].values.tolist() == table["pid"].tolist()
        mock = dom.mock("diabetes")
        assert set(mock.data_vars) == set(diabetes.columns)
        assert float(mock["target"].min()) >= 0.0 and float(mock["target"].max()) <= 400.0
        assert [c.name for c in dom.datasets()] == ["diabetes", "diabetes-named"]
    finally:
        dom.close()


def _copy(src: Path, name: str) -> str:
    (src.parent / name).write_bytes(src.read_bytes())
    return name


def test_a_registered_loader_never_takes_over_a_built_in_suffix(tmp_path: Path) -> None:
    name = f"csv-{uuid.uuid4().hex[:8]}"
    loaders.register(name, TsvLoader(".csv"))
    try:
        assert loaders.guess_format(_touch(tmp_path / "t.csv")) == "csv"
    finally:
        loaders.unregister(name)
    assert name not in loaders.formats()


def test_register_refuses_bad_names_taken_names_and_non_loaders() -> None:
    with pytest.raises(InvalidInput, match="already has a loader"):
        loaders.register("csv", TsvLoader(".tsv"))
    with pytest.raises(InvalidInput, match="lower case"):
        loaders.register("My Format", TsvLoader(".tsv"))
    with pytest.raises(TypeError, match="Loader instance"):
        loaders.register("tsv-not-a-loader", TsvLoader)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="no loader of format 'nope'"):
        loaders.unregister("nope")
    with pytest.raises(InvalidInput, match="unknown format 'nope'"):
        loaders.get("nope")


# -- entry points, as installed packages declare them -----------------------------------
def _install_plugin(root: Path, module: str, lines: dict[str, str], code: str) -> None:
    """A module and a .dist-info folder declaring ``lines`` in the group fednb.loaders."""
    (root / f"{module}.py").write_text(code)
    info = root / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    body = "".join(f"{k} = {v}\n" for k, v in lines.items())
    (info / "entry_points.txt").write_text(f"[{loaders.ENTRY_POINT_GROUP}]\n{body}")


PLUGIN = '''
import pandas as pd, xarray as xr
from fednb.loaders import Loader

class SemicolonLoader(Loader):
    suffixes = (".ssv",)
    def open(self, path, *, example_dim="patient"):
        frame = pd.read_csv(path, sep=";")
        return xr.Dataset.from_dataframe(frame.rename_axis(example_dim))

NOT_A_LOADER = 42
'''


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Entry points are read once a process: let this test read them again, then restore."""
    monkeypatch.setattr(_registry, "_entries", dict(_registry._entries))
    monkeypatch.setattr(_registry, "_plugins_found", False)


@pytest.mark.usefixtures("fresh_registry")
def test_entry_points_add_formats_lazily_and_never_replace_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, diabetes: pd.DataFrame
) -> None:
    module = f"fednb_plugin_{uuid.uuid4().hex[:8]}"
    ssv, broken, odd = (f"{p}-{module[-8:]}" for p in ("ssv", "broken", "odd"))
    _install_plugin(tmp_path, module, {
        ssv: f"{module}:SemicolonLoader", broken: f"{module}_missing:Loader",
        odd: f"{module}:NOT_A_LOADER", "csv": f"{module}:SemicolonLoader",
    }, PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(UserWarning, match="declares format 'csv', which is taken"):
        names = loaders.formats()
    assert {ssv, broken, odd} <= set(names)
    assert module not in sys.modules  # declared, not imported, until asked for
    assert type(loaders.get("csv")).__name__ == "CsvLoader"
    path = tmp_path / "diabetes.ssv"
    diabetes.to_csv(path, sep=";", index=False)
    assert loaders.load(path, format=ssv)["age"].size == len(diabetes)
    assert module in sys.modules
    with pytest.raises(InvalidInput, match=f"format '{broken}'.*fix or uninstall"):
        loaders.get(broken)
    with pytest.raises(InvalidInput, match=f"format '{odd}'.*not a fednb.loaders.Loader"):
        loaders.get(odd)
