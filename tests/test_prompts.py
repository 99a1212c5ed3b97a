"""Real recorded speech: G.722 decoding, the prompts corpus (manifest, splits, LibriSpeech layout), WER."""

from __future__ import annotations

import gzip
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from distill.core.text import normalise_words, number_words, word_error_rate, word_errors
from distill.data.audio import AudioError
from distill.data.corpus import list_audio
from tasks.corpora.g722 import decode_g722
from tasks.corpora.prompts import PromptsConfig, build_prompts, held_out, manifest_rows

ALLISON = Path("/usr/share/asterisk/sounds/en_US_f_Allison")


def test_g722_decodes_at_16_khz_two_samples_per_byte():
    f = ALLISON / "agent-alreadyon.g722"
    wav = decode_g722(f)
    assert wav.dtype == np.float32 and wav.shape == (2 * f.stat().st_size,)
    assert 0.05 < np.abs(wav).max() <= 1.0 and np.sqrt(np.mean(wav**2)) > 0.01  # speech, not silence


def test_g722_errors_name_the_file(tmp_path):
    empty = tmp_path / "empty.g722"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match=f"{empty}: no audio decoded"):
        decode_g722(empty)
    with pytest.raises(AudioError, match="file not found"):
        decode_g722(tmp_path / "missing.g722")


@pytest.fixture()
def fake_sounds(tmp_path):
    """An Asterisk layout with real files, a tone, a silence, a file without a transcript and an empty file."""
    voice = tmp_path / "sounds" / "en_US_f_Allison"
    (voice / "digits").mkdir(parents=True)
    for name in ("agent-alreadyon", "auth-thankyou", "conf-muted", "beep", "hello-world"):
        shutil.copy(ALLISON / f"{name}.g722", voice / f"{name}.g722")
    shutil.copy(ALLISON / "digits" / "5.g722", voice / "digits" / "5.g722")
    shutil.copy(ALLISON / "silence" / "1.g722", voice / "quiet.g722")
    (voice / "broken.g722").write_bytes(b"")
    docs = tmp_path / "doc" / "asterisk-core-sounds-en"
    docs.mkdir(parents=True)
    lines = ["; Core Asterisk Sounds in English", "",
             ("agent-alreadyon: That agent is already logged on.  Please enter your agent number followed by the "
              "pound key."), "auth-thankyou: Thank you.",
             "conf-muted: You are now muted", "beep: [this is a simple beep tone]", "digits/5: five",
             "quiet: [1 second of silence]x", "broken: Broken.", "hello-world: Hello, world # 2."]
    with gzip.open(docs / "core-sounds-en.txt.gz", "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    return tmp_path


def test_build_prompts_writes_manifest_splits_and_librispeech(fake_sounds):
    cfg = PromptsConfig(out=str(fake_sounds / "out"), languages=["en"], sounds=str(fake_sounds / "sounds"),
                        transcripts=str(fake_sounds / "doc"), heldout_fraction=0.5, lexicon=False)
    out = build_prompts(cfg)
    rows = {r["file"].split("/")[-1]: r for r in manifest_rows(out)}
    # the tone is dropped, the silent file too (its transcript is not a note), the empty file is counted
    assert set(rows) == {"agent-alreadyon.wav", "auth-thankyou.wav", "conf-muted.wav", "5.wav", "hello-world.wav"}
    import json

    counts = json.loads((out / "corpus.json").read_text())["counts"]
    assert (counts["tones"], counts["silence"], counts["undecodable"], counts["written"]) == (1, 1, 1, 5)
    assert counts["skipped"][0]["path"].endswith("broken.g722")
    for name, row in rows.items():
        stem = name[:-4] if name != "5.wav" else "digits/5"
        assert row["split"] == ("heldout" if held_out(stem, 0, 0.5) else "train")
        assert row["file"].startswith(f"{row['split']}/en/en_US_f_Allison/")
        wav, rate = sf.read(row["path"], dtype="float32")
        ref = decode_g722(fake_sounds / "sounds" / "en_US_f_Allison" / f"{stem}.g722")
        assert rate == 16000 and row["seconds"] == pytest.approx(ref.size / 16000, abs=1e-3)
        np.testing.assert_allclose(wav, ref, atol=1 / 32768)  # 16-bit PCM of the decoded samples
    assert rows["5.wav"]["file"].endswith("/digits/5.wav") and rows["5.wav"]["text"] == "five"
    # LibriSpeech layout: exact transcripts (numbers spelled out, # = pound), readable by the data layer
    texts = {Path(i.path).name: i.text for i in list_audio(out / "LibriSpeech")[0]}
    assert sorted(texts.values()) == sorted([
        "THAT AGENT IS ALREADY LOGGED ON PLEASE ENTER YOUR AGENT NUMBER FOLLOWED BY THE POUND KEY",
        "THANK YOU", "YOU ARE NOW MUTED", "FIVE", "HELLO WORLD POUND TWO"])
    n_held = sum(r["split"] == "heldout" for r in rows.values())
    parts = {p.name: len(list(p.rglob("*.flac"))) for p in (out / "LibriSpeech").iterdir() if p.is_dir()}
    assert parts.get("train-clean-100", 0) == 5 - n_held
    assert parts.get("dev-clean", 0) + parts.get("test-clean", 0) == n_held
    assert (out / "LibriSpeech" / "SPEAKERS.TXT").is_file()
    mtime = (out / "manifest.tsv").stat().st_mtime_ns
    assert build_prompts(cfg) == out and (out / "manifest.tsv").stat().st_mtime_ns == mtime  # cached


def test_the_heldout_split_is_seeded_and_near_its_fraction():
    names = [f"prompt-{i}" for i in range(4000)]
    share = sum(held_out(n, 0, 0.15) for n in names) / len(names)
    assert 0.13 < share < 0.17
    assert [held_out(n, 0, 0.15) for n in names] == [held_out(n, 0, 0.15) for n in names]
    assert [held_out(n, 0, 0.15) for n in names] != [held_out(n, 1, 0.15) for n in names]


def test_real_prompts_corpus_slice(prompts_corpus):
    rows = manifest_rows(prompts_corpus)
    assert {r["language"] for r in rows} == {"en", "es"}
    assert {r["voice"] for r in rows} == {"en_US_f_Allison", "es_MX_f_Allison"}
    assert all(r["seconds"] > 0.2 and not r["text"].startswith(("[", "<", "(")) for r in rows)
    assert {r["split"] for r in rows} == {"train", "heldout"}


def test_number_words_and_normalisation():
    assert number_words(0) == "zero" and number_words(42) == "forty two"
    assert number_words(1205) == "one thousand two hundred five"
    assert number_words(3_000_017) == "three million seventeen"
    assert normalise_words("Press 1, or # [pound] to <beep> exit!") == "press one or pound to exit".split()
    assert normalise_words("Don't stop.") == ["don't", "stop"]
    assert normalise_words("Введите номер") == ["введите", "номер"]  # other alphabets are words too


def test_word_errors_against_editdistance():
    editdistance = pytest.importorskip("editdistance")
    rng = random.Random(0)
    vocab = "a b c d e".split()
    for _ in range(200):
        ref = [rng.choice(vocab) for _ in range(rng.randint(0, 8))]
        hyp = [rng.choice(vocab) for _ in range(rng.randint(0, 8))]
        assert word_errors(ref, hyp) == editdistance.eval(ref, hyp)
    r = word_error_rate(["the cat sat", "press 1"], ["the cat sat down", "press one"])
    assert (r["errors"], r["words"], r["wer"]) == (1, 5, 0.2)


@pytest.mark.slow
def test_the_english_prompts_feed_the_asr_task(prompts_corpus, tiny_whisper_dir, tmp_path):
    """The LibriSpeech layout of the real prompts is what s3prl's ASR recipe reads: it runs, scored on test-clean."""
    from tasks.superb.suite import EvaluateConfig, evaluate

    m = evaluate(EvaluateConfig(task="asr", model=str(tiny_whisper_dir), data=str(prompts_corpus), out=str(tmp_path / "asr"),
                                steps=2, eval_every=2, batch_size=2, rnn_hidden=8))
    test_clean = list((prompts_corpus / "LibriSpeech" / "test-clean").rglob("*.flac"))
    assert m["metric"] == "wer" and m["test_n"] == len(test_clean) > 0
