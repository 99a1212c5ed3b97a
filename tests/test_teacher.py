"""Teacher wrapper on every architecture, loaded back from a user's local folder."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel

from distill.models.teacher import load_teacher

from .conftest import save_tiny_model

ARCHS = ["wav2vec2", "hubert", "wavlm", "data2vec-audio", "whisper"]


def _batch(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    wav = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        wav[i, :n] = 0.1 * torch.randn(n, generator=g)
    return wav, torch.tensor(lengths)


@pytest.mark.parametrize("arch,overrides", [(a, {}) for a in ARCHS] + [
    # "large"-style: layer-norm CNN (batched) and pre-LN stable-layer-norm encoder
    ("wav2vec2", {"feat_extract_norm": "layer", "do_stable_layer_norm": True}),
    ("hubert", {"feat_extract_norm": "layer", "do_stable_layer_norm": True}),
])
def test_local_folder_teacher(arch, overrides, tmp_path):
    folder = save_tiny_model(arch, tmp_path / arch, **overrides)
    teacher = load_teacher(str(folder))
    info = teacher.info
    assert info.num_layers == 3 and info.dim == 32 and info.hop == 320
    assert info.params_frontend > 0 and info.params_stack > 0
    assert not any(p.requires_grad for p in teacher.parameters())

    lengths = [16000, 9000, 4000]
    wav, lens = _batch(lengths)
    states, frame_lengths = teacher(wav, lens)
    assert len(states) == info.num_layers + 1
    expected_frames = [(n // 160 - 1) // 2 + 1 for n in lengths] if arch == "whisper" else [(n - 400) // 320 + 1 for n in lengths]
    assert frame_lengths.tolist() == expected_frames
    for s in states:
        assert s.shape == (3, max(expected_frames), 32)
        assert torch.isfinite(s).all()

    # padded batch == each utterance alone
    for i, n in enumerate(lengths):
        alone, fl = teacher(wav[i:i + 1, :n], lens[i:i + 1])
        for layer in range(len(states)):
            torch.testing.assert_close(states[layer][i, : fl[0]], alone[layer][0], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["wav2vec2", "hubert", "wavlm", "data2vec-audio"])
def test_hidden_states_match_hf(arch, tmp_path):
    """On an unpadded utterance the wrapper returns exactly what the HF model returns."""
    folder = save_tiny_model(arch, tmp_path / arch)
    teacher = load_teacher(str(folder))
    hf = AutoModel.from_pretrained(folder).eval()
    wav, lens = _batch([12000])
    ours, _ = teacher(wav, lens)
    with torch.no_grad():
        ref = hf(wav, output_hidden_states=True).hidden_states
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_bad_shapes_are_clear_errors(tiny_whisper_dir):
    teacher = load_teacher(str(tiny_whisper_dir))
    with pytest.raises(ValueError, match="batch, samples"):
        teacher(torch.zeros(16000))
    with pytest.raises(ValueError, match="lengths"):
        teacher(torch.zeros(2, 16000), torch.tensor([16000, 20000]))
    with pytest.raises(ValueError, match="at most 1500"):
        teacher(torch.zeros(1, 16000 * 31))


def test_bfloat16_forward_stays_close(tiny_whisper_dir):
    wav, lens = _batch([16000])
    full, _ = load_teacher(str(tiny_whisper_dir))(wav, lens)
    half, _ = load_teacher(str(tiny_whisper_dir), dtype="bfloat16")(wav, lens)
    assert half[-1].dtype == torch.float32
    assert not torch.equal(full[-1], half[-1])  # really ran in reduced precision
    torch.testing.assert_close(half[-1], full[-1], atol=0.1, rtol=0.05)


def test_missing_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        load_teacher(str(tmp_path / "empty"))


def test_s3prl_upstream_teacher():
    """``s3prl:<name>`` goes through s3prl's hub (fbank needs no checkpoint download)."""
    import students

    teacher = load_teacher("s3prl:fbank")
    wav, lens = _batch([16000, 8000])
    states, frame_lengths = teacher(wav, lens)
    assert teacher.num_layers == 0 and len(states) == 1
    assert states[0].shape == (2, 100, 240) and frame_lengths.tolist() == [100, 50]
    assert teacher.info.hop == 160
    with pytest.raises(ValueError, match="no reusable frontend"):
        students.mimic_from_teacher(teacher)
