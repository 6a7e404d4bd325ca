"""Serving: TLS, the sandbox fallback, datasets from files, policy caps."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydicom.data import get_testdata_file

import fednb
from fednb.domain import Domain
from fednb.domain.runner import bwrap_available
from fednb.errors import SandboxUnavailable
from tests.conftest import BC_BOUNDS, breast_cancer_dataset


def self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    certfile, keyfile = tmp / "cert.pem", tmp / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return certfile, keyfile


def small_domain(home: Path) -> tuple[Domain, str, str]:
    dom = Domain.create(home, name="Small")
    owner, alice = dom.add_user("olivia", role="owner"), dom.add_user("alice")
    dom.policy.update(allow_no_dp=["alice"])
    dom.add_dataset("bc", breast_cancer_dataset(), bounds=BC_BOUNDS)
    return dom, owner, alice


@fednb.remote
def n_patients(data):
    return np.asarray(data.sizes["patient"])


def test_tls_serving(tmp_path: Path) -> None:
    certfile, keyfile = self_signed(tmp_path)
    dom, _, alice = small_domain(tmp_path / "h")
    with dom.serve(port=0, certfile=str(certfile), keyfile=str(keyfile)) as server:
        assert server.url.startswith("https://")
        h = fednb.connect(server.url, token=alice, verify=str(certfile))
        assert h.me.name == "alice"
        with pytest.raises(fednb.errors.ConnectionFailed):
            fednb.connect(server.url, token=alice)  # an unknown CA is refused


def test_without_bubblewrap_private_runs_are_refused_unless_insecure_demo(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # no bwrap on PATH: a machine without bubblewrap
    bwrap_available.cache_clear()
    try:
        dom, owner, alice = small_domain(tmp_path / "h")
        with dom.serve(port=0) as server:
            assert fednb.connect(server.url, token=alice).info.sandbox == "unavailable"
            req = n_patients.request(fednb.connect(server.url, token=alice), "bc")
            fednb.connect(server.url, token=owner).requests.get(req.id).approve()
            with pytest.raises(SandboxUnavailable, match="insecure-demo"):
                req.run()
        with Domain.open(tmp_path / "h").serve(port=0, insecure_demo=True) as server:
            with pytest.warns(UserWarning, match="WITHOUT a sandbox"):
                h = fednb.connect(server.url, token=alice)
            assert h.info.sandbox == "insecure-demo"
            run = h.requests.get(req.id).run()
            assert run.wait(120).status == "succeeded"
    finally:
        bwrap_available.cache_clear()


def test_datasets_from_csv_and_dicom_files(tmp_path: Path) -> None:
    dom = Domain.create(tmp_path / "h", name="Files")
    frame = breast_cancer_dataset().x.to_pandas()
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    frame.insert(0, "patient_id", [f"p{i}" for i in range(len(frame))])
    frame.to_csv(tmp_path / "wdbc.csv", index=False)
    cols = [c for c in frame.columns if c != "patient_id"]
    card = dom.add_dataset("wdbc", tmp_path / "wdbc.csv", index="patient_id",
                           bounds={c: (0.0, 5000.0) for c in cols})
    assert card.num_examples == 569 and card.source == "csv"
    assert card.mock.method == "synthesised-within-bounds"
    pd.testing.assert_series_equal(dom.private("wdbc")["mean_radius"].to_pandas(),
                                   frame.set_index("patient_id")["mean_radius"].rename_axis("patient"),
                                   check_names=False)
    mock = dom.mock("wdbc")
    assert "patient_id" not in mock.coords and mock.sizes["patient"] == 569
    assert float(mock["mean_radius"].min()) >= 0 and float(mock["mean_radius"].max()) <= 5000
    folder = tmp_path / "dicom"
    folder.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(get_testdata_file(name, download=False), folder / name)
    card = dom.add_dataset("scans", folder, size=(64, 64), fields=["Modality"],
                           bounds={"pixels": (0, 4095), "Modality": ["CT", "MR"]})
    assert card.dims["image"] == 2 and card.variables["pixels"].bounds == (0.0, 4095.0)
    assert set(dom.mock("scans")["Modality"].values) <= {"CT", "MR"}


def test_a_mock_needs_bounds_for_every_variable(tmp_path: Path) -> None:
    dom = Domain.create(tmp_path / "h", name="Strict")
    with pytest.raises(fednb.errors.InvalidInput, match="missing"):
        dom.add_dataset("bc", breast_cancer_dataset(), bounds={"x": (0, 1)})
