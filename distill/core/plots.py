"""PNG figures: layer x layer heatmaps with blocks outlined, pruning curves, loss curves, size
against accuracy with intervals and the frontier.

Every figure is titled with model names (:func:`distill.core.names.model_title`), never a path,
and fits its frame: a long title is wrapped, then shrunk; point labels that would leave the
picture are turned inward and labels that would cover each other are moved apart. Each function
returns its (closed) ``Figure``, so tests can read what was drawn.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from distill.core.pareto import non_dominated

DPI = 110


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def set_title(ax, title: str, fontsize: float = 11.0) -> None:
    """``title`` wrapped to the figure's width (about 0.55 em a character)."""
    width_pt = ax.figure.get_figwidth() * 72
    chars = max(20, int(width_pt / (0.55 * fontsize)))
    ax.set_title("\n".join(textwrap.wrap(title, chars)) or title, fontsize=fontsize)


def _inside(bbox, frame, pad: float = 0.5) -> bool:
    return bbox.x0 >= frame.x0 - pad and bbox.y0 >= frame.y0 - pad and bbox.x1 <= frame.x1 + pad \
        and bbox.y1 <= frame.y1 + pad


def _keep_inside(fig) -> None:
    """Titles shrink and point labels turn inward until every text lies inside the picture."""
    renderer = fig.canvas.get_renderer()
    frame = fig.bbox
    for ax in fig.axes:
        for ann in ax.texts:  # annotations: flip to the other side of their point when they leave the frame
            bbox = ann.get_window_extent(renderer)
            if bbox.x1 > frame.x1 and hasattr(ann, "xyann"):
                dx, dy = ann.xyann
                ann.xyann = (-abs(dx), dy)
                ann.set_horizontalalignment("right")
            if bbox.y1 > frame.y1 and hasattr(ann, "xyann"):
                ann.xyann = (ann.xyann[0], -abs(ann.xyann[1]) - bbox.height * 72 / fig.dpi)
        title = ax.title
        while title.get_text() and title.get_fontsize() > 6 and not _inside(title.get_window_extent(renderer), frame):
            title.set_fontsize(title.get_fontsize() - 0.5)
            fig.tight_layout()


def _spread_labels(fig, ax) -> None:
    """Move point labels (offset annotations) apart vertically where they would overlap."""
    renderer = fig.canvas.get_renderer()
    placed = []
    for ann in sorted((a for a in ax.texts if hasattr(a, "xyann")), key=lambda a: a.xy[1]):
        for _ in range(12):
            box = ann.get_window_extent(renderer).expanded(1.0, 1.1)
            clash = next((b for b in placed if box.overlaps(b)), None)
            if clash is None:
                break
            dx, dy = ann.xyann
            ann.xyann = (dx, dy + (clash.y1 - box.y0 + 1) * 72 / fig.dpi)
        placed.append(ann.get_window_extent(renderer))


def save_figure(fig, path: str | Path, dpi: int = DPI):
    plt = _pyplot()
    fig.tight_layout()
    fig.canvas.draw()
    _keep_inside(fig)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return fig


def heatmap(matrix, path: str | Path, title: str, blocks: list[tuple[int, int]] | None = None):
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
    set_title(ax, title, 10)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_figure(fig, path)


def curves(series: dict[str, tuple[list, list]], path: str | Path, xlabel: str, ylabel: str, title: str,
           hline: float | None = None, logy: bool = False, integer_x: bool = True):
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
    set_title(ax, title)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def pareto(points: dict[str, tuple[float, float]], path: str | Path, xlabel: str, ylabel: str, title: str,
           reference: str | None = None, vline: float | None = None, vline_label: str | None = None,
           intervals: dict[str, tuple[float, float] | None] | None = None, higher_is_better: bool = True):
    """One labelled point per model ``{name: (size, score)}``, each with its 95 % interval
    ``intervals[name] = (low, high)`` as an error bar when given, and the frontier of non-dominated
    models (:func:`distill.core.pareto.non_dominated`) as a step line; ``reference`` (the teacher)
    drawn as a star; ``vline`` a dashed size mark (e.g. a third of the teacher)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.6, 4.6))
    intervals = intervals or {}
    front = non_dominated(points, higher_is_better)
    if len(front) > 1:
        fx, fy = zip(*(points[n] for n in front))
        ax.step(fx, fy, where="post", color="tab:green", alpha=0.6, linewidth=1.5, zorder=1,
                label=f"frontier: {len(front)} non-dominated")
    for k, (name, (x, y)) in enumerate(points.items()):
        is_ref = name == reference
        color = "black" if is_ref else f"C{k % 10}"
        ci = intervals.get(name)
        if ci is not None:
            lo, hi = ci
            ax.errorbar([x], [y], yerr=[[max(0.0, y - lo)], [max(0.0, hi - y)]], fmt="*" if is_ref else "o",
                        markersize=10 if is_ref else 6, color=color, ecolor=color, elinewidth=1, capsize=3, zorder=3)
        else:
            ax.plot([x], [y], "*" if is_ref else "o", markersize=10 if is_ref else 6, color=color, zorder=3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8,
                    fontweight="bold" if name in front else "normal").set_in_layout(False)  # kept inside below
    if vline is not None:
        ax.axvline(vline, color="grey", linestyle="--", linewidth=1, label=vline_label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    set_title(ax, title)
    ax.grid(alpha=0.3)
    ax.margins(x=0.12, y=0.08)
    if len(front) > 1 or vline_label:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.canvas.draw()
    _spread_labels(fig, ax)
    return save_figure(fig, path)


def depth_curve(depths: list[int], series: dict[str, list[float]], seconds: list[float], path: str | Path,
                title: str):
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
    set_title(ax, title)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def grouped_bars(groups: dict[str, dict[str, float]], path: str | Path, ylabel: str, title: str):
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
    set_title(ax, title, 9)
    ax.grid(alpha=0.3, axis="y")
    ax.margins(y=0.12)  # room for the printed values
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)
