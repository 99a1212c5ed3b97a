"""Hard-concrete gates: the L0 relaxation of Louizos, Welling and Kingma (ICLR 2018).

Each of ``n`` units (attention heads, FFN units, whole sublayers) has a gate ``z`` in ``[0, 1]``.
In training ``z`` is sampled: ``u ~ U(0, 1)``, ``s = sigmoid((log u - log(1 - u) + log_alpha) / beta)``,
stretched to ``(gamma, zeta)`` and clipped to ``[0, 1]``, so a gate is exactly 0 or 1 with
positive probability and the probability that it is non-zero,
``sigmoid(log_alpha - beta * log(-gamma / zeta))``, is differentiable in ``log_alpha``: the
expected number of open gates (the expected L0 norm) can be pushed to a budget.

:meth:`HardConcreteGate.deterministic` fixes the gates for evaluation and for slicing: by default the
``round(expected L0)`` units with the largest ``log_alpha`` keep ``clip(sigmoid(log_alpha) *
(zeta - gamma) + gamma, 0, 1)``, the others are 0.
"""

from __future__ import annotations

import math

import torch
from torch import nn

BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1  # temperature and stretch interval of the paper
EPS = 1e-6


class HardConcreteGate(nn.Module):
    """``n`` hard-concrete gates; ``log_alpha`` starts at ``init_log_alpha`` (mostly open)."""

    def __init__(self, n: int, init_log_alpha: float = 3.0):
        super().__init__()
        if n < 1:
            raise ValueError(f"a gate group needs at least one unit, got {n}")
        self.log_alpha = nn.Parameter(torch.full((n,), float(init_log_alpha)))

    @property
    def n(self) -> int:
        return self.log_alpha.numel()

    def prob_open(self) -> torch.Tensor:
        """``(n,)``: probability that each gate is non-zero (differentiable)."""
        return torch.sigmoid(self.log_alpha - BETA * math.log(-GAMMA / ZETA))

    def expected_l0(self) -> torch.Tensor:
        """Expected number of open gates (a scalar tensor)."""
        return self.prob_open().sum()

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(n,)`` gates drawn once (differentiable in ``log_alpha``); ``generator`` makes the draw reproducible."""
        u = torch.rand(self.n, generator=generator).to(self.log_alpha.device).clamp(EPS, 1 - EPS)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / BETA)
        return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    @torch.no_grad()
    def deterministic(self, keep: int | None = None) -> torch.Tensor:
        """``(n,)`` fixed gates: the ``keep`` (default ``round(expected L0)``) most open units keep their mean
        value ``clip(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1)``, the others 0."""
        keep = int(round(float(self.expected_l0()))) if keep is None else keep
        values = (torch.sigmoid(self.log_alpha) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)
        out = torch.zeros_like(values)
        if keep > 0:
            top = torch.topk(self.log_alpha, keep).indices
            out[top] = values[top]
        return out
