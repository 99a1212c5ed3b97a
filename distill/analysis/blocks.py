"""Contiguous blocks of mutually similar layers in a layer x layer similarity matrix.

A partition of hidden states 0..L into contiguous blocks is scored like modularity with a
constant null model: ``Q = sum over blocks of sum over pairs i != j inside the block of
(S[i, j] - m)``, where ``m`` is the mean off-diagonal similarity. Grouping pairs more similar
than average raises Q, grouping less similar pairs lowers it, so the best partition over any
number of blocks is well defined: that is the automatic choice. With ``n_blocks`` given, the best
partition with exactly that many blocks is returned. Both are exact (dynamic programming,
O(L^3)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class BlockStructure:
    blocks: list[tuple[int, int]]  # inclusive (first, last) hidden-state indices
    score: float

    @property
    def boundaries(self) -> list[int]:
        """Last hidden-state index of every block but the final one."""
        return [last for _, last in self.blocks[:-1]]

    def to_dict(self) -> dict:
        return {"blocks": [list(b) for b in self.blocks], "boundaries": self.boundaries, "score": self.score}


def _segment_weights(sim: np.ndarray) -> np.ndarray:
    n = sim.shape[0]
    off = ~np.eye(n, dtype=bool)
    m = float(sim[off].mean()) if n > 1 else 0.0
    centred = np.where(off, sim - m, 0.0)
    # w[i, j] = sum of centred[a, b] for i <= a, b <= j  (2-D prefix sums)
    p = np.zeros((n + 1, n + 1))
    p[1:, 1:] = centred.cumsum(0).cumsum(1)
    w = np.full((n, n), -np.inf)
    for i in range(n):
        for j in range(i, n):
            w[i, j] = p[j + 1, j + 1] - p[i, j + 1] - p[j + 1, i] + p[i, i]
    return w


def find_blocks(sim, n_blocks: int | None = None) -> BlockStructure:
    """Best contiguous partition of a symmetric ``(L+1, L+1)`` similarity matrix."""
    sim = np.asarray(sim, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"expected a square similarity matrix, got shape {sim.shape}")
    if np.isnan(sim).any():
        raise ValueError("similarity matrix holds NaN")
    n = sim.shape[0]
    if n_blocks is not None and not 1 <= n_blocks <= n:
        raise ValueError(f"n_blocks must lie in [1, {n}], got {n_blocks}")
    w = _segment_weights(sim)
    k_max = n_blocks or n
    # best[k][j]: best score of splitting states 0..j-1 into k blocks
    best = np.full((k_max + 1, n + 1), -np.inf)
    back = np.zeros((k_max + 1, n + 1), dtype=int)
    best[0][0] = 0.0
    for k in range(1, k_max + 1):
        for j in range(1, n + 1):
            cands = best[k - 1][:j] + w[np.arange(j), j - 1]
            i = int(np.argmax(cands))
            best[k][j], back[k][j] = cands[i], i
    if n_blocks is None:  # the fewest blocks among (numerically) equal best scores
        scores = best[1:, n]
        k = int(np.flatnonzero(scores >= scores.max() - 1e-9 * (1.0 + abs(scores.max())))[0]) + 1
    else:
        k = n_blocks
    blocks, j = [], n
    for kk in range(k, 0, -1):
        i = back[kk][j]
        blocks.append((int(i), int(j - 1)))
        j = i
    return BlockStructure(blocks[::-1], float(best[k][n]))


def boundary_targets(structure: BlockStructure, num_layers: int) -> list[int]:
    """Teacher layers a mimic student should regress: each block boundary (>= 1), then the last layer."""
    targets = sorted({b for b in structure.boundaries if 1 <= b < num_layers} | {num_layers})
    return targets
