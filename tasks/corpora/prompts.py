"""Real recorded speech: Asterisk's telephone prompts (Debian ``asterisk-core-sounds-*``), as a corpus.

Professional speakers read about 2.2 h of prompts in five languages (voices ``en_US_f_Allison``,
``es_MX_f_Allison``, ``fr_CA_f_June``, ``it_IT_m_Carlo``, ``ru_RU_f_IvrvoiceRU``; CC-BY-SA-3.0),
stored as raw G.722 at 16 kHz; the transcripts are ``core-sounds-LANG.txt.gz`` (``name: text``).
:func:`build_prompts` writes::

    <out>/train/<lang>/<voice>/<name>.wav     16 kHz PCM, each prompt whole (under a second to over a minute)
    <out>/heldout/<lang>/<voice>/<name>.wav   a seeded share of the prompts, never used for training
    <out>/manifest.tsv                        file, split, language, voice, seconds, text
    <out>/LibriSpeech/{train-clean-100,dev-clean,test-clean}/1/<chapter>/1-<chapter>-<n>.flac + .trans.txt
                                              the English prompts with exact transcripts (train = train split,
                                              dev / test = the held-out prompts in halves), SPEAKERS.TXT
    <out>/librispeech-lexicon.txt             espeak-ng phonemes of their words (for the PR task)
    <out>/corpus.json                         settings and counts: written, tones, silences, undecodable, ...

Dropped and counted: entries whose transcript is only a bracketed note (``[beep]``: tones and
sound effects), files without a transcript line and near-silent files (``silence/*``), files
that do not decode. The LibriSpeech layout keeps the English prompts whose words are plain
letters after :func:`distill.core.text.normalise_words` (numbers spelled out, ``#`` = "pound").
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from distill.core.fsutil import write_text_atomic
from distill.core.text import normalise_words
from distill.data.audio import AudioError, write_wav
from tasks.corpora.g722 import G722_RATE, decode_g722
from tasks.corpora.synthetic import _cached, _write_meta

log = logging.getLogger(__name__)

LANGUAGES = ("en", "es", "fr", "it", "ru")
SOUNDS = "/usr/share/asterisk/sounds"
TRANSCRIPTS = "/usr/share/doc"
_VOICE_DIR = re.compile(r"^([a-z]{2})_[A-Z]{2}_[fm]_\w+$")
_ONLY_NOTE = re.compile(r"^\s*(\[[^\]]*\]|<[^>]*>|\([^)]*\))\s*$")  # [beep], <beep ascending>, (beep)
_LETTERS = re.compile(r"^[a-z']+$")


@dataclass
class PromptsConfig:
    out: str = field(default="data/prompts", metadata={"help": "output folder (train/, heldout/, LibriSpeech/)"})
    languages: list[str] = field(default_factory=lambda: list(LANGUAGES),
                                 metadata={"help": "languages to write (en, es, fr, it, ru)"})
    sounds: str = field(default=SOUNDS, metadata={"help": "Asterisk sounds folder (<lang>_<REGION>_<sex>_<voice>/)"})
    transcripts: str = field(default=TRANSCRIPTS, metadata={
        "help": "folder holding asterisk-core-sounds-LANG/core-sounds-LANG.txt.gz"})
    heldout_fraction: float = field(default=0.15, metadata={"help": "share of prompts held out (by name hash)"})
    silence_dbfs: float = field(default=-45.0, metadata={"help": "files whose RMS is below this (dBFS) are silence"})
    max_files: int = field(default=0, metadata={"help": "at most this many prompts per language (0: all; tests)"})
    lexicon: bool = field(default=True, metadata={"help": "write the espeak-ng phoneme lexicon (PR task)"})
    seed: int = 0


@dataclass
class Prompt:
    name: str  # as in the transcript: "digits/5"
    language: str
    voice: str
    text: str
    source: Path


def voice_folder(sounds: Path, language: str) -> Path:
    """The one ``<lang>_<REGION>_<sex>_<Voice>`` folder of ``language`` under ``sounds``."""
    found = sorted(p for p in sounds.glob(f"{language}_*") if p.is_dir() and _VOICE_DIR.match(p.name)
                   and any(p.rglob("*.g722")))
    if not found:
        raise ValueError(f"no G.722 prompts for {language!r} under {sounds}: install Debian's "
                         f"asterisk-core-sounds-{language}-g722 (scripts/setup.sh does)")
    if len(found) > 1:
        raise ValueError(f"{sounds} holds several {language} voices ({[p.name for p in found]}); pass one per language")
    return found[0]


def read_transcripts(path: Path) -> dict[str, str]:
    """``name -> text`` from a ``core-sounds-LANG.txt(.gz)`` file (``;`` comments skipped)."""
    if not path.is_file():
        raise ValueError(f"transcript file not found: {path} (Debian package {path.parent.name})")
    opener = gzip.open if path.suffix == ".gz" else open
    texts = {}
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line or line.startswith(";") or ":" not in line:
                continue
            name, text = line.split(":", 1)
            texts[name.strip()] = text.strip()
    return texts


def is_note(text: str) -> bool:
    """A transcript that is only a note in brackets (``[]``, ``<>``, ``()``): a tone or a sound, not speech."""
    return bool(_ONLY_NOTE.match(text)) or not text.strip()


def held_out(name: str, seed: int, fraction: float) -> bool:
    """Whether prompt ``name`` is held out: a seeded hash, so the split never depends on the file list."""
    digest = hashlib.sha1(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def list_prompts(cfg: PromptsConfig, language: str) -> tuple[list[Prompt], dict[str, int]]:
    """The spoken prompts of ``language`` (tones and untranscribed files set aside, counted)."""
    folder = voice_folder(Path(cfg.sounds), language)
    texts = read_transcripts(Path(cfg.transcripts) / f"asterisk-core-sounds-{language}" /
                             f"core-sounds-{language}.txt.gz")
    counts = {"tones": 0, "no_transcript": 0}
    prompts = []
    for f in sorted(folder.rglob("*.g722")):
        name = f.relative_to(folder).with_suffix("").as_posix()
        text = texts.get(name)
        if text is None:
            counts["no_transcript"] += 1
        elif is_note(text):
            counts["tones"] += 1
        else:
            prompts.append(Prompt(name, language, folder.name, text, f))
    if cfg.max_files:
        prompts = prompts[: cfg.max_files]
    return prompts, counts


def _librispeech_text(text: str) -> str | None:
    words = normalise_words(text)
    if not words or not all(_LETTERS.match(w) for w in words):
        return None  # letters of another alphabet or accents: not a LibriSpeech-style transcript
    return " ".join(words).upper()


def check(cfg: PromptsConfig) -> None:
    unknown = sorted(set(cfg.languages) - set(LANGUAGES))
    if unknown or not cfg.languages:
        raise ValueError(f"--languages must be some of {','.join(LANGUAGES)}, got {cfg.languages}")
    if not 0.0 < cfg.heldout_fraction < 1.0:
        raise ValueError(f"--heldout_fraction must be between 0 and 1, got {cfg.heldout_fraction}")
    if not Path(cfg.sounds).is_dir():
        raise ValueError(f"Asterisk sounds folder not found: {cfg.sounds} (install Debian's "
                         "asterisk-core-sounds-{en,es,fr,it,ru}-g722; scripts/setup.sh does)")


def build_prompts(cfg: PromptsConfig) -> Path:
    """Write the prompts corpus (unless cached with the same settings); returns ``out``."""
    check(cfg)
    out = Path(cfg.out)
    if _cached(out, cfg):
        log.info("prompts corpus cached at %s", out)
        return out
    for sub in ("train", "heldout", "LibriSpeech"):
        shutil.rmtree(out / sub, ignore_errors=True)
    counts = {"tones": 0, "no_transcript": 0, "silence": 0, "undecodable": 0}
    rows, english, skipped = [], [], []
    for language in cfg.languages:
        prompts, c = list_prompts(cfg, language)
        for k, v in c.items():
            counts[k] += v
        for p in tqdm(prompts, desc=f"prompts {language}", unit="file"):
            try:
                wav = decode_g722(p.source)
            except AudioError as err:
                log.warning("skipping %s", err)
                skipped.append({"path": err.path, "reason": err.reason})
                counts["undecodable"] += 1
                continue
            rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) if wav.size else 0.0
            if rms <= 10 ** (cfg.silence_dbfs / 20):
                counts["silence"] += 1
                continue
            split = "heldout" if held_out(p.name, cfg.seed, cfg.heldout_fraction) else "train"
            rel = Path(split) / p.language / p.voice / f"{p.name}.wav"
            write_wav(out / rel, wav, G722_RATE)
            seconds = wav.size / G722_RATE
            rows.append((rel.as_posix(), split, p.language, p.voice, f"{seconds:.3f}", p.text.replace("\t", " ")))
            if p.language == "en":
                english.append((p, rel, split, wav))
    if not rows:
        raise ValueError(f"no prompt could be written from {cfg.sounds} (counts: {counts})")
    header = "file\tsplit\tlanguage\tvoice\tseconds\ttext"
    write_text_atomic(out / "manifest.tsv", "\n".join([header] + ["\t".join(r) for r in rows]) + "\n")
    libri = _write_librispeech(out, english, cfg)
    totals = {}
    for _, split, language, _, seconds, _ in rows:
        key = f"{split}_{language}"
        totals[key] = round(totals.get(key, 0.0) + float(seconds), 3)
    _write_meta(out, cfg, {**counts, "written": len(rows), "seconds": totals, "librispeech": libri,
                           "skipped": skipped})
    log.info("prompts corpus: %d files (%.1f min) in %s; dropped %s", len(rows),
             sum(totals.values()) / 60, out, counts)
    return out


def _write_librispeech(out: Path, english: list, cfg: PromptsConfig) -> dict:
    """The English prompts in LibriSpeech layout (speaker 1; dev / test = the held-out prompts in halves)."""
    import soundfile as sf

    root = out / "LibriSpeech"
    transcripts: dict[Path, list[str]] = {}
    words, counts = set(), {"train-clean-100": 0, "dev-clean": 0, "test-clean": 0, "not_plain_letters": 0}
    held = 0
    for p, _rel, split, wav in english:
        text = _librispeech_text(p.text)
        if text is None:
            counts["not_plain_letters"] += 1
            continue
        if split == "train":
            part, chapter = "train-clean-100", 100
        else:
            part, chapter = ("dev-clean", 200) if held % 2 == 0 else ("test-clean", 300)
            held += 1
        n = counts[part]
        counts[part] += 1
        utt = f"1-{chapter}-{n:04d}"
        path = root / part / "1" / str(chapter) / f"{utt}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), np.clip(wav, -1, 1), G722_RATE, subtype="PCM_16")
        transcripts.setdefault(path.parent / f"1-{chapter}.trans.txt", []).append(f"{utt} {text}")
        words.update(text.split())
    if not transcripts:
        return counts
    for path, lines in transcripts.items():
        path.write_text("\n".join(lines) + "\n")
    (root / "SPEAKERS.TXT").write_text(";ID  |SEX| SUBSET           |MINUTES| NAME\n"
                                       "1    | F | train-clean-100  | 0.00 | Allison (Asterisk en_US_f_Allison)\n")
    if cfg.lexicon:
        from tasks.corpora.superb_corpora import espeak_phonemes

        lexicon = [f"{w}\t{' '.join(espeak_phonemes(w))}" for w in sorted(words)]
        (out / "librispeech-lexicon.txt").write_text("\n".join(lexicon) + "\n")
    counts["words"] = len(words)
    return counts


def manifest_rows(out: str | Path, split: str | None = None, language: str | None = None) -> list[dict]:
    """The rows of a built corpus's ``manifest.tsv`` (optionally one split / language), paths absolute."""
    path = Path(out) / "manifest.tsv"
    if not path.is_file():
        raise ValueError(f"{path} not found: build the corpus first (stackdistill corpus prompts --out {out})")
    lines = path.read_text(encoding="utf-8").splitlines()
    keys = lines[0].split("\t")
    rows = []
    for line in lines[1:]:
        row = dict(zip(keys, line.split("\t")))
        if (split and row["split"] != split) or (language and row["language"] != language):
            continue
        row["path"] = str(Path(out) / row["file"])
        row["seconds"] = float(row["seconds"])
        rows.append(row)
    return rows
