"""The owner's memorisation check (issue #22, item 1): released values that equal private
values of the run's dataset, computed in the domain against the real private data of a
real held run, and shown in the review every desk draws."""

from __future__ import annotations

import numpy as np
import pytest

import fednb
from fednb.client._review import build_review, decode_result, review_lines
from fednb.domain import _nearest
from fednb.domain._nearest import nearest_report, run_nearest
from fednb.domain._store import UserRow
from fednb.errors import PermissionDenied
from fednb.ui._review_html import review_html
from tests.conftest import Hospital, breast_cancer_dataset


@fednb.remote(params={"col": (int, 0, 29)}, metrics={"mean": (0.0, 5000.0)})
def copies_rows(data, col=0):
    x = data.x.values[:, col]
    return fednb.Update(weights={"first": x[:3], "means": data.x.values.mean(0)},
                        metrics={"mean": float(x.mean())})


def test_copied_values_are_flagged_and_aggregates_are_not() -> None:
    ds = breast_cancer_dataset()
    x = ds.x.values
    r = nearest_report({"copied": x[:4, 2], "as_float32": x[5:7, 0].astype(np.float32),
                        "means": x.mean(0), "beyond": np.linspace(5000.5, 6000.5, 5)}, ds)
    t = {e["name"]: e for e in r["tensors"]}
    assert r["warning"] and r["checked_variables"] == ["x", "y"] and not r["skipped"]
    assert (t["copied"]["matches"], t["copied"]["rare_matches"], t["copied"]["variables"]) == (4, 4, ["x"])
    assert [e["index"] for e in t["copied"]["examples"]] == [[0], [1], [2], [3]]
    assert t["copied"]["nearest"]["distance"] == 0.0
    assert t["as_float32"]["rare_matches"] == 2  # a float32 round trip still counts
    assert t["means"]["matches"] == 0 and t["means"]["nearest"]["distance"] > 0
    assert t["beyond"]["matches"] == 0  # above every private value


def test_values_many_entries_share_match_but_do_not_warn() -> None:
    ds = breast_cancer_dataset()
    r = nearest_report({"labels": ds.y.values[:10].astype(np.float64)}, ds, {"zero": 0.0})
    labels, zero = r["tensors"]
    assert labels["matches"] == 10 and labels["rare_matches"] == 0  # 0 and 1: hundreds of patients each
    assert zero["name"] == "metric zero" and zero["matches"] == 1 and zero["rare_matches"] == 0
    assert not r["warning"]


def test_odd_arrays_and_large_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    ds = breast_cancer_dataset()
    x = ds.x.values
    r = nearest_report({"nan": np.array([np.nan, np.inf]), "scalar": np.float64(x[10, 3]),
                        "matrix": x[:2, :2], "complex": x[:2, 0] + 0j}, ds)
    t = {e["name"]: e for e in r["tensors"]}
    assert t["nan"]["checked"] == 0 and t["nan"]["nearest"] is None
    assert t["scalar"]["rare_matches"] == 1 and t["scalar"]["examples"][0]["index"] == []
    assert [e["index"] for e in t["matrix"]["examples"]] == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert t["complex"]["matches"] == 2
    monkeypatch.setattr(_nearest, "MAX_VALUES", 1000)  # x holds 569 x 30 values: too many now
    r = nearest_report({"copied": x[:2, 0]}, ds)
    assert r["skipped"] == ["x"] and r["tensors"][0]["matches"] == 0


def test_a_held_run_is_checked_in_the_domain_for_the_owner_only(hospital: Hospital) -> None:
    x = breast_cancer_dataset().x.values
    req = copies_rows.request(hospital.alice(), "breast-cancer", runs=1)
    hospital.owner().requests.get(req.id).approve(release="manual")
    run = req.run(col=1)
    assert run.wait(120).release_state == "held"
    dom = hospital.dom
    with pytest.raises(PermissionDenied):
        run_nearest(dom, run.id, UserRow(name="alice", role="scientist"))
    owner = UserRow(name="olivia", role="owner")
    report = run_nearest(dom, run.id, owner)
    t = {e["name"]: e for e in report["tensors"]}
    assert report["warning"] and report["run"] == run.id and report["dataset"] == "breast-cancer"
    assert t["first"]["rare_matches"] == 3 and t["first"]["examples"][0]["value"] == float(x[0, 1])
    assert t["means"]["rare_matches"] == 0 and t["metric mean"]["rare_matches"] == 0

    # what `fednb domain results show` prints, and what the Inbox and the console draw
    info = dom.runs.owner_view(run.id)
    review = build_review(decode_result(dom.runs.result(run.id, owner)), dom.requests.get(req.id), info,
                          nearest=report)
    text = "\n".join(review_lines(review))
    assert "private    WARNING: released values equal rare private values" in text
    assert "first: 3 of 3 values equal private values of x; 3 held by few entries" in text
    page = review_html(review)
    assert "copies private values" in page and "fednb-tone-danger" in page
    assert page.count("data-check='danger'") == 2  # the decision's table and the values card
