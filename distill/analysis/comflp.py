"""CoMFLP (Liu et al.): correlation-measure-based fast search for layer pruning.

Layers are 1..L, hidden state 0 is the stack input, ``corr`` is ``(L+1) x (L+1)``. A proposal
removes a set of layers; it splits into contiguous segments ``[a, b]``, each scored
``corr[a-1, b]`` (the input of its first removed layer against the output of its last); the
proposal scores the mean over its segments, higher is better. Coarse search ranks proposals
without a single forward pass; fine search builds the top ones (no retraining) and keeps the
best by a task metric.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import numpy as np

STRATEGIES = ("exhaustive", "greedy", "beam")


def segments(removed) -> list[tuple[int, int]]:
    """Contiguous runs ``[(a, b), ...]`` of a set of layer numbers."""
    runs: list[tuple[int, int]] = []
    for layer in sorted(removed):
        if runs and layer == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], layer)
        else:
            runs.append((layer, layer))
    return runs


def proposal_score(corr, removed) -> float:
    corr = np.asarray(corr)
    segs = segments(removed)
    if not segs:
        raise ValueError("a proposal removes at least one layer")
    return float(np.mean([corr[a - 1, b] for a, b in segs]))


def _check(corr, n_remove: int) -> tuple[np.ndarray, int]:
    corr = np.asarray(corr, dtype=np.float64)
    if corr.ndim != 2 or corr.shape[0] != corr.shape[1] or corr.shape[0] < 2:
        raise ValueError(f"corr must be a square (L+1) x (L+1) matrix, got shape {corr.shape}")
    num_layers = corr.shape[0] - 1
    if not 1 <= n_remove < num_layers:
        raise ValueError(f"n_remove must lie in [1, {num_layers - 1}], got {n_remove}")
    return corr, num_layers


def _ranked(scored: dict[tuple[int, ...], float], top_k: int) -> list[tuple[tuple[int, ...], float]]:
    return sorted(scored.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]


def coarse_search(corr, n_remove: int, strategy: str = "exhaustive", top_k: int = 10,
                  beam: int = 10) -> list[tuple[tuple[int, ...], float]]:
    """Top proposals removing ``n_remove`` layers, as ``[(removed_layers, score), ...]``, best first.

    ``exhaustive`` scores all C(L, n_remove) sets; ``beam`` grows sets one layer at a time keeping
    the ``beam`` best partial sets; ``greedy`` is beam search with a beam of one. Both return the
    ``top_k`` best sets among their final expansions.
    """
    corr, num_layers = _check(corr, n_remove)
    if strategy == "exhaustive":
        scored = {c: proposal_score(corr, c) for c in itertools.combinations(range(1, num_layers + 1), n_remove)}
        return _ranked(scored, top_k)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    width = 1 if strategy == "greedy" else beam
    frontier: list[tuple[int, ...]] = [()]
    for step in range(n_remove):
        scored = {}
        for partial in frontier:
            for layer in range(1, num_layers + 1):
                if layer not in partial:
                    cand = tuple(sorted(partial + (layer,)))
                    if cand not in scored:
                        scored[cand] = proposal_score(corr, cand)
        if step == n_remove - 1:
            return _ranked(scored, top_k)
        frontier = [c for c, _ in _ranked(scored, width)]
    raise AssertionError("unreachable")


def fine_search(proposals: list[tuple[tuple[int, ...], float]], build: Callable, metric: Callable,
                higher_is_better: bool = True) -> dict:
    """Build each proposal (``build(removed) -> model``), score it (``metric(model) -> float``), keep the best.

    Returns ``{"candidates": [...], "best": {...}, "seconds": ...}``.
    """
    if not proposals:
        raise ValueError("fine search needs at least one proposal")
    from tqdm import tqdm

    t0 = time.time()
    candidates = []
    for removed, corr_score in tqdm(proposals, desc="CoMFLP fine search"):
        t = time.time()
        value = float(metric(build(removed)))
        candidates.append({"removed": list(removed), "corr_score": corr_score, "metric": value,
                           "seconds": time.time() - t})
    pick = max if higher_is_better else min
    best = pick(candidates, key=lambda c: c["metric"])
    return {"candidates": candidates, "best": best, "seconds": time.time() - t0}
