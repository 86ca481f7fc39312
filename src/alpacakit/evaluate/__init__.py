"""Evaluation: answers to judge, pairwise LLM judging, win rates, contamination, the report.

`alpacakit.config` is imported first, on purpose: it builds `AlpacakitConfig` with the `eval`
section from `evaluate/config.py`, which in turn builds on `alpacakit.config`'s base sections.
Importing the base config before any `alpacakit.evaluate.*` module makes that cycle resolve
the same way whichever module a caller imports first.
"""

import alpacakit.config  # noqa: F401  (import order: see above)
