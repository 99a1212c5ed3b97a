"""Transformer stacks: what a teacher has after its frontend.

A stack maps ``(features (batch, frames, dim), frame_lengths (batch,))`` to the list of L+1
hidden states, each ``(batch, frames, dim)``: index 0 is the input of the first transformer
layer (positions added), index i the output of layer i. As in Hugging Face's
``output_hidden_states``, the last entry of pre-LN stacks (Whisper, wav2vec2 "large"
stable-layer-norm) includes the final LayerNorm. Padded frames never influence valid ones
(key padding mask in every attention).
"""

from __future__ import annotations

import torch
from torch import nn

from .frontends import lengths_to_mask


class SSLStack(nn.Module):
    """Positional conv embedding + transformer layers of a wav2vec2-family encoder."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    @property
    def layers(self) -> nn.ModuleList:
        return self.encoder.layers

    def forward(self, x: torch.Tensor, frame_lengths: torch.Tensor) -> list[torch.Tensor]:
        mask = lengths_to_mask(frame_lengths, x.shape[1])
        # the HF encoder zeroes padded frames in place: never touch the caller's tensor
        out = self.encoder(x.clone(), attention_mask=mask, output_hidden_states=True, return_dict=True)
        return list(out.hidden_states)


class WhisperStack(nn.Module):
    """Sinusoidal positions + Whisper encoder layers + final LayerNorm, on clips of any length.

    Hugging Face's ``WhisperEncoder.forward`` insists on 3000 mel frames (30 s); this slices the
    position table to the clip instead, and masks padded frames, which Whisper itself never does.
    """

    def __init__(self, embed_positions: nn.Embedding, layers: nn.ModuleList, layer_norm: nn.LayerNorm):
        super().__init__()
        self.embed_positions = embed_positions
        self.layers = layers
        self.layer_norm = layer_norm

    def forward(self, x: torch.Tensor, frame_lengths: torch.Tensor) -> list[torch.Tensor]:
        n = x.shape[1]
        max_pos = self.embed_positions.weight.shape[0]
        if n > max_pos:
            raise ValueError(f"clip has {n} frames; this Whisper encoder takes at most {max_pos} (30 s)")
        h = x + self.embed_positions.weight[:n].to(x.dtype)
        keep = lengths_to_mask(frame_lengths, n)
        bias = torch.zeros(keep.shape, dtype=h.dtype, device=h.device)
        bias.masked_fill_(~keep, torch.finfo(h.dtype).min)
        attn_mask = bias[:, None, None, :].expand(-1, 1, n, -1)
        states = [h]
        for layer in self.layers:
            h = layer(h, attention_mask=attn_mask, layer_head_mask=None)[0]
            states.append(h)
        states[-1] = self.layer_norm(states[-1])
        return states
