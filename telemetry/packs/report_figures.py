"""The figures of `esper report`, drawn with matplotlib (Agg) into PNG bytes.

Each function takes plain rows (lists of dicts from DuckDB) and returns the PNG, so the figures
are testable apart from the page. matplotlib is imported when a figure is drawn, never at import.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

MARKERS = {"GERMINATE": ("^", "#2ca02c"), "ADVANCE": ("o", "#1f77b4"), "FOSSILIZE": ("*", "#9467bd"),
           "CULL": ("X", "#d62728")}
MAX_EPISODES_PER_CAUSE = 12


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


def action_shares(rows: Sequence[dict[str, Any]], actions: Sequence[str]) -> bytes:
    """Stacked horizontal bars: the share of each action among a cause's decisions."""
    plt = _pyplot()
    causes = sorted({r["cause"] for r in rows})
    counts = {(r["cause"], r["action"]): r["n"] for r in rows}
    totals = np.array([sum(counts.get((c, a), 0) for a in actions) for c in causes], dtype=float)
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(causes) + 1.6))
    left = np.zeros(len(causes))
    colours = plt.get_cmap("tab10")
    for i, action in enumerate(actions):
        share = np.array([counts.get((c, action), 0) for c in causes]) / np.maximum(totals, 1) * 100
        if share.any():
            ax.barh(causes, share, left=left, label=action, color=colours(i % 10))
            left += share
    ax.set_xlabel("share of the cause's decisions (%)")
    ax.set_xlim(0, 100)
    ax.invert_yaxis()
    ax.legend(ncol=4, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    return _png(fig)


def accuracy_curves(rows: Sequence[dict[str, Any]]) -> bytes:
    """Validation accuracy over epochs, one thin line per episode, one panel per cause; interventions
    marked by kind (germinate, advance, fossilize, cull). At most MAX_EPISODES_PER_CAUSE per panel."""
    plt = _pyplot()
    episodes: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(dict)
    for r in rows:
        by_cause = episodes[r["cause"]]
        if r["episode_id"] in by_cause or len(by_cause) < MAX_EPISODES_PER_CAUSE:
            by_cause.setdefault(r["episode_id"], []).append(r)
    causes = sorted(episodes)
    cols = min(3, len(causes))
    rows_n = -(-len(causes) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.0 * rows_n), squeeze=False, sharey=True)
    for ax, cause in zip(axes.flat, causes, strict=False):
        for steps in episodes[cause].values():
            x = [s["epoch"] for s in steps]
            ax.plot(x, [s["val_accuracy"] for s in steps], lw=0.8, alpha=0.6, color="#555555")
            for s in steps:
                kind = next((k for k in MARKERS if s["action"] and s["action"].startswith(k)), None)
                if kind is not None:
                    marker, colour = MARKERS[kind]
                    ax.scatter([s["epoch"]], [s["val_accuracy"]], marker=marker, color=colour, s=30, zorder=3)
        n = len(episodes[cause])
        ax.set_title(f"{cause} ({n} episode{'' if n == 1 else 's'})", fontsize=10)
        ax.set_xlabel("epoch")
    for ax in axes[:, 0]:
        ax.set_ylabel("validation accuracy (%)")
    for ax in list(axes.flat)[len(causes):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], ls="", marker=m, color=c, label=k.lower()) for k, (m, c) in MARKERS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=4, bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return _png(fig)


def heat_map(values: np.ndarray, rows: Sequence[str], cols: Sequence[Any], label: str, cmap: str,
             vmin: float | None = None, vmax: float | None = None, annotate: bool = False,
             xlabel: str = "", ylabel: str = "") -> bytes:
    """A labelled heat map of `values` [rows, cols]; NaN cells stay blank."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.38 * len(cols) + 2.5), 0.42 * len(rows) + 1.6))
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_yticks(range(len(rows)), labels=rows, fontsize=8)
    every = max(1, len(cols) // 40)  # at most about 40 labels on the x axis
    ticks = list(range(0, len(cols), every))
    ax.set_xticks(ticks, labels=[str(cols[i]) for i in ticks], fontsize=8,
                  rotation=90 if any(len(str(c)) > 3 for c in cols) else 0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if annotate:
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(j, i, f"{v:+.1f}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, label=label)
    return _png(fig)


def stacked_counts(groups: Sequence[str], kinds: Sequence[str], counts: dict[tuple[str, str], int],
                   xlabel: str) -> bytes:
    """Stacked horizontal bars of counts per group and kind (seed outcomes per blueprint)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(groups) + 1.6))
    left = np.zeros(len(groups))
    colours = plt.get_cmap("Set2")
    for i, kind in enumerate(kinds):
        n = np.array([counts.get((g, kind), 0) for g in groups], dtype=float)
        ax.barh(groups, n, left=left, label=kind, color=colours(i % 8))
        left += n
    ax.set_xlabel(xlabel)
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)
