"""``sde-search train``: fits one design outside the search, prints a table row per report, writes what it made.

The command's side of :func:`sde_search.trial.fit`: what the user sees (this module prints), the files under
``--out``, the test splits scored once from the last checkpoint and, with ``--full``, the saved adapter.

Imports torch, transformers and peft (heavy); never Ray or MLflow.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from sde_search import generations, steps
from sde_search.config import Task, TrainConfig, codes_text
from sde_search.design import Design
from sde_search.model import TrialError, load_model, resolve_hparams
from sde_search.scoring import evaluate_checkpoint
from sde_search.trial import fit

TEST_SPLITS = ("test_id", "test_ood")
SCORED_SPLITS = ("eval_id", "eval_ood", *TEST_SPLITS)


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(task: Task, design: Design, *, out: str | Path, hparams: Mapping[str, Any] | None = None,
         save_adapter: bool = False, test: bool = False) -> int:
    """``sde-search train``: fits one design, prints each report as a table row and writes what it generated.

    ``OUT`` receives ``checkpoints/``, ``metrics.jsonl`` (one line per report) and, per scored split,
    ``outputs/design.<split>.jsonl`` (:mod:`sde_search.generations`, the search's layout): the last report's
    eval sets, and with ``test`` the test splits, scored once from the last checkpoint (their metrics also go
    to ``test_metrics.json``). With ``save_adapter`` (``--full``) the final LoRA adapter and tokenizer are
    saved to ``OUT/adapter``.
    """
    out = Path(out)
    hp = resolve_hparams(task, hparams)
    tests = [s for s in TEST_SPLITS if test and s in task.splits]
    has_ood = task.ood_measurable(design) and any(s in task.splits for s in ("eval_ood", *tests) if "_ood" in s)
    _print_header(task, design, hp, has_ood)
    rows: list[dict[str, float]] = []
    checkpoints: list[str] = []

    def show(m: dict[str, float], ckpt: str | None) -> None:
        rows.append(m)
        checkpoints.extend([ckpt] if ckpt else [])
        print(f"{int(m['report']):6d} {m['epoch']:6.2f} {m['train_loss']:7.3f} {_cells(m, has_ood)} "
              f"{m['train_s']:8.1f} {m['gen_s']:6.1f}", flush=True)

    t0 = time.perf_counter()
    try:
        final = fit(task, design, hparams, report=show, checkpoint_dir=str(out / "checkpoints"))
    except TrialError as exc:
        print(f"trial failed: {exc}", file=sys.stderr)
        return 1
    last = Path(checkpoints[-1])  # this run's own: an --out reused from a longer run keeps older report folders
    texts: dict[str, list[str]] = json.loads((last / "generations.json").read_text())
    scored: dict[str, float] = {}
    if tests:
        t1 = time.perf_counter()
        scored = evaluate_checkpoint(task, design, hparams, str(last), splits=tests, outputs=texts)[0]
        print(f"{'test':>6} {'-':>6} {'-':>7} {_cells(scored, has_ood)} {'-':>8} {time.perf_counter() - t1:6.1f}",
              flush=True)
    _print_summary(task, final, scored, has_ood, time.perf_counter() - t0)
    folder = out / "outputs"
    written = _write_outputs(task, design, out, rows, texts, scored)
    print(f"generations in {folder}: {', '.join(p.name for p in written)} (one JSON line per record: id, gold, "
          "prompt, target, output, parsed, errors)")
    if save_adapter:
        adapter = save_final_adapter(task, hparams, str(last), out / "adapter")
        print(f"adapter saved to {adapter} (peft format; load with PeftModel.from_pretrained)")
    return 0


def _print_header(task: Task, design: Design, hp: TrainConfig, has_ood: bool) -> None:
    """What is trained, the training switches, the label codes, and the table's head."""
    print(f"training {design.short()} on {task.config.name}: {len(task.splits['train'])} records, "
          f"{hp.epochs} epochs, {hp.reports_per_epoch} reports/epoch, model {task.config.model.name}", flush=True)
    print(optimizer_line(hp, len(task.splits["train"])), flush=True)
    if design.label_style == "number" and not task.kind.multi_valued:
        print(f"label codes: {codes_text(task.config.labels.numbers)}", flush=True)
    print(f"{'report':>6} {'epoch':>6} {'loss':>7} {'ID':>7} {'ID fmt':>7}" + (f" {'OOD':>7} {'OOD fmt':>7}"
          if has_ood else "") + f" {'fixed':>7} {'train s':>8} {'gen s':>6}", flush=True)


def _print_summary(task: Task, final: Mapping[str, float], scored: Mapping[str, float], has_ood: bool,
                   wall: float) -> None:
    """The last report and the test scores in words, with the wall time and peak memory."""
    print(f"final: {_summary(task, final, has_ood)}; wall {wall:.1f} s, peak RSS {peak_rss_mb():.0f} MiB")
    key = task.kind.score_key
    print(f"reads the input (eval, one seed): {'yes' if final.get('reads_input') else 'no'}: accuracy "
          f"{final.get('accuracy', math.nan):.3f} against {final['accuracy_fixed']:.3f} for the majority answer; "
          f"lower ends of the 95 % intervals over both trivial answers: {key} "
          f"{final.get('reads_low_score', math.nan):+.3f}, accuracy {final.get('reads_low_accuracy', math.nan):+.3f}")
    if scored:
        reads = f"; reads the input: {'yes' if scored['reads_input'] else 'no'}" if "reads_input" in scored else ""
        print(f"test (scored once, from the last checkpoint): {_summary(task, scored, has_ood)}{reads}")


def _write_outputs(task: Task, design: Design, out: Path, rows: Sequence[Mapping[str, float]],
                   texts: Mapping[str, list[str]], scored: Mapping[str, float]) -> list[Path]:
    """Writes ``metrics.jsonl``, ``test_metrics.json`` (when tested) and the generations; returns the latter's files.

    ``texts``: each scored split's generations (the test splits' only when they were scored, into ``scored``).
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "test_metrics.json").unlink(missing_ok=True)  # an earlier run's, in a reused --out
    if scored:
        (out / "test_metrics.json").write_text(json.dumps(
            {s: {k.removesuffix("_ood"): v for k, v in scored.items() if k.endswith("_ood") == s.endswith("_ood")}
             for s in TEST_SPLITS if s in texts}, indent=1))
    folder = out / "outputs"
    for split in SCORED_SPLITS:  # a file from an earlier run into this --out must not pass for this run's
        (folder / f"design.{split}.jsonl").unlink(missing_ok=True)
    return [generations.write(folder / f"design.{split}.jsonl", task, design, split, texts[split])
            for split in SCORED_SPLITS if split in texts]


def optimizer_line(hp: TrainConfig, records: int, device: torch.device | None = None) -> str:
    """The training switches in words: steps and batch, schedule, clipping, precision, checkpointing, heartbeat.

    ``device``: where the trial trains (default: the GPU when there is one, as in :func:`~sde_search.trial.fit`).
    """
    total = hp.steps_per_epoch(records) * hp.epochs
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = steps.autocast_dtype(hp.precision, device)
    parts = [f"{total} optimizer steps of {hp.batch_size}" + (f" x {hp.grad_accum} accumulated" if hp.grad_accum > 1
                                                               else "") + " records",
             f"lr {hp.lr:g} {hp.schedule}" + (f" after {hp.warmup_steps(total)} warmup steps" if hp.warmup else ""),
             f"gradient clipped at norm {hp.max_grad_norm:g}" if hp.max_grad_norm else "no clipping",
             f"{str(dtype).removeprefix('torch.')} autocast" if dtype else f"fp32 on {device.type.upper()}"]
    parts += ["gradient checkpointing"] if hp.grad_checkpointing else []
    parts += [f"a progress line every {hp.heartbeat_s:g} s"] if hp.heartbeat_s else []
    return ", ".join(parts)


def _cells(m: Mapping[str, float], has_ood: bool) -> str:
    """A table row's score cells: ID score and format errors, OOD ones, the fixed answer's ID score (``-``: none)."""
    def pair(suffix: str) -> str:
        if f"score{suffix}" not in m:
            return f"{'-':>7} {'-':>7}"
        return f"{m[f'score{suffix}']:7.3f} {m[f'format_error_rate{suffix}']:7.2f}"

    fixed = f"{m['baseline_fixed']:7.3f}" if "baseline_fixed" in m else f"{'-':>7}"
    return pair("") + (f" {pair('_ood')}" if has_ood else "") + f" {fixed}"


def _summary(task: Task, m: Mapping[str, float], has_ood: bool) -> str:
    """One scored set of splits in words: the ID score with the trivial answers, then the OOD score."""
    parts = []
    if "score" in m:
        extra = ", ".join(f"{k} {v:.3f}" for k, v in m.items() if k in ("accuracy", "f1", "precision", "recall"))
        parts.append(f"ID {task.kind.score_key} {m['score']:.3f} ({extra}; fixed answer {m['baseline_fixed']:.3f}, "
                     f"empty answer {m['baseline_empty']:.3f}, {int(m['distinct_predictions'])} distinct predictions)")
    if has_ood and "score_ood" in m:
        parts.append(f"OOD {m['score_ood']:.3f}" if m.get("measured_ood") else
                     "OOD not measured (constant predictions or all format errors)")
    return ", ".join(parts)


def save_final_adapter(task: Task, hparams: Mapping[str, Any] | None, checkpoint: str, folder: Path) -> Path:
    """Writes a checkpoint's LoRA adapter (peft ``save_pretrained``) and the tokenizer to ``folder``."""
    model, tokenizer = load_model(task, resolve_hparams(task, hparams), checkpoint)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder
