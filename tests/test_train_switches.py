"""Tests for the training switches (``sde_search.steps``): gradient accumulation, warmup and schedules,
clipping, mixed precision, gradient checkpointing, checkpointed schedule state, and the heartbeat.

Fast tests use a 2-layer Llama with 16 hidden units (milliseconds per step); the one ``slow`` test fits the
tiny model on the demo task with every switch on, interrupted and resumed.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sde_search import steps
from sde_search.batches import Encoded, collate, encode
from sde_search.cli_train import optimizer_line
from sde_search.config import ConfigError, TrainConfig, load_space, load_task
from sde_search.design import ES_SDE
from sde_search.model import add_lora, build_tiny_tokenizer
from sde_search.render import render
from sde_search.trial import TrainState, fit

ROOT = Path(__file__).resolve().parents[1]
MASA = ROOT / "examples" / "demo_masa.yaml"
CPU = torch.device("cpu")


def _lm(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, max_position_embeddings=64, pad_token_id=0,
                                        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False))


def _records(n: int = 4, seed: int = 1) -> list[Encoded]:
    """Sequences of different lengths, each with a masked prompt of a different length (as No-MI masks it)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = [1, *torch.randint(3, 32, (5 + 3 * i,), generator=g).tolist(), 2]
        prompt = 2 + i
        out.append(Encoded(ids, [-100] * prompt + ids[prompt:]))
    return out


def _grads_at_step(stepper: steps.Stepper) -> list[list[torch.Tensor]]:
    """The gradients the optimizer sees at each step (after accumulation and clipping)."""
    seen: list[list[torch.Tensor]] = []
    stepper.optimizer.register_step_pre_hook(
        lambda *_: seen.append([p.grad.detach().clone() for p in stepper.params]))
    return seen


def _norm(grads: list[torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


# ---------------------------------------------------------------- accumulation, clipping, schedules


def test_accumulated_micro_batches_give_the_gradient_and_loss_of_one_big_batch() -> None:
    records = _records()
    model = _lm()
    big = steps.Stepper(model, TrainConfig(), 1, CPU, None)
    big_grads = _grads_at_step(big)
    big_loss = big.step(model, [collate(records, 0)])

    model = _lm()  # same weights: the big step changed the first model
    small = steps.Stepper(model, TrainConfig(grad_accum=2, batch_size=2), 1, CPU, None)
    small_grads = _grads_at_step(small)
    # each micro-batch padded to its own width, with a different number of loss tokens
    small_loss = small.step(model, [collate(records[:2], 0), collate(records[2:], 0)])

    assert small_loss == pytest.approx(big_loss, rel=1e-5)
    for a, b in zip(big_grads[0], small_grads[0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    plain_mean = [collate(records[:2], 0), collate(records[2:], 0)]  # the naive mean of the two micro-losses
    model = _lm()
    losses = [model(**b).loss for b in plain_mean]
    assert (losses[0] + losses[1]).item() / 2 != pytest.approx(big_loss, rel=1e-3)  # so the weighting matters


def test_clipping_bounds_the_gradient_norm_the_optimizer_sees() -> None:
    batch = collate(_records(), 0)
    model = _lm()
    free = steps.Stepper(model, TrainConfig(), 1, CPU, None)
    free_grads = _grads_at_step(free)
    free.step(model, [batch])
    norm = _norm(free_grads[0])
    assert norm > 1e-2

    model = _lm()
    clipped = steps.Stepper(model, TrainConfig(max_grad_norm=1e-2), 1, CPU, None)
    clipped_grads = _grads_at_step(clipped)
    clipped.step(model, [batch])
    assert clipped.grad_norm == pytest.approx(norm, rel=1e-5)  # the norm before clipping
    assert _norm(clipped_grads[0]) == pytest.approx(1e-2, rel=1e-4)
    for a, b in zip(free_grads[0], clipped_grads[0], strict=True):  # same direction, scaled down
        torch.testing.assert_close(b, a * (1e-2 / norm), rtol=1e-4, atol=1e-9)


def _lrs(hp: TrainConfig, total: int) -> list[float]:
    model = _lm()
    stepper = steps.Stepper(model, hp, total, CPU, None)
    batch = collate(_records(2), 0)
    seen = []
    for _ in range(total):
        seen.append(stepper.lr)
        stepper.step(model, [batch])
    return [*seen, stepper.lr]


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_warmup_then_schedule_shape(schedule: str) -> None:
    lr, total, warm = 1e-2, 10, 2
    got = _lrs(TrainConfig(lr=lr, warmup=warm, schedule=schedule), total)
    assert got[:warm + 1] == pytest.approx([0.0, lr / 2, lr])  # linear warmup from 0
    after = {"constant": lambda s: lr, "linear": lambda s: lr * (total - s) / (total - warm),
             "cosine": lambda s: lr * 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))}[schedule]
    assert got[warm:] == pytest.approx([after(s) for s in range(warm, total + 1)], abs=1e-12)


def test_default_settings_keep_a_constant_rate_and_a_fractional_warmup_rounds_up() -> None:
    assert _lrs(TrainConfig(lr=1e-3), 4) == [1e-3] * 5
    assert TrainConfig(warmup=0.25).warmup_steps(10) == 3
    assert TrainConfig(warmup=3).warmup_steps(10) == 3
    got = _lrs(TrainConfig(lr=1e-2, warmup=0.25), 10)
    assert got[:4] == pytest.approx([0.0, 1e-2 / 3, 2e-2 / 3, 1e-2])


def test_steps_per_epoch_counts_optimizer_steps() -> None:
    assert TrainConfig(batch_size=4).steps_per_epoch(17) == 5
    assert TrainConfig(batch_size=4, grad_accum=2).steps_per_epoch(17) == 3
    assert TrainConfig(batch_size=4, grad_accum=2).steps_per_epoch(16) == 2


# ---------------------------------------------------------------- precision and checkpointing


def test_autocast_is_gpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    for precision in ("auto", "fp32", "bf16", "fp16"):
        assert steps.autocast_dtype(precision, CPU) is None
    gpu = torch.device("cuda")
    assert steps.autocast_dtype("bf16", gpu) == torch.bfloat16
    assert steps.autocast_dtype("fp16", gpu) == torch.float16
    assert steps.autocast_dtype("fp32", gpu) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert steps.autocast_dtype("auto", gpu) == torch.float16


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_path_trains(dtype: torch.dtype) -> None:
    # CPU autocast stands in for the GPU's: the same code path, only the device type differs
    model = _lm()
    stepper = steps.Stepper(model, TrainConfig(max_grad_norm=1e-3), 3, CPU, dtype)
    assert (stepper.scaler is not None) == (dtype == torch.float16)  # fp16 needs loss scaling, bf16 does not
    seen = _grads_at_step(stepper)
    before = [p.detach().clone() for p in stepper.params]
    losses = [stepper.step(model, [collate(_records(), 0)]) for _ in range(3)]
    assert all(math.isfinite(x) for x in losses)
    assert [_norm(g) for g in seen] == pytest.approx([1e-3] * 3, rel=1e-3)  # clipped after unscaling, not before
    assert all(p.dtype == torch.float32 for p in stepper.params)  # autocast leaves the weights in fp32
    assert any(not torch.equal(a, b) for a, b in zip(before, stepper.params, strict=True))
    assert ("scaler" in stepper.state_dict()) == (dtype == torch.float16)


def test_gradient_checkpointing_gives_the_same_lora_gradients() -> None:
    hp = TrainConfig(lora_rank=4, lora_alpha=8, target_modules="all-linear")
    batch = collate(_records(), 0)
    grads = []
    for checkpointing in (False, True):
        base = _lm()
        if checkpointing:
            steps.enable_grad_checkpointing(base)
        torch.manual_seed(5)
        model = add_lora(base, hp, tiny=False)
        model.train()
        stepper = steps.Stepper(model, hp, 1, CPU, None)
        seen = _grads_at_step(stepper)
        stepper.step(model, [batch])
        grads.append(seen[0])
    assert base.is_activation_checkpointing
    assert len(grads[0]) == len(grads[1]) > 0
    # lora_B (initialised to 0) gets a gradient through the recomputed layers, in every layer
    assert sum(bool(g.abs().sum()) for g in grads[1]) >= len(grads[1]) // 2
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_a_checkpoint_restores_the_schedule_and_the_scaler(tmp_path: Path) -> None:
    hp = TrainConfig(lr=1e-2, warmup=2, schedule="cosine", lora_rank=4, target_modules="all-linear")
    batch = collate(_records(), 0)

    def build() -> tuple[torch.nn.Module, steps.Stepper]:
        torch.manual_seed(5)
        model = add_lora(_lm(), hp, tiny=False)
        return model, steps.Stepper(model, hp, 10, CPU, torch.float16)

    model, stepper = build()
    for _ in range(4):
        stepper.step(model, [batch])
    stepper.scaler.update(new_scale=1024.0)
    saved = TrainState(step=4, train_s=1.0, gen_s=2.0, tokens=100, fit_s=3.0)
    path = saved.save(tmp_path / "report-0001", model, stepper)

    resumed_model, resumed = build()
    assert resumed.lr != stepper.lr
    assert TrainState.load(path, resumed_model, resumed) == saved
    assert resumed.lr == stepper.lr
    assert resumed.scheduler.last_epoch == stepper.scheduler.last_epoch == 4
    assert resumed.scaler.get_scale() == 1024.0
    for _ in range(3):  # both go on alike: same rates, same weights
        assert stepper.step(model, [batch]) == resumed.step(resumed_model, [batch])
        assert resumed.lr == stepper.lr
    for a, b in zip(stepper.params, resumed.params, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(("setting", "message"), [
    ("train.warmup=1.5", r"train\.warmup: 1 or more counts optimizer steps and must be a whole number"),
    ("train.warmup=-0.1", r"train\.warmup: Input should be greater than or equal to 0"),
    ("train.schedule=step", r"train\.schedule: Input should be 'constant', 'linear' or 'cosine'"),
    ("train.precision=fp8", r"train\.precision: Input should be 'auto', 'fp32', 'bf16' or 'fp16'"),
    ("train.max_grad_norm=0", r"train\.max_grad_norm: Input should be greater than 0"),
    ("train.grad_accum=0", r"train\.grad_accum: Input should be greater than or equal to 1"),
    ("train.grad_checkpointing=maybe", r"train\.grad_checkpointing: Input should be a valid boolean"),
    ("train.heartbeat_s=-1", r"train\.heartbeat_s: Input should be greater than or equal to 0"),
])
def test_bad_switch_values_are_one_clear_line(setting: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_task(MASA, [setting, "data.max_train=16", "data.max_eval=4"])
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(f"{MASA}: ")
    assert re.search(message, info.value.problems[0]), info.value.problems[0]


def test_a_space_searches_switches_and_a_float_warmup_range_must_stay_below_one(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("design: {instruction: [first, last]}\n"
                     "train: {schedule: [constant, cosine], warmup: {type: float, low: 0.0, high: 0.2}, "
                     "grad_accum: [1, 2]}\n")
    assert load_space(space).train["schedule"] == ["constant", "cosine"]
    space.write_text("design: {instruction: [first, last]}\ntrain: {warmup: {type: float, low: 0.0, high: 2.0}}\n")
    with pytest.raises(ConfigError, match=r"train\.warmup: a float range must stay below 1 .*type: int"):
        load_space(space)
    space.write_text("design: {instruction: [first, last]}\ntrain: {schedule: [constant, step]}\n")
    with pytest.raises(ConfigError, match=r"train\.schedule: Input should be 'constant', 'linear' or 'cosine'"):
        load_space(space)


# ---------------------------------------------------------------- heartbeat


def test_heartbeat_logs_step_loss_and_seconds_per_step(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    beat = steps.Heartbeat(10.0, 100, step=20, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="sde_search.steps")
    shown = []
    for step in range(21, 41):
        now[0] += 1.0
        shown.append(beat.tick(step, loss=float(step), train_s=0.5, lr=1e-3))
    fired = [b for b in shown if b]
    assert [b["step"] for b in fired] == [30, 40]
    assert fired[0]["loss"] == pytest.approx(sum(range(21, 31)) / 10)
    assert fired[0]["s_per_step"] == pytest.approx(0.5)
    assert fired[0]["eta_s"] == pytest.approx(0.5 * 70)
    records = [r for r in caplog.records if hasattr(r, "heartbeat")]
    assert [r.heartbeat["step"] for r in records] == [30, 40]
    assert "step 30/100 (30 %), loss 25.500, 0.50 s/step" in records[0].getMessage()

    off = steps.Heartbeat(0, 100, clock=lambda: now[0])
    now[0] += 1e6
    assert off.tick(1, 1.0, 1.0, 1e-3) is None


def test_a_search_shows_the_heartbeats_its_trials_write(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from sde_search import progress as shown

    folder = tmp_path / "heartbeats"
    folder.mkdir()
    (folder / "t1.json").write_text('{"stale": true}')  # left by an earlier run of the trial
    now = [0.0]
    with shown.HeartbeatFile.installed(str(folder), "t1"):
        assert not (folder / "t1.json").exists()
        beat = steps.Heartbeat(1.0, 50, step=6, clock=lambda: now[0])
        now[0] = 2.0
        beat.tick(7, 1.25, 0.4, 1e-3)
    written: dict[str, Any] = json.loads((folder / "t1.json").read_text())
    assert written["step"] == 7 and written["total"] == 50

    caplog.set_level(logging.INFO, logger="sde_search.progress")
    progress = shown.Progress(2, "score", folder)
    progress.running.add("t1")
    progress.on_step_end(1, [])
    progress.polled = 0.0
    progress.on_step_end(2, [])  # the same heartbeat is not shown twice
    lines = [r.getMessage() for r in caplog.records if "beat" in r.getMessage()]
    assert len(lines) == 1
    assert "beat  t1: step 7/50, loss 1.250, 0.40 s/step" in lines[0]


# ---------------------------------------------------------------- slow: fit with every switch


@pytest.mark.slow
def test_fit_with_every_switch_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDE_CACHE", str(tmp_path / "cache"))
    sets = ["data.max_train=40", "data.max_eval=8", "train.epochs=2", "train.reports_per_epoch=1",
            "train.batch_size=4", "train.grad_accum=2", "train.warmup=0.2", "train.schedule=cosine",
            "train.max_grad_norm=0.5", "train.grad_checkpointing=true", "train.precision=bf16",
            "train.lora_dropout=0.1", "train.heartbeat_s=0"]
    task = load_task(MASA, sets)
    runs: dict[str, list[dict[str, float]]] = {"a": [], "b": [], "c": []}
    paths: dict[str, list[str | None]] = {"a": [], "b": [], "c": []}

    def collect(name: str, stop_after: int | None = None) -> Any:
        def report(metrics: dict[str, float], path: str | None) -> None:
            runs[name].append(dict(metrics))
            paths[name].append(path)
            if len(runs[name]) == stop_after:
                raise KeyboardInterrupt

        return report

    fit(task, ES_SDE, report=collect("a"), checkpoint_dir=str(tmp_path / "a"))
    with pytest.raises(KeyboardInterrupt):
        fit(task, ES_SDE, report=collect("b", stop_after=1), checkpoint_dir=str(tmp_path / "b"))
    fit(task, ES_SDE, report=collect("c"), checkpoint_dir=str(tmp_path / "c"), resume_from=paths["b"][0])

    # 40 records in optimizer steps of 4 x 2: 5 per epoch, each record seen once per epoch
    assert [m["step"] for m in runs["a"]] == [5.0, 10.0]
    assert [m["progress"] for m in runs["a"]] == [0.5, 1.0]
    tokens = sum(len(encode(render(r, ES_SDE, task), build_tiny_tokenizer(task), ES_SDE).ids)
                 for r in task.splits["train"])
    assert runs["a"][0]["train_tokens"] == tokens
    for got, want in zip(runs["b"] + runs["c"], runs["a"], strict=True):
        for key in ("train_loss", "score", "step", "train_tokens"):
            assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-9), key
    state_a = torch.load(Path(paths["a"][-1]) / "state.pt", weights_only=False)
    state_c = torch.load(Path(paths["c"][-1]) / "state.pt", weights_only=False)
    assert state_a["scheduler"]["last_epoch"] == state_c["scheduler"]["last_epoch"] == 10
    assert all(torch.equal(state_a["adapter"][k], state_c["adapter"][k]) for k in state_a["adapter"])


def test_the_training_page_documents_every_train_key() -> None:
    page = (ROOT / "docs" / "training.md").read_text()
    missing = [key for key in TrainConfig.model_fields if f"| `{key}` |" not in page]
    assert not missing, f"docs/training.md has no row for train.{missing}"


def test_sde_search_train_states_the_switches_in_words() -> None:
    assert optimizer_line(TrainConfig(), 200, CPU) == (
        "156 optimizer steps of 16 records, lr 0.003 constant, no clipping, fp32 on CPU, a progress line every 60 s")
    line = optimizer_line(TrainConfig(epochs=1, batch_size=2, grad_accum=2, warmup=0.25, schedule="cosine",
                                      max_grad_norm=1.0, grad_checkpointing=True, heartbeat_s=0), 16, CPU)
    assert line == ("4 optimizer steps of 2 x 2 accumulated records, lr 0.003 cosine after 1 warmup steps, "
                    "gradient clipped at norm 1, fp32 on CPU, gradient checkpointing")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_a_gpu(precision: str) -> None:
    model = _lm().cuda()
    stepper = steps.Stepper(model, TrainConfig(precision=precision, max_grad_norm=1.0), 3,
                            torch.device("cuda"), steps.autocast_dtype(precision, torch.device("cuda")))
    assert stepper.dtype == (torch.bfloat16 if precision == "bf16" else torch.float16)
    batch = {k: v.cuda() for k, v in collate(_records(), 0).items()}
    assert all(math.isfinite(stepper.step(model, [batch])) for _ in range(3))
    assert ("scaler" in stepper.state_dict()) == (precision == "fp16")
