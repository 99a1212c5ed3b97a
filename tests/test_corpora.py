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


def test_speakers_differ_and_jitter_is_seeded():
    a = Speaker("a", "en-us+m3", 50, 160)
    b = Speaker("b", "en-gb+f2", 70, 140)
    wa1 = speak("left", a, random.Random(1))
    wa2 = speak("left", a, random.Random(1))
    wb = speak("left", b, random.Random(1))
    assert torch.equal(wa1, wa2)
    assert wa1.numel() != wb.numel() or not torch.equal(wa1, wb)


def test_unknown_word_count_is_checked(tmp_path):
    with pytest.raises(ValueError, match="unknown_words"):
        build_speech_commands(SpeechCommandsConfig(out=str(tmp_path), unknown_words=99))
