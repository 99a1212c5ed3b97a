"""Mimicking layers: small modules that each replace a block of teacher layers.

Every block maps ``(x (batch, frames, dim), frame_lengths (batch,))`` to ``(batch, frames, dim)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.protocol import lengths_to_mask


class MimicMLP(nn.Module):
    """Linear(D->h) -> LayerNorm(h) -> ReLU -> Linear(h->D), per frame (the redundancy paper's block)."""

    def __init__(self, dim: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _Attention(nn.Module):
    """Multi-head self-attention holding ``nn.MultiheadAttention``'s parameters under its names
    (``in_proj_weight``, ``in_proj_bias``, ``out_proj``), computed with reshapes that never fix the
    batch or the length, so a traced graph (ONNX) takes any of both."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``x (batch, frames, dim)``, ``keep (batch, frames)`` True on valid frames -> ``(batch, frames, dim)``."""
        q, k, v = (t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)  # (batch, heads, frames, d)
                   for t in F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])  # padded keys never attended
        return self.out_proj(out.transpose(1, 2).flatten(2))


class _PreLNLayer(nn.Module):
    """A pre-LN transformer encoder layer (ReLU feed-forward, no dropout), with the parameter names of
    ``nn.TransformerEncoderLayer(norm_first=True)``: checkpoints of either load into the other."""

    def __init__(self, dim: int, hidden: int, num_heads: int):
        super().__init__()
        self.self_attn = _Attention(dim, num_heads)
        self.linear1, self.linear2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x), keep)
        return x + self.linear2(F.relu(self.linear1(self.norm2(x))))


class MimicTransformer(nn.Module):
    """One pre-LN transformer encoder layer of width D (feed-forward width ``hidden``), padding masked."""

    def __init__(self, dim: int, hidden: int = 64, num_heads: int = 4):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads={num_heads}")
        self.layer = _PreLNLayer(dim, hidden, num_heads)

    def forward(self, x: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        return self.layer(x, lengths_to_mask(frame_lengths, x.shape[1]))


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
