"""PNG figures: layer x layer heatmaps with blocks outlined, pruning curves, loss curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmap(matrix, path: str | Path, title: str, blocks: list[tuple[int, int]] | None = None) -> None:
    """A ``(L+1, L+1)`` similarity matrix, hidden state 0 at the top left, blocks outlined."""
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    im = ax.imshow(m, cmap="viridis", vmin=min(0.0, float(np.nanmin(m))), vmax=1.0)
    for first, last in blocks or []:
        ax.add_patch(Rectangle((first - 0.5, first - 0.5), last - first + 1, last - first + 1,
                               fill=False, edgecolor="red", linewidth=2))
    ticks = range(m.shape[0]) if m.shape[0] <= 16 else range(0, m.shape[0], 2)
    ax.set_xticks(list(ticks))
    ax.set_yticks(list(ticks))
    ax.set_xlabel("hidden state (0 = stack input)")
    ax.set_ylabel("hidden state")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curves(series: dict[str, tuple[list, list]], path: str | Path, xlabel: str, ylabel: str, title: str,
           hline: float | None = None, logy: bool = False, integer_x: bool = True) -> None:
    """One line per named series ``{name: (xs, ys)}``; optional dashed reference line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, "o-", label=name)
    if hline is not None:
        ax.axhline(hline, color="grey", linestyle="--", linewidth=1)
    from matplotlib.ticker import MaxNLocator

    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pareto(points: dict[str, tuple[float, float]], path: str | Path, xlabel: str, ylabel: str, title: str,
           reference: str | None = None, vline: float | None = None) -> None:
    """One labelled point per model ``{name: (x, y)}``; ``reference`` (the teacher) drawn apart."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, (x, y) in points.items():
        is_ref = name == reference
        ax.scatter([x], [y], s=70 if is_ref else 40, marker="*" if is_ref else "o",
                   color="black" if is_ref else None, zorder=3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if vline is not None:
        ax.axvline(vline, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def depth_curve(depths: list[int], series: dict[str, list[float]], seconds: list[float], path: str | Path,
                title: str) -> None:
    """Accuracy series (left axis) and CPU time (right axis) against inference depth."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ys in series.items():
        ax.plot(depths, ys, "o-", label=name)
    ax.set_xlabel("depth (layer applications at inference)")
    ax.set_ylabel("accuracy")
    ax2 = ax.twinx()
    ax2.plot(depths, seconds, "s--", color="grey", label="CPU s per s of audio")
    ax2.set_ylabel("CPU s per s of audio")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def grouped_bars(groups: dict[str, dict[str, float]], path: str | Path, ylabel: str, title: str) -> None:
    """One group of bars per name ``{name: {series: value}}`` (e.g. real against synthetic), values printed."""
    plt = _pyplot()
    names = list(groups)
    series = list(dict.fromkeys(s for g in groups.values() for s in g))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(names) + 2), 4))
    for k, s in enumerate(series):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(names))]
        ys = [groups[n].get(s, float("nan")) for n in names]
        bars = ax.bar(xs, ys, width, label=s)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9, wrap=True)
    ax.grid(alpha=0.3, axis="y")
    ax.margins(y=0.12)  # room for the printed values
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
