"""Mimicking layers: small modules that each replace a block of teacher layers.

Every block maps ``(x (batch, frames, dim), frame_lengths (batch,))`` to ``(batch, frames, dim)``.
"""

from __future__ import annotations

import torch
from torch import nn

from distill.core.protocol import lengths_to_mask


class MimicMLP(nn.Module):
    """Linear(D->h) -> LayerNorm(h) -> ReLU -> Linear(h->D), per frame (the redundancy paper's block)."""

    def __init__(self, dim: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MimicTransformer(nn.Module):
    """One pre-LN transformer encoder layer of width D (feed-forward width ``hidden``), padding masked."""

    def __init__(self, dim: int, hidden: int = 64, num_heads: int = 4):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads={num_heads}")
        self.layer = nn.TransformerEncoderLayer(dim, num_heads, dim_feedforward=hidden, dropout=0.0,
                                                batch_first=True, norm_first=True)

    def forward(self, x: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        pad = ~lengths_to_mask(frame_lengths, x.shape[1])
        return self.layer(x, src_key_padding_mask=pad)


BLOCK_TYPES = {"mlp": MimicMLP, "transformer": MimicTransformer}


def build_block(kind: str, dim: int, hidden: int, num_heads: int = 4) -> nn.Module:
    if kind == "mlp":
        return MimicMLP(dim, hidden)
    if kind == "transformer":
        return MimicTransformer(dim, hidden, num_heads)
    raise ValueError(f"unknown mimic block type {kind!r}; known: {sorted(BLOCK_TYPES)}")


class MimicStack(nn.Module):
    """Mimicking blocks applied in sequence; returns ``[x, block1(x), block2(block1(x)), ...]``.

    With ``residual`` each block adds to its input instead of replacing it.
    """

    def __init__(self, blocks: list[nn.Module], residual: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(blocks)
        self.residual = residual

    def forward(self, x: torch.Tensor, frame_lengths: torch.Tensor) -> list[torch.Tensor]:
        keep = lengths_to_mask(frame_lengths, x.shape[1]).unsqueeze(-1).to(x.dtype)
        states = [x]
        for block in self.layers:
            y = block(x, frame_lengths)
            x = (x + y if self.residual else y) * keep
            states.append(x)
        return states
