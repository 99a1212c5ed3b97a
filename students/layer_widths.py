"""Width surgery on Hugging Face transformer layers: attention heads and FFN units, per layer.

A layer of every supported architecture has the same prunable parts, under different names
(:func:`layer_parts`): an attention module with ``q_proj`` / ``k_proj`` / ``v_proj`` / ``out_proj``
(``self_attn`` in Whisper, ``attention`` in the wav2vec2 family) and a feed-forward pair
(``fc1`` / ``fc2`` in Whisper, ``feed_forward.intermediate_dense`` / ``output_dense`` otherwise).
Removing head ``h`` removes rows ``h * head_dim ... (h + 1) * head_dim`` of the three input
projections and the same columns of ``out_proj``; removing FFN unit ``j`` removes row ``j`` of
the first linear map and column ``j`` of the second. Hugging Face's attention reshapes with
``-1`` heads, so a layer runs with any number of heads once ``num_heads`` is set.

WavLM runs its attention through ``torch.nn.functional.multi_head_attention_forward``, which
ties the head width to the model width: its heads (and whole attention sublayers) cannot be
removed; its FFN units can.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

HEAD_PRUNABLE = ("whisper", "hubert", "wav2vec2", "data2vec-audio")


class ZeroHeadAttention(nn.Module):
    """An attention sublayer left without heads: its output is the (scaled) ``out_proj`` bias.

    ``outputs``: how many values the layer unpacks from its attention (Whisper 2, wav2vec2 family 3).
    """

    def __init__(self, dim: int, outputs: int = 3):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(dim))
        self.outputs = outputs
        self.num_heads = 0

    def forward(self, *args, **kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        out = self.bias.to(hidden.dtype).expand(hidden.shape).clone()
        return (out,) + (None,) * (self.outputs - 1)


@dataclass
class LayerParts:
    """The prunable modules of one transformer layer (``attention`` may be a :class:`ZeroHeadAttention`)."""

    attention_name: str
    attention: nn.Module
    ffn_in: nn.Linear
    ffn_out: nn.Linear
    ffn_owner: nn.Module
    ffn_names: tuple[str, str]

    @property
    def heads(self) -> int:
        return int(self.attention.num_heads)

    @property
    def head_dim(self) -> int:
        return int(self.attention.head_dim)

    @property
    def ffn(self) -> int:
        return int(self.ffn_in.out_features)


def layer_parts(layer: nn.Module, arch: str) -> LayerParts:
    """The prunable parts of a transformer ``layer`` of ``arch`` (``ValueError`` on another layer type)."""
    if arch == "whisper":
        return LayerParts("self_attn", layer.self_attn, layer.fc1, layer.fc2, layer, ("fc1", "fc2"))
    ff = getattr(layer, "feed_forward", None)
    if ff is None or not hasattr(layer, "attention"):
        raise ValueError(f"{type(layer).__name__}: not a transformer layer of a supported architecture")
    return LayerParts("attention", layer.attention, ff.intermediate_dense, ff.output_dense, ff,
                      ("intermediate_dense", "output_dense"))


def _attention_outputs(arch: str) -> int:
    return 2 if arch == "whisper" else 3


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device,
                    dtype=weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias)
    return out


def _head_rows(heads: list[int], head_dim: int, device) -> torch.Tensor:
    return torch.tensor([h * head_dim + i for h in heads for i in range(head_dim)], dtype=torch.long, device=device)


@torch.no_grad()
def slice_layer(layer: nn.Module, arch: str, head_gates: torch.Tensor | None, ffn_gates: torch.Tensor | None,
                attention_gate: float = 1.0, ffn_gate: float = 1.0, head_keep: list[int] | None = None,
                ffn_keep: list[int] | None = None) -> None:
    """Keep, in place, the heads and FFN units asked for, folding the gate values into the weights.

    ``head_gates`` ``(heads,)`` and ``ffn_gates`` ``(ffn,)`` (``None``: all 1) multiply each unit's
    contribution; ``attention_gate`` / ``ffn_gate`` multiply the whole sublayer's output.
    ``head_keep`` / ``ffn_keep``: the units kept (default: those whose gate is non-zero; a kept unit
    at gate 0 stays with a zero output map). The layer afterwards computes exactly what the gated
    layer computed with those gate values.
    """
    parts = layer_parts(layer, arch)
    if isinstance(parts.attention, ZeroHeadAttention):
        parts.attention.bias.mul_(attention_gate)
    else:
        att = parts.attention
        values = head_gates if head_gates is not None else torch.ones(parts.heads)
        if values.numel() != parts.heads:
            raise ValueError(f"{values.numel()} head gates for a layer of {parts.heads} heads")
        if attention_gate == 0.0:
            values = torch.zeros_like(values)
        kept = sorted(head_keep) if head_keep is not None and attention_gate != 0.0 else \
            [h for h in range(parts.heads) if float(values[h]) != 0.0]
        if len(kept) < parts.heads and arch not in HEAD_PRUNABLE:
            raise ValueError(f"{arch} attention heads cannot be removed (its attention ties head width to model width)")
        out_bias = att.out_proj.bias * attention_gate if att.out_proj.bias is not None else None
        if not kept:
            zero = ZeroHeadAttention(att.out_proj.out_features, _attention_outputs(arch)).to(att.out_proj.weight)
            if out_bias is not None:
                zero.bias.copy_(out_bias)
            setattr(layer, parts.attention_name, zero)
        else:
            rows = _head_rows(kept, parts.head_dim, att.out_proj.weight.device)
            scale = torch.repeat_interleave(values[kept].to(att.out_proj.weight), parts.head_dim) * attention_gate
            for name in ("q_proj", "k_proj", "v_proj"):
                lin = getattr(att, name)
                setattr(att, name, _linear(lin.weight[rows], None if lin.bias is None else lin.bias[rows]))
            att.out_proj = _linear(att.out_proj.weight[:, rows] * scale, out_bias)
            att.num_heads = len(kept)
            att.embed_dim = len(kept) * parts.head_dim
    values = ffn_gates if ffn_gates is not None else torch.ones(parts.ffn)
    if values.numel() != parts.ffn:
        raise ValueError(f"{values.numel()} FFN gates for a layer of {parts.ffn} FFN units")
    if ffn_gate == 0.0:
        values = torch.zeros_like(values)
    if ffn_keep is not None and ffn_gate != 0.0:
        kept_units = torch.tensor(sorted(ffn_keep), dtype=torch.long, device=parts.ffn_in.weight.device)
    else:
        kept_units = torch.nonzero(values).flatten().to(parts.ffn_in.weight.device)
    fc_in, fc_out = parts.ffn_in, parts.ffn_out
    new_in = _linear(fc_in.weight[kept_units], None if fc_in.bias is None else fc_in.bias[kept_units])
    scale = values[kept_units.cpu()].to(fc_out.weight) * ffn_gate
    new_out = _linear(fc_out.weight[:, kept_units] * scale,
                      None if fc_out.bias is None else fc_out.bias * ffn_gate)
    setattr(parts.ffn_owner, parts.ffn_names[0], new_in)
    setattr(parts.ffn_owner, parts.ffn_names[1], new_out)


def resize_layer(layer: nn.Module, arch: str, heads: int, ffn: int) -> None:
    """Give ``layer`` (freshly built, full size) ``heads`` heads and ``ffn`` FFN units, weights left to be loaded.

    Shapes only: works on the meta device ``from_pretrained`` builds models on.
    """
    parts = layer_parts(layer, arch)

    def fresh(lin: nn.Linear, n_in: int, n_out: int) -> nn.Linear:
        return nn.Linear(n_in, n_out, bias=lin.bias is not None, device=lin.weight.device, dtype=lin.weight.dtype)

    if heads != parts.heads:
        if arch not in HEAD_PRUNABLE:
            raise ValueError(f"{arch} attention heads cannot be removed")
        att = parts.attention
        if heads == 0:
            zero = ZeroHeadAttention(att.out_proj.out_features, _attention_outputs(arch))
            setattr(layer, parts.attention_name, zero.to(device=att.out_proj.weight.device))
        else:
            width = heads * parts.head_dim
            for name in ("q_proj", "k_proj", "v_proj"):
                lin = getattr(att, name)
                setattr(att, name, fresh(lin, lin.in_features, width))
            att.out_proj = fresh(att.out_proj, width, att.out_proj.out_features)
            att.num_heads, att.embed_dim = heads, width
    if ffn != parts.ffn:
        setattr(parts.ffn_owner, parts.ffn_names[0], fresh(parts.ffn_in, parts.ffn_in.in_features, ffn))
        setattr(parts.ffn_owner, parts.ffn_names[1], fresh(parts.ffn_out, ffn, parts.ffn_out.out_features))


def layer_sizes(layer: nn.Module, arch: str) -> tuple[int, int]:
    """``(heads, ffn units)`` of a layer."""
    parts = layer_parts(layer, arch)
    return parts.heads, parts.ffn


def unit_costs(layer: nn.Module, arch: str) -> dict[str, int]:
    """Parameters one head and one FFN unit of ``layer`` hold (what removing it saves)."""
    parts = layer_parts(layer, arch)
    d = parts.ffn_out.out_features
    costs = {"ffn": d + d + (1 if parts.ffn_in.bias is not None else 0)}
    if not isinstance(parts.attention, ZeroHeadAttention):
        att, dh = parts.attention, parts.head_dim
        per = dh * d * 4
        per += sum(dh for name in ("q_proj", "k_proj", "v_proj") if getattr(att, name).bias is not None)
        costs["head"] = per
    return costs
