"""Any stackdistill model (teacher, student, exported folder) as an s3prl upstream, in-process.

:func:`register` adds one entry, ``stackdistill``, to ``s3prl.hub``; s3prl then builds the
upstream with ``S3PRLUpstream("stackdistill", path_or_url=SPEC)`` where SPEC is anything
:func:`distill.models.teacher.load_teacher` accepts. No file of s3prl is copied or edited.
"""

from __future__ import annotations

import torch
from torch import nn

from distill.core.protocol import pad_waveforms
from distill.models.teacher import load_teacher

HUB_NAME = "stackdistill"


class S3PRLAdapter(nn.Module):
    """s3prl's upstream interface over a model called as ``model(wav, lengths)``.

    ``forward(wavs: list[(samples,)]) -> {"hidden_states": [(batch, frames, dim), ...]}``.
    The wrapped model stays in eval mode (no dropout, no layerdrop) even when s3prl calls
    ``train()``: it is frozen in SUPERB's protocol.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.model.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()
        return self

    def get_downsample_rates(self, key: str = "hidden_states") -> int:
        return int(self.model.info.hop)

    def forward(self, wavs: list[torch.Tensor]) -> dict:
        wav, lengths = pad_waveforms(wavs)
        states, _ = self.model(wav, lengths)
        return {"hidden_states": states}


def _factory(ckpt: str | None = None, refresh: bool = False, **kwargs) -> S3PRLAdapter:
    if not ckpt:
        raise ValueError(f"s3prl upstream {HUB_NAME!r} needs path_or_url=<model spec>")
    return S3PRLAdapter(load_teacher(ckpt, dtype=kwargs.get("dtype")))


def register() -> str:
    """Make ``stackdistill`` an s3prl hub entry in this process; returns the entry name."""
    import s3prl.hub

    from . import s3prl_compat

    s3prl_compat.apply()
    setattr(s3prl.hub, HUB_NAME, _factory)
    return HUB_NAME
