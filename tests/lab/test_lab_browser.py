"""The JupyterLab extension in a real browser (Debian chromium + Playwright): open the
sidebar, review and approve a request, deny another with a reason, release a held result;
read a domain's stats templates and approve one as its second owner."""

from __future__ import annotations

import functools
import json
import uuid
from typing import Any

import httpx

import fednb
from tests.browser.conftest import browser, no_news, shot  # noqa: F401  (the fixture)
from tests.browser.conftest import wait_until as _wait_until
from tests.lab.conftest import Lab
from tests.lab.test_server_extension import DP, W, fixed_update

wait_until = functools.partial(_wait_until, timeout=30.0, poll=0.25)

TIMEOUT_MS = 60_000


def test_review_approve_deny_and_release_in_jupyterlab(lab: Lab, browser: Any) -> None:  # noqa: F811
    h = lab.hospital
    alice = h.alice()
    approve_me = fixed_update.request(
        alice, "breast-cancer", runs=2, dp=DP, weights=W, description="<b>not bold</b>"
    )
    deny_me = fixed_update.request(alice, "breast-cancer", runs=1, dp=DP, weights=W)
    held_req = fixed_update.request(alice, "breast-cancer", runs=1)
    h.owner().requests.get(held_req.id).approve(release="manual")
    held_run = held_req.run(scale=1.0)
    assert held_run.wait(120).release_state == "held"
    query = fednb.Query(fednb.Query.count(), fednb.Query.histogram("y", 2), noise_multiplier=2.0).request(
        alice, "breast-cancer", runs=2)

    no_news(lab.url, lab.token)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{lab.url}/lab?token={lab.token}")
    page.locator("#jp-main-dock-panel").wait_for()
    page.locator('.jp-SideBar [title="Federated requests"]').first.click()
    page.locator("#fednb-sidebar").wait_for()  # the click opened it (nothing was restored open)
    owner_block = page.locator('section.fednb-domain[data-domain="st-mary"]')
    item = owner_block.locator(f'li[data-request="{approve_me.id}"]')
    item.wait_for()
    page.locator(".fednb-statusbar").get_by_text("pending").wait_for()
    shot(page, "lab-sidebar")

    item.click()
    review = page.locator(".fednb-review").filter(has_text=approve_me.info.code_hash)
    review.wait_for()
    review.get_by_text("<b>not bold</b>").wait_for()  # untrusted text stays text
    # the decision first: what each run releases and the privacy cost against the budgets
    decision = review.locator(".fednb-request-decision")
    decision.get_by_text("w float64 (4)").wait_for()
    decision.get_by_text(f"ε {approve_me.info.projected_epsilon:.4g} for 2 runs", exact=False).wait_for()
    source = review.locator(".cm-content")  # the source in a read-only CodeMirror
    source.get_by_text("def fixed_update").wait_for()
    before = source.inner_text()
    source.click()
    page.keyboard.type("import os  # typed by the test")
    assert source.inner_text() == before and "typed by the test" not in before
    shot(page, "lab-review")
    review.locator(".fednb-approve").click()
    wait_until(lambda: approve_me.refresh().info.status == "approved")
    assert approve_me.info.release == "manual" and approve_me.info.reviewed_by == "olivia"

    owner_block.locator(f'li[data-request="{deny_me.id}"]').click()
    review = page.locator(".fednb-review").filter(has_text=deny_me.info.code_hash).filter(has_text=deny_me.id)
    review.locator(".fednb-reason").fill("one run tells us nothing")
    review.locator(".fednb-deny").click()
    wait_until(lambda: deny_me.refresh().info.status == "denied")
    assert deny_me.info.review_reason == "one run tells us nothing"

    # a query is data: its spec is a table, not JSON
    owner_block.locator(f'li[data-request="{query.id}"]').click()
    spec = page.locator(".fednb-review").filter(has_text=query.id).locator(".fednb-spec")
    spec.get_by_role("cell", name="1:histogram:y", exact=True).wait_for()
    assert spec.get_by_text('"aggregations"').count() == 0
    shot(page, "lab-query-review")

    owner_block.locator(".fednb-open-held").click()
    held = page.locator(".fednb-held")
    held.locator(f'tr[data-run="{held_run.id}"]').click()
    held.locator(".fednb-release-run").click()
    wait_until(lambda: held_run.refresh().info.release_state == "released")
    held.get_by_text(f"released run {held_run.id}").wait_for()
    shot(page, "lab-released")

    owner_block.locator(".fednb-open-budget").click()
    page.locator(".fednb-budget").get_by_text("Privacy budgets on St Mary").wait_for()

    # the views are in a WidgetTracker with the layout restorer: once JupyterLab saved the
    # workspace, a reload brings them back, each reading its domain again
    views = {f"fednb:review:st-mary:{query.id}", "fednb:held:st-mary:", "fednb:budget:st-mary:"}
    wait_until(lambda: views <= saved_views(lab))
    page.reload()
    page.locator(".fednb-budget").get_by_text("Privacy budgets on St Mary").wait_for()
    # the review and the held results are restored as background tabs: there, not shown
    page.locator(".fednb-review").filter(has_text=query.id).locator(".fednb-spec").wait_for(state="attached")
    page.locator(".fednb-held").get_by_text("Held results of St Mary").wait_for(state="attached")
    shot(page, "lab-restored")
    page.close()


def test_the_sidebar_lists_templates_and_a_second_owner_approves_one(lab: Lab, browser: Any) -> None:  # noqa: F811
    h = lab.hospital
    owner = h.owner()
    oscar = h.dom.add_user(f"oscar-{uuid.uuid4().hex[:6]}", role="owner")
    good = lab.tokens_file.read_text()
    entries = json.loads(good)
    entries["domains"].append({"name": "st-mary-as-oscar", "url": h.url, "token": oscar})
    lab.tokens_file.write_text(json.dumps(entries))
    owner.templates.add({"name": "lab.tables", "functions": ["crosstab"], "datasets": ["breast-cancer"],
                         "scientists": ["alice", "<img src=x onerror=alert(1)>"]})
    owner.templates.add({"name": "lab.two", "functions": ["describe"], "reviewers": 2})
    try:
        no_news(lab.url, lab.token)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(f"{lab.url}/lab?token={lab.token}")
        page.locator("#jp-main-dock-panel").wait_for()
        wait_until(lambda: sidebar_shown(page))  # the workspace may bring it back open, or not

        # the owner who added them: both listed, with limits and state; no Approve for her
        mine = page.locator('section.fednb-domain[data-domain="st-mary"] details.fednb-templates')
        mine.locator("summary").click()
        tables = mine.locator('li[data-template="lab.tables"]')
        tables.get_by_text("lab.tables: crosstab").wait_for()
        tables.get_by_text("<img src=x onerror=alert(1)>", exact=False).wait_for()  # text, not markup
        assert tables.locator("img").count() == 0
        tables.get_by_text("1 run(s)/request", exact=False).wait_for()
        two = mine.locator('li[data-template="lab.two"]')
        two.get_by_text("waiting for a second owner").wait_for()
        assert two.locator(".fednb-approve-template").count() == 0
        mine.get_by_text("Disclosure refusals (newest first)").wait_for()
        shot(page, "lab-templates")

        # the second owner approves it from their own block
        theirs = page.locator('section.fednb-domain[data-domain="st-mary-as-oscar"] details.fednb-templates')
        theirs.locator("summary").click()
        theirs.locator('li[data-template="lab.two"] .fednb-approve-template').click()
        wait_until(lambda: owner.templates.get("lab.two").active)
        theirs.get_by_text("approved template lab.two: active").wait_for()
        # the section stays open across the sidebar's refresh, and shows the new state
        page.locator(".fednb-refresh").click()
        state = mine.locator('li[data-template="lab.two"] .fednb-template-state')
        state.get_by_text("active", exact=True).wait_for()
        page.close()
    finally:
        lab.tokens_file.write_text(good)
        owner.templates.remove("lab.tables")
        owner.templates.remove("lab.two")


def sidebar_shown(page: Any) -> bool:
    """True when the fednb sidebar is shown; else clicks its tab (once per call) and says False."""
    if page.locator("#fednb-sidebar").is_visible():
        return True
    page.locator('.jp-SideBar [title="Federated requests"]').first.click()
    return False


def saved_views(lab: Lab) -> set[str]:
    """The fednb views JupyterLab saved in the default workspace (what a reload restores)."""
    resp = httpx.get(f"{lab.url}/lab/api/workspaces/default", headers={"Authorization": f"token {lab.token}"})
    resp.raise_for_status()
    return {k for k in resp.json().get("data", {}) if k.startswith("fednb:")}
