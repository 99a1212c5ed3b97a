"""The frozen upstream's per-clip state cache used by the SUPERB evaluations."""

from __future__ import annotations

import pytest
import torch

from distill.models.teacher import load_teacher
from tasks.superb import state_cache
from tasks.superb.s3prl_upstream import S3PRLAdapter
from tasks.superb.state_cache import StateCache, model_fingerprint, pad_states


class Counting:
    """A fake model's per-clip states ([clip's first sample] * frames, two layers), counting its calls."""

    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, wavs):
        self.calls.append(len(wavs))
        return [[w[:1].expand(len(w) // 10, 1).clone(), -w[:1].expand(len(w) // 10, 1).clone()] for w in wavs]


def clips(*values, samples=40):
    return [torch.full((samples + 10 * k,), float(v)) for k, v in enumerate(values)]


def test_each_clip_is_computed_once_and_served_after():
    cache, model = StateCache(max_mb=1), Counting()
    first = cache.states("m", clips(1, 2, 3), model)
    again = cache.states("m", clips(1, 2, 3), model)
    assert model.calls == [3] and cache.counts.computed == 3 and cache.counts.reused == 3
    for a, b in zip(first, again):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    # a batch mixing known and new clips: one call, for the new ones only, results in the batch's order
    mixed = cache.states("m", [clips(9)[0], clips(1, 2)[1], clips(1)[0]], model)
    assert model.calls == [3, 1]
    assert [float(c[0][0, 0]) for c in mixed] == [9.0, 2.0, 1.0]
    assert [c[0].shape[0] for c in mixed] == [4, 5, 4]


def test_another_model_empties_the_cache_and_the_budget_bounds_it():
    cache, model = StateCache(max_mb=1), Counting()
    cache.states("m", clips(1, 2), model)
    cache.states("other", clips(1, 2), model)  # the same clips through another model: computed again
    assert model.calls == [2, 2] and len(cache.clips) == 2
    small = StateCache(max_mb=40 / 2**20)  # 40 bytes: one clip of 4 frames x 2 layers x 4 bytes = 32
    out = small.states("m", clips(1, 2), model)
    assert len(small.clips) == 1 and small.counts.not_kept == 1 and small.nbytes == 32
    assert [float(c[1][0, 0]) for c in out] == [-1.0, -2.0]  # the clip not kept is still returned
    with pytest.raises(ValueError, match=">= 0 MB"):
        StateCache(max_mb=-1)


def test_states_are_padded_with_zeros_past_each_clip():
    padded = pad_states([[torch.ones(2, 3)], [torch.ones(4, 3)]])
    assert padded[0].shape == (2, 4, 3) and padded[0][0, 2:].abs().sum() == 0 and padded[0][1].sum() == 12


def test_adapter_serves_the_models_own_states_from_the_cache(tiny_whisper_dir):
    model = load_teacher(str(tiny_whisper_dir))
    adapter = S3PRLAdapter(model, spec=str(tiny_whisper_dir))
    torch.manual_seed(0)
    wavs = [torch.randn(n) * 0.1 for n in (16000, 9600, 12800)]
    with torch.no_grad():
        reference, frames = model(*_padded(wavs))  # the model alone, no cache
        with state_cache.use(64) as cache:
            first = adapter(wavs)["hidden_states"]
            calls = []
            original = adapter._clip_states
            adapter._clip_states = lambda w: calls.append(len(w)) or original(w)
            second = adapter([wavs[2], wavs[0]])["hidden_states"]  # both seen: no forward at all
        assert calls == [] and cache.counts.reused == 2
        assert len(first) == len(reference) == model.num_layers + 1
        for mine, theirs in zip(first, reference):
            for b, n in enumerate(frames.tolist()):
                torch.testing.assert_close(mine[b, :n], theirs[b, :n], rtol=1e-5, atol=1e-5)
                assert mine[b, n:].abs().sum() == 0
        for mine, theirs in zip(second, first):
            torch.testing.assert_close(mine[1], theirs[0])
            torch.testing.assert_close(mine[0, :frames[2]], theirs[2, :frames[2]])
        assert state_cache.active() is None  # only inside use()
    state_cache.release()
    with state_cache.use(64) as cache:  # gradients on (a trainable upstream): never cached, nor after
        adapter(wavs)
        with torch.no_grad():  # its validation, without gradients, on weights that may have moved
            adapter(wavs)
        assert cache.counts.computed == 0 and not cache.clips
    state_cache.release()


def test_fingerprint_follows_the_weights_not_the_load(tiny_whisper_dir):
    a, b = load_teacher(str(tiny_whisper_dir)), load_teacher(str(tiny_whisper_dir))
    assert model_fingerprint(a, "x") == model_fingerprint(b, "x")
    assert model_fingerprint(a, "x") != model_fingerprint(a, "y")  # another spec (another depth, dtype)
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1e-3
    assert model_fingerprint(a, "x") != model_fingerprint(b, "x")


def _padded(wavs):
    from distill.core.protocol import pad_waveforms

    return pad_waveforms(wavs)
