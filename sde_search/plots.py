"""The report's figures: PNGs with matplotlib, interactive HTML from Optuna's plotly plots."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from sde_search.analysis import Effect, TrialRow, pareto_front  # noqa: E402

COLORS = {"full": "tab:blue", "stopped": "tab:gray", "failed": "tab:red"}


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def leaderboard(rows: Sequence[TrialRow], metric: str, path: Path) -> Path:
    """Horizontal bars of every measured trial's score (grey: stopped early), with the fixed-answer baseline."""
    ranked = sorted((r for r in rows if not math.isnan(r.value(metric)) and r.value("measured") != 0),
                    key=lambda r: r.value(metric))
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(ranked) + 1.5))
    ax.barh([f"{r.design.short()} ({r.trial_id[:4]})" for r in ranked], [r.value(metric) for r in ranked],
            color=[COLORS[r.status] for r in ranked])
    fixed = [r.value("baseline_fixed") for r in rows if not math.isnan(r.value("baseline_fixed"))]
    if fixed:
        ax.axvline(max(fixed), color="tab:red", ls="--", lw=1, label="fixed answer (no model)")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel(f"{metric} (eval set; constant answers left out); grey = stopped early")
    ax.tick_params(axis="y", labelsize=7)
    return _save(fig, path)


def pareto(rows: Sequence[TrialRow], path: Path) -> Path:
    """ID vs OOD score of full-budget trials whose both splits are measured, the Pareto front joined."""
    full = [r for r in rows if r.status == "full" and r.value("measured") != 0 and r.value("measured_ood") != 0]
    front = pareto_front(rows)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter([r.value("score") for r in full], [r.value("score_ood") for r in full], color="tab:blue", alpha=0.6)
    ax.plot([r.value("score") for r in front], [r.value("score_ood") for r in front], "o-", color="tab:orange",
            label="Pareto front")
    for r in front:
        ax.annotate(r.design.short(), (r.value("score"), r.value("score_ood")), fontsize=6)
    ax.set_xlabel("ID score")
    ax.set_ylabel("OOD score")
    ax.legend(fontsize=8)
    return _save(fig, path)


def effects(items: Sequence[Effect], path: Path) -> Path:
    """One panel per design dimension: mean score per value, error bars = standard deviation."""
    dims = list(dict.fromkeys(e.dimension for e in items))
    fig, axes = plt.subplots(1, max(1, len(dims)), figsize=(2.6 * max(1, len(dims)), 3), squeeze=False)
    for ax, dim in zip(axes[0], dims, strict=False):
        rows = [e for e in items if e.dimension == dim]
        ax.bar([e.value for e in rows], [e.mean for e in rows],
               yerr=[0 if math.isnan(e.std) else e.std for e in rows], color="tab:blue", capsize=3)
        for i, e in enumerate(rows):
            ax.annotate(f"n={e.n}", (i, e.mean), ha="center", va="bottom", fontsize=7)
        ax.set_title(dim, fontsize=9)
        ax.tick_params(axis="x", labelsize=7, rotation=30)
    return _save(fig, path)


def importance(values: Mapping[str, float], path: Path) -> Path:
    """Bars of Optuna's parameter importances."""
    names = list(values)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(names) + 1.2))
    ax.barh(names, [values[n] for n in names], color="tab:green")
    ax.set_xlabel("importance (fANOVA, full-budget trials)")
    return _save(fig, path)


def curves(rows: Sequence[TrialRow], metric: str, path: Path) -> Path:
    """Score after each report, one line per trial: where ASHA stopped which design."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        points = [(h["report"], h[metric]) for h in r.history if metric in h and "report" in h]
        if points:
            width = 1.2 if r.status == "full" else 0.8
            ax.plot(*zip(*points, strict=True), color=COLORS[r.status], alpha=0.8, lw=width)
    ax.set_xlabel("report (ASHA's time unit)")
    ax.set_ylabel(metric)
    ax.set_title("learning curves (grey: stopped by ASHA)", fontsize=9)
    return _save(fig, path)


def optuna_html(study: object, folder: Path) -> list[Path]:
    """Optuna's interactive plots (history, importances, slices) in one standalone HTML file, ``optuna.html``.

    plotly.js is embedded once (about 4.8 MB) rather than loaded from a sibling file: MLflow's artifact viewer
    shows an HTML artifact on its own, without the files beside it, and a page that loads plotly.js from a CDN
    would be blank offline. One file holding the three plots keeps the run folder the size it had with the
    shared script. Returns ``[]`` when the study is too small for any of them.
    """
    import optuna.visualization as vis

    parts = []
    for title, make in (("Optimization history", vis.plot_optimization_history),
                        ("Parameter importances", vis.plot_param_importances), ("Slices", vis.plot_slice)):
        try:
            fig = make(study)
        except (ValueError, RuntimeError, ZeroDivisionError):  # too few trials for this plot
            continue
        parts.append(f"<h2>{title}</h2>\n" + fig.to_html(full_html=False, include_plotlyjs=not parts))
    if not parts:
        return []
    stale = [folder / "plotly.min.js", *folder.glob("optuna_*.html")]  # the layout of earlier versions
    for path in stale:
        path.unlink(missing_ok=True)
    path = folder / "optuna.html"
    path.write_text('<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Optuna study</title></head>\n'
                    '<body style="font-family: sans-serif">\n' + "\n".join(parts) + "\n</body></html>\n",
                    encoding="utf-8")
    return [path]
