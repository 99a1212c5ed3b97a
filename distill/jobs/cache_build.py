"""``stackdistill cache build``: compute a teacher's targets once, before training reads them.

The cache itself is :mod:`distill.data.cache`; this command loads the teacher and lists the audio.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from distill.data.audio import SAMPLE_RATE
from distill.data.cache import CacheConfig, CacheSpec, prepare_cache
from distill.data.corpus import list_audio
from distill.models.teacher import load_teacher


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
    """Find or build the cache of ``cfg`` (``teacher``: an already loaded one); returns its summary.

    Files are counted once, by path: ``files_listed`` (every audio file found, the unreadable and
    empty ones included) = ``files_used`` + ``files_skipped`` (at scan time, or when the build
    read them); ``skipped``: path -> reason for both.
    """
    if not cfg.data:
        raise ValueError("cache build needs data=<the training audio>")
    teacher = teacher if teacher is not None else load_teacher(cfg.teacher, dtype=cfg.teacher_dtype)
    items, scan_skipped = list_audio(cfg.data)
    layers = tuple(cfg.layers) or tuple(range(1, teacher.num_layers + 1))
    spec = CacheSpec(layers, cfg.features and teacher.frontend is not None, int(cfg.crop_seconds * SAMPLE_RATE),
                     int(cfg.min_seconds * SAMPLE_RATE), cfg.teacher_dtype)
    t0 = time.time()
    cache = prepare_cache(teacher, items, spec, cfg.cache)
    m = cache.manifest
    skipped = {**{s.path: s.reason for s in scan_skipped}, **m["skipped"]}
    listed = {item.path for item in items} | {s.path for s in scan_skipped}
    used = {item.path for item in items} - set(skipped)
    return {"folder": str(cache.folder), "reused": cache.reused, "repaired": cache.repaired,
            "seconds": time.time() - t0, "build_seconds": m["build_seconds"], "segments": m["segments"],
            "audio_seconds": m["audio_seconds"], "slots": m["slots"], "bytes": m["bytes"],
            "files_listed": len(listed), "files_used": len(used), "files_skipped": len(skipped), "skipped": skipped}
