"""Transformer stacks: what a teacher has after its frontend.

A stack maps ``(features (batch, frames, dim), frame_lengths (batch,))`` to the list of L+1
hidden states, each ``(batch, frames, dim)``: index 0 is the input of the first transformer
layer, index i the output of layer i. As in Hugging Face's
``output_hidden_states``, the last entry of pre-LN stacks (Whisper, wav2vec2 "large"
stable-layer-norm) includes the final LayerNorm. Padded frames never influence valid ones
(key padding mask in every attention).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn

from distill.core.protocol import lengths_to_mask


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

    @property
    def final_norm(self) -> nn.Module | None:
        """The LayerNorm stable-layer-norm ("large") encoders apply after their last layer only."""
        return self.encoder.layer_norm if "StableLayerNorm" in type(self.encoder).__name__ else None

    @contextlib.contextmanager
    def _running(self, layers: Sequence[nn.Module] | None):
        """Run the encoder over ``layers`` (a sequence that may repeat a layer) instead of its own."""
        if layers is None:
            yield
            return
        own = self.encoder._modules["layers"]
        self.encoder._modules["layers"] = nn.ModuleList(layers)
        try:
            yield
        finally:
            self.encoder._modules["layers"] = own

    def forward(self, x: torch.Tensor, frame_lengths: torch.Tensor,
                layers: Sequence[nn.Module] | None = None) -> list[torch.Tensor]:
        """``(batch, frames, dim)`` -> ``len(layers) + 1`` states (default: the encoder's own layers)."""
        mask = lengths_to_mask(frame_lengths, x.shape[1])
        self._frame_mask = mask
        try:
            with self._running(layers):
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

    @property
    def final_norm(self) -> nn.Module:
        return self.layer_norm

    def forward(self, x: torch.Tensor, frame_lengths: torch.Tensor,
                layers: Sequence[nn.Module] | None = None) -> list[torch.Tensor]:
        """``(batch, frames, dim)`` -> ``len(layers) + 1`` states (default: the encoder's own layers)."""
        n = x.shape[1]
        keep = lengths_to_mask(frame_lengths, n)
        bias = torch.zeros(keep.shape, dtype=x.dtype, device=x.device)
        bias.masked_fill_(~keep, torch.finfo(x.dtype).min)
        attn_mask = bias[:, None, None, :].expand(-1, 1, n, -1)
        h = x
        states = [h]
        for layer in self.layers if layers is None else layers:
            h = layer(h, attention_mask=attn_mask, layer_head_mask=None)[0]
            states.append(h)
        states[-1] = self.layer_norm(states[-1])
        return states


def hf_parts(model: nn.Module) -> tuple[str, nn.Module, nn.Module]:
    """``(arch, frontend, stack)`` sharing the modules of a Hugging Face speech model.

    ``model``: a base model of a supported architecture (``HubertModel``, ``WhisperModel``,
    ``WhisperEncoder``, ...); the parts hold the model's own modules, so training either trains both.
    """
    from distill.core.frontends import SSL_ARCHS, SSLFrontend, WhisperFrontend

    config = model.config
    arch = config.model_type
    if arch == "whisper":
        enc = model if hasattr(model, "conv1") else (model.encoder if hasattr(model, "encoder") else model.model.encoder)
        return arch, WhisperFrontend(config, enc.conv1, enc.conv2, enc.embed_positions), \
            WhisperStack(enc.layers, enc.layer_norm)
    if arch in SSL_ARCHS:
        return arch, SSLFrontend(arch, config, model.feature_extractor, model.feature_projection), \
            SSLStack(model.encoder)
    raise ValueError(f"model type {arch!r} is not a supported speech model; supported: {SSL_ARCHS + ('whisper',)}")


def delete_layers(layers: nn.ModuleList, remove: list[int], arch: str) -> None:
    """Delete the 1-based layers ``remove`` from ``layers`` in place (shared with the full HF model)."""
    first = layers[0]
    for i in sorted(remove, reverse=True):
        del layers[i - 1]
    if arch == "wavlm" and 1 in remove:
        # WavLM computes its relative position bias in the first layer only: hand it on
        new_first = layers[0].attention
        new_first.rel_attn_embed = first.attention.rel_attn_embed
        new_first.has_relative_position_bias = True


def set_num_layers(config, n: int) -> None:
    """Record a new layer count in a Hugging Face config (Whisper keeps it as ``encoder_layers``)."""
    if config.model_type == "whisper":
        config.encoder_layers = n  # WhisperConfig mirrors it in num_hidden_layers
    config.num_hidden_layers = n
