"""The owner sees what they release (issue #22, item 1), in a real browser: a request
without DP runs three times; the first result is released, the second is reviewed and
released in JupyterLab's held view, the third in the Panel console. Each shows the exact
values (small arrays in full, the large one as a histogram), the parameters and the
change since the previous release before the Release button is pressed."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

import fednb
from fednb.client._review import fmt
from tests.browser.conftest import browser, dashboard, no_news, shot  # noqa: F401  (fixtures)
from tests.browser.conftest import wait_until as _wait_until
from tests.conftest import breast_cancer_dataset
from tests.lab.conftest import Lab

wait_until = functools.partial(_wait_until, timeout=30.0, poll=0.25)

TIMEOUT_MS = 60_000


@fednb.remote(params={"col": (int, 0, 29)}, metrics={"mean": (0.0, 5000.0)})
def column_summary(data, col=0):
    x = data.x.values[:, col]
    return fednb.Update(weights={"first": x[:3], "column": x}, metrics={"mean": float(x.mean())})


def held(run: Any) -> None:
    assert run.wait(120).release_state == "held"


def test_the_owner_sees_values_and_the_diff_before_releasing_in_jupyterlab_and_the_console(
    lab: Lab,
    browser: Any,  # noqa: F811
    dashboard: Any,  # noqa: F811
) -> None:
    h = lab.hospital
    x = breast_cancer_dataset().x.values
    req = column_summary.request(h.alice(), "breast-cancer", runs=3)  # no DP: alice may (policy)
    h.owner().requests.get(req.id).approve(release="manual")
    first = req.run(col=0)
    held(first)
    h.owner().runs.get(first.id).release()
    second = req.run(col=1)
    held(second)

    # -- JupyterLab: the held view shows the values and the diff from the first release
    no_news(lab.url, lab.token)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{lab.url}/lab?token={lab.token}")
    page.locator("#jp-main-dock-panel").wait_for()
    page.locator('.jp-SideBar [title="Federated requests"]').first.click()
    owner_block = page.locator('section.fednb-domain[data-domain="st-mary"]')
    owner_block.locator(".fednb-open-held").click()
    panel = page.locator(".fednb-held")
    panel.locator(f'tr[data-run="{second.id}"]').click()
    decision = panel.locator(".fednb-decision")
    decision.get_by_text("to alice: 2 tensors (572 values), 1 metric").wait_for()
    decision.get_by_text("no differential privacy").wait_for()
    decision.get_by_text("col=1").wait_for()
    values = panel.locator('.fednb-tensor[data-tensor="first"]')
    for v in x[:3, 1]:
        values.get_by_role("cell", name=fmt(float(v)), exact=True).wait_for()
    column = panel.locator('.fednb-tensor[data-tensor="column"]')
    assert column.locator("svg.fednb-histogram rect").count() == 20  # 569 values: looked at, not read
    column.get_by_role("cell", name=fmt(float(x[:, 1].max())), exact=True).wait_for()
    diff = panel.locator(".fednb-result-diff")
    diff.get_by_text(f"against run {first.id}").wait_for()
    diff.get_by_text(f"{fmt(float(x[0, 0]))} → {fmt(float(x[0, 1]))}").first.wait_for()
    shot(page, "lab-held-review")
    panel.locator(".fednb-release-run").click()
    wait_until(lambda: second.refresh().info.release_state == "released")
    panel.get_by_text(f"released run {second.id}").wait_for()
    shot(page, "lab-held-released")
    page.close()
    np.testing.assert_array_equal(second.result(timeout=10).weights["first"], x[:3, 1])

    # -- the Panel console: the third run, reviewed against the second
    third = req.run(col=2)
    held(third)
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(dashboard("--domain", h.url) + "/console")
    page.locator("input[type=password]").fill(h.owner_token)
    page.get_by_role("button", name="Log in").click()
    page.get_by_text("signed in as").wait_for()
    page.locator(".bk-tab", has_text="Held results").click()
    select = page.locator("select").filter(has=page.locator(f"option:has-text('{third.id}')"))
    label = wait_until(
        lambda: next((o for o in select.locator("option").all_inner_texts() if third.id in o), None)
    )
    select.select_option(label=label)
    page.get_by_text("Releasing sends").wait_for()
    page.get_by_text("to alice: 2 tensors (572 values), 1 metric").wait_for()
    page.get_by_text(f"against run {second.id}").wait_for()
    page.get_by_text("col=2").first.wait_for()
    for v in x[:3, 2]:
        page.get_by_role("cell", name=fmt(float(v)), exact=True).first.wait_for()
    assert page.locator("svg.fednb-histogram rect").count() == 20
    shot(page, "console-held-review")
    page.get_by_role("button", name="Release to alice").click()
    wait_until(lambda: third.refresh().info.release_state == "released")
    page.get_by_text(f"released run {third.id}").wait_for()
    shot(page, "console-held-released")
    page.close()
    assert third.result(timeout=10).metrics["mean"] == float(x[:, 2].mean())
