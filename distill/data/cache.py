"""The teacher-target cache: the teacher's hidden states computed once, then read from disk.

Distillation pays the teacher's forward pass on every batch, every epoch, for every student.
The cache pays it once. The training audio is cut into deterministic segments
(:func:`distill.data.corpus.segment_spans`: consecutive windows of at most ``crop_seconds``), the
teacher runs over them once, and what the students need is stored as float16 shards that
training memory-maps: the teacher states they regress, plus the frontend output when a student
shares the teacher's frozen frontend (its input). One cache serves any number of epochs and
students.

Folder ``<root>/<teacher>-<base key>/<variant>/``::

    plan.json          the full key, the settings, the shard plan, the build's random build_id
                       (written before any shard)
    shard_00000.f16    (frames, slots, dim) float16: the shard's segments one after another
    shard_00000.npy    int64 (segments, 5): item, start sample, samples, frames, first frame
    shard_00000.json   written last for the shard: frame count, files skipped, the sizes and
                       checksums of its two files (marks it complete)
    manifest.json      written last of all: the cache is complete and may be read
    repair.json        only while damaged shards are being rebuilt: which ones and why

and next to the variants, ``<root>/<teacher>-<base key>/.<variant>.lock`` while one is built.

Keys. The base key hashes the teacher's *weights* (every tensor of its state dict, not its
name), the data list (each file's path, size, modification time and length), the
segmentation (crop and minimum length) and the teacher's forward dtype. Variants under one
base differ in what they hold (layers, frontend output): a request is served by any complete
variant holding at least the layers it needs, so one build with the union of a run's layers
serves every student of the run. A change of any key part makes a new cache; an unchanged
re-run finds the old one in the time it takes to hash the teacher and stat the files.

Manifest (format 2). Besides the settings and totals, each shard's entry records ``bytes`` (of
its ``.f16``), ``index_bytes`` (of its ``.npy``), ``probe`` (SHA-256 over the ``.f16``'s size and
16 blocks of 64 KiB at evenly spaced offsets, first and last included: :func:`probe_file`) and
``index_sha256`` (of the whole, small ``.npy``). Opening a cache (:class:`TargetCache`) checks
every shard against its entry (:func:`verify_shards`: sizes, the index's shape and frame
counts, the checksums; about 1 MiB read per shard, never a whole data file) and raises
:class:`CacheDamaged`, naming each damaged file, so nothing memory-maps a short file. The
checksum is sampled: a same-size change outside the probed blocks goes unnoticed.

Damage. When the cache a request finds is damaged, :func:`prepare_cache` warns, naming each
damaged shard file and what is wrong, removes the manifest and the damaged shards' files (their
``.json`` first), writes ``repair.json``, and completes that variant (its own spec and shard
plan), rebuilding only the damaged shards; then returns the verified cache.

Interrupted builds (a killed process) leave complete shards and at most one half-written
temporary file; the next build with the same key removes the temporary file and builds only
the missing shards, keeping the interrupted build's shard plan. Nothing reads a variant without
``manifest.json``. Under ``accelerate launch`` every process builds its share of the shards in
parallel (shard k on rank k mod N); only the main process inspects, invalidates, takes the
lock and writes the manifest; the other ranks wait at barriers, then read the same files.

Concurrent builds. A build (and the invalidation of a damaged variant) holds
``.<variant>.lock``, created with ``O_CREAT | O_EXCL`` and holding ``{pid, host, started}``
(:class:`BuildLock`). A second build of the same variant logs one line naming the holder and
waits up to ``cache.lock_wait_seconds`` (0: refuses at once), then looks for the finished cache
before building anything; a lock left by a dead process on this host is taken over with a
warning. Before writing the manifest the builder checks that ``plan.json`` still carries its
``build_id`` and that every shard on disk matches its record: a manifest is marked complete only
by the process that wrote every shard it lists.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from distill.core.fsutil import write_json_atomic
from distill.data.audio import SAMPLE_RATE, AudioError
from distill.data.corpus import AudioItem, SkipRecord, load_segments, segment_spans

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
FEATURES = "features"  # the slot holding the frontend output
PROBE_BLOCKS, PROBE_BLOCK = 16, 64 * 1024  # the sampled checksum of a shard's data file
LOCK_POLL_SECONDS = 1.0  # how often a waiting build looks at the lock
UNWRITTEN_LOCK_SECONDS = 60.0
DISTRIBUTED_LOCK_WAIT = 1500.0  # under the 30-minute timeout of the collectives the other ranks wait in  # an empty lock file this old was left by a process killed while creating it


@dataclass
class CacheConfig:
    """``--cache.*``: where teacher-target caches live and how they are written."""

    root: str = field(default="data/target_cache", metadata={"help": "folder holding the caches"})
    max_gb: float = field(default=50.0, metadata={"help": "refuse to build a cache larger than this"})
    shard_mb: float = field(default=256.0, metadata={"help": "target size of one shard file"})
    batch_seconds: float = field(default=60.0, metadata={"help": "padded audio per teacher batch while building"})
    lock_wait_seconds: float = field(default=3600.0, metadata={
        "help": "how long to wait for another process building the same cache (0: refuse at once)"})


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


def _base_key(teacher, items: list[AudioItem], spec: CacheSpec) -> str:
    return _digest({"format": FORMAT_VERSION, "teacher": teacher_fingerprint(teacher),
                    "data": data_fingerprint(items), "crop_samples": spec.crop_samples,
                    "min_samples": spec.min_samples, "teacher_dtype": spec.teacher_dtype})


def cache_base(teacher, items: list[AudioItem], spec: CacheSpec, root: str | Path) -> Path:
    """The folder holding the variants of ``teacher``'s cache of ``items`` cut as ``spec`` cuts them."""
    return Path(root) / f"{_slug(teacher.name)}-{_base_key(teacher, items, spec)[:16]}"


# -- checking -------------------------------------------------------------------------------------

def probe_file(path: str | Path) -> str:
    """A cheap checksum of ``path``: SHA-256 over its size and ``PROBE_BLOCKS`` blocks of ``PROBE_BLOCK``
    bytes at evenly spaced offsets, the first and last block included (the whole file when smaller).

    Sampled, not complete: it catches truncation, a file replaced by another and damage inside a
    probed block, at about 1 MiB read per file whatever its size.
    """
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(f"{size}|".encode())
    with open(path, "rb") as f:
        if size <= PROBE_BLOCKS * PROBE_BLOCK:
            h.update(f.read())
        else:
            for i in range(PROBE_BLOCKS):
                f.seek(i * (size - PROBE_BLOCK) // (PROBE_BLOCKS - 1))
                h.update(f.read(PROBE_BLOCK))
    return h.hexdigest()


def _index_problem(rows: np.ndarray, segments: int, frames: int) -> str | None:
    """What is wrong with a shard's index of ``segments`` rows covering ``frames`` frames, if anything."""
    if rows.dtype != np.int64 or rows.ndim != 2 or rows.shape[1] != 5 or len(rows) != segments:
        return f"index holds {rows.dtype} {rows.shape}, expected int64 ({segments}, 5)"
    counts = rows[:, 3]
    if int(counts.sum()) != frames or not np.array_equal(rows[:, 4], np.cumsum(counts) - counts):
        return f"index covers {int(counts.sum())} frames, expected {frames} laid end to end"
    return None


def _shard_problem(folder: Path, entry: dict, slots: int, dim: int) -> str | None:
    """What is wrong with the files of the shard recorded as ``entry`` (``"<file>: <what>"``), or None.

    Cheap: sizes, the (small) index read whole, the data file's sampled checksum.
    """
    name = str(entry.get("name"))
    data, index = folder / f"{name}.f16", folder / f"{name}.npy"
    try:
        frames, segments = int(entry["frames"]), int(entry["segments"])
        sizes = {data: int(entry["bytes"]), index: int(entry["index_bytes"])}
        probe, index_sha = str(entry["probe"]), str(entry["index_sha256"])
    except (KeyError, TypeError, ValueError):
        return f"{name}.json: no sizes or checksums recorded"
    if sizes[data] != frames * slots * dim * 2:
        return f"{data.name}: {sizes[data]} bytes recorded for {frames} frames, expected {frames * slots * dim * 2}"
    for path, size in sizes.items():
        if not path.is_file():
            return f"{path.name}: missing"
        actual = path.stat().st_size
        if actual != size:
            return f"{path.name}: size {actual} bytes, expected {size}"
    raw = index.read_bytes()
    try:
        rows = np.load(io.BytesIO(raw), allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        return f"{index.name}: index unreadable ({exc})"
    problem = _index_problem(rows, segments, frames)
    if problem:
        return f"{index.name}: {problem}"
    if hashlib.sha256(raw).hexdigest() != index_sha:
        return f"{index.name}: checksum mismatch"
    if probe_file(data) != probe:
        return f"{data.name}: checksum mismatch (sampled blocks)"
    return None


def verify_shards(folder: str | Path, manifest: dict) -> dict[str, str]:
    """Shard name -> what is wrong with its files, ``"<file>: <what>"`` (``{}``: every shard matches ``manifest``).

    ``"shard_00003.f16: missing"``, ``"...: size 123 bytes, expected 456"``, ``"...: checksum
    mismatch"``, ``"shard_00003.npy: index unreadable (...)"``... Reads about 1 MiB per shard.
    """
    folder = Path(folder)
    slots, dim = len(manifest["slots"]), int(manifest["dim"])
    damaged = {}
    for entry in manifest["shards"]:
        problem = _shard_problem(folder, entry, slots, dim)
        if problem:
            damaged[str(entry.get("name"))] = problem
    return damaged


class CacheDamaged(ValueError):
    """A complete cache whose files no longer match its manifest; ``damaged``: shard name -> what is wrong."""

    def __init__(self, folder: str | Path, damaged: dict[str, str]):
        self.folder, self.damaged = Path(folder), dict(damaged)
        files = "; ".join(os.path.join(self.folder, what) for what in self.damaged.values())
        super().__init__(f"{self.folder}: damaged teacher-target cache ({len(self.damaged)} shard(s)): {files}; "
                         "`stackdistill cache build` with the same settings (or distill with train.cache true) "
                         "rebuilds the damaged shards")


def _read_json(path: Path) -> dict | None:
    """The JSON object in ``path``; None when missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# -- reading --------------------------------------------------------------------------------------

class TargetCache:
    """A complete cache, memory-mapped: segment ``i`` -> ``(frames, slots, dim)`` float16.

    ``index`` is ``(segments, 5)``: item (position in the data list), start sample, samples,
    frames, first frame in its shard. Opening checks every shard's files against the manifest
    (:func:`verify_shards`) and raises :class:`CacheDamaged` on any mismatch. Files are mapped
    lazily, once per process.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        path = self.folder / "manifest.json"
        if not path.is_file():
            raise ValueError(f"{self.folder}: not a complete teacher-target cache (no manifest.json)")
        self.manifest = _read_json(path)
        if self.manifest is None:
            raise ValueError(f"{path}: unreadable; rebuild the cache")
        if self.manifest.get("format") != FORMAT_VERSION or not self.manifest.get("complete"):
            raise ValueError(f"{path}: cache format {self.manifest.get('format')} / incomplete; rebuild it")
        try:
            damaged = verify_shards(self.folder, self.manifest)
        except (KeyError, TypeError, ValueError) as exc:
            damaged = {"manifest": f"manifest.json: malformed ({exc!r})"}
        if damaged:
            raise CacheDamaged(self.folder, damaged)
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
        self.repaired: dict[str, str] = {}  # set by prepare_cache: damaged shards rebuilt now, and why

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
    """A variant under ``base`` marked complete that holds everything ``spec`` asks for (the smallest such).

    Its files are not checked here: :class:`TargetCache` does that when it is opened.
    """
    found = []
    for manifest in base.glob("*/manifest.json"):
        m = _read_json(manifest)
        try:
            if m and m.get("complete") and m.get("format") == FORMAT_VERSION and spec.served_by(m):
                found.append((int(m["bytes"]), manifest.parent))
        except (KeyError, TypeError, ValueError):
            continue
    return min(found)[1] if found else None


def _spec_of(plan: dict) -> CacheSpec:
    """The :class:`CacheSpec` recorded in a plan or manifest."""
    s = plan["spec"]
    return CacheSpec(tuple(s["layers"]), bool(s["features"]), int(s["crop_samples"]), int(s["min_samples"]),
                     str(s.get("teacher_dtype", "float32")))


def _repair_target(base: Path, spec: CacheSpec) -> CacheSpec | None:
    """The spec of a variant under ``base`` invalidated for damage (``repair.json``, no manifest) that
    serves ``spec``: completing it rebuilds only its damaged shards (the smallest such)."""
    found = []
    for marker in base.glob("*/repair.json"):
        folder = marker.parent
        plan = _read_json(folder / "plan.json")
        if (folder / "manifest.json").exists() or not plan or plan.get("format") != FORMAT_VERSION:
            continue
        try:
            held = _spec_of(plan)
        except (KeyError, TypeError, ValueError):
            continue
        if held.variant() == folder.name and set(spec.slots) <= set(held.slots):
            found.append((len(held.slots), folder.name, held))
    return min(found)[2] if found else None


# -- the lock -------------------------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class BuildLock:
    """``<base>/.<variant>.lock``: one build of a cache variant at a time, across processes (and hosts
    sharing the folder).

    Created with ``O_CREAT | O_EXCL`` holding ``{pid, host, started, token}``. Held by a dead
    process on this host: stale, taken over with a warning. Otherwise one line names the holder
    and the build waits, polling, up to ``wait_seconds`` (0: it refuses at once), then raises
    ``ValueError`` naming the lock file and its holder. Released (only if still its own) on exit.
    """

    def __init__(self, path: Path, folder: Path, wait_seconds: float):
        self.path, self.folder, self.wait_seconds = Path(path), Path(folder), float(wait_seconds)
        self.token: str | None = None

    def __enter__(self) -> BuildLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        token = uuid.uuid4().hex
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "token": token}))
        self.token = token
        return True

    def _holder(self) -> tuple[dict | None, bytes] | None:
        """``(holder, raw bytes)`` of the lock file; None when it is gone. ``holder`` None: not (yet) written."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(raw)
        except ValueError:
            holder = None
        if not isinstance(holder, dict) or not str(holder.get("pid", "")).isdigit():
            holder = None
        return holder, raw

    def _stale(self, holder: dict | None) -> bool:
        if holder is None:  # killed between creating the file and writing it (or being written right now)
            try:
                return time.time() - self.path.stat().st_mtime > UNWRITTEN_LOCK_SECONDS
            except FileNotFoundError:
                return False
        return holder.get("host") == socket.gethostname() and not _pid_alive(int(holder["pid"]))

    def _take_over(self, raw: bytes) -> None:
        """Remove the stale lock whose content is ``raw`` (not a fresh one another process created meanwhile)."""
        moved = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
        try:
            os.rename(self.path, moved)
        except FileNotFoundError:
            return
        if moved.read_bytes() != raw:  # another process took it over first: its lock goes back
            os.replace(moved, self.path)
            return
        moved.unlink()

    def describe(self, holder: dict | None) -> str:
        if holder is None:
            return f"cache {self.folder} is being built (lock {self.path} not yet written)"
        return (f"cache {self.folder} is being built by pid {holder.get('pid')} on host {holder.get('host')} "
                f"since {holder.get('started')}")

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.wait_seconds
        announced = False
        while not self._create():
            seen = self._holder()
            if seen is None:  # released just now
                continue
            holder, raw = seen
            if self._stale(holder):
                left = f"left by pid {holder['pid']} on host {holder.get('host')}, no longer running" if holder \
                    else f"empty for over {UNWRITTEN_LOCK_SECONDS:g} s"
                log.warning("%s: a stale lock (%s); taking it over", self.path, left)
                self._take_over(raw)
                continue
            if self.wait_seconds <= 0:
                raise ValueError(f"{self.describe(holder)} (lock {self.path}); not waiting (cache.lock_wait_seconds"
                                 f"=0): run again once it is done (it will reuse that cache), or remove {self.path} "
                                 "if that process is gone")
            if time.monotonic() >= deadline:
                raise ValueError(f"{self.describe(holder)} (lock {self.path}); gave up after waiting "
                                 f"{self.wait_seconds:g} s (cache.lock_wait_seconds): run again once it is done, "
                                 f"or remove {self.path} if that process is gone")
            if not announced:
                log.warning("%s; waiting (cache.lock_wait_seconds=%g)", self.describe(holder), self.wait_seconds)
                announced = True
            time.sleep(max(0.05, min(LOCK_POLL_SECONDS, deadline - time.monotonic())))

    def release(self) -> None:
        if self.token is None:
            return
        seen = self._holder()
        if seen is not None and seen[0] is not None and seen[0].get("token") == self.token:
            self.path.unlink(missing_ok=True)
        else:
            log.warning("%s: no longer this process's lock at release (taken over?); left as it is", self.path)
        self.token = None


def _lock(base: Path, folder: Path, cfg: CacheConfig) -> BuildLock:
    return BuildLock(base / f".{folder.name}.lock", folder, cfg.lock_wait_seconds)


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


def _covers(shards, n: int) -> bool:
    """Whether ``shards`` (from a plan file) are consecutive non-empty ranges covering ``[0, n)``."""
    try:
        ranges = [(int(a), int(b)) for a, b in shards]
    except (TypeError, ValueError):
        return False
    ends = [0] + [b for _, b in ranges]
    return bool(ranges) and all(a == e and b > a for (a, b), e in zip(ranges, ends)) and ends[-1] == n


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
        """Write the data, then the index, then the json recording both files' sizes and checksums."""
        data, index = self.folder / f"{self.name}.f16", self.folder / f"{self.name}.npy"
        tmp = self.folder / f".{self.name}.f16.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            for a in self.arrays:
                f.write(np.ascontiguousarray(a).tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, data)
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(self.rows, dtype=np.int64).reshape(-1, 5))
        raw = buffer.getvalue()
        index_tmp = self.folder / f".{self.name}.npy.tmp-{os.getpid()}"
        with open(index_tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(index_tmp, index)
        write_json_atomic(self.folder / f"{self.name}.json",
                          {"name": self.name, "frames": self.frames, "segments": len(self.rows), "built_by": rank,
                           "bytes": data.stat().st_size, "index_bytes": len(raw), "probe": probe_file(data),
                           "index_sha256": hashlib.sha256(raw).hexdigest(),
                           "skipped": {s.path: s.reason for s in skipped}})


def _shard_complete(folder: Path, k: int, slots: int, dim: int) -> bool:
    """Whether shard ``k`` was committed and its files still match its json (sizes, index, checksums)."""
    meta = _read_json(folder / f"shard_{k:05d}.json")
    return meta is not None and _shard_problem(folder, meta, slots, dim) is None


@torch.no_grad()
def _build_shard(teacher, items: list[AudioItem], first: int, spec: CacheSpec, writer: _ShardWriter,
                 batch_samples: int, bar) -> list[SkipRecord]:
    """Run the teacher over the segments of ``items`` (positions ``first``...) into ``writer``."""
    segments, skipped = [], []
    for offset, item in enumerate(items):
        spans = segment_spans(item.num_samples, spec.crop_samples, spec.min_samples)
        try:
            if not spans:  # listed with 0 samples (a manifest line): skipped as load_audio skips it
                raise AudioError(item.path, "empty audio (0 samples)")
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


def _check_request(teacher, spec: CacheSpec) -> None:
    num_layers = teacher.num_layers
    bad = [m for m in spec.layers if not 0 <= m <= num_layers]
    if bad:
        raise ValueError(f"cache layers {bad} outside 0..{num_layers} of teacher {teacher.name!r}")
    if spec.features and teacher.frontend is None:
        raise ValueError(f"teacher {teacher.name!r} has no reusable frontend, so its frontend output cannot be cached")


def _damage(folder: Path) -> dict[str, str]:
    """Shard name -> what is wrong, for the variant in ``folder`` if it is marked complete (else ``{}``)."""
    manifest = _read_json(folder / "manifest.json")
    if not manifest or not manifest.get("complete") or manifest.get("format") != FORMAT_VERSION:
        return {}
    try:
        return verify_shards(folder, manifest)
    except (KeyError, TypeError, ValueError) as exc:
        return {"manifest": f"manifest.json: unreadable ({exc})"}


def _complete(folder: Path) -> bool:
    manifest = _read_json(folder / "manifest.json")
    return bool(manifest and manifest.get("complete") and manifest.get("format") == FORMAT_VERSION)


def _invalidate(folder: Path, damaged: dict[str, str]) -> None:
    """Warn about each damaged shard; mark the variant for repair; remove its manifest and those shards' files."""
    for what in damaged.values():
        log.warning("teacher-target cache damaged: %s; rebuilding it", os.path.join(folder, what))
    earlier = (_read_json(folder / "repair.json") or {}).get("damaged", {})
    write_json_atomic(folder / "repair.json", {"damaged": {**earlier, **damaged},
                                               "detected": time.strftime("%Y-%m-%dT%H:%M:%S")})
    (folder / "manifest.json").unlink(missing_ok=True)
    for name in damaged:
        if re.fullmatch(r"shard_\d{5}", name):
            for suffix in (".json", ".f16", ".npy"):  # the completion marker first
                (folder / f"{name}{suffix}").unlink(missing_ok=True)


def _inspect(base: Path, spec: CacheSpec, cfg: CacheConfig) -> TargetCache | None:
    """Rank 0, before anyone reads: the complete, undamaged cache serving ``spec``, or None.

    A damaged one found on the way is invalidated under its lock (warned about, manifest and damaged
    shards removed, ``repair.json`` written) so that the build that follows repairs it.
    """
    for _ in range(10):  # each round returns a cache or invalidates one (a few variants at most)
        found = find_cache(base, spec)
        if found is None:
            return None
        try:
            return TargetCache(found)
        except CacheDamaged:
            pass
        with _lock(base, found, cfg):  # another process may be repairing it: wait, then look again
            damaged = _damage(found)
            if damaged:
                _invalidate(found, damaged)
    raise ValueError(f"{base}: teacher-target caches keep changing while this process inspects them; "
                     "run again once other builds are done")


def _check_room(items: list[AudioItem], spec: CacheSpec, info, cfg: CacheConfig, folder: Path) -> dict:
    """The estimate of the build; ``ValueError`` over ``cfg.max_gb`` or the free disk space."""
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
    return est


def prepare_cache(teacher, items: list[AudioItem], spec: CacheSpec, cfg: CacheConfig, rank: int = 0,
                  world: int = 1, barrier: Callable[[], None] | None = None, progress: bool = True,
                  broadcast: Callable[[object], object] | None = None) -> TargetCache:
    """The complete, verified cache of ``teacher`` on ``items`` holding ``spec`` (found, repaired, completed or built).

    Every process of a distributed run calls this with its ``rank`` / ``world`` and a
    ``barrier`` (``accelerator.wait_for_everyone``); shards are built in parallel. Rank 0 alone
    inspects (invalidating a damaged cache), takes the build lock and writes the manifest; its
    decisions (the cache found, the variant to build, whether it is complete) reach every rank
    through ``broadcast`` (rank 0's value returned on every rank; required when ``world > 1``), so
    the ranks never decide apart from what another job did to the files meanwhile.
    Raises ``ValueError`` when the estimate exceeds ``cfg.max_gb`` or the free disk space,
    before anything is written, or when another process holds the build lock longer than
    ``cfg.lock_wait_seconds``.
    """
    barrier = barrier or (lambda: None)
    if world > 1 and broadcast is None:
        raise ValueError("prepare_cache on several processes needs broadcast (rank 0's decisions to every rank)")
    share = broadcast or (lambda value: value)
    t0 = time.time()
    _check_request(teacher, spec)
    base_key = _base_key(teacher, items, spec)
    base = Path(cfg.root) / f"{_slug(teacher.name)}-{base_key[:16]}"
    cache = _inspect(base, spec, cfg) if rank == 0 else None
    found = share(str(cache.folder) if cache is not None else None)
    if found is not None:
        cache = cache if rank == 0 else TargetCache(found)
        cache.reused = True
        log.info("teacher-target cache found (%.1f s): %s", time.time() - t0, cache.describe())
        return cache

    # a damaged variant serving the request is repaired
    target = share((_repair_target(base, spec) or spec) if rank == 0 else None)
    folder = base / target.variant()
    est = _check_room(items, target, teacher.info, cfg, folder)
    if world > 1 and cfg.lock_wait_seconds > DISTRIBUTED_LOCK_WAIT:
        # the other ranks wait for rank 0 in a collective, which times out after 30 minutes
        cfg = replace(cfg, lock_wait_seconds=DISTRIBUTED_LOCK_WAIT)
    with _lock(base, folder, cfg) if rank == 0 else contextlib.nullcontext():
        damaged = _damage(folder) if rank == 0 else {}
        if damaged:  # finished by the build this one waited for, and damaged since
            _invalidate(folder, damaged)
        if share(_complete(folder) if rank == 0 else None):  # the build this one waited for has finished it
            cache = TargetCache(folder)
            cache.reused = True
            log.info("teacher-target cache built meanwhile by another process: %s", cache.describe())
            return cache
        key = _digest({"base": base_key, "slots": target.slots})
        return _build(teacher, items, target, cfg, folder, {"key": key, "base_key": base_key}, est, rank, world,
                      barrier, progress, t0)


def _new_plan(folder: Path, keys: dict, spec: CacheSpec, teacher, items: list[AudioItem], shard_bytes: float) -> dict:
    """This build's plan; the shard plan of an unfinished build of the same cache is kept (its shards are
    reused whatever ``cache.shard_mb`` is now)."""
    info = teacher.info
    shards = plan_shards(items, spec, info.hop, info.dim, shard_bytes)
    old = _read_json(folder / "plan.json")
    if old and old.get("key") == keys["key"] and _covers(old.get("shards"), len(items)):
        kept = [(int(a), int(b)) for a, b in old["shards"]]
        if kept != shards:
            log.info("%s: keeping the unfinished build's plan of %d shards (cache.shard_mb=%g would make %d)",
                     folder, len(kept), shard_bytes / 1e6, len(shards))
        shards = kept
    return {"format": FORMAT_VERSION, **keys, "spec": asdict(spec), "slots": spec.slots, "teacher": teacher.name,
            "items": len(items), "shards": shards, "build_id": uuid.uuid4().hex,
            "builder": {"pid": os.getpid(), "host": socket.gethostname()}}


def _build(teacher, items: list[AudioItem], spec: CacheSpec, cfg: CacheConfig, folder: Path, keys: dict, est: dict,
           rank: int, world: int, barrier: Callable[[], None], progress: bool, t0: float) -> TargetCache:
    """Build (or complete, or repair) the variant of ``spec`` in ``folder``; rank 0 holds its lock."""
    info = teacher.info
    if rank == 0:
        plan = _new_plan(folder, keys, spec, teacher, items, cfg.shard_mb * 1e6)
        _prepare_folder(folder, plan)
    barrier()
    if rank != 0:  # every rank builds rank 0's plan
        plan = _read_json(folder / "plan.json")
        if plan is None:
            raise ValueError(f"{folder}: plan.json missing or unreadable after the main process wrote it")
    shards = plan["shards"]
    repair = (_read_json(folder / "repair.json") or {}).get("damaged", {})
    if repair:
        log.info("teacher-target cache %s: rebuilding %d damaged shard(s): %s", folder, len(repair),
                 ", ".join(sorted(repair)))

    slots, dim = len(spec.slots), info.dim
    mine = [k for k in range(len(shards)) if k % world == rank]
    todo = [k for k in mine if not _shard_complete(folder, k, slots, dim)]
    resumed = len(mine) - len(todo)
    if resumed:
        log.info("teacher-target cache: %d of this process's %d shards were complete already", resumed, len(mine))
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
        metas = _check_built(folder, plan, slots, dim)
        _write_manifest(folder, plan, info, metas, est, time.time() - t0)
        (folder / "repair.json").unlink(missing_ok=True)
    barrier()
    cache = TargetCache(folder)
    cache.repaired = dict(repair)
    log.info("teacher-target cache %s in %.1f s: %s", "repaired" if repair else "built", time.time() - t0,
             cache.describe())
    return cache


def _prepare_folder(folder: Path, plan: dict) -> None:
    """Start or continue a build: a folder of another plan is cleared; stale temporary files go."""
    plan_file = folder / "plan.json"
    if plan_file.is_file():
        old = _read_json(plan_file) or {}
        same = old.get("key") == plan["key"] and old.get("shards") == [list(s) for s in plan["shards"]]
        if not same:
            log.warning("%s: left by a different build; starting it again", folder)
            shutil.rmtree(folder)
        else:
            log.info("%s: an unfinished build of this cache; completing it", folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".*.tmp-*"):
        stale.unlink()
    (folder / "manifest.json").unlink(missing_ok=True)
    write_json_atomic(plan_file, plan)


def _check_built(folder: Path, plan: dict, slots: int, dim: int) -> list[dict]:
    """The shard records of a finished build, after checking it is still this build's folder (``plan.json``
    holds its ``build_id``) and that every shard on disk matches its record; ``ValueError`` otherwise, so a
    partial cache is never marked complete."""
    current = _read_json(folder / "plan.json") or {}
    if current.get("build_id") != plan["build_id"]:
        raise ValueError(f"{folder}: plan.json now belongs to another build (build_id {current.get('build_id')}, "
                         f"this build's is {plan['build_id']}): not marking this cache complete; check that no "
                         "other process writes to it, then run the build again")
    metas, problems = [], []
    for k in range(len(plan["shards"])):
        meta = _read_json(folder / f"shard_{k:05d}.json")
        problem = f"shard_{k:05d}.json: missing or unreadable" if meta is None else \
            _shard_problem(folder, meta, slots, dim)
        if problem:
            problems.append(os.path.join(folder, problem))
        else:
            metas.append(meta)
    if problems:
        raise ValueError(f"{folder}: {len(problems)} of {len(plan['shards'])} shards are not as this build wrote "
                         f"them: {'; '.join(problems)}; not marking the cache complete: run the build again "
                         "(complete shards are kept)")
    return metas


def _write_manifest(folder: Path, plan: dict, info, metas: list[dict], est: dict, seconds: float) -> None:
    shards, skipped, segments, frames = [], {}, 0, 0
    audio = 0
    record = ("name", "frames", "segments", "built_by", "bytes", "index_bytes", "probe", "index_sha256")
    for meta in metas:
        shards.append({k: meta[k] for k in record})
        skipped.update(meta["skipped"])
        segments += meta["segments"]
        frames += meta["frames"]
        index = np.load(folder / f"{meta['name']}.npy", allow_pickle=False)
        audio += int(index[:, 2].sum()) if len(index) else 0
    manifest = {"format": FORMAT_VERSION, "complete": True, "key": plan["key"], "base_key": plan["base_key"],
                "build_id": plan["build_id"], "spec": plan["spec"], "slots": plan["slots"], "dim": info.dim,
                "hop": info.hop, "num_layers": info.num_layers, "teacher": info.to_dict(), "items": plan["items"],
                "segments": segments, "frames": frames, "audio_seconds": audio / SAMPLE_RATE,
                "bytes": frames * len(plan["slots"]) * info.dim * 2, "estimated_bytes": est["bytes"],
                "skipped": skipped, "shards": shards, "build_seconds": seconds,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json_atomic(folder / "manifest.json", manifest)
