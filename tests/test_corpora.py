"""Synthetic corpora: official layouts (as s3prl parses them), seeded, cached, noise at a chosen SNR."""

from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
import torch

from distill.data.corpus import list_audio
from tasks.corpora.synth import Speaker, add_noise, speak
from tasks.corpora.synthetic import COMMANDS, SpeechCommandsConfig, build_speech_commands


def test_speech_commands_layout_is_what_s3prl_reads(ks_corpus):
    from s3prl.dataio.corpus.speech_commands import SpeechCommandsV1

    corpus = SpeechCommandsV1(str(ks_corpus / "train"), str(ks_corpus / "test"))
    train, valid, test = corpus.data_split
    assert 0 < len(valid) < len(train)  # the sha1 speaker split put some speakers aside
    labels = Counter(v["class_name"] for v in test.values())
    assert set(labels) == set(COMMANDS) | {"_unknown_", "_silence_"}
    train_labels = {v["class_name"] for v in train.values()}
    assert "_unknown_" in train_labels and "_silence_" in train_labels
    train_speakers = {p.name.split("_nohash_")[0] for p in (ks_corpus / "train").rglob("*_nohash_*.wav")}
    test_speakers = {p.name.split("_nohash_")[0] for p in (ks_corpus / "test").rglob("*_nohash_*.wav")}
    assert train_speakers.isdisjoint(test_speakers)
    info = sf.info(str(next((ks_corpus / "train" / "yes").glob("*.wav"))))
    assert (info.samplerate, info.frames, info.channels) == (16000, 16000, 1)
    for bg in (ks_corpus / "train" / "_background_noise_").glob("*.wav"):
        assert sf.info(str(bg)).frames >= 16000


def test_sentences_corpus_is_a_librispeech_tree(sentences_corpus):
    items, skipped = list_audio(sentences_corpus)
    assert len(items) == 16 and not skipped
    assert all(i.text and i.text.isupper() for i in items)
    assert all(i.num_samples > 8000 for i in items)


def test_cached_and_deterministic(tmp_path):
    def build(out):
        cfg = SpeechCommandsConfig(out=str(out), train_speakers=2, test_speakers=1, unknown_words=1,
                                   test_unknown_per_speaker=1, test_silence=1, background_seconds=1, workers=1)
        build_speech_commands(cfg)
        return out / "train" / "yes"
    a = build(tmp_path / "a")
    first = sorted(a.glob("*.wav"))
    mtimes = [p.stat().st_mtime_ns for p in first]
    build(tmp_path / "a")  # cached: nothing rewritten
    assert [p.stat().st_mtime_ns for p in first] == mtimes
    (tmp_path / "x").mkdir()
    build(tmp_path / "x" / ".." / "a")  # the same folder spelled otherwise: still cached
    assert [p.stat().st_mtime_ns for p in first] == mtimes
    b = build(tmp_path / "b")
    for p in first:
        assert (b / p.name).read_bytes() == p.read_bytes()
    meta = json.loads((tmp_path / "a" / "corpus.json").read_text())
    assert meta["config"]["train_speakers"] == 2


def test_noise_is_added_at_the_requested_snr():
    rng = np.random.default_rng(0)
    t = torch.arange(16000) / 16000
    clean = 0.05 * torch.sin(2 * torch.pi * 300 * t)  # quiet: the mix needs no anti-clipping rescale
    for snr in (0.0, 10.0):
        noisy = add_noise(clean, snr, "white", rng)
        measured = 10 * torch.log10((clean ** 2).mean() / ((noisy - clean) ** 2).mean())
        assert abs(float(measured) - snr) < 0.3


def _median_f0(wav: torch.Tensor) -> float:
    """Median pitch over the voiced part, by torchaudio's own detector (independent of the synthesiser)."""
    import torchaudio

    f0 = torchaudio.functional.detect_pitch_frequency(wav[None], 16000, freq_low=60, freq_high=400)[0]
    return float(f0.median())


def test_speakers_pitch_and_speed_move_the_voice_as_set_and_jitter_is_seeded():
    text = "seven small birds were singing"
    low, high = Speaker("low", "en-us+m3", 20, 160), Speaker("high", "en-us+m3", 80, 160)
    f_low = _median_f0(speak(text, low, random.Random(0), pitch_jitter=0, speed_jitter=0))
    f_high = _median_f0(speak(text, high, random.Random(0), pitch_jitter=0, speed_jitter=0))
    assert f_high > 1.2 * f_low  # a higher espeak pitch is a higher voice
    slow, fast = Speaker("slow", "en-us+m3", 50, 110), Speaker("fast", "en-us+m3", 50, 220)
    n_slow = speak(text, slow, random.Random(0), pitch_jitter=0, speed_jitter=0).numel()
    n_fast = speak(text, fast, random.Random(0), pitch_jitter=0, speed_jitter=0).numel()
    assert n_slow > 1.5 * n_fast  # twice the words per minute: well under the duration
    a = Speaker("a", "en-us+m3", 50, 160)
    assert torch.equal(speak("left", a, random.Random(1)), speak("left", a, random.Random(1)))  # seeded
    draws = {speak("left", a, random.Random(seed)).numel() for seed in range(6)}
    assert len(draws) > 1  # the jitter does move the speed between utterances


def test_unknown_word_count_is_checked(tmp_path):
    with pytest.raises(ValueError, match="unknown_words"):
        build_speech_commands(SpeechCommandsConfig(out=str(tmp_path), unknown_words=99))
