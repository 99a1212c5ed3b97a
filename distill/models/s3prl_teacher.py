"""Teachers from s3prl's upstream hub (``s3prl:<name>``), e.g. ``s3prl:hubert_base``.

s3prl builds the model (downloading its checkpoint on first use); we freeze it and expose
the teacher call. s3prl upstreams do not separate a reusable frontend from their stack, so
``frontend`` is ``None``: such a teacher serves analysis, targets and evaluation, but mimic
students need a Hugging Face or CTranslate2 teacher.
"""

from __future__ import annotations

import torch
from torch import nn

from distill.core.protocol import ModelInfo, check_wav_batch, count_params


class S3PRLTeacher(nn.Module):
    """``teacher(wav, lengths) -> (hidden_states, frame_lengths)`` over ``s3prl.nn.S3PRLUpstream``."""

    frontend = None
    final_norm = None  # s3prl does not say; its states are taken as they come

    def __init__(self, upstream_name: str):
        super().__init__()
        try:
            from s3prl.nn import S3PRLUpstream
        except ImportError:
            raise ValueError("s3prl teachers need the s3prl extra: pip install 'stackdistill[s3prl]'") from None
        if not upstream_name:
            raise ValueError("s3prl teacher spec needs an upstream name, e.g. s3prl:hubert_base")
        self.name = f"s3prl:{upstream_name}"
        self.arch = f"s3prl-{upstream_name}"
        self.forward_dtype = None
        self.upstream = S3PRLUpstream(upstream_name)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # frozen
        return super().train(False)

    @property
    def num_layers(self) -> int:
        return self.upstream.num_layers - 1

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(self.name, self.arch, self.num_layers, self.upstream.hidden_sizes[-1],
                         self.upstream.downsample_rates[-1], 0, count_params(self.upstream))

    @torch.no_grad()
    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None):
        lengths = check_wav_batch(wav, lengths)
        states, state_lengths = self.upstream(wav, lengths)
        return [s.float() for s in states], state_lengths[-1]

    def features_and_states(self, wav: torch.Tensor, lengths: torch.Tensor | None = None):
        """No reusable frontend: the features are ``None``."""
        states, frame_lengths = self(wav, lengths)
        return None, states, frame_lengths

    def without_layers(self, remove):
        raise ValueError(f"{self.name}: s3prl upstreams cannot be pruned here; load the same model from "
                         "a Hugging Face folder to prune it")

    def save_pretrained(self, folder, **_ignored):
        raise ValueError(f"{self.name}: s3prl upstreams are not saved by stackdistill (s3prl owns them)")
