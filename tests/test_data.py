"""Data layer: bad files are reported and skipped, formats are normalised, batches are bounded."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from distill.data.audio import AudioError, load_audio
from distill.data.corpus import AudioDataset, LengthBucketBatchSampler, collate_audio, list_audio


def _tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture()
def messy_folder(tmp_path):
    d = tmp_path / "audio"
    (d / "sub").mkdir(parents=True)
    sf.write(d / "good.wav", _tone(1.0, 16000), 16000)
    sf.write(d / "sub" / "stereo_44k.wav", np.stack([_tone(0.5, 44100), -_tone(0.5, 44100, 220)], 1), 44100)
    sf.write(d / "sub" / "good.flac", _tone(0.7, 16000), 16000)
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    sf.write(d / "empty.wav", np.zeros(0, np.float32), 16000)
    nan = _tone(0.5, 16000)
    nan[100] = np.nan
    sf.write(d / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(d / "short.wav", _tone(0.01, 16000), 16000)
    return d


def test_load_audio_mixes_and_resamples(messy_folder):
    wav = load_audio(messy_folder / "sub" / "stereo_44k.wav")
    assert wav.dim() == 1 and wav.dtype == torch.float32
    assert abs(wav.numel() - 8000) <= 1  # 0.5 s at 16 kHz
    # the two channels are a 440 Hz tone and an inverted 220 Hz tone: the mix holds both halves
    spec = torch.fft.rfft(wav).abs()
    freqs = torch.fft.rfftfreq(wav.numel(), 1 / 16000)
    for f in (220, 440):
        assert spec[(freqs - f).abs().argmin()] > 0.2 * spec.max()


@pytest.mark.parametrize("name,reason", [("corrupt.wav", "cannot decode|header"), ("empty.wav", "empty"),
                                         ("nan.wav", "NaN"), ("missing.wav", "not found")])
def test_bad_files_raise_naming_the_file(messy_folder, name, reason):
    with pytest.raises(AudioError, match=reason) as err:
        load_audio(messy_folder / name)
    assert name in str(err.value)


def test_bad_files_are_skipped_and_counted(messy_folder):
    items, skipped = list_audio(messy_folder)
    names = {p.split("/")[-1] for p in (i.path for i in items)}
    # header unreadable, or a header saying 0 samples: skipped at scan time
    assert "corrupt.wav" not in names and "empty.wav" not in names and "good.wav" in names
    scan = {s.path.split("/")[-1]: s.reason for s in skipped}
    assert set(scan) == {"corrupt.wav", "empty.wav"} and scan["empty.wav"] == "empty audio (0 samples)"
    ds = AudioDataset(items, min_samples=1600)
    batch = collate_audio([ds[i] for i in range(len(ds))])
    reasons = {s.path.split("/")[-1]: s.reason for s in batch["skipped"]}
    assert set(reasons) == {"nan.wav", "short.wav"}
    assert "too short" in reasons["short.wav"]
    assert batch["wav"].shape[0] == 3  # good.wav, good.flac, stereo_44k.wav
    assert sorted(batch["lengths"].tolist()) == [8000, 11200, 16000]
    for row, n in zip(batch["wav"], batch["lengths"]):
        assert torch.all(row[n:] == 0)


def test_missing_or_empty_sources_are_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        list_audio(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no usable audio"):
        list_audio(tmp_path / "empty")


def test_fairseq_manifest_and_librispeech_transcripts(tmp_path):
    root = tmp_path / "LibriSpeech" / "train-clean-100"
    chap = root / "19" / "198"
    chap.mkdir(parents=True)
    sf.write(chap / "19-198-0000.flac", _tone(0.5, 16000), 16000)
    sf.write(chap / "19-198-0001.flac", _tone(0.3, 16000), 16000)
    (chap / "19-198.trans.txt").write_text("19-198-0000 HELLO WORLD\n19-198-0001 GOOD BYE\n")
    items, _ = list_audio(root)
    assert [i.text for i in items] == ["HELLO WORLD", "GOOD BYE"]
    assert [i.num_samples for i in items] == [8000, 4800]
    manifest = tmp_path / "train.tsv"
    manifest.write_text(f"{root}\n19/198/19-198-0000.flac\t8000\n19/198/19-198-0009.flac\t100\n")
    items, skipped = list_audio(manifest)
    assert [i.num_samples for i in items] == [8000]
    assert skipped[0].reason.startswith("listed in manifest")


def test_random_crops_are_deterministic(tmp_path):
    sf.write(tmp_path / "a.wav", np.random.default_rng(0).standard_normal(32000).astype(np.float32) * 0.1, 16000)
    items, _ = list_audio(tmp_path)
    a = AudioDataset(items, max_samples=8000, seed=3)
    b = AudioDataset(items, max_samples=8000, seed=3)
    assert torch.equal(a[0]["wav"], b[0]["wav"]) and a[0]["wav"].numel() == 8000
    b.set_epoch(1)
    assert not torch.equal(a[0]["wav"], b[0]["wav"])  # a new epoch draws a new crop


def test_batches_bounded_by_total_samples_and_sharded():
    rng = np.random.default_rng(0)
    lengths = rng.integers(8000, 64000, size=200).tolist()
    cap = 160000
    s = LengthBucketBatchSampler(lengths, cap, seed=1)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(200))  # every utterance once
    for b in batches:
        assert max(lengths[i] for i in b) * len(b) <= cap
    assert max(len(b) for b in batches) > 2 * min(len(b) for b in batches)  # short clips pack denser
    assert list(LengthBucketBatchSampler(lengths, cap, seed=1)) == batches  # deterministic
    s.set_epoch(1)
    assert list(s) != batches
    r0 = LengthBucketBatchSampler(lengths, cap, seed=1, num_replicas=2, rank=0)
    r1 = LengthBucketBatchSampler(lengths, cap, seed=1, num_replicas=2, rank=1)
    b0, b1 = list(r0), list(r1)
    assert len(b0) == len(b1) == len(r0)  # equal step counts on both ranks
    # the two ranks split the epoch's batches: together every batch, no batch on both, and at most one
    # batch repeated to even them out
    ours = [tuple(b) for b in batches]
    split = [tuple(b) for b in b0 + b1]
    assert set(split) == set(ours) and len(split) - len(ours) <= 1
    assert not set(map(tuple, b0)) & set(map(tuple, b1)) or len(split) > len(ours)
    assert sorted(i for b in set(split) for i in b) == list(range(200))  # every utterance exactly once
    r0.start_batch = 3
    assert list(r0) == r0.rank_batches()[3:]


def test_a_window_of_a_long_file_is_read_alone(tmp_path):
    """A crop of a 10-minute file costs the crop, not the file; the samples are those of a full read."""
    import tracemalloc

    from distill.data.corpus import segment_spans

    rng = np.random.default_rng(0)
    long = rng.standard_normal(600 * 16000).astype(np.float32) * 0.1
    sf.write(tmp_path / "long.wav", long, 16000, subtype="PCM_16")
    whole = load_audio(tmp_path / "long.wav")
    tracemalloc.start()
    window = load_audio(tmp_path / "long.wav", start=123_456, num_samples=64000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert torch.equal(window, whole[123_456:123_456 + 64000])
    assert peak < 4 * 64000 * 4  # a few copies of the window (float32), not 38 MB of file
    assert segment_spans(10 * 16000 + 5000, 64000, 1600) == [(0, 64000), (64000, 64000), (128000, 37000)]
    assert segment_spans(2 * 64000 + 1000, 64000, 1600) == [(0, 64000), (64000, 64000)]  # short tail dropped
    assert segment_spans(5000, 64000, 1600) == [(0, 5000)]


def test_no_batch_exceeds_the_budget_even_with_a_40_s_file(tmp_path):
    from distill.data.batches import BatchPlan

    rng = np.random.default_rng(0)
    for name, seconds in (("long40.wav", 40.0), ("a.wav", 1.0), ("b.wav", 2.5), ("c.wav", 0.5)):
        sf.write(tmp_path / name, rng.standard_normal(int(seconds * 16000)).astype(np.float32) * 0.1, 16000)
    items, _ = list_audio(tmp_path)
    budget = 3 * 16000
    with pytest.raises(ValueError, match="exceeds the batch budget"):  # an uncropped 40 s file cannot be batched
        BatchPlan(budget, 64, 0).train_sampler([i.num_samples for i in items])
    ds = AudioDataset(items, max_samples=budget, seed=0)  # training crops at most the budget
    for multiple, replicas in ((1, 1), (2, 1), (1, 2)):
        for rank in range(replicas):
            sampler = BatchPlan(budget, 64, 0, replicas, rank, multiple).train_sampler(
                [ds.cropped_length(i) for i in range(len(ds))])
            for indices in sampler:
                batch = collate_audio([ds[i] for i in indices])
                assert batch["wav"].numel() <= budget
            assert len(sampler) % multiple == 0  # whole accumulation windows per epoch and rank
