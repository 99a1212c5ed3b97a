"""The model protocol and the primitives every layer of stackdistill shares.

This module is the bottom of the import graph: it imports nothing of stackdistill, so
``distill/`` (teachers, training, analysis) and ``students/`` both stand on it without an
import cycle, and it can be bundled into an exported folder as is.

The protocol (:class:`SpeechModel`) is what teachers, students, pruned models and fine-tuned
classifiers all implement; whatever accepts a teacher accepts any of them:

* ``model(wav, lengths) -> (hidden_states, frame_lengths)``: ``wav (batch, samples)`` at
  16 kHz, ``lengths (batch,)`` valid samples; ``hidden_states`` a list of ``num_layers + 1``
  tensors ``(batch, frames, dim)`` (index 0 the stack input, index i the output of layer i);
  ``frame_lengths (batch,)`` the valid frames of each utterance. Padded frames are zero or
  ignored; they never change valid ones.
* ``features_and_states(wav, lengths) -> (features, hidden_states, frame_lengths)``: the
  frontend output ``(batch, frames, dim)`` as well (``None`` for models without a reusable
  frontend).
* ``info`` (:class:`ModelInfo`), ``num_layers``, ``frontend`` (a module or ``None``), ``name``.
* ``final_norm``: the module a pre-LN stack applies to its last state only (Whisper, large
  wav2vec2), or ``None``; the output of the model cut after layer m is ``final_norm(states[m])``.
* ``without_layers(remove) -> SpeechModel``: a shallower copy (model surgery; 1-based layers).
* ``save_pretrained(folder)``: a folder that :func:`distill.models.teacher.load_teacher` reads back.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

SAMPLE_RATE = 16_000


@dataclass
class ModelInfo:
    """What every teacher and student reports about itself."""

    name: str
    arch: str
    num_layers: int
    dim: int
    hop: int  # samples per output frame at 16 kHz
    params_frontend: int
    params_stack: int

    @property
    def params_total(self) -> int:
        return self.params_frontend + self.params_stack

    def to_dict(self) -> dict:
        return {**asdict(self), "params_total": self.params_total}


@runtime_checkable
class SpeechModel(Protocol):
    """The one interface of teachers, students and pruned models (see the module docstring)."""

    name: str

    def __call__(self, wav: torch.Tensor, lengths: torch.Tensor | None = None): ...

    def features_and_states(self, wav: torch.Tensor, lengths: torch.Tensor | None = None): ...

    @property
    def info(self) -> ModelInfo: ...

    @property
    def num_layers(self) -> int: ...

    @property
    def frontend(self) -> nn.Module | None: ...

    @property
    def final_norm(self) -> nn.Module | None: ...

    def without_layers(self, remove) -> "SpeechModel": ...

    def save_pretrained(self, folder, **kwargs): ...


def count_params(module: nn.Module | None) -> int:
    """Number of parameters of ``module`` (each shared tensor once); 0 for ``None``."""
    return 0 if module is None else sum(p.numel() for p in module.parameters())


class NonFiniteError(ValueError):
    """A tensor about to be saved or exported holds NaN or infinite values."""


def require_finite(tensors: "nn.Module | dict[str, torch.Tensor]", what: str) -> None:
    """Raise :class:`NonFiniteError` naming the first tensor of ``tensors`` that holds NaN or inf.

    ``tensors``: a module (its state dict) or a name -> tensor mapping; ``what``: what is being
    written (``"checkpoint step_40: model"``), for the message. Non-float tensors are skipped.
    """
    items = tensors.state_dict().items() if isinstance(tensors, nn.Module) else tensors.items()
    for name, t in items:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise NonFiniteError(f"{what}: tensor {name!r} {tuple(t.shape)} holds {bad} NaN or infinite values; "
                                 "refusing to write non-finite weights (the training diverged)")


def autocast_for(dtype: torch.dtype | None, device: torch.device):
    """Autocast context for a reduced-precision forward pass; a no-op for float32/None."""
    if dtype in (None, torch.float32):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def lengths_to_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """``(batch,)`` lengths -> ``(batch, max_len)`` bool mask, True on valid positions."""
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def masked_mean(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over the valid frames: ``(batch, frames, dim)`` -> ``(batch, dim)``."""
    if x.dim() != 3 or lengths.shape != (x.shape[0],):
        raise ValueError(f"masked_mean expects (batch, frames, dim) and (batch,) lengths, "
                         f"got {tuple(x.shape)} and {tuple(lengths.shape)}")
    mask = lengths_to_mask(lengths, x.shape[1]).unsqueeze(-1).to(x.dtype)
    return (x * mask).sum(1) / mask.sum(1).clamp(min=1)


def pad_waveforms(wavs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A list of 1-D waveforms -> ``wav (batch, max_samples)`` zero-padded and ``lengths (batch,)``."""
    if not wavs:
        raise ValueError("pad_waveforms needs at least one waveform")
    flat = [w.reshape(-1) for w in wavs]
    lengths = torch.tensor([w.numel() for w in flat], dtype=torch.long, device=flat[0].device)
    wav = flat[0].new_zeros(len(flat), int(lengths.max()))
    for i, w in enumerate(flat):
        wav[i, : w.numel()] = w
    return wav, lengths


def check_wav_batch(wav: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Validate ``wav (batch, samples)`` and return ``lengths (batch,)`` (full length if None)."""
    if not isinstance(wav, torch.Tensor) or wav.dim() != 2:
        shape = tuple(wav.shape) if isinstance(wav, torch.Tensor) else type(wav).__name__
        raise ValueError(f"expected wav of shape (batch, samples), got {shape}")
    if lengths is None:
        return torch.full((wav.shape[0],), wav.shape[1], dtype=torch.long, device=wav.device)
    lengths = torch.as_tensor(lengths, device=wav.device).long()
    if lengths.shape != (wav.shape[0],):
        raise ValueError(f"lengths must have shape ({wav.shape[0]},), got {tuple(lengths.shape)}")
    if int(lengths.max()) > wav.shape[1] or int(lengths.min()) <= 0:
        raise ValueError(f"lengths must lie in [1, {wav.shape[1]}], got {lengths.tolist()}")
    return lengths


def check_layers_to_remove(remove, num_layers: int) -> list[int]:
    """Sorted unique 1-based layer numbers; a clear error outside 1..L or when none would be left."""
    remove = sorted(set(int(i) for i in remove))
    if any(not 1 <= i <= num_layers for i in remove):
        raise ValueError(f"layers to remove must lie in 1..{num_layers}, got {remove}")
    if len(remove) >= num_layers:
        raise ValueError(f"cannot remove all {num_layers} layers")
    return remove


def evenly_spaced(n: int, total: int) -> list[int]:
    """``n`` layer numbers spread evenly over ``1..total``, the last one included.

    ``evenly_spaced(3, 12) == [4, 8, 12]``; ``evenly_spaced(4, 4) == [1, 2, 3, 4]``.
    """
    if not 1 <= n <= total:
        raise ValueError(f"cannot pick {n} of {total} layers")
    return [max(1, math.floor(total * (i + 1) / n + 0.5)) for i in range(n)]


class TeacherTargets:
    """The teacher's hidden states of one batch, as regression targets for a student.

    ``states``: the ``L + 1`` tensors ``(batch, frames, dim)`` as the teacher returns them (the
    last one after the final norm of a pre-LN stack), or a ``{layer: tensor}`` mapping holding
    only some of them (targets read from the cache), with ``num_layers`` = L given;
    ``final_norm``: that norm or ``None``.
    """

    def __init__(self, states: list[torch.Tensor] | dict[int, torch.Tensor], frame_lengths: torch.Tensor,
                 final_norm: nn.Module | None = None, num_layers: int | None = None):
        if isinstance(states, dict):
            if num_layers is None:
                raise ValueError("TeacherTargets from a {layer: state} mapping needs num_layers")
            self._states, self._num_layers = dict(states), num_layers
        else:
            self._states, self._num_layers = dict(enumerate(states)), len(states) - 1
        self.frame_lengths, self.final_norm = frame_lengths, final_norm

    @property
    def num_layers(self) -> int:
        return self._num_layers

    @property
    def available(self) -> list[int]:
        """The layers these targets hold."""
        return sorted(self._states)

    def layer(self, m: int) -> torch.Tensor:
        """Hidden state ``m`` (0 = stack input) exactly as the teacher returns it."""
        if not 0 <= m <= self.num_layers:
            raise ValueError(f"teacher layer {m} outside 0..{self.num_layers}")
        if m not in self._states:
            raise ValueError(f"teacher layer {m} is not among the targets (they hold layers {self.available}); "
                             "a target cache must be built with every layer the student regresses")
        return self._states[m]

    def output_at(self, m: int) -> torch.Tensor:
        """The last hidden state of the teacher cut after layer ``m``: ``final_norm(states[m])``."""
        if m == self.num_layers or self.final_norm is None:
            return self.layer(m)
        with torch.no_grad():
            return self.final_norm(self.layer(m))
