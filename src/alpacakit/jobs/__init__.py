"""Resumable, kill -9-safe paid work: the engine that generation, eval generate and judging share.

- `journal.py`: the job folder and its formats (fsynced append-only `responses.jsonl`, derived
  `examples.jsonl` / `discards.jsonl`, `sent.jsonl`, `manifest.json`), replay, `JournaledJob`;
- `stage.py`: what a stage supplies (`JobStage`) and how it is run (`JobOptions`);
- `engine.py`: `run_job`, concurrency, budget checks, refusals recorded as discards, cutting;
- `worker.py`: processing answers in a forked worker, off the event loop;
- `totals.py`: what was asked, paid and kept, over every run of a job.

The Batch API path (`jobs/batch.py`) runs the same stages and journal through batches.
"""

from alpacakit.jobs.engine import run_job
from alpacakit.jobs.journal import (
    DISCARDS,
    EXAMPLES,
    JOURNAL,
    MANIFEST,
    PER_REQUEST_FAILURES,
    SENT,
    JournaledJob,
    Processor,
    Request,
    Restorable,
    derive,
)
from alpacakit.jobs.stage import InFlight, JobOptions, JobStage
from alpacakit.jobs.totals import JobTotals

__all__ = [
    "DISCARDS",
    "EXAMPLES",
    "JOURNAL",
    "MANIFEST",
    "PER_REQUEST_FAILURES",
    "SENT",
    "InFlight",
    "JobOptions",
    "JobStage",
    "JobTotals",
    "JournaledJob",
    "Processor",
    "Request",
    "Restorable",
    "derive",
    "run_job",
]
