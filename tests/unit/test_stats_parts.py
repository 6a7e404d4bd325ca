"""fednb.stats over three local sites with different case mixes, against pooled references:
statsmodels (GLMs), lifelines (Kaplan-Meier, Cox), pandas and scipy (tables, moments,
quantiles). The sites compute their parts with the domain's own runtime
(fednb.runtime._stats.compute); only the transport differs from the integration test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import xarray as xr
from formulaic import model_matrix
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.datasets import load_gbsg2
from scipy.stats import chi2_contingency
from sklearn.datasets import load_breast_cancer, load_diabetes

import fednb.stats as fs
from fednb.errors import InvalidInput
from fednb.protocol._stats import StatsSpec
from fednb.runtime._stats import compute, default

REL = 1e-6
GBSG2_LEVELS = {"horTh": ["no", "yes"], "menostat": ["Pre", "Post"], "tgrade": ["I", "II", "III"]}


def split(df: pd.DataFrame, weight: np.ndarray, seed: int = 19) -> list[pd.DataFrame]:
    """Three sites: rows with a high ``weight`` go mostly to the first, low ones to the last."""
    rng = np.random.default_rng(seed)
    w = (weight - weight.min()) / (np.ptp(weight) or 1.0)
    p = np.stack([0.2 + w, np.full(len(w), 0.6), 1.2 - w], axis=1)
    site = np.asarray([rng.choice(3, p=row / row.sum()) for row in p])
    return [df.loc[site == k].reset_index(drop=True) for k in range(3)]


def to_xr(df: pd.DataFrame) -> xr.Dataset:
    return xr.Dataset({c: ("patient", df[c].to_numpy(dtype=object) if df[c].dtype == object
                           else df[c].to_numpy()) for c in df.columns})


def sites_of(parts: list[pd.DataFrame],
             bounds: dict[str, tuple[float, float]] | None = None) -> fs.LocalSites:
    return fs.LocalSites({f"h{k}": to_xr(p) for k, p in enumerate(parts)}, bounds=bounds)


def close(got: object, want: object, rel: float = REL) -> None:
    np.testing.assert_allclose(np.asarray(got, dtype=float), np.asarray(want, dtype=float), rtol=rel, atol=0)


@pytest.fixture(scope="module")
def gbsg2() -> tuple[list[pd.DataFrame], pd.DataFrame]:
    df = load_gbsg2()
    df["time"] = df["time"].astype(float)
    df.loc[[3, 40, 99], "tsize"] = np.nan  # missing values, as real registries have
    parts = split(df, (df["tgrade"] == "III").to_numpy() + df["pnodes"].to_numpy() / 10)
    return parts, pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def cancer() -> tuple[list[pd.DataFrame], pd.DataFrame]:
    bc = load_breast_cancer()
    cols = ["mean radius", "mean texture", "mean smoothness"]
    df = pd.DataFrame(bc.data[:, [list(bc.feature_names).index(c) for c in cols]],
                      columns=[c.replace(" ", "_") for c in cols])
    df["benign"] = bc.target.astype(float)
    parts = split(df, 1.0 - df["benign"].to_numpy())  # malignant cases at the referral centre
    return parts, pd.concat(parts, ignore_index=True)


def _reference_glm(pooled: pd.DataFrame, formula: str, family: sm.families.Family) -> object:
    mm = model_matrix(formula, pooled, na_action="drop")
    return sm.GLM(mm.lhs.to_numpy().ravel(), mm.rhs, family=family).fit(tol=1e-13, maxiter=100)


def test_glm_binomial_pooled_equals_statsmodels(cancer: tuple[list[pd.DataFrame], pd.DataFrame]) -> None:
    parts, pooled = cancer
    formula = "benign ~ mean_radius + mean_texture + mean_smoothness"
    got = fs.glm(sites_of(parts), formula, "binomial")
    ref = _reference_glm(pooled, formula, sm.families.Binomial())
    close(got.params, ref.params)
    close(got.bse, ref.bse)
    close(got.deviance, ref.deviance)
    assert got.n == len(pooled) and "Federated GLM" in got._repr_html_()


def test_glm_gaussian_pooled_equals_statsmodels() -> None:
    d = load_diabetes(as_frame=True).frame
    parts = split(d, d["bmi"].to_numpy())
    formula = "target ~ age + bmi + bp + s1 + s5"
    got = fs.glm(sites_of(parts), formula, "gaussian")
    ref = _reference_glm(pd.concat(parts, ignore_index=True), formula, sm.families.Gaussian())
    close(got.params, ref.params)
    close(got.bse, ref.bse)
    close(got.deviance, ref.deviance)
    close(got.scale, ref.scale)


def test_glm_poisson_pooled_equals_statsmodels() -> None:
    """Outpatient visits in the RAND Health Insurance Experiment (statsmodels' randhie)."""
    r = sm.datasets.randhie.load_pandas().data
    parts = split(r, r["disea"].to_numpy())
    formula = "mdvis ~ lncoins + idp + lpi + fmde + physlm + disea + hlthg + hlthf + hlthp"
    got = fs.glm(sites_of(parts), formula, "poisson")
    ref = _reference_glm(pd.concat(parts, ignore_index=True), formula, sm.families.Poisson())
    close(got.params, ref.params)
    close(got.bse, ref.bse)
    close(got.deviance, ref.deviance)


def test_glm_categorical_levels_absent_at_a_site(gbsg2: tuple[list[pd.DataFrame], pd.DataFrame]) -> None:
    """A level one site lacks still gets its column everywhere (public levels)."""
    parts, _ = gbsg2
    parts = [p[p["tgrade"] != "I"].reset_index(drop=True) if k == 0 else p for k, p in enumerate(parts)]
    pooled = pd.concat(parts, ignore_index=True)
    pooled["tgrade"] = pd.Categorical(pooled["tgrade"], categories=GBSG2_LEVELS["tgrade"])
    formula = "cens ~ age + tsize + C(tgrade) + horTh"
    got = fs.glm(sites_of(parts), formula, "binomial", levels=GBSG2_LEVELS)
    ref = _reference_glm(pooled.assign(horTh=pd.Categorical(pooled["horTh"], categories=["no", "yes"])),
                         formula, sm.families.Binomial())
    assert list(got.params.index) == list(ref.params.index)
    close(got.params, ref.params)
    close(got.bse, ref.bse)


def test_glm_meta_is_inverse_variance_of_site_fits(cancer: tuple[list[pd.DataFrame], pd.DataFrame]) -> None:
    parts, _ = cancer
    formula = "benign ~ mean_radius + mean_texture"
    got = fs.glm(sites_of(parts), formula, "binomial", method="meta")
    fits = [_reference_glm(p, formula, sm.families.Binomial()) for p in parts]
    prec = sum(np.linalg.inv(f.cov_params().to_numpy()) for f in fits)
    weighted = sum(np.linalg.inv(f.cov_params().to_numpy()) @ f.params.to_numpy() for f in fits)
    beta = np.linalg.solve(prec, weighted)
    close(got.params, beta)
    close(got.bse, np.sqrt(np.diag(np.linalg.inv(prec))))
    for k, f in enumerate(fits):
        close(got.per_site[f"h{k}"]["coef"], f.params)


def test_describe_by_group_equals_pandas(gbsg2: tuple[list[pd.DataFrame], pd.DataFrame]) -> None:
    parts, pooled = gbsg2
    got = fs.describe(sites_of(parts), ["age", "tsize", "tgrade"], by="horTh", levels=GBSG2_LEVELS,
                      quantiles=(0.25, 0.5, 0.75))
    for g, sub in pooled.groupby("horTh"):
        for v in ("age", "tsize"):
            row = got.loc[(g, v)]
            assert row["n"] == sub[v].notna().sum() and row["missing"] == sub[v].isna().sum()
            close(row["mean"], sub[v].mean())
            close(row["sd"], sub[v].std())
            close(row[["q0.25", "q0.5", "q0.75"]], sub[v].quantile([0.25, 0.5, 0.75]))
        shares = sub["tgrade"].value_counts(normalize=True) * 100
        for lv in GBSG2_LEVELS["tgrade"]:
            close(got.loc[(g, f"tgrade={lv}"), "percent"], shares[lv])


def test_quantiles_with_a_filter_equal_pandas(gbsg2: tuple[list[pd.DataFrame], pd.DataFrame]) -> None:
    parts, pooled = gbsg2
    got = fs.quantiles(sites_of(parts), ["time", "estrec"], [0.1, 0.5, 0.9], where=[("age", ">=", 50)])
    sub = pooled[pooled["age"] >= 50]
    close(got["time"], sub["time"].quantile([0.1, 0.5, 0.9]))
    close(got["estrec"], sub["estrec"].quantile([0.1, 0.5, 0.9]))


def test_crosstab_and_chi_square_equal_scipy(gbsg2: tuple[list[pd.DataFrame], pd.DataFrame]) -> None:
    parts, pooled = gbsg2
    got = fs.crosstab(sites_of(parts), "tgrade", "horTh", levels=GBSG2_LEVELS)
    ref = pd.crosstab(pooled["tgrade"], pooled["horTh"]).loc[GBSG2_LEVELS["tgrade"]]
    np.testing.assert_array_equal(got.to_numpy(), ref.to_numpy())
    test = chi2_contingency(ref.to_numpy())
    close([got.attrs["chi2"], got.attrs["p"]], [test[0], test[1]])
    one = fs.crosstab(sites_of(parts), "menostat", levels=GBSG2_LEVELS)
    assert one["count"].to_dict() == pooled["menostat"].value_counts().to_dict()


def test_correlation_and_covariance_equal_pandas(gbsg2: tuple[list[pd.DataFrame], pd.DataFrame]) -> None:
    parts, pooled = gbsg2
    names = ["age", "tsize", "pnodes", "progrec"]
    ref = pooled[names].dropna()
    close(fs.correlation(sites_of(parts), names), ref.corr())
    close(fs.covariance(sites_of(parts), names), ref.cov())


def test_kaplan_meier_equals_lifelines(gbsg2: tuple[list[pd.DataFrame], pd.DataFrame]) -> None:
    parts, pooled = gbsg2
    got = fs.kaplan_meier(sites_of(parts), "time", "cens")
    kmf = KaplanMeierFitter().fit(pooled["time"], pooled["cens"])
    t = got.table.index.to_numpy()
    close(got.table["survival"], kmf.survival_function_at_times(t))
    ci = kmf.confidence_interval_.loc[t]
    close(got.table["ci_lower"], ci.iloc[:, 0])
    close(got.table["ci_upper"], ci.iloc[:, 1])
    np.testing.assert_array_equal(got.table["at_risk"], kmf.event_table.loc[t, "at_risk"])


def _cox_frame(pooled: pd.DataFrame) -> pd.DataFrame:
    x = model_matrix("age + pnodes + progrec + C(horTh)", pooled.assign(
        horTh=pd.Categorical(pooled["horTh"], categories=["no", "yes"])), na_action="drop")
    x = x.drop(columns="Intercept")
    return pd.concat([x.reset_index(drop=True), pooled[["time", "cens"]].reset_index(drop=True)], axis=1)


def test_cox_pooled_efron_equals_lifelines(gbsg2: tuple[list[pd.DataFrame], pd.DataFrame]) -> None:
    parts, pooled = gbsg2
    got = fs.cox(sites_of(parts), "~ age + pnodes + progrec + C(horTh)", "time", "cens", levels=GBSG2_LEVELS)
    frame = _cox_frame(pooled)
    ref = CoxPHFitter().fit(frame, "time", "cens", fit_options={"precision": 1e-12})
    close(got.params, ref.params_[got.params.index])
    close(got.table["se"], ref.standard_errors_[got.params.index])
    close(got.loglik, ref.log_likelihood_)


def test_cox_stratified_by_site_equals_lifelines_strata(
        gbsg2: tuple[list[pd.DataFrame], pd.DataFrame]) -> None:
    parts, _ = gbsg2
    got = fs.cox(sites_of(parts), "~ age + pnodes + progrec", "time", "cens", strata="site")
    cols = ["age", "pnodes", "progrec", "time", "cens"]
    frame = pd.concat([p[cols].assign(site=k) for k, p in enumerate(parts)], ignore_index=True)
    ref = CoxPHFitter(strata=["site"]).fit(frame, "time", "cens", fit_options={"precision": 1e-12})
    close(got.params, ref.params_[got.params.index])
    close(got.table["se"], ref.standard_errors_[got.params.index])
    close(got.loglik, ref.log_likelihood_)


SPECS = [
    dict(op="moments", variables=["age", "tsize", "horTh"], group="horTh", cross=True),
    dict(op="table", variables=["tgrade", "horTh"]),
    dict(op="quantile_counts", variables=["pnodes", "horTh"], group="horTh", thresholds=[1, 3, 9]),
    dict(op="km_table", variables=["time", "cens"], time="time", event="cens", times=[365, 730, 1825]),
    dict(op="glm_step", variables=["cens", "age", "tgrade"], formula="cens ~ age + C(tgrade)",
         family="binomial", beta=[0.5, -0.01, 0.2, 0.3]),
    dict(op="glm_step", variables=["time", "age"], formula="time ~ age", family="poisson", beta=[6.5, 0.001]),
]
BOUNDS = {"age": (20.0, 90.0), "tsize": (0.0, 150.0), "pnodes": (0.0, 60.0), "time": (0.0, 3000.0),
          "cens": (0.0, 1.0)}


@pytest.mark.parametrize("fields", SPECS, ids=lambda f: f["op"] + "-" + str(f.get("family", "")))
def test_dp_sensitivity_bounds_a_replaced_row(fields: dict[str, object],
                                              gbsg2: tuple[list[pd.DataFrame], pd.DataFrame]) -> None:
    """Replacing one row by another (extreme, missing or out-of-range values) moves each
    array by at most its declared L2 sensitivity; the default has compute's structure."""
    spec = StatsSpec(**fields, levels={k: v for k, v in GBSG2_LEVELS.items() if k in fields["variables"]},
                     protection="dp", noise_multiplier=1.0)
    base = gbsg2[0][0]
    sites = sites_of([base], BOUNDS)
    card = sites.card("h0")
    ref = compute(spec, sites.data["h0"], card)
    rng = np.random.default_rng(7)
    extremes = {"age": [20, 90, 300, np.nan], "tsize": [0, 150, np.nan, -5], "pnodes": [0, 60, np.nan],
                "time": [0, 1, 3000, 1e9, np.nan], "cens": [0, 1, np.nan],
                "horTh": ["no", "yes", "bad"], "tgrade": ["I", "III", "x"]}
    for _ in range(40):
        i = int(rng.integers(len(base)))
        other = base.copy()
        for col, vals in extremes.items():
            other.loc[i, col] = vals[int(rng.integers(len(vals)))]
        got = compute(spec, to_xr(other), card)
        for name, arr in ref.arrays.items():
            moved = float(np.linalg.norm(got.arrays[name] - arr))
            assert moved <= ref.sensitivity[name] * (1 + 1e-9), (name, moved, ref.sensitivity[name])
    blank = default(spec, card)
    assert {k: v.shape for k, v in blank.arrays.items()} == {k: v.shape for k, v in ref.arrays.items()}
    assert blank.sensitivity == ref.sensitivity
    assert blank.n_params == ref.n_params


def test_spec_refuses_code_in_formulas_and_unlisted_variables() -> None:
    for formula in ("y ~ __import__('os').system('id')", "y ~ x.real", "y ~ np.log(x)", "y ~ x + 2"):
        with pytest.raises(ValueError):
            StatsSpec(op="glm_step", variables=["y", "x"], formula=formula, family="gaussian", beta=[0.0])
    with pytest.raises(ValueError, match="add"):
        StatsSpec(op="moments", variables=["x"], where=[{"variable": "age", "op": ">", "value": 3}])
    with pytest.raises(ValueError, match="public time grid"):
        StatsSpec(op="km_table", variables=["t", "e"], time="t", event="e", protection="dp",
                  noise_multiplier=1.0)


def test_compute_refuses_what_the_card_rules_out(gbsg2: tuple[list[pd.DataFrame], pd.DataFrame]) -> None:
    sites = sites_of(gbsg2[0])
    for spec, msg in ((StatsSpec(op="moments", variables=["nosuch"]), "no variable"),
                      (StatsSpec(op="table", variables=["tgrade"], levels={}) if False else
                       StatsSpec(op="moments", variables=["tgrade"]), "needs its levels"),
                      (StatsSpec(op="moments", variables=["age"], protection="dp", noise_multiplier=1.0),
                       "no declared bounds"),
                      (StatsSpec(op="glm_step", variables=["cens", "age"], formula="cens ~ age",
                                 family="binomial", beta=[0.0]), "coefficients")):
        with pytest.raises(InvalidInput, match=msg):
            sites.run(spec)


@pytest.mark.parametrize("protection", ["disclosure", "dp"])
@pytest.mark.parametrize("fields", SPECS, ids=lambda f: f["op"] + "-" + str(f.get("family", "")))
def test_the_submission_check_on_one_row_sees_what_n_rows_give(
        fields: dict[str, object], protection: str,
        gbsg2: tuple[list[pd.DataFrame], pd.DataFrame]) -> None:
    """The domain builds a request's release structure from one row of the card (every row of
    the default's input is the same): names, shapes, parameter count and sensitivities must be
    those of the whole dataset's default."""
    from fednb.domain._disclosure import _one_row

    spec = StatsSpec(**fields, levels={k: v for k, v in GBSG2_LEVELS.items() if k in fields["variables"]},
                     protection=protection, noise_multiplier=1.0 if protection == "dp" else None)
    card = sites_of([gbsg2[0][0]], BOUNDS).card("h0")
    full, one = default(spec, card), default(spec, _one_row(card))
    assert {k: v.shape for k, v in one.arrays.items()} == {k: v.shape for k, v in full.arrays.items()}
    assert one.n_params == full.n_params
    assert one.sensitivity == full.sensitivity
