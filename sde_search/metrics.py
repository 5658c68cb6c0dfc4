"""Scores for parsed answers: weighted kappa, accuracy, micro P/R/F1 (hard and soft) and trivial baselines.

Every function takes already-parsed answers (see ``render``) and is format-independent, so designs with
different output formats are scored alike. An answer maps each slot to its values: one label per slot for
aspect sentiment, entity names or trigger words per type for entities and events.

Pure core: never imports torch, Ray or MLflow (standard library only).
"""

from __future__ import annotations

import difflib
import math
from collections import Counter
from collections.abc import Mapping, Sequence

Answer = Mapping[str, tuple[str, ...]]
"""Slot -> values; the shape ``tasks`` parses answers into."""

PAPER_LABELS = ("positive", "neutral", "negative", "unmentioned")
_PAPER_WEIGHTS = (  # rows = gold, columns = prediction, both in PAPER_LABELS order (asymmetric)
    (1.0, 0.5, 0.0, 0.5),
    (0.67, 1.0, 0.67, 0.67),
    (0.0, 0.5, 1.0, 0.5),
    (0.5, 0.67, 0.5, 1.0),
)
_SNAP_RATIO = 0.5


def kappa_weights(labels: Sequence[str]) -> list[list[float]] | None:
    """Returns the paper's kappa weights in ``labels`` order, or None for another label set.

    Args:
        labels: The label order the weight matrix must follow (rows = gold, columns = prediction).

    Returns:
        The 4x4 asymmetric matrix of Guo et al. reordered to ``labels`` when ``labels`` is a permutation of
        :data:`PAPER_LABELS`, else None (callers then fall back to plain Cohen's kappa).
    """
    if len(labels) != len(PAPER_LABELS) or set(labels) != set(PAPER_LABELS):
        return None
    index = [PAPER_LABELS.index(label) for label in labels]
    return [[_PAPER_WEIGHTS[i][j] for j in index] for i in index]


def weighted_kappa(
    pairs: Sequence[tuple[str, str]], labels: Sequence[str], weights: list[list[float]] | None = None
) -> float:
    """Weighted Cohen's kappa of (gold, prediction) pairs.

    With n_ij the counts, r_i the gold totals, c_j the prediction totals and N pairs:
    p_o = sum w_ij n_ij / N, p_e = sum w_ij r_i c_j / N^2, kappa = (p_o - p_e) / (1 - p_e).
    A prediction outside ``labels`` lands in an extra column whose weight is 0 against every gold label,
    so it always counts as disagreement (and lowers p_e, since it takes a share of N).

    Args:
        pairs: (gold, prediction) label pairs.
        labels: The label set; every gold label must be in it.
        weights: Agreement weights, rows = gold and columns = prediction in ``labels`` order; None means the
            identity matrix (plain Cohen's kappa).

    Returns:
        Kappa; NaN when there are no pairs; 0.0 when 1 - p_e is 0 (chance agreement is already perfect,
        e.g. every gold and every prediction is the same label), where kappa is undefined.

    Raises:
        ValueError: If a gold label is not in ``labels`` or ``weights`` is not len(labels) x len(labels).
    """
    size = len(labels)
    w = weights if weights is not None else [[float(i == j) for j in range(size)] for i in range(size)]
    if len(w) != size or any(len(row) != size for row in w):
        raise ValueError(f"weights must be {size}x{size} to match labels={list(labels)}; got {len(w)} rows")
    if not pairs:
        return math.nan
    index = {label: i for i, label in enumerate(labels)}
    counts = [[0] * (size + 1) for _ in range(size)]  # last column: predictions outside labels
    for gold, pred in pairs:
        if gold not in index:
            raise ValueError(f"gold label {gold=} is not in labels={list(labels)}; add it to labels")
        counts[index[gold]][index.get(pred, size)] += 1
    total = len(pairs)
    rows = [sum(row) for row in counts]
    cols = [sum(row[j] for row in counts) for j in range(size)]
    p_o = sum(w[i][j] * counts[i][j] for i in range(size) for j in range(size)) / total
    p_e = sum(w[i][j] * rows[i] * cols[j] for i in range(size) for j in range(size)) / total**2
    if math.isclose(1.0 - p_e, 0.0, abs_tol=1e-12):
        return 0.0
    return (p_o - p_e) / (1.0 - p_e)


def _check_lengths(golds: Sequence[Answer], preds: Sequence[Answer]) -> None:
    if len(golds) != len(preds):
        raise ValueError(f"golds and preds differ in length: {len(golds)=} {len(preds)=}; score aligned lists")


def _label(answer: Answer, slot: str, unmentioned: str) -> str:
    values = answer.get(slot, ())
    return values[0] if values else unmentioned


def aspect_scores(
    golds: Sequence[Answer], preds: Sequence[Answer], *, slots: Sequence[str], labels: Sequence[str], unmentioned: str,
    weights: Sequence[Sequence[float]] | None = None, sample_slots: Sequence[Sequence[str]] | None = None,
) -> dict[str, float]:
    """Accuracy and pooled weighted kappa for aspect sentiment.

    Every (sample, slot) pair is pooled into one confusion; a slot missing (or empty) in an answer counts as
    ``unmentioned``. Kappa uses ``weights`` when given, else :func:`kappa_weights` for the label order
    ``list(labels) + [unmentioned]`` (plain kappa for a label set other than the paper's four).

    Args:
        golds: Gold answers, one label per slot.
        preds: Predicted answers, aligned with ``golds``.
        slots: The slots (aspects) scored.
        labels: The sentiment labels, without ``unmentioned``.
        unmentioned: The label of an aspect the text does not mention.
        weights: Agreement weights in the order ``list(labels) + [unmentioned]`` (rows = gold), or None.
        sample_slots: Per sample, the slots it is scored on instead of ``slots`` (records that list their own
            aspects); aligned with ``golds``.

    Returns:
        ``{"accuracy": correct pairs / (samples x slots), "kappa": weighted kappa}``; both NaN when nothing
        is scored.
    """
    _check_lengths(golds, preds)
    per_sample = sample_slots if sample_slots is not None else [slots] * len(golds)
    pairs = [
        (_label(g, s, unmentioned), _label(p, s, unmentioned))
        for g, p, own in zip(golds, preds, per_sample, strict=True) for s in own
    ]
    order = [*labels, unmentioned]
    accuracy = sum(g == p for g, p in pairs) / len(pairs) if pairs else math.nan
    w = [list(row) for row in weights] if weights is not None else kappa_weights(order)
    return {"accuracy": accuracy, "kappa": weighted_kappa(pairs, order, w)}


def _spans(answer: Answer) -> list[tuple[str, str]]:
    return [(kind.strip().lower(), name.strip().lower()) for kind, names in answer.items() for name in names]


def _snap(name: str, gold_names: Sequence[str], containment: bool) -> str:
    """Returns the most similar gold name (first on ties) if it is close enough, else ``name`` itself."""
    best, best_ratio = name, _SNAP_RATIO
    for gold in gold_names:
        ratio = difflib.SequenceMatcher(None, name, gold).ratio()
        if ratio > best_ratio and (not containment or name in gold or gold in name):
            best, best_ratio = gold, ratio
    return best


def _prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    """Micro P/R/F1; nothing gold and nothing predicted is perfect, any other zero denominator gives 0."""
    if n_pred == 0 and n_gold == 0:
        return 1.0, 1.0, 1.0
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def span_scores(golds: Sequence[Answer], preds: Sequence[Answer], *, containment: bool) -> dict[str, float]:
    """Micro precision, recall and F1 over (type, name) pairs, hard and soft.

    Types and names are lowercased and stripped. Hard: per sample, tp = sum over distinct pairs of
    min(gold count, predicted count). Soft: predictions are de-duplicated per sample (gold is not), each
    predicted name is snapped to the most similar gold name of the same sample (any type; first on ties)
    when the difflib ratio is > 0.5 and, if ``containment``, one name contains the other; tp is then counted
    as for hard. Entities use ``containment=True``, events ``False``.

    Zero divisions: no gold and no predicted pairs at all gives P = R = F1 = 1.0; otherwise an empty
    denominator gives 0.0 (no predictions: P = R = F1 = 0; predictions but no gold: P = R = F1 = 0).

    Args:
        golds: Gold answers, type -> names.
        preds: Predicted answers, aligned with ``golds``.
        containment: Whether soft snapping also requires one name to contain the other.

    Returns:
        ``precision, recall, f1, precision_soft, recall_soft, f1_soft``.
    """
    _check_lengths(golds, preds)
    tp = tp_soft = n_gold = n_pred = n_pred_soft = 0
    for gold_answer, pred_answer in zip(golds, preds, strict=True):
        gold, pred = Counter(_spans(gold_answer)), Counter(_spans(pred_answer))
        gold_names = list(dict.fromkeys(name for _, name in gold))
        snapped = Counter((kind, _snap(name, gold_names, containment)) for kind, name in pred)  # pred keys: deduped
        tp += sum((gold & pred).values())
        tp_soft += sum((gold & snapped).values())
        n_gold += gold.total()
        n_pred += pred.total()
        n_pred_soft += len(pred)
    scores = dict(zip(("precision", "recall", "f1"), _prf(tp, n_pred, n_gold), strict=True))
    soft = _prf(tp_soft, n_pred_soft, n_gold)
    scores.update(zip(("precision_soft", "recall_soft", "f1_soft"), soft, strict=True))
    return scores


def exact_match(golds: Sequence[Answer], preds: Sequence[Answer]) -> float:
    """Share of records whose predicted (type, name) set equals the gold one (lowercased, stripped).

    The accuracy of span tasks: the empty answer scores the share of records with nothing to find.

    Args:
        golds: Gold answers, type -> names.
        preds: Predicted answers, aligned with ``golds``.

    Returns:
        The share in [0, 1]; NaN when there are no records.
    """
    _check_lengths(golds, preds)
    if not golds:
        return math.nan
    return sum(set(_spans(g)) == set(_spans(p)) for g, p in zip(golds, preds, strict=True)) / len(golds)


def same_answer(answer: Answer, golds: Sequence[Answer]) -> list[Answer]:
    """One answer given to every record, cut to the slots each record is scored on (its gold's keys).

    A trivial answer must not be charged for slots a record did not ask for (records with their own slot list).
    """
    return [{s: v for s, v in answer.items() if s in g} for g in golds]


def most_common_answer(train: Sequence[Answer], slots: Sequence[str], *, placeholder: tuple[str, ...]) -> Answer:
    """The "fixed answer" baseline: each slot's most common value tuple in the training answers.

    Args:
        train: Training answers.
        slots: The slots of the returned answer.
        placeholder: The value of a slot that no training answer has.

    Returns:
        Slot -> most common value tuple (ties: the one seen first), or ``placeholder``.
    """
    fixed: dict[str, tuple[str, ...]] = {}
    for slot in slots:
        counts = Counter(tuple(answer[slot]) for answer in train if slot in answer)
        fixed[slot] = counts.most_common(1)[0][0] if counts else placeholder
    return fixed


def distinct_answers(preds: Sequence[Answer]) -> int:
    """Counts distinct predictions, ignoring slot order and the order of values within a slot.

    Args:
        preds: Predicted answers.

    Returns:
        The number of distinct answers (a slot with no values still differs from an absent slot).
    """
    return len({frozenset((slot, tuple(sorted(values))) for slot, values in answer.items()) for answer in preds})


def format_error_rate(errors: Sequence[Sequence[str]]) -> float:
    """Share of samples whose parse reported at least one error kind.

    Args:
        errors: Per sample, the error kinds its parse reported (empty when it parsed cleanly).

    Returns:
        The share in [0, 1]; NaN when there are no samples.
    """
    return sum(bool(kinds) for kinds in errors) / len(errors) if errors else math.nan


def repair_rate(flags: Sequence[bool]) -> float:
    """Share of samples whose parse needed a repair (``Parsed.repaired``).

    A repair is a key or label read leniently (another case, a synonym, a slot keyword, ``+1`` for ``1``) or a
    unit rescued from broken syntax; see README "How generations are parsed".

    Args:
        flags: Per sample, whether its parse repaired something.

    Returns:
        The share in [0, 1]; NaN when there are no samples.
    """
    return sum(map(bool, flags)) / len(flags) if flags else math.nan
