"""Audio corpora for distillation and analysis.

* :func:`list_audio` reads a folder tree of wav/flac (LibriSpeech trees included: their
  ``*.trans.txt`` transcripts are attached), or a fairseq TSV manifest (first line the root
  folder, then ``relative/path<TAB>num_samples``).
* :class:`AudioDataset` loads, mixes to mono, resamples to 16 kHz and crops; a bad file is
  returned as a skip record (file and reason) instead of raising, so one corrupt file never
  stops a run, and the training loop counts skips in its summary.
* :class:`LengthBucketBatchSampler` forms batches bounded by total (padded) audio samples, not
  by utterance count, from length-sorted buckets; deterministic given seed and epoch; shards
  batches over processes and can start mid-epoch (resume).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import DataLoader, Dataset, Sampler

from distill.core.protocol import pad_waveforms
from distill.data.audio import AUDIO_EXTENSIONS, SAMPLE_RATE, AudioError, audio_info, load_audio

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioItem:
    """One utterance: its path, its length in 16 kHz samples (from the header), its transcript.

    ``label``: its class in a labelled corpus (:mod:`tasks.corpora.labelled`); ``offset``: where it
    starts in the file, in 16 kHz samples, when an utterance is a window of a longer file (the
    1 s ``_silence_`` windows cut from Speech Commands' background noise).
    """

    path: str
    num_samples: int
    text: str | None = None
    label: str | None = None
    offset: int = 0


@dataclass
class SkipRecord:
    path: str
    reason: str


def _read_manifest(path: Path) -> tuple[list[AudioItem], list[SkipRecord]]:
    lines = path.read_text().splitlines()
    if not lines:
        raise ValueError(f"manifest {path} is empty (expected a root folder on line 1)")
    root = Path(lines[0].strip())
    if not root.is_absolute():
        root = (path.parent / root).resolve()
    if not root.is_dir():
        raise ValueError(f"manifest {path}: root folder {root} does not exist")
    items, skipped = [], []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        try:
            rel, num = parts[0], int(parts[1])
        except (IndexError, ValueError):
            raise ValueError(f"manifest {path}, line {n}: expected 'relative/path<TAB>num_samples', got {line!r}") from None
        full = root / rel
        if not full.is_file():
            skipped.append(SkipRecord(str(full), "listed in manifest but missing"))
            continue
        items.append(AudioItem(str(full), num))
    return items, skipped


def _librispeech_transcripts(root: Path) -> dict[str, str]:
    texts = {}
    for trans in root.rglob("*.trans.txt"):
        for line in trans.read_text().splitlines():
            if " " in line:
                utt, text = line.split(" ", 1)
                texts[str(trans.parent / utt)] = text.strip()
    return texts


def list_audio(source: str | Path | list) -> tuple[list[AudioItem], list[SkipRecord]]:
    """Enumerate the utterances of a folder tree or a ``.tsv`` manifest, sorted by path.

    ``source`` may also be a list of such sources, concatenated in order.
    Returns ``(items, skipped)``: files whose header cannot be read or says 0 samples are
    skipped (and logged) with a reason.
    Raises ``ValueError`` when a source does not exist or holds no audio at all.
    """
    if isinstance(source, (list, tuple)):
        if not source:
            raise ValueError("no audio source given")
        items, skipped = [], []
        for one in source:
            i, s = list_audio(one)
            items += i
            skipped += s
        return items, skipped
    source = Path(source)
    if not source.exists():
        raise ValueError(f"audio source not found: {source}")
    if source.is_file():
        if source.suffix.lower() != ".tsv":
            raise ValueError(f"{source}: expected a folder of audio or a .tsv manifest")
        items, skipped = _read_manifest(source)
    else:
        texts = _librispeech_transcripts(source)
        items, skipped = [], []
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
        for p in files:
            try:
                frames, rate = audio_info(p)
            except AudioError as err:
                skipped.append(SkipRecord(err.path, err.reason))
                continue
            if frames == 0:  # nothing to train on: skipped here, as load_audio would skip it
                skipped.append(SkipRecord(str(p), "empty audio (0 samples)"))
                continue
            n = int(round(frames * SAMPLE_RATE / rate))
            items.append(AudioItem(str(p), n, texts.get(str(p.with_suffix("")))))
    for s in skipped:
        log.warning("skipping %s: %s", s.path, s.reason)
    if not items:
        raise ValueError(f"no usable audio found in {source} ({len(skipped)} unreadable files)")
    return items, skipped


def split_items(items: list[AudioItem], valid_fraction: float, seed: int, max_valid: int | None = None):
    """Deterministic train/validation split of a list of utterances."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_valid = max(1, int(round(len(items) * valid_fraction))) if valid_fraction > 0 else 0
    if max_valid is not None:
        n_valid = min(n_valid, max_valid)
    n_valid = min(n_valid, len(items) - 1)
    valid = sorted(order[:n_valid])
    train = sorted(order[n_valid:])
    return [items[i] for i in train], [items[i] for i in valid]


class AudioDataset(Dataset):
    """Utterances as ``{"wav": (samples,), "index": i}``, or ``{"skip": SkipRecord}`` if bad.

    ``max_samples`` crops longer utterances: at a random offset when ``random_crop`` (drawn
    from ``(seed, epoch, index)``, hence reproducible), else from the start.
    """

    def __init__(self, items: list[AudioItem], max_samples: int | None = None, min_samples: int = 1600,
                 random_crop: bool = True, seed: int = 0):
        self.items = items
        self.max_samples = max_samples
        self.min_samples = min_samples
        self.random_crop = random_crop
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def cropped_length(self, i: int) -> int:
        n = self.items[i].num_samples
        return n if self.max_samples is None else min(n, self.max_samples)

    def window(self, i: int) -> tuple[int, int | None]:
        """``(start, num_samples)`` of what item ``i`` contributes this epoch (``None``: all of it)."""
        n = self.items[i].num_samples
        if self.max_samples is None or n <= self.max_samples:
            return 0, None
        start = 0
        if self.random_crop:
            start = random.Random(f"{self.seed}-{self.epoch}-{i}").randrange(n - self.max_samples + 1)
        return start, self.max_samples

    def __getitem__(self, i: int) -> dict:
        item = self.items[i]
        start, num = self.window(i)
        if item.offset and num is None:  # a window of a longer file: read just the window
            num = item.num_samples
        try:
            wav = load_audio(item.path, min_samples=self.min_samples, start=item.offset + start, num_samples=num)
        except AudioError as err:
            return {"skip": SkipRecord(err.path, err.reason), "index": i}
        # never longer than planned: the batch sampler sized batches by these lengths
        return {"wav": wav[: self.cropped_length(i)], "index": i, "label": item.label}


def segment_spans(num_samples: int, crop: int | None, min_samples: int = 1) -> list[tuple[int, int]]:
    """Deterministic cut of an utterance into ``(start, length)`` windows of ``crop`` samples.

    Consecutive windows from the start; the tail is kept when it holds at least
    ``min_samples``, and an utterance shorter than ``crop`` is one window. The first window is
    the one validation uses (an utterance cropped from its start), so online and cached
    validation see the same audio.
    """
    if num_samples <= 0:
        return []
    if crop is None or num_samples <= crop:
        return [(0, num_samples)]
    spans = [(s, crop) for s in range(0, num_samples - crop + 1, crop)]
    tail = num_samples - len(spans) * crop
    if tail >= min_samples:
        spans.append((len(spans) * crop, tail))
    return spans


def load_segments(item: AudioItem, spans: list[tuple[int, int]], min_samples: int = 1) -> list:
    """The waveforms ``(length,)`` of ``spans`` of ``item``, cut as :class:`AudioDataset` cuts them.

    A 16 kHz file is read window by window (memory bounded by a window); any other file is
    decoded and resampled once. Raises :class:`AudioError` for a bad file.
    """
    _, rate = audio_info(item.path)
    o = item.offset
    if rate == SAMPLE_RATE:
        return [load_audio(item.path, min_samples=min_samples, start=o + s, num_samples=n)[:n] for s, n in spans]
    whole = load_audio(item.path, min_samples=min_samples)
    return [whole[o + s:o + s + n] for s, n in spans]


class SkipTally:
    """Every file skipped in a command: logged once with its reason, counted, reported.

    ``SkipTally(scan_skipped)`` starts from the files whose header could not be read;
    :meth:`note` adds those a batch dropped when loading (empty, NaN, truncated, too short).
    """

    def __init__(self, initial: list[SkipRecord] | None = None):
        self.reasons: dict[str, str] = {s.path: s.reason for s in initial or []}

    def note(self, records: list[SkipRecord]) -> None:
        for s in records:
            if s.path not in self.reasons:
                log.warning("skipping %s: %s", s.path, s.reason)
            self.reasons[s.path] = s.reason

    def __len__(self) -> int:
        return len(self.reasons)


def collate_audio(examples: list[dict]) -> dict:
    """Pad a list of examples into ``wav (batch, samples)`` + ``lengths (batch,)``.

    Skipped examples are dropped and returned under ``"skipped"`` (list of SkipRecord);
    ``wav`` is ``None`` when every example of the batch was bad; ``labels``: the items' labels.
    """
    good = [e for e in examples if "wav" in e]
    skipped = [e["skip"] for e in examples if "skip" in e]
    if not good:
        return {"wav": None, "lengths": None, "indices": [], "labels": [], "skipped": skipped}
    wav, lengths = pad_waveforms([e["wav"] for e in good])
    return {"wav": wav, "lengths": lengths, "indices": [e["index"] for e in good],
            "labels": [e.get("label") for e in good], "skipped": skipped}


class LengthBucketBatchSampler(Sampler[list[int]]):
    """Batches whose padded size ``max_len * batch_size`` stays within ``max_batch_samples``.

    Utterances are sorted by length (ties and order within buckets shuffled by the epoch's
    seed), cut greedily into batches, then the batch order is shuffled. An utterance longer than
    the budget is an error (crop it first): no batch ever exceeds ``max_batch_samples``.

    Distributed runs: with ``even`` (training) the batch list is padded, by repeating batches, to
    a multiple of ``num_replicas * multiple_of`` (``multiple_of``: gradient accumulation steps)
    and rank ``rank`` takes every ``num_replicas``-th batch, so every process runs the same
    number of steps, and an optimizer step covers the same batches whatever the split between
    processes and accumulation (2 processes x 1 = 1 process x 2). Without ``even``
    (validation) nothing is repeated and ranks may get one batch more or less.
    ``start_batch`` skips that many of this rank's batches (mid-epoch resume).
    """

    def __init__(self, lengths: list[int], max_batch_samples: int, shuffle: bool = True, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0, max_batch_size: int | None = None,
                 multiple_of: int = 1, even: bool = True):
        if max_batch_samples <= 0:
            raise ValueError("max_batch_samples must be positive")
        self.lengths = list(lengths)
        longest = max(self.lengths, default=0)
        if longest > max_batch_samples:
            raise ValueError(f"an utterance of {longest} samples exceeds the batch budget of {max_batch_samples} "
                             "samples: crop utterances to at most the budget (crop_seconds <= batch_seconds)")
        self.max_batch_samples = max_batch_samples
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.max_batch_size = max_batch_size
        self.multiple_of = multiple_of
        self.even = even
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _all_batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        keys = [rng.random() if self.shuffle else 0.0 for _ in self.lengths]
        order = sorted(range(len(self.lengths)), key=lambda i: (self.lengths[i], keys[i], i))
        batches, cur, cur_max = [], [], 0
        for i in order:
            n = self.lengths[i]
            new_max = max(cur_max, n)
            too_big = cur and new_max * (len(cur) + 1) > self.max_batch_samples
            too_many = self.max_batch_size is not None and len(cur) >= self.max_batch_size
            if too_big or too_many:
                batches.append(cur)
                cur, new_max = [], n
            cur.append(i)
            cur_max = new_max
        if cur:
            batches.append(cur)
        if self.shuffle:
            rng.shuffle(batches)
        group = self.num_replicas * self.multiple_of
        if self.even and batches and len(batches) % group:
            pad = group - len(batches) % group
            batches += (batches * (pad // len(batches) + 1))[:pad]
        return batches

    def rank_batches(self) -> list[list[int]]:
        return self._all_batches()[self.rank::self.num_replicas]

    def __iter__(self):
        yield from self.rank_batches()[self.start_batch:]

    def __len__(self) -> int:
        return max(0, len(self.rank_batches()) - self.start_batch)

    def batches_per_epoch(self) -> int:
        return len(self.rank_batches())


def analysis_batches(data: list[str], crop_seconds: float, batch_seconds: float, max_utterances: int, seed: int):
    """Deterministic batches over (a seeded subset of) the data, utterances cropped from the start."""
    items, skipped = list_audio(data)
    if max_utterances and len(items) > max_utterances:
        items = sorted(random.Random(seed).sample(items, max_utterances), key=lambda i: i.path)
    crop = int(min(crop_seconds, batch_seconds) * SAMPLE_RATE)  # no batch exceeds the budget
    ds = AudioDataset(items, crop, random_crop=False, seed=seed)
    sampler = LengthBucketBatchSampler([ds.cropped_length(i) for i in range(len(ds))],
                                       int(batch_seconds * SAMPLE_RATE), shuffle=True, seed=seed)
    return DataLoader(ds, batch_sampler=sampler, collate_fn=collate_audio), skipped
