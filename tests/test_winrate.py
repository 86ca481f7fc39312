"""Win rates: our numbers equal the `alpaca-eval` package's metric functions.

The package (dev extra) is imported offline: its length-controlled metric downloads
`df_gamed.csv` (per-instruction difficulty) from the hub, so the tests hand it a local file
instead. With the minimal GLM the difficulty column is not used at all; with the no-reg GLM
both sides get the same synthetic difficulties.
"""

from __future__ import annotations

import math
import sys
import types
import warnings

import numpy as np
import pytest

from alpacakit.evaluate.winrate import (
    CS,
    fit_l1_logistic,
    get_winrate,
    length_controlled_winrate,
    summarize,
)


@pytest.fixture(scope="module")
def ae():
    """alpaca_eval's metrics modules, importable offline.

    alpaca_eval 0.6.6 imports `pkg_resources` at module level (only to compare versions, never
    on the metric paths); setuptools >= 81 no longer ships it, so an empty stand-in is
    registered when, and only when, the real one is missing.
    """
    pytest.importorskip("sklearn")
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        sys.modules.setdefault("pkg_resources", types.ModuleType("pkg_resources"))
    pytest.importorskip("alpaca_eval")
    from alpaca_eval.metrics import glm_winrate, winrate

    return types.SimpleNamespace(glm=glm_winrate, winrate=winrate)


def _annotations(pref, len_model, len_base):
    import pandas as pd

    n = len(pref)
    return pd.DataFrame(
        {
            "instruction": [f"instruction {i}" for i in range(n)],
            "output_1": ["b" * int(k) for k in len_base],
            "output_2": ["m" * int(k) for k in len_model],
            "generator_1": "baseline",
            "generator_2": "model",
            "annotator": "test-judge",
            "preference": pref,
            "index": np.arange(n),
        }
    )


def _offline_hub(monkeypatch, ae, tmp_path, difficulty):
    import pandas as pd

    path = tmp_path / "df_gamed.csv"
    pd.DataFrame({"index": np.arange(len(difficulty)), "instruction_difficulty": difficulty, "model": "none"}).to_csv(
        path, index=False
    )
    monkeypatch.setattr(ae.glm, "hf_hub_download", lambda **kw: str(path))


def _synthetic(seed: int, n: int, kind: str):
    """Judgments that depend on length (as real judges' do), with ties, soft and missing values."""
    rng = np.random.default_rng(seed)
    len_model = rng.integers(1, 2500, n)
    len_base = rng.integers(1, 2500, n)
    p_model = 1 / (1 + np.exp(-(rng.normal(0, 1) + 1.5 * (len_model - len_base) / 1000)))
    if kind == "hard":
        pref = np.where(rng.random(n) < p_model, 2.0, 1.0)
        pref[rng.random(n) < 0.1] = 1.5
    elif kind == "soft":
        pref = 1 + np.clip(p_model + rng.normal(0, 0.2, n), 0, 1)
    else:  # both orders averaged, old-style ties (0) and unparsable judgments (NaN)
        pref = rng.choice([1.0, 1.25, 1.5, 1.75, 2.0, 0.0, np.nan], n, p=[0.3, 0.05, 0.1, 0.05, 0.4, 0.05, 0.05])
    return pref, len_model, len_base


def _same(a, b) -> bool:
    a, b = float(a), float(b)
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize(
    "prefs",
    [
        [1, 2, 2, 1.5, 2, 1, 0, 2],
        [1.0, 1.25, 1.75, 2.0, float("nan"), 1.5, 1.6, 1.4],
        [2, 2, 2],
        [1.5],
    ],
)
def test_get_winrate_equals_alpaca_eval(ae, prefs):
    ours = get_winrate(prefs)
    theirs = ae.winrate.get_winrate([{"preference": p} for p in prefs])
    assert set(ours) == set(theirs)
    for key in theirs:
        assert _same(ours[key], theirs[key]), (key, ours[key], theirs[key])


def test_a_tie_counts_half_and_missing_judgments_are_dropped():
    out = get_winrate([2, 1, 1.5, 1.5, None])
    assert out["win_rate"] == 50.0
    assert (out["n_wins"], out["n_wins_base"], out["n_draws"], out["n_total"]) == (1, 1, 2, 4)
    assert get_winrate([2, 2, 2, 1.5])["win_rate"] == 87.5


@pytest.mark.parametrize("seed,kind", [(0, "hard"), (1, "soft"), (2, "mixed")])
def test_length_controlled_winrate_equals_alpaca_eval_fitted_to_convergence(ae, monkeypatch, tmp_path, seed, kind):
    pref, len_model, len_base = _synthetic(seed, 160, kind)
    _offline_hub(monkeypatch, ae, tmp_path, np.zeros(160))
    info = dict(ae.glm.GLM_INFO["length_controlled_minimal"])
    info["kwargs"] = {"n_splits": 5, "tol": 1e-10, "max_iter": 1000}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn deprecation notices about alpaca_eval's arguments
        theirs = ae.glm.get_length_controlled_winrate(
            _annotations(pref, len_model, len_base), glm_info=info, save_weights_dir=None, is_warn_extreme_changes=False
        )
    ours = length_controlled_winrate(pref, len_model, len_base)
    assert ours["length_controlled_winrate"] == pytest.approx(theirs["length_controlled_winrate"], abs=1e-6)
    assert ours["lc_standard_error"] == pytest.approx(theirs["lc_standard_error"], abs=1e-6)
    assert theirs["win_rate"] == get_winrate(pref)["win_rate"]


def test_length_controlled_winrate_matches_alpaca_eval_defaults_within_liblinear_tolerance(ae, monkeypatch, tmp_path):
    """At the package's own defaults liblinear stops at tol=1e-4: the gap is its stopping error."""
    pref, len_model, len_base = _synthetic(3, 200, "hard")
    _offline_hub(monkeypatch, ae, tmp_path, np.zeros(200))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = ae.glm.get_length_controlled_winrate(
            _annotations(pref, len_model, len_base),
            glm_name="length_controlled_minimal",
            save_weights_dir=None,
            is_warn_extreme_changes=False,
        )
    ours = length_controlled_winrate(pref, len_model, len_base)
    assert ours["length_controlled_winrate"] == pytest.approx(theirs["length_controlled_winrate"], abs=0.01)


def test_length_controlled_winrate_with_difficulty_equals_alpaca_eval_noreg(ae, monkeypatch, tmp_path):
    pref, len_model, len_base = _synthetic(4, 150, "mixed")
    difficulty = np.random.default_rng(5).normal(0, 1, 150)
    _offline_hub(monkeypatch, ae, tmp_path, difficulty)
    info = dict(ae.glm.GLM_INFO["length_controlled_noreg"])
    info["kwargs"] = {"n_splits": 5, "tol": 1e-10, "max_iter": 1000}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = ae.glm.get_length_controlled_winrate(
            _annotations(pref, len_model, len_base), glm_info=info, save_weights_dir=None, is_warn_extreme_changes=False
        )
    ours = length_controlled_winrate(pref, len_model, len_base, difficulty=difficulty)
    assert ours["length_controlled_winrate"] == pytest.approx(theirs["length_controlled_winrate"], abs=1e-6)
    assert ours["lc_standard_error"] == pytest.approx(theirs["lc_standard_error"], abs=1e-6)


def test_a_judge_that_only_rewards_length_gets_a_length_controlled_rate_near_half():
    """Equal quality; the judge favours the longer answer, and the model's answers are longer."""
    rng = np.random.default_rng(7)
    len_base = rng.integers(100, 1500, 400)
    len_model = len_base + rng.integers(-300, 900, 400)
    delta = (len_base - len_model) / np.std(len_base - len_model, ddof=1)
    pref = np.where(rng.random(400) < 1 / (1 + np.exp(3 * np.tanh(delta))), 2.0, 1.0)
    raw = get_winrate(pref)["win_rate"]
    lc = length_controlled_winrate(pref, len_model, len_base)["length_controlled_winrate"]
    assert raw > 65
    assert abs(lc - 50) < 6


def test_l1_fit_satisfies_the_optimality_conditions():
    rng = np.random.default_rng(11)
    X = np.column_stack([np.tanh(rng.normal(size=120)), rng.normal(size=120), np.ones(120)])
    p = rng.random(120)
    for C in CS[[2, 5, 9]]:
        w = fit_l1_logistic(X, p, float(C))
        g = C * X.T @ (1 / (1 + np.exp(-X @ w)) - p)
        for j in range(3):
            if w[j] != 0:  # gradient balances the penalty's slope exactly
                assert g[j] + np.sign(w[j]) == pytest.approx(0, abs=1e-6 * C * 120)
            else:  # zero is optimal only while the gradient stays inside [-1, 1]
                assert abs(g[j]) <= 1 + 1e-9


def test_too_few_judgments_report_why_instead_of_a_number():
    out = summarize([2, 1, 2], [10, 20, 30], [30, 20, 10])
    assert out["length_controlled_winrate"] is None
    assert "at least 5" in out["lc_reason"]
    assert out["win_rate"] == pytest.approx(200 / 3)
