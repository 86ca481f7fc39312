"""Speed of the evaluation metrics against their reference implementations, in the same run.

    python benchmarks/eval_metrics.py [--train /work/shared/data/alpaca_data.json] [--n-train 52002]
                                      [--baseline-sample 300] [--judgments 805]

1. Contamination: `find_contaminated` (exact ROUGE-L through the prefix-filtered pool of
   curate/rouge.py) over the training instructions against our 185 held-out instructions,
   vs scoring every pair with `rouge_score` (what a straightforward script does). The
   baseline runs on a sample of training instructions (it is quadratic); its time is
   extrapolated linearly to the whole set, and both must find the same pairs on the sample.
2. Length-controlled win rate: ours (numpy) vs `alpaca_eval.metrics.get_length_controlled_winrate`
   (scikit-learn, pandas, patsy) on the same synthetic judgments (AlpacaEval's 805 by default),
   with the difference between the two numbers.

The training file defaults to Stanford's 52K Alpaca data if present (used only as a workload).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path


def bench_contamination(train_path: Path, n_train: int, sample: int) -> None:
    from rouge_score import rouge_scorer

    from alpacakit.evaluate.contamination import find_contaminated
    from alpacakit.evaluate.evalsets import load_eval_set

    records = json.loads(train_path.read_text(encoding="utf-8"))
    train = [r["instruction"] for r in records][:n_train]
    evals = [it.instruction for it in load_eval_set("alpacakit")]

    t0 = time.perf_counter()
    pairs = find_contaminated(train, evals, 0.7)
    ours = time.perf_counter() - t0

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    sub = train[:sample]
    t0 = time.perf_counter()
    ref = [(i, j, scorer.score(e, t)["rougeL"].fmeasure) for i, t in enumerate(sub) for j, e in enumerate(evals)]
    base = time.perf_counter() - t0
    ref = [(i, j, f) for i, j, f in ref if f > 0.7]
    same = ref == [p for p in pairs if p[0] < sample]
    base_full = base * len(train) / len(sub)
    print(f"contamination: {len(train):,} training x {len(evals)} eval instructions")
    print(
        f"  ours          {ours:8.2f} s   ({len(pairs)} pairs above 0.7, {len({i for i, _, _ in pairs})} training examples)"
    )
    print(f"  rouge_score   {base:8.2f} s on {len(sub)} instructions -> {base_full:8.1f} s extrapolated")
    print(f"  speed-up      {base_full / ours:8.1f}x   same pairs on the sample: {same}")


def bench_lc(n: int) -> None:
    import numpy as np
    import pandas as pd

    from alpacakit.evaluate.winrate import length_controlled_winrate

    try:
        import pkg_resources  # noqa: F401
    except ImportError:  # alpaca_eval 0.6.6 imports it; recent setuptools no longer ships it
        sys.modules.setdefault("pkg_resources", types.ModuleType("pkg_resources"))
    from alpaca_eval.metrics import glm_winrate

    rng = np.random.default_rng(0)
    len_model, len_base = rng.integers(50, 3000, n), rng.integers(50, 3000, n)
    p = 1 / (1 + np.exp(-(0.3 + 1.5 * (len_model - len_base) / 1000)))
    pref = np.where(rng.random(n) < p, 2.0, 1.0)
    pref[rng.random(n) < 0.1] = 1.5
    df = pd.DataFrame(
        {
            "instruction": [f"i{i}" for i in range(n)],
            "output_1": ["b" * k for k in len_base],
            "output_2": ["m" * k for k in len_model],
            "generator_1": "baseline",
            "generator_2": "model",
            "annotator": "bench",
            "preference": pref,
            "index": np.arange(n),
        }
    )
    with tempfile.TemporaryDirectory() as d:
        csv = Path(d) / "df_gamed.csv"
        pd.DataFrame({"index": np.arange(n), "instruction_difficulty": 0.0, "model": "none"}).to_csv(csv, index=False)
        glm_winrate.hf_hub_download = lambda **kw: str(csv)  # offline: the minimal GLM does not use this file
        t0 = time.perf_counter()
        ours = length_controlled_winrate(pref, len_model, len_base)["length_controlled_winrate"]
        t_ours = time.perf_counter() - t0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            theirs = glm_winrate.get_length_controlled_winrate(
                df, glm_name="length_controlled_minimal", save_weights_dir=None
            )["length_controlled_winrate"]
            t_theirs = time.perf_counter() - t0
    print(f"length-controlled win rate, {n} judgments")
    print(f"  ours (numpy, exact optimum)      {t_ours:6.2f} s   {ours:.6f}")
    print(f"  alpaca_eval (liblinear, tol 1e-4) {t_theirs:6.2f} s   {theirs:.6f}")
    print(f"  ratio (alpaca_eval / ours)       {t_theirs / t_ours:6.2f}x   difference {abs(ours - theirs):.2e} points")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=Path, default=Path("/work/shared/data/alpaca_data.json"))
    ap.add_argument("--n-train", type=int, default=52002)
    ap.add_argument("--baseline-sample", type=int, default=300)
    ap.add_argument("--judgments", type=int, default=805)
    args = ap.parse_args()
    if args.train.is_file():
        bench_contamination(args.train, args.n_train, args.baseline_sample)
    else:
        print(f"{args.train}: not found; skipping the contamination benchmark")
    bench_lc(args.judgments)


if __name__ == "__main__":
    main()
