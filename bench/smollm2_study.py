"""SmolLM2-135M-Instruct on MAMS: the preset sweep and the paper's one-factor comparison, on CPU.

Every run is a real ``sde-search train`` (LoRA fine-tune, greedy generation) of ``examples/real/mams_smollm2.yaml``
(200 MAMS training records, 60 eval records per ID/OOD set), its per-epoch metrics read from ``metrics.jsonl``.

- ``sweep``: ES-SDE and the paper baseline at each learning rate for up to ``--epochs`` epochs, scored on the
  whole eval sets after every epoch: the smallest budget where both write the format (< 10 % ID format errors)
  and where they beat the trivial answers picks ``config.PRETRAINED_TRAIN``.
- ``one_factor``: the paper baseline, each single change of it, and ES-SDE at the preset, for each seed.
- ``regime``: more data and steps than the preset (``--records``, ``--lr``, ``--epochs``) until a design reads
  the input: each design is trained, scored on the eval sets after every epoch, then on ``--test`` held-out
  test records, where a paired bootstrap over records gives the interval of its margin over the fixed answer
  (each aspect's most common training label). "Clearly beats" = that 95 % interval lies above zero.
- ``penalty``: the regime's final checkpoints decoded on the test records with the paper's repetition
  penalty 1.1 and without it (the default, 1.0).

Results accumulate in ``bench/results/real_mams_smollm2.json`` (so phases and seeds can run in separate
sessions); every call rewrites ``bench/results/real_mams_smollm2.md`` from it.

Usage: python bench/smollm2_study.py sweep [--lrs 1e-4 3e-4] [--epochs 3]
       python bench/smollm2_study.py one_factor [--seeds 0 1] [--designs ...] [--parallel 2]
       python bench/smollm2_study.py regime [--records 800] [--lr 2e-4] [--epochs 2] [--regime-designs es_sde ...]
       python bench/smollm2_study.py penalty --checkpoints /tmp/sde-regime-XXXX
       python bench/smollm2_study.py table
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from results_md import RESULTS, machine, publish  # noqa: E402

from sde_search.config import PRETRAINED_TRAIN  # noqa: E402
from sde_search.design import PAPER_BASELINE, parse_design  # noqa: E402

TASK = "examples/real/mams_smollm2.yaml"
STORE = RESULTS / "real_mams_smollm2.json"
ONE_FACTOR = {  # the paper's comparison: its baseline, one change at a time, and ES-SDE
    "baseline": "paper_baseline", "inst-first": "paper_baseline,instruction=first",
    "no-inst": "paper_baseline,instruction=none", "MI": "paper_baseline,prompt_loss=include",
    "lines": "paper_baseline,output_format=lines", "json": "paper_baseline,output_format=json",
    "OU": "paper_baseline,unmentioned=omit", "num-label": "paper_baseline,label_style=number",
    "chat": "paper_baseline,prompt_template=chat", "ES-SDE": "es_sde"}
KEEP = ("epoch", "step", "score", "accuracy", "format_error_rate", "score_ood", "accuracy_ood",
        "format_error_rate_ood", "baseline_fixed", "baseline_empty", "baseline_fixed_ood", "distinct_predictions",
        "distinct_predictions_ood", "train_loss", "train_s", "gen_s")


def train(design: str, sets: list[str], threads: int) -> dict:
    """One ``sde-search train`` run; returns its per-epoch metrics and wall time."""
    with tempfile.TemporaryDirectory(prefix="sde-smol-") as out:
        cmd = [sys.executable, "-m", "sde_search.cli", "train", "--task", TASK, "--design", design, "--out", out,
               *[x for s in [*sets, f"train.threads={threads}"] for x in ("--set", s)]]
        start = time.monotonic()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.monotonic() - start
        if proc.returncode:
            print(proc.stdout[-2000:], proc.stderr[-3000:], file=sys.stderr)
            return {"design": design, "sets": sets, "error": proc.stderr.strip().splitlines()[-1:], "wall_s": wall}
        reports = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    print(proc.stdout.strip().splitlines()[-1], flush=True)
    return {"design": design, "sets": sets, "wall_s": wall,
            "reports": [{k: r[k] for k in KEEP if k in r} for r in reports]}


TEST_KEYS = ("score", "accuracy", "format_error_rate", "distinct_predictions", "baseline_fixed", "baseline_empty",
             "n_eval")


def score_test(task: Any, design: Any, ckpt: str, threads: int, hparams: dict | None, folder: Path) -> dict:
    """A checkpoint on test_id: its scores and the paired bootstrap of its margin over the fixed answer."""
    from sde_search import report, scoring

    texts: dict[str, list[str]] = {}
    test = scoring.evaluate_checkpoint(task, design, hparams, ckpt, splits=("test_id",), threads=threads,
                                       outputs=texts)[0]
    report.save_outputs(folder / "outputs" / "design.test_id.jsonl", task, design, "test_id", texts["test_id"])
    diff = report.versus_fixed(task, folder, "design", "test_id")
    return {"test": {k: test[k] for k in TEST_KEYS if k in test},
            "versus_fixed": {"delta": diff.delta, "low": diff.low, "high": diff.high, "records": diff.records}}


def regime_job(design: str, sets: list[str], threads: int, out: Path) -> dict:
    """Trains ``design`` (checkpoints in ``out``), then scores the last one on test_id against the fixed answer."""
    from sde_search import config, trial

    task = config.load_task(ROOT / TASK, sets)
    d = parse_design(design)
    reports: list[dict] = []
    start = time.monotonic()
    trial.fit(task, d, None, report=lambda m, _p: reports.append({k: m[k] for k in KEEP if k in m}),
                checkpoint_dir=str(out), threads=threads)
    ckpt = str(sorted(out.glob("report-*"))[-1])
    return {"design": design, "sets": sets, "wall_s": time.monotonic() - start, "reports": reports,
            **score_test(task, d, ckpt, threads, None, out)}


def penalty(store: dict, checkpoints: Path, threads: int) -> None:
    """The regime's final checkpoints decoded on test_id with and without the paper's repetition penalty 1.1."""
    from sde_search import config

    for row in [r for r in store["regime"] if "error" not in r]:
        folder = checkpoints / row["design"]
        if not folder.is_dir():
            print(f"{folder}: no checkpoints (pass the regime's work dir, sde-regime-*)", file=sys.stderr)
            continue
        task, d = config.load_task(ROOT / TASK, row["sets"]), parse_design(row["design"])
        ckpt = str(sorted(folder.glob("report-*"))[-1])
        for value in (1.0, 1.1):
            start = time.monotonic()
            result = score_test(task, d, ckpt, threads, {"repetition_penalty": value}, folder)
            store["penalty"].append({"design": row["design"], "sets": row["sets"], "repetition_penalty": value,
                                     "wall_s": time.monotonic() - start, **result})
            save(store)
            print(f"{row['design']} penalty {value}: {result['test']}", flush=True)


def penalty_table(rows: list[dict]) -> list[str]:
    lines = ["| design | repetition penalty | test kappa | accuracy | format err | distinct | test - fixed (95 % CI) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        t, v = r["test"], r["versus_fixed"]
        lines.append(f"| {r['design']} | {r['repetition_penalty']:g} | {t['score']:.3f} | {t['accuracy']:.3f} | "
                     f"{t['format_error_rate']:.0%} | {t['distinct_predictions']:.0f} | {v['delta']:+.3f} "
                     f"({v['low']:+.3f} to {v['high']:+.3f}) |")
    return lines


def load() -> dict:
    store = json.loads(STORE.read_text()) if STORE.exists() else {}
    return {"sweep": [], "one_factor": [], "regime": [], "penalty": [], **store}


def save(store: dict) -> None:
    STORE.write_text(json.dumps(store, indent=1) + "\n")


def run_all(jobs: list[tuple[str, list[str], dict]], parallel: int, store: dict, phase: str,
            work: Callable[[str, list[str], int], dict] | None = None) -> None:
    """Runs (design, sets, tags) jobs ``parallel`` at once (2 threads split between them), saving each result.

    ``work(design, sets, threads)`` runs one job (default: ``sde-search train``).
    """
    threads = max(1, 2 // parallel)

    def one(job: tuple[str, list[str], dict]) -> None:
        design, sets, tags = job
        row = (work or train)(design, sets, threads)
        store[phase].append(row | tags | {"machine": machine(), "parallel": parallel})
        save(store)
        print(f"{design}: {row.get('test', row.get('error', 'done'))}", flush=True)

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, jobs))


def run_regime(args: argparse.Namespace, store: dict) -> None:
    """Each design of ``--regime-designs`` in its own process (``parallel`` at once), results saved as they end."""
    sets = [f"data.max_train={args.records}", f"train.lr={args.lr}", f"train.epochs={args.epochs}",
            "train.reports_per_epoch=1", "train.report_eval_size=60", f"data.max_test={args.test}"]
    folder = Path(tempfile.mkdtemp(prefix="sde-regime-"))

    def job(design: str, job_sets: list[str], threads: int) -> dict:
        spec = json.dumps([design, job_sets, threads, str(folder / design)])
        proc = subprocess.run([sys.executable, __file__, "regime_job", "--job", spec], cwd=ROOT, capture_output=True,
                              text=True)
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            return {"design": design, "error": proc.stderr.strip().splitlines()[-1:]}
        return json.loads(proc.stdout.strip().splitlines()[-1])

    jobs = [(design, sets, {"records": args.records, "lr": args.lr}) for design in args.regime_designs]
    run_all(jobs, args.parallel, store, "regime", work=job)


def fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def sweep_table(rows: list[dict]) -> list[str]:
    lines = ["| design | lr | epochs (steps) | ID kappa | ID acc | ID fmt err | fixed kappa / acc | distinct | "
             "OOD kappa | OOD fmt err | train s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['design']} | {r['lr']} | failed: {r['error']} |||||||||")
            continue
        for m in r["reports"]:
            lines.append(
                f"| {r['design']} | {r['lr']:g} | {m['epoch']:.0f} ({m['step']:.0f}) | {fmt(m['score'])} | "
                f"{fmt(m.get('accuracy'))} | {m['format_error_rate']:.0%} | {fmt(m['baseline_fixed'])} | "
                f"{m['distinct_predictions']:.0f} | {fmt(m.get('score_ood'))} | "
                f"{m.get('format_error_rate_ood', float('nan')):.0%} | {m['train_s']:.0f} |")
    return lines


def one_factor_table(rows: list[dict]) -> list[str]:
    by_name: dict[str, list[dict]] = {}
    for r in rows:
        if "error" not in r:
            by_name.setdefault(r["name"], []).append(r["reports"][-1])
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"Seeds {seeds}; mean ± sd over seeds (sd only with 2 or more); final epoch, whole eval sets.", "",
             "| design | change | ID kappa | ID acc | ID fmt err | distinct | beats fixed answer | OOD kappa | "
             "OOD acc | OOD fmt err | n |", "|---|---|---|---|---|---|---|---|---|---|---|"]

    def ms(vals: list[float]) -> str:
        vals = [v for v in vals if v == v]
        if not vals:
            return "-"
        return f"{statistics.mean(vals):.3f}" + (f" ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else "")

    for name, spec in ONE_FACTOR.items():
        ms_ = by_name.get(name)
        if not ms_:
            continue
        change = parse_design(spec).changes_from(PAPER_BASELINE)
        beats = sum(m["score"] > max(m["baseline_fixed"], m["baseline_empty"]) for m in ms_)
        lines.append(
            f"| {name} | {', '.join(f'{k}={v}' for k, v in change.items()) or '-'} | "
            f"{ms([m['score'] for m in ms_])} | {ms([m.get('accuracy', float('nan')) for m in ms_])} | "
            f"{ms([m['format_error_rate'] for m in ms_])} | {ms([m['distinct_predictions'] for m in ms_])} | "
            f"{beats}/{len(ms_)} | {ms([m.get('score_ood', float('nan')) for m in ms_])} | "
            f"{ms([m.get('accuracy_ood', float('nan')) for m in ms_])} | "
            f"{ms([m.get('format_error_rate_ood', float('nan')) for m in ms_])} | {len(ms_)} |")
    fixed = [m["baseline_fixed"] for ms_ in by_name.values() for m in ms_]
    if fixed:
        lines += ["", f"Fixed answer (each aspect's most common training label, no model): ID kappa {fixed[0]:.3f}."]
    return lines


def regime_table(rows: list[dict]) -> list[str]:
    lines = ["| design | records | lr | epochs (steps) | ID kappa | ID fmt err | fixed kappa | distinct | OOD kappa | "
             "test kappa | test fixed | test - fixed (95 % CI) | clearly beats | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['design']} | failed: {r['error']} |||||||||||||")
            continue
        last = len(r["reports"]) - 1
        for i, m in enumerate(r["reports"]):
            t, v = r["test"], r["versus_fixed"]
            tail = (f"{t['score']:.3f} | {t['baseline_fixed']:.3f} | {v['delta']:+.3f} ({v['low']:+.3f} to "
                    f"{v['high']:+.3f}) | {'yes' if v['low'] > 0 else 'no'}") if i == last else "- | - | - | -"
            lines.append(
                f"| {r['design']} | {r['records']} | {r['lr']:g} | {m['epoch']:.0f} ({m['step']:.0f}) | "
                f"{fmt(m['score'])} | {m['format_error_rate']:.0%} | {fmt(m['baseline_fixed'])} | "
                f"{m['distinct_predictions']:.0f} | {fmt(m.get('score_ood'))} | {tail} | {m['train_s']:.0f} |")
    return lines


def table(store: dict) -> None:
    lines = ["# SmolLM2-135M-Instruct on MAMS-ACSA (CPU)", "",
             f"Machine: {machine()}. Task `{TASK}`: 200 training records, 60 ID and 60 OOD eval records "
             "(OOD = the disjoint aspect group staff/menu/place/miscellaneous). LoRA r 8, alpha 16, all linear "
             "layers; greedy decoding without repetition penalty. Pretrained preset now: "
             f"`{json.dumps(PRETRAINED_TRAIN)}`.", "", "## Preset sweep", ""]
    lines += sweep_table(store["sweep"]) if store["sweep"] else ["(not run yet)"]
    lines += ["", "## One-factor comparison at the preset", ""]
    lines += one_factor_table(store["one_factor"]) if store["one_factor"] else ["(not run yet)"]
    lines += ["", "## Regime: more data and steps, scored on held-out test records", ""]
    lines += regime_table(store["regime"]) if store["regime"] else ["(not run yet)"]
    lines += ["", "## Decoding: the paper's repetition penalty 1.1 against none (regime checkpoints, test_id)", ""]
    lines += penalty_table(store["penalty"]) if store["penalty"] else ["(not run yet)"]
    notes = RESULTS / "real_mams_smollm2_notes.md"
    if notes.exists():
        lines += ["", *notes.read_text().splitlines()]
    publish("real_mams_smollm2.md", lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=["sweep", "one_factor", "regime", "regime_job", "penalty", "table"])
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-4, 3e-4])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--designs", nargs="+", default=list(ONE_FACTOR), choices=list(ONE_FACTOR))
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--records", type=int, default=800, help="regime: training records")
    parser.add_argument("--lr", type=float, default=2e-4, help="regime: learning rate")
    parser.add_argument("--test", type=int, default=200, help="regime: held-out test records")
    parser.add_argument("--regime-designs", nargs="+", default=["paper_baseline", "es_sde"])
    parser.add_argument("--checkpoints", type=Path, help="penalty: the regime's work dir (sde-regime-*)")
    parser.add_argument("--job", help=argparse.SUPPRESS)  # regime_job: JSON of (design, sets, threads, out)
    args = parser.parse_args()
    if args.phase == "regime_job":
        design, sets, threads, out = json.loads(args.job)
        print(json.dumps(regime_job(design, sets, threads, Path(out))))
        return
    store = load()
    if args.phase == "sweep":
        jobs = [(design, [f"train.lr={lr}", f"train.epochs={args.epochs}", "train.reports_per_epoch=1",
                          "train.report_eval_size=60"], {"lr": lr})
                for lr in args.lrs for design in ("es_sde", "paper_baseline")]
        run_all(jobs, args.parallel, store, "sweep")
    elif args.phase == "regime":
        run_regime(args, store)
    elif args.phase == "penalty":
        penalty(store, args.checkpoints, threads=2)
    elif args.phase == "one_factor":
        jobs = [(ONE_FACTOR[name], [f"train.seed={seed}"], {"name": name, "seed": seed})
                for seed in args.seeds for name in args.designs]
        run_all(jobs, args.parallel, store, "one_factor")
    table(store)


if __name__ == "__main__":
    main()
