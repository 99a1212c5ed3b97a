"""CPU inference speed of teachers and students, measured side by side in one run.

Models are timed in interleaved rounds on the same batch (so a noisy neighbour slows all of
them alike); the figure kept per model is the median over rounds of seconds of compute per
second of audio.
"""

from __future__ import annotations

import statistics
import time

import torch

from .audio import SAMPLE_RATE


@torch.no_grad()
def seconds_per_audio_second(models: dict[str, torch.nn.Module], wav: torch.Tensor, lengths: torch.Tensor,
                             rounds: int = 5, warmup: int = 1) -> dict[str, float]:
    """``{name: median seconds per second of audio}`` for ``model(wav, lengths)``; ``wav (batch, samples)``."""
    audio_seconds = float(lengths.sum()) / SAMPLE_RATE
    times: dict[str, list[float]] = {name: [] for name in models}
    for r in range(warmup + rounds):
        for name, model in models.items():
            t0 = time.perf_counter()
            model(wav, lengths)
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) / audio_seconds for name, ts in times.items()}
