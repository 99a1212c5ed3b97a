"""A frozen upstream's hidden states, kept per clip and reused across steps, lrs and seeds.

SUPERB's protocol freezes the model under test, and s3prl's recipes feed it the same clips again
and again: 250 KS steps of 32 clips draw each training clip about six times, validation repeats
every ``eval_every`` steps, and the lr grid and the seeds rerun the recipe on the same model. The
model's output for a clip does not change, so it is computed once and kept here, in memory, up to
a budget. Only the states of one model are kept: a different model (another key) empties the cache.

Inside :func:`use` the s3prl adapter (:mod:`tasks.superb.s3prl_upstream`) asks this cache first;
outside it, and for an upstream that ever ran with gradients on (trainable), it computes every batch.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

ClipStates = list[torch.Tensor]  # one clip's states: [(frames, dim)] * layers
Compute = Callable[[list[torch.Tensor]], list[ClipStates]]


def clip_key(wav: torch.Tensor) -> bytes:
    """A digest of one waveform's samples (and so its length): equal keys, equal clips."""
    data = wav.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.blake2b(data, digest_size=20).digest()


def model_fingerprint(model: nn.Module, spec: str = "") -> str:
    """A digest of what decides a model's output: its class, its spec and every tensor of its
    state (names, shapes, dtypes, values). Two loads of the same folder agree; a retrained or
    pruned model in the same folder does not."""
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{type(model).__module__}.{type(model).__qualname__}|{spec}".encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class CacheCounts:
    """Clips served from the cache, computed by the model, and computed but not kept (budget full)."""

    reused: int = 0
    computed: int = 0
    not_kept: int = 0


class StateCache:
    """Per-clip hidden states of one model, kept in host memory, bounded by ``max_mb`` of tensor data."""

    def __init__(self, max_mb: float):
        if max_mb < 0:
            raise ValueError(f"state cache budget must be >= 0 MB, got {max_mb}")
        self.max_bytes = int(max_mb * 2**20)
        self.model_key: str | None = None
        self.clips: dict[bytes, ClipStates] = {}
        self.nbytes = 0
        self.counts = CacheCounts()

    def clear(self) -> None:
        self.clips.clear()
        self.nbytes = 0

    def states(self, model_key: str, wavs: list[torch.Tensor], compute: Compute) -> list[ClipStates]:
        """Each clip's states, from the cache or from ``compute`` (called once, on the clips missing).

        ``wavs``: ``[(samples,)]``; ``compute(wavs) -> [[(frames, dim)] * layers]`` per clip.
        """
        if model_key != self.model_key:
            self.clear()
            self.model_key = model_key
        keys = [clip_key(w) for w in wavs]
        missing = [i for i, k in enumerate(keys) if k not in self.clips]
        fresh: dict[int, ClipStates] = {}
        if missing:
            for i, states in zip(missing, compute([wavs[i] for i in missing])):
                states = [s.detach().to("cpu", copy=True) for s in states]  # host memory; not views of the batch
                fresh[i] = states
                size = sum(s.numel() * s.element_size() for s in states)
                if self.nbytes + size <= self.max_bytes:
                    self.clips[keys[i]] = states
                    self.nbytes += size
                else:
                    self.counts.not_kept += 1
        self.counts.computed += len(missing)
        self.counts.reused += len(wavs) - len(missing)
        return [fresh[i] if i in fresh else self.clips[k] for i, k in enumerate(keys)]


def pad_states(per_clip: list[ClipStates]) -> list[torch.Tensor]:
    """``[[(frames_b, dim)] * layers] * batch`` -> ``[(batch, max_frames, dim)] * layers``, zero-padded."""
    layers = len(per_clip[0])
    return [pad_sequence([clip[layer] for clip in per_clip], batch_first=True) for layer in range(layers)]


_ACTIVE: StateCache | None = None
_KEPT: StateCache | None = None  # survives between uses, so the next run on the same model reuses it


@contextmanager
def use(max_mb: float) -> Iterator[StateCache | None]:
    """Within this block, s3prl upstreams keep their states (``max_mb`` > 0) in the process's cache."""
    global _ACTIVE, _KEPT
    if max_mb <= 0:
        yield None
        return
    if _KEPT is None or _KEPT.max_bytes != int(max_mb * 2**20):
        _KEPT = StateCache(max_mb)
    previous, _ACTIVE = _ACTIVE, _KEPT
    try:
        yield _ACTIVE
    finally:
        _ACTIVE = previous


def active() -> StateCache | None:
    """The cache in use, or None."""
    return _ACTIVE


def release() -> None:
    """Free the kept states (the pipeline calls this when its evaluations are done)."""
    global _KEPT
    if _KEPT is not None:
        _KEPT.clear()
    _KEPT = None
