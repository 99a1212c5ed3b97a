"""Synthetic stand-ins for the SUPERB corpora, in their official layouts, made with espeak-ng.

* :func:`build_voxceleb1` (SID): ``{dev,test}/wav/id1XXXX/<video>/<utt>.wav`` and VoxCeleb1's
  identification split file ``iden_split.txt`` (``1|2|3 idXXXXX/<video>/<utt>.wav``: train,
  valid, test). Each speaker is one espeak voice with its own pitch and speed; every speaker
  appears in every split, as in VoxCeleb1 identification.
* :func:`build_fluent_commands` (IC): Fluent Speech Commands' ``wavs/speakers/<spk>/<id>.wav``
  and ``data/{train,valid,test}_data.csv`` (``,path,speakerId,transcription,action,object,location``),
  test speakers disjoint from training ones, every valid/test intent present in train.
* :func:`build_librispeech` (ASR, PR): ``LibriSpeech/{train-clean-100,dev-clean,test-clean}/
  <spk>/<chapter>/<spk>-<chapter>-<utt>.flac`` with ``<spk>-<chapter>.trans.txt`` (the exact
  words spoken), plus ``librispeech-lexicon.txt`` (``WORD<TAB>PH PH ...``) whose phonemes are
  espeak-ng's own for each word, so PR labels are what the synthesiser said.

Seeded and cached like :mod:`tasks.corpora.synthetic`: a finished corpus holds ``corpus.json``.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import random
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tasks.corpora.synth import NOISE_KINDS, VARIANTS, espeak_binary, make_speakers
from tasks.corpora.synthetic import _cached, _run_jobs, _write_meta, random_sentence

log = logging.getLogger(__name__)

SPLIT_CODES = {"train": 1, "valid": 2, "test": 3}


@dataclass
class VoxCelebConfig:
    out: str = field(default="data/voxceleb1", metadata={"help": "output root (dev/, test/, iden_split.txt)"})
    speakers: int = field(default=24, metadata={"help": "speakers (each one espeak voice, pitch and speed)"})
    videos: int = field(default=3, metadata={"help": "'videos' (sessions) per speaker"})
    train_per_speaker: int = 8
    valid_per_speaker: int = 2
    test_per_speaker: int = 3
    min_words: int = 3
    max_words: int = 8
    pitch_jitter: int = 5
    speed_jitter: int = 10
    snr_db: float | None = field(default=20.0, metadata={"help": "noise at this SNR (dB); null = clean"})
    noise_kinds: list[str] = field(default_factory=lambda: list(NOISE_KINDS))
    seed: int = 0
    workers: int = 2


def build_voxceleb1(cfg: VoxCelebConfig) -> Path:
    """Write the SID corpus (unless cached); returns its root."""
    out = Path(cfg.out)
    if _cached(out, cfg):
        log.info("VoxCeleb1-layout corpus cached at %s", out)
        return out
    speakers = make_speakers(cfg.speakers, cfg.seed, prefix="vox")
    jobs, split_lines = [], []
    per_split = {"train": cfg.train_per_speaker, "valid": cfg.valid_per_speaker, "test": cfg.test_per_speaker}
    for s_idx, spk in enumerate(speakers):
        spk_id = f"id{10001 + s_idx}"  # s3prl labels speaker_{id - 10001}
        rng = random.Random(f"vox-{cfg.seed}-{spk_id}")
        videos = [hashlib.sha1(f"{spk_id}-{v}".encode()).hexdigest()[:11] for v in range(cfg.videos)]
        k = 0
        for split, count in per_split.items():
            # VoxCeleb1 keeps its test speakers in test/wav and the rest in dev/wav; identification
            # uses both, so speakers alternate between the two folders.
            folder = "test" if s_idx % 4 == 3 else "dev"
            for _ in range(count):
                video = videos[k % len(videos)]
                rel = f"{spk_id}/{video}/{k + 1:05d}.wav"
                path = out / folder / "wav" / rel
                text = random_sentence(rng, cfg.min_words, cfg.max_words)
                jobs.append((str(path), text, spk, f"{cfg.seed}-{rel}", cfg.snr_db, cfg.noise_kinds, 0,
                             cfg.pitch_jitter, cfg.speed_jitter))
                split_lines.append(f"{SPLIT_CODES[split]} {rel}")
                k += 1
    _run_jobs(jobs, cfg.workers, "voxceleb1")
    (out / "iden_split.txt").write_text("\n".join(split_lines) + "\n")
    _write_meta(out, cfg, {"utterances": len(jobs), "speakers": len(speakers)})
    return out


# Fluent Speech Commands: (action, object, location) intents and phrasings that say them.
_FSC_INTENTS = [
    ("activate", "lights", "none", ["turn on the lights", "switch on the lights", "lights on"]),
    ("deactivate", "lights", "none", ["turn off the lights", "switch off the lights", "lights off"]),
    ("activate", "lights", "kitchen", ["turn on the kitchen lights", "lights on in the kitchen"]),
    ("deactivate", "lights", "kitchen", ["turn off the kitchen lights", "kitchen lights off"]),
    ("activate", "lights", "bedroom", ["turn on the bedroom lights", "lights on in the bedroom"]),
    ("deactivate", "lights", "bedroom", ["turn off the bedroom lights", "bedroom lights off"]),
    ("activate", "lights", "washroom", ["turn on the washroom lights", "washroom lights on"]),
    ("increase", "volume", "none", ["turn up the volume", "louder please", "increase the volume"]),
    ("decrease", "volume", "none", ["turn down the volume", "quieter please", "decrease the volume"]),
    ("increase", "heat", "none", ["turn up the heat", "make it warmer", "increase the temperature"]),
    ("decrease", "heat", "none", ["turn down the heat", "make it cooler", "decrease the temperature"]),
    ("increase", "heat", "kitchen", ["turn up the heat in the kitchen", "warmer in the kitchen"]),
    ("decrease", "heat", "bedroom", ["turn down the heat in the bedroom", "cooler in the bedroom"]),
    ("activate", "music", "none", ["play the music", "start the music", "put on some music"]),
    ("deactivate", "music", "none", ["stop the music", "pause the music", "turn the music off"]),
    ("bring", "newspaper", "none", ["bring me the newspaper", "get the newspaper"]),
    ("bring", "juice", "none", ["bring me some juice", "get me a juice"]),
    ("bring", "shoes", "none", ["bring me my shoes", "fetch my shoes"]),
    ("bring", "socks", "none", ["bring me my socks", "fetch my socks"]),
    ("change language", "Chinese", "none", ["switch the language to chinese", "use chinese"]),
    ("change language", "German", "none", ["switch the language to german", "use german"]),
    ("change language", "English", "none", ["switch the language to english", "use english"]),
    ("activate", "lamp", "none", ["turn on the lamp", "lamp on"]),
    ("deactivate", "lamp", "none", ["turn off the lamp", "lamp off"]),
]


@dataclass
class FluentCommandsConfig:
    out: str = field(default="data/fluent_speech_commands", metadata={"help": "output root (wavs/, data/)"})
    train_speakers: int = 16
    valid_speakers: int = 4
    test_speakers: int = 6
    takes_per_intent: int = field(default=1, metadata={"help": "utterances per speaker and intent"})
    pitch_jitter: int = 8
    speed_jitter: int = 15
    snr_db: float | None = field(default=20.0, metadata={"help": "noise at this SNR (dB); null = clean"})
    noise_kinds: list[str] = field(default_factory=lambda: list(NOISE_KINDS))
    seed: int = 0
    workers: int = 2


def build_fluent_commands(cfg: FluentCommandsConfig) -> Path:
    """Write the IC corpus (unless cached); returns its root."""
    out = Path(cfg.out)
    if _cached(out, cfg):
        log.info("Fluent Speech Commands-layout corpus cached at %s", out)
        return out
    groups = {"train": cfg.train_speakers, "valid": cfg.valid_speakers, "test": cfg.test_speakers}
    jobs, rows = [], {split: [] for split in groups}
    for split, n in groups.items():
        for spk in make_speakers(n, cfg.seed, prefix=f"fsc-{split}"):
            rng = random.Random(f"fsc-{cfg.seed}-{spk.id}")
            for i, (action, obj, location, phrases) in enumerate(_FSC_INTENTS):
                for take in range(cfg.takes_per_intent):
                    text = rng.choice(phrases)
                    uid = hashlib.sha1(f"{spk.id}-{i}-{take}".encode()).hexdigest()[:16]
                    rel = f"wavs/speakers/{spk.id}/{uid}.wav"
                    jobs.append((str(out / rel), text, spk, f"{cfg.seed}-{rel}", cfg.snr_db, cfg.noise_kinds, 0,
                                 cfg.pitch_jitter, cfg.speed_jitter))
                    rows[split].append([rel, spk.id, text, action, obj, location])
    _run_jobs(jobs, cfg.workers, "fluent speech commands")
    (out / "data").mkdir(parents=True, exist_ok=True)
    for split, split_rows in rows.items():
        with open(out / "data" / f"{split}_data.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["", "path", "speakerId", "transcription", "action", "object", "location"])
            for i, row in enumerate(split_rows):
                w.writerow([i, *row])
    _write_meta(out, cfg, {"utterances": len(jobs), "intents": len(_FSC_INTENTS)})
    return out


@dataclass
class LibriSpeechConfig:
    out: str = field(default="data/librispeech", metadata={"help": "output root (LibriSpeech/, lexicon)"})
    train_speakers: int = 16
    dev_speakers: int = 4
    test_speakers: int = 4
    utterances_per_speaker: int = 10
    min_words: int = 4
    max_words: int = 10
    pitch_jitter: int = 8
    speed_jitter: int = 15
    snr_db: float | None = field(default=None, metadata={"help": "noise at this SNR (dB); null = clean"})
    noise_kinds: list[str] = field(default_factory=lambda: list(NOISE_KINDS))
    voice: str = field(default="en-us", metadata={"help": "espeak voice whose phonemes form the lexicon"})
    seed: int = 0
    workers: int = 2


LIBRISPEECH_SPLITS = ("train-clean-100", "dev-clean", "test-clean")
_STRESS = re.compile(r"[',%=_:]")


def espeak_phonemes(word: str, voice: str = "en-us") -> list[str]:
    """espeak-ng's phonemes for ``word`` (ASCII, stress and length marks removed)."""
    proc = subprocess.run([espeak_binary(), "-q", "-x", "--sep= ", "-v", voice, word.lower()],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"espeak-ng could not phonemise {word!r}: {proc.stderr}")
    phones = [_STRESS.sub("", p) for p in proc.stdout.split()]
    return [p for p in phones if p]


def build_librispeech(cfg: LibriSpeechConfig) -> Path:
    """Write the ASR/PR corpus and its lexicon (unless cached); returns the root holding
    ``LibriSpeech/`` and ``librispeech-lexicon.txt``."""
    out = Path(cfg.out)
    if _cached(out, cfg):
        log.info("LibriSpeech-layout corpus cached at %s", out)
        return out
    counts = dict(zip(LIBRISPEECH_SPLITS, (cfg.train_speakers, cfg.dev_speakers, cfg.test_speakers)))
    jobs, transcripts, vocab = [], {}, set()
    speaker_lines = [";ID  |SEX| SUBSET           |MINUTES| NAME"]
    spk_num = 100
    # one accent (the lexicon's), many voice variants: the phonemes spoken are the lexicon's
    voices = [f"{cfg.voice}+{variant}" for variant in VARIANTS]
    for split, n in counts.items():
        for spk in make_speakers(n, cfg.seed, voices, prefix=f"libri-{split}"):
            spk_num += 1
            chapter = 10 * spk_num
            speaker_lines.append(f"{spk_num:<5}| {'F' if spk.voice.split('+')[-1].startswith('f') else 'M'} | "
                                 f"{split:<16} | {cfg.utterances_per_speaker * 0.05:.2f} | espeak {spk.voice}")
            rng = random.Random(f"libri-{cfg.seed}-{split}-{spk.id}")
            for u in range(cfg.utterances_per_speaker):
                utt = f"{spk_num}-{chapter}-{u:04d}"
                text = random_sentence(rng, cfg.min_words, cfg.max_words)
                vocab.update(text.upper().split())
                path = out / "LibriSpeech" / split / str(spk_num) / str(chapter) / f"{utt}.flac"
                transcripts.setdefault(path.parent / f"{spk_num}-{chapter}.trans.txt", []).append(
                    f"{utt} {text.upper()}")
                jobs.append((str(path), text, spk, f"{cfg.seed}-{utt}", cfg.snr_db, cfg.noise_kinds, 0,
                             cfg.pitch_jitter, cfg.speed_jitter))
    _run_jobs(jobs, cfg.workers, "librispeech")
    for path, lines in transcripts.items():
        path.write_text("\n".join(lines) + "\n")
    (out / "LibriSpeech" / "SPEAKERS.TXT").write_text("\n".join(speaker_lines) + "\n")
    lexicon = [f"{word}\t{' '.join(espeak_phonemes(word, cfg.voice))}" for word in sorted(vocab)]
    (out / "librispeech-lexicon.txt").write_text("\n".join(lexicon) + "\n")
    _write_meta(out, cfg, {"utterances": len(jobs), "words": len(vocab)})
    return out


def synthetic_root(task: str) -> str:
    """The synthetic corpus a SUPERB task runs on here, built with its defaults when missing."""
    builders = {"sid": lambda: build_voxceleb1(VoxCelebConfig()),
                "ic": lambda: build_fluent_commands(FluentCommandsConfig()),
                "pr": lambda: build_librispeech(LibriSpeechConfig()),
                "asr": lambda: build_librispeech(LibriSpeechConfig())}
    if task not in builders:
        raise ValueError(f"task {task!r} has no synthetic corpus here (ER has no honest stand-in for acted emotion): "
                         "pass its dataset root (pipeline: --task_data '{%s: /path}')" % task)
    return str(builders[task]())
