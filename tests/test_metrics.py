"""Tests for sde_search.metrics: every expected value is computed by hand in the comment above it."""

from __future__ import annotations

import ast
import math
import sys
from pathlib import Path

import pytest

from sde_search import metrics
from sde_search.metrics import (
    PAPER_LABELS,
    aspect_scores,
    distinct_answers,
    format_error_rate,
    kappa_weights,
    most_common_answer,
    span_scores,
    weighted_kappa,
)

POS, NEU, NEG, UNM = PAPER_LABELS


# --- kappa weights -------------------------------------------------------------------------------------------------


def test_kappa_weights_paper_order_is_the_paper_matrix() -> None:
    """In the paper's label order the weights are the paper's matrix."""
    assert kappa_weights(list(PAPER_LABELS)) == [
        [1.0, 0.5, 0.0, 0.5],
        [0.67, 1.0, 0.67, 0.67],
        [0.0, 0.5, 1.0, 0.5],
        [0.5, 0.67, 0.5, 1.0],
    ]


def test_kappa_weights_reordered_to_labels() -> None:
    """Rows and columns follow the order of the given labels."""
    # order [unm, pos, neu, neg]: row unm = paper row unm [pos .5, neu .67, neg .5, unm 1] read as [unm, pos, neu, neg]
    assert kappa_weights([UNM, POS, NEU, NEG]) == [
        [1.0, 0.5, 0.67, 0.5],
        [0.5, 1.0, 0.5, 0.0],
        [0.67, 0.67, 1.0, 0.67],
        [0.5, 0.0, 0.5, 1.0],
    ]


def test_kappa_weights_are_asymmetric() -> None:
    """Rows are gold, columns predictions, and the matrix is not symmetric."""
    w = kappa_weights(list(PAPER_LABELS))
    assert w is not None
    assert w[1][0] == 0.67  # gold neutral, predicted positive
    assert w[0][1] == 0.5  # gold positive, predicted neutral


@pytest.mark.parametrize(
    "labels",
    [[POS, NEU, NEG], [POS, NEU, NEG, "none"], [POS, NEU, NEG, UNM, POS], ["yes", "no"]],
)
def test_kappa_weights_other_label_sets_are_none(labels: list[str]) -> None:
    """Any label set other than the paper's four gives None (plain kappa)."""
    assert kappa_weights(labels) is None


# --- weighted kappa ------------------------------------------------------------------------------------------------


def test_weighted_kappa_worked_example() -> None:
    """A 4-label confusion scored by hand with the paper weights and with none."""
    pairs = [(POS, POS)] * 2 + [(POS, NEU), (NEG, NEG), (NEG, POS), (NEU, UNM)] + [(UNM, UNM)] * 2
    # N = 8. Counts (rows gold, cols pred, order pos neu neg unm):
    #   pos: 2 1 0 0 (r=3)   neu: 0 0 0 1 (r=1)   neg: 1 0 1 0 (r=2)   unm: 0 0 0 2 (r=2)
    #   column totals c = [3, 1, 1, 3]
    # sum w*n = 2*1 + 1*.5 + 1*.67 + 1*0 + 1*1 + 2*1 = 6.17  -> p_o = 6.17 / 8
    # sum w*r*c = 3*(1*3 + .5*1 + 0*1 + .5*3)            = 3 * 5    = 15
    #           + 1*(.67*3 + 1*1 + .67*1 + .67*3)        = 1 * 5.69 = 5.69
    #           + 2*(0*3 + .5*1 + 1*1 + .5*3)            = 2 * 3    = 6
    #           + 2*(.5*3 + .67*1 + .5*1 + 1*3)          = 2 * 5.67 = 11.34   -> 38.03, p_e = 38.03 / 64
    # kappa = (6.17/8 - 38.03/64) / (1 - 38.03/64) = (49.36 - 38.03) / (64 - 38.03) = 11.33 / 25.97 = 0.43627
    labels = list(PAPER_LABELS)
    assert weighted_kappa(pairs, labels, kappa_weights(labels)) == pytest.approx(11.33 / 25.97)
    # Plain kappa on the same pairs: p_o = 5/8, p_e = (3*3 + 1*1 + 2*1 + 2*3)/64 = 18/64 -> (40-18)/(64-18) = 22/46
    assert weighted_kappa(pairs, labels) == pytest.approx(22 / 46)


def test_weighted_kappa_is_invariant_to_label_order_when_weights_follow() -> None:
    """Reordering labels and weights together leaves kappa unchanged."""
    pairs = [(POS, POS)] * 2 + [(POS, NEU), (NEG, NEG), (NEG, POS), (NEU, UNM)] + [(UNM, UNM)] * 2
    labels = [NEG, UNM, NEU, POS]
    assert weighted_kappa(pairs, labels, kappa_weights(labels)) == pytest.approx(11.33 / 25.97)


def test_plain_kappa_textbook_two_raters() -> None:
    """The textbook two-rater example has Cohen's kappa 0.4."""
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15. p_o = 35/50 = .7;
    # rater A says yes 25/50 = .5, rater B 30/50 = .6 -> p_e = .5*.6 + .5*.4 = .5; kappa = (.7 - .5)/(1 - .5) = .4
    pairs = [("yes", "yes")] * 20 + [("yes", "no")] * 5 + [("no", "yes")] * 10 + [("no", "no")] * 15
    assert weighted_kappa(pairs, ["yes", "no"]) == pytest.approx(0.4)


def test_perfect_agreement_is_one() -> None:
    """Perfect agreement scores 1 with and without weights."""
    pairs = [(POS, POS), (NEU, NEU), (NEG, NEG), (UNM, UNM), (POS, POS)]
    labels = list(PAPER_LABELS)
    assert weighted_kappa(pairs, labels) == pytest.approx(1.0)
    assert weighted_kappa(pairs, labels, kappa_weights(labels)) == pytest.approx(1.0)


def test_kappa_is_zero_when_chance_agreement_is_perfect() -> None:
    """1 - p_e == 0 returns 0.0 instead of dividing by zero."""
    # every gold and every prediction is "pos": p_o = p_e = 1, 1 - p_e = 0 -> 0.0 by convention (not a division error)
    assert weighted_kappa([(POS, POS)] * 3, list(PAPER_LABELS)) == 0.0


def test_kappa_of_no_pairs_is_nan() -> None:
    """No pairs gives NaN."""
    assert math.isnan(weighted_kappa([], ["a", "b"]))


def test_prediction_outside_labels_is_an_extra_disagreeing_column() -> None:
    """An unknown predicted label is an extra column of weight 0."""
    # counts: a -> a 1, a -> x 1 (r_a = 2); b -> b 1 (r_b = 1); label columns c = [1, 1], N = 3
    # p_o = 2/3; p_e = (2*1 + 1*1)/9 = 1/3; kappa = (2/3 - 1/3)/(2/3) = .5
    # (were "x" read as "b": c = [1, 2], p_e = 4/9, kappa = (2/9)/(5/9) = .4)
    assert weighted_kappa([("a", "a"), ("b", "b"), ("a", "x")], ["a", "b"]) == pytest.approx(0.5)


def test_gold_outside_labels_raises() -> None:
    """A gold label outside the label set is an error naming it."""
    with pytest.raises(ValueError, match="gold='x'"):
        weighted_kappa([("x", "a")], ["a", "b"])


def test_weights_of_the_wrong_shape_raise() -> None:
    """Weights must be len(labels) x len(labels)."""
    with pytest.raises(ValueError, match="2x2"):
        weighted_kappa([("a", "a")], ["a", "b"], [[1.0]])


# --- aspect scores -------------------------------------------------------------------------------------------------

SLOTS = ["food", "price"]
LABELS = [POS, NEU, NEG]
GOLDS = [
    {"food": (POS,), "price": (UNM,)},
    {"food": (POS,), "price": (UNM,)},
    {"food": (POS,), "price": (UNM,)},
    {"food": (NEG,), "price": (NEG,)},
]


def test_fixed_answer_with_different_base_rates_has_positive_kappa() -> None:
    """Pooled kappa of an input-blind fixed answer is not 0."""
    fixed = most_common_answer(GOLDS, SLOTS, placeholder=(UNM,))
    assert fixed == {"food": (POS,), "price": (UNM,)}
    scores = aspect_scores(GOLDS, [fixed] * 4, slots=SLOTS, labels=LABELS, unmentioned=UNM)
    # pairs: (pos,pos) x3, (neg,pos), (unm,unm) x3, (neg,unm); N = 8; accuracy = 6/8
    # rows r: pos 3, neu 0, neg 2, unm 3; columns c: pos 4, neu 0, neg 0, unm 4
    # sum w*n = 3*1 + 1*0 + 1*.5 + 3*1 = 6.5 -> p_o = .8125
    # sum w*r*c = 3*(1*4 + .5*4) + 2*(0*4 + .5*4) + 3*(.5*4 + 1*4) = 18 + 4 + 18 = 40 -> p_e = 40/64 = .625
    # kappa = (.8125 - .625)/(1 - .625) = .5, not 0 although the answer ignores the input
    assert scores["accuracy"] == pytest.approx(0.75)
    assert scores["kappa"] == pytest.approx(0.5)


def test_aspect_missing_or_empty_slot_counts_as_unmentioned() -> None:
    """A missing or empty predicted slot reads as unmentioned."""
    preds = [{"food": (POS,)}, {"food": (POS,), "price": ()}, {"food": (NEG,), "price": (UNM,)}, {}]
    scores = aspect_scores(GOLDS, preds, slots=SLOTS, labels=LABELS, unmentioned=UNM)
    # correct: s1 food, price(missing -> unm); s2 food, price(empty -> unm); s3 price; s4 none -> 5/8
    assert scores["accuracy"] == pytest.approx(5 / 8)


def test_aspect_perfect_predictions() -> None:
    """Gold scored against itself is perfect."""
    scores = aspect_scores(GOLDS, GOLDS, slots=SLOTS, labels=LABELS, unmentioned=UNM)
    assert scores == {"accuracy": pytest.approx(1.0), "kappa": pytest.approx(1.0)}


def test_aspect_length_mismatch_raises() -> None:
    """Golds and predictions must be aligned."""
    with pytest.raises(ValueError, match="differ in length"):
        aspect_scores(GOLDS, GOLDS[:2], slots=SLOTS, labels=LABELS, unmentioned=UNM)


# --- span scores ---------------------------------------------------------------------------------------------------


def test_near_miss_name_counts_soft_but_not_hard() -> None:
    """A name containing the gold name counts soft, not hard."""
    # "il-2 gene" vs "il-2": ratio = 2*4/(9+4) = .615 > .5 and one contains the other -> snapped
    scores = span_scores([{"gene": ("IL-2",)}], [{"gene": ("IL-2 gene",)}], containment=True)
    assert (scores["precision"], scores["recall"], scores["f1"]) == (0.0, 0.0, 0.0)
    assert (scores["precision_soft"], scores["recall_soft"], scores["f1_soft"]) == (1.0, 1.0, 1.0)


def test_containment_switch_changes_soft_score() -> None:
    """A close name without containment counts only when containment is off."""
    # "interleukin 2" vs "interleukin-2": ratio = 2*12/26 = .92 but neither contains the other
    golds, preds = [{"protein": ("interleukin-2",)}], [{"protein": ("interleukin 2",)}]
    assert span_scores(golds, preds, containment=True)["f1_soft"] == 0.0
    assert span_scores(golds, preds, containment=False)["f1_soft"] == 1.0


@pytest.mark.parametrize(
    "gold", [{"dna": ("IL-2",), "protein": ("IL-2 receptor",)}, {"protein": ("IL-2 receptor",), "dna": ("IL-2",)}]
)
def test_snap_picks_the_most_similar_gold_name(gold: dict[str, tuple[str, ...]]) -> None:
    """A prediction snaps to the closest gold name, not the first or last close one."""
    # "il-2 recep" vs "il-2": 2*4/14 = .57; vs "il-2 receptor": 2*10/23 = .87 -> snapped to the receptor (a protein)
    golds = [gold]
    scores = span_scores(golds, [{"protein": ("IL-2 recep",)}], containment=True)
    # tp 1 of 1 prediction and 2 gold: P = 1, R = .5
    assert (scores["precision_soft"], scores["recall_soft"]) == (1.0, 0.5)


def test_snap_stays_within_the_sample() -> None:
    """Gold names of another sample are never snap targets."""
    golds = [{"gene": ()}, {"gene": ("IL-2",)}]
    preds = [{"gene": ("IL-2 gene",)}, {"gene": ()}]
    assert span_scores(golds, preds, containment=True)["f1_soft"] == 0.0


def test_names_and_types_are_lowercased_and_stripped() -> None:
    """Case and surrounding spaces do not matter."""
    scores = span_scores([{"PER": ("Ann",)}], [{"per": (" ann ",)}], containment=True)
    assert scores["f1"] == 1.0


def test_duplicates_min_count_for_hard_dedupe_for_soft() -> None:
    """Hard uses min counts; soft de-duplicates predictions first."""
    scores = span_scores([{"per": ("Ann", "Ann", "Bob")}], [{"per": ("Ann", "Ann", "Ann")}], containment=True)
    # hard: gold {ann: 2, bob: 1}, pred {ann: 3}: tp = min(2, 3) = 2; P = 2/3, R = 2/3, F1 = 2/3
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3)
    # soft: pred deduped to {ann}: tp = min(2, 1) = 1; P = 1/1, R = 1/3, F1 = 2*(1/3)/(4/3) = .5
    assert scores["precision_soft"] == pytest.approx(1.0)
    assert scores["recall_soft"] == pytest.approx(1 / 3)
    assert scores["f1_soft"] == pytest.approx(0.5)


def test_span_scores_are_micro_averaged() -> None:
    """Counts are pooled over samples before dividing."""
    golds = [{"per": ("Ann",)}, {"per": ("Bob", "Cy", "Di")}]
    preds = [{"per": ("Ann",)}, {}]
    # pooled tp = 1, predictions = 1, gold = 4: P = 1, R = .25, F1 = 2*.25/1.25 = .4 (macro F1 would be .5)
    scores = span_scores(golds, preds, containment=False)
    assert scores["f1"] == pytest.approx(0.4)
    assert scores["f1_soft"] == pytest.approx(0.4)


def test_empty_gold_and_empty_prediction_is_perfect() -> None:
    """Nothing to find and nothing found scores 1.0 everywhere."""
    scores = span_scores([{}, {"event": ()}], [{"event": ()}, {}], containment=False)
    assert scores == dict.fromkeys(["precision", "recall", "f1", "precision_soft", "recall_soft", "f1_soft"], 1.0)


def test_no_predictions_but_gold_is_zero() -> None:
    """Predicting nothing when there is gold scores 0."""
    scores = span_scores([{"event": ("attack",)}], [{}], containment=False)
    assert set(scores.values()) == {0.0}


def test_predictions_but_no_gold_is_zero() -> None:
    """Predicting something when there is no gold scores 0."""
    scores = span_scores([{}], [{"event": ("attack",)}], containment=False)
    assert set(scores.values()) == {0.0}


# --- baselines and format errors -----------------------------------------------------------------------------------


def test_most_common_answer_majority_ties_and_placeholder() -> None:
    """Majority wins, ties go to the first seen, absent slots get the placeholder."""
    train = [{"a": ("x",), "b": ("q",)}, {"a": ("y",), "b": ("p",)}, {"a": ("y",), "b": ("p",)}, {"a": ("x",)}]
    # a: x 2, y 2 -> tie, x seen first; b: p 2, q 1 -> p although q is seen first; c: absent -> placeholder
    assert most_common_answer(train, ["a", "b", "c"], placeholder=("none",)) == {
        "a": ("x",),
        "b": ("p",),
        "c": ("none",),
    }
    # same counts, y seen first -> y
    assert most_common_answer(train[1:] + train[:1], ["a"], placeholder=())["a"] == ("y",)


def test_distinct_answers_ignores_slot_and_value_order() -> None:
    """Answers differing only in slot or value order count once."""
    preds = [
        {"a": ("1",), "b": ("2", "3")},
        {"b": ("3", "2"), "a": ("1",)},
        {"a": ("1",), "b": ("2",)},
    ]
    assert distinct_answers(preds) == 2
    assert distinct_answers([]) == 0


def test_format_error_rate() -> None:
    """The share of samples with any error kind; NaN for none."""
    # 2 of 4 samples have an error kind
    assert format_error_rate([[], ["json_error"], [], ["empty", "split_error"]]) == 0.5
    assert math.isnan(format_error_rate([]))


def test_module_imports_only_the_standard_library() -> None:
    """The metrics module is pure core: standard library imports only."""
    tree = ast.parse(Path(metrics.__file__).read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported
    assert {name.split(".")[0] for name in imported} <= set(sys.stdlib_module_names)
