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
from tasks.superb import state_cache

HUB_NAME = "stackdistill"


class S3PRLAdapter(nn.Module):
    """s3prl's upstream interface over a model called as ``model(wav, lengths)``.

    ``forward(wavs: list[(samples,)]) -> {"hidden_states": [(batch, frames, dim), ...]}``.
    The wrapped model stays in eval mode (no dropout, no layerdrop) even when s3prl calls
    ``train()``: it is frozen in SUPERB's protocol. Inside :func:`tasks.superb.state_cache.use`,
    each clip's states come from the cache when the same model saw it before (padding: zeros past
    each clip's frames), unless this adapter ever ran with gradients on (a trainable upstream).
    """

    def __init__(self, model: nn.Module, spec: str = ""):
        super().__init__()
        self.model = model
        self.model.eval()
        self.spec = spec
        self._fingerprint: str | None = None
        self._trains = False

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()
        return self

    def get_downsample_rates(self, key: str = "hidden_states") -> int:
        return int(self.model.info.hop)

    def forward(self, wavs: list[torch.Tensor]) -> dict:
        """``wavs: [(samples,)]`` -> ``{"hidden_states": [(batch, frames, dim)] * (L + 1)}``."""
        cache = state_cache.active()
        self._trains |= torch.is_grad_enabled()  # a trainable upstream's states change: never cached after
        if cache is None or self._trains:
            wav, lengths = pad_waveforms(wavs)
            states, _ = self.model(wav, lengths)
            return {"hidden_states": states}
        if self._fingerprint is None:
            self._fingerprint = state_cache.model_fingerprint(self.model, self.spec)
        per_clip = cache.states(self._fingerprint, wavs, self._clip_states)
        return {"hidden_states": [h.to(wavs[0].device) for h in state_cache.pad_states(per_clip)]}

    def _clip_states(self, wavs: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """One batched forward -> each clip's states cut to its own frames: ``[[(frames, dim)] * (L + 1)]``."""
        wav, lengths = pad_waveforms(wavs)
        states, frame_lengths = self.model(wav, lengths)
        return [[s[b, :n] for s in states] for b, n in enumerate(frame_lengths.tolist())]


def _factory(ckpt: str | None = None, refresh: bool = False, **kwargs) -> S3PRLAdapter:
    if not ckpt:
        raise ValueError(f"s3prl upstream {HUB_NAME!r} needs path_or_url=<model spec>")
    return S3PRLAdapter(load_teacher(ckpt, dtype=kwargs.get("dtype")), spec=f"{ckpt}|{kwargs.get('dtype')}")


def register() -> str:
    """Make ``stackdistill`` an s3prl hub entry in this process; returns the entry name."""
    import s3prl.hub

    from . import s3prl_compat

    s3prl_compat.apply()
    setattr(s3prl.hub, HUB_NAME, _factory)
    return HUB_NAME
