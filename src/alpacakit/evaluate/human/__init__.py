"""Human A/B evaluation, the way Alpaca was evaluated: blind pairwise comparison by people.

- `store`: the SQLite database (items, raters' judgments, the seeded display order);
- `app`: the FastAPI app serving the rating page (a static HTML/JS data file) and its JSON API;
- `stats`: win rates and inter-rater agreement (Cohen's kappa), and the export.

`alpacakit eval human A.json B.json` and `alpacakit eval human-export DB -o results.json`
are the command-line entry points (`alpacakit/cli/eval.py`).
"""

from alpacakit.evaluate.human.stats import cohen_kappa, export_results
from alpacakit.evaluate.human.store import HumanEvalStore, pair_outputs

__all__ = ["HumanEvalStore", "cohen_kappa", "export_results", "pair_outputs"]
