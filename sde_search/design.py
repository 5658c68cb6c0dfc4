"""The sample-design vocabulary: the one place that lists every design option.

A :class:`Design` fixes how one fine-tuning sample is laid out (Guo et al. 2024,
"Sample Design Engineering", arXiv 2404.13033). Each field is one dimension of
the search space and its ``Literal`` type is the list of allowed values; the
rest of the package (renderers, search spaces, CLI) derives from these hints.

Pure core: imports only the standard library (never torch, Ray or MLflow).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_type_hints

Instruction = Literal["first", "last", "none"]
PromptLoss = Literal["exclude", "include"]
OutputFormat = Literal["natural", "lines", "json"]
Unmentioned = Literal["placeholder", "omit"]
LabelStyle = Literal["text", "number"]
Reasoning = Literal["none", "cot", "reverse_cot"]
PromptTemplate = Literal["raw", "chat"]

DESIGN_PREFIX = "design."
"""Flat params (Optuna, Tune, MLflow) name a design dimension ``design.<dimension>``."""
TRAIN_PREFIX = "train."
"""... and a training value ``train.<key>`` (``train.lr``); the functions below are the only parsers of both."""


@dataclass(frozen=True, kw_only=True)
class Design:
    """One sample design; the defaults are ES-SDE, the paper's recommended recipe.

    Attributes:
        instruction: Where the task instruction goes: before the input (``first``,
            the paper's Inst-first), after it (``last``) or nowhere (``none``).
        prompt_loss: ``exclude`` trains on the answer only (No-MI); ``include``
            also puts the prompt tokens in the loss (MI).
        output_format: ``natural`` (one line, ``slot: value, ...``), ``lines``
            (one line per slot) or ``json`` (one JSON object per slot per line).
        unmentioned: ``placeholder`` writes every slot, absent ones with a
            placeholder (PU); ``omit`` writes only the filled slots (OU).
        label_style: ``text`` labels or ``number`` codes.
        reasoning: ``none``; ``cot``, a rationale before each label; or
            ``reverse_cot``, a rationale after each label.
        prompt_template: ``raw`` text, as in the paper, or ``chat``: the model's chat template (a ChatML
            fallback for models without one) around the prompt. Not a paper dimension; it appears in
            labels only when ``chat`` (see :data:`EXTRA_DIMENSIONS`).
    """

    instruction: Instruction = "first"
    prompt_loss: PromptLoss = "exclude"
    output_format: OutputFormat = "lines"
    unmentioned: Unmentioned = "placeholder"
    label_style: LabelStyle = "text"
    reasoning: Reasoning = "none"
    prompt_template: PromptTemplate = "raw"

    def __post_init__(self) -> None:
        """Rejects values outside each dimension's allowed set."""
        for name, allowed in DIMENSIONS.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"design.{name}: {value!r} is not one of {', '.join(allowed)}")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Design:
        """Builds a design from flat params; keys without the ``design.`` prefix are ignored.

        Args:
            params: Flat Optuna/Tune params such as ``{"design.output_format": "json", "lr": 1e-3}``.

        Returns:
            The design, with defaults (ES-SDE) for dimensions not named.
        """
        fields = dimensions_of(params)
        unknown = sorted(set(fields) - set(DIMENSIONS))
        if unknown:
            raise ValueError(f"unknown design dimension(s) {unknown}; allowed: {', '.join(DIMENSIONS)}")
        return cls(**fields)

    def to_params(self) -> dict[str, str]:
        """Returns flat, Optuna-safe params, e.g. ``{"design.output_format": "lines", ...}``."""
        return {DESIGN_PREFIX + k: v for k, v in dataclasses.asdict(self).items()}

    def short(self) -> str:
        """A compact one-line label, e.g. ``first/exclude/lines/placeholder/text/none`` (``.../chat`` for chat)."""
        defaults = Design()
        return "/".join(str(v) for k, v in dataclasses.asdict(self).items()
                        if k not in EXTRA_DIMENSIONS or v != getattr(defaults, k))

    def changes_from(self, other: Design) -> dict[str, str]:
        """The dimensions where this design differs from ``other`` (name -> this value)."""
        return {k: getattr(self, k) for k in DIMENSIONS if getattr(self, k) != getattr(other, k)}


def design_param(dimension: str) -> str:
    """The flat param name of a design dimension: ``output_format`` -> ``design.output_format``."""
    return DESIGN_PREFIX + dimension


def train_param(key: str) -> str:
    """The flat param name of a training value: ``lr`` -> ``train.lr``."""
    return TRAIN_PREFIX + key


def dimensions_of(params: Mapping[str, Any]) -> dict[str, Any]:
    """The design values among flat params, unprefixed: ``{"design.reasoning": "cot"}`` -> ``{"reasoning": "cot"}``.

    Args:
        params: Flat params; keys without the ``design.`` prefix (training values, others) are ignored.
    """
    return {k[len(DESIGN_PREFIX):]: v for k, v in params.items() if k.startswith(DESIGN_PREFIX)}


def hparams_of(params: Mapping[str, Any]) -> dict[str, Any]:
    """The training values among flat params, without their prefix: ``{"train.lr": 1e-3, ...}`` -> ``{"lr": 1e-3}``.

    Args:
        params: Flat params; keys without the ``train.`` prefix (design dimensions, others) are ignored.
    """
    return {k[len(TRAIN_PREFIX):]: v for k, v in params.items() if k.startswith(TRAIN_PREFIX)}


def train_params(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Training values as flat params: ``{"lr": 1e-3}`` -> ``{"train.lr": 1e-3}`` (inverse of :func:`hparams_of`)."""
    return {TRAIN_PREFIX + k: v for k, v in hparams.items()}


def split_params(params: Mapping[str, Any]) -> tuple[Design, dict[str, Any]]:
    """Flat params as a trial sees them: its design and its training values (unprefixed).

    Args:
        params: Flat params such as ``{"design.output_format": "json", "train.lr": 1e-3}``.

    Returns:
        ``(design, hparams)``; dimensions not named keep their ES-SDE default.

    Raises:
        ValueError: For an unknown design dimension or value.
    """
    return Design.from_params(params), hparams_of(params)


def _dimensions() -> dict[str, tuple[str, ...]]:
    hints = get_type_hints(Design)
    return {f.name: tuple(get_args(hints[f.name])) for f in dataclasses.fields(Design)}


DIMENSIONS: dict[str, tuple[str, ...]] = _dimensions()
"""Dimension name -> allowed values, in declaration order (derived from the type hints)."""

PAPER_DIMENSIONS = ("instruction", "prompt_loss", "output_format", "unmentioned", "label_style", "reasoning")
"""The six dimensions of Guo et al.; :func:`all_designs` spans these."""
EXTRA_DIMENSIONS = tuple(d for d in DIMENSIONS if d not in PAPER_DIMENSIONS)
"""Dimensions the paper did not ask about: left at their default unless a space names them."""

ES_SDE = Design()
PAPER_BASELINE = Design(instruction="last", output_format="natural")
EW_SDE = Design(instruction="last", output_format="natural", unmentioned="omit")

PRESETS: dict[str, Design] = {"es_sde": ES_SDE, "paper_baseline": PAPER_BASELINE, "ew_sde": EW_SDE}


def all_designs(dimensions: tuple[str, ...] = PAPER_DIMENSIONS) -> Iterator[Design]:
    """Yields every combination of the paper's dimensions (216 designs), or of ``dimensions``."""
    for values in itertools.product(*(DIMENSIONS[d] for d in dimensions)):
        fields: dict[str, Any] = dict(zip(dimensions, values, strict=True))
        yield Design(**fields)


def parse_design(spec: str) -> Design:
    """Parses a preset name or ``key=value,...`` pairs (on top of ES-SDE).

    Args:
        spec: ``"es_sde"``, ``"paper_baseline"``, ``"ew_sde"`` or e.g.
            ``"output_format=json,reasoning=cot"``; a preset may lead:
            ``"paper_baseline,label_style=number"``.

    Returns:
        The design.

    Raises:
        ValueError: For an unknown preset, dimension or value (the message lists what is allowed).
    """
    base, fields = ES_SDE, dict[str, Any]()
    for i, part in enumerate(p.strip() for p in spec.split(",") if p.strip()):
        if "=" not in part:
            if i > 0 or part not in PRESETS:
                raise ValueError(f"design {part!r}: not a preset ({', '.join(PRESETS)}) nor key=value")
            base = PRESETS[part]
            continue
        key, value = (s.strip() for s in part.split("=", 1))
        key = key.removeprefix(DESIGN_PREFIX)
        if key not in DIMENSIONS:
            raise ValueError(f"design key {key!r}: allowed keys are {', '.join(DIMENSIONS)}")
        fields[key] = value
    return dataclasses.replace(base, **fields)
