"""`fednb dashboard` in a real browser: the login gate, reviewing and approving a request,
and the federation view of a saved History."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import fednb
from fednb.scientist import History, iid_split
from tests.browser.conftest import shot, wait_until
from tests.conftest import Hospital, breast_cancer_dataset, make_hospital

TIMEOUT_MS = 30_000


@fednb.remote(params={"col": (int, 0, 29)})
def tumour_radius_mean(data, col=0):
    """<img src=x onerror="window.pwned = 1"><script>window.pwned = 2</script>"""
    return np.asarray(data.x.values[:, col].mean())


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospital]:
    h = make_hospital(tmp_path_factory.mktemp("browser") / "st-mary")
    yield h
    h.server.stop()


def log_in(page: Any, token: str) -> None:
    page.locator("input[type=password]").fill(token)
    page.get_by_role("button", name="Log in").click()


def test_the_console_shows_nothing_before_a_login_then_approves(
    hospital: Hospital, browser: Any, dashboard: Any
) -> None:
    req = tumour_radius_mean.request(hospital.alice(), "breast-cancer", runs=3)
    url = dashboard("--domain", hospital.url)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url + "/console")
    page.get_by_role("button", name="Log in").wait_for()
    # without a login: only the form, nothing of the domain's requests
    for secret in ("tumour_radius_mean", "alice", "Pending requests", req.id):
        assert page.get_by_text(secret).count() == 0, secret
    shot(page, "console-login")

    log_in(page, "fednb_not-a-real-token")
    page.get_by_text("the domain refused this token").wait_for()
    log_in(page, hospital.alice_token)
    page.get_by_text("needs the domain owner's token").wait_for()
    assert page.get_by_text("tumour_radius_mean").count() == 0

    log_in(page, hospital.owner_token)
    page.get_by_text("signed in as").wait_for()  # the console itself: the form says "owner console" too
    select = page.locator("select").first
    label = wait_until(
        lambda: next((o for o in select.locator("option").all_inner_texts() if req.id in o), None)
    )
    assert "alice" in label and "tumour_radius_mean" in label
    select.select_option(label=label)
    page.get_by_role("cell", name=req.info.code_hash, exact=True).wait_for()
    # the request's docstring is shown as text, never run
    page.get_by_text('<img src=x onerror="window.pwned = 1">').first.wait_for()
    assert page.evaluate("window.pwned") is None
    shot(page, "console-review")
    page.get_by_role("button", name="Approve").click()
    wait_until(lambda: req.refresh().info.status == "approved")
    assert req.info.reviewed_by == "olivia" and req.info.release == "manual"
    page.get_by_text("approved tumour_radius_mean of alice").wait_for()
    shot(page, "console-approved")

    # without a reload: the next request is selected, reviewed and denied in the same session
    other = tumour_radius_mean.request(hospital.alice(), "breast-cancer", runs=1)
    label = wait_until(
        lambda: next((o for o in select.locator("option").all_inner_texts() if other.id in o), None)
    )
    select.select_option(label=label)
    page.get_by_role("cell", name=other.id, exact=True).wait_for()
    page.get_by_placeholder("reason to deny (the scientist sees it)").fill("one run tells us nothing")
    page.get_by_role("button", name="Deny").click()
    wait_until(lambda: other.refresh().info.status == "denied")
    assert other.info.review_reason == "one run tells us nothing"

    # a query is data, not code: its spec shows as a table, never as a JSON dump, with the
    # projected epsilon against the budget left at the top
    query = fednb.Query(fednb.Query.count(), fednb.Query.mean("x"), fednb.Query.histogram("y", 2),
                        noise_multiplier=2.0).request(hospital.alice(), "breast-cancer", runs=2)
    label = wait_until(
        lambda: next((o for o in select.locator("option").all_inner_texts() if query.id in o), None)
    )
    select.select_option(label=label)
    spec = page.locator(".fednb-spec")
    spec.get_by_role("cell", name="2:histogram:y", exact=True).wait_for()
    spec.get_by_text("noise multiplier", exact=True).wait_for()
    assert page.get_by_text('"aggregations"').count() == 0
    decision = page.locator(".fednb-request-decision")
    decision.get_by_text(f"ε {query.info.projected_epsilon:.4g} for 2 runs").wait_for()
    decision.get_by_text("this request would take").first.wait_for()
    shot(page, "console-query-review")

    # log out: back to the form, nothing of the domain left on the page
    page.get_by_role("button", name="Log out").click()
    page.get_by_role("button", name="Log in").wait_for()
    assert page.get_by_text("tumour_radius_mean").count() == 0
    assert page.locator("input[type=password]").input_value() == ""
    page.reload()  # a new session is logged out too
    page.get_by_role("button", name="Log in").wait_for()
    assert page.get_by_text("tumour_radius_mean").count() == 0
    page.close()


def test_the_federation_view_opens_a_saved_history(browser: Any, dashboard: Any, tmp_path: Any) -> None:
    @fednb.remote(metrics={"loss": (0.0, 100.0)})
    def step(data, weights):
        x = data.x.values / 1000.0
        return fednb.Update(
            weights={"w": (weights["w"] + x.mean(0)) / 2},
            num_examples=len(x),
            metrics={"loss": float(np.abs(weights["w"] - x.mean(0)).sum())},
        )

    history = fednb.simulate(
        step,
        iid_split(breast_cancer_dataset(), 3, seed=2),
        initial={"w": np.zeros(30)},
        rounds=3,
        progress=False,
    )
    saved = history.save(tmp_path / "history")
    assert History.load(saved).num_rounds == 3
    url = dashboard("--history", str(saved))
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url + "/federation")
    page.get_by_text("Federation").first.wait_for()
    page.locator("canvas").first.wait_for()
    page.get_by_text("round 2").first.wait_for()
    shot(page, "federation")
    page.close()
