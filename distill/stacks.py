"""Transformer stacks: what a teacher has after its frontend.

A stack maps ``(features (batch, frames, dim), frame_lengths (batch,))`` to the list of L+1
hidden states, each ``(batch, frames, dim)``: index 0 is the input of the first transformer
layer, index i the output of layer i. As in Hugging Face's
``output_hidden_states``, the last entry of pre-LN stacks (Whisper, wav2vec2 "large"
stable-layer-norm) includes the final LayerNorm. Padded frames never influence valid ones
(key padding mask in every attention).
"""

from __future__ import annotations

import torch
from torch import nn

from .frontends import lengths_to_mask


class SSLStack(nn.Module):
    """Positional conv embedding + transformer layers of a wav2vec2-family encoder.

    data2vec-audio stacks several positional convolutions; Hugging Face zeroes padded frames
    only before the first, so padding leaks into valid frames near the end. Forward hooks
    re-zero padded frames after each of them (module names, hence checkpoints, unchanged).
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self._frame_mask: torch.Tensor | None = None
        pos_layers = getattr(encoder.pos_conv_embed, "layers", None)
        for layer in pos_layers if pos_layers is not None else []:
            layer.register_forward_hook(self._zero_padding)

    def _zero_padding(self, module, inputs, output):  # output: (batch, channels, frames)
        if self._frame_mask is None:
            return output
        return output * self._frame_mask[:, None, : output.shape[-1]].to(output.dtype)

    @property
    def layers(self) -> nn.ModuleList:
        return self.encoder.layers

    def forward(self, x: torch.Tensor, frame_lengths: torch.Tensor) -> list[torch.Tensor]:
        mask = lengths_to_mask(frame_lengths, x.shape[1])
        self._frame_mask = mask
        try:
            # the HF encoder zeroes padded frames in place: never touch the caller's tensor
            out = self.encoder(x.clone(), attention_mask=mask, output_hidden_states=True, return_dict=True)
        finally:
            self._frame_mask = None
        return list(out.hidden_states)


class WhisperStack(nn.Module):
    """Whisper encoder layers + final LayerNorm, on clips of any length, padding masked.

    Hugging Face's ``WhisperEncoder.forward`` insists on 3000 mel frames (30 s); here the
    frontend slices the position table to the clip instead, and padded frames are masked,
    which Whisper itself never does.
    """

    def __init__(self, layers: nn.ModuleList, layer_norm: nn.LayerNorm):
        super().__init__()
        self.layers = layers
        self.layer_norm = layer_norm

    def forward(self, x: torch.Tensor, frame_lengths: torch.Tensor) -> list[torch.Tensor]:
        n = x.shape[1]
        keep = lengths_to_mask(frame_lengths, n)
        bias = torch.zeros(keep.shape, dtype=x.dtype, device=x.device)
        bias.masked_fill_(~keep, torch.finfo(x.dtype).min)
        attn_mask = bias[:, None, None, :].expand(-1, 1, n, -1)
        h = x
        states = [h]
        for layer in self.layers:
            h = layer(h, attention_mask=attn_mask, layer_head_mask=None)[0]
            states.append(h)
        states[-1] = self.layer_norm(states[-1])
        return states
