"""The review surfaces' looks in a real browser (issue #22, item 8), without servers: the
HTML the Inbox and the Panel console draw for a request (DP, over the budget left, a
query's spec) and for a held result whose values copy private data (the domain's
memorisation check), each screenshotted and checked for what a person relies on: the
decision comes first, every text passes WCAG AA contrast, charts and bars have labels."""

from __future__ import annotations

from typing import Any

import numpy as np

import fednb
from fednb.client._html import request_html
from fednb.client._review import build_review
from fednb.domain._nearest import nearest_report
from fednb.protocol import RequestInfo, RunInfo
from fednb.ui._review_html import review_html
from tests.browser.conftest import browser, shot  # noqa: F401  (the fixture)
from tests.conftest import breast_cancer_dataset

NOW = "2024-05-01T10:00:00Z"
BUDGET = {"scientist": "alice", "dataset": "breast-cancer", "delta": 1e-6, "epsilon_budget": 10.0,
          "epsilon_spent": 2.5, "epsilon_reserved": 0.5, "epsilon_remaining": 7.0, "dataset_cap": 20.0,
          "dataset_spent": 4.0, "dataset_remaining": 16.0}

# the WCAG contrast of every element holding text, against the first opaque background
# behind it; returns the ones under 4.5:1 (3:1 for large text)
CONTRAST_JS = """root => {
  const rgb = c => (c.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => [r, g, b].map(v => v / 255)
      .map(v => v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4)
      .reduce((s, v, i) => s + v * [0.2126, 0.7152, 0.0722][i], 0);
  const bg = el => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length === 3 || c[3] > 0.5) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const bad = [];
  for (const el of root.querySelectorAll('*')) {
    const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    if (!own || el.closest('svg, style')) continue;
    const s = getComputedStyle(el);
    const [a, b] = [lum(rgb(s.color)), lum(bg(el))];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const large = parseFloat(s.fontSize) >= 24 || (parseFloat(s.fontSize) >= 18.6 && +s.fontWeight >= 700);
    if (ratio < (large ? 3 : 4.5)) bad.push(`${el.textContent.trim().slice(0, 40)}: ${ratio.toFixed(2)}`);
  }
  return bad;
}"""


def _request(**over: Any) -> RequestInfo:
    base = {"id": "req12345abc", "scientist": "alice", "function_name": "column_summary", "kind": "update",
            "source": "def column_summary(data, col=0):\n    return data.x.values[:3, col]\n",
            "code_hash": "c1" * 32, "datasets": ["breast-cancer"],
            "params": {"col": {"type": "int", "low": 0, "high": 29}},
            "weights": {"w": {"shape": [4], "dtype": "float64"}}, "metrics": {"loss": [0, 100]},
            "runs": 3, "runs_used": 0, "description": "", "status": "pending", "release": None,
            "reviewed_by": None, "review_reason": None, "created": NOW, "reviewed": None,
            "dp": {"clip": 1.0, "noise_multiplier": 2.0}, "delta": 1e-6, "epsilon_per_run": 1.2,
            "projected_epsilon": 3.6, "budget": BUDGET, "previous_hash": "ab" * 32,
            "diff": "--- a\n+++ b\n@@ -1 +1 @@\n-    return 1\n+    return 2\n"}
    return RequestInfo.model_validate({**base, **over})


def _page(browser: Any, body: str) -> Any:  # noqa: F811
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.set_content(f"<!DOCTYPE html><html><body style='margin:16px'>{body}</body></html>")
    return page


def test_a_request_shows_its_decision_first_and_a_query_as_a_table(browser: Any) -> None:  # noqa: F811
    query = fednb.Query(fednb.Query.count(), fednb.Query.histogram("y", 2), noise_multiplier=2.0)
    over = _request(kind="query", function_name="query", source=query.source, weights=None, metrics={},
                    params={}, dp=None, diff=None, previous_hash=None, projected_epsilon=12.0)
    page = _page(browser, request_html(_request()) + request_html(over))
    first, second = page.locator(".fednb-request").all()
    # the decision is the first thing in each review, above the facts and the code
    assert first.locator(".fednb-ui > *:not(style)").first.get_attribute("class").startswith("fednb-decision")
    first.get_by_text("this request would take 3.6, leaving 3.4").wait_for()
    assert first.locator(".fednb-request-decision.fednb-tone-dp").count() == 1
    assert second.locator(".fednb-request-decision.fednb-tone-danger").count() == 1  # 12 > 7 left
    second.get_by_text("this request would take 12, 5 more than is left").wait_for()
    assert second.locator(".fednb-spec td", has_text="1:histogram:y").count() == 1
    assert second.get_by_text('"aggregations"').count() == 0  # never a JSON dump
    assert first.locator(".fednb-bar[role=img][aria-label]").count() == 2
    assert page.evaluate(CONTRAST_JS, page.locator("body").element_handle()) == []
    shot(page, "looks-request-review")
    page.close()


def test_a_held_result_that_copies_patients_values_is_flagged_at_the_top(browser: Any) -> None:  # noqa: F811
    ds = breast_cancer_dataset()
    x = ds.x.values
    result = fednb.Update(weights={"first": x[:3, 1], "column": x[:, 1], "means": x.mean(0)[:4]},
                          metrics={"mean": float(x[:, 1].mean())}, num_examples=569)
    before = fednb.Update(weights={"first": x[:3, 0], "column": x[:, 0], "means": x.mean(0)[:4]},
                          metrics={"mean": float(x[:, 0].mean())}, num_examples=569)
    run = RunInfo.model_validate({"id": "run2f3876c9a4", "request_id": "req12345abc", "scientist": "alice",
                                  "dataset": "breast-cancer", "status": "succeeded", "reason": None,
                                  "params": {"col": 1}, "num_examples": 569, "release_state": "held",
                                  "created": NOW, "finished": NOW})
    prev = run.model_copy(update={"id": "run1aaaa0000", "params": {"col": 0}, "release_state": "released"})
    review = build_review(result, _request(dp=None, projected_epsilon=None), run, (prev, before),
                          nearest_report(result.weights, ds, result.metrics))
    page = _page(browser, review_html(review))
    decision = page.locator(".fednb-decision")
    assert "fednb-tone-danger" in decision.get_attribute("class")
    decision.get_by_text("Releasing sends").wait_for()
    decision.get_by_text("the code may copy patients' data").wait_for()
    rows = decision.locator(".fednb-released tbody tr")
    assert rows.count() == 3
    assert [rows.nth(i).locator("[data-check]").get_attribute("data-check") for i in range(3)] == [
        "danger", "danger", "ok"]
    first = page.locator('.fednb-tensor[data-tensor="first"]')
    first.get_by_text("3 of 3 values equal private values").wait_for()
    assert page.locator("svg.fednb-histogram[role=img][aria-label]").count() == 1
    assert page.evaluate(CONTRAST_JS, page.locator("body").element_handle()) == []
    shot(page, "looks-held-review")
    page.close()
    np.testing.assert_array_equal(result.weights["first"], x[:3, 1])
