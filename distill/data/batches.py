"""Where a training batch's input and teacher targets come from: the teacher, or the cache.

Both sources hand the loop the same :class:`Batch`: the student's input (the frontend output
``(batch, frames, dim)`` when the student shares the teacher's frozen frontend, else the
waveforms ``(batch, samples)``), the teacher's targets and the frame lengths. The loop does
not know which source it reads.

* :class:`OnlineSource`: random crops of the audio; the teacher runs on every batch.
* :class:`CachedSource`: the deterministic segments of :mod:`distill.data.cache`; nothing runs
  but the student.

Both shard batches over processes the same way (:class:`distill.data.corpus.LengthBucketBatchSampler`):
equal counts on every rank, padded so an optimizer step covers the same batches for any split
between processes and gradient accumulation; validation is the first window of each held-out
utterance, in both sources, and is never padded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from distill.core.protocol import TeacherTargets, pad_waveforms
from distill.data.audio import SAMPLE_RATE, AudioError
from distill.data.cache import FEATURES, TargetCache
from distill.data.corpus import (
    AudioDataset,
    AudioItem,
    LengthBucketBatchSampler,
    SkipRecord,
    collate_audio,
    load_segments,
)


@dataclass
class Batch:
    """One batch, ready for the student (see the module docstring).

    ``inputs``: features ``(batch, frames, dim)`` or waveforms ``(batch, samples)``;
    ``input_lengths``: their valid lengths ``(batch,)``; ``frame_lengths (batch,)``: valid frames of
    the targets; ``empty``: every file of the batch was bad (a silent stand-in keeps processes in step);
    ``labels``: each utterance's label when the corpus has them.
    """

    inputs: torch.Tensor
    input_lengths: torch.Tensor
    targets: TeacherTargets
    frame_lengths: torch.Tensor
    audio_seconds: float
    indices: list[int]
    skipped: list[SkipRecord] = field(default_factory=list)
    empty: bool = False
    labels: list[str | None] | None = None  # the items' labels (a labelled corpus), else None


@dataclass
class BatchPlan:
    """How batches are cut and shared out: the settings both sources take from ``train.*``."""

    batch_samples: int
    max_batch_size: int
    seed: int
    num_replicas: int = 1
    rank: int = 0
    grad_accum: int = 1

    def train_sampler(self, lengths: list[int]) -> LengthBucketBatchSampler:
        return LengthBucketBatchSampler(lengths, self.batch_samples, True, self.seed, self.num_replicas, self.rank,
                                        self.max_batch_size, multiple_of=self.grad_accum)

    def valid_sampler(self, lengths: list[int]) -> LengthBucketBatchSampler:
        return LengthBucketBatchSampler(lengths, self.batch_samples, False, self.seed, self.num_replicas, self.rank,
                                        self.max_batch_size, even=False)


class _Source:
    """What both sources share: samplers, epochs, loaders, the held-out files found bad."""

    kind = ""
    valid_skipped: dict[str, str]
    train_ds: Dataset
    valid_ds: Dataset
    sampler: LengthBucketBatchSampler
    valid_sampler: LengthBucketBatchSampler

    def _loader(self, ds, sampler, collate) -> DataLoader:
        return DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=self.num_workers)

    def batches_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch()

    def train_batches(self, epoch: int, start_batch: int = 0):
        """This rank's batches of ``epoch`` from its ``start_batch``-th on, as :class:`Batch`."""
        self.sampler.set_epoch(epoch)
        self.sampler.start_batch = start_batch
        if hasattr(self.train_ds, "set_epoch"):
            self.train_ds.set_epoch(epoch)
        for raw in self._loader(self.train_ds, self.sampler, self.collate):
            yield self.prepare(raw)

    def valid_batches(self):
        """This rank's held-out batches; files found bad are noted in ``valid_skipped`` (path -> reason)."""
        for raw in self._loader(self.valid_ds, self.valid_sampler, self.collate):
            for s in raw.get("skipped", []):
                self.valid_skipped[s.path] = s.reason
            batch = self.prepare(raw)
            if not batch.empty:
                yield batch


class OnlineSource(_Source):
    """Audio batches whose targets the teacher computes as they come (``targets=False``: its frontend output only)."""

    kind = "online"

    def __init__(self, teacher, train_items: list[AudioItem], valid_items: list[AudioItem], plan: BatchPlan,
                 crop_samples: int, min_samples: int, share_frontend: bool, device, num_workers: int = 0,
                 targets: bool = True):
        self.teacher, self.share_frontend, self.device, self.num_workers = teacher, share_frontend, device, num_workers
        self.valid_skipped = {}
        self.targets = targets  # False: the frontend output alone (classification), no teacher states
        self.train_ds = AudioDataset(train_items, crop_samples, min_samples, True, plan.seed)
        self.valid_ds = AudioDataset(valid_items, crop_samples, min_samples, False, plan.seed)
        self.sampler = plan.train_sampler([self.train_ds.cropped_length(i) for i in range(len(self.train_ds))])
        self.valid_sampler = plan.valid_sampler([self.valid_ds.cropped_length(i) for i in range(len(self.valid_ds))])
        self.collate = collate_audio

    def prepare(self, raw: dict) -> Batch:
        wav, lengths, empty = raw["wav"], raw["lengths"], raw["wav"] is None
        if empty:  # every file of the batch was bad: a silent stand-in so every process steps alike
            wav, lengths = torch.zeros(1, SAMPLE_RATE), torch.tensor([SAMPLE_RATE])
        wav, lengths = wav.to(self.device), lengths.to(self.device)
        if self.targets:
            feats, states, frame_lengths = self.teacher.features_and_states(wav, lengths)
            targets = TeacherTargets(states, frame_lengths, self.teacher.final_norm)
        else:
            with torch.no_grad():
                feats, frame_lengths = self.teacher.frontend(wav, lengths)
            targets = TeacherTargets({}, frame_lengths, num_layers=self.teacher.num_layers)
        inputs, input_lengths = (feats, frame_lengths) if self.share_frontend else (wav, lengths)
        seconds = 0.0 if empty else float(lengths.sum()) / SAMPLE_RATE
        return Batch(inputs, input_lengths, targets, frame_lengths, seconds, raw["indices"], raw["skipped"], empty,
                     _labels(raw["labels"]))


class CachedSegments(Dataset):
    """Segments of a :class:`~distill.data.cache.TargetCache` as ``{"index", "targets" (frames, slots, dim) f16, "label"}``.

    ``slots``: the cached slots to read (the frontend output and the layers a student needs);
    ``items``: the data list the cache was built on; with ``read_audio`` the segment's waveform
    is read too (a student that trains its frontend).
    """

    def __init__(self, cache: TargetCache, segments: list[int], slots: list, items: list[AudioItem],
                 read_audio: bool = False):
        self.cache, self.segments, self.items, self.read_audio = cache, list(segments), items, read_audio
        self.slot_ids = [cache.slot(s) for s in slots]
        self.all_slots = self.slot_ids == list(range(len(cache.slots)))

    def __len__(self) -> int:
        return len(self.segments)

    def samples(self, j: int) -> int:
        return int(self.cache.index[self.segments[j], 2])

    def __getitem__(self, j: int) -> dict:
        i = self.segments[j]
        view = self.cache.read(i)
        item_id, start, samples = (int(x) for x in self.cache.index[i, :3])
        out = {"index": i, "targets": torch.from_numpy(np.array(view) if self.all_slots else view[:, self.slot_ids]),
               "label": self.items[item_id].label}
        if self.read_audio:
            try:
                out["wav"] = load_segments(self.items[item_id], [(start, samples)])[0]
            except AudioError as err:  # the file changed since the cache was built
                raise ValueError(f"{err}: it was readable when the target cache was built; rebuild the cache") from None
        return out


def collate_cached(examples: list[dict]) -> dict:
    """Pad ``targets`` to ``(batch, frames, slots, dim)`` float16 (+ waveforms when present)."""
    frames = torch.tensor([e["targets"].shape[0] for e in examples])
    first = examples[0]["targets"]
    padded = first.new_zeros((len(examples), int(frames.max())) + tuple(first.shape[1:]))
    for j, e in enumerate(examples):
        padded[j, : e["targets"].shape[0]] = e["targets"]
    out = {"targets": padded, "frame_lengths": frames, "indices": [e["index"] for e in examples],
           "labels": [e["label"] for e in examples]}
    if "wav" in examples[0]:
        out["wav"], out["lengths"] = pad_waveforms([e["wav"] for e in examples])
    return out


class CachedSource(_Source):
    """Batches read from the teacher-target cache; the teacher never runs."""

    kind = "cache"

    def __init__(self, cache: TargetCache, teacher, items: list[AudioItem], train_ids: list[int],
                 valid_ids: list[int], plan: BatchPlan, layers: list[int], share_frontend: bool, device,
                 num_workers: int = 0):
        self.cache, self.device, self.num_workers, self.share_frontend = cache, device, num_workers, share_frontend
        self.valid_skipped = {}
        self.final_norm, self.num_layers = teacher.final_norm, teacher.num_layers
        self.layers = sorted(set(layers))
        self.slots = ([FEATURES] if share_frontend else []) + self.layers
        train = set(train_ids)
        train_segments = [i for i, item in enumerate(cache.index[:, 0].tolist()) if item in train]
        first = cache.first_segments()
        valid_segments = [first[i] for i in sorted(valid_ids) if i in first]
        self.train_ds = CachedSegments(cache, train_segments, self.slots, items, read_audio=not share_frontend)
        self.valid_ds = CachedSegments(cache, valid_segments, self.slots, items, read_audio=not share_frontend)
        self.sampler = plan.train_sampler([self.train_ds.samples(j) for j in range(len(self.train_ds))])
        self.valid_sampler = plan.valid_sampler([self.valid_ds.samples(j) for j in range(len(self.valid_ds))])
        self.collate = collate_cached

    def prepare(self, raw: dict) -> Batch:
        values = raw["targets"].to(self.device, torch.float32)  # (batch, frames, slots, dim)
        frame_lengths = raw["frame_lengths"].to(self.device)
        k = 1 if self.share_frontend else 0
        states = {m: values[:, :, k + j] for j, m in enumerate(self.layers)}
        targets = TeacherTargets(states, frame_lengths, self.final_norm, num_layers=self.num_layers)
        if self.share_frontend:
            inputs, input_lengths = values[:, :, 0], frame_lengths
        else:
            inputs, input_lengths = raw["wav"].to(self.device), raw["lengths"].to(self.device)
        seconds = float(sum(self.cache.index[i, 2] for i in raw["indices"])) / SAMPLE_RATE
        return Batch(inputs, input_lengths, targets, frame_lengths, seconds, raw["indices"],
                     labels=_labels(raw["labels"]))


def _labels(labels: list) -> list | None:
    return labels if any(label is not None for label in labels) else None
