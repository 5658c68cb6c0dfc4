"""Tests for sde_search.design: the vocabulary, presets, params round trip and design parsing."""

from __future__ import annotations

import dataclasses

import pytest

from sde_search.design import (
    DIMENSIONS,
    ES_SDE,
    EW_SDE,
    EXTRA_DIMENSIONS,
    PAPER_BASELINE,
    PAPER_DIMENSIONS,
    PRESETS,
    Design,
    all_designs,
    design_param,
    dimensions_of,
    hparams_of,
    parse_design,
    split_params,
    train_param,
    train_params,
)

ALL = list(all_designs())


def test_dimensions_follow_the_design_fields_and_literals() -> None:
    assert list(DIMENSIONS) == [f.name for f in dataclasses.fields(Design)]
    assert DIMENSIONS == {
        "instruction": ("first", "last", "none"),
        "prompt_loss": ("exclude", "include"),
        "output_format": ("natural", "lines", "json"),
        "unmentioned": ("placeholder", "omit"),
        "label_style": ("text", "number"),
        "reasoning": ("none", "cot", "reverse_cot"),
        "prompt_template": ("raw", "chat"),
    }
    assert EXTRA_DIMENSIONS == ("prompt_template",)


def test_extra_dimensions_stay_out_of_paper_labels_until_changed() -> None:
    assert ES_SDE.short() == "first/exclude/lines/placeholder/text/none"
    assert Design(prompt_template="chat").short() == "first/exclude/lines/placeholder/text/none/chat"
    assert all(d.prompt_template == "raw" for d in ALL)
    assert len(list(all_designs(tuple(DIMENSIONS)))) == 432


def test_all_designs_are_216_distinct_designs() -> None:
    assert len(ALL) == 216 == 3 * 2 * 3 * 2 * 2 * 3
    assert len(set(ALL)) == 216
    assert len({d.short() for d in ALL}) == 216


def test_every_value_appears_in_the_product_equally_often() -> None:
    for dim in PAPER_DIMENSIONS:
        values = DIMENSIONS[dim]
        counts = {v: sum(getattr(d, dim) == v for d in ALL) for v in values}
        assert counts == dict.fromkeys(values, 216 // len(values)), dim


def test_defaults_are_es_sde() -> None:
    assert Design() == ES_SDE
    assert ES_SDE.short() == "first/exclude/lines/placeholder/text/none"


@pytest.mark.parametrize(
    ("design", "expected"),
    [
        (PAPER_BASELINE, "last/exclude/natural/placeholder/text/none"),
        (ES_SDE, "first/exclude/lines/placeholder/text/none"),
        (EW_SDE, "last/exclude/natural/omit/text/none"),
    ],
    ids=["paper_baseline", "es_sde", "ew_sde"],
)
def test_presets(design: Design, expected: str) -> None:
    assert design.short() == expected


def test_preset_registry_names() -> None:
    assert PRESETS == {"es_sde": ES_SDE, "paper_baseline": PAPER_BASELINE, "ew_sde": EW_SDE}


def test_ew_sde_differs_from_the_paper_baseline_only_in_unmentioned() -> None:
    assert EW_SDE.changes_from(PAPER_BASELINE) == {"unmentioned": "omit"}
    assert PAPER_BASELINE.changes_from(ES_SDE) == {"instruction": "last", "output_format": "natural"}
    assert ES_SDE.changes_from(ES_SDE) == {}


@pytest.mark.parametrize("design", ALL, ids=[d.short() for d in ALL])
def test_params_round_trip(design: Design) -> None:
    params = design.to_params()
    assert set(params) == {f"design.{k}" for k in DIMENSIONS}
    assert Design.from_params(params) == design


def test_from_params_ignores_other_params_and_defaults_to_es_sde() -> None:
    design = Design.from_params({"design.output_format": "json", "lr": 1e-3, "lora_rank": 8})
    assert design == dataclasses.replace(ES_SDE, output_format="json")
    assert Design.from_params({}) == ES_SDE


def test_flat_param_names_split_into_design_and_training_values() -> None:
    params = {**PAPER_BASELINE.to_params(), **train_params({"lr": 1e-3, "lora_rank": 8}), "trial_id": "x"}
    assert train_param("lr") in params and design_param("output_format") in params
    design, hparams = split_params(params)
    assert design == PAPER_BASELINE
    assert hparams == hparams_of(params) == {"lr": 1e-3, "lora_rank": 8}  # other keys ignored
    assert dimensions_of(params) == dataclasses.asdict(PAPER_BASELINE)
    assert train_params(hparams_of(params)) == {"train.lr": 1e-3, "train.lora_rank": 8}


def test_from_params_rejects_an_unknown_dimension() -> None:
    with pytest.raises(ValueError, match=r"unknown design dimension\(s\) \['output_fromat'\]"):
        Design.from_params({"design.output_fromat": "json"})


def test_to_params_values_are_optuna_safe_strings() -> None:
    assert all(isinstance(v, str) for d in ALL for v in d.to_params().values())


@pytest.mark.parametrize(
    ("field", "value"),
    [("instruction", "middle"), ("prompt_loss", "all"), ("output_format", "xml"), ("unmentioned", "skip"),
     ("label_style", "code"), ("reasoning", "cot_reverse"), ("output_format", True)],
)
def test_invalid_values_raise(field: str, value: object) -> None:
    allowed = ", ".join(DIMENSIONS[field])
    with pytest.raises(ValueError, match=rf"design\.{field}: .* is not one of {allowed}"):
        Design(**{field: value})


def test_design_is_frozen_and_keyword_only() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ES_SDE.output_format = "json"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Design("first")  # type: ignore[misc]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("es_sde", ES_SDE),
        ("paper_baseline", PAPER_BASELINE),
        ("ew_sde", EW_SDE),
        ("output_format=json,reasoning=cot", Design(output_format="json", reasoning="cot")),
        (" output_format = json , reasoning=cot ,", Design(output_format="json", reasoning="cot")),
        ("design.label_style=number", Design(label_style="number")),
        ("paper_baseline,label_style=number", Design(instruction="last", output_format="natural",
                                                     label_style="number")),
        ("ew_sde,unmentioned=placeholder", PAPER_BASELINE),
        ("", ES_SDE),
    ],
)
def test_parse_design(spec: str, expected: Design) -> None:
    assert parse_design(spec) == expected


@pytest.mark.parametrize("design", ALL[::7], ids=[d.short() for d in ALL[::7]])
def test_parse_design_reads_key_value_pairs_of_every_dimension(design: Design) -> None:
    spec = ",".join(f"{k}={v}" for k, v in dataclasses.asdict(design).items())
    assert parse_design(spec) == design


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("es-sde", r"design 'es-sde': not a preset \(es_sde, paper_baseline, ew_sde\) nor key=value"),
        ("output_format=json,es_sde", r"design 'es_sde': not a preset"),
        ("es_sde,paper_baseline", r"design 'paper_baseline': not a preset"),
        ("output_fromat=json", r"design key 'output_fromat': allowed keys are instruction, prompt_loss, "
                               r"output_format, unmentioned, label_style, reasoning"),
        ("output_format=xml", r"design\.output_format: 'xml' is not one of natural, lines, json"),
        ("paper_baseline,reasoning=chain", r"design\.reasoning: 'chain' is not one of none, cot, reverse_cot"),
    ],
)
def test_parse_design_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_design(spec)
