"""Evaluation: answers to judge, pairwise LLM judging, win rates, contamination, the report.

Nothing is imported here: `alpacakit.evaluate.config` (the `eval` section) is imported by
`alpacakit --help` and `config show`, and importing it runs this file first.
"""
