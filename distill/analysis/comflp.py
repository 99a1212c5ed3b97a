"""CoMFLP (Liu et al.): correlation-measure-based fast search for layer pruning.

Layers are 1..L, hidden state 0 is the stack input, ``corr`` is ``(L+1) x (L+1)``. A proposal
removes a set of layers; it splits into contiguous segments ``[a, b]``, each scored
``corr[a-1, b]`` (the input of its first removed layer against the output of its last); the
proposal scores the mean over its segments, higher is better. Coarse search ranks proposals
without a single forward pass; fine search builds the top ones (no retraining) and keeps the
best by a task metric.

Coarse search strategies: ``exact`` (the default) finds the true top-K over all C(L, k)
proposals without enumerating them (:func:`exact_top_k`, dynamic programming, well under a
second at L = 32, k = 16); ``exhaustive`` enumerates them (small stacks, the reference);
``beam`` and ``greedy`` are the heuristics of the CoMFLP paper, which can miss the best.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import numpy as np

STRATEGIES = ("exact", "exhaustive", "greedy", "beam")


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


def exact_top_k(corr, n_remove: int, top_k: int = 10) -> list[tuple[tuple[int, ...], float]]:
    """The ``top_k`` best proposals removing ``n_remove`` layers, exactly, as :func:`coarse_search` returns them.

    A proposal's score is (sum over its segments of ``corr[a-1, b]``) / (number of segments). For
    a fixed number of segments the order by mean is the order by sum, so the top-K overall lies
    among the top-K sums for each segment count. ``best[j, r, s]`` holds the ``top_k`` largest
    partial sums over layers ``1..j-1`` decided with layer ``j`` kept (``j = L+1``: past the last
    layer), ``r`` layers removed in ``s`` segments. Layer ``j`` kept follows either layer ``j-1``
    kept or a removed segment ``[i+1, j-1]`` after a kept layer ``i`` (adding ``corr[i, j-1]``).
    Every proposal has one such path, so the K entries of a state are K distinct proposals.
    Cost O(L^2 k^2 K) in vectorised steps.
    """
    corr, L = _check(corr, n_remove)
    k, K = n_remove, top_k
    if K < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    best = np.full((L + 2, k + 1, k + 1, K), -np.inf)
    src = np.zeros((L + 2, k + 1, k + 1, K), dtype=np.int64)   # the kept layer i it came from
    rank = np.zeros((L + 2, k + 1, k + 1, K), dtype=np.int64)  # the entry of (i, ...) it extends
    best[0, 0, 0, 0] = 0.0
    for j in range(1, L + 2):
        cands, cand_src, cand_rank = [best[j - 1]], [np.full((k + 1, k + 1, K), j - 1)], [np.broadcast_to(
            np.arange(K), (k + 1, k + 1, K))]
        for i in range(max(0, j - 1 - k), j - 1):  # removed segment [i+1, j-1] of m layers
            m = j - 1 - i
            shifted = np.full((k + 1, k + 1, K), -np.inf)
            shifted[m:, 1:] = best[i, : k + 1 - m, :k] + corr[i, j - 1]
            cands.append(shifted)
            cand_src.append(np.full((k + 1, k + 1, K), i))
            cand_rank.append(np.broadcast_to(np.arange(K), (k + 1, k + 1, K)))
        values = np.concatenate(cands, axis=-1)
        order = np.argsort(-values, axis=-1, kind="stable")[..., :K]
        best[j] = np.take_along_axis(values, order, -1)
        src[j] = np.take_along_axis(np.concatenate(cand_src, -1), order, -1)
        rank[j] = np.take_along_axis(np.concatenate(cand_rank, -1), order, -1)

    def removed_set(s: int, entry: int) -> tuple[int, ...]:
        out, j, r = [], L + 1, k
        while j > 0:
            i, entry = int(src[j, r, s, entry]), int(rank[j, r, s, entry])
            if i < j - 1:  # layers i+1 .. j-1 removed
                out.extend(range(i + 1, j))
                r, s = r - (j - 1 - i), s - 1
            j = i
        return tuple(sorted(out))

    found = {}
    for s in range(1, k + 1):
        for entry in range(K):
            if np.isfinite(best[L + 1, k, s, entry]):
                removed = removed_set(s, entry)
                found[removed] = proposal_score(corr, removed)  # as brute force scores it
    return _ranked(found, top_k)


def coarse_search(corr, n_remove: int, strategy: str = "exact", top_k: int = 10,
                  beam: int = 10) -> list[tuple[tuple[int, ...], float]]:
    """Top proposals removing ``n_remove`` layers, as ``[(removed_layers, score), ...]``, best first.

    ``exact``: the true top-K without enumerating (:func:`exact_top_k`);
    ``exhaustive`` scores all C(L, n_remove) sets; ``beam`` grows sets one layer at a time keeping
    the ``beam`` best partial sets; ``greedy`` is beam search with a beam of one. Both return the
    ``top_k`` best sets among their final expansions.
    """
    corr, num_layers = _check(corr, n_remove)
    if strategy == "exact":
        return exact_top_k(corr, n_remove, top_k)
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
