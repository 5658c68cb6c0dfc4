"""What a run would only hit later, found before it starts: models, LoRA targets, tracking stores, templates.

Every check here is knowable without training, so ``--check`` runs it: a model folder that does not exist, LoRA
target modules the model lacks, a tiny model config that cannot be built, a tracking URI MLflow cannot open, an
instruction template that fails when filled in. Functions take plain values and return the problems as text
fragments (``what is wrong (allowed: ...)``); :mod:`sde_search.config` prefixes them with the file and key.

Pure: the standard library only; never imports torch, transformers, peft, Ray or MLflow (it reads a model's
``config.json`` as JSON, the ``tokenizers`` package only counts tokens when a folder ships ``tokenizer.json``, and
``pyarrow`` is asked whether it opens a storage URI).
"""

from __future__ import annotations

import difflib
import importlib.metadata
import importlib.util
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from sde_search.tasks import clip

TINY_POSITIONS = 4096
"""Positions of the ``tiny`` model (``max_position_embeddings`` of the LlamaConfig ``model.build_model`` builds)."""

TINY_LORA_LEAVES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The linear layers of each tiny decoder layer: what LoRA can adapt (embeddings and lm_head are trained whole)."""

_LLAMA = (*TINY_LORA_LEAVES, "embed_tokens", "lm_head")
_FUSED = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h", "word_embeddings", "lm_head")
_GPT2 = ("c_attn", "c_proj", "c_fc", "wte", "wpe", "lm_head")
LORA_LEAVES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "smollm3", "olmo", "olmo2",
                     "granite"), _LLAMA),
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "embed_tokens", "lm_head"),
    "phi": ("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2", "embed_tokens", "lm_head"),
    "gpt2": _GPT2, "gpt_bigcode": _GPT2,
    "gpt_neo": ("q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj", "wte", "wpe", "lm_head"),
    "gpt_neox": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h", "embed_in", "embed_out", "lm_head"),
    "opt": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "embed_tokens", "project_in", "project_out",
            "lm_head"),
    "falcon": _FUSED, "bloom": _FUSED,
}
"""Model type (``config.json``) -> names of the layers LoRA can adapt (linear and embedding layers of the
transformers implementation). A type not listed is not checked."""

LEARNED_POSITIONS = frozenset({"gpt2", "gpt_bigcode", "gpt_neo", "opt"})
"""Model types whose positions are a learned table: a sequence past its length fails (an index error)."""

_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length")
_WIDTH_KEYS = ("hidden_size", "n_embd", "d_model")
_SHOW = 200  # at most this many characters of a user value in a message


def did_you_mean(word: str, options: Sequence[str]) -> str:
    """``; did you mean 'x'?`` for the closest of ``options`` to a misspelt ``word``, else ``""``."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def cut(text: str) -> str:
    """A text for a message, cut to about 200 characters (messages quote user values, never whole files)."""
    return clip(text, _SHOW, count=False)


def shown(value: Any) -> str:
    """A user value for a message: its repr, cut to about 200 characters."""
    return cut(repr(value))


# ---------------------------------------------------------------- names and labels


def norm(text: str) -> str:
    """How the parser compares names: case-insensitive, runs of spaces as one."""
    return " ".join(text.split()).casefold()


def name_problems(items: Sequence[str]) -> list[str]:
    """Empty names, and names differing only by case or spaces (answers are read case-insensitively)."""
    problems = []
    if any(not item.strip() for item in items):
        problems.append("an empty entry (every name needs some text)")
    groups: dict[str, list[str]] = {}
    for item in dict.fromkeys(items):
        if item.strip():
            groups.setdefault(norm(item), []).append(item)
    close = [group for group in groups.values() if len(group) > 1]
    if close:
        problems.append(f"{shown(close[0])} differ only by case or spaces; answers are read case-insensitively, "
                        "so they cannot be told apart (keep one)")
    return problems


def synonym_problems(synonyms: Mapping[str, Sequence[str]], labels: Sequence[str]) -> list[str]:
    """Synonyms of no label, synonyms that are labels themselves, and synonyms shared by two labels."""
    problems = []
    unknown = [key for key in synonyms if key not in labels]
    if unknown:
        problems.append(f"{shown(unknown[:5])} are not labels (allowed: {shown(list(labels))})")
    by_norm = {norm(label): label for label in labels}
    owner: dict[str, str] = {}
    for label, words in synonyms.items():
        for word in words:
            other = by_norm.get(norm(word))
            if not word.strip():
                problems.append(f"{label}: an empty synonym")
            elif other is not None and other != label:
                problems.append(f"{label}: {shown(word)} is the label {other!r} itself; a synonym cannot mean "
                                "another label (remove it)")
            elif norm(word) in owner and owner[norm(word)] != label:
                problems.append(f"{label}: {shown(word)} is also a synonym of {owner[norm(word)]!r}; a synonym "
                                "must mean one label")
            owner.setdefault(norm(word), label)
    return problems


# ---------------------------------------------------------------- the model


@dataclass(frozen=True)
class ModelInfo:
    """What ``config.json`` (or the tiny model's settings) tells about a model without loading it.

    Attributes:
        kind: ``tiny`` or the ``model_type`` of ``config.json`` ("" when unknown).
        names: Full names of the layers LoRA can adapt (tiny only), else None.
        leaves: Their last name parts (tiny, or a type of :data:`LORA_LEAVES`), else None: not checkable.
        context: Positions the model was built or trained for, or None when unknown.
        tokenizer: ``tokenizer.json`` of the folder, to count tokens, or None.
        width: The hidden size, or None when unknown. No linear layer of a decoder is narrower on both sides, so a
            LoRA rank above it adds no rank to any update, only memory (and far above it, more than there is).
    """

    kind: str
    names: tuple[str, ...] | None
    leaves: tuple[str, ...] | None
    context: int | None
    tokenizer: Path | None = None
    width: int | None = None


def tiny_info(layers: int, hidden_size: int | None = None) -> ModelInfo:
    """The tiny model: a LlamaForCausalLM with ``layers`` decoder layers of width ``hidden_size``."""
    names = tuple(f"model.layers.{i}.{'self_attn' if leaf in TINY_LORA_LEAVES[:4] else 'mlp'}.{leaf}"
                  for i in range(layers) for leaf in TINY_LORA_LEAVES)
    return ModelInfo("tiny", names, TINY_LORA_LEAVES, TINY_POSITIONS, width=hidden_size)


def tiny_shape_problems(hidden_size: int, heads: int) -> list[str]:
    """Settings the tiny model's LlamaConfig refuses (transformers checks them when the trial builds the model)."""
    if hidden_size % heads:
        return [f"hidden_size {hidden_size} is not a multiple of heads {heads} (each head gets hidden_size / heads "
                "dimensions; allowed: e.g. hidden_size 128 with heads 4)"]
    if (hidden_size // heads) % 2:
        return [f"hidden_size / heads = {hidden_size // heads} dimensions per head, but rotary positions need an "
                "even number (allowed: e.g. hidden_size 128 with heads 4)"]
    return []


def folder_info(folder: Path) -> tuple[ModelInfo | None, str]:
    """A model folder's :class:`ModelInfo`, or (None, why it is not a model folder)."""
    config = folder / "config.json"
    if not config.is_file():
        return None, f"{folder} holds no config.json, so it is not a transformers model folder"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"{config} cannot be read as JSON ({exc})"
    if not isinstance(data, dict):
        return None, f"{config} is not a JSON object"
    kind = str(data.get("model_type") or "")
    context = next((data[k] for k in _CONTEXT_KEYS if isinstance(data.get(k), int)), None)
    width = next((data[k] for k in _WIDTH_KEYS if isinstance(data.get(k), int) and data[k] > 0), None)
    tokenizer = folder / "tokenizer.json"
    return ModelInfo(kind, None, LORA_LEAVES.get(kind), context, tokenizer if tokenizer.is_file() else None,
                     width), ""


def hub_cache() -> Path:
    """The Hugging Face hub cache folder (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def cached_model(name: str, file: str = "config.json") -> Path | None:
    """The snapshot folder of a model id in the hub cache that holds ``file``, or None."""
    snapshots = hub_cache() / f"models--{name.replace('/', '--')}" / "snapshots"
    if not os.path.isdir(snapshots):  # os.path: a name too long or holding a NUL byte is just not there
        return None
    return next((s for s in sorted(snapshots.iterdir()) if os.path.isfile(s / file)), None)


_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def model_location(name: str, task_folder: Path) -> tuple[Path | None, str]:
    """Where ``model.name`` is read from (a folder next to the task file, else the hub cache), or (None, why not).

    Trials load models offline (``local_files_only``), so a model id must already be in the cache.
    """
    local = task_folder / name  # an absolute name stays absolute
    if os.path.exists(local):  # os.path: a name too long or holding a NUL byte is just not there
        return (local, "") if os.path.isdir(local) else (None, f"{cut(str(local))} is a file; give the model's folder")
    if not _REPO_ID.fullmatch(name) or ".." in name:
        return None, f"no such folder: {cut(str(local))} (the path is relative to the task file's folder)"
    cached = cached_model(name)
    if cached is None:
        hint = name if len(name) <= 80 else "<model id>"  # the name was quoted already
        return None, (f"{shown(name)} is neither a folder next to the task file ({cut(str(task_folder))}) nor a "
                      f"model in the Hugging Face cache ({cut(str(hub_cache()))}); trials load models offline, so "
                      f"download it first (huggingface-cli download {hint}) or give a local folder")
    return cached, ""


# ---------------------------------------------------------------- LoRA target modules


def rank_problem(ranks: Sequence[int], info: ModelInfo | None) -> str:
    """A LoRA rank above the model's width (no update gains rank from it; a huge one cannot be allocated), or ""."""
    width = info.width if info else None
    over = [r for r in ranks if width is not None and r > width]
    if not over:
        return ""
    return (f"{cut(str(max(over)))} is above the model's hidden size {width}: an update of rank r has rank at most "
            f"min(r, layer width), so the extra rank only costs memory (allowed: 1 to {width}; LoRA ranks are "
            "usually 4 to 64)")


def target_problems(target: str | Sequence[str], info: ModelInfo, *, tiny: bool) -> list[str]:
    """LoRA ``target_modules`` that peft would not find (or refuse) in the model; [] when fine or not checkable.

    peft matches a list entry against whole module names (equal, or a dotted suffix) and a single string as a
    regular expression matched against each whole name; ``all-linear`` is always fine.
    """
    if target == "all-linear":
        return []
    allowed = f"allowed: all-linear or a list of {', '.join(info.leaves or ())}"
    model = "the tiny model" if tiny else f"a {info.kind} model"
    if isinstance(target, str):
        return _regex_problems(target, info, model, allowed)
    problems = []
    for entry in target:
        leaf = entry.rsplit(".", 1)[-1]
        if tiny and leaf in ("embed_tokens", "lm_head"):
            problems.append(f"{shown(entry)}: the tiny model trains embed_tokens and lm_head whole "
                            f"(modules_to_save), so LoRA cannot target them ({allowed})")
        elif not _has(info, entry):
            problems.append(f"{shown(entry)} is not a layer LoRA can adapt in {model} ({allowed})")
    return problems


def _has(info: ModelInfo, entry: str) -> bool:
    """Whether a list entry names a layer: a whole name or its dotted suffix (peft's rule), else by last part."""
    if info.names is not None:
        return any(n == entry or n.endswith("." + entry) for n in info.names)
    return info.leaves is None or entry.rsplit(".", 1)[-1] in info.leaves


def _regex_problems(target: str, info: ModelInfo, model: str, allowed: str) -> list[str]:
    """A single string: a regular expression that must match at least one whole module name."""
    bare = re.fullmatch(r"\w+", target) is not None
    if bare and info.leaves is not None and target not in info.leaves:
        return [f"{shown(target)} is not a layer LoRA can adapt in {model} ({allowed})"]
    try:
        pattern = re.compile(target)
    except re.error as exc:
        return [f"{shown(target)} is not a valid regular expression ({exc}); a single string is one, matched "
                f"against whole module names ({allowed})"]
    if info.names is not None:
        found = any(pattern.fullmatch(n) for n in info.names)
    elif bare:
        found = False  # a bare layer name never matches a whole dotted module name
    else:
        return []
    if found:
        return []
    example = info.names[0] if info.names else f"model.layers.0.self_attn.{(info.leaves or ('q_proj',))[0]}"
    return [f"{shown(target)} matches no module of {model}: a single string is a regular expression matched "
            f"against whole module names such as {example}; write .*{target} (or, in the task file, a list "
            f"[{target}]) ({allowed})"]


# ---------------------------------------------------------------- storage


_SECRET_QUERY = re.compile(r"(?i)([?&][^=&]*(?:secret|token|password|key)[^=&]*)=[^&]*")


def redacted(uri: str) -> str:
    """A storage URI as it may be printed or logged: no password or secret in it.

    A password (``user:pass@``) and the values of query keys that hold secrets (``secret_key=``,
    ``session_token=``, ``access_key=``) are replaced by ``***``.
    """
    if "://" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    rest = re.sub(r"^([^/@:]*):[^/@]*@", r"\1:***@", rest)
    return scheme + "://" + _SECRET_QUERY.sub(r"\1=***", rest)


def storage_problems(given: str) -> list[str]:
    """Why a search could not use ``given`` as its shared storage (``--storage``, ``tracking.storage``); [] when it can.

    A URI must name a filesystem pyarrow opens (Tune writes the experiment through it); a path must be a folder,
    or one that can be made, that this user can write.
    """
    if not given.strip():
        return ["empty (allowed: a folder every node sees, or a URI such as s3://bucket/sde or file:///shared/sde)"]
    if "://" in given:
        import pyarrow.fs  # type: ignore[import-untyped]  # imported here: only a search naming a storage pays

        try:
            pyarrow.fs.FileSystem.from_uri(given)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... for what it cannot open
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return [f"{clip(redacted(given))}: pyarrow cannot open it ({clip(redacted(first), 160)}; allowed: a path, "
                    "or a URI of a filesystem pyarrow has: s3://, gs://, hdfs://, abfs://, file://)"]
        return []
    blocked = unwritable_folder(Path(given).expanduser())
    if blocked is None:
        return []
    existing, why = blocked
    allowed = "a folder, or a URI" if why.endswith("folder") else "a folder this user can write"
    return [f"{clip(given)}: {clip(str(existing))} {why} (allowed: {allowed})"]


def unwritable_folder(path: Path) -> tuple[Path, str] | None:
    """Why a folder could not be made or written at ``path``: (its nearest existing ancestor, what is wrong with it).

    None when the nearest existing ancestor is a folder this user can write (the rest can be made).
    """
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return existing, "is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return existing, "is not writable"
    return None


# ---------------------------------------------------------------- tracking


TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
"""URI schemes MLflow's tracking store opens (besides a file store, which needs MLFLOW_ALLOW_FILE_STORE=true)."""


def tracking_problems(uri: str, cwd: Path | None = None) -> list[str]:
    """Why MLflow could not open ``uri`` as its tracking store; [] when it can (a server's reachability aside).

    Args:
        uri: The tracking URI.
        cwd: The folder a relative SQLite path is resolved in (default: the current one).
    """
    scheme = uri if uri in ("databricks", "databricks-uc", "uc") else urlparse(uri).scheme.lower()  # as MLflow reads it
    base = scheme.split("+", 1)[0]  # postgresql+psycopg2 -> postgresql
    if base == "sqlite":
        return _sqlite_problems(uri, cwd or Path.cwd())
    if base in TRACKING_SCHEMES or scheme in _plugin_schemes():
        return []
    allowed = f"allowed: {', '.join(s + '://' for s in TRACKING_SCHEMES)} or a file store"
    if scheme in ("", "file") or (len(scheme) == 1 and scheme.isalpha()):
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("true", "1"):
            return []
        return [f"a file store, which MLflow {_mlflow_version()} refuses unless MLFLOW_ALLOW_FILE_STORE=true; use "
                f"sqlite:////<absolute path>/mlflow.db ({allowed})"]
    if scheme in ("databricks-uc", "uc"):
        return [f"{scheme}:// is a model registry, not a tracking store ({allowed})"]
    return [f"MLflow has no tracking store for {scheme}:// URIs ({allowed})"]


def _sqlite_problems(uri: str, cwd: Path) -> list[str]:
    path = unquote(uri.split("://", 1)[1].split("?", 1)[0].removeprefix("/")) if "://" in uri else ""
    if not path or path == ":memory:":
        return ["an in-memory SQLite database keeps nothing after the search; give a file: "
                "sqlite:////<absolute path>/mlflow.db"]
    db = cwd / path  # sqlite:////abs -> /abs; sqlite:///rel -> cwd/rel
    if os.path.isdir(db):  # os.path: a name too long or holding a NUL byte is just not there
        return [f"{cut(str(db))} is a folder; give the database file, e.g. sqlite:///{cut(str(db / 'mlflow.db'))}"]
    if not os.path.isdir(db.parent):
        return [f"the folder {cut(str(db.parent))} does not exist (MLflow would create it silently); create it or "
                "fix the path (sqlite:////<absolute path> has four slashes)"]
    return []


def _plugin_schemes() -> set[str]:
    """Schemes that installed MLflow plugins register (entry points ``mlflow.tracking_store``)."""
    try:
        return {ep.name for ep in importlib.metadata.entry_points(group="mlflow.tracking_store")}
    except Exception:  # broken package metadata must not break the check
        return set()


def _mlflow_version() -> str:
    try:
        return importlib.metadata.version("mlflow")
    except importlib.metadata.PackageNotFoundError:
        return "3"


# ---------------------------------------------------------------- templates and tokens


TEMPLATE_FIELDS = ("slots", "labels", "format")
_DUMMY = {"slots": "food, drinks", "labels": "positive, negative", "format": "Write one line per aspect."}


def template_fill_problem(text: str) -> str:
    """Why an instruction template fails when filled in with text (a bad format spec or conversion); "" if fine."""
    try:
        text.format(**_DUMMY)
    except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
        return (f"fails when filled in ({type(exc).__name__}: {exc}); the placeholders are filled with text, so "
                "a format spec or conversion must suit a string (e.g. {slots}, {slots!r}, {slots:>40})")
    return ""


def token_counter(tokenizer: Path | None) -> tuple[Callable[[str], int], bool]:
    """A function counting a text's tokens, and whether the count is exact.

    With a ``tokenizer.json`` (and the ``tokenizers`` package), the exact count; else the UTF-8 bytes, an upper
    bound for byte-level tokenizers (the tiny model's), plus BOS and EOS.
    """
    if tokenizer is not None and importlib.util.find_spec("tokenizers") is not None:
        try:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(tokenizer))
            return (lambda text: len(tok.encode(text, add_special_tokens=False).ids) + 2), True
        except Exception:  # an unreadable tokenizer.json: fall back to the bound
            pass
    return (lambda text: len(text.encode("utf-8")) + 2), False
