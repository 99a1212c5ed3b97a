"""CPU inference speed of teachers and students, measured side by side in one run.

Models are timed in interleaved rounds on the same batch (so a noisy neighbour slows all of
them alike); the figure kept per model is the median over rounds of seconds of compute per
second of audio.
"""

from __future__ import annotations

import statistics
import time

import torch

from distill.data.audio import SAMPLE_RATE


@torch.no_grad()
def seconds_per_audio_second(models: dict[str, torch.nn.Module], wav: torch.Tensor, lengths: torch.Tensor,
                             rounds: int = 5, warmup: int = 1) -> dict[str, float]:
    """``{name: median seconds per second of audio}`` for ``model(wav, lengths)``; ``wav (batch, samples)``."""
    audio_seconds = float(lengths.sum()) / SAMPLE_RATE
    return {name: t / audio_seconds for name, t in median_wall_seconds(models, wav, lengths, rounds, warmup).items()}


@torch.no_grad()
def median_wall_seconds(models: dict[str, torch.nn.Module], wav: torch.Tensor, lengths: torch.Tensor,
                        rounds: int = 5, warmup: int = 1) -> dict[str, float]:
    """``{name: median wall seconds of one forward of the whole batch}``, models interleaved round by round."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for r in range(warmup + rounds):
        for name, model in models.items():
            t0 = time.perf_counter()
            model(wav, lengths)
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def train_step_seconds(student, teacher, batches: list[dict], steps: int = 6, warmup: int = 2,
                       loss: str | None = None) -> float:
    """Median wall seconds of one optimizer step of ``student``'s stack (forward, backward, AdamW).

    The teacher's targets for ``batches`` are computed beforehand and not timed: every student
    pays the same teacher cost, so this isolates what the student's own architecture costs
    (e.g. a shared-layer student at a sampled depth against a non-shared one at full depth).
    """
    from distill.core.protocol import TeacherTargets
    from distill.training.losses import pairs_loss

    if not batches:
        raise ValueError("train_step_seconds needs at least one batch")
    prepared = []
    for b in batches:
        feats, states, fl = teacher.features_and_states(b["wav"], b["lengths"])
        prepared.append((feats, TeacherTargets(states, fl, teacher.final_norm), fl))
    stack = student.stack
    stack.train()
    params = [p for p in stack.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    times = []
    for step in range(warmup + steps):
        feats, targets, fl = prepared[step % len(prepared)]
        kwargs = student.step_kwargs(step)
        t0 = time.perf_counter()
        outputs = stack(feats, fl, **kwargs)
        total, _ = pairs_loss(student.distill_pairs(outputs, targets, **kwargs), fl, loss or student.default_loss)
        opt.zero_grad()
        total.backward()
        opt.step()
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    stack.eval()
    return statistics.median(times)


@torch.no_grad()
def macs_per_audio_second(model: torch.nn.Module, seconds: float = 1.0, frontend_only: bool = False) -> float:
    """Multiply-accumulates ``model`` (or its frontend) spends on one second of audio.

    Counted by torch's ``FlopCounterMode`` on a ``seconds``-long clip (matmuls and convolutions:
    FLOPs / 2), divided by ``seconds``. Attention grows with length, so longer clips cost more
    per second: pass the length that matters.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    n = int(seconds * SAMPLE_RATE)
    wav = torch.randn(1, n) * 0.1
    lengths = torch.tensor([n])
    fn = model.frontend if frontend_only else model
    if fn is None:
        raise ValueError(f"{getattr(model, 'name', model)} has no separate frontend to count")
    counter = FlopCounterMode(display=False)
    # nn.MultiheadAttention's inference fast path is one fused op the counter does not see
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        # the fused CPU attention kernels are invisible to the counter too: count the math backend's matmuls
        with sdpa_kernel(SDPBackend.MATH), counter:
            fn(wav, lengths)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return counter.get_total_flops() / 2 / seconds


def model_names(specs: list[str], names: list[str] | None = None) -> list[str]:
    """Distinct, readable names for model specs (:func:`distill.core.names.readable_name`), ``-2``,
    ``-3`` ... on clashes."""
    if names:
        if len(names) != len(specs) or len(set(names)) != len(names):
            raise ValueError(f"need {len(specs)} distinct names, got {names}")
        return list(names)
    from distill.core.names import readable_name

    out: list[str] = []
    for spec in specs:
        base = readable_name(spec)
        name, k = base, 2
        while name in out:
            name, k = f"{base}-{k}", k + 1
        out.append(name)
    return out
