"""SmolLM2-135M-Instruct on MAMS: the preset sweep and the paper's one-factor comparison, on CPU.

Every run is a real ``sde-search train`` (LoRA fine-tune, greedy generation) of ``examples/real/mams_smollm2.yaml``
(200 MAMS training records, 60 eval records per ID/OOD set), its per-epoch metrics read from ``metrics.jsonl``.

- ``sweep``: ES-SDE and the paper baseline at each learning rate for up to ``--epochs`` epochs, scored on the
  whole eval sets after every epoch: the smallest budget where both write the format (< 10 % ID format errors)
  and where they beat the trivial answers picks ``config.PRETRAINED_TRAIN``.
- ``one_factor``: the paper baseline, each single change of it, and ES-SDE at the preset, for each seed.

Results accumulate in ``bench/results/real_mams_smollm2.json`` (so phases and seeds can run in separate
sessions); every call rewrites ``bench/results/real_mams_smollm2.md`` from it.

Usage: python bench/smollm2_study.py sweep [--lrs 1e-4 3e-4] [--epochs 3]
       python bench/smollm2_study.py one_factor [--seeds 0 1] [--designs ...] [--parallel 2]
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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


def load() -> dict:
    return json.loads(STORE.read_text()) if STORE.exists() else {"sweep": [], "one_factor": []}


def save(store: dict) -> None:
    STORE.write_text(json.dumps(store, indent=1) + "\n")


def run_all(jobs: list[tuple[str, list[str], dict]], parallel: int, store: dict, phase: str) -> None:
    """Runs (design, sets, tags) jobs ``parallel`` at once (2 threads split between them), saving each result."""
    threads = max(1, 2 // parallel)

    def one(job: tuple[str, list[str], dict]) -> None:
        design, sets, tags = job
        store[phase].append(train(design, sets, threads) | tags | {"machine": machine(), "parallel": parallel})
        save(store)

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, jobs))


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


def table(store: dict) -> None:
    lines = ["# SmolLM2-135M-Instruct on MAMS-ACSA (CPU)", "",
             f"Machine: {machine()}. Task `{TASK}`: 200 training records, 60 ID and 60 OOD eval records "
             "(OOD = the disjoint aspect group staff/menu/place/miscellaneous). LoRA r 8, alpha 16, all linear "
             "layers; greedy decoding without repetition penalty. Pretrained preset now: "
             f"`{json.dumps(PRETRAINED_TRAIN)}`.", "", "## Preset sweep", ""]
    lines += sweep_table(store["sweep"]) if store["sweep"] else ["(not run yet)"]
    lines += ["", "## One-factor comparison at the preset", ""]
    lines += one_factor_table(store["one_factor"]) if store["one_factor"] else ["(not run yet)"]
    notes = RESULTS / "real_mams_smollm2_notes.md"
    if notes.exists():
        lines += ["", *notes.read_text().splitlines()]
    publish("real_mams_smollm2.md", lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=["sweep", "one_factor", "table"])
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-4, 3e-4])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--designs", nargs="+", default=list(ONE_FACTOR), choices=list(ONE_FACTOR))
    parser.add_argument("--parallel", type=int, default=2)
    args = parser.parse_args()
    store = load()
    if args.phase == "sweep":
        jobs = [(design, [f"train.lr={lr}", f"train.epochs={args.epochs}", "train.reports_per_epoch=1",
                          "train.report_eval_size=60"], {"lr": lr})
                for lr in args.lrs for design in ("es_sde", "paper_baseline")]
        run_all(jobs, args.parallel, store, "sweep")
    elif args.phase == "one_factor":
        jobs = [(ONE_FACTOR[name], [f"train.seed={seed}"], {"name": name, "seed": seed})
                for seed in args.seeds for name in args.designs]
        run_all(jobs, args.parallel, store, "one_factor")
    table(store)


if __name__ == "__main__":
    main()
