"""Labelled corpora for utterance classification, split into train / valid / test.

Each reader turns a dataset root in its official layout into a :class:`LabelledCorpus` of
:class:`distill.data.corpus.AudioItem` (``label`` set), so fine-tuning, the paper protocol's stages
and its test accuracy all read the same utterances. A reader is one function plus one line in
:data:`READERS`.

* ``ks``: Speech Commands v0.01 as s3prl's SUPERB KS lays it out (the 10 commands,
  ``_unknown_`` for every other word, ``_silence_`` = 1 s windows of ``_background_noise_``),
  with s3prl's own split (a SHA-1 hash of the speaker prefix: 10 % valid, 10 % discarded, the
  rest train) and its test root: the paper protocol is scored on exactly SUPERB KS's test set.
* ``folders``: any folder whose sub-folder names are the labels (``<root>/<label>/**/*.wav``);
  a seeded split, or a separate test root laid out the same way.
* ``sid``: VoxCeleb1 identification, ``{dev,test}/wav/idXXXXX/<video>/<utt>.wav`` with the split
  file ``iden_split.txt`` (``1|2|3 idXXXXX/<video>/<utt>.wav``: train / valid / test) in the root.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from distill.data.audio import AUDIO_EXTENSIONS, SAMPLE_RATE, AudioError, audio_info
from distill.data.corpus import AudioItem, SkipRecord

log = logging.getLogger(__name__)

KS_CLASSES = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "_unknown_", "_silence_")


@dataclass
class LabelledCorpus:
    """A task's utterances and labels; ``labels`` fixes the class order (the head's outputs)."""

    task: str
    labels: list[str]
    train: list[AudioItem]
    valid: list[AudioItem]
    test: list[AudioItem]
    skipped: list[SkipRecord] = field(default_factory=list)

    def counts(self) -> dict:
        return {"labels": len(self.labels), "train": len(self.train), "valid": len(self.valid),
                "test": len(self.test), "skipped": len(self.skipped)}


def _item(path: Path, label: str, skipped: list[SkipRecord], offset: int = 0, num: int | None = None) -> AudioItem | None:
    try:
        frames, rate = audio_info(path)
    except AudioError as err:
        skipped.append(SkipRecord(err.path, err.reason))
        return None
    n = int(round(frames * SAMPLE_RATE / rate))
    return AudioItem(str(path), n if num is None else min(num, n - offset), label=label, offset=offset)


def _wavs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())


def _ks_split(name: str) -> str:
    """s3prl's (and TensorFlow's) Speech Commands split of a training file name: train, valid or dropped."""
    speaker = re.sub(r"_nohash_.*$", "", name)
    h = int(hashlib.sha1(speaker.encode("utf-8")).hexdigest(), 16)
    percentage = (h % (2 ** 27)) * (100.0 / (2 ** 27 - 1))
    return "valid" if percentage < 10 else ("dropped" if percentage < 20 else "train")


def speech_commands(data: str, test_data: str = "", **_) -> LabelledCorpus:
    from tasks.corpora.layouts import resolve_ks_roots

    train_root, test_root = resolve_ks_roots(data, test_data)
    skipped: list[SkipRecord] = []
    split = {"train": [], "valid": []}
    for word_dir in sorted(p for p in train_root.iterdir() if p.is_dir() and p.name != "_background_noise_"):
        label = word_dir.name if word_dir.name in KS_CLASSES else "_unknown_"
        for wav in sorted(word_dir.glob("*.wav")):
            part = _ks_split(wav.name)
            if part != "dropped" and (item := _item(wav, label, skipped)) is not None:
                split[part].append(item)
    for noise in sorted((train_root / "_background_noise_").glob("*.wav")):  # 1 s windows, in train and valid
        whole = _item(noise, "_silence_", skipped)
        if whole is None:
            continue
        windows = [AudioItem(whole.path, min(SAMPLE_RATE, whole.num_samples - s), label="_silence_", offset=s)
                   for s in range(0, whole.num_samples, SAMPLE_RATE)]
        windows = [w for w in windows if w.num_samples >= SAMPLE_RATE // 10]
        split["train"] += windows
        split["valid"] += windows
    test = [item for label_dir in sorted(p for p in test_root.iterdir() if p.is_dir())
            for wav in sorted(label_dir.glob("*.wav")) if (item := _item(wav, label_dir.name, skipped)) is not None]
    return LabelledCorpus("ks", list(KS_CLASSES), split["train"], split["valid"], test, skipped)


def label_folders(data: str, test_data: str = "", valid_fraction: float = 0.1, test_fraction: float = 0.1,
                  seed: int = 0, **_) -> LabelledCorpus:
    root = Path(data)
    if not root.is_dir():
        raise ValueError(f"labelled folder not found: {root}")
    skipped: list[SkipRecord] = []

    def read(folder: Path) -> list[AudioItem]:
        dirs = sorted(p for p in folder.iterdir() if p.is_dir())
        if not dirs:
            raise ValueError(f"{folder}: expected one sub-folder per label (<root>/<label>/*.wav), found none")
        return [item for d in dirs for wav in _wavs(d) if (item := _item(wav, d.name, skipped)) is not None]

    items = read(root)
    labels = sorted({i.label for i in items})
    rng = random.Random(seed)
    order = list(range(len(items)))
    rng.shuffle(order)
    n_valid = max(1, round(valid_fraction * len(items)))
    n_test = 0 if test_data else max(1, round(test_fraction * len(items)))
    valid = [items[i] for i in sorted(order[:n_valid])]
    test = read(Path(test_data)) if test_data else [items[i] for i in sorted(order[n_valid:n_valid + n_test])]
    train = [items[i] for i in sorted(order[n_valid + n_test:])]
    unknown = {i.label for i in test} - set(labels)
    if unknown:
        raise ValueError(f"{test_data}: test labels {sorted(unknown)} do not occur in {root}")
    return LabelledCorpus("folders", labels, train, valid, test, skipped)


def voxceleb1(data: str, test_data: str = "", split_file: str = "", **_) -> LabelledCorpus:
    root = Path(data)
    split_path = Path(split_file) if split_file else root / "iden_split.txt"
    wav_roots = [root / "dev" / "wav", root / "test" / "wav"]
    if not split_path.is_file() or not any(r.is_dir() for r in wav_roots):
        raise ValueError(f"{root}: not a VoxCeleb1 root; expected dev/wav/idXXXXX/<video>/<utt>.wav (and test/wav/) "
                         f"and the split file iden_split.txt ('1|2|3 idXXXXX/<video>/<utt>.wav' per line) in it")
    skipped: list[SkipRecord] = []
    parts = {"1": [], "2": [], "3": []}
    for n, line in enumerate(split_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or fields[0] not in parts:
            raise ValueError(f"{split_path}, line {n}: expected '1|2|3 idXXXXX/video/utt.wav', got {line!r}")
        which, rel = fields
        path = next((r / rel for r in wav_roots if (r / rel).is_file()), None)
        if path is None:
            skipped.append(SkipRecord(str(wav_roots[0] / rel), "listed in the split file but missing"))
            continue
        if (item := _item(path, rel.split("/")[0], skipped)) is not None:
            parts[which].append(item)
    labels = sorted({i.label for i in parts["1"]})
    return LabelledCorpus("sid", labels, parts["1"], parts["2"], parts["3"], skipped)


READERS: dict[str, Callable[..., LabelledCorpus]] = {"ks": speech_commands, "folders": label_folders,
                                                      "sid": voxceleb1}


def load_labelled(task: str, data: str, test_data: str = "", **options) -> LabelledCorpus:
    """The labelled corpus of ``task`` (a :data:`READERS` key) at ``data``; bad files are skipped and counted."""
    if task not in READERS:
        raise ValueError(f"unknown classification task {task!r}; known: {sorted(READERS)}")
    corpus = READERS[task](data, test_data, **options)
    for s in corpus.skipped:
        log.warning("skipping %s: %s", s.path, s.reason)
    for part in ("train", "valid", "test"):
        if not getattr(corpus, part):
            raise ValueError(f"{data}: the {task} corpus has no {part} utterances")
    stray = {i.label for i in corpus.valid + corpus.test} - set(corpus.labels)
    if stray:
        raise ValueError(f"{data}: labels {sorted(stray)} occur in valid/test but not among {corpus.labels}")
    return corpus
