"""The teacher-target cache: the teacher's hidden states computed once, then read from disk.

Distillation pays the teacher's forward pass on every batch, every epoch, for every student.
The cache pays it once. The training audio is cut into deterministic segments
(:func:`distill.data.segment_spans`: consecutive windows of at most ``crop_seconds``), the
teacher runs over them once, and what the students need is stored as float16 shards that
training memory-maps: the teacher states they regress, plus the frontend output when a student
shares the teacher's frozen frontend (its input). One cache serves any number of epochs and
students.

Folder ``<root>/<teacher>-<base key>/<variant>/``::

    plan.json          the full key, the settings, the shard plan (written before any shard)
    shard_00000.f16    (frames, slots, dim) float16: the shard's segments one after another
    shard_00000.npy    int64 (segments, 5): item, start sample, samples, frames, first frame
    shard_00000.json   written last for the shard: frame count, files skipped (marks it complete)
    manifest.json      written last of all: the cache is complete and may be read

Keys. The base key hashes the teacher's *weights* (every tensor of its state dict, not its
name), the data list (each file's path, size, modification time and length), the
segmentation (crop and minimum length) and the teacher's forward dtype. Variants under one
base differ in what they hold (layers, frontend output): a request is served by any complete
variant holding at least the layers it needs, so one build with the union of a run's layers
serves every student of the run. A change of any key part makes a new cache; an unchanged
re-run finds the old one in the time it takes to hash the teacher and stat the files.

Interrupted builds (a killed process) leave complete shards and at most one half-written
temporary file; the next build with the same key removes the temporary file and builds only
the missing shards. Nothing reads a variant without ``manifest.json``. Under ``accelerate
launch`` every process builds its share of the shards in parallel (shard k on rank k mod N);
the main process writes the manifest; then every rank reads the same files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from tqdm import tqdm

from .audio import SAMPLE_RATE, AudioError
from .data import AudioItem, SkipRecord, load_segments, segment_spans
from .fsutil import write_json_atomic

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FEATURES = "features"  # the slot holding the frontend output


@dataclass
class CacheConfig:
    """``--cache.*``: where teacher-target caches live and how they are written."""

    root: str = field(default="data/target_cache", metadata={"help": "folder holding the caches"})
    max_gb: float = field(default=50.0, metadata={"help": "refuse to build a cache larger than this"})
    shard_mb: float = field(default=256.0, metadata={"help": "target size of one shard file"})
    batch_seconds: float = field(default=60.0, metadata={"help": "padded audio per teacher batch while building"})


@dataclass(frozen=True)
class CacheSpec:
    """What a cache holds and how the audio is cut (all of it part of the key).

    ``layers``: teacher states (0 = stack input, L = last); ``features``: the frontend output
    too; ``crop_samples`` / ``min_samples``: the segmentation; ``teacher_dtype``: the forward dtype.
    """

    layers: tuple[int, ...]
    features: bool
    crop_samples: int
    min_samples: int
    teacher_dtype: str = "float32"

    def __post_init__(self):
        if not self.layers and not self.features:
            raise ValueError("a target cache must hold at least one teacher layer or the frontend output")
        if self.crop_samples <= 0:
            raise ValueError(f"cache segments need a positive crop, got {self.crop_samples} samples")

    @property
    def slots(self) -> list:
        return ([FEATURES] if self.features else []) + sorted(set(self.layers))

    def variant(self) -> str:
        parts = (["layers_" + "-".join(map(str, sorted(set(self.layers))))] if self.layers else []) + \
            (["features"] if self.features else [])
        return "+".join(parts)

    def served_by(self, manifest: dict) -> bool:
        """Whether a complete cache described by ``manifest`` holds everything this spec asks for."""
        held = set(manifest["slots"])
        return set(self.slots) <= held


# -- keys -----------------------------------------------------------------------------------------

def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def teacher_fingerprint(teacher) -> str:
    """SHA-256 over the teacher's architecture and every tensor of its state dict (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    info = teacher.info
    h.update(json.dumps([type(teacher).__name__, info.arch, info.num_layers, info.dim, info.hop]).encode())
    for name, tensor in sorted(teacher.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def data_fingerprint(items: list[AudioItem]) -> str:
    """SHA-256 over every utterance of the data list: path, size, modification time, window."""
    h = hashlib.sha256()
    for item in items:
        st = os.stat(item.path)
        h.update(f"{os.path.abspath(item.path)}|{st.st_size}|{st.st_mtime_ns}|{item.offset}|{item.num_samples}\n"
                 .encode())
    return h.hexdigest()


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", Path(str(name).rstrip("/")).name or str(name)).strip("-")[:40] or "teacher"


# -- reading --------------------------------------------------------------------------------------

class TargetCache:
    """A complete cache, memory-mapped: segment ``i`` -> ``(frames, slots, dim)`` float16.

    ``index`` is ``(segments, 5)``: item (position in the data list), start sample, samples,
    frames, first frame in its shard. Files are opened lazily, once per process.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        path = self.folder / "manifest.json"
        if not path.is_file():
            raise ValueError(f"{self.folder}: not a complete teacher-target cache (no manifest.json)")
        self.manifest = json.loads(path.read_text())
        if self.manifest.get("format") != FORMAT_VERSION or not self.manifest.get("complete"):
            raise ValueError(f"{path}: cache format {self.manifest.get('format')} / incomplete; rebuild it")
        self.slots = list(self.manifest["slots"])
        self.dim = int(self.manifest["dim"])
        shards = self.manifest["shards"]
        parts = [np.load(self.folder / f"{s['name']}.npy", allow_pickle=False) for s in shards]
        self.index = np.concatenate(parts) if parts else np.zeros((0, 5), np.int64)
        self.shard_of = np.concatenate([np.full(len(p), k) for k, p in enumerate(parts)]) if parts else \
            np.zeros(0, np.int64)
        self._names = [s["name"] for s in shards]
        self._frames = [int(s["frames"]) for s in shards]
        self._maps: dict[int, np.memmap] = {}
        self.reused = False  # set by prepare_cache: found complete rather than built now

    def __len__(self) -> int:
        return len(self.index)

    @property
    def skipped(self) -> list[SkipRecord]:
        return [SkipRecord(p, r) for p, r in self.manifest["skipped"].items()]

    def slot(self, name) -> int:
        """Position of ``name`` (a teacher layer, or ``"features"``) among the stored slots."""
        if name not in self.slots:
            raise ValueError(f"{self.folder}: the cache holds {self.slots}, not {name!r}")
        return self.slots.index(name)

    def _map(self, k: int) -> np.memmap:
        if k not in self._maps:
            shape = (self._frames[k], len(self.slots), self.dim)
            self._maps[k] = np.memmap(self.folder / f"{self._names[k]}.f16", dtype=np.float16, mode="r", shape=shape)
        return self._maps[k]

    def read(self, i: int) -> np.ndarray:
        """Segment ``i`` as ``(frames, slots, dim)`` float16 (a view of the mapped file)."""
        _, _, _, frames, offset = self.index[i]
        return self._map(int(self.shard_of[i]))[offset:offset + frames]

    def first_segments(self) -> dict[int, int]:
        """``{item: its first segment}`` (the segment validation uses)."""
        first = {}
        for i, (item, start, *_rest) in enumerate(self.index.tolist()):
            if start == 0:
                first.setdefault(item, i)
        return first

    def describe(self) -> str:
        m = self.manifest
        return (f"{self.folder}: {m['segments']:,} segments, {m['audio_seconds'] / 3600:.2f} h of audio, "
                f"slots {self.slots}, {m['bytes'] / 1e9:.2f} GB")


def find_cache(base: Path, spec: CacheSpec) -> Path | None:
    """A complete variant under ``base`` that holds everything ``spec`` asks for (the smallest such)."""
    found = []
    for manifest in base.glob("*/manifest.json"):
        try:
            m = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        if m.get("complete") and m.get("format") == FORMAT_VERSION and spec.served_by(m):
            found.append((m["bytes"], manifest.parent))
    return min(found)[1] if found else None


# -- building -------------------------------------------------------------------------------------

def plan_shards(items: list[AudioItem], spec: CacheSpec, hop: int, dim: int, shard_bytes: float) -> list[tuple[int, int]]:
    """Consecutive item ranges ``[a, b)``, each about ``shard_bytes`` of targets (a function of the list)."""
    per_sample = len(spec.slots) * dim * 2 / hop
    shards, start, size = [], 0, 0.0
    for i, item in enumerate(items):
        size += item.num_samples * per_sample
        if size >= shard_bytes:
            shards.append((start, i + 1))
            start, size = i + 1, 0.0
    if start < len(items):
        shards.append((start, len(items)))
    return shards


def estimate(items: list[AudioItem], spec: CacheSpec, hop: int, dim: int) -> dict:
    """Segments, frames and bytes the cache of ``items`` will take (from the headers)."""
    segments = frames = 0
    for item in items:
        spans = segment_spans(item.num_samples, spec.crop_samples, spec.min_samples)
        segments += len(spans)
        frames += sum(n // hop for _, n in spans)
    return {"segments": segments, "frames": frames, "bytes": frames * len(spec.slots) * dim * 2}


class _ShardWriter:
    """Targets of one shard's segments, in order, then written as the shard's files."""

    def __init__(self, folder: Path, k: int):
        self.folder, self.name = folder, f"shard_{k:05d}"
        self.arrays: list[np.ndarray] = []
        self.rows: list[list[int]] = []
        self.frames = 0

    def add(self, item: int, start: int, samples: int, array: np.ndarray) -> None:
        self.rows.append([item, start, samples, array.shape[0], self.frames])
        self.arrays.append(array)
        self.frames += array.shape[0]

    def commit(self, skipped: list[SkipRecord], rank: int = 0) -> None:
        tmp = self.folder / f".{self.name}.f16.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            for a in self.arrays:
                f.write(np.ascontiguousarray(a).tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.folder / f"{self.name}.f16")
        index_tmp = self.folder / f".{self.name}.npy.tmp-{os.getpid()}.npy"
        np.save(index_tmp, np.asarray(self.rows, dtype=np.int64).reshape(-1, 5))
        os.replace(index_tmp, self.folder / f"{self.name}.npy")
        write_json_atomic(self.folder / f"{self.name}.json",
                          {"name": self.name, "frames": self.frames, "segments": len(self.rows), "built_by": rank,
                           "skipped": {s.path: s.reason for s in skipped}})


def _shard_complete(folder: Path, k: int, slots: int, dim: int) -> bool:
    meta = folder / f"shard_{k:05d}.json"
    if not meta.is_file():
        return False
    frames = json.loads(meta.read_text())["frames"]
    data = folder / f"shard_{k:05d}.f16"
    return data.is_file() and data.stat().st_size == frames * slots * dim * 2 and \
        (folder / f"shard_{k:05d}.npy").is_file()


@torch.no_grad()
def _build_shard(teacher, items: list[AudioItem], first: int, spec: CacheSpec, writer: _ShardWriter,
                 batch_samples: int, bar) -> list[SkipRecord]:
    """Run the teacher over the segments of ``items`` (positions ``first``...) into ``writer``."""
    segments, skipped = [], []
    for offset, item in enumerate(items):
        spans = segment_spans(item.num_samples, spec.crop_samples, spec.min_samples)
        try:
            wavs = load_segments(item, spans, spec.min_samples)
        except AudioError as err:
            log.warning("skipping %s: %s", err.path, err.reason)
            skipped.append(SkipRecord(err.path, err.reason))
            wavs = []
        segments += [(first + offset, start, w) for (start, _), w in zip(spans, wavs) if w.numel()]
        bar.update(1)
    # teacher batches of similar lengths; results kept in the canonical (item, start) order
    order = sorted(range(len(segments)), key=lambda i: segments[i][2].numel())
    results: dict[int, np.ndarray] = {}
    device = next(iter(teacher.parameters())).device
    slots = spec.slots
    pos = 0
    while pos < len(order):
        batch = [order[pos]]
        while pos + len(batch) < len(order) and \
                segments[order[pos + len(batch)]][2].numel() * (len(batch) + 1) <= batch_samples:
            batch.append(order[pos + len(batch)])
        pos += len(batch)
        wavs = [segments[i][2] for i in batch]
        lengths = torch.tensor([w.numel() for w in wavs])
        wav = torch.zeros(len(wavs), int(lengths.max()))
        for j, w in enumerate(wavs):
            wav[j, : w.numel()] = w
        if spec.layers:
            feats, states, frame_lengths = teacher.features_and_states(wav.to(device), lengths.to(device))
        else:  # the frontend output alone (classification over a frozen frontend): the stack need not run
            feats, frame_lengths = teacher.frontend(wav.to(device), lengths.to(device))
            states = []
        chosen = [feats.float() if s == FEATURES else states[s] for s in slots]
        stacked = torch.stack(chosen, dim=2).cpu()  # (batch, frames, slots, dim)
        half = stacked.to(torch.float16)
        if not torch.isfinite(half).all():
            raise ValueError(f"teacher {teacher.name!r}: hidden states exceed the float16 range "
                             f"(max |x| = {float(stacked.abs().max()):.3g}); this teacher cannot be cached in float16")
        for j, i in enumerate(batch):
            results[i] = half[j, : int(frame_lengths[j])].numpy()
    for i, (item, start, w) in enumerate(segments):
        writer.add(item, start, w.numel(), results[i])
    return skipped


def prepare_cache(teacher, items: list[AudioItem], spec: CacheSpec, cfg: CacheConfig, rank: int = 0,
                  world: int = 1, barrier: Callable[[], None] | None = None, progress: bool = True) -> TargetCache:
    """The complete cache of ``teacher`` on ``items`` holding ``spec`` (found, completed or built).

    Every process of a distributed run calls this with its ``rank`` / ``world`` and a
    ``barrier`` (``accelerator.wait_for_everyone``); shards are built in parallel.
    Raises ``ValueError`` when the estimate exceeds ``cfg.max_gb`` or the free disk space,
    before anything is written.
    """
    barrier = barrier or (lambda: None)
    t0 = time.time()
    num_layers = teacher.num_layers
    bad = [m for m in spec.layers if not 0 <= m <= num_layers]
    if bad:
        raise ValueError(f"cache layers {bad} outside 0..{num_layers} of teacher {teacher.name!r}")
    if spec.features and teacher.frontend is None:
        raise ValueError(f"teacher {teacher.name!r} has no reusable frontend, so its frontend output cannot be cached")
    info = teacher.info
    base_key = _digest({"format": FORMAT_VERSION, "teacher": teacher_fingerprint(teacher),
                        "data": data_fingerprint(items), "crop_samples": spec.crop_samples,
                        "min_samples": spec.min_samples, "teacher_dtype": spec.teacher_dtype})
    base = Path(cfg.root) / f"{_slug(teacher.name)}-{base_key[:16]}"
    found = find_cache(base, spec)
    if found is not None:
        cache = TargetCache(found)
        cache.reused = True
        log.info("teacher-target cache found (%.1f s): %s", time.time() - t0, cache.describe())
        return cache

    folder = base / spec.variant()
    key = _digest({"base": base_key, "slots": spec.slots})
    est = estimate(items, spec, info.hop, info.dim)
    gb = est["bytes"] / 1e9
    log.info("teacher-target cache: about %.2f GB to write (%s segments, %s frames x %d slots %s x %d float16) "
             "in %s", gb, f"{est['segments']:,}", f"{est['frames']:,}", len(spec.slots), spec.slots, info.dim, folder)
    if gb > cfg.max_gb:
        raise ValueError(f"the teacher-target cache would take about {gb:.2f} GB ({est['frames']:,} frames x "
                         f"{len(spec.slots)} slots x {info.dim} float16), over cache.max_gb={cfg.max_gb:g}: raise "
                         "cache.max_gb, cache fewer layers, use less data, or train online (train.cache false)")
    Path(cfg.root).mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cfg.root).free
    if est["bytes"] > free:
        raise ValueError(f"the teacher-target cache needs about {gb:.2f} GB but {cfg.root} has "
                         f"{free / 1e9:.2f} GB free: free space or point cache.root elsewhere")
    shards = plan_shards(items, spec, info.hop, info.dim, cfg.shard_mb * 1e6)
    plan = {"format": FORMAT_VERSION, "key": key, "base_key": base_key, "spec": asdict(spec), "slots": spec.slots,
            "teacher": teacher.name, "items": len(items), "shards": shards}
    if rank == 0:
        _prepare_folder(folder, plan)
    barrier()

    slots, dim = len(spec.slots), info.dim
    mine = [k for k in range(len(shards)) if k % world == rank]
    todo = [k for k in mine if not _shard_complete(folder, k, slots, dim)]
    resumed = len(mine) - len(todo)
    if resumed:
        log.info("teacher-target cache: %d of this process's %d shards were complete already (interrupted build)",
                 resumed, len(mine))
    bar = tqdm(total=sum(shards[k][1] - shards[k][0] for k in todo), desc=f"cache build (rank {rank})"
               if world > 1 else "cache build", unit="file", disable=not progress)
    batch_samples = int(cfg.batch_seconds * SAMPLE_RATE)
    for k in todo:
        a, b = shards[k]
        writer = _ShardWriter(folder, k)
        skipped = _build_shard(teacher, items[a:b], a, spec, writer, batch_samples, bar)
        writer.commit(skipped, rank)
    bar.close()
    barrier()
    if rank == 0:
        _write_manifest(folder, plan, info, est, time.time() - t0)
    barrier()
    cache = TargetCache(folder)
    log.info("teacher-target cache built in %.1f s: %s", time.time() - t0, cache.describe())
    return cache


def _prepare_folder(folder: Path, plan: dict) -> None:
    """Start or continue a build: a folder of another plan is cleared; stale temporary files go."""
    plan_file = folder / "plan.json"
    if plan_file.is_file():
        try:
            old = json.loads(plan_file.read_text())
        except ValueError:
            old = {}
        same = old.get("key") == plan["key"] and old.get("shards") == [list(s) for s in plan["shards"]]
        if not same:
            log.warning("%s: left by a different build; starting it again", folder)
            shutil.rmtree(folder)
        else:
            log.info("%s: an interrupted build of this cache; completing it", folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".*.tmp-*"):
        stale.unlink()
    (folder / "manifest.json").unlink(missing_ok=True)
    write_json_atomic(plan_file, plan)


def _write_manifest(folder: Path, plan: dict, info, est: dict, seconds: float) -> None:
    shards, skipped, segments, frames = [], {}, 0, 0
    audio = 0
    for k in range(len(plan["shards"])):
        meta = json.loads((folder / f"shard_{k:05d}.json").read_text())
        shards.append({k: meta[k] for k in ("name", "frames", "segments", "built_by")})
        skipped.update(meta["skipped"])
        segments += meta["segments"]
        frames += meta["frames"]
        index = np.load(folder / f"shard_{k:05d}.npy", allow_pickle=False)
        audio += int(index[:, 2].sum()) if len(index) else 0
    manifest = {"format": FORMAT_VERSION, "complete": True, "key": plan["key"], "base_key": plan["base_key"],
                "spec": plan["spec"], "slots": plan["slots"], "dim": info.dim, "hop": info.hop,
                "num_layers": info.num_layers, "teacher": info.to_dict(), "items": plan["items"],
                "segments": segments, "frames": frames, "audio_seconds": audio / SAMPLE_RATE,
                "bytes": frames * len(plan["slots"]) * info.dim * 2, "estimated_bytes": est["bytes"],
                "skipped": skipped, "shards": shards, "build_seconds": seconds,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json_atomic(folder / "manifest.json", manifest)


@dataclass
class CacheBuildConfig:
    """``stackdistill cache build``: the settings must match the training run's to be found by it."""

    teacher: str = field(default="whisper-tiny.en", metadata={"help": "teacher spec"})
    data: list[str] = field(default_factory=list, metadata={"help": "the training audio (as given to distill)"})
    layers: list[int] = field(default_factory=list, metadata={"help": "teacher layers to store (empty: 1..L)"})
    features: bool = field(default=True, metadata={"help": "store the frontend output (students sharing it)"})
    crop_seconds: float = field(default=4.0, metadata={"help": "segment length (distill's train.crop_seconds)"})
    min_seconds: float = field(default=0.1, metadata={"help": "shorter files and tails are skipped"})
    teacher_dtype: Literal["float32", "bfloat16"] = field(default="float32", metadata={"help": "teacher forward dtype"})
    cache: CacheConfig = field(default_factory=CacheConfig)


def run_cache_build(cfg: CacheBuildConfig, teacher=None) -> dict:
    """Find or build the cache of ``cfg`` (``teacher``: an already loaded one); returns its summary."""
    from .data import list_audio
    from .teacher import load_teacher

    if not cfg.data:
        raise ValueError("cache build needs data=<the training audio>")
    teacher = teacher if teacher is not None else load_teacher(cfg.teacher, dtype=cfg.teacher_dtype)
    items, _ = list_audio(cfg.data)
    layers = tuple(cfg.layers) or tuple(range(1, teacher.num_layers + 1))
    spec = CacheSpec(layers, cfg.features and teacher.frontend is not None, int(cfg.crop_seconds * SAMPLE_RATE),
                     int(cfg.min_seconds * SAMPLE_RATE), cfg.teacher_dtype)
    t0 = time.time()
    cache = prepare_cache(teacher, items, spec, cfg.cache)
    m = cache.manifest
    return {"folder": str(cache.folder), "reused": cache.reused, "seconds": time.time() - t0,
            "build_seconds": m["build_seconds"], "segments": m["segments"], "audio_seconds": m["audio_seconds"],
            "slots": m["slots"], "bytes": m["bytes"], "files_skipped": len(m["skipped"]), "skipped": m["skipped"]}
