"""The widget models and the ipywidgets views, driven against a real domain on loopback."""

from __future__ import annotations

import html
import json
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import fednb
from fednb.client._review import build_review, review_lines
from fednb.errors import InvalidInput, ResultNotReady
from fednb.protocol import RequestInfo, RunInfo
from fednb.scientist import History, iid_split
from fednb.ui import (
    BudgetMeter,
    BudgetModel,
    ConsoleModel,
    Inbox,
    InboxModel,
    ResultsModel,
    ResultsViewer,
    _panel,
)
from fednb.ui._review_html import review_html
from tests.conftest import Hospital, breast_cancer_dataset, make_hospital

DP = fednb.ClientDP(clip=1.0, noise_multiplier=2.0)
W = {"w": np.zeros(10)}  # a DP update's approved structure (issue #17: never the code's)
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospital]:
    # every test spends epsilon on the same dataset: a cap past what the module spends
    h = make_hospital(tmp_path_factory.mktemp("ui") / "st-mary", dataset_epsilon_cap=1000.0)
    yield h
    h.server.stop()


def scientist(h: Hospital, epsilon: float = 100.0) -> fednb.DomainClient:
    return fednb.connect(h.url, token=h.dom.add_user(f"s{uuid.uuid4().hex[:8]}", epsilon=epsilon))


@fednb.remote(params={"scale": (float, 0.0, 2.0)})
def fixed_update(data, scale=1.0):
    return fednb.Update(weights={"w": np.full(10, scale)}, num_examples=data.sizes["patient"])


@fednb.remote
def evil(data):
    """<script>alert("x")</script><img src=x onerror=alert(1)>"""
    # <script>alert("x")</script><img src=x onerror=alert(1)>
    raise RuntimeError('<script>alert("x")</script><img src=x onerror=alert(1)>')


def select(model: InboxModel, request_id: str) -> None:
    model.refresh()
    assert request_id in [rid for _label, rid in model.request_options()]
    model.select(request_id)


def test_approve_approves_with_the_chosen_release(hospital: Hospital) -> None:
    sci = scientist(hospital)
    req = fixed_update.request(sci, "breast-cancer", runs=2, dp=DP, weights=W)
    inbox = InboxModel(hospital.owner())
    select(inbox, req.id)
    assert inbox.approve("auto")
    info = req.refresh().info
    assert (info.status, info.release, info.reviewed_by) == ("approved", "auto", "olivia")
    assert req.id not in [rid for _l, rid in inbox.request_options()]
    assert inbox.message.startswith("approved fixed_update")


def test_deny_records_its_reason_and_a_blank_reason_is_refused(hospital: Hospital) -> None:
    sci = scientist(hospital)
    req = fixed_update.request(sci, "breast-cancer", runs=1, dp=DP, weights=W)
    inbox = InboxModel(hospital.owner())
    select(inbox, req.id)
    assert not inbox.deny("   ")
    assert "give a reason" in inbox.message
    assert req.refresh().info.status == "pending"
    assert inbox.deny("asks for 1 run but trains nothing")
    info = req.refresh().info
    assert (info.status, info.review_reason) == ("denied", "asks for 1 run but trains nothing")


def test_release_releases_a_held_result_and_withhold_withholds(hospital: Hospital) -> None:
    sci = scientist(hospital)
    req = fixed_update.request(sci, "breast-cancer", runs=2, dp=DP, weights=W)
    inbox = InboxModel(hospital.owner())
    select(inbox, req.id)
    assert inbox.approve("manual")
    kept, dropped = req.run(W, scale=1.0), req.run(W, scale=0.5)
    assert kept.wait(120).release_state == dropped.wait(120).release_state == "held"
    inbox.refresh()
    held = [rid for _l, rid in inbox.run_options()]
    assert kept.id in held and dropped.id in held
    inbox.select_run(kept.id)
    assert "Run" in inbox.run_html() and kept.id in inbox.run_html()
    assert inbox.release()
    assert kept.refresh().info.release_state == "released"
    assert kept.result(timeout=10).weights["w"].shape == (10,)
    assert inbox.withhold(dropped.id)
    assert dropped.refresh().info.release_state == "withheld"
    assert not inbox.release()  # nothing selected any more
    assert "select a held result" in inbox.message


def test_a_refused_action_leaves_the_domains_message(hospital: Hospital) -> None:
    sci = scientist(hospital)
    req = fixed_update.request(sci, "breast-cancer", runs=1, dp=DP, weights=W)
    inbox = InboxModel(hospital.owner())
    select(inbox, req.id)
    hospital.owner().requests.get(req.id).deny("someone else was faster")
    assert not inbox.approve("auto")
    assert inbox.message == f"approve refused: request {req.id!r} is already denied"
    assert req.id not in [rid for _l, rid in inbox.request_options()]


def test_the_review_shows_hash_diff_schema_and_projected_epsilon(hospital: Hospital) -> None:
    sci = scientist(hospital, epsilon=7.0)
    first = globals()["fixed_update"].request(sci, "breast-cancer", runs=1, dp=DP, weights=W)
    hospital.owner().requests.get(first.id).approve()

    @fednb.remote(params={"scale": (float, 0.0, 2.0)})
    def fixed_update(data, scale=1.0):  # one line changed
        return fednb.Update(weights={"w": np.full(10, 2 * scale)}, num_examples=data.sizes["patient"])

    again = fixed_update.request(sci, "breast-cancer", runs=3, dp=DP, weights=W)
    inbox = InboxModel(hospital.owner())
    select(inbox, again.id)
    page = inbox.detail_html()
    info = inbox.selected
    assert info is not None and info.projected_epsilon is not None
    for shown in (
        sci.me.name,
        "breast-cancer",
        info.code_hash,
        first.info.code_hash,
        "scale",
        f"{info.projected_epsilon:.4g}",
        "of 7 spent",
        "clip 1.0, noise multiplier 2.0",
    ):
        assert shown in page, shown
    text = html.unescape(re.sub(r"<[^>]+>", "", page))
    assert '-    return fednb.Update(weights={"w": np.full(10, scale)}' in text
    assert '+    return fednb.Update(weights={"w": np.full(10, 2 * scale)}' in text


def test_hostile_request_text_is_shown_as_text(hospital: Hospital) -> None:
    sci = scientist(hospital)
    req = evil.request(sci, "breast-cancer", runs=1, dp=DP, weights=W, description=HOSTILE)
    assert HOSTILE in req.info.source
    inbox = InboxModel(hospital.owner())
    select(inbox, req.id)
    for page in (inbox.detail_html(), req._repr_html_()):
        assert "<script" not in page.lower() and "<img" not in page.lower()
        assert "&lt;script&gt;" in page and "&lt;img" in page
    view = Inbox(hospital.owner(), poll=0)
    view._list.value = req.id
    assert "<script" not in view._detail.value and "&lt;script&gt;" in view._detail.value
    view.close()
    # the owner's log carries the job's exception text: untrusted too
    assert inbox.approve("auto")
    run = req.run(W)
    run.wait(120)  # the scientist sees a DP run succeed whatever happened; the owner sees why
    assert hospital.owner().runs.get(run.id).info.status == "failed"
    inbox.select_run(run.id)
    log = inbox.run_html()
    assert "owner only" in log and "&lt;script&gt;" in log
    assert "<script" not in log.lower() and "<img" not in log.lower()


def test_the_budget_meter_shows_the_ledgers_numbers(hospital: Hospital) -> None:
    sci = scientist(hospital, epsilon=9.0)
    req = fixed_update.request(sci, "breast-cancer", runs=3, dp=DP, weights=W)
    hospital.owner().requests.get(req.id).approve("auto")
    meter = BudgetMeter(sci, poll=0)
    for _ in range(2):
        assert req.run(W).wait(120).status == "succeeded"
    meter.refresh()
    ledger = hospital.dom.ledger.info(sci.me.name, "breast-cancer")
    (g,) = [g for g in meter.model.gauges() if g.label == f"{sci.me.name} on breast-cancer"]
    assert ledger.epsilon_spent > 0
    assert (g.spent, g.reserved, g.budget) == (ledger.epsilon_spent, ledger.epsilon_reserved, 9.0)
    assert g.remaining == pytest.approx(ledger.epsilon_remaining)
    (d,) = [d for d in meter.model.dataset_gauges() if d.label.startswith("breast-cancer")]
    assert (d.spent, d.budget) == (ledger.dataset_spent, ledger.dataset_cap)
    bars = [c for c in meter.children if hasattr(c, "children")]
    assert any(f"{ledger.epsilon_spent:.3g} spent" in b.children[0].value for b in bars)
    assert BudgetModel(hospital.owner()).rows and any(
        b.scientist == sci.me.name for b in BudgetModel(hospital.owner()).rows
    )
    meter.close()


def test_the_inbox_widget_buttons_drive_the_model(hospital: Hospital) -> None:
    sci = scientist(hospital)
    a = fixed_update.request(sci, "breast-cancer", runs=1, dp=DP, weights=W)
    b = fixed_update.request(sci, "breast-cancer", runs=1, dp=DP, weights=W)
    view = Inbox(hospital.owner(), poll=0)
    assert "fednb-inbox" in view._dom_classes
    view._list.value = a.id
    view._release.value = "auto"
    view._approve.click()
    assert a.refresh().info.release == "auto" and a.info.status == "approved"
    view._list.value = b.id
    view._reason.value = "no"
    view._deny.click()
    assert b.refresh().info.review_reason == "no"
    assert view._reason.value == ""
    assert b.id not in [rid for _l, rid in view._list.options]
    view.close()


def test_only_an_owner_gets_an_inbox(hospital: Hospital) -> None:
    with pytest.raises(InvalidInput, match="owner"):
        InboxModel(hospital.alice())
    with pytest.raises(InvalidInput, match="owner"):
        ConsoleModel(hospital.alice())


def test_the_console_shows_users_and_the_audit_chain(hospital: Hospital) -> None:
    console = ConsoleModel(hospital.owner())
    assert "alice" in console.users_html() and "olivia" in console.users_html()
    audit = console.audit_html()
    assert ("audit chain verifies" in audit and "user.add" in audit) or "request" in audit


def test_the_results_viewer_follows_a_simulation_live() -> None:
    @fednb.remote(metrics={"loss": (0.0, 100.0)})
    def mean_update(data, weights):
        x = data.x.values / 1000.0
        return fednb.Update(
            weights={"w": weights["w"] * 0.5 + x.mean(0) * 0.5},
            num_examples=len(x),
            metrics={"loss": float(np.abs(weights["w"] - x.mean(0)).sum())},
        )

    parts = iid_split(breast_cancer_dataset(), 3, seed=1)
    history = History()
    viewer = ResultsViewer(history)
    seen: list[int] = []
    history.watch(lambda h: seen.append(h.num_rounds))
    fednb.simulate(mean_update, parts, initial={"w": np.zeros(30)}, rounds=4, history=history, progress=False)
    assert seen == [1, 2, 3, 4]
    assert "fednb-results-viewer" in viewer._dom_classes
    assert viewer._metric.options[0] == "loss" and "bytes" in viewer._metric.options
    assert viewer._metric.value == "loss"  # opened before round 0, on the loss, not num_examples
    assert viewer._chart.value.count("<polyline") == 4  # all domains + 3 hospitals
    viewer._domains.value = (viewer._domains.options[0],)
    assert viewer._chart.value.count("<polyline") == 2
    series = ResultsModel(history).series("loss")
    assert len(series["all domains"]) == 4 and series["all domains"][-1] < series["all domains"][0]
    assert "round 3" in viewer._summary.value
    html = history._repr_html_()
    assert "<svg" in html and "loss" in html
    viewer.close()


def test_dataset_and_budget_reprs_render(hospital: Hospital) -> None:
    alice = hospital.alice()
    page = alice.datasets["breast-cancer"]._repr_html_()
    assert "Mock preview" in page and "569 patients" in page and "Wisconsin" in page
    assert alice.budget._repr_html_().startswith("<div class='fednb-budget'>")


def test_the_results_viewer_draws_epsilon_with_dp() -> None:
    @fednb.remote
    def half(data, weights):
        return fednb.Update(weights={"w": weights["w"] / 2}, num_examples=data.sizes["patient"])

    dp = fednb.ClientDP(clip=1.0, noise_multiplier=2.0)
    history = fednb.simulate(
        half,
        iid_split(breast_cancer_dataset(), 2, seed=3),
        initial={"w": np.ones(5)},
        rounds=3,
        dp=dp,
        progress=False,
    )
    model = ResultsModel(history)
    assert "epsilon" in model.metric_names()
    eps = model.series("epsilon")
    per = eps["hospital-0"]
    assert 0 < per[0] < per[1] < per[2]  # spent accumulates round by round
    both = zip(eps["hospital-0"], eps["hospital-1"], strict=True)
    assert eps["all domains"] == [max(a, b) for a, b in both]
    assert History.load(history.save(Path(tempfile.mkdtemp()) / "h")).metrics["epsilon"].shape == (3, 2)


def test_the_console_login_reads_a_token_that_lands_just_after_the_click(
    hospital: Hospital, monkeypatch: pytest.MonkeyPatch
) -> None:
    # served with a thread pool (as `fednb dashboard` is), Panel can run "Log in" before the
    # pasted token's update: the handler waits for it
    import panel as pn

    with ThreadPoolExecutor(2) as pool:
        monkeypatch.setattr(pn.state, "_thread_pool", pool)
        page = _panel.console_app(hospital.url)()
        form = page[0]
        token, login, error = form[1], form[2], form[3]
        late = threading.Timer(0.3, lambda: setattr(token, "value_input", hospital.owner_token))
        late.start()
        login.clicks += 1
        late.join()
        assert page[0] is not form, error.object  # the console replaced the form
        assert "signed in as" in page[0][0][0].object and token.value_input == token.value == ""

        # the focus-out update of the field lands after the login cleared it: the token is
        # back in `value`, but neither a click nor the form after a logout shows it
        token.value = hospital.owner_token
        page[0][0][2].clicks += 1  # Log out
        assert page[0] is form and token.value == token.value_input == "" and not error.object
        token.value = hospital.owner_token  # the same late update before a click
        monkeypatch.setattr(_panel, "TYPED_WAIT_S", 0.2)
        login.clicks += 1  # a field that stays empty is taken as empty once the wait is over
        assert page[0] is form and "enter a token" in error.object

    # without a pool, events run in order: nothing is waited for
    monkeypatch.setattr(pn.state, "_thread_pool", None)
    monkeypatch.setattr(_panel, "TYPED_WAIT_S", 30.0)
    page = _panel.console_app(hospital.url)()
    t0 = time.monotonic()
    page[0][2].clicks += 1
    assert time.monotonic() - t0 < 5 and "enter a token" in page[0][3].object


def test_the_console_acts_on_the_release_mode_set_just_before_the_click(
    hospital: Hospital, monkeypatch: pytest.MonkeyPatch
) -> None:
    # with a pool, "auto" switched to "manual" (or back) and Approve clicked at once: the
    # change lands in another thread while the click's handler runs; it acts on the new mode
    import panel as pn

    req = fixed_update.request(scientist(hospital), "breast-cancer", runs=2, dp=DP, weights=W)
    with ThreadPoolExecutor(2) as pool:
        monkeypatch.setattr(pn.state, "_thread_pool", pool)
        page = _panel.console_app(hospital.url)()
        page[0][1].value_input = hospital.owner_token
        page[0][2].clicks += 1
        requests_tab = page[0][2][0]
        select, (release, approve) = requests_tab[0], requests_tab[1]
        select.value = req.id
        assert release.value == "manual"
        late = threading.Timer(0.05, lambda: setattr(release, "value", "auto"))
        late.start()
        approve.clicks += 1
        late.join()
    info = req.refresh().info
    assert info.status == "approved" and info.release == "auto"


# -- the review of a held result --------------------------------------------------------


@fednb.remote(params={"col": (int, 0, 29)}, metrics={"loss": (0.0, 100.0)})
def column_and_means(data, col=0):
    x = data.x.values
    return fednb.Update(weights={"col": x[:, col], "means": x.mean(0)[:3]},
                        metrics={"loss": float(col)}, num_examples=x.shape[0])


def _infos(run_id: str, params: dict[str, object], state: str = "held") -> tuple[RequestInfo, RunInfo]:
    now = "2024-05-01T10:00:00Z"
    req = RequestInfo.model_validate({
        "id": "req12345", "scientist": "alice", "function_name": "f", "kind": "update",
        "source": "def f(): ...",
        "code_hash": "a" * 64, "datasets": ["d"], "params": {}, "weights": None, "metrics": {}, "runs": 3,
        "runs_used": 2, "description": "", "status": "approved", "release": "manual", "reviewed_by": "olivia",
        "review_reason": None, "created": now, "reviewed": now})
    run = RunInfo.model_validate({
        "id": run_id, "request_id": "req12345", "scientist": "alice", "dataset": "d", "status": "succeeded",
        "reason": None, "params": params, "num_examples": 7, "release_state": state, "created": now,
        "finished": now})
    return req, run


def test_the_review_model_shows_small_values_whole_large_ones_summarised_and_the_diff() -> None:
    big = np.arange(200, dtype=np.float32)
    big[3], big[4] = np.nan, np.inf
    now = fednb.Update(weights={"w": np.array([[1.0, 2.0], [3.0, np.nan]]), "big": big, "s": np.float64(2.5)},
                       metrics={"loss": 0.5}, num_examples=7)
    before = fednb.Update(weights={"w": np.array([[1.0, 2.5], [3.0, np.nan]]), "big": big + 1,
                                   "gone": np.zeros(2)}, metrics={"loss": 0.75}, num_examples=7)
    req, run = _infos("run22222", {"lr": 0.1})
    _, prev = _infos("run11111", {"lr": 0.2}, "released")
    r = build_review(now, req, run, (prev, before))
    assert json.loads(json.dumps(r, allow_nan=False)) == r  # plain JSON: no NaN tokens
    w, b, s = r["tensors"]
    assert w["values"] == [[1.0, 2.0], [3.0, "NaN"]] and w["summary"]["nan"] == 1
    assert w["summary"]["histogram"] is None  # a handful of values is read, not plotted
    assert s["values"] == 2.5 and s["shape"] == []
    assert b["values"] is None and (b["shape"], b["dtype"], b["size"]) == ([200], "float32", 200)
    bs = b["summary"]
    assert (bs["min"], bs["max"], bs["nan"], bs["inf"]) == (0.0, 199.0, 1, 1)
    assert b["summary"]["mean"] == pytest.approx(np.mean(np.delete(np.arange(200.0), [3, 4])))
    hist = b["summary"]["histogram"]
    assert len(hist["counts"]) == 20 and len(hist["edges"]) == 21 and sum(hist["counts"]) == 198
    assert r["metrics"] == {"loss": 0.5} and r["run"]["params"] == {"lr": 0.1}
    assert r["request"]["code_hash"] == "a" * 64 and r["previous"]["id"] == "run11111"
    d = {t["name"]: t for t in r["diff"]["tensors"]}
    assert d["w"]["status"] == "changed" and d["w"]["max_abs_diff"] == 0.5
    assert d["w"]["changed"] == [{"index": [0, 1], "before": 2.5, "after": 2.0}]  # NaN = NaN: unchanged
    assert d["big"]["max_abs_diff"] == 1.0 and d["big"]["changed"] is None  # large: no per-value list
    assert d["s"]["status"] == "added" and d["gone"]["status"] == "removed"
    assert r["diff"]["metrics"] == [{"name": "loss", "before": 0.75, "after": 0.5}]
    text = "\n".join(review_lines(r))
    assert "values [[1, 2], [3, NaN]]" in text and "min 0  max 199" in text and "1 NaN, 1 Inf" in text
    assert "    [0, 1] 2.5 -> 2" in text and "metric loss: 0.75 -> 0.5" in text
    page = review_html(r)
    assert page.count("<rect") == 20 and "Releasing sends" in page and "to alice" in page
    first = build_review(before, req, prev)
    assert first["diff"] is None and "no earlier released run" in "\n".join(review_lines(first))


def test_the_owner_sees_a_held_result_and_its_diff_before_releasing(hospital: Hospital) -> None:
    alice, owner = hospital.alice(), hospital.owner()
    req = column_and_means.request(alice, "breast-cancer", runs=3)
    owner.requests.get(req.id).approve("manual")
    first = req.run(col=0)
    assert first.wait(120).release_state == "held"
    with pytest.raises(ResultNotReady):  # the scientist sees nothing yet
        first.result(timeout=0)
    held = owner.runs.get(first.id).held_result()  # the owner does
    np.testing.assert_array_equal(held.weights["col"], breast_cancer_dataset().x.values[:, 0])
    owner.runs.get(first.id).release()
    second = req.run(col=1)
    assert second.wait(120).release_state == "held"
    view = Inbox(owner, poll=0)
    assert f"{len(view.model.held)} result" in view._title.value
    view._held.value = second.id
    r = view.model.review
    assert r is not None and r["run"]["id"] == second.id and r["previous"]["id"] == first.id
    x = breast_cancer_dataset().x.values
    means = {t["name"]: t for t in r["tensors"]}["means"]["values"]
    np.testing.assert_allclose(means, x.mean(0)[:3])
    page = view._run.value
    assert "Releasing sends" in page and "to alice: 2 tensors (572 values), 1 metric" in page
    assert "none: no differential privacy" in page and "col=1" in page
    assert page.count("<rect") == 20  # the 569-value column as a histogram
    assert f"against run {first.id}" in page and "metric loss" in page
    view._release_btn.click()
    assert second.result(timeout=10).metrics == {"loss": 1.0}
    assert view.model.review is None and "released run" in view._status.value
    view.close()


def test_labels_say_one_run_and_the_meter_names_the_hospital(hospital: Hospital) -> None:
    sci = scientist(hospital)
    req = fixed_update.request(sci, "breast-cancer", runs=1, dp=DP, weights=W)
    inbox = InboxModel(hospital.owner())
    label = next(lbl for lbl, rid in inbox.request_options() if rid == req.id)
    assert "· 1 run ·" in label
    meter = BudgetMeter(sci, poll=0)
    assert "Privacy budget at St Mary" in meter.children[0].value
    assert hospital.url not in meter.children[0].value
    meter.close()
    hospital.owner().requests.get(req.id).deny("test cleanup")
