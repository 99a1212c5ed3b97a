"""Confidence intervals for the accuracies every report prints."""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile: a two-sided 95 % interval


def wilson(correct: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``correct / n`` (95 % for the default ``z``)."""
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_record(correct: int, n: int) -> dict:
    """``{"accuracy", "correct", "n", "ci95": [low, high]}`` for ``correct`` of ``n`` right."""
    low, high = wilson(correct, n)
    return {"accuracy": correct / n if n else 0.0, "correct": int(correct), "n": int(n), "ci95": [low, high]}


def interval_text(record: dict) -> str:
    """``"86.87 % [81.5, 90.9], n = 198"``."""
    low, high = record["ci95"]
    return f"{100 * record['accuracy']:.2f} % [{100 * low:.1f}, {100 * high:.1f}], n = {record['n']}"
