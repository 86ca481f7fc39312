"""Verifiable instruction following: tasks with constraints a program can check exactly.

Pairwise judging says which answer a judge *prefers*; it cannot say whether a model did what
it was told. Here every item carries checks (`checks.py`) with one right answer each, so a
student and its base model can be compared without a judge (`score.py`). The items are in
`evaluate/data/follow.jsonl`, written by the alpacakit team.
"""
