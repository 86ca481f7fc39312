"""Win rates as AlpacaEval defines them, and the length-controlled win rate, offline.

Preferences use AlpacaEval's encoding: for each instruction a number in [1, 2] where 1 means
the baseline's output (`output_1`) was preferred, 2 means the evaluated model's output
(`output_2`) was preferred, and 1.5 is a tie. 0 is accepted as an old spelling of a tie; NaN
(or None) means "no usable judgment" and is dropped. Averaging both presentation orders gives
values such as 1.25 or 1.75, which these formulas take as they are.

`get_winrate` returns exactly what `alpaca_eval.metrics.get_winrate` returns (win rate = mean
of preference - 1, in percent; its standard error uses the sample standard deviation), and
`length_controlled_winrate` reproduces `alpaca_eval.metrics.get_length_controlled_winrate`
with the GLM AlpacaEval ships for use without leaderboard data (`length_controlled_minimal`):

    P(model preferred) = sigmoid(w_len * tanh(std_delta_len) + w_0)

where `std_delta_len` is (len(baseline output) - len(model output)) divided by its sample
standard deviation, fitted on soft labels (the preference - 1) with an L1 penalty; the
penalty strength C is chosen among `logspace(-4, 4, 10)` by 5-fold cross-validated log loss
(folds grouped as scikit-learn's `GroupKFold` groups them), then the model is refitted on all
data with that C. The length-controlled win rate is the mean predicted preference with the
length difference set to 0: what the judge would say if both outputs were equally long.

Why this GLM and not AlpacaEval 2.0's default (`length_controlled_v1`): the default adds a
per-instruction difficulty term and a regularisation towards "gamed" baselines, both estimated
from AlpacaEval's leaderboard and downloaded from the Hugging Face hub at run time. Neither
exists for our own eval set, and a metric must not fetch anything (see style notes). Passing
`difficulty` reproduces `length_controlled_noreg` for users who have such estimates.

How the numbers compare with the package: AlpacaEval fits with scikit-learn's liblinear
solver at its default tolerance (1e-4), which stops a little short of the optimum; we solve
the same convex problem to machine precision (proximal Newton). With the package's tolerance
tightened (`glm_info={..., "kwargs": {"n_splits": 5, "tol": 1e-10}}`) the two agree to better
than 1e-6 percentage points (tests/test_winrate.py); at its default tolerance they differ by
liblinear's stopping error, a few thousandths of a point at most.

numpy only: no scikit-learn, pandas or patsy at run time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

# AlpacaEval's choices, kept as named constants so the link to the reference is visible.
N_SPLITS = 5
CS = np.logspace(-4, 4, 10)  # LogisticRegressionCV(Cs=10)
_LOGLOSS_EPS = 1e-15  # alpaca_eval.metrics.glm_winrate.logloss clips predictions to [eps, 1 - eps]


def _as_preferences(preferences: Sequence[Any]) -> np.ndarray:
    """Floats with ties spelled 1.5 and missing judgments as NaN."""
    out = np.array([np.nan if p is None else float(p) for p in preferences], dtype=float)
    out[out == 0.0] = 1.5
    return out


def _valid(p: np.ndarray) -> np.ndarray:
    return (p >= 1.0) & (p <= 2.0)


def _sem(x: np.ndarray) -> float:
    """Standard error of the mean with the sample standard deviation (pandas' `Series.sem`)."""
    if len(x) < 2:
        return math.nan
    return float(np.std(x, ddof=1) / math.sqrt(len(x)))


def get_winrate(preferences: Sequence[Any]) -> dict[str, float | int]:
    """Win rate of the model (preference 2) against the baseline (preference 1), in percent.

    Keys and values equal `alpaca_eval.metrics.get_winrate`: win_rate, standard_error, n_wins,
    n_wins_base, n_draws, n_total and discrete_win_rate (each preference rounded to the nearest
    of 1, 1.5, 2 first). Values outside [1, 2] (NaN: no usable judgment) are left out.
    """
    raw = _as_preferences(preferences)
    n_draws = int(np.sum(raw == 1.5))
    p = raw[_valid(raw)] - 1.0
    out: dict[str, float | int] = {
        "win_rate": float(np.mean(p) * 100) if len(p) else math.nan,
        "standard_error": _sem(p) * 100,
        "n_wins": int(np.sum(p > 0.5)),
        "n_wins_base": int(np.sum(p < 0.5)),
        "n_draws": n_draws,
        "n_total": int(len(p)),
    }
    # The discrete rate: 1.5 stays a tie, anything else is rounded to the nearest whole
    # preference (numpy rounds half to even, as pandas does; 1.5 never reaches the rounding).
    disc = raw.copy()
    finite = np.isfinite(disc) & (disc != 1.5)
    disc[finite] = np.round(disc[finite])
    d = disc[_valid(disc)] - 1.0
    out["discrete_win_rate"] = float(np.mean(d) * 100) if len(d) else math.nan
    return out


# --------------------------------------------------------------------------- the GLM


def _sigmoid(t: np.ndarray | float) -> Any:
    return np.exp(-np.logaddexp(0.0, -np.asarray(t, dtype=float)))


def _objective(w: np.ndarray, X: np.ndarray, p: np.ndarray, C: float) -> float:
    t = X @ w
    loss = p * np.logaddexp(0.0, -t) + (1.0 - p) * np.logaddexp(0.0, t)
    return float(np.abs(w).sum() + C * loss.sum())


def fit_l1_logistic(X: np.ndarray, p: np.ndarray, C: float, *, tol: float = 1e-12, max_iter: int = 100) -> np.ndarray:
    """argmin_w ||w||_1 + C * sum_i [p_i log(1 + e^-x_i.w) + (1 - p_i) log(1 + e^x_i.w)].

    The problem liblinear solves for AlpacaEval's duplicated rows (each row once with label 1
    and weight p, once with label 0 and weight 1 - p), written directly with soft labels.
    Proximal Newton: each step minimises the L1 penalty plus the quadratic model of the loss
    exactly (coordinate descent over the few features), then a backtracking line search;
    it stops when the smallest subgradient is ~machine-precision small, so the result is the
    optimum, not an approximation of it.
    """
    n, d = X.shape
    w = np.zeros(d)
    f = _objective(w, X, p, C)
    scale = max(1.0, C * n)
    for _ in range(max_iter):
        s = _sigmoid(X @ w)
        g = C * (X.T @ (s - p))
        H = C * (X.T * (s * (1.0 - s))) @ X
        sub = np.where(w != 0, g + np.sign(w), np.sign(g) * np.maximum(np.abs(g) - 1.0, 0.0))
        if np.max(np.abs(sub)) <= tol * scale:
            break
        step_dir = _l1_quadratic_step(w, g, H)
        decrease = float(g @ step_dir + np.abs(w + step_dir).sum() - np.abs(w).sum())
        if decrease >= 0:  # no descent direction left at this precision
            break
        # Backtracking; the slack lets a step through whose gain is below the rounding of f:
        # near the optimum f cannot resolve the last digits of w, but the gradient can.
        t = 1.0
        for _ in range(40):
            w_new = w + t * step_dir
            f_new = _objective(w_new, X, p, C)
            if f_new <= f + 0.01 * t * decrease + 1e-13 * abs(f):
                break
            t *= 0.5
        else:
            break
        w, f = w_new, f_new
    return w


def _l1_quadratic_step(w: np.ndarray, g: np.ndarray, H: np.ndarray) -> np.ndarray:
    """argmin_s g.s + s'Hs/2 + ||w + s||_1 by cyclic coordinate descent (a handful of features)."""
    d = len(w)
    s = np.zeros(d)
    for _ in range(1000):
        biggest = 0.0
        for j in range(d):
            hjj = H[j, j]
            if hjj <= 0:
                continue
            z = w[j] + s[j]
            zt = z - (g[j] + H[j] @ s) / hjj
            z_new = math.copysign(max(abs(zt) - 1.0 / hjj, 0.0), zt)
            change = z_new - z
            s[j] += change
            biggest = max(biggest, abs(change))
        if biggest <= 1e-14 * (1.0 + float(np.abs(w + s).max())):
            break
    return s


def _group_kfold_folds(n: int, n_splits: int) -> np.ndarray:
    """Fold of each row under scikit-learn's GroupKFold with one group per row.

    GroupKFold sorts groups by size (a stable sort, reversed) and gives each to the lightest
    fold; with equal sizes that deals the rows out from the last one backwards.
    """
    return (n - 1 - np.arange(n)) % n_splits


def _mean_logloss(p: np.ndarray, q: np.ndarray) -> float:
    q = np.clip(q, _LOGLOSS_EPS, 1 - _LOGLOSS_EPS)
    return float(-np.mean(p * np.log(q) + (1 - p) * np.log(1 - q)))


def length_controlled_winrate(
    preferences: Sequence[Any],
    len_model: Sequence[int],
    len_baseline: Sequence[int],
    *,
    difficulty: Sequence[float] | None = None,
    n_splits: int = N_SPLITS,
) -> dict[str, Any]:
    """AlpacaEval's length-controlled win rate (see the module doc), plus the fit behind it.

    `len_model` / `len_baseline`: character lengths of the two outputs of each instruction
    (alpaca_eval uses `str.len()`). Returns length_controlled_winrate and lc_standard_error in
    percent (None when it cannot be fitted, with `lc_reason`), the chosen `lc_C`, and the
    fitted weights `lc_weights` (length, [difficulty,] baseline).
    """
    pref = _as_preferences(preferences)
    l_model = np.asarray(len_model, dtype=float)
    l_base = np.asarray(len_baseline, dtype=float)
    if not (len(pref) == len(l_model) == len(l_base)):
        raise ValueError("preferences, len_model and len_baseline must have the same length")
    train = ~np.isnan(pref)
    n_train = int(train.sum())
    if n_train < n_splits:
        return {
            "length_controlled_winrate": None,
            "lc_standard_error": None,
            "lc_C": None,
            "lc_weights": None,
            "lc_reason": f"needs at least {n_splits} judged instructions, found {n_train}",
        }
    delta = l_base - l_model
    sd = float(np.std(delta, ddof=1)) if len(delta) > 1 else 0.0
    z = delta / sd if sd > 0 and math.isfinite(sd) else np.zeros_like(delta)
    columns = [np.tanh(z)]
    names = ["length"]
    if difficulty is not None:
        columns.append(np.asarray(difficulty, dtype=float))
        names.append("difficulty")
    columns.append(np.ones_like(z))
    names.append("baseline")
    X_all = np.column_stack(columns)
    X, p = X_all[train], pref[train] - 1.0

    folds = _group_kfold_folds(n_train, n_splits)
    scores = np.zeros(len(CS))
    for k in range(n_splits):
        tr, te = folds != k, folds == k
        for ci, C in enumerate(CS):
            w = fit_l1_logistic(X[tr], p[tr], C)
            scores[ci] -= _mean_logloss(p[te], _sigmoid(X[te] @ w))
    best = int(np.argmax(scores))
    w = fit_l1_logistic(X, p, float(CS[best]))

    X_test = X_all.copy()
    X_test[:, 0] = 0.0  # no length difference
    predicted = _sigmoid(X_test @ w)
    return {
        "length_controlled_winrate": float(np.mean(predicted) * 100),
        "lc_standard_error": _sem(predicted) * 100,
        "lc_C": float(CS[best]),
        "lc_weights": dict(zip(names, (float(v) for v in w))),
    }


def summarize(
    preferences: Sequence[Any],
    len_model: Sequence[int],
    len_baseline: Sequence[int],
    difficulty: Sequence[float] | None = None,
) -> dict[str, Any]:
    """get_winrate and the length-controlled win rate in one JSON-ready dict (NaN -> None)."""
    out: dict[str, Any] = dict(get_winrate(preferences))
    if len(preferences):
        out.update(length_controlled_winrate(preferences, len_model, len_baseline, difficulty=difficulty))
    else:
        out.update(
            {"length_controlled_winrate": None, "lc_standard_error": None, "lc_reason": "no judged instructions"}
        )
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}
