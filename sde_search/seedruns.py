"""The seed stage's training runs: each (design, seed) of :func:`sde_search.seeds.plan` trained and scored.

Each run goes to its own worker process (``spawn``, since torch and fork do not mix), which imports this
module to find :func:`run_job`: so it stays light at import time (torch is imported inside the worker's
first job, never here), and the choice of designs and the judgement stay pure in :mod:`sde_search.seeds`.
Every finished run is written to its file at once, so a search killed during the stage resumes it without
redoing finished runs.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sde_search import seeds
from sde_search.config import Task
from sde_search.seeds import SPLITS, Job

log = logging.getLogger(__name__)


def run_job(task: Task, job: Job, threads: int) -> dict[str, Any]:
    """Trains one run and scores it on every split; returns what its file holds.

    The eval splits' scores and generations are those of ``fit``'s last report (full eval sets); the test splits
    are scored from the last checkpoint.
    """
    import warnings

    # peft/transformers warn about a deprecated attribute once per model build: noise in the command's output
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    from sde_search import scoring, trial  # heavy: torch, peft
    from sde_search.render import parse

    hp = {**job.hparams, "seed": job.seed}
    tmp = tempfile.mkdtemp(prefix="sde-seed-")
    try:
        final = trial.fit(task, job.design, hp, report=lambda m, p: None, checkpoint_dir=tmp, threads=threads)
        checkpoint = sorted(Path(tmp).glob("report-*"))[-1]
        texts: dict[str, list[str]] = json.loads((checkpoint / "generations.json").read_text())
        scores = {split: _of_split(final, split) for split in texts}
        for split in (s for s in SPLITS if s.startswith("test_") and s in task.splits):
            found: dict[str, list[str]] = {}
            metrics = scoring.evaluate_checkpoint(task, job.design, hp, str(checkpoint), splits=[split],
                                                  threads=threads, outputs=found)[0]
            if split in found:  # else not scored (a No-inst design on OOD slots)
                texts[split] = found[split]
                scores[split] = _of_split(metrics, split)
        out: dict[str, Any] = {"design": job.design.to_params(), "hparams": hp, "seed": job.seed, "splits": {}}
        for split, generations in texts.items():
            ood = split.endswith("_ood")
            records = []
            for record, text in zip(task.splits[split], generations, strict=True):
                p = parse(text, job.design, task, ood=ood, slots=record.slots)
                records.append({"id": record.id, "output": text, "parsed": {k: list(v) for k, v in p.answer.items()},
                                "errors": list(p.errors)})
            out["splits"][split] = {"metrics": scores[split], "records": records}
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _of_split(metrics: Mapping[str, float], split: str) -> dict[str, float]:
    """A split's own keys of a trial's metrics, without the ``_ood`` suffix the OOD splits' keys carry."""
    ood = split.endswith("_ood")
    return {k.removesuffix("_ood"): v for k, v in metrics.items() if k.endswith("_ood") == ood}


def _write(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)  # atomic: a killed stage leaves whole files or none


def run(task: Task, jobs: Sequence[Job], *, workers: int, threads: int) -> dict[Path, dict[str, Any]]:
    """Runs the jobs without a matching file yet (``workers`` processes at once); returns every file's data.

    A failed job is logged and left without a file (a later ``--resume`` or ``report --rescore`` retries it).
    """
    todo = [j for j in jobs if not (j.path.exists() and seeds.matches(task, j, json.loads(j.path.read_text())))]
    if todo:
        todo[0].path.parent.mkdir(parents=True, exist_ok=True)
        log.info("seed stage: %d runs (%d already done), %d at once", len(todo), len(jobs) - len(todo), workers)
        context = multiprocessing.get_context("spawn")  # torch and fork do not mix
        with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, workers), mp_context=context) as pool:
            futures = {pool.submit(run_job, task, job, threads): job for job in todo}
            done = 0
            for future in concurrent.futures.as_completed(futures):
                job, done = futures[future], done + 1
                try:
                    data = future.result()
                except Exception as exc:  # noqa: BLE001 - one failed run must not lose the others or the report
                    log.warning("seed stage: %s seed %d failed: %s", job.design.short(), job.seed, exc)
                    continue
                _write(job.path, data)
                score = data["splits"].get("eval_id", {}).get("metrics", {}).get("score", math.nan)
                log.info("seed stage: %d/%d done: %s seed %d, eval %.3f", done, len(todo), job.design.short(),
                         job.seed, score)
    return {j.path: json.loads(j.path.read_text()) for j in jobs if j.path.exists()}
