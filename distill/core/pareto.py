"""The frontier of non-dominated models: no other model is at most as large and at least as good.

Used by the size-against-accuracy plots (the pipeline's KS plot, the SUPERB suite's per-task
plots) and listed in their JSON, so a reader sees which models are worth their size.
"""

from __future__ import annotations


def dominates(a: tuple[float, float], b: tuple[float, float], higher_is_better: bool = True) -> bool:
    """``a = (size, score)`` is no larger and no worse than ``b``, and strictly better in one."""
    sa, va = a
    sb, vb = b
    if not higher_is_better:
        va, vb = -va, -vb
    return sa <= sb and va >= vb and (sa < sb or va > vb)


def non_dominated(points: dict[str, tuple[float, float]], higher_is_better: bool = True) -> list[str]:
    """Names of the frontier ``{name: (size, score)}``, smallest first (ties in both: all kept)."""
    front = [n for n, p in points.items()
             if not any(dominates(q, p, higher_is_better) for m, q in points.items() if m != n)]
    return sorted(front, key=lambda n: (points[n][0], points[n][1] if higher_is_better else -points[n][1]))
