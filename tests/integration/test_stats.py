"""fednb.stats end to end over three real loopback domains holding GBSG2 (German Breast
Cancer Study Group 2, lifelines' bundled copy) split with different case mixes.

Exact mode (disclosure control, template-approved, released automatically): every
estimate equals the pooled-data answer of pandas/scipy, statsmodels or lifelines to 1e-6
relative. DP mode: each released array's error is the charged noise (a chi-square test
on the standardised errors), and the charge is on every domain's ledger.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import xarray as xr
from formulaic import model_matrix
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.datasets import load_gbsg2
from scipy import stats as sps

import fednb
import fednb.stats as fs
from fednb.client import DomainClient
from fednb.domain import Domain
from fednb.protocol._stats import StatsSpec
from fednb.protocol._templates import DisclosureRules
from fednb.runtime._stats import compute

REL = 1e-6
LEVELS = {"horTh": ["no", "yes"], "menostat": ["Pre", "Post"], "tgrade": ["I", "II", "III"]}
BOUNDS = {"age": (20.0, 90.0), "tsize": (0.0, 150.0), "pnodes": (0.0, 60.0), "progrec": (0.0, 2500.0),
          "estrec": (0.0, 1200.0), "time": (0.0, 3000.0), "cens": (0.0, 1.0)}
Z = 2.0  # the DP noise multiplier
FUNCTIONS = ["describe", "crosstab", "quantiles", "correlation", "glm", "kaplan_meier", "cox"]


def _parts() -> list[pd.DataFrame]:
    """Grade III and node-positive patients concentrate at the first hospital."""
    df = load_gbsg2()
    df["time"] = df["time"].astype(float)
    rng = np.random.default_rng(19)
    w = ((df["tgrade"] == "III").to_numpy() + np.minimum(df["pnodes"].to_numpy(), 10) / 10) / 2
    p = np.stack([0.2 + w, np.full(len(w), 0.6), 1.2 - w], axis=1)
    site = np.asarray([rng.choice(3, p=row / row.sum()) for row in p])
    return [df.loc[site == k].reset_index(drop=True) for k in range(3)]


def _xr(df: pd.DataFrame) -> xr.Dataset:
    return xr.Dataset({c: ("patient", df[c].to_numpy().astype(str) if df[c].dtype == object
                           else df[c].to_numpy()) for c in df.columns})


class Study:
    def __init__(self, parts: list[pd.DataFrame], doms: list[Domain],
                 clients: dict[str, DomainClient]) -> None:
        self.parts, self.doms, self.clients = parts, doms, clients
        self.pooled = pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Study]:
    parts, doms, servers, clients = _parts(), [], [], {}
    home = tmp_path_factory.mktemp("stats")
    for k, part in enumerate(parts):
        dom = Domain.create(Path(home) / f"h{k}", name=f"Hospital {k}")
        dom.add_user("olivia", role="owner")
        token = dom.add_user("alice", epsilon=1000.0)
        bounds = {**BOUNDS, **LEVELS}
        for name in ("gbsg2", "gbsg2-dp"):
            dom.add_dataset(name, _xr(part), bounds=bounds, description="GBSG2 (lifelines)")
        # exact KM and pooled Cox release counts at each event time: this owner allows cells of 1
        dom.policy.update(dp_slot_s=1.0, stats_protection={"gbsg2": "disclosure", "gbsg2-dp": "dp"},
                          disclosure={"gbsg2": DisclosureRules(min_cell_count=1, min_subset=1, min_sites=3)})
        dom.policy.templates.add({"name": "study-19", "functions": FUNCTIONS,
                                  "datasets": ["gbsg2", "gbsg2-dp"], "scientists": ["alice"],
                                  "max_iterations": 200, "release": "auto"}, reviewer="olivia")
        server = dom.serve(port=0)
        doms.append(dom)
        servers.append(server)
        clients[f"h{k}"] = fednb.connect(server.url, token=token)
    yield Study(parts, doms, clients)
    for s in servers:
        s.stop()


def close(got: object, want: object, rel: float = REL) -> None:
    np.testing.assert_allclose(np.asarray(got, dtype=float), np.asarray(want, dtype=float), rtol=rel, atol=0)


def test_table1_crosstab_and_correlation_equal_pandas(study: Study) -> None:
    hs, pooled = study.clients, study.pooled
    t1 = fs.describe(hs, ["age", "tsize", "tgrade"], dataset="gbsg2", by="horTh", levels=LEVELS,
                     quantiles=(0.5,))
    for g, sub in pooled.groupby("horTh"):
        for v in ("age", "tsize"):
            close(t1.loc[(g, v), ["mean", "sd", "q0.5"]], [sub[v].mean(), sub[v].std(), sub[v].median()])
        close(t1.loc[(g, "tgrade=II"), "percent"], 100 * (sub["tgrade"] == "II").mean())
    tab = fs.crosstab(hs, "tgrade", "horTh", dataset="gbsg2", levels=LEVELS)
    ref = pd.crosstab(pooled["tgrade"], pooled["horTh"]).loc[LEVELS["tgrade"]]
    np.testing.assert_array_equal(tab.to_numpy(), ref.to_numpy())
    close(tab.attrs["chi2"], sps.chi2_contingency(ref.to_numpy())[0])
    names = ["age", "pnodes", "progrec", "estrec"]
    close(fs.correlation(hs, names, dataset="gbsg2"), pooled[names].corr())


def test_logistic_regression_equals_statsmodels(study: Study) -> None:
    formula = "cens ~ age + tsize + pnodes + C(tgrade) + horTh"
    got = fs.glm(study.clients, formula, "binomial", dataset="gbsg2", levels=LEVELS)
    frame = study.pooled.assign(**{k: pd.Categorical(study.pooled[k], categories=v)
                                   for k, v in LEVELS.items()})
    mm = model_matrix(formula, frame)
    ref = sm.GLM(mm.lhs.to_numpy().ravel(), mm.rhs, family=sm.families.Binomial()).fit(tol=1e-13)
    close(got.params, ref.params)
    close(got.bse, ref.bse)
    close(got.deviance, ref.deviance)
    with pytest.raises(fednb.errors.InvalidInput, match="min_sites"):  # two of three: below the rule
        fs.glm({k: study.clients[k] for k in ("h0", "h1")}, formula, "binomial", dataset="gbsg2",
               levels=LEVELS)


def test_kaplan_meier_and_cox_equal_lifelines(study: Study) -> None:
    hs, pooled = study.clients, study.pooled
    km = fs.kaplan_meier(hs, "time", "cens", dataset="gbsg2")
    kmf = KaplanMeierFitter().fit(pooled["time"], pooled["cens"])
    t = km.table.index.to_numpy()
    close(km.table["survival"], kmf.survival_function_at_times(t))
    close(km.table["ci_lower"], kmf.confidence_interval_.loc[t].iloc[:, 0])
    cox = fs.cox(hs, "~ age + pnodes + progrec + horTh", "time", "cens", dataset="gbsg2", levels=LEVELS)
    x = model_matrix("age + pnodes + progrec + horTh", pooled.assign(
        horTh=pd.Categorical(pooled["horTh"], categories=LEVELS["horTh"]))).drop(columns="Intercept")
    ref = CoxPHFitter().fit(pd.concat([x, pooled[["time", "cens"]]], axis=1), "time", "cens",
                            fit_options={"precision": 1e-12})
    close(cox.params, ref.params_[cox.params.index])
    close(cox.table["se"], ref.standard_errors_[cox.params.index])
    strat = fs.cox(hs, "~ age + pnodes", "time", "cens", dataset="gbsg2", strata="site")
    cols = ["age", "pnodes", "time", "cens"]
    frame = pd.concat([p[cols].assign(site=k) for k, p in enumerate(study.parts)])
    ref_s = CoxPHFitter(strata=["site"]).fit(frame, "time", "cens", fit_options={"precision": 1e-12})
    close(strat.params, ref_s.params_[strat.params.index])


def test_template_approved_calls_need_no_owner_and_are_audited(study: Study) -> None:
    """Every stats request of the study (dozens: IRLS and Newton steps, bisection rounds)
    was approved by the owner's template on submission, and the audit log names it."""
    median = fs.quantiles(study.clients, ["age"], [0.5], dataset="gbsg2")  # bisection: many steps
    close(median["age"], study.pooled["age"].quantile([0.5]))
    for dom, client in zip(study.doms, study.clients.values(), strict=True):
        requests = [r.info for r in client.requests.list() if r.info.kind == "stats"]
        assert len(requests) >= 5
        assert {r.reviewed_by for r in requests} == {"template:study-19"}
        assert sum("study-19" in e.details for e in dom.audit.entries()) >= len(requests)


DP_SPECS = [
    dict(op="moments", variables=["age", "tsize", "horTh"], group="horTh"),
    dict(op="table", variables=["tgrade", "menostat"]),
    dict(op="km_table", variables=["time", "cens"], time="time", event="cens", times=[365.0, 730.0, 1460.0]),
]


def test_dp_errors_are_the_charged_noise(study: Study) -> None:
    """Each released value minus the site's exact value, over its noise scale z * sensitivity,
    is a standard normal draw: their sum of squares passes a two-sided chi-square test."""
    sites = fs.DomainSites(study.clients, "gbsg2-dp")
    squares, dof = 0.0, 0
    for fields in DP_SPECS:
        levels = {k: v for k, v in LEVELS.items() if k in fields["variables"]}
        spec = StatsSpec(**fields, levels=levels, protection="dp", noise_multiplier=Z)
        released = sites.run(spec)
        for k, (name, client) in enumerate(study.clients.items()):
            exact = compute(spec, _xr(study.parts[k]), client.datasets["gbsg2-dp"].card)
            for key, value in exact.arrays.items():
                err = (released[name][key] - value) / (Z * exact.sensitivity[key])
                squares += float((err**2).sum())
                dof += err.size
    assert sps.chi2.sf(squares, dof) > 1e-4 and sps.chi2.cdf(squares, dof) > 1e-4, (squares, dof)
    for client in study.clients.values():
        spent = {b.dataset: b.epsilon_spent for b in client.budget}
        assert spent["gbsg2-dp"] > 0 and spent.get("gbsg2", 0.0) == 0.0
    km = fs.kaplan_meier(study.clients, "time", "cens", dataset="gbsg2-dp", times=[365.0, 730.0, 1460.0],
                         protection="dp", noise_multiplier=Z)
    assert km.table.shape[0] == 4 and np.isfinite(km.table["survival"]).all()
