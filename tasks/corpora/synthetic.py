"""Synthetic corpora in the official layouts that s3prl and the data layer read.

* :func:`build_speech_commands`: Speech Commands v0.01 as SUPERB KS reads it. Train root
  ``<word>/<spk>_nohash_<n>.wav`` + ``_background_noise_/*.wav``; test root
  ``<label>/*.wav`` with the 10 commands, ``_unknown_`` and ``_silence_``. Test speakers are
  disjoint from training speakers. 1 s, 16 kHz, 16-bit.
* :func:`build_sentences`: unlabeled read speech for distillation, LibriSpeech layout
  ``<spk>/<chapter>/<spk>-<chapter>-<utt>.flac`` + ``<spk>-<chapter>.trans.txt``.

Both are seeded and cached: a finished corpus holds ``corpus.json`` with its settings, and a
second call with the same settings returns at once.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from distill.core.config import to_dict
from distill.data.audio import SAMPLE_RATE, write_wav
from tasks.corpora.synth import NOISE_KINDS, add_noise, fit_length, make_speakers, noise, speak

log = logging.getLogger(__name__)

COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN_WORDS = ("bed", "bird", "cat", "dog", "eight", "five", "four", "happy", "house", "marvin",
                 "nine", "one", "seven", "sheila", "six", "three", "tree", "two", "wow", "zero")


@dataclass
class SpeechCommandsConfig:
    out: str = field(default="data/speech_commands", metadata={"help": "output folder (train/ and test/ inside)"})
    train_speakers: int = field(default=40, metadata={"help": "speakers in the train root (10% go to valid by hash)"})
    test_speakers: int = field(default=12, metadata={"help": "speakers in the test root, disjoint from train"})
    takes: int = field(default=1, metadata={"help": "utterances per speaker and word (the _nohash_ index)"})
    unknown_words: int = field(default=20, metadata={"help": "how many non-command words form _unknown_"})
    test_unknown_per_speaker: int = field(default=4, metadata={"help": "_unknown_ clips per test speaker"})
    test_silence: int = field(default=30, metadata={"help": "1 s clips in the test _silence_ folder"})
    background_seconds: float = field(default=10.0, metadata={"help": "length of each _background_noise_ file"})
    voices: list[str] = field(default_factory=list, metadata={"help": "espeak voices (empty: accents x variants)"})
    pitch_jitter: int = field(default=8, metadata={"help": "per-utterance pitch jitter (espeak -p units)"})
    speed_jitter: int = field(default=15, metadata={"help": "per-utterance speed jitter (words per minute)"})
    snr_db: float | None = field(default=None, metadata={"help": "add noise at this SNR (dB); null = clean"})
    noise_kinds: list[str] = field(default_factory=lambda: list(NOISE_KINDS), metadata={"help": "noise types mixed in"})
    seed: int = 0
    workers: int = 2


@dataclass
class SentencesConfig:
    out: str = field(default="data/sentences", metadata={"help": "output folder (LibriSpeech layout)"})
    speakers: int = field(default=30, metadata={"help": "number of speakers"})
    utterances_per_speaker: int = field(default=10, metadata={"help": "sentences per speaker"})
    min_words: int = 5
    max_words: int = 14
    voices: list[str] = field(default_factory=list, metadata={"help": "espeak voices (empty: accents x variants)"})
    pitch_jitter: int = 8
    speed_jitter: int = 15
    snr_db: float | None = field(default=None, metadata={"help": "add noise at this SNR (dB); null = clean"})
    noise_kinds: list[str] = field(default_factory=lambda: list(NOISE_KINDS))
    seed: int = 0
    workers: int = 2


# A small vocabulary for sentences; a simple template grammar keeps them speech-like.
_SUBJECTS = ("the man", "a woman", "my friend", "the old dog", "our teacher", "the children", "she", "he",
             "the captain", "a young bird", "the farmer", "his sister", "the doctor", "we", "they")
_VERBS = ("walked to", "looked at", "carried", "found", "painted", "opened", "remembered", "followed",
          "cleaned", "counted", "watched", "bought", "heard", "visited", "left")
_OBJECTS = ("the green house", "a small boat", "seven apples", "the river bank", "an open window",
            "the heavy door", "three yellow chairs", "the market square", "a long letter", "the garden gate",
            "the morning train", "two silver coins", "the quiet library", "a red kite", "the wooden bridge")
_TAILS = ("before dinner", "in the rain", "after school", "near the station", "without a word",
          "on monday", "at noon", "with great care", "yesterday", "every summer", "for an hour", "again")


def random_sentence(rng: random.Random, min_words: int, max_words: int) -> str:
    words = []
    while len(words) < min_words:
        words += f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}".split()
        if rng.random() < 0.7:
            words += rng.choice(_TAILS).split()
        if len(words) < min_words:
            words.append("and")
    return " ".join(words[:max_words])


def _content_settings(config: dict) -> dict:
    """The settings that decide a corpus's audio: not where it is written, nor by how many workers."""
    return {k: v for k, v in config.items() if k not in ("out", "workers")}


def _cached(out: Path, cfg) -> bool:
    meta = out / "corpus.json"
    if not meta.is_file():
        return False
    try:
        saved = json.loads(meta.read_text()).get("config") or {}
    except json.JSONDecodeError:
        return False
    return _content_settings(saved) == _content_settings(to_dict(cfg))


def _render(job: tuple) -> str:
    """Synthesise one clip (runs in a worker process)."""
    path, text, speaker, seed, snr_db, kinds, n_samples, pj, sj = job
    rng = random.Random(seed)
    wav = speak(text, speaker, rng, pj, sj)
    if n_samples:
        wav = fit_length(wav, n_samples, rng)
    if snr_db is not None:
        wav = add_noise(wav, snr_db, rng.choice(kinds), np.random.default_rng(rng.getrandbits(32)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".flac":
        sf.write(str(path), wav.numpy().clip(-1, 1), SAMPLE_RATE, subtype="PCM_16")
    else:
        write_wav(path, wav)
    return str(path)


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _run_jobs(jobs: list[tuple], workers: int, desc: str) -> None:
    # spawn, not fork: forking after torch started its OpenMP pool deadlocks the children
    if workers > 1:
        with mp.get_context("spawn").Pool(workers, initializer=_worker_init) as pool:
            for _ in tqdm(pool.imap_unordered(_render, jobs, chunksize=8), total=len(jobs), desc=desc):
                pass
    else:
        for job in tqdm(jobs, desc=desc):
            _render(job)


def _write_meta(out: Path, cfg, counts: dict) -> None:
    tmp = out / "corpus.json.tmp"
    tmp.write_text(json.dumps({"config": to_dict(cfg), "counts": counts}, indent=2))
    tmp.replace(out / "corpus.json")


def build_speech_commands(cfg: SpeechCommandsConfig) -> tuple[Path, Path]:
    """Write the corpus (unless cached); returns ``(train_root, test_root)``."""
    out = Path(cfg.out)
    train_root, test_root = out / "train", out / "test"
    if _cached(out, cfg):
        log.info("speech commands corpus cached at %s", out)
        return train_root, test_root
    if cfg.unknown_words > len(UNKNOWN_WORDS):
        raise ValueError(f"unknown_words must be <= {len(UNKNOWN_WORDS)}")
    voices = cfg.voices or None
    train_spk = make_speakers(cfg.train_speakers, cfg.seed, voices, prefix="train")
    test_spk = make_speakers(cfg.test_speakers, cfg.seed, voices, prefix="test")
    unknown = UNKNOWN_WORDS[: cfg.unknown_words]
    common = (cfg.snr_db, cfg.noise_kinds, SAMPLE_RATE, cfg.pitch_jitter, cfg.speed_jitter)
    jobs = []
    for spk in train_spk:
        for word in COMMANDS + unknown:
            for take in range(cfg.takes):
                path = train_root / word / f"{spk.id}_nohash_{take}.wav"
                jobs.append((str(path), word, spk, f"{cfg.seed}-{path.relative_to(out)}", *common))
    rng = random.Random(f"test-{cfg.seed}")
    for spk in test_spk:
        for word in COMMANDS:
            path = test_root / word / f"{spk.id}_nohash_0.wav"
            jobs.append((str(path), word, spk, f"{cfg.seed}-{path.relative_to(out)}", *common))
        for k, word in enumerate(rng.sample(unknown, min(cfg.test_unknown_per_speaker, len(unknown)))):
            path = test_root / "_unknown_" / f"{spk.id}_nohash_{k}_{word}.wav"
            jobs.append((str(path), word, spk, f"{cfg.seed}-{path.relative_to(out)}", *common))
    _run_jobs(jobs, cfg.workers, "speech commands")
    nrng = np.random.default_rng(cfg.seed)
    bg = int(cfg.background_seconds * SAMPLE_RATE)
    for kind in NOISE_KINDS:
        write_wav(train_root / "_background_noise_" / f"{kind}_noise.wav", 0.1 * noise(kind, bg, nrng))
    for i in range(cfg.test_silence):
        level = float(nrng.uniform(0.0, 0.1))
        write_wav(test_root / "_silence_" / f"silence_{i:03d}.wav",
                  level * noise(NOISE_KINDS[i % len(NOISE_KINDS)], SAMPLE_RATE, nrng))
    _write_meta(out, cfg, {"clips": len(jobs), "test_silence": cfg.test_silence,
                           "background": len(NOISE_KINDS)})
    return train_root, test_root


def build_sentences(cfg: SentencesConfig) -> Path:
    """Write the unlabeled sentence corpus (unless cached); returns its root."""
    out = Path(cfg.out)
    if _cached(out, cfg):
        log.info("sentence corpus cached at %s", out)
        return out
    speakers = make_speakers(cfg.speakers, cfg.seed, cfg.voices or None, prefix="sent")
    jobs, transcripts = [], {}
    for s_idx, spk in enumerate(speakers):
        spk_num, chapter = 100 + s_idx, 1000 + s_idx
        rng = random.Random(f"sent-{cfg.seed}-{spk.id}")
        for u in range(cfg.utterances_per_speaker):
            utt = f"{spk_num}-{chapter}-{u:04d}"
            text = random_sentence(rng, cfg.min_words, cfg.max_words)
            path = out / str(spk_num) / str(chapter) / f"{utt}.flac"
            transcripts.setdefault(path.parent / f"{spk_num}-{chapter}.trans.txt", []).append(f"{utt} {text.upper()}")
            jobs.append((str(path), text, spk, f"{cfg.seed}-{path.relative_to(out)}", cfg.snr_db, cfg.noise_kinds, 0,
                         cfg.pitch_jitter, cfg.speed_jitter))
    _run_jobs(jobs, cfg.workers, "sentences")
    for path, lines in transcripts.items():
        path.write_text("\n".join(lines) + "\n")
    _write_meta(out, cfg, {"utterances": len(jobs), "speakers": len(speakers)})
    return out
