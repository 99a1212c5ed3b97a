"""Independent references for tests: figures computed here, from definitions, not by the code under test."""

from __future__ import annotations

import numpy as np
import torch


def utterance_means(model, batches) -> list[np.ndarray]:
    """Each hidden state's mean over the valid frames of every utterance, from the model's own forward
    pass, in float64: ``[(utterances, dim)] * (L + 1)``."""
    per_layer = None
    with torch.no_grad():
        for batch in batches:
            states, frame_lengths = model(batch["wav"], batch["lengths"])
            rows = [[s[b, :n].double().mean(0).numpy() for b, n in enumerate(frame_lengths.tolist())] for s in states]
            per_layer = rows if per_layer is None else [p + r for p, r in zip(per_layer, rows)]
    return [np.stack(r) for r in per_layer]


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al.'s linear CKA on column-centred features."""
    x, y = x - x.mean(0), y - y.mean(0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def mean_cosine(x: np.ndarray, y: np.ndarray) -> float:
    """The mean over samples of the cosine between a sample's two representations."""
    return float(np.mean(np.sum(x * y, 1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))))


def wilson95(correct: int, n: int) -> tuple[float, float]:
    """scipy's Wilson score interval (95 %)."""
    from scipy.stats import binomtest

    ci = binomtest(int(correct), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def count_of(accuracy: float, n: int) -> int:
    """The number right behind an accuracy over ``n`` items; fails unless it is a whole number."""
    k = round(accuracy * n)
    assert abs(accuracy * n - k) < 1e-6, f"accuracy {accuracy} is not a count over n = {n}"
    return k
