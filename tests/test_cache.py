"""The teacher-target cache: hits, invalidation by every key part, interrupted builds, equality with
the teacher's own outputs, and training from it."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from distill.data.audio import SAMPLE_RATE
from distill.data.batches import BatchPlan, CachedSource, OnlineSource
from distill.data.cache import (
    PROBE_BLOCK,
    CacheConfig,
    CacheDamaged,
    CacheSpec,
    TargetCache,
    cache_base,
    prepare_cache,
    probe_file,
)
from distill.data.corpus import list_audio, load_segments, split_items
from distill.jobs.cache_build import CacheBuildConfig, run_cache_build
from distill.models.teacher import load_teacher
from distill.training.distillation import DistillConfig, TrainConfig, distill
from students.mimic import MimicOptions
from students.registry import StudentSpec, build_student

from .conftest import save_tiny_model
from .procs import cli, kill

CROP, MIN = int(1.5 * SAMPLE_RATE), 1600


@pytest.fixture
def corpus(sentences_corpus, tmp_path) -> Path:
    """A private copy of the sentences (tests here change files)."""
    return Path(shutil.copytree(sentences_corpus, tmp_path / "data"))


@pytest.fixture(scope="module")
def teacher(tiny_whisper_dir):
    return load_teacher(str(tiny_whisper_dir))


def _spec(layers=(1, 3), features=True, crop=CROP) -> CacheSpec:
    return CacheSpec(tuple(layers), features, crop, MIN)


def _cfg(root: Path, **kw) -> CacheConfig:
    return CacheConfig(root=str(root), shard_mb=kw.pop("shard_mb", 0.05), **kw)


def _build(teacher, data: Path, root: Path, spec=None, **kw) -> TargetCache:
    items, _ = list_audio(data)
    return prepare_cache(teacher, items, spec or _spec(), _cfg(root, **kw), progress=False)


def _files(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_cached_targets_equal_the_teachers_own(teacher, corpus, tmp_path):
    cache = _build(teacher, corpus, tmp_path / "cache")
    items, _ = list_audio(corpus)
    assert len(cache.manifest["shards"]) > 1 and cache.slots == ["features", 1, 3]
    per_item = {}
    for i, (item, start, samples, frames, _) in enumerate(cache.index.tolist()):
        per_item.setdefault(item, []).append((i, start, samples, frames))
    assert sorted(per_item) == list(range(len(items)))  # every file, in order
    for item, segments in per_item.items():
        spans = [(s, n) for _, s, n, _ in segments]
        assert spans[0][0] == 0 and all(n <= CROP for _, n in spans)
        assert sum(n for _, n in spans) >= items[item].num_samples - MIN  # the file covered, tail aside
        for (i, _, _, frames), wav in zip(segments, load_segments(items[item], spans, MIN)):
            feats, states, fl = teacher.features_and_states(wav[None])
            assert int(fl[0]) == frames
            stored = torch.from_numpy(np.array(cache.read(i))).float()
            for slot, online in zip(cache.slots, (feats, states[1], states[3])):
                torch.testing.assert_close(stored[:, cache.slot(slot)], online[0], rtol=2e-3, atol=2e-3)


def test_unchanged_rerun_reuses_it_and_a_subset_of_layers_is_served(teacher, corpus, tmp_path):
    first = _build(teacher, corpus, tmp_path / "cache")
    before = _files(first.folder)
    again = _build(teacher, corpus, tmp_path / "cache")
    assert again.reused and again.folder == first.folder and _files(again.folder) == before
    subset = _build(teacher, corpus, tmp_path / "cache", _spec(layers=(3,), features=False))
    assert subset.reused and subset.folder == first.folder


@pytest.mark.parametrize("change", ["teacher weights", "data file", "segmentation", "layers"])
def test_each_key_part_invalidates_it(teacher, tiny_whisper_dir, corpus, tmp_path, change):
    first = _build(teacher, corpus, tmp_path / "cache")
    spec, other_teacher = _spec(), teacher
    if change == "teacher weights":  # same architecture and name, one weight changed
        folder = Path(shutil.copytree(tiny_whisper_dir, tmp_path / "teacher"))
        other_teacher = load_teacher(str(folder))
        other_teacher.name = teacher.name
        with torch.no_grad():
            other_teacher.stack.layers[0].fc1.weight[0, 0] += 0.5
    elif change == "data file":
        wav = next(corpus.rglob("*.flac"))
        os.utime(wav, ns=(wav.stat().st_atime_ns, wav.stat().st_mtime_ns + 10**9))
    elif change == "segmentation":
        spec = _spec(crop=CROP // 2)
    else:
        spec = _spec(layers=(2, 3))
    second = _build(other_teacher, corpus, tmp_path / "cache", spec)
    assert not second.reused and second.folder != first.folder
    if change == "layers":  # another variant next to the first, same audio key
        assert second.folder.parent == first.folder.parent
    else:
        assert second.folder.parent != first.folder.parent


def test_an_interrupted_build_is_detected_and_completed(teacher, corpus, tmp_path, monkeypatch):
    import distill.data.cache as cache_mod

    reference = _build(teacher, corpus, tmp_path / "reference")
    commits = []
    original = cache_mod._ShardWriter.commit

    def dies_after_two(self, skipped, rank=0):
        if len(commits) == 2:
            raise KeyboardInterrupt("killed")  # as if the process died here
        commits.append(self.name)
        original(self, skipped, rank)

    monkeypatch.setattr(cache_mod._ShardWriter, "commit", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        _build(teacher, corpus, tmp_path / "cache")
    monkeypatch.setattr(cache_mod._ShardWriter, "commit", original)
    folder = next((tmp_path / "cache").glob("*/*/plan.json")).parent
    assert not (folder / "manifest.json").exists()
    with pytest.raises(ValueError, match="not a complete"):
        TargetCache(folder)  # never read as whole
    (folder / ".shard_00002.f16.tmp-999").write_bytes(b"half a shard")  # what a kill mid-write leaves
    done = {n: (folder / f"{n}.f16").stat().st_mtime_ns for n in commits}
    completed = _build(teacher, corpus, tmp_path / "cache")
    assert completed.folder == folder and not completed.reused
    assert {n: (folder / f"{n}.f16").stat().st_mtime_ns for n in commits} == done  # kept, not rebuilt
    assert not list(folder.glob(".*tmp*"))
    np.testing.assert_array_equal(completed.index, reference.index)
    for i in range(len(reference)):
        np.testing.assert_array_equal(np.asarray(completed.read(i)), np.asarray(reference.read(i)))


def test_disk_estimate_over_max_gb_refuses_before_writing(teacher, corpus, tmp_path):
    with pytest.raises(ValueError, match="over cache.max_gb"):
        _build(teacher, corpus, tmp_path / "cache", max_gb=1e-6)
    assert not list((tmp_path / "cache").rglob("*.f16"))


def test_bad_files_are_skipped_and_counted_in_build_and_training(teacher, corpus, tmp_path):
    (corpus / "broken.wav").write_bytes(b"RIFF....WAVEnothing")
    nan = 0.1 * np.ones(16000, np.float32)
    nan[5] = np.nan
    sf.write(corpus / "nan.wav", nan, 16000, subtype="FLOAT")
    cache = _build(teacher, corpus, tmp_path / "cache")
    assert [Path(p).name for p in cache.manifest["skipped"]] == ["nan.wav"]  # broken.wav: never listed
    summary = distill(_train_cfg(teacher.name, corpus, tmp_path / "run", tmp_path / "cache", cache=True))
    assert {Path(p).name for p in summary["skipped"]} == {"broken.wav", "nan.wav"}
    assert summary["files_skipped"] == 2 and summary["files_listed"] == summary["files_used"] + 2


def _train_cfg(teacher: str, data: Path, out: Path, cache_root: Path, cache: bool, steps: int = 40) -> DistillConfig:
    return DistillConfig(teacher=teacher, data=[str(data)], out=str(out),
                         student=StudentSpec(sections={"mimic": MimicOptions(mimic_dim=16)}),
                         train=TrainConfig(max_steps=steps, lr=3e-3, warmup_steps=2, batch_seconds=4.0,
                                           crop_seconds=1.5, valid_fraction=0.15, eval_every=10, save_every=20,
                                           log_every=2, seed=0, cache=cache),
                         cache=_cfg(cache_root))


REL_RUN = 0.05  # online against cached over 40 steps: different training crops, float16 targets


def _losses(run: Path, key: str) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r]


def test_cached_training_lowers_the_loss_like_online_training_without_running_the_teacher(
        tiny_whisper_dir, corpus, tmp_path, monkeypatch):
    from distill.models.teacher import Teacher

    online = distill(_train_cfg(str(tiny_whisper_dir), corpus, tmp_path / "online", tmp_path / "cache", False))
    # build the cache first, then forbid the teacher's forward pass: training must read the cache only
    items, _ = list_audio(corpus)
    prepare_cache(load_teacher(str(tiny_whisper_dir)), items, _spec(), _cfg(tmp_path / "cache"), progress=False)

    def no_teacher(*_a, **_k):
        raise AssertionError("the teacher ran during cached training")

    monkeypatch.setattr(Teacher, "features_and_states", no_teacher)
    cached = distill(_train_cfg(str(tiny_whisper_dir), corpus, tmp_path / "cached", tmp_path / "cache", True))
    assert cached["targets"]["source"] == "cache" and online["targets"]["source"] == "online"
    for run in ("online", "cached"):
        train, valid = _losses(tmp_path / run, "train_loss"), _losses(tmp_path / run, "valid_loss")
        assert train[-1] < 0.7 * train[0] and valid[-1] < valid[0], run
    # like with like: the validation losses at the same steps, on the same held-out audio (the
    # sources differ in their training crops and float16 targets: 1.2 % apart at the first
    # validation, 3.2 % at the last, measured 2026-12-06)
    on, off = _losses(tmp_path / "online", "valid_loss"), _losses(tmp_path / "cached", "valid_loss")
    assert len(on) == len(off) == 4
    assert off[0] == pytest.approx(on[0], rel=0.02) and off == pytest.approx(on, rel=REL_RUN)
    assert cached["best_valid_loss"] == pytest.approx(online["best_valid_loss"], rel=REL_RUN)


def test_validation_is_the_same_audio_online_and_cached(teacher, corpus, tmp_path):
    """Both sources validate on the first window of each held-out file: equal losses, float16 aside."""
    from distill.training.losses import pairs_loss

    items, _ = list_audio(corpus)
    train_items, valid_items = split_items(items, 0.3, 0, 64)
    spec = _spec(layers=(2, 3))
    cache = prepare_cache(teacher, items, spec, _cfg(tmp_path / "cache"), progress=False)
    student = build_student(StudentSpec(sections={"mimic": MimicOptions(mimic_dim=16, target_layers=[2, 3])}),
                            teacher)
    plan = BatchPlan(4 * SAMPLE_RATE, 64, 0)
    index = {item.path: i for i, item in enumerate(items)}
    online = OnlineSource(teacher, train_items, valid_items, plan, CROP, MIN, True, "cpu")
    cached = CachedSource(cache, teacher, items, [index[i.path] for i in train_items],
                          [index[i.path] for i in valid_items], plan, [2, 3], True, "cpu")

    def total(source):
        loss = frames = 0.0
        with torch.no_grad():
            for b in source.valid_batches():
                pairs = student.distill_pairs(student.stack(b.inputs, b.input_lengths), b.targets)
                n = float(b.frame_lengths.sum())
                loss += float(pairs_loss(pairs, b.frame_lengths)[0]) * n
                frames += n
        return loss / frames, frames

    (a, fa), (b, fb) = total(online), total(cached)
    assert fa == fb > 0 and b == pytest.approx(a, rel=1e-3)


def test_a_student_that_trains_its_frontend_reads_audio_beside_the_cache(tiny_whisper_dir, corpus, tmp_path):
    cfg = _train_cfg(str(tiny_whisper_dir), corpus, tmp_path / "run", tmp_path / "cache", True, steps=6)
    cfg.student.train_frontend = True
    from distill.core.frontends import WhisperFrontend

    calls = []  # every Whisper frontend forward in the run: (module, audio in, features out)
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda m, args, out: calls.append((m, [a.detach().clone() for a in args[:2]], out[0].detach().clone()))
        if isinstance(m, WhisperFrontend) else None)
    try:
        summary = distill(cfg)
    finally:
        hook.remove()
    assert summary["targets"]["cache"]["slots"] == [1, 3]  # targets only: the student computes its own input
    losses = _losses(tmp_path / "run", "train_loss")
    assert len(losses) == 3 and all(np.isfinite(losses))
    # the first training step ran the student's own frontend on the audio, and it began as the teacher's
    teacher = load_teacher(str(tiny_whisper_dir))
    (module, (wav, lengths), feats) = next(c for c in calls if c[0].training)
    assert wav.dim() == 2 and wav.shape[1] > 1000  # raw audio, not cached features
    with torch.no_grad():
        expected, _ = teacher.frontend(wav, lengths)
    torch.testing.assert_close(feats, expected)
    # ... and was trained: its weights moved away from the teacher's
    student = load_teacher(str(tmp_path / "run" / "last"))
    moved = [name for name, p in student.frontend.state_dict().items()
             if p.is_floating_point() and not torch.equal(p, teacher.frontend.state_dict()[name])]
    assert any("conv" in name for name in moved), moved


def test_cache_build_command_and_a_distill_run_find_the_same_cache(tiny_whisper_dir, corpus, tmp_path, capsys):
    from distill.cli import main

    common = ["--teacher", str(tiny_whisper_dir), "--data", str(corpus), "--cache.root", str(tmp_path / "cache")]
    assert main(["cache", "build", *common, "--crop_seconds", "1.5"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert not built["reused"] and built["slots"] == ["features", 1, 2, 3] and built["bytes"] > 0
    assert main(["cache", "build", *common, "--crop_seconds", "1.5"]) == 0
    assert json.loads(capsys.readouterr().out)["reused"]
    assert main(["distill", *common, "--out", str(tmp_path / "run"), "--train.cache", "true",
                 "--train.crop_seconds", "1.5", "--train.max_steps", "3", "--train.eval_every", "3",
                 "--train.save_every", "3", "--student.mimic.mimic_dim", "8"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["targets"]["cache"]["folder"] == built["folder"]


def test_a_teacher_of_another_architecture_caches_too(tmp_path, corpus):
    hubert = load_teacher(str(save_tiny_model("hubert", tmp_path / "hubert")))
    cache = _build(hubert, corpus, tmp_path / "cache", _spec(layers=(1, 3)))
    first = cache.index[0]
    items, _ = list_audio(corpus)
    wav = load_segments(items[int(first[0])], [(int(first[1]), int(first[2]))], MIN)[0]
    _, states, _ = hubert.features_and_states(wav[None])
    torch.testing.assert_close(torch.from_numpy(np.array(cache.read(0)[:, cache.slot(3)])).float(), states[3][0],
                               rtol=2e-3, atol=2e-3)


# -- damage, locks, counts ------------------------------------------------------------------------

def _segments(cache: TargetCache) -> list[np.ndarray]:
    """Every segment's targets, copied out of the mapped files."""
    return [np.array(cache.read(i)) for i in range(len(cache))]


def _build_command(teacher, data: Path, root: Path, **cache_kw) -> dict:
    """``cache build`` in this process (the summary it prints), holding what :func:`_spec` holds."""
    return run_cache_build(CacheBuildConfig(teacher=teacher.name, data=[str(data)], layers=[1, 3], crop_seconds=1.5,
                                            min_seconds=MIN / SAMPLE_RATE, cache=_cfg(root, **cache_kw)), teacher)


def _warnings(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


@pytest.mark.parametrize("damage", ["truncated to half", "missing", "index overwritten"])
def test_a_damaged_shard_is_detected_named_and_rebuilt_alone(teacher, corpus, tmp_path, caplog, damage):
    cache = _build(teacher, corpus, tmp_path / "cache")
    folder, index, before = cache.folder, cache.index.copy(), _segments(cache)
    assert len(cache.manifest["shards"]) >= 3
    del cache  # nothing may stay mapped over a file cut short
    data, npy = folder / "shard_00001.f16", folder / "shard_00001.npy"
    if damage == "truncated to half":
        size = data.stat().st_size
        data.write_bytes(data.read_bytes()[: size // 2])
        victim, reason = data, f"size {size // 2} bytes, expected {size}"
    elif damage == "missing":
        data.unlink()
        victim, reason = data, "missing"
    else:
        npy.write_bytes(b"x" * npy.stat().st_size)
        victim, reason = npy, "index unreadable"
    with pytest.raises(CacheDamaged) as err:
        TargetCache(folder)  # opening finds it: nothing maps a short file
    assert list(err.value.damaged) == ["shard_00001"] and reason in err.value.damaged["shard_00001"]
    assert f"{victim}: {reason}" in str(err.value)
    files = _files(folder)

    with caplog.at_level(logging.WARNING, logger="distill.data.cache"):
        if damage == "missing":  # the command repairs it too, and says so
            summary = _build_command(teacher, corpus, tmp_path / "cache")
            assert not summary["reused"] and list(summary["repaired"]) == ["shard_00001"]
            repaired = TargetCache(summary["folder"])
        else:
            repaired = _build(teacher, corpus, tmp_path / "cache")
            assert not repaired.reused and list(repaired.repaired) == ["shard_00001"]
    assert f"{victim}: {reason}" in _warnings(caplog)
    assert repaired.folder == folder
    changed = {name for name, mtime in _files(folder).items() if files.get(name) != mtime}
    assert changed == {"shard_00001.f16", "shard_00001.npy", "shard_00001.json", "manifest.json", "plan.json"}
    assert not (folder / "repair.json").exists() and not list(folder.parent.glob(".*.lock"))
    np.testing.assert_array_equal(repaired.index, index)
    for a, b in zip(_segments(repaired), before, strict=True):
        np.testing.assert_array_equal(a, b)
    assert _build(teacher, corpus, tmp_path / "cache").reused


def test_a_flipped_byte_inside_a_probed_block_is_caught(teacher, corpus, tmp_path):
    """Same size, one byte changed in the first 64 KiB block of the data (small shards are probed whole)."""
    cache = _build(teacher, corpus, tmp_path / "cache")
    folder, before = cache.folder, _segments(cache)
    del cache
    data = folder / "shard_00001.f16"
    raw = bytearray(data.read_bytes())
    raw[min(len(raw) // 2, PROBE_BLOCK // 2)] ^= 0x40
    data.write_bytes(bytes(raw))
    with pytest.raises(CacheDamaged, match="checksum mismatch") as err:
        TargetCache(folder)
    assert str(data) in str(err.value)
    repaired = _build(teacher, corpus, tmp_path / "cache")
    for a, b in zip(_segments(repaired), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_shard_checksum_samples_blocks(tmp_path):
    """What the cheap checksum sees: the size and 16 evenly spaced 64 KiB blocks (first and last), not the gaps."""
    path = tmp_path / "big.f16"
    raw = bytearray(np.random.default_rng(0).integers(0, 256, 64 * PROBE_BLOCK, dtype=np.uint8).tobytes())
    path.write_bytes(bytes(raw))
    probe = probe_file(path)

    def flipped(pos: int) -> str:
        changed = bytearray(raw)
        changed[pos] ^= 1
        path.write_bytes(bytes(changed))
        return probe_file(path)

    step = (len(raw) - PROBE_BLOCK) // 15  # where blocks 0..15 start
    assert flipped(10) != probe and flipped(len(raw) - 1) != probe and flipped(7 * step + 5) != probe
    assert flipped(PROBE_BLOCK + 10) == probe  # between blocks 0 and 1: unseen (the checksum is sampled)
    path.write_bytes(bytes(raw[:-1]))
    assert probe_file(path) != probe  # any change of size is seen


def test_a_partial_build_is_never_marked_complete(teacher, corpus, tmp_path, monkeypatch):
    """Another build taking over plan.json, or a shard gone before the manifest: an error, no manifest."""
    import distill.data.cache as cache_mod

    original = cache_mod._ShardWriter.commit
    for what in ("another build", "shard gone"):
        def meddled(self, skipped, rank=0, what=what):
            original(self, skipped, rank)
            if self.name == "shard_00002" and what == "another build":
                plan = json.loads((self.folder / "plan.json").read_text())
                (self.folder / "plan.json").write_text(json.dumps({**plan, "build_id": "someone-else"}))
            elif self.name == "shard_00002":
                (self.folder / "shard_00000.f16").unlink()

        monkeypatch.setattr(cache_mod._ShardWriter, "commit", meddled)
        match = "now belongs to another build" if what == "another build" else "shard_00000.f16: missing"
        with pytest.raises(ValueError, match=match):
            _build(teacher, corpus, tmp_path / what)
        folder = next((tmp_path / what).glob("*/*/plan.json")).parent
        assert not (folder / "manifest.json").exists() and not list(folder.parent.glob(".*.lock"))
    monkeypatch.setattr(cache_mod._ShardWriter, "commit", original)
    for what in ("another build", "shard gone"):
        completed = _build(teacher, corpus, tmp_path / what)  # the next build completes it
        assert not completed.reused and len(completed) > 0


def _command_spec() -> CacheSpec:
    """What ``cache build --crop_seconds 1.5`` holds with the tiny 3-layer teacher."""
    return CacheSpec((1, 2, 3), True, CROP, MIN)


def _command(tiny_whisper_dir: Path, data: Path, root: Path, *flags: str) -> subprocess.Popen:
    return cli(["cache", "build", "--teacher", str(tiny_whisper_dir), "--data", str(data), "--cache.root", str(root),
                "--crop_seconds", "1.5", *flags])


def _outcome(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(proc)
        pytest.fail("cache build timed out")
    return proc.returncode, out, err


def _hold_lock(teacher, corpus: Path, root: Path, pid: int, host: str | None = None) -> tuple[Path, Path]:
    """Write the lock of the command's cache as process ``pid`` would; returns (lock file, variant folder)."""
    items, _ = list_audio(corpus)
    spec = _command_spec()
    base = cache_base(teacher, items, spec, root)
    base.mkdir(parents=True, exist_ok=True)
    lock = base / f".{spec.variant()}.lock"
    lock.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": "2024-05-01T10:00:00"}))
    return lock, base / spec.variant()


def test_a_held_lock_makes_a_second_build_refuse_or_wait(teacher, tiny_whisper_dir, corpus, tmp_path, caplog):
    root = tmp_path / "cache"
    lock, folder = _hold_lock(teacher, corpus, root, os.getpid())  # this test's own process: alive
    code, _, err = _outcome(_command(tiny_whisper_dir, corpus, root, "--cache.lock_wait_seconds", "0"))
    assert code == 2
    assert (f"cache {folder} is being built by pid {os.getpid()} on host {socket.gethostname()} since "
            f"2024-05-01T10:00:00") in err and "cache.lock_wait_seconds=0" in err and str(lock) in err
    assert sorted(p.name for p in folder.parent.iterdir()) == [lock.name]  # nothing written

    items, _ = list_audio(corpus)
    cfg = _cfg(root, lock_wait_seconds=1.5)  # in this process: waits, saying so once, then gives up
    with caplog.at_level(logging.WARNING, logger="distill.data.cache"), \
            pytest.raises(ValueError, match="gave up after waiting 1.5 s") as gave_up:
        prepare_cache(teacher, items, _command_spec(), cfg, progress=False)
    assert f"remove {lock} if that process is gone" in str(gave_up.value)
    waiting = [r for r in caplog.records if "waiting (cache.lock_wait_seconds=1.5)" in r.getMessage()]
    assert len(waiting) == 1 and f"is being built by pid {os.getpid()}" in waiting[0].getMessage()
    assert not folder.exists()


def test_a_waiting_build_reuses_what_the_holder_finished(teacher, tiny_whisper_dir, corpus, tmp_path):
    root = tmp_path / "cache"
    items, _ = list_audio(corpus)
    built = prepare_cache(teacher, items, _command_spec(), _cfg(root), progress=False)
    folder, files = built.folder, _files(built.folder)
    (folder / "manifest.json").rename(tmp_path / "manifest.json")  # as if the holder were still building
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        lock, _ = _hold_lock(teacher, corpus, root, holder.pid)
        second = _command(tiny_whisper_dir, corpus, root, "--cache.lock_wait_seconds", "240")
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(second.stderr), daemon=True)
        reader.start()
        deadline = time.time() + 240
        while not any("waiting (cache.lock_wait_seconds=240)" in line for line in lines):
            assert second.poll() is None and time.time() < deadline, "".join(lines)[-3000:]
            time.sleep(0.2)
        assert any(f"being built by pid {holder.pid}" in line for line in lines)
        (tmp_path / "manifest.json").rename(folder / "manifest.json")  # the holder finishes
        lock.unlink()
    finally:
        holder.kill()
        holder.wait()
    try:
        out = second.stdout.read()
        assert second.wait(timeout=240) == 0, "".join(lines)[-3000:]
    finally:
        kill(second)
    reader.join(timeout=10)
    summary = json.loads(out)
    assert summary["reused"] and summary["folder"] == str(folder)
    assert _files(folder) == files  # no shard rewritten


def test_a_stale_lock_is_taken_over_and_one_of_another_host_is_not(teacher, corpus, tmp_path, caplog):
    root = tmp_path / "cache"
    items, _ = list_audio(corpus)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock, folder = _hold_lock(teacher, corpus, root, gone.pid, host="another-host")
    with pytest.raises(ValueError, match=f"pid {gone.pid} on host another-host"):  # cannot tell: not stale
        prepare_cache(teacher, items, _command_spec(), _cfg(root, lock_wait_seconds=0), progress=False)
    lock, folder = _hold_lock(teacher, corpus, root, gone.pid)  # a dead process of this host
    with caplog.at_level(logging.WARNING, logger="distill.data.cache"):
        cache = prepare_cache(teacher, items, _command_spec(), _cfg(root, lock_wait_seconds=0), progress=False)
    assert f"{lock}: a stale lock (left by pid {gone.pid} on host {socket.gethostname()}" in _warnings(caplog)
    assert cache.folder == folder and not cache.reused and not lock.exists()


def _assert_equal_to_the_teacher(cache: TargetCache, teacher, items) -> None:
    for i, (item, start, samples, frames, _) in enumerate(cache.index.tolist()):
        wav = load_segments(items[item], [(start, samples)], MIN)[0]
        feats, states, fl = teacher.features_and_states(wav[None])
        assert int(fl[0]) == frames
        stored = torch.from_numpy(np.array(cache.read(i))).float()
        for slot, online in zip(cache.slots, (feats, *states[1:])):
            torch.testing.assert_close(stored[:, cache.slot(slot)], online[0], rtol=2e-3, atol=2e-3)


def test_two_concurrent_builds_with_different_shard_sizes_leave_one_correct_cache(teacher, tiny_whisper_dir,
                                                                                   corpus, tmp_path):
    root = tmp_path / "cache"
    procs = [_command(tiny_whisper_dir, corpus, root, "--cache.shard_mb", mb) for mb in ("0.05", "0.02")]
    outcomes = [_outcome(p) for p in procs]
    assert [code for code, _, _ in outcomes] == [0, 0], outcomes[0][2][-2000:] + outcomes[1][2][-2000:]
    summaries = [json.loads(out) for _, out, _ in outcomes]
    assert sorted(s["reused"] for s in summaries) == [False, True]  # one built it, the other waited and reused it
    assert summaries[0]["folder"] == summaries[1]["folder"]
    cache = TargetCache(summaries[0]["folder"])
    assert len(list(root.glob("*/*/manifest.json"))) == 1 and not list(root.glob("*/.*.lock"))
    items, _ = list_audio(corpus)
    assert sorted(set(cache.index[:, 0].tolist())) == list(range(len(items)))
    _assert_equal_to_the_teacher(cache, teacher, items)


def test_distributed_ranks_agree_on_a_repaired_cache(teacher, corpus, tmp_path):
    """Two ranks (threads with a barrier): rank 0 alone invalidates; the damaged shard is rebuilt once."""
    cache = _build(teacher, corpus, tmp_path / "cache")
    folder, before = cache.folder, _segments(cache)
    del cache
    (folder / "shard_00001.f16").write_bytes(b"")
    items, _ = list_audio(corpus)
    barrier = threading.Barrier(2, timeout=120)
    results: dict[int, object] = {}
    slot: list = [None]

    def broadcast(r: int):
        def share(value):  # rank 0's value on every rank, as accelerate's broadcast_object_list gives it
            if r == 0:
                slot[0] = value
            barrier.wait()
            shared = slot[0]
            barrier.wait()
            return shared
        return share

    def rank(r: int) -> None:
        try:
            results[r] = prepare_cache(teacher, items, _spec(), _cfg(tmp_path / "cache"), r, 2, barrier.wait,
                                       progress=False, broadcast=broadcast(r))
        except BaseException as exc:  # reported below, with the other rank's result
            results[r] = exc
            barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert all(isinstance(results.get(r), TargetCache) for r in (0, 1)), results
    assert results[0].folder == results[1].folder == folder
    assert list(results[0].repaired) == list(results[1].repaired) == ["shard_00001"]
    assert json.loads((folder / "shard_00001.json").read_text())["built_by"] == 1  # shard k on rank k mod 2
    for a, b in zip(_segments(results[1]), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_cache_build_counts_every_file_once(teacher, corpus, tmp_path):
    """Good files, a non-audio .wav, an empty one, a NaN one, a too short one: listed = used + skipped."""
    good = len(list(corpus.rglob("*.flac")))
    (corpus / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    sf.write(corpus / "empty.wav", np.zeros(0, np.float32), 16000)
    nan = 0.1 * np.ones(16000, np.float32)
    nan[5] = np.nan
    sf.write(corpus / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(corpus / "short.wav", 0.1 * np.ones(160, np.float32), 16000)
    bad = {"corrupt.wav", "empty.wav", "nan.wav", "short.wav"}
    for run in ("built", "reused"):
        summary = _build_command(teacher, corpus, tmp_path / "cache")
        assert summary["reused"] == (run == "reused")
        assert {Path(p).name for p in summary["skipped"]} == bad and summary["files_skipped"] == 4
        assert summary["files_used"] == good and summary["files_listed"] == good + 4
        assert summary["files_listed"] == summary["files_used"] + summary["files_skipped"]
    trained = distill(_train_cfg(teacher.name, corpus, tmp_path / "run", tmp_path / "cache", cache=True, steps=2))
    assert {k: trained[k] for k in ("files_listed", "files_used", "files_skipped")} == \
        {k: summary[k] for k in ("files_listed", "files_used", "files_skipped")}
