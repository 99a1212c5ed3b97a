"""Frontends: everything of a speech model before its transformer stack.

A frontend maps ``(wav (batch, samples), lengths (batch,))`` to
``(features (batch, frames, dim), frame_lengths (batch,))`` with padded frames set to zero.
Learnt positional context (wav2vec2's convolutional embedding) belongs to the stack; Whisper's
fixed sinusoid table belongs to its frontend. Students reuse a teacher's frontend; every frontend can be
rebuilt from ``(arch, config dict)`` alone, which is what a saved student stores.

* :class:`SSLFrontend`: CNN feature encoder + feature projection of wav2vec2, HuBERT, WavLM and
  data2vec-audio. Models with a group-norm CNN (the base models) normalise each channel over
  the whole utterance, so their CNN runs per utterance: a padded batch then gives exactly the
  features of each utterance alone.
* :class:`WhisperFrontend`: 80/128-bin log-mel (Whisper's recipe, on the clip's own length
  instead of a 30 s pad) + two GELU convolutions (stride 2): 20 ms frames; then Whisper's fixed
  sinusoidal position table, sliced to the clip (at most 1500 frames = 30 s). The table is not
  learnt context but a fixed function of the frame index, so it belongs here: the frontend
  output is exactly the input of Whisper's first layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.protocol import SAMPLE_RATE, check_wav_batch, lengths_to_mask

SSL_ARCHS = ("wav2vec2", "hubert", "wavlm", "data2vec-audio")
ARCHS = SSL_ARCHS + ("whisper",)


def _ssl_classes(arch: str):
    from transformers import models as m

    table = {
        "wav2vec2": (m.wav2vec2.Wav2Vec2Config, m.wav2vec2.modeling_wav2vec2.Wav2Vec2FeatureEncoder,
                     m.wav2vec2.modeling_wav2vec2.Wav2Vec2FeatureProjection),
        "hubert": (m.hubert.HubertConfig, m.hubert.modeling_hubert.HubertFeatureEncoder,
                   m.hubert.modeling_hubert.HubertFeatureProjection),
        "wavlm": (m.wavlm.WavLMConfig, m.wavlm.modeling_wavlm.WavLMFeatureEncoder,
                  m.wavlm.modeling_wavlm.WavLMFeatureProjection),
        "data2vec-audio": (m.data2vec.Data2VecAudioConfig,
                           m.data2vec.modeling_data2vec_audio.Data2VecAudioFeatureEncoder,
                           m.data2vec.modeling_data2vec_audio.Data2VecAudioFeatureProjection),
    }
    if arch not in table:
        raise ValueError(f"unknown SSL architecture {arch!r}; known: {sorted(table)}")
    return table[arch]


class SSLFrontend(nn.Module):
    """CNN feature encoder + feature projection of a wav2vec2-family model.

    Pass ``feature_extractor`` / ``feature_projection`` to share a loaded model's modules,
    or leave them ``None`` to build fresh ones from ``config``.
    """

    def __init__(self, arch: str, config, feature_extractor: nn.Module | None = None,
                 feature_projection: nn.Module | None = None):
        super().__init__()
        _, enc_cls, proj_cls = _ssl_classes(arch)
        self.arch = arch
        self.config = config
        self.feature_extractor = feature_extractor if feature_extractor is not None else enc_cls(config)
        self.feature_projection = feature_projection if feature_projection is not None else proj_cls(config)
        self.per_utterance_cnn = getattr(config, "feat_extract_norm", "layer") == "group"
        self.hop = math.prod(config.conv_stride)
        self.output_dim = config.hidden_size

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        out = lengths.clone()
        for k, s in zip(self.config.conv_kernel, self.config.conv_stride):
            out = torch.div(out - k, s, rounding_mode="floor") + 1
        return out.clamp(min=0)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None):
        """``(batch, samples)`` -> ``(batch, frames, hidden_size)``, ``frame_lengths (batch,)``."""
        lengths = check_wav_batch(wav, lengths)
        frame_lengths = self.frame_lengths(lengths)
        if int(frame_lengths.min()) < 1:
            raise ValueError(f"utterance too short for the CNN: lengths {lengths.tolist()} samples")
        if self.per_utterance_cnn and wav.shape[0] > 1:
            n_frames = int(frame_lengths.max())
            feats = wav.new_zeros(wav.shape[0], self.config.conv_dim[-1], n_frames)
            for i, n in enumerate(lengths.tolist()):
                f = self.feature_extractor(wav[i:i + 1, :n])
                feats[i, :, : f.shape[-1]] = f[0]
        else:
            feats = self.feature_extractor(wav)
        proj = self.feature_projection(feats.transpose(1, 2))
        if isinstance(proj, tuple):
            proj = proj[0]
        proj = proj[:, : int(frame_lengths.max())]
        proj = proj * lengths_to_mask(frame_lengths, proj.shape[1]).unsqueeze(-1).to(proj.dtype)
        return proj, frame_lengths


def whisper_mel_filters(n_mels: int) -> torch.Tensor:
    """Slaney-style mel filterbank ``(n_fft // 2 + 1, n_mels)`` as Whisper's feature extractor uses."""
    from transformers.audio_utils import mel_filter_bank

    fb = mel_filter_bank(num_frequency_bins=201, num_mel_filters=n_mels, min_frequency=0.0,
                         max_frequency=8000.0, sampling_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney")
    return torch.from_numpy(fb).float()


class WhisperFrontend(nn.Module):
    """Whisper log-mel + conv1 (k3) + GELU + conv2 (k3, stride 2) + GELU + positions; hop 320 samples."""

    N_FFT, MEL_HOP = 400, 160

    def __init__(self, config, conv1: nn.Module | None = None, conv2: nn.Module | None = None,
                 embed_positions: nn.Embedding | None = None):
        super().__init__()
        self.arch = "whisper"
        self.config = config
        d, n_mels = config.d_model, config.num_mel_bins
        self.conv1 = conv1 if conv1 is not None else nn.Conv1d(n_mels, d, kernel_size=3, padding=1)
        self.conv2 = conv2 if conv2 is not None else nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        if embed_positions is None:
            embed_positions = nn.Embedding(config.max_source_positions, d)
            embed_positions.requires_grad_(False)
        self.embed_positions = embed_positions
        self.register_buffer("mel_filters", whisper_mel_filters(n_mels), persistent=False)
        self.register_buffer("window", torch.hann_window(self.N_FFT), persistent=False)
        self.hop = 2 * self.MEL_HOP
        self.output_dim = d

    def log_mel(self, wav: torch.Tensor) -> torch.Tensor:
        """One utterance ``(samples,)`` -> ``(n_mels, samples // 160)``, Whisper-normalised."""
        stft = torch.stft(wav.float(), self.N_FFT, self.MEL_HOP, window=self.window, return_complex=True)
        power = stft[..., :-1].abs() ** 2
        mel = self.mel_filters.T @ power
        logm = torch.clamp(mel, min=1e-10).log10()
        logm = torch.maximum(logm, logm.max() - 8.0)
        return (logm + 4.0) / 4.0

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        mel = torch.div(lengths, self.MEL_HOP, rounding_mode="floor")
        return torch.div(mel - 1, 2, rounding_mode="floor") + 1

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None):
        """``(batch, samples)`` -> ``(batch, frames, d_model)``, ``frame_lengths (batch,)``."""
        lengths = check_wav_batch(wav, lengths)
        if int(lengths.min()) < self.N_FFT:
            raise ValueError(f"utterance shorter than {self.N_FFT} samples: lengths {lengths.tolist()}")
        mel_lengths = torch.div(lengths, self.MEL_HOP, rounding_mode="floor")
        mel = wav.new_zeros(wav.shape[0], self.config.num_mel_bins, int(mel_lengths.max()), dtype=torch.float32)
        for i, n in enumerate(lengths.tolist()):
            m = self.log_mel(wav[i, :n])
            mel[i, :, : m.shape[-1]] = m
        conv_dtype = self.conv1.weight.dtype
        x = F.gelu(self.conv1(mel.to(conv_dtype)))
        # zero conv1 output beyond each clip, as conv2's zero padding sees it for a lone clip
        x = x * lengths_to_mask(mel_lengths, x.shape[-1]).unsqueeze(1).to(x.dtype)
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        max_pos = self.embed_positions.weight.shape[0]
        if x.shape[1] > max_pos:
            raise ValueError(f"clip has {x.shape[1]} frames; this Whisper encoder takes at most {max_pos} (30 s)")
        x = x + self.embed_positions.weight[: x.shape[1]].to(x.dtype)
        frame_lengths = self.frame_lengths(lengths)
        x = x * lengths_to_mask(frame_lengths, x.shape[1]).unsqueeze(-1).to(x.dtype)
        return x, frame_lengths


def build_frontend(arch: str, config_dict: dict) -> nn.Module:
    """Fresh frontend of architecture ``arch`` from a Hugging Face config dict (weights random)."""
    if arch == "whisper":
        from transformers import WhisperConfig

        return WhisperFrontend(WhisperConfig(**config_dict))
    cfg_cls, _, _ = _ssl_classes(arch)
    return SSLFrontend(arch, cfg_cls(**config_dict))
